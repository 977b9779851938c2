"""When to take an α step (paper §3.2): alternate (DARTS), constant (CS10), FIMT.

A schedule is asked `alpha_step_due()` before each iteration and told `observe(...)`
after the iteration's w step. Its `ratio` (expected w steps per α step) fixes the
search train/val split: k/(k+1) of the data trains w (50/50 for alternate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Constant:
    """One α step every k-th w step: ``(step + 1) % k == 0``. k = 1 is DARTS' alternate."""

    k: int = 10
    step: int = 0
    name: str = "constant"
    needs_fisher = False

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


def alternate() -> Constant:
    return Constant(k=1, name="alternate")


@dataclass
class FIMT:
    """Dynamic schedule on the trace of the empirical Fisher information.

    F (Σ grad² over network weights, before clipping) is smoothed as
    F̄ ← λF + (1 − λ)F̄ (F̄ = F at the first step). An α step is due iff 0 < F̄ < T.
    After an iteration with an α step T ← T·m^(−k), otherwise T ← T·m; with a constant
    F this settles into one α step every k + 1 iterations (k w steps between them).
    """

    k: int = 10
    lam: float = 0.2
    m: float = 1.05
    threshold: float = 1.0
    fbar: float = 0.0
    step: int = 0
    name: str = "fimt"
    needs_fisher = True
    _started: bool = field(default=False, repr=False)

    @property
    def ratio(self) -> float:
        return float(self.k)

    def alpha_step_due(self) -> bool:
        return 0.0 < self.fbar < self.threshold

    def observe(self, took_alpha: bool, fisher: float | None = None) -> dict:
        if fisher is None or not math.isfinite(fisher):
            raise ValueError(f"FIMT needs a finite Fisher trace at step {self.step}, got {fisher}")
        self.threshold *= self.m ** (-self.k) if took_alpha else self.m
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


def make_schedule(name: str, k: int = 10, lam: float = 0.2, m: float = 1.05, threshold: float = 1.0):
    if name == "alternate":
        return alternate()
    if name == "constant":
        return Constant(k=k)
    if name == "fimt":
        return FIMT(k=k, lam=lam, m=m, threshold=threshold)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def train_fraction(ratio: float) -> float:
    """Share of the search data that trains w when ``ratio`` w steps go with each α step."""
    return ratio / (ratio + 1.0)
