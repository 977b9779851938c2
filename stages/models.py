"""`darts predict` and `darts export`: a retrained model.pt used outside the pipeline.

predict classifies image files with the test stage's preprocessing (darts.inference).
export writes a standalone TorchScript or ONNX model (logits only, dynamic batch, the
spatial size fixed at the training size) and then checks it: its logits on random
batches of two sizes, neither the one it was traced with, must match PyTorch's.
Every bad argument is one line naming it and what is valid, before any work.
"""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Callable

import torch

from darts.inference import (InferenceError, LogitsOnly, ModelInfo, find_images, load_model, predict as classify,
                             read_image, top_k)

from .common import machine
from .params import ParamsError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # max |logit difference| an exported model may show against PyTorch
CHECK_BATCHES = (1, 3)  # the export traces batch 2: checking other sizes shows the batch is dynamic
EXTRA = "pip install 'darts-constrained[export]' (onnx, onnxruntime, onnxscript)"


class ExportFailed(Exception):
    """The exporter failed, or the exported model disagrees with PyTorch; nothing was written."""


def image_size_arg(text: str | int | None) -> int | tuple[int, int] | None:
    """--image-size: N (square) or HxW, e.g. 24x40; a one-line error naming the bad value."""
    if text is None or isinstance(text, int):
        return text
    parts = str(text).lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        sides = [int(p) for p in parts]
        return sides[0] if len(sides) == 1 else (sides[0], sides[1])
    raise ParamsError(f"--image-size {text!r} is invalid; valid: N (square) or HxW, e.g. 32 or 24x40")


def _load(model: str, image_size: str | int | None, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, ModelInfo]:
    size = image_size_arg(image_size)
    try:
        return load_model(model, size, device)
    except InferenceError as e:
        raise ParamsError(str(e)) from None


def predict(model: str, inputs: list[str], top: int | None = None, image_size: int | None = None,
            device: str | None = None, threads: int | None = None) -> tuple[list[tuple[str, list]], list[str]]:
    """Per image file: its path and the ``top`` (default min(5, classes)) (class, probability)
    pairs; plus notes on the model worth a line (e.g. an older model.pt without class names)."""
    dev = machine(device, threads)
    net, info = _load(model, image_size, dev)
    k = min(5, len(info.classes)) if top is None else top
    try:
        if not 1 <= k <= len(info.classes):
            raise InferenceError(f"--top {k} is invalid; valid: 1..{len(info.classes)} (the model's classes)")
        files = find_images(inputs)
        images = [read_image(f, info.hw, info.channels) for f in files]  # every file decoded before any prediction
        rows = top_k(classify(net, info, images), info.classes, k)
    except InferenceError as e:
        raise ParamsError(str(e)) from None
    notes = [] if info.classes_recorded else [
        f"note: {model} records no class names (an older `darts retrain`); showing class indices"]
    return [(str(f), r) for f, r in zip(files, rows)], notes


def _trace(wrapper: torch.nn.Module, example: torch.Tensor, out: Path, info: ModelInfo) -> None:
    # ignored: TracerWarnings (shape branches, fixed at the fixed image size) and torch 2.14's
    # deprecation of TorchScript (still the one format a C++/mobile runtime loads without Python)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={"darts.json": json.dumps(info.to_dict())})


def _onnx(wrapper: torch.nn.Module, example: torch.Tensor, out: Path, info: ModelInfo) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    m = onnx.load(str(out))
    m.metadata_props.add(key="darts", value=json.dumps(info.to_dict()))
    onnx.save(m, str(out))


def _runner(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exported model as a function of a batch, or None when onnxruntime is absent."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path))
        return lambda x: loaded(x)
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@torch.no_grad()
def export(model: str, fmt: str, out: str, image_size: int | None = None) -> dict:
    """Write the standalone model and check it; returns what was written and the differences
    ({batch size: max |logit difference|}, None when onnxruntime is missing)."""
    if fmt not in FORMATS:
        raise ParamsError(f"--format {fmt!r} is invalid; valid: {', '.join(FORMATS)}")
    missing = [m for m in ("onnx", "onnxscript") if fmt == "onnx" and importlib.util.find_spec(m) is None]
    if missing:
        raise ParamsError(f"--format onnx needs {' and '.join(missing)} (torch.onnx's exporter), not installed; "
                          f"{EXTRA}")
    dest = Path(out)
    if dest.is_dir():
        raise ParamsError(f"--out {dest} is a folder; pass a file path (e.g. {dest / ('model.' + fmt[:4])})")
    net, info = _load(model, image_size)  # on the CPU: the exported graph is the CPU one
    wrapper = LogitsOnly(net).eval()
    g = torch.Generator().manual_seed(0)
    batch = lambda n: torch.randn(n, info.channels, *info.hw, generator=g)  # noqa: E731
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        try:
            (_trace if fmt == "torchscript" else _onnx)(wrapper, batch(2), tmp, info)
        except Exception as e:  # an exporter's failure is not the user's input: exit 1, one line
            raise ExportFailed(f"torch could not export {model} to {fmt}: "
                               f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
        run = _runner(fmt, tmp)
        diffs = None
        if run is not None:
            diffs = {}
            for n in CHECK_BATCHES:
                x = batch(n)
                diffs[n] = float((run(x) - wrapper(x)).abs().max())
            worst = max(diffs, key=lambda n: diffs[n])
            if not diffs[worst] <= TOLERANCE:  # `not <=`: a NaN fails too
                raise ExportFailed(f"the exported {fmt} model's logits differ from PyTorch's by {diffs[worst]:.3g} "
                                   f"at batch {worst} (tolerance {TOLERANCE:g}); {dest} not written")
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"out": str(dest), "format": fmt, "classes": len(info.classes), "image_size": info.image_size,
            "diffs": diffs}
