"""Every registered component satisfies its written protocol (darts/interfaces.py), and an
object missing a member does not: the protocols are checks, not decoration."""
from __future__ import annotations

import pytest
import torch

from darts.activations import ACTIVATIONS, make_activation
from darts.data import BatchStream
from darts.interfaces import Activation, BatchSource, Regularizer, Schedule
from darts.regularizers import REGULARIZER_TYPES, make_regularizer
from darts.schedules import SCHEDULE_TYPES, make_schedule
from darts.synthetic import make_synthetic


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
