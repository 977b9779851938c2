"""`darts predict` / `darts export` and darts.inference: a retrained model used outside the pipeline.

A tiny DARTS_V2 network (C=4, 3 cells, 16 px, random BatchNorm statistics so that eval
mode matters) saved by darts.inference.model_record, the writer `darts retrain` uses;
one test runs the real retrain stage for one tiny epoch. Predictions are checked as
numbers against a forward pass with the test stage's own preprocessing functions;
exports are run (TorchScript, ONNX through onnxruntime) and compared with PyTorch.
"""
from __future__ import annotations

import importlib.util
import json
import re
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

import stages.models
from conftest import assert_one_line_error, tiny_params
from darts.data import BatchStream, CIFAR_MEAN, CIFAR_STD, ImageSet, normalize, resize_batch
from darts.inference import load_model, model_record, predict, read_image
from darts.loops.checkpoint import save_atomic
from darts.nn.evalnet import EvalNetwork
from darts.space.primitives import DARTS_V2, Genotype
from stages.cli import app

runner = CliRunner()
CLASSES = ["cat", "dog", "ship", "frog", "car"]
SIZE = 16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model.pt path, the network that was saved, in eval mode)."""
    torch.manual_seed(0)
    net = EvalNetwork(DARTS_V2, C=4, n_classes=len(CLASSES), layers=3, auxiliary=True)
    with torch.no_grad():  # non-trivial running statistics: a net left in train mode gives other numbers
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    trained_on = ImageSet(torch.zeros(len(CLASSES), 3, SIZE, SIZE, dtype=torch.uint8), torch.arange(len(CLASSES)),
                          CLASSES)  # what model_record reads of it: classes, size, channels, (CIFAR's) mean/std
    save_atomic(model_record(net, DARTS_V2, 4, 3, True, trained_on), path)
    return path, net.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder tree: two PNGs of other sizes than the model's, a JPEG in a subfolder, a text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    for name, (h, w) in {"a.png": (20, 24), "b.PNG": (16, 16), "sub/deeper/c.jpg": (40, 30)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def _expected(net, files) -> torch.Tensor:
    """Softmax of a direct forward pass, preprocessed by the test stage's functions (resize_batch
    as prepare-split resizes, normalize as BatchStream(train=False) does)."""
    x = torch.cat([resize_batch(read_image(f)[None], SIZE) for f in files])
    with torch.no_grad():
        return torch.softmax(net(normalize(x))[0], dim=1)


def _files(root):
    return [root / "a.png", root / "b.PNG", root / "sub" / "deeper" / "c.jpg"]


def test_predict_equals_forward_softmax(saved, images):
    path, net = saved
    model, info = load_model(path)
    assert (info.classes, info.image_size, info.mean, info.std) == (tuple(CLASSES), SIZE, CIFAR_MEAN, CIFAR_STD)
    assert model.auxiliary_head is None and not model.training
    raw = [read_image(f) for f in _files(images)]
    probs = predict(model, info, raw)
    expected = _expected(net, _files(images))
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(probs[0], probs[1])  # different images, different answers
    # float input in [0, 1] (torchvision's ToTensor) gives the same numbers
    torch.testing.assert_close(predict(model, info, [r.float() / 255 for r in raw]), probs, rtol=0, atol=0)
    # read_image(path, size) resizes right away (what `darts predict` does): the same numbers again
    torch.testing.assert_close(predict(model, info, [read_image(f, SIZE) for f in _files(images)]), probs,
                               rtol=0, atol=0)


def test_cli_predict_top_k_in_order_and_folders_recursive(saved, images):
    path, net = saved
    r = runner.invoke(app, ["predict", "--model", str(path.parent), str(images), "--top", "3"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    expected = _expected(net, _files(images))
    assert [ln.split(": ", 1)[0] for ln in lines] == [str(f) for f in _files(images)]  # sorted, recursive, no .txt
    for line, p in zip(lines, expected):
        shown = re.findall(r"(\w+) ([0-9.]+)", line.split(": ", 1)[1])
        order = p.argsort(descending=True)[:3]
        assert [name for name, _ in shown] == [CLASSES[i] for i in order]
        assert [float(v) for _, v in shown] == pytest.approx(p[order].tolist(), abs=5e-5)
    r = runner.invoke(app, ["predict", "--model", str(path), str(images / "a.png")])
    assert r.exit_code == 0 and len(r.output.split(": ", 1)[1].split(", ")) == 5  # default: min(5, classes)


@pytest.mark.parametrize("args,needles", [
    (["{img}/a.png", "{img}/missing.png"], ["missing.png", "does not exist", ".png"]),
    (["{img}/a.png", "{img}/notes.txt"], ["notes.txt", "not an image", ".jpg, .jpeg, .png"]),
    (["{img}/a.png", "{img}/broken.png"], ["broken.png", "cannot read image"]),
    (["{img}/empty"], ["empty", "no image files", ".png"]),
    (["{img}/a.png", "--top", "0"], ["--top 0", "valid: 1..5"]),
    (["{img}/a.png", "--top", "6"], ["--top 6", "valid: 1..5"]),
    (["{img}/a.png", "--model", "{img}/nope.pt"], ["nope.pt", "does not exist", "darts retrain"]),
    (["{img}/a.png", "--model", "{img}/notes.txt"], ["notes.txt", "cannot load model", "darts retrain"]),
])
def test_predict_bad_input_one_line(saved, images, args, needles):
    (images / "broken.png").write_bytes(b"\x89PNG but not really")
    (images / "empty").mkdir(exist_ok=True)
    model = ["--model", str(saved[0])] if "--model" not in args else []
    try:
        r = runner.invoke(app, ["predict", *model, *[a.format(img=images) for a in args]])
    finally:
        (images / "broken.png").unlink()
        (images / "empty").rmdir()
    assert_one_line_error(r, *needles)  # exactly one line: no prediction was printed for a.png


def test_old_model_file_needs_image_size_and_shows_indices(saved, images, tmp_path):
    path, _ = saved
    old = {k: v for k, v in torch.load(path, weights_only=True).items()
           if k not in ("classes", "image_size", "mean", "std")}  # what `darts retrain` wrote before
    torch.save(old, tmp_path / "model.pt")
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "model.pt"), str(images / "a.png")])
    assert_one_line_error(r, "records no image size", "--image-size")
    r = runner.invoke(app, ["predict", "--model", str(tmp_path), str(images / "a.png"), "--image-size", "16",
                            "--top", "5"])
    assert r.exit_code == 0, r.output
    assert "records no class names" in r.stderr
    new = runner.invoke(app, ["predict", "--model", str(path), str(images / "a.png")]).stdout
    shown_old, shown_new = (re.findall(r"(\w+) ([0-9.]+)", out.split(": ", 1)[1]) for out in (r.stdout, new))
    assert shown_old == [(str(CLASSES.index(name)), p) for name, p in shown_new]  # same numbers, indices for names


def _check_line(output: str) -> list[float]:
    line = next(ln for ln in output.splitlines() if ln.startswith("check against PyTorch: max"))
    diffs = [float(d) for d in re.findall(r"([0-9.e+-]+) at batch", line)]
    assert len(diffs) == 2 and max(diffs) <= 1e-4, line
    return diffs


def _batches(net, sizes=(1, 4)):
    g = torch.Generator().manual_seed(1)
    for n in sizes:
        x = torch.randn(n, 3, SIZE, SIZE, generator=g)
        with torch.no_grad():
            yield x, net(x)[0]


def test_export_torchscript_matches_pytorch(saved, tmp_path):
    path, net = saved
    out = tmp_path / "m.ts"
    r = runner.invoke(app, ["export", "--model", str(path), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 0, r.output
    print("torchscript check:", _check_line(r.output))
    extra = {"darts.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript
        loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["darts.json"])["classes"] == CLASSES
    for x, want in _batches(net):  # checked again here, independently, at other batch sizes
        assert (loaded(x) - want).abs().max() <= 1e-4


def test_export_onnx_matches_pytorch(saved, tmp_path):
    pytest.importorskip("onnxscript", reason="the onnx export needs the `export` extra: pip install -e '.[export]'")
    ort = pytest.importorskip("onnxruntime", reason="checking the onnx file needs the `export` extra: "
                                                    "pip install -e '.[export]'")
    import onnx

    path, net = saved
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", "--model", str(path), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    print("onnx check:", _check_line(r.output))
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["darts"])["image_size"] == SIZE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for x, want in _batches(net):
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        assert (got - want).abs().max() <= 1e-4


def test_export_onnx_without_onnxruntime_still_writes(saved, tmp_path, monkeypatch):
    """The check is skipped, in one line saying how to install the extra; the file is written."""
    pytest.importorskip("onnxscript", reason="the onnx export needs the `export` extra: pip install -e '.[export]'")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    path, out = saved[0], tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", "--model", str(path), "--format", "onnx", "--out", str(out)])
    assert r.exit_code == 0 and out.is_file(), r.output
    assert [ln for ln in r.output.splitlines() if "skipped" in ln] == [
        f"check against PyTorch skipped: onnxruntime is not installed; {stages.models.EXTRA}"]


@pytest.mark.parametrize("args,hide,needles", [
    (["--format", "pdf"], None, ["'pdf'", "onnx, torchscript"]),
    (["--format", "onnx"], "onnxscript", ["onnxscript", "pip install 'darts-constrained[export]'"]),
    (["--format", "torchscript", "--model", "{tmp}/nope.pt"], None, ["nope.pt", "does not exist"]),
    (["--format", "torchscript", "--out", "{tmp}"], None, ["is a folder", "file path"]),
])
def test_export_bad_input_one_line(saved, tmp_path, monkeypatch, args, hide, needles):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hide else real(name, *a))
    base = {"--model": str(saved[0]), "--out": str(tmp_path / "m.out")}
    given = dict(zip(args[::2], [a.format(tmp=tmp_path) for a in args[1::2]]))
    r = runner.invoke(app, ["export", *[x for kv in {**base, **given}.items() for x in kv]])
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "m.out").exists()


def test_export_mismatch_fails_and_writes_nothing(saved, tmp_path, monkeypatch):
    real = stages.models._runner
    monkeypatch.setattr(stages.models, "_runner", lambda fmt, p: (lambda x, run=real(fmt, p): run(x) + 1e-3))
    out = tmp_path / "m.ts"
    r = runner.invoke(app, ["export", "--model", str(saved[0]), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "differ from PyTorch's by 0.001" in lines[0] and "not written" in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_retrain_records_what_predict_needs(tmp_path, monkeypatch):
    """The real retrain stage (1 tiny epoch): model.pt names the classes and image size, and
    predict on the prepared test images gives the test stage's softmax (BatchStream, eval)."""
    import stages.common
    import stages.retrain

    for mod in (stages.common, stages.retrain):
        monkeypatch.setattr(mod, "CHECKPOINT_ROOT", tmp_path / "ck")
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_params()))
    assert runner.invoke(app, ["prepare-split", "--params", str(p), "--out", str(tmp_path / "prep")]).exit_code == 0
    g = tmp_path / "genotype.json"
    g.write_text(DARTS_V2.to_json())
    r = runner.invoke(app, ["retrain", "--params", str(p), "--config", "DARTS", "--genotype", str(g),
                            "--prepared", str(tmp_path / "prep"), "--out", str(tmp_path / "rt")])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    model, info = load_model(tmp_path / "rt")
    assert list(info.classes) == meta["classes"] and info.image_size == meta["image_size"]
    saved = torch.load(tmp_path / "rt" / "model.pt", weights_only=True)  # rebuilt as stages/test.py does
    tested = EvalNetwork(Genotype.from_dict(saved["genotype"]), C=saved["C"], n_classes=saved["n_classes"],
                         layers=saved["layers"], auxiliary=saved["auxiliary"])
    tested.load_state_dict(saved["state"])
    test_set = stages.common.load_prepared(tmp_path / "prep", "test")
    x, _ = next(BatchStream(test_set, len(test_set), seed=0, train=False).epoch_batches())
    with torch.no_grad():
        want = torch.softmax(tested.eval()(x)[0], dim=1)
    torch.testing.assert_close(predict(model, info, test_set.images), want, rtol=0, atol=1e-6)
