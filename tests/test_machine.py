"""Machine settings (device, threads) come from the command line or the environment,
never from params.yaml: they must not change a stage's hash (issue: scale out)."""
from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_params
from stages.cli import app
from stages.common import machine, reject_machine_settings
from stages.params import ParamsError

runner = CliRunner()


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_command_line_then_environment_then_default(monkeypatch, keep_threads):
    monkeypatch.delenv("DARTS_DEVICE", raising=False)
    monkeypatch.delenv("DARTS_THREADS", raising=False)
    assert machine().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch.get_num_threads() == 1  # the default: what the committed quick study ran with
    monkeypatch.setenv("DARTS_DEVICE", "cpu")
    monkeypatch.setenv("DARTS_THREADS", "2")
    assert machine().type == "cpu" and torch.get_num_threads() == 2
    assert machine("cpu", 1).type == "cpu" and torch.get_num_threads() == 1  # the command line wins


@pytest.mark.parametrize("env, value, needle", [
    ("DARTS_THREADS", "two", "DARTS_THREADS='two' is invalid; must be an integer >= 0"),
    ("DARTS_THREADS", "-1", "threads=-1 is invalid"),
    ("DARTS_DEVICE", "tpu", "device='tpu' is invalid; valid: auto, cpu, cuda, cuda:N"),
])
def test_bad_environment_is_one_line(monkeypatch, keep_threads, env, value, needle):
    monkeypatch.setenv(env, value)
    with pytest.raises(ParamsError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        machine()


def test_a_machine_setting_left_in_params_says_where_it_went(tmp_path):
    with pytest.raises(ParamsError, match=r"search.device='cuda:1': device is a machine setting, not a param .* "
                                          r"use --device or DARTS_DEVICE"):
        reject_machine_settings("search", {"device": "cuda:1", "C": 4})
    p = tiny_params()
    p["retrain"]["threads"] = 4
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    r = runner.invoke(app, ["check-params", "--params", str(path), "--out", str(tmp_path / "ok")])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "retrain.threads=4: threads is a machine setting" in r.output and "DARTS_THREADS" in r.output
    assert not (tmp_path / "ok").exists()


def test_presets_and_params_hold_no_machine_settings():
    from conftest import ROOT

    for path in [ROOT / "params.yaml", *sorted((ROOT / "stages" / "scales").glob("*.yaml"))]:
        p = yaml.safe_load(path.read_text())
        for section in ("search", "retrain"):
            assert not {"device", "threads"} & set(p[section]), path
