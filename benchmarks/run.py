"""Command line: ``python -m benchmarks [--config PATTERN ...] [--impl fast|reference|both]``.

Prints one JSON object per line: first the machine line (matmul and dense 3×3 conv
rates), then one line per benchmark. Each benchmark runs in a fresh subprocess
(``python -m benchmarks.run --worker SPEC``) so its ``peak_rss_mb`` is its own.
``--impl both`` runs the reference ("before") formulation right after the fast one
for every config, so the two are measured under the same machine load.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time

import torch

SEARCH_VARIANTS = {"": "softmax", "-crb": "crb", "-crb-half": "crb_half"}


def all_configs(e2e: bool) -> dict[str, dict]:
    cfgs: dict[str, dict] = {}
    for size in ("tiny", "small", "paper"):
        for suffix, act in SEARCH_VARIANTS.items():
            cfgs[size + suffix] = {"kind": "search", "size": size, "activation": act}
    cfgs["tiny-2nd"] = {"kind": "search", "size": "tiny", "activation": "softmax", "order": 2}
    cfgs["eval"] = {"kind": "eval"}
    cfgs["data"] = {"kind": "data"}
    cfgs["data-cutout"] = {"kind": "data"}
    if e2e:
        cfgs["study"] = {"kind": "e2e"}
    return cfgs


def machine_line() -> dict:
    from .common import matmul_gflops
    x, w = torch.randn(64, 64, 32, 32), torch.randn(64, 64, 3, 3)
    torch.nn.functional.conv2d(x, w, padding=1)
    best = min(_timed(lambda: torch.nn.functional.conv2d(x, w, padding=1)) for _ in range(5))
    return {"bench": "machine", "matmul_gflops_per_s": matmul_gflops(),
            "conv3x3_gflops_per_s": 2 * 64 * 64 * 64 * 9 * 32 * 32 / best / 1e9,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpus": os.cpu_count()}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "search":
        from .search_bench import run
        return run(spec)
    from . import other_bench
    fn = {"eval": other_bench.eval_step, "data": other_bench.data_pipeline, "e2e": other_bench.study_e2e}[kind]
    return fn(spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="config name or glob (repeatable); default: all")
    ap.add_argument("--impl", choices=("fast", "reference", "both"), default="fast",
                    help="fast = darts.* as it is; reference = the straightforward formulation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: per-config default)")
    ap.add_argument("--e2e", action="store_true", help="also time `dvc repro` of the quick study")
    ap.add_argument("--list", action="store_true", help="print the config names and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    cfgs = all_configs(args.e2e or any("study" in c for c in args.config or []))
    names = [n for n in cfgs if not args.config or any(fnmatch.fnmatch(n, p) for p in args.config)]
    if args.list or not names:
        print("\n".join(cfgs) if args.list else f"no config matches {args.config}; try --list")
        return
    torch.set_num_threads(args.threads)
    print(json.dumps(machine_line()), flush=True)
    impls = ("fast", "reference") if args.impl == "both" else (args.impl,)
    for name in names:
        for impl in impls if cfgs[name]["kind"] in ("search", "eval") else ("-",):
            spec = dict(cfgs[name], config=name, impl=impl, threads=args.threads, steps=args.steps)
            proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--worker", json.dumps(spec)],
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(json.dumps({"bench": cfgs[name]["kind"], "config": name, "impl": impl, "error": err}),
                      flush=True)
            else:
                print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
