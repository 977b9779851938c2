"""The in-memory labelled image set, its sizes, subsets, splits and file format.

Everything a search or retrain sees is an ``ImageSet`` held in memory as uint8 tensors:
decoding once up front (``darts.data.folder``) removes per-image PIL work, and its
nondeterminism, from the training loop. A set carries the per-channel mean and std it is
to be standardised with (``darts.data.stream.normalize``), so the statistics of the
training split travel with the prepared data to every stage that reads it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CHANNELS = (1, 3)  # grayscale or RGB

Size = tuple[int, int]  # (height, width)


class DataError(ValueError):
    """Bad dataset input; the message is one line naming the bad value and what is valid."""


def as_hw(size: int | Sequence[int]) -> Size:
    """``size`` as (height, width): an int is a square side, a pair is [H, W]."""
    if isinstance(size, bool):
        raise DataError(f"image size {size!r} is invalid; valid: a positive integer or [height, width]")
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise DataError(f"image size {size!r} is invalid; valid: a positive integer or [height, width]") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise DataError(f"image size {list(size)!r} is invalid; valid: positive integers, "
                            "a side or [height, width]")
    return int(h), int(w)


def size_text(size: int | Sequence[int]) -> str:
    """``32`` for a square size, ``24x40`` (height x width) for a non-square one."""
    h, w = as_hw(size)
    return f"{h}" if h == w else f"{h}x{w}"


def recorded_size(size: int | Sequence[int]) -> int | list[int]:
    """A size as meta.json and model.pt record it: an int when square (as before [H, W]
    existed, so square sets keep their records), else [H, W]."""
    h, w = as_hw(size)
    return h if h == w else [h, w]


@dataclass
class ImageSet:
    """A labelled image set kept as tensors, so batching is indexing, not decoding.

    ``mean``/``std`` (one value per channel, on the 0..1 scale) are what batches of this
    set are standardised with; None means CIFAR's constants, the only ones any set was
    standardised with before they were recorded (an older prepared train.pt).
    """

    images: torch.Tensor  # uint8 (N, C, H, W) with C in CHANNELS, CPU, contiguous
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Validate once here so every consumer can trust the layout.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in CHANNELS:
            raise DataError(f"images must be uint8 (N, C, H, W) with C in {CHANNELS}, got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(f"labels must be 1-D with {self.images.shape[0]} entries, "
                            f"got shape {tuple(self.labels.shape)}")
        self.images = self.images.cpu().contiguous()
        self.labels = self.labels.cpu().to(torch.int64)
        self.classes = [str(c) for c in self.classes]
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"labels must lie in [0, {len(self.classes)}), got "
                            f"[{int(self.labels.min())}, {int(self.labels.max())}]")
        if (self.mean is None) != (self.std is None):
            raise DataError("an image set needs both mean and std, or neither (CIFAR's)")
        if self.mean is not None:
            self.mean, self.std = check_stats(self.mean, self.std, self.channels)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> Size:
        """(height, width) of every image."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) batches of this set are standardised with."""
        if self.mean is None:
            if self.channels != 3:
                raise DataError(f"a {self.channels}-channel image set needs its own mean and std; "
                                "CIFAR's are for RGB")
            return CIFAR_MEAN, CIFAR_STD
        return self.mean, self.std

    def with_stats(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> "ImageSet":
        """The same images, to be standardised with ``mean``/``std`` (None, None: CIFAR's)."""
        return ImageSet(self.images, self.labels, list(self.classes),
                        None if mean is None else tuple(mean), None if std is None else tuple(std))

    def take(self, idx: torch.Tensor) -> "ImageSet":
        """The images at ``idx`` (in that order), sharing the class list and statistics."""
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes), self.mean, self.std)


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...], ...]:
    """``mean``/``std`` as float tuples of one value per channel, or a one-line DataError."""
    try:
        m, s = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise DataError(f"mean {mean!r} / std {std!r} are invalid; valid: {channels} numbers each") from None
    if len(m) != channels or len(s) != channels:
        raise DataError(f"mean {list(m)} / std {list(s)} do not match {channels}-channel images; "
                        f"valid: {channels} value(s) each")
    if not all(v > 0 for v in s):
        raise DataError(f"std {list(s)} is invalid; every value must be positive")
    return m, s


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images on the 0..1 scale.

    Exact integer sums of x and x² per channel (int64 cannot overflow below ~10^14 pixels),
    so the result does not depend on how the set is chunked; a constant channel gets std 1
    instead of 0 so standardising never divides by zero.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"channel statistics need a non-empty uint8 (N, C, H, W) set, got {images.dtype} "
                        f"{tuple(images.shape)}")
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.int64)
    s2 = torch.zeros(c, dtype=torch.int64)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].to(torch.int64).transpose(0, 1).reshape(c, -1)
        s1 += x.sum(1)
        s2 += (x * x).sum(1)
    n = images.numel() // c
    mean = s1.double() / (n * 255)
    var = (s2.double() / (n * 255 ** 2) - mean ** 2).clamp_min(0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())


