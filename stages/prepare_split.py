"""`darts prepare-split`: materialise the datasets once as uint8 tensors.

Writes `train.pt` (the search pool and the retrain training set), `test.pt` and
`meta.json`. Later stages never decode an image again. The search train/val split
of each schedule is a fixed permutation of `train.pt` (seeded by `data.seed`), cut at
the schedule's ratio k/(k+1) by the search stage.
"""
from __future__ import annotations

from pathlib import Path

from darts import data as D
from darts.checkpoint import write_json_atomic
from darts.synthetic import make_synthetic

from .params import check_data, load_params, section


def build_sets(d: dict) -> tuple[D.ImageSet, D.ImageSet]:
    size = int(d.get("image_size", 32))
    seed = int(d.get("seed", 0))
    if d["dataset"] == "synthetic":
        train = make_synthetic(int(d.get("train_size") or 2000), size=size, seed=seed)
        test = make_synthetic(int(d.get("test_size") or 1000), size=size, seed=seed + 7919)
        return train, test
    if d["dataset"] == "cifar10":
        root = d.get("root") or "data/cifar10"
        train = D.load_cifar10(root, train=True, download=bool(d.get("download", True)))
        test = D.load_cifar10(root, train=False, download=bool(d.get("download", True)))
    else:
        root = Path(d["root"])
        train = D.load_imagefolder(root / "train", size=None)
        test = D.load_imagefolder(root / "test", size=None)
        if train.classes != test.classes:
            raise D.DataError(f"{root}/train and {root}/test have different classes: {train.classes} vs {test.classes}")
    train = D.resize(D.subset(train, d.get("train_size"), seed), size)
    test = D.resize(D.subset(test, d.get("test_size"), seed + 1), size)
    return train, test


def run(params_path: str, out: str) -> dict:
    params = load_params(params_path)
    d = check_data(section(params, "data"))
    train, test = build_sets(d)
    out_dir = Path(out)
    D.save_imageset(train, out_dir / "train.pt")
    D.save_imageset(test, out_dir / "test.pt")
    meta = {
        "dataset": d["dataset"],
        "train": len(train),
        "test": len(test),
        "image_size": int(train.images.shape[-1]),
        "classes": train.classes,
    }
    write_json_atomic(meta, out_dir / "meta.json")
    return meta
