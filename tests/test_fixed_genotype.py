"""A given genotype as a study row (method `fixed`, darts.method.fixed_genotype): its α makes Π_S give
back exactly the genotype in its own pair order, bad values fail in one line before any work,
and the row's chain (search → discretize → retrain) trains the same network, bit for bit, as
`darts retrain --genotype` of the same cell."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_params
from darts.method.activations import make_activation
from darts.method.fixed_genotype import FIRST, SECOND, genotype_alpha, set_genotype_alpha
from darts.method.registry import METHODS, Untrained
from darts.nn.supernet import SearchNetwork
from darts.space.parse import parse_genotype
from darts.space.primitives import N_EDGES, PRIMITIVES
from darts.space.projection import derive_genotype
from darts.space.published import PUBLISHED, published_genotype
from stages.cli import app
from stages.params import ParamsError, run_spec, study_runs

runner = CliRunner()


def _net(seed: int = 0) -> SearchNetwork:
    return SearchNetwork(make_activation("softmax"), C=4, n_classes=10, layers=3,
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PUBLISHED)
def test_each_published_cell_comes_back_from_pi_s_in_its_own_order(name):
    net = _net()
    state = Untrained(net, METHODS["fixed"].set_alpha, seed=3, genotype=name.lower())
    assert state.done and state.step == 0 and state.seconds == 0.0
    got = derive_genotype({t: w.detach() for t, w in net.weights().items()}, net.live(), tuple(net.ops))
    want = published_genotype(name)
    assert (got.normal, got.reduce) == (want.normal, want.reduce)  # lists: the pair order too


def test_the_alpha_is_two_on_each_nodes_first_pair_one_on_its_second_zero_elsewhere():
    ops = PRIMITIVES
    g = published_genotype("DARTS_V2")  # reduce node 1 lists source 2 before source 1: order matters
    alpha = genotype_alpha(g, ops)
    rows = {(n, s): r for r, (n, s) in enumerate((n, s) for n in range(4) for s in range(2 + n))}
    a = alpha["reduce"]
    assert a.shape == (N_EDGES, len(ops))
    assert a[rows[(1, 2)], ops.index("skip_connect")] == FIRST == 2.0
    assert a[rows[(1, 1)], ops.index("max_pool_3x3")] == SECOND == 1.0
    for cell in ("normal", "reduce"):
        assert sorted(alpha[cell].flatten().tolist())[-8:] == [1.0] * 4 + [2.0] * 4
        assert int((alpha[cell] != 0).sum()) == 8
    # under softmax over 8 ops: first-pair edges e²/(e²+7), second e/(e+7), others 1/8
    w = make_activation("softmax")(a, torch.ones_like(a, dtype=torch.bool))
    assert w[rows[(1, 2)]].max().item() == pytest.approx(7.389056 / (7.389056 + 7), rel=1e-6)
    assert w[rows[(1, 1)]].max().item() == pytest.approx(2.718282 / (2.718282 + 7), rel=1e-6)
    assert w[rows[(1, 0)]].max().item() == pytest.approx(1 / 8)


def test_text_forms_work_like_names_and_the_seed_plays_no_part():
    g = published_genotype("PC_DARTS")
    for form in (g.to_json(), g.to_darts_text(), g.to_ptdarts_text()):
        a, b = _net(0), _net(1)
        set_genotype_alpha(a, 0, form)
        set_genotype_alpha(b, 7, form)
        assert all(torch.equal(x, y) for x, y in zip(a.arch_parameters(), b.arch_parameters()))
        got = derive_genotype(a.weights(), a.live(), tuple(a.ops))
        assert got == g


PARAMS = {"configs": {"V2": {"method": "fixed", "genotype": "DARTS_V2"}}, "seeds": [0, 1]}


def test_params_carry_the_genotype_and_fix_the_dimensions():
    runs = study_runs(PARAMS)
    assert [(r.name, r.seed, r.method, r.options) for r in runs] == \
        [("V2", 0, "fixed", (("genotype", "DARTS_V2"),)), ("V2", 1, "fixed", (("genotype", "DARTS_V2"),))]
    assert (runs[0].activation, runs[0].schedule, runs[0].regularization, runs[0].order) == ("softmax", "none", "none", 1)


@pytest.mark.parametrize("entry, message", [
    ({"method": "fixed"}, "configs.X is missing 'genotype'; valid keys: method, genotype"),
    ({"method": "fixed", "genotype": "DARTS_V9"}, "configs.X.genotype: 'DARTS_V9' is neither"),
    ({"method": "fixed", "genotype": ""}, "configs.X.genotype: '' is invalid; give a published name"),
    ({"method": "fixed", "genotype": "DARTS_V2", "activation": "crb"},
     "configs.X sets activation, which method 'fixed' does not take; valid keys for it: method, genotype"),
    ({"method": "darts", "activation": "crb", "schedule": "fimt", "regularization": "none", "genotype": "DARTS_V2"},
     "configs.X sets genotype, which method 'darts' does not take"),
])
def test_bad_fixed_entries_fail_in_one_line(entry, message):
    with pytest.raises(ParamsError) as e:
        run_spec({"configs": {"X": entry}}, "X", 0)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    if entry.get("genotype") == "DARTS_V9":
        assert "DARTS_V2" in str(e.value)  # the valid names are named


def _ok(args: list[str]) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.output, r.exception)


def test_the_rows_chain_trains_what_retrain_genotype_trains(tmp_path):
    """search (no step) → discretize → retrain of the fixed row equals `darts retrain --genotype
    DARTS_V2` at the same seed: same genotype file, same network, same weights after training."""
    params = tmp_path / "params.yaml"
    p = tiny_params({"V2": {"method": "fixed", "genotype": "darts_v2"}})
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    common = ["--params", str(params), "--prepared", str(tmp_path / "data")]
    _ok(["prepare-split", "--params", str(params), "--out", str(tmp_path / "data")])
    _ok(["search", "--config", "V2", "--seed", "0", *common, "--out", str(tmp_path / "search")])
    search = json.loads((tmp_path / "search" / "search.json").read_text())
    assert search["w_steps"] == 0 and search["alpha_steps"] == 0, search
    _ok(["discretize", "--search", str(tmp_path / "search"), "--out", str(tmp_path / "genotype")])
    genotype = json.loads((tmp_path / "genotype" / "genotype.json").read_text())
    assert parse_genotype(json.dumps(genotype)) == published_genotype("DARTS_V2")
    _ok(["retrain", "--config", "V2", "--seed", "0", "--genotype", str(tmp_path / "genotype" / "genotype.json"),
         *common, "--out", str(tmp_path / "chain")])
    _ok(["retrain", "--config", "V2", "--seed", "0", "--genotype", "DARTS_V2", *common, "--out", str(tmp_path / "named")])
    a = torch.load(tmp_path / "chain" / "model.pt", weights_only=False)["state"]
    b = torch.load(tmp_path / "named" / "model.pt", weights_only=False)["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
