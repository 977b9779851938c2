"""α-step schedules: alternate, constant (CS10), FIMT; the train/val split they imply."""
from __future__ import annotations

import copy
import math

import pytest

from darts.method.interfaces import configured
from darts.method.schedules import FIMT, SCHEDULE_TYPES, Constant, alternate, make_schedule, train_fraction


def run(schedule, fishers):
    """Drive a schedule like the search loop: ask, (step α), w step, observe. Returns (flags, logs)."""
    flags, logs = [], []
    for f in fishers:
        due = schedule.alpha_step_due()
        flags.append(due)
        logs.append(schedule.observe(due, f))
    return flags, logs


def test_constant_k10_steps_at_9_19_29():
    s = Constant(k=10)
    flags, logs = run(s, [None] * 30)
    assert [i for i, f in enumerate(flags) if f] == [9, 19, 29]
    assert logs == [{}] * 30
    assert s.step == 30 and s.ratio == 10.0 and not s.needs_fisher


def test_alternate_every_step():
    s = alternate()
    flags, _ = run(s, [None] * 7)
    assert flags == [True] * 7
    assert s.ratio == 1.0 and s.name == "alternate"
    assert make_schedule("alternate").k == 1
    c = make_schedule("constant", k=3)
    assert run(c, [None] * 7)[0] == [False, False, True, False, False, True, False]
    with pytest.raises(ValueError, match="fimt"):
        make_schedule("cosine")


def test_constant_state_dict_round_trip():
    s = Constant(k=4)
    run(s, [None] * 6)
    t = Constant(k=4)
    t.load_state_dict(s.state_dict())
    assert run(t, [None] * 10)[0] == run(s, [None] * 10)[0]
    assert t.step == s.step == 16


# Scripted Fisher traces with T0 = 4, λ = 0.2, m = 1.05, k = 10, worked out by hand. After an α
# step T ← T·m^(−d): d = k − 1 = 9 by default (cycle "k", the paper's text), d = k = 10 with
# cycle "k+1" (the authors' code); both give the same flags on this script.
#   it  due? (0 < F̄ < T, before)    F     T after, d = 9          T after, d = 10          F̄ after
#   0   F̄=0          → no           5     4·1.05   = 4.2          4·1.05   = 4.2           5 (first: F̄ = F)
#   1   5 < 4.2       → no           3     4·1.05²  = 4.41         4·1.05²  = 4.41          .2·3 + .8·5 = 4.6
#   2   4.6 < 4.41    → no           0.5   4·1.05³  = 4.6305       4·1.05³  = 4.6305        .1 + 3.68 = 3.78
#   3   3.78 < T      → YES          0.4   4·1.05⁻⁶  ≈ 2.9849      4·1.05⁻⁷  ≈ 2.8427       .08 + 3.024 = 3.104
#   4   3.104 < T     → no           2     4·1.05⁻⁵  ≈ 3.1341      4·1.05⁻⁶  ≈ 2.9849       .4 + 2.4832 = 2.8832
#   5   2.8832 < T    → YES          0.1   4·1.05⁻¹⁴ ≈ 2.0203      4·1.05⁻¹⁶ ≈ 1.8324       .02 + 2.30656 = 2.32656
#   6   2.33 < T      → no           0.2   4·1.05⁻¹³ ≈ 2.1213      4·1.05⁻¹⁵ ≈ 1.9241       .04 + 1.861248 = 1.901248
#   7   1.90 < T      → YES          0.3   4·1.05⁻²² ≈ 1.3674      4·1.05⁻²⁵ ≈ 1.1812       1.5809984
#   8   1.58 < T      → no           6     4·1.05⁻²¹ ≈ 1.4358      4·1.05⁻²⁴ ≈ 1.2403       2.46479872
#   9   2.46 < T      → no           0.05  4·1.05⁻²⁰ ≈ 1.5076      4·1.05⁻²³ ≈ 1.3023       1.981838976
F_SCRIPT = [5.0, 3.0, 0.5, 0.4, 2.0, 0.1, 0.2, 0.3, 6.0, 0.05]
DUE = [False, False, False, True, False, True, False, True, False, False]
FBAR = [5.0, 4.6, 3.78, 3.104, 2.8832, 2.32656, 1.901248, 1.5809984, 2.46479872, 1.981838976]
T_EXP = [(1, 0), (2, 0), (3, 0), (3, 1), (4, 1), (4, 2), (5, 2), (5, 3), (6, 3), (7, 3)]  # (× m, α steps)


def thresholds(d: int) -> list[float]:
    return [4.0 * 1.05 ** up / 1.05 ** (d * down) for up, down in T_EXP]


THRESH = thresholds(9)  # the default, cycle "k"


@pytest.mark.parametrize("cycle, d", [("k", 9), ("k+1", 10)])
def test_fimt_scripted_sequence(cycle, d):
    s = FIMT(k=10, lam=0.2, m=1.05, threshold=4.0, cycle=cycle)
    assert s.down_exponent == d
    flags, logs = run(s, F_SCRIPT)
    assert flags == DUE
    assert [r["fisher"] for r in logs] == F_SCRIPT
    assert [r["fbar"] for r in logs] == pytest.approx(FBAR, rel=1e-12)
    assert [r["threshold"] for r in logs] == pytest.approx(thresholds(d), rel=1e-12)
    assert logs[3]["threshold"] == pytest.approx({9: 2.984862, 10: 2.842725}[d], abs=1e-6)
    assert s.step == 10 and s.needs_fisher and s.ratio == 10.0  # the split assumes k either way


