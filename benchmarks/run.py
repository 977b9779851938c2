"""Command line: ``python -m benchmarks [--config PATTERN ...] [--impl fast|reference|both]``.

Prints one JSON object per line: first the machine line (matmul and dense 3×3 conv
rates), then one line per benchmark. Each benchmark runs in a fresh subprocess
(``python -m benchmarks.run --worker SPEC``) so its ``peak_rss_mb`` is its own.
``--impl both`` runs the reference ("before") right after the fast one for every
config, so the two are measured under the same machine load. The reference is the
straightforward formulation of ``darts/nn/reference.py``; a first-order search step
also runs it through the public DARTS loop (``benchmarks/public_loop.py``), not ours.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import statistics
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


def machine_line(device: str = "cpu") -> dict:
    """The machine: the host's matmul and dense 3×3 conv rates (float32); on a GPU also its
    name, its float32 and bfloat16 matmul rates and whether cuDNN may use TF32 (torch's
    default: yes for convolutions, no for matmuls)."""
    from .common import matmul_gflops
    x, w = torch.randn(64, 64, 32, 32), torch.randn(64, 64, 3, 3)
    torch.nn.functional.conv2d(x, w, padding=1)
    best = min(_timed(lambda: torch.nn.functional.conv2d(x, w, padding=1)) for _ in range(5))
    line = {"bench": "machine", "matmul_gflops_per_s": matmul_gflops(),
            "conv3x3_gflops_per_s": 2 * 64 * 64 * 64 * 9 * 32 * 32 / best / 1e9,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "cpus": os.cpu_count()}
    if device == "cuda":
        line.update(gpu=torch.cuda.get_device_name(), gpu_matmul_gflops_per_s=matmul_gflops(device="cuda"),
                    gpu_bf16_matmul_gflops_per_s=matmul_gflops(device="cuda", dtype=torch.bfloat16),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return line


def _busy_fraction(seconds: float = 2.0) -> float:
    """Share of all CPUs' time spent busy over ``seconds`` (Linux /proc/stat)."""
    def sample():
        vals = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_until_idle(limit_s: float, busy_max: float = 0.15) -> float:
    """Wait (at most ``limit_s``) until other processes leave the CPUs alone; seconds waited.

    On a 2-core machine one other busy process makes 2-thread torch many times slower
    (every parallel op waits for the preempted thread), so a figure taken then is noise.
    """
    t = time.perf_counter()
    while _busy_fraction() > busy_max and time.perf_counter() - t < limit_s:
        time.sleep(10)
    return time.perf_counter() - t


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    if spec.get("retain_memory"):  # as the search and retrain stages run (both impls: the
        from darts.nn.fast.hostmemory import retain_freed_memory  # ratios compare formulations, not allocators)
        retain_freed_memory()
    torch.manual_seed(0)
    kind = spec["kind"]
    if kind == "search":
        from .search_bench import run
        return run(spec)
    from . import other_bench
    fn = {"eval": other_bench.eval_step, "data": other_bench.data_pipeline, "e2e": other_bench.study_e2e}[kind]
    return fn(spec)