def to_channels(ds: ImageSet, channels: int) -> ImageSet:
    """``ds`` with ``channels`` channels: grayscale repeated to RGB (R = G = B, as PIL's
    convert("RGB") of an "L" image); a no-op when it already has them. RGB to gray is not
    offered: a set with any colour image stays colour."""
    if ds.channels == channels:
        return ds
    if (ds.channels, channels) != (1, 3):
        raise DataError(f"cannot turn {ds.channels}-channel images into {channels}-channel ones; valid: 1 -> 3")
    return ImageSet(ds.images.expand(-1, 3, -1, -1).contiguous(), ds.labels.clone(), list(ds.classes))


# ------------------------------------------------------------------------ resizing
def resize_batch(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 (B, C, H, W) batch to ``size`` (a side or
    [H, W]), staying uint8. Each image is resized on its own (the result does not depend on
    what else is in the batch), so resizing one image at a time gives the same pixels."""
    hw = as_hw(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    out = [F.interpolate(x[s:s + 4096].float(), size=hw, mode="bilinear",
                         align_corners=False, antialias=True) for s in range(0, x.shape[0], 4096)]
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


def resize(ds: ImageSet, size: int | Sequence[int]) -> ImageSet:
    """``ds`` at ``size`` (a no-op returning ``ds`` itself when already that size)."""
    if ds.size == as_hw(size):
        return ds
    return ImageSet(resize_batch(ds.images, size), ds.labels.clone(), list(ds.classes), ds.mean, ds.std)


# ------------------------------------------------------------------ subsets and splits
def subset_indices(labels: torch.Tensor, n_classes: int, n: int | None, seed: int) -> torch.Tensor | None:
    """The sorted indices of a class-stratified random subset of ``n`` of ``labels``; None for
    all of them (n None or >= len). Labels alone decide, so an image folder can pick its
    subset before decoding a single file.

    Quotas are proportional to class frequency (largest remainders get the leftovers), so
    small study subsets keep the class balance.
    """
    if n is None or n >= len(labels):
        return None
    if n <= 0:
        raise DataError(f"subset size must be a positive integer or None, got {n}")
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels, minlength=n_classes).double()
    exact = counts * n / len(labels)
    quota = exact.floor().long()
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quota[c]).item(), c))
    for c in order[: n - int(quota.sum())]:
        quota[c] += 1
    keep = []
    for c in range(len(counts)):
        members = (labels == c).nonzero().squeeze(1)
        keep.append(members[torch.randperm(len(members), generator=g)[: int(quota[c])]])
    return torch.cat(keep).sort().values


def subset(ds: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A class-stratified random subset of ``n`` images (all of ``ds`` if n is None or >= len),
    kept in dataset order (``subset_indices``)."""
    idx = subset_indices(ds.labels, len(ds.classes), n, seed)
    return ds if idx is None else ds.take(idx)


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Search train/val indices: the first round(n·f) of a seeded permutation, and the rest."""
    k = round(n * train_fraction)
    if not 0 < k < n:
        raise DataError(f"train_fraction={train_fraction} of n={n} gives {k} train and {n - k} "
                        f"validation images; both must be non-empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k], perm[k:]


# ------------------------------------------------------------------------------ files
def save_imageset(ds: ImageSet, path: str | Path) -> None:
    """Save as a plain dict (tensors, class list, statistics) so loading needs no pickle of
    our classes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    d = {"images": ds.images, "labels": ds.labels, "classes": list(ds.classes)}
    if ds.mean is not None:
        d.update(mean=list(ds.mean), std=list(ds.std))
    torch.save(d, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written file


def load_imageset(path: str | Path) -> ImageSet:
    """Load what ``save_imageset`` wrote (``weights_only=True``: no arbitrary code runs)."""
    try:
        d = torch.load(Path(path), map_location="cpu", weights_only=True)
        return ImageSet(d["images"], d["labels"], list(d["classes"]), d.get("mean"), d.get("std"))
    except DataError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot load image set {path}: {reason}") from e
