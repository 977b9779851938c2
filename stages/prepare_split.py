"""`darts prepare-split`: materialise the datasets once as uint8 tensors.

Writes `train.pt` (the search pool and the retrain training set), `test.pt` and
`meta.json`. Later stages never decode an image again. The search train/val split
of each schedule is a fixed permutation of `train.pt` (seeded by `data.seed`), cut at
the schedule's ratio k/(k+1) by the search stage.

Image folders may hold images of any sizes and modes: each kept image is resized to
`data.image_size` (a side, or [height, width]) as it is decoded; gray folders stay one
channel. The per-channel mean and std every stage standardises with are decided here
(`data.normalize`) and saved in both sets and meta.json: CIFAR-10's published constants
for CIFAR-10, otherwise the training split's own, so the test set is standardised with the
training statistics, as it must be.
"""
from __future__ import annotations

from pathlib import Path

from darts import data as D
from darts.data.synthetic import make_synthetic
from darts.loops.checkpoint import write_json_atomic

from .params import ParamsError, check_data, image_size, load_params, normalize_mode, section


def build_sets(d: dict) -> tuple[D.ImageSet, D.ImageSet]:
    """The prepared (train, test) sets of a checked `data` section, standardisation included."""
    hw = image_size(d)
    seed = int(d.get("seed", 0))
    if d["dataset"] == "synthetic":
        side = max(hw)  # drawn square (bit-identical to before for square sizes), then resized
        train = make_synthetic(int(d.get("train_size") or 2000), size=side, seed=seed)
        test = make_synthetic(int(d.get("test_size") or 1000), size=side, seed=seed + 7919)
    elif d["dataset"] == "cifar10":
        root = d.get("root") or "data/cifar10"
        train = D.subset(D.load_cifar10(root, train=True, download=bool(d.get("download", True))),
                         d.get("train_size"), seed)
        test = D.subset(D.load_cifar10(root, train=False, download=bool(d.get("download", True))),
                        d.get("test_size"), seed + 1)
    else:
        root = Path(d["root"])
        # the subset is chosen before decoding and each image resized as it is read: any sizes, little memory
        train = D.load_imagefolder(root / "train", hw, d.get("train_size"), seed)
        test = D.load_imagefolder(root / "test", hw, d.get("test_size"), seed + 1)
        if train.classes != test.classes:
            raise D.DataError(f"{root}/train and {root}/test have different classes: {train.classes} vs {test.classes}")
    train, test = D.resize(train, hw), D.resize(test, hw)
    channels = max(train.channels, test.channels)  # colour anywhere: colour everywhere
    train, test = D.to_channels(train, channels), D.to_channels(test, channels)
    mean, std = statistics(d, train)
    return train.with_stats(mean, std), test.with_stats(mean, std)


def statistics(d: dict, train: D.ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of data.normalize: CIFAR's constants, or the training split's own."""
    mode = normalize_mode(d)
    if mode == "cifar":
        if train.channels != 3:
            raise ParamsError(f"data.normalize=cifar needs RGB images, but {d.get('root')} is grayscale "
                              f"({train.channels} channel); valid here: auto, dataset")
        return D.CIFAR_MEAN, D.CIFAR_STD
    return D.channel_stats(train.images)


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
        "image_size": D.recorded_size(train.size),
        "channels": train.channels,
        "normalize": normalize_mode(d),
        "mean": list(train.mean),
        "std": list(train.std),
        "classes": train.classes,
        # the seed of the search's train/val split: recorded so that data/prepared changes with
        # it even where the images do not, and the search stages can depend on data/prepared
        # alone instead of listing every data param in dvc.lock (measured: the lock's size is
        # what DVC pays per stage, benchmarks/README.md)
        "split_seed": int(d.get("seed", 0)),
    }
    write_json_atomic(meta, out_dir / "meta.json")
    return meta
