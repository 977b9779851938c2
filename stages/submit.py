"""`darts study submit`: the study's chains as a Slurm job array through submitit.

Each array task is item 4's shard flow, unchanged: `darts study run --shard I/N` in the
clone the submission came from (on shared storage), which runs its chains through DVC and
pushes their outputs and run-cache to the default DVC remote. On Slurm there is one task
per chain (N = the number of chains; `--parallel` caps how many run at once); submitit's
local executor starts every task at once, so there `--parallel K` tasks each run a
round-robin shard of the chains one after another.

Time limits and preemption: submitit asks Slurm for a signal (USR2) `signal_delay_s`
before the limit, and a preemption sends it too (where the cluster sets
`preempt_send_user_signal`). Submitit's handler in the task then calls `ShardTask.checkpoint`,
which passes one SIGINT to the shard's `darts study run` (that process passes one to each
running chain; the running stage saves its checkpoint in DARTS_CHECKPOINT_DIR and exits),
waits for every process it started to exit, and hands submitit the same task to requeue.
The requeued task reruns `darts study run --shard I/N`: finished stages are up to date in
DVC, and the interrupted stage resumes from its checkpoint, bit for bit.

Slurm signals every process of a job step, not only the task (with proctrack/cgroup), and
USR2's default action is to terminate: so the processes a task starts ignore USR2 (SIG_IGN
survives exec and no stage installs a USR2 handler) and only the task reacts to it.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from .params import ParamsError, load_params
from .progress import _fmt_seconds as fmt_seconds
from .chains import SETUP_STAGES, check_params_path, dvc, eta_seconds, study_chains
from .shard import collect, default_remote, shard_chains

EXECUTORS = ("slurm", "local")
#: requeues after a time limit before submitit gives up on a task (preemptions do not count);
#: every requeue resumes from a checkpoint, so a chain longer than the limit needs several
MAX_TIMEOUTS = 30
#: seconds a stopped shard may take to save its checkpoints; Slurm's signal comes 90 s
#: (submitit's default signal_delay_s) before the limit, the local executor's 30 s before
STOP_GRACE_S = 80
#: submitit's preemption signal (it reads SUBMITIT_PREEMPT_SIGNAL, default USR2)
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


@dataclass(frozen=True)
class SubmitOptions:
    executor: str
    parallel: int | None   # None: every task at once (Slurm), 1 task (local)
    hours: float
    partition: str | None
    gpus_per_job: int
    cpus_per_job: int


def _count(name: str, raw, least: int, meaning: str) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = None
    if value is None or value < least:
        raise ParamsError(f"{name}={raw!r} is invalid; valid: an integer >= {least} ({meaning})")
    return value


def parse_options(executor: str, parallel: str | None, hours: str, partition: str | None,
                  gpus_per_job: str, cpus_per_job: str) -> SubmitOptions:
    """Every option checked before anything is submitted: a typo costs nothing, not a queue wait."""
    if executor not in EXECUTORS:
        raise ParamsError(f"--executor {executor!r} is invalid; valid: {', '.join(EXECUTORS)}")
    try:
        h = float(str(hours).strip())
    except ValueError:
        h = float("nan")
    if not h * 60 >= 1 or h == float("inf"):  # also NaN: submitit's time limit is in whole minutes
        raise ParamsError(f"--time={hours!r} is invalid; valid: hours per task, a number >= 1/60 (e.g. 4 or 0.5)")
    if partition is not None and executor != "slurm":
        raise ParamsError(f"--partition={partition!r} is a Slurm setting; valid with --executor slurm only")
    return SubmitOptions(executor, None if parallel is None else _count("--parallel", parallel, 1, "tasks at once"),
                         h, partition, _count("--gpus-per-job", gpus_per_job, 0, "GPUs per task, 0 = CPU"),
                         _count("--cpus-per-job", cpus_per_job, 1, "CPU cores per task"))


def _subreaper() -> None:
    """Make this process adopt its orphaned descendants (Linux prctl PR_SET_CHILD_SUBREAPER), so
    `_stop` can wait for a stage whose `dvc` parent died first (Slurm's SIGTERM reaches every
    process of the job); elsewhere a no-op, and the wait covers only the direct child."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class ShardTask(submitit.helpers.Checkpointable):
    """One array task: `darts study run --shard I/N` in `root`, requeued on submitit's signal.

    It holds no state of the run itself: DVC (finished stages) and the stages' checkpoints in
    DARTS_CHECKPOINT_DIR (the interrupted one) live on shared storage, so the requeued task,
    on whatever node, is the same command run again."""

    def __init__(self, root: str, shard: str, jobs: int, devices: str | None, threads: int, checkpoint_dir: str):
        self.root, self.shard, self.jobs, self.devices = root, shard, jobs, devices
        self.threads, self.checkpoint_dir = threads, checkpoint_dir
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:  # a running process does not travel with the requeued task
        return {**self.__dict__, "_proc": None}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "stages", "study", "run", "--shard", self.shard, "--jobs", str(self.jobs),
                *(["--devices", self.devices] if self.devices else []), "--no-setup"]

    def __call__(self) -> str:
        _subreaper()
        env = dict(os.environ, DARTS_CHECKPOINT_DIR=self.checkpoint_dir, DARTS_THREADS=str(self.threads),
                   DVC_NO_ANALYTICS="1")
        env.pop("DARTS_RESTORE_ONLY", None)
        print(f"[submit] shard {self.shard} in {self.root}: {' '.join(self.command()[1:])}", flush=True)
        # own session: a terminal's Ctrl-C or the local controller's SIGINT reaches only this
        # task, which stops the shard once (`_stop`); USR2 ignored: only this process acts on it
        self._proc = subprocess.Popen(self.command(), cwd=self.root, env=env, start_new_session=True,
                                      preexec_fn=lambda: signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN))
        try:
            # poll, not wait(): Popen.wait() holds a lock that the signal handler's `_stop`, running
            # inside it, would then wait for in vain (measured: the requeue came only after STOP_GRACE_S)
            while (code := self._proc.poll()) is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            self._stop()
            raise
        if code != 0:
            raise RuntimeError(f"shard {self.shard} failed (exit {code}); its chains' logs are in "
                               f"{self.root}/logs/study/, and a resubmission resumes it")
        return f"shard {self.shard} done and pushed"

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Submitit's preemption / time-limit handler: stop the shard with its checkpoints saved,
        then requeue this same task (which resumes from them)."""
        self._stop()
        return super().checkpoint(*args, **kwargs)

    def _stop(self) -> None:
        """One SIGINT to the shard, then wait (os.waitpid: this may run inside a signal handler)
        until it and every orphan it left behind have exited, at most STOP_GRACE_S."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        print(f"[submit] shard {self.shard}: stopping (checkpoints follow)", flush=True)
        try:
            proc.send_signal(signal.SIGINT)  # `darts study run` passes exactly one SIGINT to each chain
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)  # the shard, and orphans adopted (see _subreaper)
            except ChildProcessError:
                return  # no child left: every checkpoint is written
            if pid == 0:
                time.sleep(0.1)
        print(f"[submit] shard {self.shard}: still running after {STOP_GRACE_S}s; the last saved "
              "checkpoints are what a requeue resumes from", flush=True)


