"""The evaluation-network training step, the data pipeline and the end-to-end study.

The eval step is ``darts.loops.train.Retrainer``'s (forward, CE + 0.4·aux CE, backward,
clip, SGD) on the DARTS_V2 genotype at C=16, 8 cells, batch 64, with drop-path at the
mid-run probability 0.1, as a real retrain spends most of its steps with drop-path on.
The reference runs with ``fast=False``: plain SGD and clipping loops, as DARTS' train.py.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import StepTimer, count_flops, matmul_gflops, report, sync_for

EVAL = (16, 8, 64, 32)  # C, cells, batch, side
ROOT = Path(__file__).resolve().parent.parent


def _eval_model(impl: str):
    import contextlib

    from darts.nn import evalnet
    from darts.space.primitives import DARTS_V2

    from darts.nn.reference import evalnet_ops
    c, layers, _, _ = EVAL
    torch.manual_seed(0)
    with evalnet_ops() if impl == "reference" else contextlib.nullcontext():
        return evalnet.EvalNetwork(DARTS_V2, C=c, layers=layers, auxiliary=True)


def eval_step(spec: dict) -> dict:
    from darts.loops.train import RetrainConfig, Retrainer
    _, _, batch, side = EVAL
    batch = spec.get("batch") or batch
    meta = _eval_model("reference").to("meta")
    xm = torch.empty(batch, 3, side, side, device="meta")
    ym = torch.zeros(batch, dtype=torch.long, device="meta")

    def step():
        logits, aux = meta(xm)
        (F.cross_entropy(logits, ym) + 0.4 * F.cross_entropy(aux, ym)).backward()

    flops = count_flops(step)
    device = torch.device(spec.get("device") or "cpu")
    amp = bool(spec.get("amp")) and spec["impl"] != "reference"  # the public code has no mixed precision
    model = _eval_model(spec["impl"]).to(device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, side, side, generator=g).to(device),
                torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(3)]
    timer = StepTimer(sync_for(device))
    trainer = Retrainer(model, RetrainConfig(epochs=2, batch_size=batch, drop_path_prob=0.2, amp=amp),
                        on_step=timer, fast=spec["impl"] != "reference")  # the reference steps as DARTS' train.py
    trainer.epoch = 1  # drop_path_prob = 0.2 · 1/2 in this epoch
    steps = spec.get("steps") or 5
    trainer.train_epoch(batches[:2])  # warm-up
    trainer.epoch = 1
    mm = matmul_gflops(device=device, dtype=torch.bfloat16 if amp else torch.float32)
    timer.reset()
    trainer.train_epoch((batches * steps)[:steps])
    row = {"bench": "eval_step", "config": spec["config"], "impl": spec["impl"], "batch": batch, "amp": amp}
    row.update(timer.summary())
    return report(row, flops, batch, mm, device)


def data_pipeline(spec: dict) -> dict:
    """Augmented batches per second out of ``darts.data.BatchStream`` (what the model eats)."""
    from darts.data import BatchStream
    from darts.data.synthetic import make_synthetic
    batch, n = 64, 64 * 40
    ds = make_synthetic(n, size=32, seed=0)
    cutout = 16 if spec["config"].endswith("cutout") else 0
    device = torch.device(spec.get("device") or "cpu")
    stream = BatchStream(ds, batch, seed=0, train=True, cutout=cutout, device=device)
    stream.next()
    timer = StepTimer(sync_for(device))
    for _ in range(spec.get("steps") or 30):
        stream.next()
        timer()
    row = {"bench": "data_pipeline", "config": spec["config"], "impl": "-", "cutout": cutout}
    row.update(timer.summary())
    return report(row, None, batch, matmul_gflops(device=device), device)


def study_e2e(spec: dict) -> dict:
    """Wall time of ``dvc repro --force`` of the study (as params.yaml sets it) in a temp copy."""
    row = {"bench": "study_e2e", "config": spec["config"], "impl": "-"}
    if not (ROOT / "dvc.yaml").exists() or shutil.which("dvc") is None:
        row["skipped"] = "no dvc.yaml or no dvc on PATH"
        return row
    ignore = shutil.ignore_patterns("runs", ".checkpoints", "current", "__pycache__", ".venv")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        shutil.copytree(ROOT, work, ignore=ignore)
        t = time.perf_counter()
        # --force: the copied dvc.lock would otherwise make every stage "up to date"
        proc = subprocess.run(["dvc", "repro", "--force"], cwd=work, env=dict(os.environ),
                              capture_output=True, text=True)
        row["seconds"] = time.perf_counter() - t
        row["returncode"] = proc.returncode
        if proc.returncode:
            row["stderr_tail"] = proc.stderr[-500:]
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return row
