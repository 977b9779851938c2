"""Batched augmentation on the training device and a resumable stream of batches.

Augmentation runs on whole batches, with randomness drawn from explicit generators so a
run can be resumed bit-for-bit from a ``BatchStream.state_dict``. Batches are standardised
with the mean and std their ImageSet carries (the training split's, recorded by
prepare-split; CIFAR's for a set that records none).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .imageset import CHANNELS, CIFAR_MEAN, CIFAR_STD, DataError, ImageSet


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t.to(device)``; a host tensor bound for a GPU goes through pinned memory without
    blocking: a copy from pageable memory would make the host wait for the GPU's queue
    (a sync per batch). The caching host allocator keeps the pinned buffer until the copy
    has run."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


_NORM: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # per device and statistics, made once


def _check_batch(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in CHANNELS:
        raise DataError(f"expected a uint8 (B, C, H, W) batch with C in {CHANNELS}, got {x.dtype} {tuple(x.shape)}")


def normalize(x: torch.Tensor, mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x/255 - mean) / std per channel, on x's device.

    The constants are float32 tensors made once per device and statistics, so a batch is
    standardised with exactly the numbers every other batch (and `darts predict`) uses."""
    _check_batch(x)
    key = (x.device, tuple(mean), tuple(std))
    if key not in _NORM:
        if len(key[1]) != x.shape[1] or len(key[2]) != x.shape[1]:
            raise DataError(f"mean {list(key[1])} / std {list(key[2])} do not match {x.shape[1]}-channel images")
        _NORM[key] = (torch.tensor(key[1], device=x.device).view(1, -1, 1, 1),
                      torch.tensor(key[2], device=x.device).view(1, -1, 1, 1))
    m, s = _NORM[key]
    return (x.float() / 255 - m) / s