def make_tasks(params_path: str, opts: SubmitOptions, root: Path, checkpoint_dir: Path) -> tuple[list[ShardTask], list]:
    """The array's tasks and each one's chains: Slurm, one per chain; local, `--parallel` shards."""
    chains = study_chains(load_params(params_path))
    n = len(chains) if opts.executor == "slurm" else min(opts.parallel or 1, len(chains))
    jobs = max(opts.gpus_per_job, 1)
    devices = ",".join(f"cuda:{g}" for g in range(opts.gpus_per_job)) if opts.gpus_per_job > 1 else None
    threads = max(opts.cpus_per_job // jobs, 1)
    tasks = [ShardTask(str(root), f"{i}/{n}", jobs, devices, threads, str(checkpoint_dir)) for i in range(1, n + 1)]
    return tasks, [shard_chains(chains, i, n) for i in range(1, n + 1)]


def make_executor(opts: SubmitOptions, n_tasks: int, folder: Path) -> submitit.AutoExecutor:
    """Submitit's executor: one array (`batch`) of `n_tasks`, each `--time` hours, requeued up
    to MAX_TIMEOUTS times at its time limit."""
    ex = submitit.AutoExecutor(folder=folder, cluster=opts.executor, slurm_max_num_timeout=MAX_TIMEOUTS,
                               local_max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(name="darts-study", timeout_min=max(int(round(opts.hours * 60)), 1),
                         gpus_per_node=opts.gpus_per_job, cpus_per_task=opts.cpus_per_job, tasks_per_node=1, nodes=1,
                         slurm_partition=opts.partition, slurm_array_parallelism=opts.parallel or n_tasks)
    return ex


def submit(params_path: str, opts: SubmitOptions, wait: bool = True, out=None, log_dir: str = "logs/submitit",
           poll_s: float = 5.0) -> tuple[int, list]:
    """Submit the array; with `wait`, follow it and collect Table 1 at the end. (exit code, jobs)."""
    out = out or sys.stderr
    say = lambda text: (out.write(text + "\n"), out.flush())  # noqa: E731
    check_params_path(params_path)
    root = Path.cwd().resolve()
    checkpoint_dir = Path(os.environ.get("DARTS_CHECKPOINT_DIR", ".checkpoints")).resolve()
    if opts.executor == "slurm" and shutil.which("sbatch") is None:
        raise ParamsError("--executor slurm: no `sbatch` on this machine; run on a Slurm login node "
                          "(or --executor local: local processes)")
    remote = default_remote(dict(os.environ))  # before submitting: every task pushes there
    tasks, parts = make_tasks(params_path, opts, root, checkpoint_dir)
    # once, here: the tasks share this clone, and a `dvc repro` of these stages in each task
    # would collide with the others' running chains (stages.study.run, setup=False)
    say(f"[submit] checking params and preparing data ({', '.join(SETUP_STAGES)}) once for every task")
    done = dvc(["repro", "--pull", *SETUP_STAGES], dict(os.environ, DVC_NO_ANALYTICS="1"))
    if done.returncode != 0:
        say(done.stdout.rstrip())
        say("[submit] nothing submitted: fix the error above")
        return 2, []
    folder = Path(log_dir).resolve()
    ex = make_executor(opts, len(tasks), folder)
    with ex.batch():
        jobs = [ex.submit(t) for t in tasks]
    say(f"[submit] {len(jobs)} task(s) on {opts.executor} ({opts.hours:g} h each, {opts.gpus_per_job} GPU(s), "
        f"{opts.cpus_per_job} CPU(s)); they push to DVC remote {remote!r}; checkpoints in {checkpoint_dir}; "
        f"submitit logs in {folder}/ (<job id>_0_log.out, .err)")
    for job, t, part in zip(jobs, tasks, parts):
        say(f"[submit]   job {job.job_id}: shard {t.shard} ({', '.join(c.name for c in part)})")
    if not wait:
        say("[submit] not waiting: once every task has finished, `darts study collect` writes Table 1")
        return 0, jobs
    return _follow(jobs, tasks, parts, params_path, say, poll_s), jobs


def _last_lines(job, n: int = 4) -> str:
    """The end of a failed task's stderr (submitit's log file), where the reason is."""
    try:
        lines = [line for line in job.paths.stderr.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in lines[-n:])


def _follow(jobs: list, tasks: list[ShardTask], parts: list, params_path: str, say, poll_s: float,
            then_collect: bool = True) -> int:
    """One line per finished task (done / running / failed / queued, elapsed, ETA), then collect.

    A task's duration runs from when it was first seen running (Slurm queues the array at
    most `--parallel` at a time), so the ETA is study.eta_seconds' estimate: the mean task so
    far times the queued ones, spread over the running slots, less what the running ones did."""
    t0, done, failed, durations = time.monotonic(), [], [], []
    pending, started = dict(enumerate(jobs)), {}
    try:
        while pending:
            time.sleep(poll_s)
            now = time.monotonic()
            for k, job in list(pending.items()):
                finished = job.done()
                if k not in started and (finished or job.state in ("RUNNING", "COMPLETING")):
                    started[k] = now
                if not finished:
                    continue
                del pending[k]
                try:
                    err = job.exception()  # None: the task returned; else why it failed
                except Exception as e:  # noqa: BLE001 (no result at all: killed, or lost by the scheduler)
                    err = e
                (failed if err else done).append(k)
                durations.append(now - started[k])
                running = [now - started[j] for j in pending if j in started]
                queued = len(pending) - len(running)
                eta = eta_seconds(durations, queued, running, max(len(running), 1))
                say(f"[submit] {len(done)}/{len(jobs)} tasks done, {len(running)} running, {len(failed)} failed, "
                    f"{queued} queued; elapsed {fmt_seconds(now - t0)}, ETA {'?' if eta is None else fmt_seconds(eta)}"
                    f" | shard {tasks[k].shard} ({', '.join(c.name for c in parts[k])}) "
                    + ("done" if not err else f"FAILED, log {job.paths.stderr}:\n{_last_lines(job)}"))
    except KeyboardInterrupt:
        say("[submit] stopped watching; the tasks keep running (Slurm) or stop at their checkpoints (local): "
            "resubmit to resume them, then `darts study collect`")
        return 130
    if failed:
        say(f"[submit] {len(failed)} task(s) failed: shard(s) {', '.join(tasks[k].shard for k in failed)}; "
            "the others pushed their chains; fix and resubmit (finished chains are up to date)")
        return 1
    if not then_collect:
        return 0
    say("[submit] every task done and pushed; collecting (darts study collect)")
    return collect(params_path)
