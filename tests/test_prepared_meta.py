"""data/prepared records the search split's seed (meta.json `split_seed`), so dvc.yaml's search
stages can depend on data/prepared instead of listing the data params, and a search on data
prepared with another seed stops in one line before any work."""
from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from conftest import assert_one_line_error, tiny_params
from stages.cli import app


def test_split_seed_is_recorded_and_checked(tmp_path):
    runner = CliRunner()
    p = tiny_params({"D": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}})
    p["data"]["seed"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    r = runner.invoke(app, ["prepare-split", "--params", str(path), "--out", str(tmp_path / "prep")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "prep" / "meta.json").read_text())["split_seed"] == 3
    p["data"]["seed"] = 5
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    r = runner.invoke(app, ["search", "--config", "D", "--seed", "0", "--params", str(path),
                            "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "s")])
    assert_one_line_error(r, "made with data.seed=3 but params say data.seed=5", "rerun `darts prepare-split`")
    assert not (tmp_path / "s" / "search.json").exists()
