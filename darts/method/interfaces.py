"""The written contracts of the search's plug-ins (in the spirit of NASLib's optimizer
interface, without its god object): what `darts.loops.search.Searcher` and the stages call on an
activation, a schedule, a regularizer and a batch stream. Any object with these members
works, registered or not; `tests/test_interfaces.py` holds every registered component to
its protocol, so a new one that forgets a member fails there, not mid-search.

The registries (the one list of names of each kind): ``darts.method.activations.ACTIVATIONS``,
``darts.method.schedules.SCHEDULE_TYPES``, ``darts.method.regularizers.REGULARIZER_TYPES``,
``darts.method.registry.METHODS``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

import torch


#: what a Setting's ``rule`` admits, and how its error says so
RULES = {
    "number>=0": (lambda v: v >= 0, "must be a number >= 0"),
    "positive": (lambda v: v > 0, "must be a positive number"),
    "positive_int": (lambda v: isinstance(v, int) and v > 0, "must be a positive integer"),
    "unit": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "above_one": (lambda v: v > 1, "must be a number > 1"),
}


@dataclass(frozen=True)
class Setting:
    """A params.search key that a component adds: its default, written only here (the
    component's constructor takes it from here too), and the values it admits: a numeric
    ``rule`` (RULES), or ``choices``, (text, what it means) pairs. A plain value in a
    component's ``settings`` is ``Setting(value)``: a number >= 0."""

    default: object
    rule: str = "number>=0"
    choices: tuple[tuple[str, str], ...] = ()

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` (the end of a one-line error), or None."""
        if self.choices:
            if value in dict(self.choices):
                return None
            return "valid: " + ", ".join(f"{c} ({meaning})" for c, meaning in self.choices)
        ok, says = RULES[self.rule]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if number and ok(value) else says


def as_setting(value: object) -> Setting:
    return value if isinstance(value, Setting) else Setting(value)


@runtime_checkable
class Activation(Protocol):
    """Raw α (edges × ops) -> the op weights the supernet mixes with (paper §3.1)."""

    name: str
    ops: tuple[str, ...]                 # the candidate ops of its search space, in α column order
    node_norm: bool                      # a non-affine BatchNorm after each node's edge sum (CRB)
    prunes: bool                         # ops whose weight reaches 0 are masked for good
    threshold: float | None              # its method's own discretization threshold, if any
    box: tuple[float, float] | None      # α clipped into this box after each α update (NASP)
    options: dict[str, str]              # constructor argument -> the params.search key setting it
    alpha_weight_decay_option: str | None  # params.search key of its own α weight decay

    def init_alpha(self, n_edges: int, generator: torch.Generator) -> torch.Tensor: ...
    def __call__(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor: ...
    def for_projection(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor: ...
    def prune(self, alpha: torch.Tensor, live: torch.Tensor) -> torch.Tensor | None: ...
    def prune_all(self, alphas: dict[str, torch.Tensor], lives: dict[str, torch.Tensor]) -> dict: ...


@runtime_checkable
class Schedule(Protocol):
    """When to take an α step (paper §3.2): asked before each iteration, told after it."""

    name: str
    needs_fisher: bool                   # observe() wants F, the trace of the empirical Fisher

    @property
    def ratio(self) -> float: ...        # expected w steps per α step: fixes the train/val split

    def alpha_step_due(self) -> bool: ...
    def observe(self, took_alpha: bool, fisher: float | None = None) -> dict: ...  # what to log
    def state_dict(self) -> dict: ...
    def load_state_dict(self, d: dict) -> None: ...


@runtime_checkable
class Regularizer(Protocol):
    """A penalty on the α loss toward S (paper §3.3–3.4), with optional state."""

    name: str

    def penalty(self, net, progress: float) -> torch.Tensor | None: ...  # progress in [0, 1]
    def after_alpha_step(self, net) -> dict: ...  # its own update after each α step; what to log
    def state_dict(self) -> dict: ...
    def load_state_dict(self, d: dict) -> None: ...


@runtime_checkable
class BatchSource(Protocol):
    """A resumable stream of (images, labels) batches (``darts.data.BatchStream``): the search
    and the retrain ask it for one epoch at a time and checkpoint its position."""

    def __len__(self) -> int: ...        # batches per epoch
    def epoch_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...  # the rest of this epoch
    def next(self) -> tuple[torch.Tensor, torch.Tensor]: ...  # one batch, across epoch ends
    def state_dict(self) -> dict: ...
    def load_state_dict(self, d: dict) -> None: ...


def configured(registry: dict[str, type], name: str, settings: dict, kind: str = "component"):
    """The component ``registry[name]`` built from a settings mapping (params.search): each
    constructor argument from the key its class names in ``options`` (argument -> key), so
    a caller never lists another component's arguments, and a new component's keys reach it
    without an edit anywhere else."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(registry)}")
    cls = registry[name]
    return cls(**{arg: settings[key] for arg, key in getattr(cls, "options", {}).items()})


__all__ = ["Activation", "BatchSource", "Regularizer", "Schedule", "Setting", "as_setting", "configured"]
