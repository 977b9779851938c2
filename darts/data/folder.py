"""Loading image folders (``root/<class>/<file>``) and CIFAR-10 into ImageSets.

Photos come in every size and mode. A folder is listed first and its subset chosen from
the labels alone, so only the images that will be kept are decoded; each is resized to the
requested size as it is decoded, so a folder of large photos never sits in memory at full
resolution. Grayscale files stay one channel; a folder with any colour image is colour
throughout (its gray images repeated to R = G = B, as PIL's convert("RGB") does).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .imageset import DataError, ImageSet, as_hw, resize_batch, subset_indices

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")
#: PIL modes decoded as one gray channel; every other mode (RGB, RGBA, P, CMYK, ...) as RGB
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_image(path: str | Path, size: int | Sequence[int] | None = None, channels: int | None = None,
               error: type[Exception] = DataError) -> torch.Tensor:
    """One image file as uint8 (C, H, W), resized (antialiased bilinear) to ``size`` if given.

    ``channels`` None keeps a gray file gray (C = 1) and makes anything else RGB; 1 or 3
    converts to that (PIL's luma for colour to gray). A decoder failure becomes one line
    of ``error`` naming the file.
    """
    from PIL import Image
    try:
        with Image.open(path) as im:
            gray = im.mode in GRAY_MODES if channels is None else channels == 1
            a = np.array(im.convert("L" if gray else "RGB"))  # a writable copy: torch.from_numpy needs one
    except Exception as e:  # PIL raises a zoo of types for bad files
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise error(f"cannot read image {path}: {reason}") from None
    x = torch.from_numpy(a[:, :, None] if a.ndim == 2 else a).permute(2, 0, 1).contiguous()
    return x if size is None else resize_batch(x[None], size)[0]


def list_imagefolder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes) of ``root/<class>/<file>``: sorted class names, sorted files."""
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
    return files, labels, classes


def load_imagefolder(root: str | Path, size: int | Sequence[int] | None = None, n: int | None = None,
                     seed: int = 0) -> ImageSet:
    """Load ``root/<class>/<file>`` into memory, optionally only a stratified subset.

    ``size`` (a side or [H, W]): every image is resized to it as it is decoded, so images
    may have any sizes. Without it all images must share one size. ``n``/``seed``: keep
    only ``darts.data.subset``'s n images (the same ones it would pick from the whole
    set), decoding no other file.
    """
    files, labels, classes = list_imagefolder(root)
    label_t = torch.tensor(labels, dtype=torch.int64)
    keep = subset_indices(label_t, len(classes), n, seed)
    if keep is not None:
        files, label_t = [files[i] for i in keep.tolist()], label_t[keep]
    hw = None if size is None else as_hw(size)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL releases the GIL
        images = list(pool.map(lambda f: read_image(f, hw), files))
    if hw is None:
        first = images[0].shape[1:]
        for f, x in zip(files, images):
            if x.shape[1:] != first:
                raise DataError(f"image {f} is {x.shape[2]}x{x.shape[1]} but {files[0]} is {first[1]}x{first[0]}; "
                                f"pass a size to resize all images")
    channels = max(x.shape[0] for x in images)
    out = torch.empty(len(images), channels, *images[0].shape[1:], dtype=torch.uint8)
    for i, x in enumerate(images):
        out[i] = x  # a gray image in a colour set broadcasts to R = G = B
    return ImageSet(out, label_t, classes)


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
