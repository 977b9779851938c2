"""`darts study run`: the study's independent chains in parallel, through DVC.

A chain is one run's stages in order (search → discretize → retrain → test of a config ×
seed, or the variant chain). Chains share nothing but the prepared data, so after
`check-params` and `prepare-split` they can run side by side. Each chain is one
`dvc --wait-for-lock repro -s STAGE…` process: DVC still decides what is stale, records
dvc.lock and fills its cache and run-cache, so the result is the same as a serial
`dvc repro` (measured: `dvc repro` of a whole chain per process fails instead, since
every process then checks the shared upstream stages and finds their outputs locked).
`--wait-for-lock` makes two processes that finish together queue for dvc.lock instead of
failing (dvc issues #9805, #10465).

Machine settings reach each process through the environment (DARTS_DEVICE,
DARTS_THREADS), never through params.yaml, so pinning a chain to a device changes no
stage's hash. A failed chain does not stop the others; it is named at the end and the
exit code is 1. A rerun finds finished stages up to date and interrupted ones resume
from their checkpoints.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .params import ParamsError, load_params, study_runs
from .progress import _fmt_seconds as fmt_seconds

#: the stages of one study run, in order (dvc.yaml's matrix stages, named STAGE@CONFIG-SEED)
RUN_STAGES = ("search", "discretize", "retrain", "test")
#: the variant chain (dvc.yaml's variant-* stages)
VARIANT_STAGES = ("variant-search", "variant-discretize", "variant-retrain", "variant-test", "variant-figures")
#: the stages every chain depends on, reproduced once before the chains start
SETUP_STAGES = ("check-params", "prepare-split")


@dataclass(frozen=True)
class Chain:
    name: str                 # "DARTS-0", or "variant"
    stages: tuple[str, ...]
    metrics: str              # the metrics file its last stage writes
    cost: float = 1.0         # relative duration: the longest chains start first (a shorter makespan)


def study_chains(params: dict) -> list[Chain]:
    """Every config × seed chain of params.yaml, then the variant chain."""
    chains = [Chain(f"{s.name}-{s.seed}", tuple(f"{st}@{s.name}-{s.seed}" for st in RUN_STAGES),
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


def _dvc(args: list[str], env: dict, log=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", "--wait-for-lock", *args], env=env, text=True,
                          stdout=log if log is not None else subprocess.PIPE, stderr=subprocess.STDOUT)


def stale_stages(env: dict) -> set[str] | None:
    """Names of the stages `dvc status` reports as changed (None if it cannot tell)."""
    r = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], env=env, text=True, capture_output=True)
    try:
        return set(json.loads(r.stdout or "{}")) if r.returncode == 0 else None
    except json.JSONDecodeError:
        return None


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _result(chain: Chain) -> str:
    try:
        m = json.loads(Path(chain.metrics).read_text())
        return f"test error {m['test_error']:.2f}%, {m['params_m']:.3f}M params"
    except (OSError, ValueError, KeyError, TypeError):
        return "no metrics"


def _tail(path: Path, n: int = 3) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return "\n".join("    " + line for line in lines[-n:])


def run(params_path: str, jobs: int, devices: str | None, log_dir: str = "logs/study", out=None) -> int:
    """Run the whole study (chains in parallel, then aggregate and figures); the exit code."""
    out = out or sys.stderr
    say = lambda text: (out.write(text + "\n"), out.flush())  # noqa: E731
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ParamsError(f"--jobs={jobs!r} is invalid; must be an integer >= 1")
    if params_path != "params.yaml":
        raise ParamsError(f"--params {params_path!r}: the study runs through DVC, which reads ./params.yaml; "
                          "run from the project root")
    device_list = parse_devices(devices, jobs)
    chains = study_chains(load_params(params_path))
    cores = os.cpu_count() or 1
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    base = worker_env(0, jobs, device_list, cores)

    say(f"[study] checking params and preparing data ({', '.join(SETUP_STAGES)})")
    setup = _dvc(["repro", *SETUP_STAGES], base)
    if setup.returncode != 0:
        say(setup.stdout.rstrip())
        say("[study] stopped before any run: fix the error above")
        return 2
    stale = stale_stages(base)
    board = Board(total=len(chains), jobs=jobs)
    pending = []
    for c in chains:
        if stale is not None and not stale.intersection(c.stages):
            board.done.append(c.name)
        else:
            pending.append(c)
    pending.sort(key=lambda c: -c.cost)  # stable: the study's order among equals
    say(f"[study] {len(chains)} chains ({len(board.done)} up to date), {jobs} jobs on "
        f"{', '.join(device_list)}, {base['DARTS_THREADS']} thread(s) each; logs in {logs}/")

    procs: dict[str, tuple[subprocess.Popen, int, Chain, object]] = {}
    free_slots = list(range(jobs))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a scheduler's stop: like Ctrl-C
    try:
        while pending or procs:
            while pending and free_slots:
                chain, slot = pending.pop(0), free_slots.pop(0)
                log = open(logs / f"{chain.name}.log", "w")
                cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "-s", *chain.stages]
                # own session: a Ctrl-C at the terminal reaches only this process, which passes
                # exactly one SIGINT on (a stage takes a second one as "stop without saving")
                procs[chain.name] = (subprocess.Popen(cmd, env=worker_env(slot, jobs, device_list, cores),
                                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True),
                                     slot, chain, log)
                board.running[chain.name] = time.monotonic()
            time.sleep(0.2)
            for name, (proc, slot, chain, log) in list(procs.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del procs[name]
                free_slots.append(slot)
                took = time.monotonic() - board.running.pop(name)
                if proc.returncode == 0:
                    board.done.append(name)
                    board.durations.append(took)
                    say(f"{board.line()} | {name} done in {fmt_seconds(took)}: {_result(chain)}")
                else:
                    board.failed.append(name)
                    say(f"{board.line()} | {name} FAILED (exit {proc.returncode}), log {logs / (name + '.log')}:\n"
                        + _tail(logs / f"{name}.log"))
    except KeyboardInterrupt:
        for proc, *_ in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGINT)  # dvc and its stage: the stage checkpoints and exits
            except ProcessLookupError:
                pass
        for proc, _, _, log in procs.values():
            proc.wait()
            log.close()
        say("[study] interrupted: running chains saved their checkpoints; rerun `darts study run` to resume")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if board.failed:
        say(f"[study] {len(board.failed)} chain(s) failed: {', '.join(board.failed)} (logs in {logs}/); "
            "Table 1 and the figures need every run: fix and rerun `darts study run` (finished chains are kept)")
        return 1
    say(f"[study] all {board.total} chains done in {fmt_seconds(time.monotonic() - board.t0)}; "
        "writing Table 1 and the figures (dvc repro)")
    final_log = logs / "final.log"
    with open(final_log, "w") as log:
        final = _dvc(["repro"], base, log=log)
    text = final_log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("Running stage"):
            say(f"[study] {line}")
    if final.returncode != 0:
        say(f"[study] the final `dvc repro` failed (exit {final.returncode}), log {final_log}:\n" + _tail(final_log, 6))
        return 1
    say(f"[study] done in {fmt_seconds(time.monotonic() - board.t0)}: reports/table1.md, reports/figures/")
    return 0
