"""Tests for darts.data: loaders, splits, augmentation, resumable streams."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from darts.data import (CIFAR_MEAN, CIFAR_STD, BatchStream, DataError, ImageSet, augment,
                        load_cifar10, load_imagefolder, load_imageset, normalize,
                        resize, save_imageset, split_indices, subset)
from darts.data.synthetic import make_synthetic

REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg"


def _indexed(n: int, size: int = 8) -> ImageSet:
    """Images whose label is their own index, so a batch's labels reveal which images it holds."""
    g = torch.Generator().manual_seed(123)
    imgs = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(imgs, torch.arange(n), [str(i) for i in range(n)])


def _position_image(size: int = 16) -> torch.Tensor:
    """A (1, 3, S, S) image where channel 0 = row + 1, channel 1 = col + 1 (0 marks padding)."""
    r = torch.arange(size).view(size, 1).expand(size, size) + 1
    c = torch.arange(size).view(1, size).expand(size, size) + 1
    return torch.stack([r, c, torch.full_like(r, 77)]).to(torch.uint8)[None]


# ------------------------------------------------------------------ subsets and splits
def test_split_indices_sizes_disjoint_covering_and_seeded():
    for frac, (k_tr, k_va) in ((0.5, (500, 500)), (10 / 11, (909, 91))):
        tr, va = split_indices(1000, frac, seed=0)
        assert (len(tr), len(va)) == (k_tr, k_va)
        assert torch.equal(torch.cat([tr, va]).sort().values, torch.arange(1000))
        assert torch.equal(tr, split_indices(1000, frac, seed=0)[0])
    assert not torch.equal(split_indices(1000, 0.5, 0)[0], split_indices(1000, 0.5, 1)[0])
    for n, frac in ((1000, 0.0), (1000, 1.0), (1, 0.5), (10, 0.01)):
        with pytest.raises(DataError, match="train_fraction"):
            split_indices(n, frac, seed=0)


def test_subset_is_stratified_and_deterministic():
    ds = make_synthetic(1000, size=8, seed=0)
    assert subset(ds, None, 0) is ds and subset(ds, 5000, 0) is ds
    s = subset(ds, 100, seed=1)
    assert torch.bincount(s.labels).tolist() == [10] * 10
    assert torch.equal(s.images, subset(ds, 100, seed=1).images)
    assert not torch.equal(s.images, subset(ds, 100, seed=2).images)
    # Imbalanced classes keep their proportions; leftovers go to the largest remainders.
    imb = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8),
                   torch.tensor([0] * 70 + [1] * 20 + [2] * 10), ["a", "b", "c"])
    assert torch.bincount(subset(imb, 10, 0).labels).tolist() == [7, 2, 1]
    assert torch.bincount(subset(imb, 15, 0).labels).tolist() == [11, 3, 1]
    with pytest.raises(DataError):
        subset(ds, 0, 0)


def test_imageset_validation_and_take():
    ds = _indexed(10)
    t = ds.take(torch.tensor([3, 1]))
    assert t.labels.tolist() == [3, 1] and torch.equal(t.images[0], ds.images[3])
    with pytest.raises(DataError):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"])
    with pytest.raises(DataError):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])


# ------------------------------------------------------------------------ transforms
def test_normalize_values():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2).contiguous()
    out = normalize(x)
    mean, std = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0, :, 0, 0], -mean / std) and torch.allclose(out[1, :, 0, 0], (1 - mean) / std)
    with pytest.raises(DataError):
        normalize(x.float())


def test_augment_disabled_equals_normalize():
    x = make_synthetic(16, size=16).images
    out = augment(x, torch.Generator().manual_seed(0), crop_pad=0, flip=False, cutout=0)
    assert out.dtype == torch.float32 and out.device == x.device
    assert torch.equal(out, normalize(x))


