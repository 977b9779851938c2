"""`darts scale`'s cost estimate: the arithmetic with known numbers, the search split, the
timing loop against a scripted clock (warm-up excluded), and the CLI at the tiny scale."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import tiny_params
from darts.data import split_indices
from darts.loops.steptime import StepCost, Timer
from darts.method.schedules import train_fraction
from stages import estimate, scales
from stages.cli import app

runner = CliRunner()
CONFIGS = {  # one of each search cost group
    "DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"},
    "FIMT": {"activation": "softmax", "schedule": "fimt", "regularization": "none"},
    "CS10": {"activation": "softmax", "schedule": "constant", "regularization": "pr"},
    "DARTS_2nd": {"activation": "softmax", "schedule": "alternate", "regularization": "none", "order": 2},
}


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    """Measure on the CPU with one thread whatever the machine (what the stages read)."""
    monkeypatch.setenv("DARTS_DEVICE", "cpu")
    monkeypatch.setenv("DARTS_THREADS", "1")


def paper_sized(configs: dict = CONFIGS, seeds=(0, 1, 2)) -> dict:
    """The paper protocol's counts (CIFAR-10, batch 64 x 50 epochs, batch 96 x 600 epochs)."""
    p = tiny_params(configs, seeds)
    p.update({"activation": "crb", "schedule": "fimt", "regularization": "admm", "order": 1})
    p["data"].update({"dataset": "cifar10", "train_size": None, "test_size": None})
    p["search"].update({"batch_size": 64, "epochs": 50, "k": 10})
    p["retrain"].update({"batch_size": 96, "epochs": 600})
    return p


def measured(w=1.5, alpha=0.5, alpha2=6.5, retrain=6.0, infer=1.92, cpu=True, waited=0.02) -> estimate.Measured:
    return estimate.Measured(StepCost(w), StepCost(alpha, 5000.0), StepCost(alpha2, 6000.0),
                             StepCost(retrain, 9000.0), StepCost(infer), 96, "cpu (2 threads)", cpu,
                             "getrusage", waited)


# --------------------------------------------------------------------------- arithmetic
def test_search_seconds_known_numbers():
    # 2 s per iteration (1.5 s w + 0.5 s α, every iteration) x 390 steps x 50 epochs x 36 runs
    assert estimate.search_seconds(1.5, 0.5, 1.0, 390, 50) * 36 / 3600 == 390.0
    # one α step per 10 w steps: 1.5 + 5.0 / 10 = 2 s per iteration
    assert estimate.search_seconds(1.5, 5.0, 10.0, 710, 50) == 2.0 * 710 * 50
    assert estimate.retrain_seconds(6.0, 520, 600) / 86400 == 6.0 * 520 * 600 / 86400  # 21.67 days


@pytest.mark.parametrize("n,batch,ratio,steps", [(50_000, 64, 1.0, 390), (50_000, 64, 10.0, 710),
                                                 (800, 32, 1.0, 12), (800, 32, 10.0, 22), (352, 16, 10.0, 20)])
def test_search_steps_follow_the_stage_split(n, batch, ratio, steps):
    """k/(k+1) of the images train w (50/50 for alternate), cut as split_indices cuts them."""
    assert estimate.search_steps_per_epoch(n, batch, ratio) == steps
    assert len(split_indices(n, train_fraction(ratio), 0)[0]) // batch == steps


def test_dataset_sizes_default_to_the_dataset():
    assert estimate.dataset_sizes({"dataset": "cifar10", "train_size": None, "test_size": None}) == (50_000, 10_000)
    assert estimate.dataset_sizes({"dataset": "synthetic", "train_size": 800, "test_size": None}) == (800, 1_000)


def test_study_plan_groups_runs_by_step_cost():
    plan = estimate.study_plan(paper_sized())
    got = {(g.schedules, g.order): (g.runs, g.steps_per_epoch) for g in plan.searches}
    # DARTS x 3 seeds; FIMT, CS10 x 3 + the variant (fimt); DARTS_2nd x 3
    assert got == {(("alternate",), 1): (3, 390), (("fimt", "constant"), 1): (7, 710), (("alternate",), 2): (3, 390)}
    assert (plan.runs, plan.search_epochs, plan.retrain_steps_per_epoch, plan.retrain_epochs, plan.n_test) == \
        (13, 50, 520, 600, 10_000)
    assert plan.what == "4 configs x 3 seeds + the variant"


def test_cost_rows_exact():
    plan = estimate.study_plan(paper_sized())
    rows = {r.what: r for r in estimate.cost_rows(plan, measured())}
    assert rows["search alternate, 1st order"].each == 2.0 * 390 * 50
    assert rows["search fimt+constant, 1st order"].each == (1.5 + 0.5 / 10) * 710 * 50
    assert rows["search alternate, 2nd order"].each == 8.0 * 390 * 50
    assert rows["retrain"].each == 6.0 * 520 * 600 and rows["retrain"].runs == 13
    assert rows["test"].each == pytest.approx(10_000 * 1.92 / 96)  # 200 s
    total = sum(r.total for r in rows.values())
    assert total == pytest.approx(3 * 39_000 + 7 * 55_025 + 3 * 156_000 + 13 * (1_872_000 + 200))