def test_fimt_default_cycle_is_the_papers_and_bad_cycle_is_refused():
    assert FIMT().cycle == "k" and FIMT().down_exponent == 9
    assert make_schedule("fimt", k=10).down_exponent == 9
    assert make_schedule("fimt", k=10, cycle="k+1").down_exponent == 10
    search = {"k": 10, "fimt_lambda": 0.2, "fimt_m": 1.05, "fimt_threshold": 1.0, "fimt_cycle": "k+1"}
    assert configured(SCHEDULE_TYPES, "fimt", search).down_exponent == 10
    assert configured(SCHEDULE_TYPES, "constant", search).k == 10  # takes k, not FIMT's keys
    assert configured(SCHEDULE_TYPES, "alternate", search).k == 1 and make_schedule("alternate").name == "alternate"
    with pytest.raises(ValueError, match="valid: k, k\\+1"):
        FIMT(cycle="text")


def test_fimt_first_iteration_never_due_and_zero_fisher_never_due():
    s = FIMT(threshold=1e9)  # any positive F̄ would be below T
    assert s.alpha_step_due() is False
    s.observe(False, 1.0)
    assert s.alpha_step_due() is True
    z = FIMT(threshold=1.0)
    flags, logs = run(z, [0.0] * 50)
    assert not any(flags)  # F̄ = 0 is not > 0, however large T grows
    assert logs[-1]["threshold"] == pytest.approx(1.05 ** 50, rel=1e-12)


def test_fimt_requires_finite_fisher():
    s = FIMT()
    with pytest.raises(ValueError, match="finite"):
        s.observe(False, None)
    with pytest.raises(ValueError, match="step 0"):
        s.observe(False, float("nan"))
    with pytest.raises(ValueError):
        s.observe(False, math.inf)


def constant_fisher_gaps(cycle: str, k: int = 10, f: float = 3.0, n: int = 400) -> tuple[list[int], list[int]]:
    """(α-step iterations, gaps between them) of FIMT at a constant Fisher trace f, T0 = 1."""
    flags, logs = run(FIMT(k=k, threshold=1.0, cycle=cycle), [f] * n)
    assert [d["fbar"] for d in logs] == pytest.approx([f] * n, rel=1e-14)
    steps = [i for i, due in enumerate(flags) if due]
    return steps, [b - a for a, b in zip(steps, steps[1:])]


def test_fimt_constant_fisher_gap_is_k_as_the_paper_says():
    """§4.1: "the expected ratio of w steps per α step is set to 10", the ratio CS10 runs exactly
    and the 10/11 split assumes: one α step every k iterations (every iteration has a w step)."""
    steps, gaps = constant_fisher_gaps("k")
    # warm-up: T before iteration j is 1.05^j; first j with 1.05^j > 3 is 23 (1.05^22 ≈ 2.925)
    assert 1.05 ** 22 < 3.0 < 1.05 ** 23
    assert steps[0] == 23
    assert len(gaps) >= 30 and set(gaps) == {10}  # α step, 9 without, α step: 10 w steps per α step
    # the same gap for other k and another F; k = 1 is alternate once T has passed F
    for k in (1, 2, 5, 20):
        assert set(constant_fisher_gaps("k", k=k, f=7.5)[1]) == {k}, k
    ratio = (len(steps) - 1) / (steps[-1] - steps[0])  # α steps per iteration, warm-up excluded
    assert ratio == pytest.approx(1 / 10, rel=1e-12)


def test_fimt_constant_fisher_gap_is_k_plus_1_with_the_authors_cycle():
    steps, gaps = constant_fisher_gaps("k+1")
    assert steps[0] == 23
    assert len(gaps) >= 30 and set(gaps) == {11}  # one α step per k + 1 iterations, k w steps between
    assert set(constant_fisher_gaps("k+1", k=1, f=7.5)[1]) == {2}


def test_fimt_state_dict_round_trip_continues_identically():
    s = FIMT(k=10, threshold=4.0)
    run(s, F_SCRIPT[:5])
    state = copy.deepcopy(s.state_dict())
    assert state == {"threshold": pytest.approx(THRESH[4], rel=1e-12), "fbar": pytest.approx(FBAR[4], rel=1e-12),
                     "step": 5, "started": True}
    t = FIMT(k=10)
    t.load_state_dict(state)
    rest = F_SCRIPT[5:] + [1.0, 0.5, 0.2, 3.0]
    assert run(t, rest) == run(s, rest)
    assert run(t, [])[0] == []
    # restoring a fresh (not started) state: the next F is taken as F̄ directly
    u = FIMT()
    u.load_state_dict(FIMT().state_dict())
    assert u.observe(False, 7.0)["fbar"] == 7.0


def test_train_fraction():
    assert train_fraction(1) == 0.5
    assert train_fraction(10) == pytest.approx(10 / 11, rel=1e-15)
    assert train_fraction(Constant(k=10).ratio) == pytest.approx(0.9090909090909091)
    assert train_fraction(alternate().ratio) == 0.5