def _run_worker(spec: dict) -> tuple[int, str, str]:
    """Run one benchmark in a child process; the child dies with us (SIGTERM included)."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", help="config name or glob (repeatable); default: all")
    ap.add_argument("--impl", choices=("fast", "reference", "both"), default="fast",
                    help="fast = darts.* as it is; reference = the straightforward formulation "
                         "(first-order search: driven by the public DARTS loop)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: per-config default)")
    ap.add_argument("--batch", type=int, default=0, metavar="B",
                    help="batch size of the search and eval steps (0: the config's); at B=1 a step is "
                         "almost all per-call cost, so two batch sizes split a step into the part that "
                         "scales with the data and the part that does not")
    ap.add_argument("--repeat", type=int, default=1, metavar="R",
                    help="run each benchmark in R processes (fast and reference alternating) and "
                         "report the median one: on a shared machine a process's speed varies by "
                         "up to 25 %% with where it lands; with --impl both also a ratio line, "
                         "the median over the back-to-back pairs")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where the search, eval and data "
                    "steps run (FLOPs are still counted on the meta device)")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast in our search and eval steps "
                    "(search.amp / retrain.amp); the reference stays float32, as the public code")
    ap.add_argument("--no-retain-memory", action="store_true",
                    help="run the workers with glibc malloc's defaults; by default each worker (ours and "
                         "the reference alike) keeps freed memory for reuse, as the stages do "
                         "(darts.nn.fast.hostmemory)")
    ap.add_argument("--e2e", action="store_true", help="also time `dvc repro` of the quick study")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="S",
                    help="before each benchmark wait up to S seconds for the CPUs to be idle")
    ap.add_argument("--list", action="store_true", help="print the config names and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 1:
        sys.exit(f"--repeat must be at least 1, got {args.repeat}")
    if args.device not in ("cpu", "cuda"):
        sys.exit(f"--device {args.device!r} is invalid; valid: cpu, cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here; valid here: cpu")
    if args.batch < 0:
        sys.exit(f"--batch must be 0 (the config's) or a positive batch size, got {args.batch}")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    cfgs = all_configs(args.e2e or any("study" in c for c in args.config or []))
    names = [n for n in cfgs if not args.config or any(fnmatch.fnmatch(n, p) for p in args.config)]
    if args.list or not names:
        print("\n".join(cfgs) if args.list else f"no config matches {args.config}; try --list")
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so _run_worker's finally runs
    torch.set_num_threads(args.threads)
    print(json.dumps(machine_line(args.device)), flush=True)
    impls = ("fast", "reference") if args.impl == "both" else (args.impl,)
    for name in names:
        kinds = impls if cfgs[name]["kind"] in ("search", "eval") else ("-",)
        runs: dict[str, list[dict]] = {impl: [] for impl in kinds}
        for _ in range(args.repeat):
            for impl in kinds:
                spec = dict(cfgs[name], config=name, impl=impl, threads=args.threads, steps=args.steps,
                            batch=args.batch, device=args.device, amp=args.amp,
                            retain_memory=not args.no_retain_memory)
                waited = wait_until_idle(args.wait_idle) if args.wait_idle else 0.0
                row = _one_run(cfgs[name]["kind"], spec)
                if waited:
                    row["waited_for_idle_s"] = round(waited, 1)
                runs[impl].append(row)
        for impl in kinds:
            print(json.dumps(median_run(runs[impl])), flush=True)
        if len(kinds) == 2:
            print(json.dumps(paired_ratio(name, runs["fast"], runs["reference"])), flush=True)


def _one_run(kind: str, spec: dict) -> dict:
    rc, out, err = _run_worker(spec)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if rc or not lines:
        err = (err.strip().splitlines() or ["?"])[-1]
        return {"bench": kind, "config": spec["config"], "impl": spec["impl"], "error": err}
    return json.loads(lines[-1])


def median_run(rows: list[dict]) -> dict:
    """The run with the median time (the faster middle one for an even count), with every run's
    time in ``runs_seconds``; an error if any run failed."""
    failed = [r for r in rows if "error" in r]
    if failed or len(rows) == 1:
        return failed[0] if failed else rows[0]
    key = "seconds_per_step" if "seconds_per_step" in rows[0] else "seconds" if "seconds" in rows[0] else None
    if key is None:
        return rows[0]
    ranked = sorted(rows, key=lambda r: r[key])
    best = dict(ranked[(len(rows) - 1) // 2])
    best["runs_seconds"] = [r[key] for r in rows]
    return best


def paired_ratio(config: str, fast: list[dict], reference: list[dict]) -> dict:
    """Reference time over ours for each repeat's pair of processes, run back to back, and
    their median: the machine's speed drifts over minutes, so a pair shares its conditions
    better than the two medians of all runs do (also given, as ``of_medians``)."""
    row = {"bench": "ratio", "config": config}
    if any("error" in r for r in fast + reference):
        return dict(row, error="a run failed")
    key = "seconds_per_step"
    pairs = [r[key] / f[key] for f, r in zip(fast, reference)]
    of_medians = median_run(reference)[key] / median_run(fast)[key]
    return dict(row, reference_over_fast=statistics.median(pairs), paired=pairs, of_medians=of_medians)


if __name__ == "__main__":
    main()
