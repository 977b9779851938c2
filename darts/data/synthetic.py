"""The embedded default dataset: procedurally drawn shapes and textures, no download.

Ten classes (circle, ring, square, triangle, cross, horizontal/vertical/diagonal stripes,
checker, dots) with random colours (a lighter shape on a darker ground), position, scale,
angle and pixel noise. A CNN has to learn shapes: the colour statistics carry little label
information (a linear classifier on the mean colour: ~15 %, chance 10 %). Bitwise deterministic in
the seed, so ``prepare-split`` on any machine produces the same data.
"""
from __future__ import annotations

import math

import torch

from darts.data import DataError, ImageSet

SYNTHETIC_CLASSES = ("circle", "ring", "square", "triangle", "cross",
                     "hstripes", "vstripes", "diagonal", "checker", "dots")

def _sdf(cls: str, u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
         p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Signed distance (image units, < 0 inside) of class ``cls``'s foreground.

    A distance rather than a hard mask gives a 1-pixel antialiased edge at any size.
    ``u, v`` (B, S, S) are rotated coordinates about the shape centre, ``x, y`` (S, S)
    absolute ones; ``p`` holds per-image scalars as (B, 1, 1) and dot centres as (B, K).
    """
    r, t, f, ph = p["r"], p["t"], p["f"], p["phase"]
    rho = torch.sqrt(u * u + v * v)
    if cls == "circle":
        return rho - r
    if cls == "ring":
        return (rho - r).abs() - t / 2
    if cls == "square":
        return (torch.maximum(u.abs(), v.abs()) - 0.8 * r).abs() - t / 2
    if cls == "triangle":  # upright equilateral, circumradius 1.2 r: max of 3 half-planes
        s = 1.2 * r
        return torch.maximum(v, torch.maximum(0.866 * u - 0.5 * v, -0.866 * u - 0.5 * v)) - s / 2
    if cls == "cross":
        w = 0.65 * t
        return torch.minimum(torch.maximum(u.abs() - r, v.abs() - w),
                             torch.maximum(v.abs() - r, u.abs() - w))
    if cls in ("hstripes", "diagonal"):  # stripes along u; the angle makes them diagonal
        return -torch.sin(2 * math.pi * f * v + ph) / (2 * math.pi * f)
    if cls == "vstripes":
        return -torch.sin(2 * math.pi * f * u + ph) / (2 * math.pi * f)
    if cls == "checker":
        fc = 0.6 * f
        a, b = torch.sin(2 * math.pi * fc * u + ph), torch.sin(2 * math.pi * fc * v + ph)
        return -torch.sign(a * b) * torch.minimum(a.abs(), b.abs()) / (2 * math.pi * fc)
    if cls == "dots":  # distance to the nearest of K random dot centres
        dx = x.unsqueeze(-1) - p["dots_x"][:, None, None, :]  # (B, S, S, K)
        dy = y.unsqueeze(-1) - p["dots_y"][:, None, None, :]
        return torch.sqrt(dx * dx + dy * dy).amin(-1) - p["dot_r"]
    raise AssertionError(cls)


# Rotation jitter per class (radians, ±); diagonal adds ±45° on top.
_ANGLE = {"square": 0.26, "triangle": 0.35, "cross": 0.26, "hstripes": 0.26, "vstripes": 0.26,
          "diagonal": 0.2, "checker": 0.26}


def _draw_params(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image nuisance parameters, drawn before rendering so they do not depend on size."""
    def U(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=g)

    r = U(0.22, 0.36)
    p = {"r": r, "t": U(0.08, 0.13), "f": U(2.2, 4.0), "phase": U(0, 2 * math.pi),
         "angle": U(-1, 1), "diag_sign": torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0),
         "cx": 0.5 + U(-1, 1) * (0.46 - r), "cy": 0.5 + U(-1, 1) * (0.46 - r),
         "dots_x": U(0.12, 0.88, 8), "dots_y": U(0.12, 0.88, 8), "dot_r": U(0.06, 0.085),
         "noise": U(0.03, 0.09)}
    # Colours independent of the class: the shape, not the palette, must carry the label.
    # The shape is the lighter colour in every channel. A random polarity per image (as
    # until 2026-12-07) kept mean colours wholly uninformative, but it made the task one a
    # 4-cell supernet barely starts to learn in the quick study's ~25-45 w steps (issue
    # 20.3; benchmarks/README.md, "Learning probe"); with a fixed polarity the mean colour
    # carries a little (the colour-shortcut test's bound) and the supernets learn.
    bg = torch.rand(n, 3, generator=g)
    step = U(0.25, 0.55, 3)
    fg = bg + torch.where(bg < 0.5, step, -step)  # always >= 0.25 contrast per channel
    p["bg"], p["fg"] = torch.minimum(bg, fg), torch.maximum(bg, fg)
    return p


def _render(labels: torch.Tensor, p: dict[str, torch.Tensor], size: int, n_classes: int,
            g: torch.Generator) -> torch.Tensor:
    """Render one chunk of images (uint8 (B, 3, S, S)) from their parameters."""
    b = labels.shape[0]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in [0, 1]
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # (S, S), broadcast against (B, 1, 1)
    mask = torch.empty(b, size, size)
    for c in range(n_classes):  # loop over classes, vectorised over images and pixels
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        name = SYNTHETIC_CLASSES[c]
        q = {k: v[idx].view(len(idx), 1, 1) for k, v in p.items() if v.dim() == 1}
        q.update({k: v[idx] for k, v in p.items() if v.dim() == 2})  # (B, K) dot centres
        theta = q["angle"] * _ANGLE.get(name, 0.0)
        if name == "diagonal":
            theta = theta + q["diag_sign"] * math.pi / 4
        dx, dy = x - q["cx"], y - q["cy"]
        u, v = dx * torch.cos(theta) + dy * torch.sin(theta), -dx * torch.sin(theta) + dy * torch.cos(theta)
        d = _sdf(name, u, v, x, y, q)
        mask[idx] = (0.5 - d * size).clamp(0, 1)  # ~1 pixel antialiased edge at any size
    bg, fg = p["bg"].view(b, 3, 1, 1), p["fg"].view(b, 3, 1, 1)
    img = bg + (fg - bg) * mask.unsqueeze(1)
    img = img + p["noise"].view(b, 1, 1, 1) * torch.randn(b, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def make_synthetic(n: int, size: int = 32, seed: int = 0, n_classes: int = 10) -> ImageSet:
    """Balanced shapes/textures with random colours, position, scale, angle and noise.

    The embedded default dataset: learnable by a tiny CNN in seconds, yet not separable
    by colour statistics. Bitwise deterministic in ``seed``; shapes do not depend on ``size``.
    """
    if n <= 0 or size < 8 or not 2 <= n_classes <= len(SYNTHETIC_CLASSES):
        raise DataError(f"make_synthetic needs n > 0, size >= 8 and 2 <= n_classes <= "
                        f"{len(SYNTHETIC_CLASSES)}; got n={n}, size={size}, n_classes={n_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % n_classes)[torch.randperm(n, generator=g)]
    p = _draw_params(n, g)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    chunk = max(1, 2 ** 20 // (size * size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small elementwise ops: extra threads only add overhead (20x on a busy box)
    try:
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            images[s:e] = _render(labels[s:e], {k: v[s:e] for k, v in p.items()}, size, n_classes, g)
    finally:
        torch.set_num_threads(threads)
    return ImageSet(images, labels, list(SYNTHETIC_CLASSES[:n_classes]))
