"""`--genotype` forms end to end, and `darts test` with and without `--search`.

A genotype need not come from this project's search: the genotype.txt that `discretize`
writes (DARTS `Genotype(...)` text; it writes pt.darts' nested form too) and the same text
given inline both retrain, and the retrain records its own run so that `darts test` works
without a search (search fields null, the retrain's label) and refuses a search of another
run instead of borrowing it.
Tiny scale (conftest.tiny_params, 1 epoch): the whole module takes seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error as _assert_one_line_error, tiny_params
from darts.space.parse import genotype_format, parse_genotype
from stages.cli import app

runner = CliRunner()
SEARCH_FIELDS = ("search_seconds", "search_gpu_days", "search_alpha_ratio", "search_pruned_ops", "search_val_acc")


def _ok(args: list[str]) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code == 0, (args, r.output, r.exception)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A DARTS seed-0 search + discretize, then two retrains of its genotype:
    retrain-txt (--config DARTS, from genotype.txt) and retrain-inline (the variant run, inline text)."""
    d = tmp_path_factory.mktemp("genotype_cli")
    params = d / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    common = ["--params", str(params), "--prepared", str(d / "data")]
    _ok(["prepare-split", "--params", str(params), "--out", str(d / "data")])
    _ok(["search", "--config", "DARTS", "--seed", "0", *common, "--out", str(d / "search")])
    _ok(["discretize", "--search", str(d / "search"), "--out", str(d / "genotype")])
    _ok(["retrain", "--config", "DARTS", "--seed", "0", "--genotype", str(d / "genotype" / "genotype.txt"), *common,
         "--out", str(d / "retrain-txt")])
    text = (d / "genotype" / "genotype.txt").read_text().strip()
    _ok(["retrain", "--genotype", text, *common, "--out", str(d / "retrain-inline")])
    return d


def _test(study: Path, retrain: str, out: str, search: bool):
    args = ["test", "--retrain", str(study / retrain), "--prepared", str(study / "data"), "--out", str(study / out)]
    return runner.invoke(app, args + (["--search", str(study / "search")] if search else []))


def test_discretized_txt_and_inline_text_retrain(study):
    genotype = json.loads((study / "genotype" / "genotype.json").read_text())
    ptdarts = (study / "genotype" / "genotype_ptdarts.txt").read_text()  # discretize writes pt.darts' form too
    assert genotype_format(ptdarts) == "ptdarts" and parse_genotype(ptdarts).to_dict() == genotype
    txt = json.loads((study / "retrain-txt" / "retrain.json").read_text())
    assert txt["genotype"] == genotype
    assert txt["run"]["name"] == "DARTS" and txt["run"]["label"] == "DARTS" and txt["run"]["seed"] == 0
    assert txt["genotype_source"] == {"inline": False, "path": str(study / "genotype" / "genotype.txt"),
                                      "format": "darts"}
    inline = json.loads((study / "retrain-inline" / "retrain.json").read_text())
    assert inline["genotype"] == genotype
    assert inline["run"]["name"] == "softmax-alternate-none" and inline["run"]["seed"] == 0
    assert inline["genotype_source"] == {"inline": True, "path": None, "format": "darts"}
    assert (study / "retrain-inline" / "model.pt").is_file()


def test_test_without_search_has_null_search_fields_and_the_retrains_label(study):
    r = _test(study, "retrain-inline", "no-search.json", search=False)
    assert r.exit_code == 0, r.output
    m = json.loads((study / "no-search.json").read_text())
    assert m["config"] == m["label"] == "softmax-alternate-none" and m["seed"] == 0
    assert all(m[k] is None for k in SEARCH_FIELDS), m
    assert 0 <= m["test_error"] <= 100 and m["params_m"] > 0 and m["device"]
    assert "softmax-alternate-none seed 0" in r.output
    # the same keys as a study run's metrics (aggregate and figures read them)
    assert _test(study, "retrain-txt", "with-search.json", search=True).exit_code == 0
    with_search = json.loads((study / "with-search.json").read_text())
    assert list(m) == list(with_search)
    assert with_search["config"] == "DARTS" and all(with_search[k] is not None for k in SEARCH_FIELDS[:4])


def test_test_refuses_the_search_of_another_run(study):
    r = _test(study, "retrain-inline", "mismatch.json", search=True)
    _assert_one_line_error(r, "search of DARTS seed 0", "retrained softmax-alternate-none seed 0", "omit --search")
    assert not (study / "mismatch.json").exists()


def test_test_of_an_older_retrain_without_run_needs_search(study, tmp_path):
    old = tmp_path / "retrain"
    old.mkdir()
    (old / "model.pt").write_bytes((study / "retrain-txt" / "model.pt").read_bytes())
    summary = json.loads((study / "retrain-txt" / "retrain.json").read_text())
    summary.pop("run")
    (old / "retrain.json").write_text(json.dumps(summary))
    r = runner.invoke(app, ["test", "--retrain", str(old), "--prepared", str(study / "data"), "--out",
                            str(tmp_path / "m.json")])
    _assert_one_line_error(r, str(old / "retrain.json"), "records no run", "--search")
    assert not (tmp_path / "m.json").exists()


def test_aggregate_shows_a_dash_for_null_search_fields(study, tmp_path):
    """A study row whose metrics came from `darts test` without --search: Table 1 shows '—'."""
    r = _test(study, "retrain-txt", "DARTS-no-search.json", search=False)
    assert r.exit_code == 0, r.output
    metrics = tmp_path / "metrics" / "DARTS"
    metrics.mkdir(parents=True)
    (metrics / "0.json").write_text((study / "DARTS-no-search.json").read_text())
    params = tmp_path / "params.yaml"
    p = tiny_params({"DARTS": tiny_params()["configs"]["DARTS"]})
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    _ok(["aggregate", "--params", str(params), "--metrics", str(tmp_path / "metrics"), "--out", str(tmp_path / "rep")])
    row = next(line for line in (tmp_path / "rep" / "table1.md").read_text().splitlines()
               if line.startswith("| DARTS "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] != "—" and cells[6] == "—" and cells[8] == "—", cells  # test error; search GPU days, wall h
