"""The Python API (README "Python API"): the README's example runs as written; `iterate` is
`run_epoch`'s iteration, bit for bit; `StepRecord` holds what the step did (α's gradient,
the Hessian term, the penalty, the schedule's decision); optimizers passed in are the ones
used; `net.genotype()` is Π_S; a stream's `drop_last` does what the caller asks."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from darts.data import BatchStream, DataError
from darts.data.synthetic import make_synthetic
from darts.loops.search import SearchConfig, Searcher, StepRecord
from darts.method.activations import make_activation
from darts.method.fixed_genotype import set_genotype_alpha
from darts.method.regularizers import NoRegularizer, make_regularizer
from darts.method.schedules import alternate, make_schedule
from darts.nn.supernet import SearchNetwork
from darts.space.parse import parse_genotype
from darts.space.published import published_genotype


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index("## Python API"):], re.S).group(1)


def test_readme_example_runs_as_written(capsys):
    exec(_readme_example(), {"__name__": "readme_example"})
    lines = capsys.readouterr().out.strip().splitlines()
    # its schedule: an α step before w steps 0, 3 and 6 of the 8; then the genotype text
    assert [int(re.match(r"step (\d+):", line)[1]) for line in lines[:-1]] == [0, 3, 6], lines
    assert all("Hessian term" in line for line in lines[:-1])
    assert len(parse_genotype(lines[-1]).normal) == 8


def _searcher(order: int = 1, reg=None, schedule=None, **kwargs) -> Searcher:
    data = make_synthetic(96, size=8, seed=0)
    torch.manual_seed(0)  # the weights' init draws from the global generator (the stages seed it too)
    net = SearchNetwork(make_activation("softmax"), C=4, n_classes=10, layers=3,
                        generator=torch.Generator().manual_seed(0))
    return Searcher(net, SearchConfig(epochs=2, batch_size=16, order=order), schedule or alternate(),
                    reg or NoRegularizer(), BatchStream(data.take(torch.arange(64)), 16, seed=0),
                    BatchStream(data.take(torch.arange(64, 96)), 16, seed=1), **kwargs)


def _state(s: Searcher) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in s.net.state_dict().items()}


def test_iterate_is_run_epochs_iteration_bit_for_bit():
    by_epoch, by_step = _searcher(reg=make_regularizer("pr", rho=0.1)), _searcher(reg=make_regularizer("pr", rho=0.1))
    row = by_epoch.run_epoch()
    records = [by_step.iterate(x, y) for x, y in by_step.train_stream.epoch_batches()]
    assert all(torch.equal(a, b) for a, b in zip(_state(by_epoch).values(), _state(by_step).values()))
    assert [r.step for r in records] == [0, 1, 2, 3] and by_step.step == 4 and by_step.epoch == 0
    assert all(r.alpha_step for r in records) and row["alpha_steps"] == 4  # alternate: an α step each
    mean_loss = float(torch.stack([r.w_loss for r in records]).mean())
    assert mean_loss == pytest.approx(row["train_loss"], rel=1e-6)
    assert sum(int(r.w_correct) for r in records) / 64 == row["train_acc"]


def test_step_record_holds_the_alpha_steps_gradient_and_penalty():
    s = _searcher(reg=make_regularizer("pr", rho=0.1), schedule=make_schedule("constant", k=2))
    twin = copy.deepcopy(s)  # the same state: its α gradient computed by hand below
    x, y = next(iter(s.train_stream.epoch_batches()))
    first = s.iterate(x, y)
    assert not first.alpha_step and first.val_loss is None and first.alpha_grad is None
    assert first.penalty is None and first.hessian_term is None and first.pruned is None
    twin.iterate(x, y)
    x, y = next(iter(s.train_stream.epoch_batches()))
    second = s.iterate(x, y)  # constant k=2: an α step before w step 1
    assert isinstance(second, StepRecord) and second.alpha_step and second.hessian_term is None
    vx, vy = twin.val_stream.next()
    ce = F.cross_entropy(twin.net(vx), vy)
    pen = twin.reg.penalty(twin.net, 1 / twin.total_steps)
    grads = torch.autograd.grad(ce + pen, twin.net.arch_parameters())
    assert float(second.val_loss) == pytest.approx(float(ce.detach()), rel=1e-6)
    assert float(second.penalty) == pytest.approx(float(pen.detach()), rel=1e-6) and float(pen.detach()) > 0
    for (name, g), want in zip(second.alpha_grad.items(), grads):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
    assert list(second.alpha_grad) == ["normal", "reduce"]


def test_second_order_record_carries_the_hessian_term():
    s = _searcher(order=2)
    x, y = next(iter(s.train_stream.epoch_batches()))
    r = s.iterate(x, y)
    assert r.alpha_step and set(r.hessian_term) == {"normal", "reduce"}
    for t in ("normal", "reduce"):
        assert r.hessian_term[t].shape == r.alpha_grad[t].shape and float(r.hessian_term[t].norm()) > 0


def test_own_optimizers_and_no_train_stream():
    s = _searcher()
    w_opt = torch.optim.SGD(s.net.weight_parameters(), lr=0.1, momentum=0.5)
    a_opt = torch.optim.Adam(s.net.arch_parameters(), lr=0.01)
    mine = Searcher(s.net, s.cfg, alternate(), NoRegularizer(), None, s.val_stream,
                    optimizers=(w_opt, a_opt), total_steps=10)
    assert mine.w_opt is w_opt and mine.a_opt is a_opt and mine.total_steps == 10
    before = s.net.alpha_normal.detach().clone()
    x, y = s.train_stream.next()
    mine.iterate(x, y)
    assert "momentum_buffer" in w_opt.state[s.net.weight_parameters()[0]]
    assert a_opt.state[s.net.alpha_normal]["step"] == 1 and not torch.equal(before, s.net.alpha_normal)
    with pytest.raises(ValueError, match="train_stream or total_steps"):
        Searcher(s.net, s.cfg, alternate(), NoRegularizer(), None, s.val_stream)


def test_net_genotype_is_pi_s():
    """α set so that Π_S must return DARTS_V2 (darts.method.fixed_genotype): net.genotype() does."""
    net = SearchNetwork(make_activation("softmax"), C=4, n_classes=10, layers=3,
                        generator=torch.Generator().manual_seed(0))
    set_genotype_alpha(net, 0, "DARTS_V2")
    assert net.genotype().to_dict() == published_genotype("DARTS_V2").to_dict()


@pytest.mark.parametrize("train,drop_last,batches", [(True, None, 2), (True, False, 3),
                                                      (False, None, 3), (False, True, 2)])
def test_stream_drop_last_is_the_callers_choice(train, drop_last, batches):
    """40 images in batches of 16: None follows `train` (drop for training, keep for evaluation);
    an explicit choice is kept either way (it used to be overridden for train=False)."""
    s = BatchStream(make_synthetic(40, size=8), 16, seed=0, train=train, drop_last=drop_last)
    assert len(s) == batches == len(list(s.epoch_batches()))
    with pytest.raises(DataError, match="batch_size=48"):
        BatchStream(make_synthetic(40, size=8), 48, seed=0, train=False, drop_last=True)
