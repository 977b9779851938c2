"""Datasets as in-memory uint8 tensors, splits, batched augmentation and a resumable stream.

Everything a search or retrain sees is an ``ImageSet`` held in memory: CIFAR-sized data
fits easily, and decoding once up front removes per-image PIL work (and its
nondeterminism) from the training loop. Augmentation runs on whole batches on the
training device, with randomness drawn from explicit generators so a run can be
resumed bit-for-bit from a ``BatchStream.state_dict``.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad dataset input; the message is one line naming the bad value and what is valid."""


@dataclass
class ImageSet:
    """A labelled image set kept as tensors, so batching is indexing, not decoding."""

    images: torch.Tensor  # uint8 (N, 3, H, W), CPU, contiguous
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]

    def __post_init__(self) -> None:
        # Validate once here so every consumer can trust the layout.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise DataError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} "
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

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor) -> "ImageSet":
        """The images at ``idx`` (in that order), sharing the class list."""
        idx = torch.as_tensor(idx, dtype=torch.int64).cpu()
        return ImageSet(self.images[idx], self.labels[idx], list(self.classes))


# ------------------------------------------------------------------------------ loading
def _read_rgb(path: Path) -> np.ndarray:
    """Decode one image to HWC uint8 RGB, turning any decoder failure into a DataError."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy needs one
    except Exception as e:  # PIL raises a zoo of types for bad files
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read image {path}: {reason}") from e


def load_imagefolder(root: str | Path, size: int | None = None) -> ImageSet:
    """Load ``root/<class>/<file>`` (sorted class names, sorted files) into memory.

    All images must share one size unless ``size`` is given, in which case every image
    is resized (antialiased bilinear) to ``size``×``size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        found = f"1 class ({classes[0]})" if classes else "0 classes"
        raise DataError(f"dataset folder {root} has {found}; need at least 2 class subfolders")
    files: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        found = sorted(f for f in (root / name).iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"class folder {root / name} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [c] * len(found)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(_read_rgb, files))  # PIL releases the GIL while decoding
    if size is None:
        h, w = arrays[0].shape[:2]
        for f, a in zip(files, arrays):
            if a.shape[:2] != (h, w):
                raise DataError(f"image {f} is {a.shape[1]}x{a.shape[0]} but {files[0]} is {w}x{h}; "
                                f"pass a size to resize all images")
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.empty(len(arrays), 3, size, size, dtype=torch.uint8)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):  # resize each distinct source size as one batch
            by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():
            batch = torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2)
            images[idx] = resize_batch(batch.contiguous(), size)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes)


def load_cifar10(root: str | Path, train: bool, download: bool) -> ImageSet:
    """The official CIFAR-10 python batches via torchvision, converted once to tensors."""
    from torchvision.datasets import CIFAR10
    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except (RuntimeError, OSError) as e:
        raise DataError(f"cannot load CIFAR-10 from {root} (download={download}): "
                        f"{(str(e).splitlines() or ['?'])[0]}") from e
    images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.as_tensor(ds.targets, dtype=torch.int64), list(ds.classes))


# ------------------------------------------------------------------------ transforms
def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 (B, 3, H, W) batch to size×size, staying uint8."""
    if size <= 0:
        raise DataError(f"resize size must be a positive integer, got {size}")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = [F.interpolate(x[s:s + 4096].float(), size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True) for s in range(0, x.shape[0], 4096)]
    return torch.cat(out).round().clamp(0, 255).to(torch.uint8)


def resize(ds: ImageSet, size: int) -> ImageSet:
    """``ds`` at size×size (a no-op returning ``ds`` itself when already that size)."""
    if tuple(ds.images.shape[-2:]) == (size, size):
        return ds
    return ImageSet(resize_batch(ds.images, size), ds.labels.clone(), list(ds.classes))


def subset(ds: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A class-stratified random subset of ``n`` images (all of ``ds`` if n is None or >= len).

    Quotas are proportional to class frequency (largest remainders get the leftovers), so
    small study subsets keep the class balance; the kept images stay in dataset order.
    """
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise DataError(f"subset size must be a positive integer or None, got {n}")
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(ds.labels, minlength=len(ds.classes)).double()
    exact = counts * n / len(ds)
    quota = exact.floor().long()
    order = sorted(range(len(counts)), key=lambda c: (-(exact[c] - quota[c]).item(), c))
    for c in order[: n - int(quota.sum())]:
        quota[c] += 1
    keep = []
    for c in range(len(counts)):
        members = (ds.labels == c).nonzero().squeeze(1)
        keep.append(members[torch.randperm(len(members), generator=g)[: int(quota[c])]])
    return ds.take(torch.cat(keep).sort().values)


