"""README "Add a method": the regularizer example there, executed as written, is a working
component once registered: params validation takes its name and its own params.search key,
`configured` builds it from params.search, its penalty has the value it says, and a search
runs with it end to end. Nothing outside the example is edited for it."""
from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import ROOT, tiny_params
from darts.method import regularizers
from darts.method.activations import make_activation
from darts.method.interfaces import Regularizer, configured
from darts.nn.supernet import SearchNetwork
from darts.space.projection import project
from stages.cli import app
from stages.params import ParamsError, check_run, run_spec
from stages.search import search_settings


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**A regularizer** is one class"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def elastic(monkeypatch):
    """The README's class, executed as written; its registration goes into the real registry
    for the test only (monkeypatch restores it)."""
    namespace = {"NoRegularizer": regularizers.NoRegularizer, "project": project, "REGULARIZER_TYPES": {}}
    exec(_readme_example(), namespace)
    (name, cls), = namespace["REGULARIZER_TYPES"].items()
    monkeypatch.setitem(regularizers.REGULARIZER_TYPES, name, cls)
    return cls


def test_the_readme_regularizer_is_a_component(elastic):
    assert isinstance(elastic(), Regularizer)
    entry = {"activation": "softmax", "schedule": "alternate", "regularization": "elastic"}
    check_run("configs.E", entry)
    params = tiny_params({"E": entry})
    params["search"]["elastic_rho"] = 0.2
    spec = run_spec(params, "E", 0)
    _, extra = search_settings(params, spec)
    reg = configured(regularizers.REGULARIZER_TYPES, "elastic", extra)
    assert extra["elastic_rho"] == 0.2 and reg.rho == 0.2
    params["search"]["elastic_rho"] = -1.0
    with pytest.raises(ParamsError, match=r"^search.elastic_rho=-1.0 is invalid; must be a number >= 0$"):
        search_settings(params, spec)
    # its penalty: ρ·Σ|act(α) − Π_S(act(α))| over both cells, by hand on a network
    net = SearchNetwork(make_activation("softmax"), C=4, n_classes=10, layers=3,
                        generator=torch.Generator().manual_seed(0))
    by_hand = sum((w - project(w.detach(), net.live()[t], net.ops)).abs().sum() for t, w in net.weights().items())
    assert reg.penalty(net, 0.5).item() == pytest.approx(0.2 * by_hand.item(), rel=1e-6) and by_hand.item() > 1


def test_a_search_runs_with_it(elastic, tmp_path):
    params = tiny_params({"E": {"activation": "softmax", "schedule": "alternate", "regularization": "elastic"}})
    params["search"]["elastic_rho"] = 0.05
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    runner = CliRunner()
    r = runner.invoke(app, ["prepare-split", "--params", str(path), "--out", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", "--config", "E", "--seed", "0", "--params", str(path),
                            "--prepared", str(tmp_path / "data"), "--out", str(tmp_path / "search")])
    assert r.exit_code == 0, (r.output, r.exception)
    record = json.loads((tmp_path / "search" / "search.json").read_text())
    assert record["run"]["regularization"] == "elastic" and record["w_steps"] > 0
    assert any(e.get("penalty") for e in record["epochs"])  # the penalty reached the α loss
