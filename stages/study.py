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

Several machines (`--shard I/N`, then `darts study collect`) share a DVC remote, and
DVC's run-cache carries the results: a shard's dvc.lock never leaves its machine, but
each stage it runs leaves a run-cache entry (the stage's command, dependency and params
hashes → its output hashes), and `dvc push --run-cache` uploads those entries with the
outputs. A collector's `dvc repro --pull` looks every chain stage up in the remote's
run-cache and checks its outputs out instead of running it. Outputs declared
`cache: false` (reports/*, the summary figures) never travel that way, so the collector
writes them itself with the final `dvc repro` (aggregate, claims, figures); the per-run
metrics files are ordinary cached outputs and do travel.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import stageserver
from .params import ParamsError, load_params, study_runs
from .progress import _fmt_seconds as fmt_seconds

#: the stages of one study run, in order (dvc.yaml's matrix stages, named STAGE@CONFIG-SEED)
RUN_STAGES = ("search", "discretize", "retrain", "test")
#: the variant chain (dvc.yaml's variant-* stages)
VARIANT_STAGES = ("variant-search", "variant-discretize", "variant-retrain", "variant-test", "variant-figures")
#: the stages every chain depends on, reproduced once before the chains start
SETUP_STAGES = ("check-params", "prepare-split")
#: set by `darts study collect` for every DVC command it runs: `darts search`, `discretize`,
#: `retrain` and `test` then refuse to run (stages/cli.py), so a collector can only restore
#: runs from the remote, never compute one by accident (say, for params the shards did not use)
RESTORE_ONLY_ENV = "DARTS_RESTORE_ONLY"


class RemoteError(ParamsError):
    """No usable DVC remote for `--shard` / `collect`: a setup error, reported like a bad
    parameter (one line, exit 2) before any run starts, not after hours of compute."""


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


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """`--shard I/N` → (I, N), 1 <= I <= N; None (the whole study) when not given."""
    if shard is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ParamsError(f"--shard {shard!r} is invalid; valid: I/N with integers 1 <= I <= N "
                          "(e.g. 1/2 and 2/2 on two machines)")
    return int(m[1]), int(m[2])


def shard_chains(chains: list[Chain], index: int, count: int) -> list[Chain]:
    """Shard `index` of `count` (1-based): round robin over the study's order (study_chains:
    params.yaml's configs × seeds, then the variant chain), so chain k goes to shard
    k mod N + 1. Every machine computes the same split from the same params.yaml; the seeds
    of one config land on different shards and the costs stay balanced."""
    return [c for k, c in enumerate(chains) if k % count == index - 1]


def default_remote(env: dict) -> str:
    """The default DVC remote's name: where shards push and collectors pull (`dvc repro
    --pull` only knows the default remote, so both sides use it)."""
    r = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], env=env, text=True, capture_output=True)
    name = r.stdout.strip()
    if r.returncode != 0 or not name:
        raise RemoteError("no default DVC remote is set; the machines of a study share one: "
                          "`dvc remote add -d NAME URL` (s3://…, gs://…, ssh://…, or a shared folder)")
    return name


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


def _check_params_path(params_path: str) -> None:
    """DVC reads ./params.yaml whatever --params says: refuse another file rather than mislead."""
    if params_path != "params.yaml":
        raise ParamsError(f"--params {params_path!r}: the study runs through DVC, which reads ./params.yaml; "
                          "run from the project root")


def _say(out):
    """A progress printer that flushes each line (a shard's log is watched while it runs)."""
    return lambda text: (out.write(text + "\n"), out.flush())


def run(params_path: str, jobs: int, devices: str | None, log_dir: str = "logs/study", out=None,
        shard: str | None = None, setup: bool = True, stage_server: bool = True) -> int:
    """Run the whole study (chains in parallel, then aggregate and figures); the exit code.

    With `shard="I/N"`: only that shard's chains (shard_chains), then `dvc push --run-cache`
    of what finished, and no aggregate, claims or figures (they need every run: that is
    `collect`'s job, on any clone, once every shard has pushed).

    `setup=False` (`darts study submit`'s array tasks, which share one clone): check-params and
    prepare-split were reproduced once by the submitter and must be up to date here. They are
    not reproduced again: `dvc repro` takes a write lock on a stage's outputs even when the
    stage is up to date, and another task's running chain holds a read lock on data/prepared,
    so a task's setup would fail ("is busy") or make the other task's next stage fail."""
    out = out or sys.stderr
    say = _say(out)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ParamsError(f"--jobs={jobs!r} is invalid; must be an integer >= 1")
    part = parse_shard(shard)
    _check_params_path(params_path)
    device_list = parse_devices(devices, jobs)
    chains = study_chains(load_params(params_path))
    cores = os.cpu_count() or 1
    base = worker_env(0, jobs, device_list, cores)
    remote = default_remote(base) if part else None  # before any compute: a shard must be able to push
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    if part:
        total = len(chains)
        chains = shard_chains(chains, *part)
        say(f"[study] shard {part[0]}/{part[1]}: {len(chains)} of the study's {total} chains "
            f"({', '.join(c.name for c in chains) or 'none: more shards than chains'}); results go to "
            f"DVC remote {remote!r}")

    if not stage_server:  # "off", not unset: unset would be auto mode (stages/autoserver.py)
        return _run_study(chains, part, remote, jobs, device_list, cores, {**base, "DARTS_STAGE_SERVER": "off"},
                          logs, say, setup)
    with stageserver.started(base, logs / "stage-server.log") as sock:
        base["DARTS_STAGE_SERVER"] = sock or "off"
        if not sock:
            say(f"[study] no stage server ({logs / 'stage-server.log'}): every stage starts its own Python")
        return _run_study(chains, part, remote, jobs, device_list, cores, base, logs, say, setup)


def _run_study(chains: list[Chain], part, remote, jobs: int, device_list: list[str], cores: int, base: dict,
               logs: Path, say, setup: bool) -> int:
    """run()'s work once the inputs are checked: setup, the chains, then push or Table 1."""
    if not setup:
        stale = stale_stages(base)  # None (another process holds a lock): the chains' DVC still checks
        if stale is not None and stale.intersection(SETUP_STAGES):
            say(f"[study] {', '.join(sorted(stale.intersection(SETUP_STAGES)))} not up to date in this clone "
                "(params.yaml or data changed since the submission?); stopped before any run: resubmit")
            return 2
        say(f"[study] {', '.join(SETUP_STAGES)} already reproduced by the submission")
    else:
        say(f"[study] checking params and preparing data ({', '.join(SETUP_STAGES)})")
        # a shard takes the prepared data from the remote's run-cache when another shard has
        # pushed it: every machine then feeds the chains the same bytes, whatever its library versions
        done = _dvc(["repro", *(["--pull"] if part else []), *SETUP_STAGES], base)
        if done.returncode != 0:
            say(done.stdout.rstrip())
            say("[study] stopped before any run: fix the error above")
            return 2
    board = _run_chains(chains, jobs, device_list, cores, base, logs, say)
    if board is None:
        return 130
    if part:
        return _push(board, chains, part, remote, base, logs, say)
    if board.failed:
        say(f"[study] {len(board.failed)} chain(s) failed: {', '.join(board.failed)} (logs in {logs}/); "
            "Table 1 and the figures need every run: fix and rerun `darts study run` (finished chains are kept)")
        return 1
    say(f"[study] all {board.total} chains done in {fmt_seconds(time.monotonic() - board.t0)}; "
        "writing Table 1 and the figures (dvc repro)")
    return _final_repro(base, logs, say, board.t0)


def _run_chains(chains: list[Chain], jobs: int, device_list: list[str], cores: int, base: dict, logs: Path,
                say) -> Board | None:
    """Run the stale chains `jobs` at a time; the board, or None after Ctrl-C / SIGTERM."""
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
                procs[chain.name] = (subprocess.Popen(cmd, env=worker_env(slot, jobs, device_list, cores, base),
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
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return board


def _push(board: Board, chains: list[Chain], part: tuple[int, int], remote: str, env: dict, logs: Path,
          say) -> int:
    """Upload a shard's finished chains: their outputs (named as targets, from this machine's
    dvc.lock) and the run-cache entries that let any other clone find them without that
    dvc.lock. Failed chains are not named, but pushing what finished keeps it from being lost."""
    tag = f"shard {part[0]}/{part[1]}"
    finished = [c for c in chains if c.name in board.done]
    targets = [*SETUP_STAGES, *(st for c in finished for st in c.stages)]
    say(f"[study] {tag}: pushing {len(finished)} finished chain(s) and the run-cache to {remote!r} "
        f"(dvc push --run-cache)")
    push_log = logs / f"push-{part[0]}-of-{part[1]}.log"
    with open(push_log, "w") as log:
        pushed = _dvc(["push", "--run-cache", *targets], env, log=log)
    if pushed.returncode != 0:
        say(f"[study] {tag}: `dvc push` failed (exit {pushed.returncode}), log {push_log}:\n" + _tail(push_log, 6)
            + f"\n[study] the runs are kept here: rerun `darts study run --shard {part[0]}/{part[1]}` to push "
            "again (finished chains are up to date, so it only pushes)")
        return 1
    if board.failed:
        say(f"[study] {tag}: {len(board.failed)} chain(s) failed: {', '.join(board.failed)} (logs in {logs}/); "
            f"the others are pushed; fix and rerun `darts study run --shard {part[0]}/{part[1]}`")
        return 1
    say(f"[study] {tag} done in {fmt_seconds(time.monotonic() - board.t0)} and pushed; once every shard has "
        "pushed, `darts study collect` on any clone writes Table 1, the claims and the figures")
    return 0


def _final_repro(env: dict, logs: Path, say, t0: float) -> int:
    """`dvc repro` of the whole pipeline: after the chains only aggregate, claims and figures
    are stale (they and their `cache: false` reports are written here)."""
    final_log = logs / "final.log"
    with open(final_log, "w") as log:
        final = _dvc(["repro"], env, log=log)
    text = final_log.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("Running stage"):
            say(f"[study] {line}")
    if final.returncode != 0:
        say(f"[study] the final `dvc repro` failed (exit {final.returncode}), log {final_log}:\n" + _tail(final_log, 6))
        return 1
    say(f"[study] done in {fmt_seconds(time.monotonic() - t0)}: reports/table1.md, reports/figures/")
    return 0


#: DVC's line for a stage restored from the run-cache instead of run (dvc/stage/cache.py, 3.67.1)
_RESTORED = re.compile(r"^Stage '([^']+)' is cached - skipping run")


def collect(params_path: str, log_dir: str = "logs/study", out=None) -> int:
    """Bring every finished run back from the default remote and write Table 1, the claims and
    the figures, without computing a single run; the exit code (1 if any chain is missing).

    1. `dvc repro --pull check-params prepare-split`: the shards' prepared data, from the
       run-cache, so the chains' dependency hashes match theirs.
    2. `dvc --wait-for-lock repro --pull --keep-going <every stale chain stage>` with
       DARTS_RESTORE_ONLY=1: `--pull` fetches the remote's run-cache entries, then each stage
       is found there by its command + dependency + params hashes, and the objects of that
       entry's outputs are pulled and checked out. Not `dvc pull --run-cache` then `dvc
       repro` (measured, dvc 3.67.1, a fresh clone): that pull fetched the entries but not
       their outputs, and exited 1 on the outputs of the clone's committed dvc.lock, which the
       shards never pushed; the `dvc repro` after it found no cached outputs and ran
       prepare-split and search. A stage not in the run-cache would run: DARTS_RESTORE_ONLY
       makes its command refuse instead, `--keep-going` goes on with the other chains, and
       `dvc status` then names the chains still stale.
    3. `dvc repro` (still restore-only): aggregate, claims and figures, whose `cache: false`
       outputs never travel through a remote.
    """
    out = out or sys.stderr
    say = _say(out)
    t0 = time.monotonic()
    _check_params_path(params_path)
    chains = study_chains(load_params(params_path))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", **{RESTORE_ONLY_ENV: "1"})
    remote = default_remote(env)
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)

    say(f"[study] collecting {len(chains)} chains from DVC remote {remote!r}; no search, discretize, retrain "
        f"or test runs here ({RESTORE_ONLY_ENV}=1)")
    collect_log = logs / "collect.log"
    with open(collect_log, "w") as log:
        setup = _dvc(["repro", "--pull", *SETUP_STAGES], env, log=log)
    if setup.returncode != 0:
        say(_tail(collect_log, 6))
        say(f"[study] stopped before restoring any run: fix the error above (log {collect_log})")
        return 2
    stale = stale_stages(env)
    if stale is None:
        say("[study] `dvc status` failed: run it to see why")
        return 2
    todo = [c for c in chains if stale.intersection(c.stages)]
    if todo:
        with open(collect_log, "a") as log:
            _dvc(["repro", "--pull", "--keep-going", *(st for c in todo for st in c.stages)], env, log=log)
        stale = stale_stages(env)
        if stale is None:
            say("[study] `dvc status` failed: run it to see why")
            return 2
    missing = [c.name for c in chains if stale.intersection(c.stages)]
    lines = collect_log.read_text(errors="replace").splitlines()
    restored = [m[1] for m in map(_RESTORED.match, lines) if m and any(m[1] in c.stages for c in chains)]
    say(f"[study] {len(todo) - len(missing)} chain(s) restored from the remote ({len(restored)} stages found in "
        f"its run-cache), {len(chains) - len(todo)} already here; DVC's log: {collect_log}")
    if missing:
        say(f"[study] {len(missing)} chain(s) not in remote {remote!r} for this params.yaml: {', '.join(missing)}; "
            "run their shard (`darts study run --shard I/N`, which pushes when done) and collect again. "
            "Nothing was computed here")
        return 1
    say("[study] every run is here; writing Table 1, the claims and the figures (dvc repro)")
    return _final_repro(env, logs, say, t0)