def test_augment_crop_shifts_content_with_zero_padding():
    p, s = 4, 16
    img = _position_image(s)
    x = img.expand(256, -1, -1, -1).contiguous()
    out = augment(x, torch.Generator().manual_seed(0), crop_pad=p, flip=False)
    raw = (out * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) * 255
    raw = raw.round().long()
    shifts = set()
    for k in range(len(x)):
        rows, cols = raw[k, 0], raw[k, 1]
        inside = rows > 0
        i, j = inside.nonzero()[0].tolist()  # first non-padding pixel reveals the offset
        dy, dx = int(rows[i, j]) - 1 - i, int(cols[i, j]) - 1 - j
        assert -p <= dy <= p and -p <= dx <= p
        ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        src_r, src_c = ii + dy, jj + dx
        valid = (src_r >= 0) & (src_r < s) & (src_c >= 0) & (src_c < s)
        assert torch.equal(rows, torch.where(valid, src_r + 1, 0))  # shifted content, zeros outside
        assert torch.equal(cols, torch.where(valid, src_c + 1, 0))
        assert torch.equal(raw[k, 2], torch.where(valid, 77, 0))
        shifts.add((dy, dx))
    assert len(shifts) > 40  # 81 possible offsets, drawn per image


def test_augment_flip_mirrors_some_images():
    x = make_synthetic(200, size=16, seed=2).images
    out = augment(x, torch.Generator().manual_seed(0), crop_pad=0, flip=True)
    plain, mirrored = normalize(x), normalize(x.flip(3))
    is_plain = (out == plain).flatten(1).all(1)
    is_mirror = (out == mirrored).flatten(1).all(1)
    assert bool((is_plain | is_mirror).all())
    assert 60 < int((is_mirror & ~is_plain).sum()) < 140
    again = augment(x, torch.Generator().manual_seed(0), crop_pad=0, flip=True)
    assert torch.equal(out, again)  # randomness comes only from the generator


