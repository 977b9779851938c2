"""Study sets: the related-work rows are switched on and off on top of a scale preset, and
switching them never touches what an existing config's stages read (so their DVC hashes stay).

dvc.yaml's search/discretize/retrain/test stages of config X read `configs.X`, `search`, `data`
and `retrain` (and `seed` items), so an existing chain keeps its hash exactly when those values
are equal; `aggregate`, `claims` and `figures` read all `configs`/`labels` and must rerun.
"""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT
from darts.report.table import paper_row
from stages import scales
from stages.cli import app
from stages.params import check_run

SET = yaml.safe_load((ROOT / "stages" / "sets" / "related.yaml").read_text())
CHAIN_KEYS = ("search", "data", "retrain", "seeds")


@pytest.fixture
def params(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    return path


def test_quick_default_is_the_committed_params_byte_for_byte(params):
    before = params.read_text()
    scales.apply("quick", str(params))
    assert params.read_text() == before  # nothing of the study changes: every stage keeps its hash
    assert not set(SET["configs"]) & set(yaml.safe_load(before)["configs"])


def test_related_adds_rows_without_touching_existing_chains(params):
    before = yaml.safe_load(params.read_text())
    scales.apply("quick", str(params), sets={"related": True})
    after = yaml.safe_load(params.read_text())
    assert list(after["configs"]) == list(before["configs"]) + list(SET["configs"])
    for name, entry in before["configs"].items():
        assert after["configs"][name] == entry and after["labels"][name] == before["labels"][name]
    for key in CHAIN_KEYS:
        assert after[key] == before[key]
    assert {k: after["labels"][k] for k in SET["configs"]} == SET["labels"]
    assert "related" not in after  # a switch of `darts scale`, not a param
    scales.apply("quick", str(params), sets={"related": False})
    assert yaml.safe_load(params.read_text()) == before


def test_paper_scale_includes_the_set_unless_switched_off(params):
    scales.apply("paper", str(params))
    p = yaml.safe_load(params.read_text())
    assert set(SET["configs"]) <= set(p["configs"]) and "related" not in p
    scales.apply("paper", str(params), sets={"related": False})
    assert not set(SET["configs"]) & set(yaml.safe_load(params.read_text())["configs"])


def test_cli_switch(params):
    r = CliRunner().invoke(app, ["scale", "cifar-cpu", "--params", str(params), "--related", "--no-estimate"])
    assert r.exit_code == 0, r.output
    p = yaml.safe_load(params.read_text())
    assert list(p["configs"])[-len(SET["configs"]):] == list(SET["configs"]) and len(p["configs"]) == 7 + len(SET["configs"])


def test_each_row_is_valid_and_labelled_as_its_literature_row():
    paper = pd.read_csv(ROOT / "data" / "table1-paper.csv")
    assert set(SET["labels"]) == set(SET["configs"])
    for name, entry in SET["configs"].items():
        check_run(f"configs.{name}", entry)
        row = paper_row(paper, SET["labels"][name])
        assert row is not None and row["source"] == "literature", name  # Table 1 shows its reported figure


CALIBRATION = yaml.safe_load((ROOT / "stages" / "sets" / "calibration.yaml").read_text())


def test_calibration_set_is_the_published_darts_v2_cell_on_at_paper_scale_only(params):
    assert CALIBRATION["configs"] == {"DARTS_V2": {"method": "fixed", "genotype": "DARTS_V2"}}
    check_run("configs.DARTS_V2", CALIBRATION["configs"]["DARTS_V2"])
    scales.apply("paper", str(params))
    p = yaml.safe_load(params.read_text())
    assert p["configs"]["DARTS_V2"] == CALIBRATION["configs"]["DARTS_V2"] and "calibration" not in p
    r = CliRunner().invoke(app, ["scale", "quick", "--params", str(params), "--calibration", "--no-estimate"])
    assert r.exit_code == 0, r.output
    p = yaml.safe_load(params.read_text())
    assert list(p["configs"])[-1] == "DARTS_V2" and not set(SET["configs"]) & set(p["configs"])
    assert p["labels"]["DARTS_V2"] == CALIBRATION["labels"]["DARTS_V2"]
    scales.apply("quick", str(params))
    assert "DARTS_V2" not in yaml.safe_load(params.read_text())["configs"]