def save_imageset(ds: ImageSet, path: str | Path) -> None:
    """Save as a plain dict (tensors + class list) so loading needs no pickle of our classes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"images": ds.images, "labels": ds.labels, "classes": list(ds.classes)}, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a half-written file


def load_imageset(path: str | Path) -> ImageSet:
    """Load what ``save_imageset`` wrote (``weights_only=True``: no arbitrary code runs)."""
    try:
        d = torch.load(Path(path), map_location="cpu", weights_only=True)
        return ImageSet(d["images"], d["labels"], list(d["classes"]))
    except DataError:
        raise
    except Exception as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot load image set {path}: {reason}") from e


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Search train/val indices: the first round(n·f) of a seeded permutation, and the rest."""
    k = round(n * train_fraction)
    if not 0 < k < n:
        raise DataError(f"train_fraction={train_fraction} of n={n} gives {k} train and {n - k} "
                        f"validation images; both must be non-empty")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k], perm[k:]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t.to(device)``; a host tensor bound for a GPU goes through pinned memory without
    blocking: a copy from pageable memory would make the host wait for the GPU's queue
    (a sync per batch). The caching host allocator keeps the pinned buffer until the copy
    has run."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


_NORM: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, made once


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 standardised with the CIFAR mean/std, on x's device."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"expected a uint8 (B, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    if x.device not in _NORM:
        _NORM[x.device] = (torch.tensor(CIFAR_MEAN, device=x.device).view(1, 3, 1, 1),
                           torch.tensor(CIFAR_STD, device=x.device).view(1, 3, 1, 1))
    mean, std = _NORM[x.device]
    return (x.float() / 255 - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator | None, crop_pad: int = 4,
            flip: bool = True, cutout: int = 0, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """DARTS training augmentation on a whole uint8 batch, returning normalised float32.

    Random crop from a zero-padded image, random horizontal flip, normalisation, then
    cutout (zeros after normalisation, as DARTS' Cutout). Random draws happen on the
    generator's device and are moved to ``x``'s, so a CPU generator drives GPU batches.

    ``shard=(rank, world)``: ``x`` is part ``rank`` of ``world`` equal parts of a batch
    (one data-parallel process's rows). The draws are made for the whole batch and this
    part's rows kept, so every image gets the augmentation a single process would give
    it and the generator advances as it would there; the default (0, 1) is that process.
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise DataError(f"expected a uint8 (B, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    b, _, h, w = x.shape
    rank, world = shard
    n, mine = b * world, slice(rank * b, (rank + 1) * b)  # rows drawn for; x's rows among them
    gdev = generator.device if generator is not None else torch.device("cpu")
    if crop_pad > 0:
        off = to_device(torch.randint(0, 2 * crop_pad + 1, (n, 2), generator=generator, device=gdev)[mine], x.device)
        padded = F.pad(x, (crop_pad,) * 4).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, 3)
        rows = off[:, :1] + torch.arange(h, device=x.device)  # (B, H)
        cols = off[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
        bi = torch.arange(b, device=x.device).view(b, 1, 1)
        x = padded[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        flips = to_device(torch.rand(n, generator=generator, device=gdev)[mine] < 0.5, x.device)
        x = torch.where(flips.view(b, 1, 1, 1), x.flip(3), x)
    out = normalize(x.contiguous())
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
    partial batch of an epoch is dropped when ``drop_last`` else kept. Augmentation uses
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
                 drop_last: bool = True, shard: tuple[int, int] = (0, 1)):
        drop_last = drop_last and train
        if len(ds) == 0 or batch_size <= 0 or (drop_last and batch_size > len(ds)):
            raise DataError(f"batch_size={batch_size} is invalid for {len(ds)} images "
                            f"(drop_last={drop_last}); need 0 < batch_size <= dataset size")
        self.shard = _check_shard(shard, batch_size, drop_last)
        self.device = torch.device(device)
        self.images, self.labels = ds.images.to(self.device), ds.labels.to(self.device)
        self.n, self.batch_size, self.train, self.drop_last = len(ds), batch_size, train, drop_last
        self.crop_pad, self.flip, self.cutout = crop_pad, flip, cutout
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
            x = augment(x, self._augment, self.crop_pad, self.flip, self.cutout, self.shard)
        else:
            x = normalize(x)
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
