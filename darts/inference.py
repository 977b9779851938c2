"""A retrained network as a classifier: what `model.pt` records, loading it, predicting.

The preprocessing is the test stage's, step for step, so a model here sees exactly what
`darts test` showed it: decode to the model's channels (gray or RGB, as prepare-split
decodes), antialiased bilinear resize of the uint8 image to the training size, square or
H x W (``darts.data.resize_batch``, as prepare-split resizes the test set), then /255 and
the mean/std standardisation of ``darts.data.normalize`` with the training split's
statistics that model.pt records.

``model.pt`` is written by :func:`model_record` (stages/retrain.py) and read by
:func:`load_model`, so its format is defined in this one module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from darts.data import CIFAR_MEAN, CIFAR_STD, IMAGE_EXTENSIONS, DataError, ImageSet, as_hw, recorded_size, resize_batch
from darts.data import read_image as _read_file
from darts.nn.evalnet import EvalNetwork
from darts.nn.evalnet_imagenet import NETWORKS, build_network
from darts.space.primitives import Genotype, GenotypeError

#: keys every model.pt has had; "classes", "image_size", "mean", "std", then "channels" and
#: "network" were added later (absent: RGB, the CIFAR network, the only ones there were)
REQUIRED_KEYS = ("state", "genotype", "C", "layers", "auxiliary", "n_classes")


class InferenceError(ValueError):
    """A bad model file or input; the message is one line naming the bad value and what is valid."""


def model_record(model: EvalNetwork, genotype: Genotype, C: int, layers: int, auxiliary: bool,
                 train_set: ImageSet) -> dict:
    """What `darts retrain` saves as model.pt: the weights, how to rebuild the network (which
    one, its input channels), and what inference needs besides (class names, image size,
    the training split's mean/std), so that a model.pt classifies images on its own,
    without the prepared data it was trained on."""
    mean, std = train_set.stats()
    return {"state": model.state_dict(), "genotype": genotype.to_dict(), "C": int(C), "layers": int(layers),
            "auxiliary": bool(auxiliary), "n_classes": len(train_set.classes),
            "classes": [str(c) for c in train_set.classes], "image_size": recorded_size(train_set.size),
            "mean": list(mean), "std": list(std), "channels": train_set.channels, "network": model.kind}


def network_from_record(saved: dict) -> EvalNetwork:
    """The network of a model.pt's record with its weights loaded (train mode, aux head kept)."""
    network = saved.get("network", "cifar")
    if network not in NETWORKS:
        raise ValueError(f"network {network!r} is unknown; valid: {', '.join(NETWORKS)}")
    model = build_network(network, Genotype.from_dict(saved["genotype"]), C=saved["C"], n_classes=saved["n_classes"],
                          layers=saved["layers"], auxiliary=saved["auxiliary"], in_channels=saved.get("channels", 3))
    model.load_state_dict(saved["state"])
    return model


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model needs to be fed and read: class names, input size, normalisation."""

    classes: tuple[str, ...]
    image_size: int | list[int]  # as recorded: a side, or [height, width]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    genotype: Genotype
    C: int
    layers: int
    classes_recorded: bool  # False: an older model.pt, the names are the class indices "0".."n-1"
    channels: int = 3  # 1: grayscale
    network: str = "cifar"  # darts.nn.evalnet_imagenet.NETWORKS

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the network's input."""
        return as_hw(self.image_size)

    def to_dict(self) -> dict:
        """The JSON an exported model carries, so it can be used without this package."""
        return {"classes": list(self.classes), "image_size": self.image_size, "mean": list(self.mean),
                "std": list(self.std), "channels": self.channels, "network": self.network,
                "input": f"float32 (B, {self.channels}, {self.hw[0]}, {self.hw[1]}): "
                         f"{'gray' if self.channels == 1 else 'RGB'}/255, minus mean, over std (per channel)",
                "output": "logits (B, n_classes)", "genotype": self.genotype.to_dict()}


def model_file(path: str | Path) -> Path:
    """``path`` itself, or the model.pt in it when it is a retrain folder."""
    p = Path(path)
    return p / "model.pt" if p.is_dir() else p


def load_model(path: str | Path, image_size: int | Sequence[int] | None = None,
               device: torch.device | str = "cpu") -> tuple[EvalNetwork, ModelInfo]:
    """The network of a model.pt (or retrain folder) in eval mode, without its auxiliary head.

    The auxiliary head only runs in training; dropping it keeps exported models free of
    its weights. ``image_size`` (a side or [H, W]) overrides the recorded size; a model.pt of an older
    `darts retrain` records none, and then it is required. Such a file also has no class
    names (the indices are used) nor mean/std (the CIFAR constants, the only ones any
    `darts retrain` trained with).
    """
    f = model_file(path)
    if not f.is_file():
        raise InferenceError(f"model {f} does not exist; pass the model.pt of `darts retrain` (or its folder)")
    try:
        saved = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise InferenceError(f"cannot load model {f}: {reason}; pass the model.pt of `darts retrain`") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise InferenceError(f"model {f} is not a model.pt of `darts retrain`: it lacks {', '.join(missing)}")
    n = int(saved["n_classes"])
    classes = tuple(str(c) for c in saved.get("classes", range(n)))
    if len(classes) != n:
        raise InferenceError(f"model {f} names {len(classes)} classes but has {n} outputs; rerun `darts retrain`")
    size = image_size if image_size is not None else saved.get("image_size")
    if size is None:
        raise InferenceError(f"model {f} records no image size (written by an older `darts retrain`); pass "
                             "the size it was trained at (--image-size N: data.image_size of its run)")
    try:
        size = recorded_size(size)
    except DataError:
        raise InferenceError(f"image size {size!r} is invalid; valid: a positive integer or [height, width]") from None
    try:
        genotype = Genotype.from_dict(saved["genotype"])
        model = network_from_record(saved)
    except (GenotypeError, RuntimeError, ValueError, TypeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise InferenceError(f"model {f} does not rebuild: {reason}; rerun `darts retrain`") from None
    model.auxiliary_head = None
    model.drop_path_prob = 0.0
    model.eval().requires_grad_(False).to(device)
    info = ModelInfo(classes=classes, image_size=size, mean=tuple(saved.get("mean", CIFAR_MEAN)),
                     std=tuple(saved.get("std", CIFAR_STD)), genotype=genotype, C=int(saved["C"]),
                     layers=int(saved["layers"]), classes_recorded="classes" in saved,
                     channels=model.in_channels, network=model.kind)
    return model, info


class LogitsOnly(nn.Module):
    """The network as exporters want it: one tensor in (normalised images), logits out."""

    def __init__(self, net: EvalNetwork):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[0]


# ------------------------------------------------------------------------------ images
def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders searched recursively
    (sorted, files with an extension of darts.data.IMAGE_EXTENSIONS)."""
    found: list[Path] = []
    exts = ", ".join(IMAGE_EXTENSIONS)
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not inside:
                raise InferenceError(f"folder {p} holds no image files (searched recursively for {exts})")
            found += inside
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise InferenceError(f"{p} is not an image file; valid extensions: {exts}")
            found.append(p)
        else:
            raise InferenceError(f"input {p} does not exist; pass image files ({exts}) or folders of them")
    return found


def read_image(path: str | Path, size: int | Sequence[int] | None = None, channels: int = 3) -> Tensor:
    """One image as uint8 (channels, H, W), decoded as prepare-split decodes an image folder
    (gray or RGB; a colour photo for a gray model through PIL's luma); with ``size``, resized
    right away (as :func:`preprocess` would), so that many large photos are not all held at
    full size."""
    return _read_file(path, size, channels, error=InferenceError)


def _as_uint8(x: Tensor, channels: int) -> Tensor:
    """A (C, H, W) or (B, C, H, W) image batch as uint8 (B, C, H, W) with the model's channel
    count; float input is in [0, 1]."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != channels:
        kind = "gray" if channels == 1 else "RGB"
        raise InferenceError(f"images must be ({channels}, H, W) or (B, {channels}, H, W) {kind} for this "
                             f"{channels}-channel model, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise InferenceError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise InferenceError(f"float images must lie in [0, 1], got [{float(x.min()):.4g}, {float(x.max()):.4g}]")
    return (x * 255).round().to(torch.uint8)  # exact for x = uint8 / 255 (torchvision's ToTensor)


def preprocess(images: Tensor | Sequence[Tensor], info: ModelInfo) -> Tensor:
    """Images of any sizes -> the float32 (B, C, H, W) batch the network was tested on."""
    parts = [images] if isinstance(images, Tensor) else list(images)
    if not parts:
        raise InferenceError(f"no images given; pass a (B, {info.channels}, H, W) tensor or a list of "
                             f"({info.channels}, H, W) ones")
    batch = torch.cat([resize_batch(_as_uint8(x, info.channels).cpu(), info.hw) for x in parts])
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)  # the float32 constants of darts.data.normalize
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (batch.float() / 255 - mean) / std


@torch.no_grad()
def predict(model: nn.Module, info: ModelInfo, images: Tensor | Sequence[Tensor], batch_size: int = 256) -> Tensor:
    """Class probabilities (B, n_classes), float32 on the CPU, of uint8 or [0, 1] float images."""
    x = preprocess(images, info)
    device = next(model.parameters()).device
    out = [torch.softmax(model(x[s:s + batch_size].to(device))[0].float(), dim=1).cpu()
           for s in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def top_k(probs: Tensor, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row of ``probs``, the ``k`` most probable (class name, probability), most probable first."""
    if not 1 <= k <= len(classes):
        raise InferenceError(f"top k={k} is invalid; valid: 1..{len(classes)} (the model's classes)")
    values, indices = probs.topk(k, dim=1)
    return [[(classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
