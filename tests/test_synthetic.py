"""The embedded synthetic dataset: deterministic, balanced, a lighter shape on a darker ground,
hardly separable by colour, learnable."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from darts.data import DataError, normalize
from darts.data.synthetic import _draw_params, make_synthetic


def test_synthetic_is_bitwise_deterministic_and_well_formed():
    a, b = make_synthetic(300, seed=5), make_synthetic(300, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, make_synthetic(300, seed=6).images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (300, 3, 32, 32) and a.images.is_contiguous()
    assert a.labels.dtype == torch.int64
    assert a.classes[:3] == ["circle", "ring", "square"] and len(set(a.classes)) == 10
    small = make_synthetic(300, size=16, seed=5)
    assert small.images.shape == (300, 3, 16, 16)
    assert torch.equal(small.labels, a.labels)  # same seed: same scenes at any resolution
    # Not degenerate: full dynamic range, and every image has a visible foreground.
    px = a.images.float()
    assert 90 < px.mean() < 165 and px.std() > 50
    assert px.flatten(1).std(1).min() > 8


def test_synthetic_balanced_and_validates_arguments():
    ds = make_synthetic(1003, size=16, seed=0)
    counts = torch.bincount(ds.labels, minlength=10)
    assert counts.min() == 100 and counts.max() == 101
    three = make_synthetic(90, size=16, n_classes=3)
    assert three.classes == ["circle", "ring", "square"]
    assert torch.bincount(three.labels).tolist() == [30, 30, 30]
    for kwargs in ({"n": 0}, {"n": 10, "n_classes": 1}, {"n": 10, "n_classes": 11}, {"n": 10, "size": 4}):
        with pytest.raises(DataError):
            make_synthetic(**kwargs)


def test_synthetic_shape_is_lighter_than_ground_in_every_channel():
    """A fixed polarity (issue 20.3): the quick supernets learn it in ~25 w steps, which a
    random polarity per image kept them from. Contrast stays >= 0.25 per channel."""
    p = _draw_params(2000, torch.Generator().manual_seed(0))
    diff = p["fg"] - p["bg"]
    assert diff.min() >= 0.25 - 1e-6 and diff.max() <= 0.55 + 1e-6
    # colours still vary freely: the ground spans most of [0, 1] in every channel
    assert (p["bg"].amin(0) < 0.05).all() and (p["bg"].amax(0) > 0.7).all()


def test_synthetic_class_not_separable_by_mean_colour():
    ds = make_synthetic(3000, size=16, seed=3)
    feats = ds.images.float().mean((2, 3)) / 255
    y = ds.labels
    ftr, ytr, fte, yte = feats[:2000], y[:2000], feats[2000:], y[2000:]
    centroids = torch.stack([ftr[ytr == c].mean(0) for c in range(10)])
    nc_acc = (torch.cdist(fte, centroids).argmin(1) == yte).float().mean().item()
    mu, sd = ftr.mean(0), ftr.std(0)
    w = torch.zeros(3, 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy((ftr - mu) / sd @ w + b, ytr)
        loss.backward()
        return loss

    opt.step(closure)
    lr_acc = ((((fte - mu) / sd) @ w + b).argmax(1) == yte).float().mean().item()
    assert nc_acc < 0.25 and lr_acc < 0.25, (nc_acc, lr_acc)


def test_synthetic_learnable_by_tiny_cnn():
    torch.manual_seed(0)
    ds = make_synthetic(1500, size=16, seed=1)
    x, y = normalize(ds.images), ds.labels
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(8):
        perm = torch.randperm(1000)
        for i in range(0, 1000, 50):
            idx = perm[i:i + 50]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[1000:]).argmax(1) == y[1000:]).float().mean().item()
    assert acc > 0.4, acc