@pytest.mark.parametrize("size", [8, 5])
def test_augment_cutout_zeros_a_square(size):
    s = 16
    x = torch.full((300, 3, s, s), 200, dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), crop_pad=0, flip=False, cutout=size)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
    counts = zero[:, 0].flatten(1).sum(1)
    assert counts.max() == size * size and counts.min() >= ((size + 1) // 2) ** 2
    full = 0
    for k in range(len(x)):
        r, c = zero[k, 0].any(1).nonzero().squeeze(1), zero[k, 0].any(0).nonzero().squeeze(1)
        assert counts[k] == len(r) * len(c)  # a clipped axis-aligned rectangle
        assert torch.equal(r, torch.arange(r[0], r[-1] + 1)) and torch.equal(c, torch.arange(c[0], c[-1] + 1))
        full += int(counts[k] == size * size)
    assert full > 50
    assert torch.equal(out[~zero], normalize(x)[~zero])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_on_gpu_with_cpu_generator():
    x = make_synthetic(32, size=16).images
    cpu = augment(x, torch.Generator().manual_seed(0), cutout=4)
    gpu = augment(x.cuda(), torch.Generator().manual_seed(0), cutout=4)
    assert gpu.device.type == "cuda" and torch.allclose(gpu.cpu(), cpu, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_batch_stream_on_gpu_does_not_sync():
    """Index and augmentation draws reach the GPU through pinned, non-blocking copies."""
    ds = make_synthetic(64, size=16)
    streams = [BatchStream(ds, 16, seed=0, device="cuda", cutout=4), BatchStream(ds, 16, seed=0, device="cuda",
                                                                             train=False)]
    for st in streams:
        st.next()  # warm-up outside the check (lazy CUDA initialisation)
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [st.next() for st in streams for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in batches)


def test_resize_matches_pil_and_is_noop_at_size():
    ds = make_synthetic(8, size=32, seed=4)
    assert resize(ds, 32) is ds
    small = resize(ds, 16)
    assert small.images.dtype == torch.uint8 and small.images.shape == (8, 3, 16, 16)
    assert torch.equal(small.labels, ds.labels)
    for k in range(8):  # torch's antialiased bilinear is designed to match PIL's BILINEAR
        pil = Image.fromarray(ds.images[k].permute(1, 2, 0).numpy()).resize((16, 16), Image.BILINEAR)
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).int()
        assert (small.images[k].int() - ref).abs().max() <= 2
    flat = ImageSet(torch.full((2, 3, 10, 10), 93, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    assert bool((resize(flat, 24).images == 93).all())


def test_save_load_round_trip(tmp_path):
    ds = make_synthetic(50, size=8, seed=9)
    path = tmp_path / "sub" / "set.pt"
    save_imageset(ds, path)
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, dict) and raw["classes"] == ds.classes
    back = load_imageset(path)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.classes == ds.classes
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="bad.pt"):
        load_imageset(tmp_path / "bad.pt")


# ------------------------------------------------------------------------ BatchStream
def test_stream_lengths_and_errors():
    ds = _indexed(100)
    assert len(BatchStream(ds, 16, 0)) == 6
    assert len(BatchStream(ds, 16, 0, drop_last=False)) == 7
    assert len(BatchStream(ds, 16, 0, train=False)) == 7  # eval never drops
    for bs, kw in ((0, {}), (-1, {}), (101, {})):
        with pytest.raises(DataError, match=f"batch_size={bs}"):
            BatchStream(ds, bs, 0, **kw)
    assert len(BatchStream(ds, 101, 0, drop_last=False)) == 1


def test_stream_epochs_are_permutations():
    ds = _indexed(100)
    st = BatchStream(ds, 16, seed=0, crop_pad=0, flip=False, drop_last=False)
    e0 = torch.cat([y for _, y in st.epoch_batches()])
    assert st.epoch == 1 and st.position == 0
    e1 = torch.cat([y for _, y in st.epoch_batches()])
    for e in (e0, e1):
        assert torch.equal(e.sort().values, torch.arange(100))
    assert not torch.equal(e0, e1)
    dropped = BatchStream(ds, 16, seed=0)
    batches = list(dropped.epoch_batches())
    assert len(batches) == 6 and all(x.shape == (16, 3, 8, 8) for x, _ in batches)
    assert len(torch.cat([y for _, y in batches]).unique()) == 96
    assert torch.equal(torch.cat([y for _, y in batches]), e0[:96])  # same seed, same order


def test_stream_eval_is_ordered_and_unaugmented():
    ds = _indexed(50)
    st = BatchStream(ds, 16, seed=0, train=False, cutout=8)
    batches = list(st.epoch_batches())
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))
    assert torch.equal(torch.cat([x for x, _ in batches]), normalize(ds.images))
    x, y = st.next()
    assert y.tolist() == list(range(16)) and st.epoch == 1


def _take(stream: BatchStream, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [stream.next() for _ in range(k)]


def test_stream_resume_is_exact(tmp_path):
    ds = make_synthetic(100, size=16, seed=0)
    kw = dict(batch_size=16, seed=7, cutout=6)
    a = BatchStream(ds, **kw)
    list(a.epoch_batches())
    _take(a, 3)  # 1.5 epochs in
    assert (a.epoch, a.position) == (1, 3)
    torch.save(a.state_dict(), tmp_path / "s.pt")
    expected = _take(a, 10)  # crosses the next epoch boundary
    b = BatchStream(ds, **kw)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    got = _take(b, 10)
    for (xa, ya), (xb, yb) in zip(expected, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert (a.epoch, a.position) == (b.epoch, b.position) == (3, 1)
    fresh = BatchStream(ds, **kw)
    assert not torch.equal(_take(fresh, 1)[0][0], expected[0][0])


def test_stream_resume_inside_epoch_loop():
    ds = make_synthetic(100, size=16, seed=0)
    a = BatchStream(ds, 16, seed=3)
    state = None
    ref = []
    for k, (x, y) in enumerate(a.epoch_batches()):
        if k == 2:
            state = a.state_dict()
        elif k > 2:
            ref.append((x, y))
    b = BatchStream(ds, 16, seed=3)
    b.load_state_dict(state)
    rest = list(b.epoch_batches())  # the rest of the interrupted epoch
    assert len(rest) == len(ref) == 3 and b.epoch == 1
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ref, rest))
    assert torch.equal(a.next()[0], b.next()[0])
    with pytest.raises(DataError):
        BatchStream(ds, 10, seed=3).load_state_dict(state)


