"""Published genotypes by name, pt.darts' nested text, and every genotype form end to end.

The published genotypes are data copied from other projects' code, so they are checked
against that code's text (kept here verbatim, split only across lines), by value on a few
entries, against S, and against the parameter counts their papers report. Each text form
must round-trip, each malformed one must end in a one-line GenotypeError, and a name must
retrain through the CLI (tiny scale, 1 epoch: seconds).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error, tiny_params
from darts.nn.evalnet import EvalNetwork, count_params_m
from darts.space.parse import genotype_format, parse_genotype
from darts.space.primitives import DARTS_V2, N_INPUTS, N_NODES, PRIMITIVES, Genotype, GenotypeError
from darts.space.published import PUBLISHED, find_published, published_genotype, published_info
from stages.cli import app
from stages.params import ParamsError
from stages.retrain import read_genotype

# name -> (the variable in the upstream genotypes.py, its Genotype(...) text verbatim): quark0/darts
# cnn/genotypes.py @f276dd3, yuhuixu1993/PC-DARTS genotypes.py @b74702f, chenxin061/pdarts genotypes.py @b880e87
UPSTREAM = {
    "DARTS_V1": ("DARTS_V1",
        "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
        "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])"),
    "DARTS_V2": ("DARTS_V2",
        "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
        "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
        "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
        "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"),
    "PC_DARTS": ("PC_DARTS_cifar",
        "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), "
        "('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
        "('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
        "('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
        "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"),
    "PDARTS": ("PDARTS",
        "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), "
        "('skip_connect', 0),('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), "
        "('sep_conv_3x3',0), ('dil_conv_5x5', 4)], normal_concat=range(2, 6), "
        "reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2), "
        "('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), "
        "('dil_conv_5x5', 3)], reduce_concat=range(2, 6))"),
}
# khanrc/pt.darts README.md @48e7137, "CIFAR10" (its search result, printed by its genotypes.py)
PTDARTS_README = """Genotype(
    normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('skip_connect', 0), ('dil_conv_3x3', 2)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('sep_conv_3x3', 1), ('skip_connect', 0)]],
    normal_concat=range(2, 6),
    reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 3), ('max_pool_3x3', 0)], [('skip_connect', 2), ('max_pool_3x3', 0)]],
    reduce_concat=range(2, 6)
)"""
REPORTED = {"DARTS_V1": (3.00, 3.3), "DARTS_V2": (2.76, 3.3), "PC_DARTS": (2.57, 3.6), "PDARTS": (2.50, 3.4)}
runner = CliRunner()


def random_genotype(seed: int) -> Genotype:
    """A uniformly drawn genotype in S: per node 2 distinct earlier states, ops without `none`."""
    rng = random.Random(seed)
    ops = [p for p in PRIMITIVES if p != "none"]

    def cell() -> list[tuple[str, int]]:
        return [(rng.choice(ops), src) for i in range(N_NODES) for src in rng.sample(range(N_INPUTS + i), 2)]

    return Genotype(normal=cell(), reduce=cell())


def nested(cell: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    return [cell[2 * i : 2 * i + 2] for i in range(N_NODES)]


def ptdarts_text(normal: object, reduce: object) -> str:
    return f"Genotype(normal={normal}, normal_concat=range(2, 6), reduce={reduce}, reduce_concat=range(2, 6))"


def test_the_published_names():
    assert PUBLISHED == ("DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS")


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_published_genotype_equals_the_upstream_text(name):
    source_name, text = UPSTREAM[name]
    info = published_info(name)
    assert info["source_name"] == source_name
    assert published_genotype(name) == parse_genotype(text)
    assert published_genotype(name).to_dict() == info["genotype"]


def test_published_genotypes_by_value():
    """A few entries read off the upstream files by eye, independently of any parser."""
    v1, pc, pd = published_genotype("DARTS_V1"), published_genotype("PC_DARTS"), published_genotype("PDARTS")
    assert v1.normal[:2] == [("sep_conv_3x3", 1), ("sep_conv_3x3", 0)] and v1.normal[7] == ("skip_connect", 2)
    assert v1.reduce[7] == ("avg_pool_3x3", 0) and v1.reduce[3] == ("max_pool_3x3", 0)
    assert pc.normal[6] == ("avg_pool_3x3", 0) and pc.normal[1] == ("skip_connect", 0)
    assert pc.reduce[:4] == [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2)]
    assert pd.normal[3] == ("sep_conv_3x3", 1) and pd.normal[7] == ("dil_conv_5x5", 4)
    assert pd.reduce[0] == ("avg_pool_3x3", 0) and pd.reduce[7] == ("dil_conv_5x5", 3)
    assert published_genotype("DARTS_V2") == DARTS_V2  # darts.space.primitives's constant is the published one
    for g in (v1, pc, pd):
        assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_published_entry_cites_its_source_and_reported_result(name):
    info = published_info(name)
    assert info["repo"].startswith("https://github.com/") and info["file"].endswith("genotypes.py")
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"])
    assert "arXiv:" in info["paper"] and info["reported_in"]
    assert (info["cifar10_test_error"], info["params_m"]) == REPORTED[name]


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_published_genotype_has_about_the_reported_parameters(name):
    """The full-size CIFAR-10 network (C=36, 20 cells) of each cell lands near its paper's count:
    a wrongly copied conv moves it. 0.15M of slack: DARTS_V1 counts 3.17M against the 3.3M
    reported (noted in the data file), the others are within 0.05M."""
    model = EvalNetwork(published_genotype(name), C=36, n_classes=10, layers=20, auxiliary=False)
    assert abs(count_params_m(model) - published_info(name)["params_m"]) < 0.15


def test_names_are_case_insensitive_and_a_form_of_their_own():
    for name in PUBLISHED:
        assert genotype_format(name) == genotype_format(name.lower()) == "name"
        assert parse_genotype(f"  {name.lower()}\n") == published_genotype(name)
        assert find_published(name.swapcase()) == name
    assert find_published("DARTS") is None and find_published("DARTS_V2.json") is None


@pytest.mark.parametrize("g", [DARTS_V2, *(random_genotype(s) for s in range(8))],
                         ids=["DARTS_V2", *(f"random{s}" for s in range(8))])
def test_round_trip_json_flat_nested(g):
    for text, form in ((g.to_json(), "json"), (g.to_darts_text(), "darts"), (g.to_ptdarts_text(), "ptdarts")):
        assert genotype_format(text) == form
        assert parse_genotype(text) == g
    nested_text = g.to_ptdarts_text()
    assert nested_text == ptdarts_text(nested(g.normal), nested(g.reduce))
    assert Genotype.from_ptdarts_text(nested_text) == Genotype.from_darts_text(g.to_darts_text()) == g


def test_ptdarts_text_is_what_ptdarts_prints():
    assert DARTS_V2.to_ptdarts_text() == (
        "Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
        "[('sep_conv_3x3', 1), ('skip_connect', 0)], [('skip_connect', 0), ('dil_conv_3x3', 2)]], "
        "normal_concat=range(2, 6), reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('skip_connect', 2), "
        "('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 2), "
        "('max_pool_3x3', 1)]], reduce_concat=range(2, 6))")
    g = parse_genotype(PTDARTS_README)
    assert genotype_format(PTDARTS_README) == "ptdarts"
    assert g.normal[:4] == [("sep_conv_3x3", 0), ("dil_conv_5x5", 1), ("skip_connect", 0), ("dil_conv_3x3", 2)]
    assert g.reduce[4:] == [("skip_connect", 3), ("max_pool_3x3", 0), ("skip_connect", 2), ("max_pool_3x3", 0)]


V2N, V2R = nested(DARTS_V2.normal), nested(DARTS_V2.reduce)
THREE_EDGES = [V2N[0], V2N[1] + [("sep_conv_5x5", 2)], V2N[2], V2N[3]]
SAME_SOURCE = [V2N[0], [("sep_conv_3x3", 0), ("sep_conv_3x3", 0)], V2N[2], V2N[3]]
NONE_OP = [V2N[0], V2N[1], [("none", 1), ("skip_connect", 0)], V2N[3]]
INJECT = "__import__('os').makedirs('INJECTED')"
BAD = {  # name -> (text, words the one-line message must contain)
    "unknown_name": ("DARTS_V3", ["'DARTS_V3'", "published genotype name", "DARTS_V1, DARTS_V2, PC_DARTS, PDARTS"]),
    "three_edges_in_a_node": (ptdarts_text(THREE_EDGES, V2R), ["normal node 1 has 3 (op, source) pairs", "2"]),
    "five_nodes": (ptdarts_text(V2N + [V2N[0]], V2R), ["normal has 5 node lists", "expected 4"]),
    "flat_reduce_in_nested_text": (ptdarts_text(V2N, DARTS_V2.reduce), ["reduce[0]", "flat (op, source) pair"]),
    "nested_reduce_in_flat_text": (ptdarts_text(DARTS_V2.normal, V2R), ["reduce holds per-node lists"]),
    "nested_cell_not_a_list": (ptdarts_text(5, V2R), ["pt.darts genotype string: normal=5 is not a list"]),
    "flat_cell_not_a_list": (ptdarts_text(5, DARTS_V2.reduce), ["malformed"]),
    "same_source_twice": (ptdarts_text(SAME_SOURCE, V2R), ["normal node 1", "both edges come from state 0"]),
    "none_op": (ptdarts_text(NONE_OP, V2R), ["normal node 2", "'none' is not allowed", "valid ops"]),
    "source_out_of_range": (ptdarts_text(V2N, V2R[:3] + [[("skip_connect", 5), ("max_pool_3x3", 1)]]),
                            ["reduce node 3", "source 5", "valid sources: 0..4"]),
    "injection_alone": (INJECT, ["neither a JSON genotype", "published genotype name"]),
    "injection_in_nested": (ptdarts_text(V2N, V2R).replace("[[", f"[[{INJECT}, ", 1),
                            ["pt.darts genotype string: normal=", "not a literal"]),
    "injection_as_concat": (ptdarts_text(V2N, V2R).replace("range(2, 6)", INJECT, 1), ["normal_concat", "not a literal"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_form_is_a_one_line_genotype_error(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the injection would create its folder
    text, needles = BAD[case]
    with pytest.raises(GenotypeError) as info:
        parse_genotype(text)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    for n in needles:
        assert n in message, (n, message)
    assert not (tmp_path / "INJECTED").exists()


def test_flat_text_where_nested_is_expected():
    with pytest.raises(GenotypeError, match=r"normal\[0\]=\('sep_conv_3x3', 0\) is a flat \(op, source\) pair"):
        Genotype.from_ptdarts_text(DARTS_V2.to_darts_text())
    with pytest.raises(GenotypeError, match="not a published genotype; valid names: DARTS_V1, DARTS_V2"):
        published_info("NASNet")


def test_read_genotype_forms_and_the_file_name_clash(tmp_path, monkeypatch):
    """--genotype: a pt.darts file, a name in any case, and a file that happens to be called
    like a name (the file wins: it is what the user pointed at)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "genotype_ptdarts.txt").write_text(PTDARTS_README + "\n")
    g, source = read_genotype("genotype_ptdarts.txt")
    assert g == parse_genotype(PTDARTS_README) and source["format"] == "ptdarts" and not source["inline"]
    g, source = read_genotype("pdarts")
    assert g == published_genotype("PDARTS")
    assert source == {"inline": True, "path": None, "format": "name", "name": "PDARTS"}
    (tmp_path / "DARTS_V2").write_text(published_genotype("PC_DARTS").to_json())
    assert read_genotype("DARTS_V2")[0] == published_genotype("PC_DARTS")
    (tmp_path / "DARTS_V9").mkdir()
    with pytest.raises(ParamsError, match="'DARTS_V9' is a directory"):
        read_genotype("DARTS_V9")


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("published_cli")
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    r = runner.invoke(app, ["prepare-split", "--params", str(d / "params.yaml"), "--out", str(d / "data")])
    assert r.exit_code == 0, r.output
    return d


