"""Every registered component satisfies its written protocol (darts/method/interfaces.py), and an
object missing a member does not: the protocols are checks, not decoration."""
from __future__ import annotations

import pytest
import torch

from darts.data import BatchStream
from darts.data.synthetic import make_synthetic
from darts.method.activations import ACTIVATIONS, make_activation
from darts.method.interfaces import Activation, BatchSource, Regularizer, Schedule, Setting, as_setting
from darts.method.regularizers import REGULARIZER_TYPES, make_regularizer
from darts.method.schedules import SCHEDULE_TYPES, make_schedule


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_activation_is_an_activation(name):
    act = make_activation(name)
    assert isinstance(act, Activation) and act.name == name
    a = act.init_alpha(3, torch.Generator().manual_seed(0))
    assert a.shape == (3, len(act.ops))


@pytest.mark.parametrize("name", list(SCHEDULE_TYPES))
def test_every_schedule_is_a_schedule(name):
    s = make_schedule(name)
    assert isinstance(s, Schedule) and s.name == name and s.ratio >= 1


@pytest.mark.parametrize("name", list(REGULARIZER_TYPES))
def test_every_regularizer_is_a_regularizer(name):
    r = make_regularizer(name)
    assert isinstance(r, Regularizer) and r.name == name


def test_the_batch_stream_is_a_batch_source():
    assert isinstance(BatchStream(make_synthetic(64, size=8), 16, seed=0), BatchSource)


def test_an_object_missing_a_member_is_not_one():
    class NoState:
        name = "x"

        def penalty(self, net, progress):
            return None

        def after_alpha_step(self, net):
            return {}

    assert not isinstance(NoState(), Regularizer)
    assert not isinstance(object(), Schedule) and not isinstance(object(), Activation)


def _components():
    return [*ACTIVATIONS.values(), *SCHEDULE_TYPES.values(), *REGULARIZER_TYPES.values()]


def test_each_setting_is_written_once_and_is_its_constructors_default():
    """A component's `settings` is the one place its params.search defaults are written: the
    constructor's default for each option is the Setting's, each default passes its own rule,
    and components that share a key (the schedules' k) declare the same Setting."""
    import inspect

    from stages.search import component_settings

    merged = component_settings()  # raises on a key declared twice, differently
    for cls in _components():
        settings = {k: as_setting(v) for k, v in (getattr(cls, "settings", None) or {}).items()}
        for arg, key in getattr(cls, "options", {}).items():
            assert key in settings, (cls, key)  # every key a constructor reads is declared
            default = inspect.signature(cls).parameters[arg].default
            assert default == settings[key].default and merged[key] == settings[key], (cls, arg)
        for key, s in settings.items():
            assert s.problem(s.default) is None, (cls, key)


@pytest.mark.parametrize("setting,good,bad", [
    (Setting(1.0, "positive"), [0.5, 3], [0, -1, float("nan"), True, "1"]),
    (Setting(1, "positive_int"), [1, 7], [0, 2.5, True]),
    (Setting(0.5, "unit"), [1, 0.01], [0, 1.5]),
    (Setting(2.0, "above_one"), [1.01], [1, 0.5]),
    (Setting(0.0), [0, 2.5], [-0.1, float("inf")]),
    (Setting("k", choices=(("k", "paper"), ("k+1", "code"))), ["k", "k+1"], ["k+2", 10]),
])
def test_setting_rules(setting, good, bad):
    assert all(setting.problem(v) is None for v in good)
    assert all(setting.problem(v) for v in bad)
    assert as_setting(0.3) == Setting(0.3) and as_setting(setting) is setting
