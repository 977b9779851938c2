"""The three review options end to end: search.fimt_cycle, search.tie_break, search.unrolled_bn_stats.

Each is validated with a one-line error, reaches the object it changes, and tie_break travels
from the search (supernet.pt, search.json, log) to `discretize`, which breaks Π_S's ties by
the same rule. The numbers of each rule are tested in test_schedules, test_constraints and
test_unrolled; here only the wiring.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_params
from darts.loops.search import final_ties
from darts.method.activations import CRB
from darts.space.primitives import WITHOUT_NONE
from stages import discretize
from stages.cli import app
from stages.params import ParamsError, run_spec
from stages.search import search_settings
from test_constraints import CELL_INDEX, CELL_RAW, crb_tie_alpha

runner = CliRunner()


@pytest.mark.parametrize("key, bad, needle", [
    ("fimt_cycle", "text", "valid: k (paper"),
    ("fimt_cycle", 11, "k+1 (the authors' code)"),
    ("tie_break", "lowest", "valid: raw_alpha"),
    ("unrolled_bn_stats", "copy", "valid: untouched"),
])
def test_bad_values_are_one_line_errors(key, bad, needle):
    p = tiny_params()
    p["search"][key] = bad
    with pytest.raises(ParamsError) as e:
        search_settings(p, run_spec(p, "FIMT", 0))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"search.{key}={bad!r} is invalid") and needle in msg


def test_defaults_are_the_papers_text_and_the_options_reach_their_objects():
    p = tiny_params()
    assert (p["search"]["fimt_cycle"], p["search"]["tie_break"], p["search"]["unrolled_bn_stats"]) == \
        ("k", "raw_alpha", "untouched")
    del p["search"]["fimt_cycle"], p["search"]["tie_break"], p["search"]["unrolled_bn_stats"]
    cfg, extra = search_settings(p, run_spec(p, "FIMT", 0))  # absent keys: the same defaults
    assert (extra["fimt_cycle"], extra["tie_break"], cfg.unrolled_bn_stats) == ("k", "raw_alpha", "untouched")
    p["search"].update({"fimt_cycle": "k+1", "tie_break": "index", "unrolled_bn_stats": "darts"})
    cfg, extra = search_settings(p, run_spec(p, "DARTS_2nd", 0))
    assert (extra["fimt_cycle"], extra["tie_break"], cfg.unrolled_bn_stats, cfg.order) == ("k+1", "index", "darts", 2)


def _supernet_file(d: Path, tie_break: str | None) -> Path:
    alpha = crb_tie_alpha()
    live = torch.ones(14, 7, dtype=torch.bool)
    saved = {"state": {"alpha_normal": alpha, "alpha_reduce": alpha, "live_normal": live, "live_reduce": live},
             "ops": list(WITHOUT_NONE), "activation": "crb"}
    if tie_break is not None:
        saved["tie_break"] = tie_break
    d.mkdir(parents=True)
    torch.save(saved, d / "supernet.pt")
    return d


@pytest.mark.parametrize("recorded, cell", [("raw_alpha", CELL_RAW), ("index", CELL_INDEX), (None, CELL_RAW)])
def test_discretize_breaks_ties_by_the_recorded_rule(tmp_path, recorded, cell):
    src = _supernet_file(tmp_path / "search", recorded)
    g = discretize.run(str(src), str(tmp_path / "genotype"))
    assert [tuple(x) for x in g["normal"]] == cell and [tuple(x) for x in g["reduce"]] == cell
    assert json.loads((tmp_path / "genotype" / "genotype.json").read_text()) == g


def test_discretize_refuses_an_unknown_recorded_rule(tmp_path):
    src = _supernet_file(tmp_path / "search", "coin")
    with pytest.raises(ParamsError, match="tie_break='coin'; valid: raw_alpha, index"):
        discretize.run(str(src), str(tmp_path / "genotype"))


def test_final_ties_counts_per_cell_type():
    from darts.nn.supernet import SearchNetwork

    net = SearchNetwork(CRB(), C=2, n_classes=3, layers=3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.alpha_normal.copy_(crb_tie_alpha())
        net.alpha_reduce.fill_(0.5)  # every op and edge tied, raw α too: all by index
    got = final_ties(net, "raw_alpha")
    assert got["normal"] == {"op": 2, "edge": 1, "by_index": 1}
    assert got["reduce"] == {"op": 8, "edge": 3, "by_index": 11}  # node 0 has no third edge
    assert final_ties(net, "index")["normal"] == {"op": 2, "edge": 1, "by_index": 3}


def test_search_records_the_rule_and_the_ties_and_discretize_follows(tmp_path):
    p = tiny_params({"CRB": {"activation": "crb", "schedule": "alternate", "regularization": "none"}})
    p["search"]["tie_break"] = "index"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    for args in (["prepare-split", "--params", str(params), "--out", str(tmp_path / "data")],
                 ["search", "--config", "CRB", "--seed", "0", "--params", str(params), "--prepared",
                  str(tmp_path / "data"), "--out", str(tmp_path / "search")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert summary["tie_break"] == "index"
    assert set(summary["ties"]) == {"normal", "reduce"}
    assert all(set(v) == {"op", "edge", "by_index"} for v in summary["ties"].values())
    assert "decided by a tie (index)" in (tmp_path / "search" / "log.txt").read_text()
    saved = torch.load(tmp_path / "search" / "supernet.pt", weights_only=True)
    assert saved["tie_break"] == "index"