def test_report_table_and_pointer():
    plan = estimate.study_plan(paper_sized())
    text = estimate.report(plan, measured(), pointer_hours=24)
    for needle in ("search: w step", "α step, 2nd order", "retrain step (DARTS_V2 cell)", "390 x 50",
                   "520 x 600", "whole study: 4 configs x 3 seeds + the variant", "21.7 days", "8.8 GB",
                   "peak RSS: of this process", "darts scale quick", "darts study run --jobs N", '"Scale out"'):
        assert needle in text, (needle, text)
    total_days = (3 * 39_000 + 7 * 55_025 + 3 * 156_000 + 13 * 1_872_200) / 86400
    assert f"{total_days:.1f} days" in text
    assert "note: other processes" not in text
    assert "waited for a core 50 %" in estimate.report(plan, measured(waited=0.5))
    assert "darts scale quick" not in estimate.report(plan, measured(), pointer_hours=1e9)
    assert "darts scale quick" not in estimate.report(plan, measured(cpu=False), pointer_hours=24)


def test_durations():
    assert [estimate.duration(s) for s in (59, 600, 3 * 3600, 3 * 86400)] == ["59 s", "10 min", "3.0 h", "3.0 days"]


# ------------------------------------------------------------------------------- timing
def test_timer_budget_stops_after_the_minimum():
    t = Timer(torch.device("cpu"), clock=lambda: 0.0, budget_s=10.0, minimum=2)
    for times, stop in (([20], False), ([6, 6], True), ([1, 1, 1], False), ([1, 1, 9], True)):
        t.times = times
        assert t.should_stop() is stop, times


def test_measure_excludes_warm_up_steps():
    """A scripted clock: the search's warm-up iteration reads no clock, the retrain's
    first step (100 s) must not count. A search iteration reads it at the α step's start
    and end and at the iteration's end: the w step is the rest."""
    def search(*alpha_w):  # iterations of (α seconds, w seconds): α starts as the iteration does
        return [d for a, w in alpha_w for d in (0.0, a, w)]

    phases = [search((2.0, 1.0), (3.0, 1.5)),  # first order, two iterations
              search((6.0, 1.0), (8.0, 2.0)),  # second order
              [100, 4.0, 6.0],                 # retrain: warm-up, two steps
              [0.5]]                           # test forward (its warm-up is not clocked)
    stamps = []
    for durations in phases:
        stamps += list(itertools.accumulate(durations, initial=len(stamps) * 1000.0))
    clock = iter(stamps)
    params = tiny_params({"DARTS_2nd": CONFIGS["DARTS_2nd"]})
    m = estimate.measure(params, steps=2, clock=lambda: next(clock), budget_s=math.inf)
    assert next(clock, None) is None  # every stamp read, none more
    assert (m.w.seconds, m.alpha.seconds, m.alpha2.seconds, m.retrain.seconds, m.infer.seconds) == \
        (1.25, 2.5, 7.0, 5.0, 0.5)
    assert (m.w.n, m.alpha.n, m.alpha2.n, m.retrain.n, m.infer_batch) == (2, 2, 2, 2, 32)
    assert m.alpha.rss_mb > 0 and m.alpha2.rss_mb > 0 and m.retrain.rss_mb > 0 and m.cpu


def test_measure_budget_stops_at_one_timed_step_each():
    """A zero budget: one timed step of each kind (the retrain's second step: its first warms up)."""
    m = estimate.measure(tiny_params({"DARTS": CONFIGS["DARTS"]}), steps=3, budget_s=0.0)
    assert (m.w.n, m.alpha.n, m.alpha2, m.retrain.n) == (1, 1, None, 1)


# ---------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_scale(tmp_path, monkeypatch):
    """A `tiny` preset next to a params file, on the CPU whatever the machine."""
    presets = tmp_path / "scales"
    presets.mkdir()
    p = tiny_params({"DARTS": CONFIGS["DARTS"], "DARTS_2nd": CONFIGS["DARTS_2nd"]})
    (presets / "tiny.yaml").write_text(yaml.safe_dump({k: p[k] for k in scales.SCALE_KEYS}, sort_keys=False))
    monkeypatch.setattr(scales, "SCALES_DIR", presets)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({k: v for k, v in p.items() if k not in scales.SCALE_KEYS}, sort_keys=False))
    return params


def test_cli_scale_prints_measured_cost_and_pointer(tiny_scale, monkeypatch):
    monkeypatch.setattr(estimate, "POINTER_HOURS", 0.0)  # the tiny study "exceeds" it
    r = runner.invoke(app, ["scale", "tiny", "--params", str(tiny_scale), "--estimate-steps", "1"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(tiny_scale.read_text())["scale"] == "tiny"
    for needle in ("run `dvc repro`", "Cost of this scale on cpu", "search: w step", "α step, 2nd order",
                   "retrain step", "search alternate, 2nd order", "whole study: 2 configs x 1 seeds + the variant",
                   "darts scale quick", "darts study run --jobs N", "README's \"Scale out\" section"):
        assert needle in r.output, (needle, r.output)


def test_cli_no_estimate_measures_nothing(tiny_scale, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("measured with --no-estimate")

    monkeypatch.setattr(estimate, "measure", boom)
    monkeypatch.setattr(estimate, "time_search", boom)
    r = runner.invoke(app, ["scale", "tiny", "--params", str(tiny_scale), "--no-estimate"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "params.yaml now at the 'tiny' scale; run `dvc repro`"
    assert yaml.safe_load(tiny_scale.read_text())["search"]["layers"] == 3


def test_cli_bad_estimate_steps(tiny_scale):
    r = runner.invoke(app, ["scale", "tiny", "--params", str(tiny_scale), "--estimate-steps", "0"])
    assert r.exit_code == 2 and "--estimate-steps" in r.output
