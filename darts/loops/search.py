"""The bilevel search loop (paper Algorithm: DARTS + activation × schedule × regularizer).

One iteration, as in paper-notes: if the schedule wants an α step, take the next
validation batch and step α on cross-entropy + regularizer (then prune); then one w
step on a training batch on plain cross-entropy. The three paper dimensions are
plug-ins: the activation lives in the network, the schedule and the regularizer are
objects with a few methods (darts.method.interfaces); this loop never branches on their names.

The Python API: ``Searcher.iterate(x, y)`` is one iteration on a batch of the caller's and
returns a ``StepRecord`` (losses, the schedule's decision and log, α's gradient, the
penalty, the second-order Hessian term, what was pruned); ``run_epoch`` is that over one
epoch of the training stream plus the epoch's bookkeeping. Optimizers and the w learning
rate schedule may be passed in. README "Python API" shows it end to end.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from darts.loops.batchnorm import recalibrate_batchnorm
from darts.loops.history import History
from darts.loops.train import autocast, clip_grad_norm, evaluate, frozen_gc, sgd
from darts.method.unrolled import BN_STATS
from darts.nn.supernet import SearchNetwork
from darts.space.projection import count_ties, tie_key


class NonFiniteError(RuntimeError):
    """A loss, gradient or α became NaN/inf; the run stops instead of going on silently."""


@dataclass
class SearchConfig:
    """Search hyperparameters; defaults are the DARTS / paper values."""

    epochs: int = 50
    batch_size: int = 64
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    alpha_lr: float = 3e-4
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = 1e-3
    order: int = 1
    unrolled_eps: float = 0.01
    unrolled_bn_stats: str = "untouched"  # second order: BN running stats in the α step (darts.method.unrolled)
    amp: bool = False  # bfloat16 autocast of forward/loss (weights, optimizers, α stay float32)

    def validate(self) -> None:
        pos_int = ("epochs", "batch_size")
        for name in pos_int:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"search.{name}={v!r} is invalid; must be a positive integer")
        for name in ("w_lr", "alpha_lr", "grad_clip", "unrolled_eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"search.{name}={v!r} is invalid; must be a positive number")
        for name in ("w_lr_min", "w_weight_decay", "alpha_weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
                raise ValueError(f"search.{name}={v!r} is invalid; must be a number >= 0")
        if not 0 <= self.w_momentum < 1:
            raise ValueError(f"search.w_momentum={self.w_momentum!r} is invalid; must be in [0, 1)")
        if len(self.alpha_betas) != 2 or not all(0 <= b < 1 for b in self.alpha_betas):
            raise ValueError(f"search.alpha_betas={self.alpha_betas!r} is invalid; need two numbers in [0, 1)")
        if not isinstance(self.amp, bool):
            raise ValueError(f"search.amp={self.amp!r} is invalid; valid: true, false")
        if self.order not in (1, 2):
            raise ValueError(f"search.order={self.order!r} is invalid; valid: 1 (first order), 2 (unrolled)")
        if self.unrolled_bn_stats not in BN_STATS:
            raise ValueError(f"search.unrolled_bn_stats={self.unrolled_bn_stats!r} is invalid; valid: untouched "
                             "(a second-order α step leaves BN running stats alone), darts (DARTS' code)")


def _check_finite(t: torch.Tensor, what: str, step: int) -> None:
    if not torch.isfinite(t).all():
        raise NonFiniteError(f"non-finite {what} at step {step}; stopping (the last checkpoint is kept)")


def make_optimizers(w_params, a_params, cfg: SearchConfig,
                    fast: bool = True) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """DARTS' optimizers: SGD with momentum for the weights (``fast``: fused, ``darts.loops.train.sgd``),
    Adam for α."""
    w_opt = sgd(w_params, cfg.w_lr, cfg.w_momentum, cfg.w_weight_decay, fast)
    a_opt = torch.optim.Adam(a_params, lr=cfg.alpha_lr, betas=tuple(cfg.alpha_betas),
                             weight_decay=cfg.alpha_weight_decay)
    return w_opt, a_opt


@dataclass
class StepRecord:
    """What one iteration did (``Searcher.iterate``). Tensors stay on the network's device and
    are not copied: reading one (``float(r.w_loss)``) is a host sync, which the loop itself
    never does. The α fields are None on iterations without an α step."""

    step: int                          # this iteration's index (its w step), from 0 over the search
    epoch: int                         # the epoch it belongs to, from 0
    alpha_step: bool                   # the schedule's decision before the iteration
    schedule: dict                     # what the schedule logged after it (FIMT: F, F̄, T, …)
    w_loss: torch.Tensor               # training cross-entropy of the w step's batch
    w_correct: torch.Tensor            # correct predictions in that batch
    grad_norm: torch.Tensor            # ‖∇w L_train‖ before clipping: its square is the Fisher trace F
    val_loss: torch.Tensor | None = None              # the α step's validation cross-entropy (2nd order: at w′)
    penalty: torch.Tensor | None = None               # the regularizer's value in that step
    alpha_grad: dict[str, torch.Tensor] | None = None  # per cell type: the gradient α stepped on (CE + penalty)
    hessian_term: dict[str, torch.Tensor] | None = None  # second order: the Hessian term inside alpha_grad
    pruned: dict[str, torch.Tensor] | None = None     # per cell type: ops this α step pruned (CRB), as masks
    regularizer: dict | None = None                   # what the regularizer logged after the α step (ADMM)


class Searcher:
    """Holds the search state (network, optimizers, schedule, regularizer, history).

    ``optimizers=(w_opt, a_opt)`` and ``w_sched`` replace DARTS' (SGD with momentum, Adam,
    cosine annealing per epoch; a second-order search reads lr, momentum and weight decay
    from w_opt's first group, as DARTS' unrolled step does). ``train_stream`` may be None for
    a caller that only calls ``iterate`` with batches of its own; ``total_steps`` then says how
    long the search is (the regularizers' schedules run on step / total_steps)."""

    def __init__(self, net: SearchNetwork, cfg: SearchConfig, schedule, regularizer,
                 train_stream, val_stream, *, optimizers: Sequence[torch.optim.Optimizer] | None = None,
                 w_sched=None, total_steps: int | None = None):
        cfg.validate()
        if train_stream is None and total_steps is None:
            raise ValueError("Searcher needs a train_stream or total_steps (the search's length in w steps)")
        self.net, self.cfg, self.schedule, self.reg = net, cfg, schedule, regularizer
        self.train_stream, self.val_stream = train_stream, val_stream
        self._total_steps = total_steps
        self.w_params = net.weight_parameters()
        self.a_params = net.arch_parameters()
        self.w_opt, self.a_opt = optimizers or make_optimizers(self.w_params, self.a_params, cfg)
        self.w_sched = w_sched if w_sched is not None else torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=cfg.epochs, eta_min=cfg.w_lr_min)
        self.epoch = 0
        self.step = 0
        self.seconds = 0.0
        self._acc: dict | None = None  # accumulators of the epoch in progress
        self.history = History(ops=list(net.ops))
        self.history.record_alpha(0, 0, net.weights())

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_stream)

    @property
    def total_steps(self) -> int:
        return self._total_steps if self._total_steps is not None else self.cfg.epochs * self.steps_per_epoch

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def _autocast(self):
        """bfloat16 autocast when ``cfg.amp`` (no loss scaling needed: bf16 has float32's range)."""
        return autocast(next(self.net.parameters()).device, self.cfg.amp)

    # --- one α step -------------------------------------------------------------
    def alpha_step(self, train_batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """One α step on the validation stream's next batch (second order unrolls on
        ``train_batch``, the coming w step's); returns StepRecord's α fields."""
        x, y = self.val_stream.next()
        self.a_opt.zero_grad(set_to_none=True)
        with self._autocast():  # the forward passes and losses only; the updates below stay float32
            ce, pen, grads, hessian = self._alpha_grads(train_batch, x, y)
        for p, g in zip(self.a_params, grads):
            p.grad = g
        self.a_opt.step()
        newly = self.net.prune()
        info = self.reg.after_alpha_step(self.net)
        pen = None if pen is None else pen.detach()
        self.history.record_alpha(self.step, self.epoch, self.net.weights(), newly=newly,
                                  penalty=pen, val_loss=ce.detach(), info=info)
        names = list(self.net.alphas())  # arch_parameters() order
        return {"val_loss": ce.detach(), "penalty": pen, "alpha_grad": dict(zip(names, grads)),
                "hessian_term": None if hessian is None else dict(zip(names, hessian)),
                "pruned": newly, "regularizer": info}

    def _alpha_grads(self, train_batch, x: torch.Tensor, y: torch.Tensor):
        """(validation CE, penalty or None, α gradients of CE + penalty, the Hessian term or
        None) for one α step."""
        if self.cfg.order == 2:
            from darts.method.unrolled import unrolled_alpha_grad_terms

            ce, grads, hessian = unrolled_alpha_grad_terms(self.net, self.w_opt, train_batch, (x, y),
                                                           self.cfg.unrolled_eps, self.cfg.unrolled_bn_stats)
            pen = self.reg.penalty(self.net, self.step / self.total_steps)
            if pen is not None:
                grads = [g + pg for g, pg in zip(grads, torch.autograd.grad(pen, self.a_params))]
            return ce, pen, grads, hessian
        ce = F.cross_entropy(self.net(x).float(), y)
        pen = self.reg.penalty(self.net, self.step / self.total_steps)
        total = ce if pen is None else ce + pen
        # grads w.r.t. α only: autograd skips the weight gradients DARTS computes and discards
        return ce, pen, list(torch.autograd.grad(total, self.a_params)), None

    # --- one w step -------------------------------------------------------------
    def w_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for p in self.a_params:
            p.requires_grad_(False)
        try:
            self.w_opt.zero_grad(set_to_none=True)
            with self._autocast():
                logits = self.net(x)
                loss = F.cross_entropy(logits.float(), y)
            loss.backward()
        finally:
            for p in self.a_params:
                p.requires_grad_(True)
        # the returned total norm is taken before clipping: its square is the Fisher trace F
        norm = clip_grad_norm(self.w_params, self.cfg.grad_clip)
        self.w_opt.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss.detach(), correct, norm

    # --- one iteration --------------------------------------------------------------
    def iterate(self, x: torch.Tensor, y: torch.Tensor) -> StepRecord:
        """One iteration of the bilevel loop on the training batch (x, y): an α step first if
        the schedule asks for one (on the validation stream's next batch), then one w step.
        The search's unit for a caller that brings its own batches; ``run_epoch`` is this over
        an epoch of the training stream, plus the epoch's bookkeeping (the w lr schedule, the
        network's per-epoch schedule, the epoch's row)."""
        took = self.schedule.alpha_step_due()
        alpha: dict = {}
        with self.net.reusing_packs():  # both steps' forwards share one packing of the weights
            if took:
                alpha = self.alpha_step((x, y))
            loss, correct, norm = self.w_step(x, y)  # its last act: the (fused) weight update
        fisher = None
        if self.schedule.needs_fisher:
            fisher = float(norm) ** 2
            if not math.isfinite(fisher):
                raise NonFiniteError(f"non-finite weight gradient at step {self.step}; stopping "
                                     "(the last checkpoint is kept)")
        logged = self.schedule.observe(took, fisher)
        self.history.record_step(self.step, took, logged)
        record = StepRecord(step=self.step, epoch=self.epoch, alpha_step=took, schedule=logged,
                            w_loss=loss, w_correct=correct, grad_norm=norm, **alpha)
        self.step += 1
        return record

    # --- one epoch ------------------------------------------------------------------
    def _fresh_accumulators(self) -> dict:
        dev = next(self.net.parameters()).device
        return {"loss_sum": torch.zeros((), device=dev), "correct": torch.zeros((), dtype=torch.long, device=dev),
                "seen": 0, "steps": 0, "alpha_steps": 0, "seconds": 0.0,
                "first_bad": torch.full((), -1, dtype=torch.long, device=dev)}

    def run_epoch(self, on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> dict | None:
        """Run (the rest of) the current epoch; returns its summary row.

        Returns None if `should_stop()` became true between two iterations: the state is
        then consistent mid-epoch (streams, accumulators) and `state_dict()` resumes exactly.
        Loss sums and the first non-finite step stay on the device: no host sync per step.
        """
        with frozen_gc():
            return self._run_epoch(on_step, should_stop)

    def _run_epoch(self, on_step, should_stop) -> dict | None:
        if self._acc is None:
            self._acc = self._fresh_accumulators()
        acc = self._acc
        self.net.set_progress(self.epoch / self.cfg.epochs)  # per-epoch network schedules (DARTS-' β)
        t0 = time.perf_counter()
        n_steps = self.steps_per_epoch
        for x, y in self.train_stream.epoch_batches():
            r = self.iterate(x, y)
            acc["alpha_steps"] += r.alpha_step
            bad = ~torch.isfinite(r.w_loss) & (acc["first_bad"] < 0)
            acc["first_bad"] = torch.where(bad, torch.full_like(acc["first_bad"], r.step), acc["first_bad"])
            acc["loss_sum"] += r.w_loss
            acc["correct"] += r.w_correct
            acc["seen"] += y.shape[0]
            acc["steps"] += 1
            if on_step is not None:
                on_step(acc["steps"], n_steps, r.w_loss)
            if should_stop is not None and should_stop() and acc["steps"] < n_steps:
                acc["seconds"] += time.perf_counter() - t0
                self.seconds += time.perf_counter() - t0
                return None
        first_bad = int(acc["first_bad"])
        if first_bad >= 0:
            raise NonFiniteError(f"non-finite training loss at step {first_bad} (epoch {self.epoch + 1}); "
                                 "stopping (the last checkpoint is kept)")
        for t, a in self.net.alphas().items():
            _check_finite(a.detach(), f"α ({t})", self.step)
        self.w_sched.step()
        self.epoch += 1
        seconds = acc["seconds"] + time.perf_counter() - t0
        self.seconds += time.perf_counter() - t0
        row = {
            "epoch": self.epoch,
            "train_loss": float(acc["loss_sum"]) / max(acc["steps"], 1),
            "train_acc": int(acc["correct"]) / max(acc["seen"], 1),
            "alpha_steps": acc["alpha_steps"],
            "alpha_ratio": acc["alpha_steps"] / max(acc["steps"], 1),
            "w_lr": self.w_opt.param_groups[0]["lr"],
            "live_ops": {t: int(m.sum()) for t, m in self.net.live().items()},
            "seconds": seconds,
        }
        row.update(self.history.epoch_alpha_stats())
        self.history.record_epoch(row)
        self._acc = None
        return row

    # --- checkpointing --------------------------------------------------------------
    def running_loss(self) -> float | None:
        """The mean training loss of the current epoch's steps so far (one host sync), or None
        before its first step: what a live log shows between epochs."""
        acc = self._acc
        return None if not acc or not acc["steps"] else float(acc["loss_sum"]) / acc["steps"]

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "w_sched": self.w_sched.state_dict(),
            "schedule": self.schedule.state_dict(),
            "reg": self.reg.state_dict(),
            "train_stream": self.train_stream.state_dict(),
            "val_stream": self.val_stream.state_dict(),
            "history": self.history.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "epoch_acc": self._acc,
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, d: dict) -> None:
        self.net.load_state_dict(d["net"])
        self.w_opt.load_state_dict(d["w_opt"])
        self.a_opt.load_state_dict(d["a_opt"])
        self.w_sched.load_state_dict(d["w_sched"])
        self.schedule.load_state_dict(d["schedule"])
        self.reg.load_state_dict(d["reg"])
        self.train_stream.load_state_dict(d["train_stream"])
        self.val_stream.load_state_dict(d["val_stream"])
        self.history.load_state_dict(d["history"])
        self.epoch, self.step, self.seconds = int(d["epoch"]), int(d["step"]), float(d["seconds"])
        dev = next(self.net.parameters()).device
        acc = d.get("epoch_acc")
        self._acc = None if acc is None else {k: v.to(dev) if torch.is_tensor(v) else v for k, v in acc.items()}


def evaluate_supernet(net: SearchNetwork, batches, calibration=None) -> dict:
    """Loss/accuracy of the supernet on held-out search data (the validation part), summed on
    the device and read once (``darts.loops.train.evaluate``), not twice per batch.

    With ``calibration`` batches (the w split's), the BatchNorm running statistics are first
    re-estimated on them at the final weights (``darts.loops.batchnorm``: the running averages
    lag fast-moving weights), and the eval-mode accuracy with the running statistics as the
    search left them is reported beside, as ``val_acc_running_stats``. The network keeps the
    re-estimated statistics."""
    out = {}
    if calibration is not None:
        batches = list(batches)  # scored twice
        out["val_acc_running_stats"] = evaluate(net, batches)["acc"]
        recalibrate_batchnorm(net, calibration)
    r = evaluate(net, batches)
    return {"val_loss": r["loss"], "val_acc": r["acc"], **out}


def final_ties(net: SearchNetwork, tie_break: str) -> dict[str, dict[str, int]]:
    """Per cell type, how many of Π_S's choices at the network's current α a tie of activated
    values decided under rule ``tie_break`` (``darts.space.projection.count_ties``): the record
    that tells whether the genotype rests on CRB's frozen ties at 1.0."""
    live, alphas = net.live(), net.alphas()
    return {t: count_ties(net.activation.for_projection(a.detach(), live[t]), live[t], net.ops,
                          tie_key(a.detach(), tie_break)) for t, a in alphas.items()}
