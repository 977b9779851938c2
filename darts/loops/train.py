"""Supervised training and evaluation loops for the retrain and test stages.

The retraining recipe is the DARTS evaluation protocol (paper-notes "Evaluation
protocol"): SGD with momentum and weight decay, cosine learning rate stepped once per
epoch, gradient-norm clipping, auxiliary loss, and drop-path probability ramped
linearly over the epochs. Statistics are accumulated on the device and read once per
epoch so the loop never waits on the accelerator mid-epoch.

``Retrainer(..., distributed=True)`` trains one replica of a DistributedDataParallel
run (the caller has started the process group and feeds this rank's shard of every
batch): gradients are averaged over the ranks, so with equal shards each step is the
single-process step on the whole batch, up to float summation order and BatchNorm,
whose batch statistics are the shard's unless ``sync_bn``.
"""
from __future__ import annotations

import contextlib
import gc
import math
import time
import warnings
from collections.abc import Iterable, Sized
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

Batch = tuple[Tensor, Tensor]
StepHook = Callable[[int, int], None]


@dataclass
class RetrainConfig:
    """Hyper-parameters of the final training of a genotype (DARTS defaults)."""

    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    cutout: int = 16  # cutout side in pixels; 0 disables (applied by the data pipeline)
    amp: bool = False  # bfloat16 autocast of forward/loss; weights and optimizer stay float32
    # BatchNorm statistics over the whole global batch in a multi-process (DDP) run; CUDA only,
    # no effect with one process (its BatchNorm already sees the whole batch)
    sync_bn: bool = False

    def validate(self) -> "RetrainConfig":
        """Raise ValueError naming the first bad field; return self so calls can chain."""
        _check_int(self, "epochs", 1, "a positive integer")
        _check_int(self, "batch_size", 1, "a positive integer")
        _check_int(self, "cutout", 0, "an integer >= 0 (0 disables cutout)")
        _check_float(self, "lr", lambda v: v > 0, "a number > 0")
        _check_float(self, "lr_min", lambda v: 0 <= v <= self.lr, f"a number in [0, lr={self.lr}]")
        _check_float(self, "momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
        _check_float(self, "weight_decay", lambda v: v >= 0, "a number >= 0")
        _check_float(self, "grad_clip", lambda v: v > 0, "a number > 0")
        _check_float(self, "auxiliary_weight", lambda v: v >= 0, "a number >= 0")
        _check_float(self, "drop_path_prob", lambda v: 0 <= v < 1, "a number in [0, 1)")
        if not isinstance(self.amp, bool):
            raise ValueError(f"retrain.amp={self.amp!r} is invalid; valid: true, false")
        if not isinstance(self.sync_bn, bool):
            raise ValueError(f"retrain.sync_bn={self.sync_bn!r} is invalid; valid: true, false")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RetrainConfig":
        """Build from a params mapping, rejecting unknown keys (a typo must not go unnoticed)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"retrain has unknown keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**d).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_int(cfg: RetrainConfig, name: str, minimum: int, valid: str) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"retrain.{name}={v!r} is invalid; must be {valid}")


def _check_float(cfg: RetrainConfig, name: str, ok: Callable[[float], bool], valid: str) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
        raise ValueError(f"retrain.{name}={v!r} is invalid; must be {valid}")


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on ``device`` when enabled, else a no-op context.

    bfloat16 keeps float32's exponent range, so unlike float16 it needs no loss scaling;
    parameters, gradients and optimizer state stay float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def frozen_gc():
    """Leave every object alive on entry (model, optimizer state, data) out of Python's cyclic
    garbage collections until exit (``gc.freeze``; ``gc.unfreeze`` puts them back).

    A training step creates thousands of short-lived objects (autograd nodes, tensors), so
    the collector runs often, and its older generations walk every module, parameter and
    buffer: at the benchmark's tiny size that took 23 ms of a 250 ms search iteration
    (measured with ``gc.callbacks``). Nothing changes in what is computed or freed:
    reference counting frees the steps' objects as before, and cycles made inside the
    loop are still collected.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def sgd(params, lr: float, momentum: float, weight_decay: float, fast: bool = True) -> torch.optim.SGD:
    """SGD with momentum and weight decay; ``fast``: torch's fused kernel where it has one.

    Same update rule; the fused kernel walks every parameter in one call instead of a Python
    loop of ~10 kernels per tensor (a supernet has ~900 small tensors: at the benchmark's
    tiny size the step takes 1.3 instead of 5.1 ms on 2 CPU threads).
    """
    params = list(params)
    fused = fast and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def clip_grad_norm(params, max_norm: float) -> Tensor:
    """``clip_grad_norm_`` with the per-tensor norms and scaling as foreach kernels (on CPU too,
    where torch otherwise loops in Python: 2.0 instead of 5.6 ms for ~900 tensors); returns the
    total norm before clipping."""
    return nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    """Closed-form cosine schedule: the learning rate used during 0-based ``epoch``."""
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


def split_output(out: Tensor | tuple[Tensor, Tensor | None]) -> tuple[Tensor, Tensor | None]:
    """Accept both plain-logit models and ``(logits, logits_aux)`` models."""
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _steps_in(batches: Iterable[Batch]) -> int:
    """Batches the iterable yields (``BatchStream.epoch_batches()`` has a length); 0 when it
    has none, which progress hooks read as "unknown"."""
    return len(batches) if isinstance(batches, Sized) else 0


def replicate(model: nn.Module, sync_bn: bool) -> DistributedDataParallel:
    """``model`` as this rank's DDP replica (the process group must be started).

    SyncBatchNorm replaces the BatchNorm modules inside ``model`` itself (same parameters
    and state_dict keys), so the caller's plain module, which is what gets saved, keeps
    them. DDP broadcasts rank 0's weights and buffers, so the replicas start equal
    whatever each process initialised."""
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # A 1x1 convolution's gradient can come with other strides on its size-1 dims: the same
    # memory layout, and DDP copies gradients into its buckets anyway (gradient_as_bucket_view
    # is off), yet every rank warned about it once per run
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = _model_device(model)
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return DistributedDataParallel(model, device_ids=ids)


class Retrainer:
    """Owns the model's optimizer, LR schedule and epoch counter; trains one epoch at a time.

    Epoch-at-a-time with a full ``state_dict`` lets a stage checkpoint after any epoch
    and resume bit-exactly (given the same batches and torch RNG state). ``fast=False``
    steps as DARTS' train.py does (plain SGD and clipping loops): the benchmarks' reference.

    ``distributed=True``: this process is one rank of a DDP run (see the module notes).
    The epoch's loss and accuracy are summed over the ranks, and ``state_dict`` /
    ``load_state_dict`` keep each rank's partial sums, so a checkpoint resumes exactly.
    Then ``train_epoch`` and ``state_dict`` are collectives: every rank calls them, in step.
    """

    def __init__(self, model: nn.Module, cfg: RetrainConfig, on_step: StepHook | None = None, fast: bool = True,
                 distributed: bool = False):
        self.cfg = cfg.validate()
        self.model = model  # the plain module: drop-path setting, state_dict, saving
        self.distributed = distributed
        self.net = replicate(model, cfg.sync_bn) if distributed else model  # what the steps run
        self.on_step = on_step
        self.device = _model_device(model)
        self.optimizer = sgd(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, fast)
        self._clip = clip_grad_norm if fast else nn.utils.clip_grad_norm_
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs,
                                                                    eta_min=cfg.lr_min)
        self.epoch = 0  # epochs completed
        self._acc: dict | None = None  # partial sums of an epoch stopped mid-way

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    @property
    def mid_epoch(self) -> bool:
        """An epoch was stopped part-way (its partial sums are kept for the resume)."""
        return self._acc is not None

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, batches: Iterable[Batch],
                    should_stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
        """Train (the rest of) one epoch; return {"epoch" (0-based index trained), "loss", "acc", "lr", "seconds"}.

        "loss" is the mean optimised objective (CE + auxiliary_weight·CE_aux, as DARTS
        logs it); "acc" is the top-1 fraction of the main head. If `should_stop()` turns
        true between steps, returns None with the epoch's partial sums kept in the state,
        so a checkpoint taken then resumes mid-epoch exactly (given the same batches);
        after the epoch's last step (known when ``batches`` has a ``len``) the epoch is
        finished instead. ``on_step(i, n)`` gets the step within the epoch and the epoch's
        step count (0 when ``batches`` has no ``len``).
        """
        with frozen_gc():
            return self._train_epoch(batches, should_stop)

    def _train_epoch(self, batches: Iterable[Batch],
                     should_stop: Callable[[], bool] | None) -> dict[str, float] | None:
        if self.done:
            raise RuntimeError(f"all {self.cfg.epochs} epochs are already trained; nothing to resume")
        start = time.perf_counter()
        # linear ramp 0 -> drop_path_prob over the run, set before the epoch (DARTS)
        self.model.drop_path_prob = self.cfg.drop_path_prob * self.epoch / self.cfg.epochs
        lr = self.current_lr()
        self.net.train()  # the DDP wrapper too, not just the module inside
        if self._acc is None:
            self._acc = {"loss_sum": torch.zeros((), device=self.device),
                         "correct": torch.zeros((), device=self.device, dtype=torch.long), "n": 0, "steps": 0,
                         "seconds": 0.0}
        acc = self._acc
        # steps of the whole epoch: those before a resume plus the ones left (0 = unknown)
        left = _steps_in(batches)
        total = acc["steps"] + left if left else 0
        for x, y in batches:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            loss, logits = self._step(x, y)
            acc["loss_sum"] += loss.detach() * y.size(0)
            acc["correct"] += (logits.detach().argmax(1) == y).sum()
            acc["n"] += y.size(0)
            acc["steps"] += 1
            if self.on_step is not None:
                self.on_step(acc["steps"], total)
            # after an epoch's last step, finish the epoch: a stop there would save a stream
            # already at the next epoch and the resume would train one epoch too many
            if should_stop is not None and (total == 0 or acc["steps"] < total) and should_stop():
                acc["seconds"] += time.perf_counter() - start
                return None
        loss_sum, correct, n = self._epoch_sums()
        if n == 0:
            raise ValueError("train_epoch got no batches")
        self.scheduler.step()
        stats = {"epoch": self.epoch, "loss": loss_sum / n, "acc": correct / n, "lr": lr}
        self.epoch += 1
        stats["seconds"] = acc["seconds"] + time.perf_counter() - start
        self._acc = None
        return stats

    def running_loss(self) -> float | None:
        """The mean training loss of the current epoch's steps so far, on this process's shard
        (one host sync), or None before its first step: what a live log shows between epochs."""
        acc = self._acc
        return None if not acc or not acc["n"] else float(acc["loss_sum"]) / acc["n"]

    def _epoch_sums(self) -> tuple[float, int, int]:
        """The epoch's loss sum, correct count and images, over all ranks when distributed."""
        acc = self._acc
        if not self.distributed:
            return acc["loss_sum"].item(), acc["correct"].item(), acc["n"]
        loss_sum, correct, n = self._rank_sums().sum(0).tolist()  # fixed order: same on a resume
        return loss_sum, int(correct), int(n)

    def _rank_sums(self) -> Tensor:
        """(world, 3) float64 on the CPU: each rank's partial loss sum, correct count and images
        (exact: float32 sums and integer counts below 2**53 are float64 values). A collective."""
        acc = self._acc
        mine = torch.stack([acc["loss_sum"].double(), acc["correct"].double(),
                            torch.tensor(float(acc["n"]), dtype=torch.float64, device=self.device)])
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        return torch.stack(every).cpu()

    def _step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with autocast(self.device, self.cfg.amp):
            logits, logits_aux = split_output(self.net(x))
            loss = F.cross_entropy(logits.float(), y)
            if logits_aux is not None:
                loss = loss + self.cfg.auxiliary_weight * F.cross_entropy(logits_aux.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._clip(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss, logits

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stopped (bar the RNG).

        Distributed and stopped mid-epoch (a collective then): ``epoch_acc`` holds the
        partial sums of all ranks together, which is what one process resuming needs,
        and ``epoch_acc_ranks`` each rank's own, so the same number of ranks resumes
        with the same float sums as an uninterrupted run."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "epoch_acc": self._acc,
        }
        if self.distributed and self._acc is not None:
            ranks = self._rank_sums()
            total = ranks.sum(0)
            state["epoch_acc"] = {**self._acc, "loss_sum": total[0].float(), "correct": total[1].long(),
                                  "n": int(total[2])}
            state["epoch_acc_ranks"] = ranks
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        acc = state.get("epoch_acc")
        if acc is not None and self.distributed:
            acc = _rank_share(acc, state.get("epoch_acc_ranks"), dist.get_rank(), dist.get_world_size())
        self._acc = None if acc is None else {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in acc.items()}


def _rank_share(acc: dict[str, Any], ranks: Tensor | None, rank: int, world: int) -> dict[str, Any]:
    """This rank's part of a saved partial epoch: its own sums when the checkpoint was written by
    ``world`` ranks, else the whole sums on rank 0 and none elsewhere (their total stays right)."""
    if ranks is not None and len(ranks) == world:
        loss_sum, correct, n = ranks[rank]
    elif rank == 0:
        return acc
    else:
        loss_sum = correct = n = torch.zeros((), dtype=torch.float64)
    return {**acc, "loss_sum": loss_sum.float(), "correct": correct.long(), "n": int(n)}


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """Mean CE, top-1 accuracy (fraction), error in percent and sample count, in eval mode.

    The model's previous train/eval mode is restored afterwards, so evaluating in the
    middle of a training run does not silently switch BN and drop-path off.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, _ = split_output(model(x))
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.size(0)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate got no batches")
    acc = correct.item() / n
    return {"loss": loss_sum.item() / n, "acc": acc, "error_pct": 100.0 * (1.0 - acc), "n": n}
