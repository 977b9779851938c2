"""Retraining loop and evaluation: schedule, drop-path ramp, exact resume, metrics."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darts.loops.train import RetrainConfig, Retrainer, clip_grad_norm, cosine_lr, evaluate, sgd
from darts.nn.evalnet import EvalNetwork
from darts.space.primitives import DARTS_V2

N_CLASSES = 4


def toy_batches(n_batches: int = 4, batch_size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """16×16 images = noise + a fixed per-class template, so the labels are learnable."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(N_CLASSES, 3, 16, 16, generator=g)
    out = []
    for _ in range(n_batches):
        y = torch.randint(0, N_CLASSES, (batch_size,), generator=g)
        x = templates[y] + 0.5 * torch.randn(batch_size, 3, 16, 16, generator=g)
        out.append((x, y))
    return out


def tiny_net(seed: int = 0) -> EvalNetwork:
    torch.manual_seed(seed)
    return EvalNetwork(DARTS_V2, C=4, n_classes=N_CLASSES, layers=3, auxiliary=True)


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, N_CLASSES))


def cfg(**kw) -> RetrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.05, drop_path_prob=0.2, cutout=0)
    base.update(kw)
    return RetrainConfig(**base)


def test_defaults_are_darts_protocol():
    c = RetrainConfig().validate()
    assert (c.epochs, c.batch_size, c.lr, c.lr_min, c.momentum) == (600, 96, 0.025, 0.0, 0.9)
    assert (c.weight_decay, c.grad_clip, c.auxiliary_weight, c.drop_path_prob, c.cutout) == (
        3e-4, 5.0, 0.4, 0.2, 16)


def test_training_loss_decreases():
    batches = toy_batches()
    trainer = Retrainer(tiny_net(), cfg(epochs=3))
    torch.manual_seed(0)
    stats = [trainer.train_epoch(batches) for _ in range(3)]
    losses = [s["loss"] for s in stats]
    assert losses[2] < losses[1] < losses[0], losses
    assert set(stats[0]) == {"epoch", "loss", "acc", "lr", "seconds"}
    assert [s["epoch"] for s in stats] == [0, 1, 2]
    assert all(0.0 <= s["acc"] <= 1.0 and s["seconds"] > 0 for s in stats)
    assert trainer.done
    with pytest.raises(RuntimeError, match="already trained"):
        trainer.train_epoch(batches)