# --------------------------------------------------------------------------- loading
def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_load_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    pngs = {f"{c}/{i}.png": rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            for c in ("dog", "cat") for i in range(3)}
    for name, arr in pngs.items():
        _write(tmp_path / name, arr)
    _write(tmp_path / "cat/9.jpg", np.full((12, 12, 3), 120, dtype=np.uint8))
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8)).save(tmp_path / "dog/gray.png")  # grayscale -> RGB
    (tmp_path / "dog/notes.txt").write_text("ignored")
    ds = load_imagefolder(tmp_path)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0] * 4 + [1] * 4
    assert ds.images.shape == (8, 3, 12, 12) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[0], torch.from_numpy(pngs["cat/0.png"]).permute(2, 0, 1))
    assert torch.equal(ds.images[4], torch.from_numpy(pngs["dog/0.png"]).permute(2, 0, 1))
    assert (ds.images[3].float().mean() - 120).abs() < 3  # the JPEG, lossy
    assert bool((ds.images[7] == 0).all())
    _write(tmp_path / "dog/odd.png", np.zeros((10, 12, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="odd.png"):
        load_imagefolder(tmp_path)
    resized = load_imagefolder(tmp_path, size=8)
    assert resized.images.shape == (9, 3, 8, 8)


def test_load_imagefolder_errors(tmp_path):
    def message(root: Path) -> str:
        with pytest.raises(DataError) as e:
            load_imagefolder(root)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in message(tmp_path / "missing")
    assert "0 classes" in message(tmp_path)
    _write(tmp_path / "cat/0.png", np.zeros((4, 4, 3), dtype=np.uint8))
    assert "has 1 class (cat); need at least 2" in message(tmp_path)
    (tmp_path / "dog").mkdir()
    assert "no image files" in message(tmp_path)
    (tmp_path / "dog/3.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    assert f"cannot read image {tmp_path / 'dog/3.jpg'}" in message(tmp_path)


def test_load_cifar10_from_python_batches(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, 4)]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # fake files fail the md5s
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    test = load_cifar10(tmp_path, train=False, download=False)
    assert test.classes == [f"c{i}" for i in range(10)] and test.images.shape == (4, 3, 32, 32)
    assert torch.equal(test.images.flatten(1), torch.from_numpy(batches["test_batch"]["data"]))
    assert test.labels.tolist() == batches["test_batch"]["labels"]
    assert len(load_cifar10(tmp_path, train=True, download=False)) == 20
    monkeypatch.undo()
    with pytest.raises(DataError, match="cannot load CIFAR-10"):
        load_cifar10(tmp_path / "nowhere", train=True, download=False)


@pytest.mark.skipif(not REAL_CIFAR.is_dir(), reason=f"real CIFAR-10 JPEG folder not found at {REAL_CIFAR}")
def test_real_cifar_jpeg_sample(tmp_path):
    src = REAL_CIFAR / "train"
    for cls in sorted(d.name for d in src.iterdir() if d.is_dir()):
        (tmp_path / cls).mkdir()
        for f in sorted((src / cls).iterdir())[:20]:
            (tmp_path / cls / f.name).symlink_to(f)
    ds = load_imagefolder(tmp_path)
    assert ds.classes[:2] == ["airplane", "automobile"] and len(ds.classes) == 10
    assert ds.images.shape == (200, 3, 32, 32) and torch.bincount(ds.labels).tolist() == [20] * 10
    mean = ds.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR_MEAN), atol=0.06), mean
    z = normalize(ds.images)
    assert z.mean().abs() < 0.2 and (z.std() - 1).abs() < 0.2
