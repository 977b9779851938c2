"""What a scale costs on this machine: time a few real steps at its sizes, then multiply out.

`darts scale paper` on a 2-core CPU sets up a study of CPU-years; saying so before
`dvc repro` needs a measured step, not a guess, because a step's cost depends on the
machine, its threads and whatever else runs on it. So this module builds the search
network and the evaluation network at the scale's sizes and times a few of their steps
through darts' own loops on random batches (`darts.loops.steptime`); then it multiplies out by
the study's steps, epochs and runs. The cost arithmetic is a set of pure functions, so
that its numbers can be tested without timing anything.

What is timed stands in for every run: first-order searches are timed with softmax and no
regularizer (CRB prunes ops as it goes, so its searches cost less; PR/ADMM add a penalty on
α only), the retrain with DARTS_V2's genotype (the searched cell is unknown beforehand).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from darts.loops.steptime import N_CLASSES, Clock, StepCost, reset_peak, time_retrain, time_search, warm_up_search
from darts.method.activations import make_activation
from darts.method.interfaces import configured
from darts.method.registry import METHODS
from darts.method.schedules import SCHEDULE_TYPES, train_fraction
from darts.nn.evalnet_imagenet import build_network
from darts.nn.fast.hostmemory import retain_freed_memory
from darts.nn.supernet import SearchNetwork
from darts.space.primitives import DARTS_V2

from .common import device_label, machine
from .params import ParamsError, RunSpec, image_size, run_spec, section, study_runs
from .retrain import network_kind, retrain_settings
from .search import search_settings

#: a CPU study longer than this gets the pointer to cheaper scales and to scaling out
POINTER_HOURS = 24.0
#: (train, test) images when data.train_size/test_size is null: the dataset's own sizes
#: (synthetic: prepare-split's defaults; an image folder's is unknown before it is read,
#: so CIFAR-10's is assumed)
DATASET_SIZES = {"cifar10": (50_000, 10_000), "synthetic": (2_000, 1_000), "imagefolder": (50_000, 10_000)}
#: above this share of its threads' time spent waiting for a core (other processes held
#: them) while measuring, the report says that the figures are slower than on an idle machine
BUSY_SHARE = 0.1
#: seconds of timed steps, at the default 2 steps of each kind, past which the loops stop
#: (shared out: first-order search 25 %, second order 35 %, retrain 40 %); each times one
#: step at least. At the paper's sizes on a 2-core CPU one step of each kind already
#: exceeds its share: the whole `darts scale paper` (imports, building, warm-ups) took
#: 49 s with 2 threads and 73 s with 1 there.
BUDGET_S = 20.0


# ---------------------------------------------------------------------- cost arithmetic
def dataset_sizes(data: dict) -> tuple[int, int]:
    """(train, test) images that prepare-split will write for params.data."""
    train, test = DATASET_SIZES.get(data.get("dataset"), DATASET_SIZES["cifar10"])
    return int(data.get("train_size") or train), int(data.get("test_size") or test)


def search_steps_per_epoch(n_train: int, batch_size: int, ratio: float) -> int:
    """w steps per search epoch: the train part of the search split (k/(k+1) of the data, as
    `stages.search.build` cuts it with `darts.data.split_indices`) in whole batches."""
    return round(n_train * train_fraction(ratio)) // batch_size


def search_seconds(t_w: float, t_alpha: float, ratio: float, steps_per_epoch: int, epochs: int) -> float:
    """One search: every iteration takes a w step, one in ``ratio`` also an α step."""
    return epochs * steps_per_epoch * (t_w + t_alpha / ratio)


def retrain_seconds(t_step: float, steps_per_epoch: int, epochs: int) -> float:
    return epochs * steps_per_epoch * t_step


@dataclass(frozen=True)
class Measured:
    """What one estimate measured: a search iteration's w step and first-/second-order α
    step, a retrain step, and ``infer``, one forward of the evaluation network on a
    retrain-sized batch (what the test stage runs)."""

    w: StepCost
    alpha: StepCost
    alpha2: StepCost | None
    retrain: StepCost
    infer: StepCost
    infer_batch: int
    device: str
    cpu: bool
    rss_method: str
    waited: float | None = None  # share of the threads' time spent waiting for a core


@dataclass(frozen=True)
class SearchGroup:
    """Searches that cost the same per step: one schedule ratio, one order."""

    schedules: tuple[str, ...]
    ratio: float
    order: int
    runs: int
    steps_per_epoch: int


@dataclass(frozen=True)
class Plan:
    searches: tuple[SearchGroup, ...]
    search_epochs: int
    retrain_steps_per_epoch: int
    retrain_epochs: int
    runs: int
    n_test: int
    what: str  # which runs, in words


def study_plan(params: dict) -> Plan:
    """The runs `dvc repro` makes at these params (configs × seeds, plus the variant chain
    under current/), grouped by what a search step costs."""
    runs: list[RunSpec] = study_runs(params)
    what = f"{len(params['configs'])} configs x {len(params['seeds'])} seeds"
    try:
        runs.append(run_spec(params, None, None))
        what += " + the variant"
    except ParamsError:
        pass
    s, r = section(params, "search"), section(params, "retrain")
    n_train, n_test = dataset_sizes(section(params, "data"))
    groups: dict[tuple[float, int], list[str]] = {}
    for spec in runs:
        if not METHODS[spec.method].trains_supernet:
            continue  # random sampling: no search step to pay for
        ratio = configured(SCHEDULE_TYPES, spec.schedule, search_settings(params, spec)[1], "schedule").ratio
        groups.setdefault((ratio, spec.order), []).append(spec.schedule)
    searches = tuple(SearchGroup(tuple(dict.fromkeys(names)), ratio, order, len(names),
                                 search_steps_per_epoch(n_train, int(s["batch_size"]), ratio))
                     for (ratio, order), names in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])))
    return Plan(searches, int(s["epochs"]), n_train // int(r["batch_size"]), int(r["epochs"]), len(runs),
                n_test, what)


@dataclass(frozen=True)
class Row:
    what: str
    runs: int
    steps: str
    each: float  # seconds per run

    @property
    def total(self) -> float:
        return self.each * self.runs


def cost_rows(plan: Plan, m: Measured) -> list[Row]:
    """Per-run and all-runs seconds of each stage that dominates the study."""
    rows = []
    for g in plan.searches:
        alpha = m.alpha2 if g.order == 2 else m.alpha
        if alpha is None:
            raise ValueError("a second-order search is planned but no second-order step was measured")
        order = "1st" if g.order == 1 else "2nd"
        rows.append(Row(f"search {'+'.join(g.schedules)}, {order} order", g.runs,
                        f"{g.steps_per_epoch} x {plan.search_epochs}",
                        search_seconds(m.w.seconds, alpha.seconds, g.ratio, g.steps_per_epoch, plan.search_epochs)))
    rows.append(Row("retrain", plan.runs, f"{plan.retrain_steps_per_epoch} x {plan.retrain_epochs}",
                    retrain_seconds(m.retrain.seconds, plan.retrain_steps_per_epoch, plan.retrain_epochs)))
    rows.append(Row("test", plan.runs, f"{plan.n_test} images", plan.n_test * m.infer.seconds / m.infer_batch))
    return rows


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _mb(v: float | None) -> str:
    return "" if v is None else (f"{v / 1024:.1f} GB" if v >= 1024 else f"{v:.0f} MB")


def report(plan: Plan, m: Measured, pointer_hours: float | None = None) -> str:
    """The printed table, and on a CPU with a study over ``pointer_hours`` (default
    POINTER_HOURS, read at call time) what to do instead."""
    pointer_hours = POINTER_HOURS if pointer_hours is None else pointer_hours
    gpu = any(c is not None and c.gpu_mb is not None for c in (m.alpha, m.alpha2, m.retrain))
    lines = [f"Cost of this scale on {m.device} (DARTS_DEVICE, DARTS_THREADS: as the stages will run), "
             "from steps timed on random batches at its sizes:",
             f"  {'step (after a warm-up)':<34}{'timed':>5}{'s/step':>9}{'peak RSS':>10}"
             + (f"{'peak GPU':>10}" if gpu else "")]
    steps = [("search: w step", m.w), ("search: α step, 1st order", m.alpha),
             ("search: α step, 2nd order", m.alpha2), ("retrain step (DARTS_V2 cell)", m.retrain),
             (f"test: forward of {m.infer_batch} images", m.infer)]
    for name, c in steps:
        if c is not None:
            lines.append(f"  {name:<34}{c.n:>5}{c.seconds:>9.3f}{_mb(c.rss_mb):>10}"
                         + (f"{_mb(c.gpu_mb):>10}" if gpu else ""))
    rows = cost_rows(plan, m)
    total = sum(r.total for r in rows)
    lines.append(f"  {'stage':<34}{'runs':>5}  {'steps/epoch x epochs':<21}{'each':>10}{'all runs':>12}")
    for r in rows:
        lines.append(f"  {r.what:<34}{r.runs:>5}  {r.steps:<21}{duration(r.each):>10}{duration(r.total):>12}")
    hours = f"  ({total / 3600:,.0f} h)" if total >= 2 * 86400 else ""
    lines.append(f"  {'whole study: ' + plan.what:<72}{duration(total):>10}{hours}")
    lines.append(f"  peak RSS: of this process during each row's steps (search: whole iterations); {m.rss_method}")
    if m.cpu and m.waited is not None and m.waited > BUSY_SHARE:
        lines.append(f"  note: other processes held the cores: this one waited for a core {100 * m.waited:.0f} % of "
                     "the time it measured; on an idle machine the steps are faster")
    if m.cpu and total > pointer_hours * 3600:
        lines += [f"At {duration(total)} this study is not for this CPU. Instead:",
                  "  darts scale quick       the embedded synthetic study: same code paths, minutes on 2 cores"]
        if (Path(__file__).resolve().parent / "scales" / "cifar-cpu.yaml").is_file():
            lines.append("  darts scale cifar-cpu   real CIFAR-10, sized for a CPU")
        lines += ["  darts study run --jobs N --devices cuda:0,cuda:1,...   the study on several GPUs at once",
                  "See the README's \"Scale out\" section."]
    return "\n".join(line.rstrip() for line in lines)


# -------------------------------------------------------------------------- measuring
def _sched() -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable but waiting for one) of this process's threads, from Linux's
    schedstat; None where there is none. Waiting means other processes held the cores."""
    try:
        pairs = [Path(f).read_text().split()[:2] for f in Path("/proc/self/task").glob("*/schedstat")]
    except OSError:
        return None
    return (sum(int(a) for a, _ in pairs), sum(int(b) for _, b in pairs)) if pairs else None


