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

Several machines: stages/shard.py; a cluster: stages/submit.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import stageserver
from .chains import (SETUP_STAGES, Board, Chain, chain_result, check_params_path, dvc, final_repro, parse_devices,
                     printer, stale_stages, study_chains, tail, worker_env)
from .params import ParamsError, load_params
from .progress import _fmt_seconds as fmt_seconds
from .shard import default_remote, parse_shard, push, shard_chains

def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


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
    say = printer(out)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ParamsError(f"--jobs={jobs!r} is invalid; must be an integer >= 1")
    part = parse_shard(shard)
    check_params_path(params_path)
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
        done = dvc(["repro", *(["--pull"] if part else []), *SETUP_STAGES], base)
        if done.returncode != 0:
            say(done.stdout.rstrip())
            say("[study] stopped before any run: fix the error above")
            return 2
    board = _run_chains(chains, jobs, device_list, cores, base, logs, say)
    if board is None:
        return 130
    if part:
        return push(board, chains, part, remote, base, logs, say)
    if board.failed:
        say(f"[study] {len(board.failed)} chain(s) failed: {', '.join(board.failed)} (logs in {logs}/); "
            "Table 1 and the figures need every run: fix and rerun `darts study run` (finished chains are kept)")
        return 1
    say(f"[study] all {board.total} chains done in {fmt_seconds(time.monotonic() - board.t0)}; "
        "writing Table 1 and the figures (dvc repro)")
    return final_repro(base, logs, say, board.t0)


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
    # SIGTERM (a scheduler's stop) acts like Ctrl-C, and SIGINT is set explicitly: a process
    # started in the background of a non-interactive shell (`nohup ... &`, CI, a batch script)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the
    # one SIGINT that `darts study submit`'s task sends on preemption was lost (reproduced)
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
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
                    say(f"{board.line()} | {name} done in {fmt_seconds(took)}: {chain_result(chain)}")
                else:
                    board.failed.append(name)
                    say(f"{board.line()} | {name} FAILED (exit {proc.returncode}), log {logs / (name + '.log')}:\n"
                        + tail(logs / f"{name}.log"))
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
        for s, handler in previous.items():
            signal.signal(s, handler)
    return board

