"""When to take an α step (paper §3.2): alternate (DARTS), constant (CS10), FIMT.

A schedule is asked `alpha_step_due()` before each iteration and told `observe(...)`
after the iteration's w step. Its `ratio` (expected w steps per α step) fixes the
search train/val split: k/(k+1) of the data trains w (50/50 for alternate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from darts.method.interfaces import Setting

#: the params.search key shared by the constant and FIMT schedules: w steps per α step
K_SETTING = Setting(10, "positive_int")


@dataclass
class Constant:
    """One α step every k-th w step: ``(step + 1) % k == 0``. k = 1 is DARTS' alternate."""

    #: the params.search keys it reads -> their defaults and valid values (the one place written)
    settings: ClassVar[dict[str, Setting]] = {"k": K_SETTING}
    k: int = K_SETTING.default
    step: int = 0
    name: str = "constant"
    needs_fisher = False
    #: constructor argument -> the params.search key that sets it (``configured`` reads them)
    options: ClassVar[dict[str, str]] = {"k": "k"}

    @property
    def ratio(self) -> float:
        return float(self.k)

    def alpha_step_due(self) -> bool:
        return (self.step + 1) % self.k == 0

    def observe(self, took_alpha: bool, fisher: float | None = None) -> dict:
        self.step += 1
        return {}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, d: dict) -> None:
        self.step = int(d["step"])


@dataclass
class Alternate(Constant):
    """DARTS: an α step before every w step (Constant with k = 1)."""

    k: int = 1
    name: str = "alternate"
    options: ClassVar[dict[str, str]] = {}


def alternate() -> Constant:
    return Alternate()


#: FIMT's cycle at constant F: "k" (paper text, §3.2/§4.1: exactly k w steps per α step) or
#: "k+1" (the authors' code: one α step per k + 1 w steps)
FIMT_CYCLES = ("k", "k+1")


@dataclass
class FIMT:
    """Dynamic schedule on the trace of the empirical Fisher information.

    F (Σ grad² over network weights, before clipping) is smoothed as
    F̄ ← λF + (1 − λ)F̄ (F̄ = F at the first step). An α step is due iff 0 < F̄ < T.
    After an iteration without an α step T ← T·m; after one with an α step T ← T·m^(−d).

    Why d = k − 1 (``cycle="k"``, the default): every iteration takes one w step, so at a
    constant F the schedule settles into cycles of one iteration with an α step and j
    without, and log_m T must come back to where it was: j − d = 0, i.e. j = d. A cycle
    is then d + 1 w steps per α step; the paper (§3.2) computes the factors "to maintain
    the desired average frequency of α updates, assuming the FIMT were constant", and
    that frequency is k = 10 w steps per α step (§4.1: the 10/11 data split, CS10's
    exactly 10). So d = k − 1. (Exactly: with T = F·m^δ, 0 < δ ≤ 1, just before an α
    step, T = F·m^(δ−d+j) after j more iterations, due again once δ − d + j > 0, i.e.
    at j = d, and T is back to F·m^δ.) k = 1 gives d = 0: T is left alone and, once
    above F, an α step comes every iteration, DARTS' alternate schedule.

    ``cycle="k+1"`` keeps the authors' code, d = k (T ← T·m^(−k), paper-notes): the cycle
    is k + 1 = 11 w steps per α step, though the data split still assumes k (``ratio``).
    """

    settings: ClassVar[dict[str, Setting]] = {
        "k": K_SETTING, "fimt_lambda": Setting(0.2, "unit"), "fimt_m": Setting(1.05, "above_one"),
        "fimt_threshold": Setting(1.0, "positive"),  # the paper's T0 (§4.1)
        "fimt_cycle": Setting("k", choices=(("k", "paper: k w steps per α step at constant Fisher trace"),
                                            ("k+1", "the authors' code"))),
    }
    k: int = K_SETTING.default
    lam: float = settings["fimt_lambda"].default
    m: float = settings["fimt_m"].default
    threshold: float = settings["fimt_threshold"].default
    cycle: str = settings["fimt_cycle"].default
    fbar: float = 0.0
    step: int = 0
    name: str = "fimt"
    needs_fisher = True
    options: ClassVar[dict[str, str]] = {"k": "k", "lam": "fimt_lambda", "m": "fimt_m",
                                         "threshold": "fimt_threshold", "cycle": "fimt_cycle"}
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.cycle not in FIMT_CYCLES:
            raise ValueError(f"unknown FIMT cycle {self.cycle!r}; valid: {', '.join(FIMT_CYCLES)}")

    @property
    def ratio(self) -> float:
        """The expected w steps per α step the data split is made for: k in both cycles (the
        authors split 10/11 too)."""
        return float(self.k)

    @property
    def down_exponent(self) -> int:
        """d in T ← T·m^(−d) after an α step: k − 1 (paper text) or k (authors' code)."""
        return self.k - 1 if self.cycle == "k" else self.k

    def alpha_step_due(self) -> bool:
        return 0.0 < self.fbar < self.threshold

    def observe(self, took_alpha: bool, fisher: float | None = None) -> dict:
        if fisher is None or not math.isfinite(fisher):
            raise ValueError(f"FIMT needs a finite Fisher trace at step {self.step}, got {fisher}")
        self.threshold *= self.m ** (-self.down_exponent) if took_alpha else self.m
        self.fbar = fisher if not self._started else self.lam * fisher + (1.0 - self.lam) * self.fbar
        self._started = True
        self.step += 1
        return {"fisher": fisher, "fbar": self.fbar, "threshold": self.threshold}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "fbar": self.fbar, "step": self.step, "started": self._started}

    def load_state_dict(self, d: dict) -> None:
        self.threshold, self.fbar = float(d["threshold"]), float(d["fbar"])
        self.step, self._started = int(d["step"]), bool(d["started"])


SCHEDULES = ("alternate", "constant", "fimt")
#: the class behind each name, for what a schedule can do without building one (needs_fisher)
SCHEDULE_TYPES = {"alternate": Alternate, "constant": Constant, "fimt": FIMT}


def logs_fisher(name: str) -> bool:
    """Whether runs of schedule ``name`` log the Fisher trace (F, F̄, T); False for a name
    that is no schedule (a method that takes no step, e.g. random sampling's "none")."""
    return bool(getattr(SCHEDULE_TYPES.get(name), "needs_fisher", False))


def make_schedule(name: str, **kwargs):
    """The schedule called ``name``, built with its own constructor arguments."""
    if name not in SCHEDULE_TYPES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULE_TYPES[name](**kwargs)


def train_fraction(ratio: float) -> float:
    """Share of the search data that trains w when ``ratio`` w steps go with each α step."""
    return ratio / (ratio + 1.0)