def augment(x: torch.Tensor, generator: torch.Generator | None, crop_pad: int = 4,
            flip: bool = True, cutout: int = 0, shard: tuple[int, int] = (0, 1),
            mean: Sequence[float] = CIFAR_MEAN, std: Sequence[float] = CIFAR_STD) -> torch.Tensor:
    """DARTS training augmentation on a whole uint8 batch, returning normalised float32.

    Random crop from a zero-padded image, random horizontal flip, normalisation with
    ``mean``/``std``, then cutout (zeros after normalisation, as DARTS' Cutout). Any number
    of channels and any H x W: rows and columns are drawn separately. Random draws happen on the
    generator's device and are moved to ``x``'s, so a CPU generator drives GPU batches.

    ``shard=(rank, world)``: ``x`` is part ``rank`` of ``world`` equal parts of a batch
    (one data-parallel process's rows). The draws are made for the whole batch and this
    part's rows kept, so every image gets the augmentation a single process would give
    it and the generator advances as it would there; the default (0, 1) is that process.
    """
    _check_batch(x)
    b, c, h, w = x.shape
    rank, world = shard
    n, mine = b * world, slice(rank * b, (rank + 1) * b)  # rows drawn for; x's rows among them
    gdev = generator.device if generator is not None else torch.device("cpu")
    if crop_pad > 0:
        off = to_device(torch.randint(0, 2 * crop_pad + 1, (n, 2), generator=generator, device=gdev)[mine], x.device)
        padded = F.pad(x, (crop_pad,) * 4).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
        rows = off[:, :1] + torch.arange(h, device=x.device)  # (B, H)
        cols = off[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
        bi = torch.arange(b, device=x.device).view(b, 1, 1)
        x = padded[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        flips = to_device(torch.rand(n, generator=generator, device=gdev)[mine] < 0.5, x.device)
        x = torch.where(flips.view(b, 1, 1, 1), x.flip(3), x)
    out = normalize(x.contiguous(), mean, std)
    if cutout > 0:
        cy = to_device(torch.randint(0, h, (n, 1), generator=generator, device=gdev)[mine], x.device)
        cx = to_device(torch.randint(0, w, (n, 1), generator=generator, device=gdev)[mine], x.device)
        ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_y = (ys >= cy - cutout // 2) & (ys < cy - cutout // 2 + cutout)  # (B, H), clipped by range
        in_x = (xs >= cx - cutout // 2) & (xs < cx - cutout // 2 + cutout)
        out = out * ~(in_y[:, None, :, None] & in_x[:, None, None, :])
    return out


# ------------------------------------------------------------------------------ stream
class BatchStream:
    """Endless, resumable stream of batches over an ImageSet held in memory as tensors.

    Each epoch is a fresh permutation drawn from its own torch.Generator(seed); the last
    partial batch of an epoch is dropped when ``drop_last`` else kept. ``drop_last`` left
    at None follows ``train``: a training stream drops it (every step sees a whole batch), an
    evaluation stream (``train=False``: in order, no augmentation) keeps it, so every
    image is evaluated once; pass True or False to choose either way. Augmentation uses
    a second generator derived from the seed, so shuffling and augmentation are both
    part of the saved state and a resumed stream continues exactly.

    ``shard=(rank, world)`` makes it one data-parallel process's stream: every process
    draws the same order and augmentation (same seed) and yields only its ``rank``-th
    ``batch_size / world`` rows of each batch, so the processes together take exactly
    the single-process batches. The state does not depend on the shard: a checkpoint
    of any process resumes every process, or a single-process stream.
    """

    def __init__(self, ds: ImageSet, batch_size: int, seed: int, device: torch.device | str = "cpu",
                 train: bool = True, crop_pad: int = 4, flip: bool = True, cutout: int = 0,
                 drop_last: bool | None = None, shard: tuple[int, int] = (0, 1)):
        drop_last = train if drop_last is None else bool(drop_last)
        if len(ds) == 0 or batch_size <= 0 or (drop_last and batch_size > len(ds)):
            raise DataError(f"batch_size={batch_size} is invalid for {len(ds)} images "
                            f"(drop_last={drop_last}); need 0 < batch_size <= dataset size")
        self.shard = _check_shard(shard, batch_size, drop_last)
        self.device = torch.device(device)
        self.images, self.labels = ds.images.to(self.device), ds.labels.to(self.device)
        self.n, self.batch_size, self.train, self.drop_last = len(ds), batch_size, train, drop_last
        self.crop_pad, self.flip, self.cutout = crop_pad, flip, cutout
        self.mean, self.std = ds.stats()  # the set's own (its training split's), else CIFAR's
        self._shuffle = torch.Generator().manual_seed(seed)
        aug_seed = int(np.random.SeedSequence([seed, 0xA06]).generate_state(1, np.uint64)[0] >> 1)
        self._augment = torch.Generator().manual_seed(aug_seed)
        self._epoch, self._pos = 0, 0
        self._perm: torch.Tensor | None = None  # current epoch's order; None at a boundary

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def epoch(self) -> int:
        """Number of epochs completed (a partly consumed epoch is not counted)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already taken from the current epoch (0 at an epoch boundary)."""
        return self._pos

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._perm is None:  # at a boundary: draw the next epoch's order
            if self.train:
                self._perm = torch.randperm(self.n, generator=self._shuffle)
            else:
                self._perm = torch.arange(self.n)
        idx = self._perm[self._pos * self.batch_size:(self._pos + 1) * self.batch_size]
        rank, world = self.shard
        if world > 1:  # this process's rows of the batch
            part = self.batch_size // world
            idx = idx[rank * part:(rank + 1) * part]
        idx = to_device(idx, self.device)
        self._pos += 1
        if self._pos == len(self):
            self._epoch, self._pos, self._perm = self._epoch + 1, 0, None
        x = self.images[idx]
        if self.train:
            x = augment(x, self._augment, self.crop_pad, self.flip, self.cutout, self.shard, self.mean, self.std)
        else:
            x = normalize(x, self.mean, self.std)
        return x, self.labels[idx]

    def epoch_batches(self) -> "EpochBatches":
        """The rest of the current epoch, or a whole fresh one at a boundary.

        Position advances as batches are yielded, so a state_dict taken mid-loop
        resumes right after the last batch handed out. The result has a ``len`` (the
        batches it yields), so a training loop can report "step i of n" and an ETA.
        """
        return EpochBatches(self)

    def _rest_of_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self._epoch
        while self._epoch == start:
            yield self._batch()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch, crossing epoch boundaries seamlessly."""
        return self._batch()

    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit: position, order and both RNG states."""
        return {"n": self.n, "batch_size": self.batch_size, "epoch": self._epoch, "position": self._pos,
                "permutation": None if self._perm is None else self._perm.clone(),
                "shuffle_rng": self._shuffle.get_state(), "augment_rng": self._augment.get_state()}

    def load_state_dict(self, d: dict) -> None:
        """Restore ``state_dict()``; refuses a state from a stream of another shape."""
        if (d["n"], d["batch_size"]) != (self.n, self.batch_size):
            raise DataError(f"stream state is for n={d['n']}, batch_size={d['batch_size']}; "
                            f"this stream has n={self.n}, batch_size={self.batch_size}")
        self._epoch, self._pos = int(d["epoch"]), int(d["position"])
        self._perm = None if d["permutation"] is None else d["permutation"].clone()
        self._shuffle.set_state(d["shuffle_rng"])
        self._augment.set_state(d["augment_rng"])


def _check_shard(shard: tuple[int, int], batch_size: int, drop_last: bool) -> tuple[int, int]:
    """``shard`` as (rank, world) ints, or a one-line DataError: equal parts of full batches only,
    because each process's rows are a fixed slice of a batch of exactly ``batch_size``."""
    rank, world = shard
    if isinstance(world, bool) or not isinstance(world, int) or world < 1 or not 0 <= rank < world:
        raise DataError(f"shard={shard!r} is invalid; must be (rank, world) with world >= 1 and 0 <= rank < world")
    if world > 1 and batch_size % world:
        raise DataError(f"batch_size={batch_size} does not split into {world} equal shards; "
                        f"valid: a multiple of {world}")
    if world > 1 and not drop_last:
        raise DataError(f"shard={shard!r} needs full batches; valid only for a training stream with drop_last=True")
    return int(rank), int(world)


class EpochBatches:
    """One pass over the rest of a stream's epoch: an iterator that also has a ``len``.

    A bare generator has no length, so a loop given one cannot tell how many steps an
    epoch has: the retrain progress line read "step 24/0" and its ETA was ~500x off.
    ``len`` is fixed when the pass is made (batches left in the epoch then) and does
    not shrink while iterating. Iteration is lazy, as the generator it replaces was:
    nothing is drawn from the stream before the first ``next``.
    """

    def __init__(self, stream: BatchStream):
        self._n = len(stream) - stream.position
        self._it = stream._rest_of_epoch()

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> "EpochBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self._it)