def _side(params: dict) -> tuple[int, int]:
    """data.image_size as (height, width)."""
    return image_size(section(params, "data"))


def measure(params: dict, steps: int = 2, clock: Clock = time.perf_counter, budget_s: float | None = None) -> Measured:
    """Time up to ``steps`` steps of each kind at params' sizes, after a warm-up.

    The search is warmed up by one untimed first-order iteration (second-order steps follow
    first-order ones: same kernels and shapes), the retrain by its first step. Past
    ``budget_s`` seconds of timed steps (default BUDGET_S x steps / 2) the loops stop, each
    with one timed step at least.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ParamsError(f"--estimate-steps={steps!r} is invalid; must be an integer >= 1")
    budget_s = BUDGET_S * steps / 2 if budget_s is None else budget_s
    retain_freed_memory()  # as the stages run: freed memory is reused, not faulted in afresh
    resettable = reset_peak(torch.device("cpu"))
    sched0 = _sched()
    second = any(g.order == 2 for g in study_plan(params).searches)
    # where and with how many threads: as the stages under `dvc repro` (DARTS_DEVICE, DARTS_THREADS)
    device = machine()
    # first-order searches are timed as softmax without a regularizer (see the module doc)
    cfg, extra = search_settings(params, RunSpec("estimate", "estimate", "softmax", "constant", "none", 1, 0))
    torch.manual_seed(0)
    net = SearchNetwork(make_activation("softmax"), C=extra["C"], n_classes=N_CLASSES,
                        layers=extra["layers"]).to(device)
    warm_up_search(net, cfg, _side(params))
    w, alpha = time_search(net, cfg, _side(params), steps, clock, budget_s * 0.25)
    alpha2 = time_search(net, replace(cfg, order=2), _side(params), steps, clock, budget_s * 0.35)[1] \
        if second else None
    del net
    rcfg, rextra = retrain_settings(params)
    torch.manual_seed(0)
    model = build_network(network_kind(rextra, params), DARTS_V2, C=rextra["C"], n_classes=N_CLASSES,
                          layers=rextra["layers"], auxiliary=bool(rextra["auxiliary"])).to(device)
    retrain, infer = time_retrain(model, rcfg, _side(params), steps, clock, budget_s * 0.4)
    method = ("getrusage ru_maxrss, reset before each measurement (/proc/self/clear_refs)" if resettable else
              "getrusage ru_maxrss, the process's peak so far (cannot reset here: later rows include earlier)")
    sched1 = _sched()
    waited = None
    if sched0 is not None and sched1 is not None:
        ran, wait = sched1[0] - sched0[0], sched1[1] - sched0[1]
        waited = wait / max(ran + wait, 1)
    return Measured(w, alpha, alpha2, retrain, infer, rcfg.batch_size, device_label(device), device.type == "cpu",
                    method, waited)


def estimate(params: dict, steps: int = 2, pointer_hours: float | None = None) -> str:
    """Measure, then the printed report."""
    return report(study_plan(params), measure(params, steps), pointer_hours)
