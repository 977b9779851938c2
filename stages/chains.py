"""What every study command shares: the chains, the progress board, and DVC invoked as a tool.

A chain is one run's stages in order (search → discretize → retrain → test of a config ×
seed, or the variant chain). `darts study run` (stages/study.py) runs chains side by side,
`--shard`/`collect` (stages/shard.py) split them over machines and bring them back, and
`darts study submit` (stages/submit.py) hands shards to a cluster.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .params import ParamsError, study_runs
from .progress import _fmt_seconds as fmt_seconds

#: the stages of one study run, in order: the matrix stages named STAGE@CONFIG-SEED, each
#: kind in its own study/STAGE/dvc.yaml (one dvc.lock per kind: DVC rewrites a stage's whole
#: lock file after every stage, so one lock for the whole study cost ∝ its size squared)
RUN_STAGES = ("search", "discretize", "retrain", "test")
#: the variant chain (dvc.yaml's variant-* stages)
VARIANT_STAGES = ("variant-search", "variant-discretize", "variant-retrain", "variant-test", "variant-figures")
#: the stages every chain depends on, reproduced once before the chains start
SETUP_STAGES = ("check-params", "prepare-split")
#: set by `darts study collect` for every DVC command it runs: `darts search`, `discretize`,
#: `retrain` and `test` then refuse to run (stages/cli.py), so a collector can only restore
#: runs from the remote, never compute one by accident (say, for params the shards did not use)
RESTORE_ONLY_ENV = "DARTS_RESTORE_ONLY"


@dataclass(frozen=True)
class Chain:
    name: str                 # "DARTS-0", or "variant"
    stages: tuple[str, ...]
    metrics: str              # the metrics file its last stage writes
    cost: float = 1.0         # relative duration: the longest chains start first (a shorter makespan)


def run_stage_file(stage: str) -> str:
    """The dvc.yaml that holds the matrix stage `stage` (one of RUN_STAGES)."""
    return f"study/{stage}/dvc.yaml"


def run_stage(stage: str, run: str) -> str:
    """DVC's address of one run's stage, e.g. `study/search/dvc.yaml:search@DARTS-0`: the
    name `dvc repro`, `dvc status --json` and DVC's log lines use for it."""
    return f"{run_stage_file(stage)}:{stage}@{run}"


def study_chains(params: dict) -> list[Chain]:
    """Every config × seed chain of params.yaml, then the variant chain."""
    chains = [Chain(f"{s.name}-{s.seed}", tuple(run_stage(st, f"{s.name}-{s.seed}") for st in RUN_STAGES),
                    f"metrics/{s.name}/{s.seed}.json", cost=float(s.order)) for s in study_runs(params)]
    # a second-order search costs ~2x a first-order one; the variant chain adds its figures
    return chains + [Chain("variant", VARIANT_STAGES, "current/metrics.json", cost=1.2)]


def parse_devices(devices: str | None, jobs: int) -> list[str]:
    """`--devices cuda:0,cuda:1` → one device per job slot (round robin); default: cpu or cuda."""
    if not devices:
        return [os.environ.get("DARTS_DEVICE") or "auto"]
    out = [d.strip() for d in devices.split(",") if d.strip()]
    for d in out:
        if d not in ("auto", "cpu", "cuda") and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ParamsError(f"--devices entry {d!r} is invalid; valid: auto, cpu, cuda, cuda:N (comma-separated)")
    return out or ["auto"]


def worker_env(slot: int, jobs: int, devices: list[str], cores: int, base: dict | None = None) -> dict:
    """The environment of the job in `slot`: its device, and its share of the CPU cores.

    On a CPU the cores are split evenly between jobs (at least one thread each) unless
    DARTS_THREADS is set; a job on a GPU gets the same share for its host work."""
    env = dict(os.environ if base is None else base)
    threads = env.get("DARTS_THREADS") or str(max(1, cores // max(jobs, 1)))  # the user's setting wins
    env.update({"DARTS_DEVICE": devices[slot % len(devices)], "DARTS_THREADS": threads,
                "OMP_NUM_THREADS": threads, "DVC_NO_ANALYTICS": "1"})
    return env


def eta_seconds(durations: list[float], left: int, running: list[float], jobs: int) -> float | None:
    """Remaining wall time: the mean chain duration so far times the chains not finished,
    spread over the jobs, less what the running chains have done. None before any finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = left * mean + sum(max(mean - r, 0.0) for r in running)
    return work / max(min(jobs, left + len(running)), 1)


@dataclass
class Board:
    """Chains done / running / failed / left, and the progress line."""

    total: int
    jobs: int
    t0: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)   # name → start time
    durations: list[float] = field(default_factory=list)

    def left(self) -> int:
        return self.total - len(self.done) - len(self.failed) - len(self.running)

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        eta = eta_seconds(self.durations, self.left(), [now - t for t in self.running.values()], self.jobs)
        return (f"[study] {len(self.done)}/{self.total} chains done, {len(self.running)} running, "
                f"{len(self.failed)} failed, {self.left()} left; elapsed {fmt_seconds(now - self.t0)}, "
                f"ETA {'?' if eta is None else fmt_seconds(eta)}")


def dvc(args: list[str], env: dict, log=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", *args], env=env, text=True,
                          stdout=log if log is not None else subprocess.PIPE, stderr=subprocess.STDOUT)


def stale_stages(env: dict) -> set[str] | None:
    """Names of the stages `dvc status` reports as changed (None if it cannot tell)."""
    r = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], env=env, text=True, capture_output=True)
    try:
        return set(json.loads(r.stdout or "{}")) if r.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def chain_result(chain: Chain) -> str:
    try:
        m = json.loads(Path(chain.metrics).read_text())
        return f"test error {m['test_error']:.2f}%, {m['params_m']:.3f}M params"
    except (OSError, ValueError, KeyError, TypeError):
        return "no metrics"


def tail(path: Path, n: int = 3) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join("    " + line for line in lines[-n:])


def check_params_path(params_path: str) -> None:
    """DVC reads ./params.yaml whatever --params says: refuse another file rather than mislead."""
    if params_path != "params.yaml":
        raise ParamsError(f"--params {params_path!r}: the study runs through DVC, which reads ./params.yaml; "
                          "run from the project root")


def printer(out):
    """A progress printer that flushes each line (a shard's log is watched while it runs)."""
    return lambda text: (out.write(text + "\n"), out.flush())


def final_repro(env: dict, logs: Path, say, t0: float) -> int:
    """`dvc repro` of the whole pipeline: after the chains only aggregate, claims and figures
    are stale (they and their `cache: false` reports are written here)."""
    final_log = logs / "final.log"
    with open(final_log, "w") as log:
        final = dvc(["repro"], env, log=log)
    text = final_log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("Running stage"):
            say(f"[study] {line}")
    if final.returncode != 0:
        say(f"[study] the final `dvc repro` failed (exit {final.returncode}), log {final_log}:\n" + tail(final_log, 6))
        return 1
    say(f"[study] done in {fmt_seconds(time.monotonic() - t0)}: reports/table1.md, reports/figures/")
    return 0