def test_lr_follows_cosine_and_drop_path_ramps():
    c = cfg(epochs=5, lr=0.1, lr_min=0.01, drop_path_prob=0.3)
    model = linear_net()
    seen: list[float] = []
    trainer = Retrainer(model, c, on_step=lambda step, total: seen.append(model.drop_path_prob))
    batches = toy_batches(n_batches=2)
    for e in range(5):
        s = trainer.train_epoch(batches)
        expected = 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * e / c.epochs)) + c.lr_min
        assert s["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert cosine_lr(e, c.epochs, c.lr, c.lr_min) == pytest.approx(expected, rel=1e-15)
        assert seen[-2:] == [pytest.approx(0.3 * e / 5)] * 2
    assert trainer.current_lr() == pytest.approx(c.lr_min)  # T_max reached


def test_on_step_reports_progress():
    calls: list[tuple[int, int]] = []
    trainer = Retrainer(linear_net(), cfg(epochs=1), on_step=lambda s, t: calls.append((s, t)))
    trainer.train_epoch(toy_batches(n_batches=3))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    Retrainer(linear_net(), cfg(epochs=1), on_step=lambda s, t: calls.append((s, t))).train_epoch(
        iter(toy_batches(n_batches=2)))
    assert calls == [(1, 0), (2, 0)]  # unsized iterable: total unknown


def test_epoch_loss_is_sample_weighted_mean():
    """With a negligible step, the logged loss/acc equal evaluate() on uneven batches."""
    batches = toy_batches(n_batches=3, batch_size=8)
    batches.append((batches[0][0][:3], batches[0][1][:3]))
    model = linear_net()
    expected = evaluate(model, batches)
    trainer = Retrainer(model, cfg(epochs=1, lr=1e-12, momentum=0.0, weight_decay=0.0))
    s = trainer.train_epoch(batches)
    assert s["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert s["acc"] == pytest.approx(expected["acc"])


def test_resume_is_exact():
    batches = toy_batches(n_batches=3, batch_size=8)
    c = cfg(epochs=3, drop_path_prob=0.4)
    torch.manual_seed(123)
    a = Retrainer(tiny_net(seed=0), c)
    a.train_epoch(batches)
    a.train_epoch(batches)
    saved = copy.deepcopy(a.state_dict())
    rng = torch.get_rng_state()
    a.train_epoch(batches)

    b = Retrainer(tiny_net(seed=7), c)  # different init: everything must come from the state
    b.load_state_dict(saved)
    torch.set_rng_state(rng)
    assert b.epoch == 2 and b.current_lr() == pytest.approx(cosine_lr(2, 3, c.lr, c.lr_min))
    b.train_epoch(batches)

    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


class FixedLogits(nn.Module):
    """Inputs are the logits: lets a test choose every prediction by hand."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None


def test_evaluate_matches_hand_count():
    logits = torch.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]] * 5.0  # predicts 0,1,2,3,0,1,2,3,0,1
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 0, 3, 0, 2])  # right at 0,1,2,3,5,7,8 -> 7/10
    batches = [(logits[:4], labels[:4]), (logits[4:], labels[4:])]
    out = evaluate(FixedLogits(), batches)
    assert out["n"] == 10
    assert out["acc"] == pytest.approx(0.7)
    assert out["error_pct"] == pytest.approx(30.0)
    assert out["error_pct"] == pytest.approx(100 * (1 - out["acc"]))
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_evaluate_uses_eval_mode_and_restores_it():
    model = tiny_net().train()
    model.drop_path_prob = 0.5
    batches = toy_batches(n_batches=2, batch_size=4)
    torch.manual_seed(1)
    r1 = evaluate(model, batches)
    torch.manual_seed(2)
    r2 = evaluate(model, batches)
    assert r1 == r2  # no drop-path, no batch statistics
    assert model.training
    assert evaluate(model.eval(), batches) == r1 and not model.training
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


@pytest.mark.parametrize("field,value,valid", [
    ("epochs", 0, "positive integer"),
    ("epochs", 2.5, "positive integer"),
    ("batch_size", -1, "positive integer"),
    ("lr", 0.0, "> 0"),
    ("lr", float("nan"), "> 0"),
    ("lr_min", 0.5, "[0, lr=0.025]"),
    ("lr_min", -0.1, "[0, lr=0.025]"),
    ("momentum", 1.0, "[0, 1)"),
    ("weight_decay", -1e-4, ">= 0"),
    ("grad_clip", 0.0, "> 0"),
    ("auxiliary_weight", -0.4, ">= 0"),
    ("drop_path_prob", 1.0, "[0, 1)"),
    ("cutout", -16, ">= 0"),
    ("cutout", True, ">= 0"),
])
def test_validate_names_field_value_and_valid_range(field, value, valid):
    c = RetrainConfig(**{field: value})
    with pytest.raises(ValueError) as err:
        c.validate()
    msg = str(err.value)
    assert msg.startswith(f"retrain.{field}={value!r} is invalid; must be ")
    assert valid in msg and "\n" not in msg


def test_validate_exact_message_and_from_dict():
    with pytest.raises(ValueError, match=r"^retrain\.epochs=0 is invalid; must be a positive integer$"):
        RetrainConfig(epochs=0).validate()
    assert RetrainConfig.from_dict({"epochs": 10, "lr": 0.1}) == RetrainConfig(epochs=10, lr=0.1)
    with pytest.raises(ValueError, match="unknown keys \\['epoch'\\]"):
        RetrainConfig.from_dict({"epoch": 10})
    with pytest.raises(ValueError, match="retrain.epochs"):
        Retrainer(linear_net(), RetrainConfig(epochs=0))


def test_fused_sgd_and_foreach_clipping_update_as_the_plain_loops():
    """darts.loops.train.sgd (fused) + clip_grad_norm (foreach) = torch's plain SGD + clip_grad_norm_,
    step for step, and the returned norm is the one before clipping."""
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (16,), (10, 16), (1,)]
    fast = [torch.randn(s, requires_grad=True) for s in shapes]
    plain = [p.detach().clone().requires_grad_() for p in fast]
    opt_fast = sgd(fast, 0.1, 0.9, 3e-4)
    assert opt_fast.defaults["fused"]
    opt_plain = torch.optim.SGD(plain, lr=0.1, momentum=0.9, weight_decay=3e-4, foreach=False)
    for step in range(3):
        grads = [torch.randn(s) * (10 if step == 1 else 0.01) for s in shapes]  # step 1 gets clipped
        for ps in (fast, plain):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        total = torch.cat([g.flatten() for g in grads]).norm()
        norm_fast = clip_grad_norm(fast, 5.0)
        norm_plain = nn.utils.clip_grad_norm_(plain, 5.0, foreach=False)
        assert torch.allclose(norm_fast, total, rtol=1e-6) and torch.allclose(norm_plain, total, rtol=1e-6)
        opt_fast.step()
        opt_plain.step()
        for a, b in zip(fast, plain):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not sgd(plain, 0.1, 0.9, 3e-4, fast=False).defaults["fused"]


def test_training_loops_keep_live_objects_out_of_gc_collections():
    """Inside an epoch (search and retrain) everything alive at its start is frozen out of the
    cyclic collector; afterwards, and after an exception, nothing is left frozen."""
    import gc

    from test_history import _searcher

    from darts.loops.train import frozen_gc

    frozen = []
    trainer = Retrainer(tiny_net(), cfg(epochs=1), on_step=lambda *a: frozen.append(gc.get_freeze_count()))
    trainer.train_epoch(toy_batches(2))
    searcher = _searcher(epochs=1)
    searcher.run_epoch(lambda *a: frozen.append(gc.get_freeze_count()))
    assert len(frozen) == 2 + 4 and min(frozen) > 1000  # the model's modules and tensors at least
    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError), frozen_gc():
        raise RuntimeError("stop")
    assert gc.get_freeze_count() == 0