def _retrain(d: Path, genotype: str, out: str):
    return runner.invoke(app, ["retrain", "--config", "DARTS", "--seed", "0", "--genotype", genotype, "--params",
                               str(d / "params.yaml"), "--prepared", str(d / "data"), "--out", str(d / out)])


def test_a_published_genotype_retrains_by_name(cli_dir):
    r = _retrain(cli_dir, "pc_darts", "retrain-pc")
    assert r.exit_code == 0, (r.output, r.exception)
    summary = json.loads((cli_dir / "retrain-pc" / "retrain.json").read_text())
    assert summary["genotype"] == published_info("PC_DARTS")["genotype"]
    assert summary["genotype_source"] == {"inline": True, "path": None, "format": "name", "name": "PC_DARTS"}
    assert len(summary["epochs"]) == 1 and (cli_dir / "retrain-pc" / "model.pt").is_file()


@pytest.mark.parametrize("arg,needles", [
    ("DARTS_V9", ["'DARTS_V9' is neither an existing file nor a published genotype name", "DARTS_V1, DARTS_V2"]),
    ("nope/genotype.json", ["'nope/genotype.json' is neither an existing file", "published genotype name",
                            "PC_DARTS"]),
])
def test_neither_file_nor_name_is_one_line(cli_dir, arg, needles):
    r = _retrain(cli_dir, arg, "retrain-bad")
    assert_one_line_error(r, *needles)
    assert not (cli_dir / "retrain-bad" / "model.pt").exists()
