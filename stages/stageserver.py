"""The stage server: `python -m stages …` without paying Python's and torch's start-up per stage.

Every DVC stage is a fresh process, and a fresh process that imports torch, typer and our
packages spends seconds before its first line of work: the quick study's ~100 stages paid
that again and again (benchmarks/README.md, "Per-stage fixed cost", has the figures).
`darts study run` therefore starts one server per study: a process that imports torch,
`darts` and every stage module once, and never runs a tensor operation itself. It puts
the server's socket in ``DARTS_STAGE_SERVER``; DVC passes that on to each stage command,
and `python -m stages` (stages/__main__.py) then hands its argv, working directory,
environment and stdin/stdout/stderr to the server, which forks a child that runs the
command as a fresh process would (same argv, cwd, environment, file descriptors, signal
dispositions), from the already imported modules.

The client stays alive for DVC: it forwards SIGINT, SIGTERM and SIGHUP to the child (the
stage checkpoints on them as usual) and exits with the child's status, or dies of the
child's signal. A client that vanishes without a word (kill -9) takes its child with it:
the server sends the child SIGKILL, so `kill -9` means what it means for a plain stage.

A plain `dvc repro` or a hand-typed `python -m stages` uses a server too: auto mode
(stages/autoserver.py) starts one per checkout and environment on first use, which exits
when idle. Anything unusual falls back to the plain in-process run, with one line on stderr: no
server at the path, another interpreter or checkout, or a loaded module file (ours, torch's, …)
changed since the server started (its modules would be stale). Forking is safe because the
server has started no threads and no CUDA context (the child initialises CUDA lazily,
after it has taken the client's environment, so ``CUDA_VISIBLE_DEVICES`` still works).
POSIX only (fork, SOCK_SEQPACKET, fd passing); elsewhere the client always falls back.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .stageclient import _FORWARDED, _MAX, _here, interpreter

#: modules the server imports once: every stage that a chain runs, and the CLI
PRELOAD = ("stages.cli", "stages.check_params", "stages.prepare_split", "stages.search", "stages.discretize",
           "stages.retrain", "stages.test",
           "dvclive", "dvc.repo",  # what the live log (stages/livelog.py) imports in every search and retrain
           # what torch imports lazily when a stage builds its first optimizer (torch.optim's
           # Optimizer.__init__): over a second per search and retrain stage otherwise
           "torch._dynamo")
# --------------------------------------------------------------------------- lifecycle

@contextmanager
def started(env: dict, log: Path, timeout: float = 180.0) -> Iterator[str | None]:
    """A server for the duration of a `with` block (one study): its socket path, or None
    when none could start (the reason is in ``log``; the stages then run as plain processes).
    ``env`` should be the jobs' environment: what the server's imports read from it
    (OMP_NUM_THREADS, for one) is then what a fresh stage process would have read."""
    if not (hasattr(socket, "send_fds") and hasattr(os, "fork")):
        yield None
        return
    folder = tempfile.mkdtemp(prefix="darts-stages-")  # short: a socket path has ~100 bytes
    path = os.path.join(folder, "sock")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stages.stageserver", path], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while not os.path.exists(path) and proc.poll() is None and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        yield path if os.path.exists(path) else None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- server

def _stamp(f: str) -> tuple[int, int, int]:
    """What changes when a file is edited or replaced (a reinstall may keep the mtime, not the
    inode or the ctime): the server's modules are stale once any loaded file's stamp differs."""
    try:
        st = os.stat(f)
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _sources() -> dict[str, tuple[int, int, int]]:
    """The stamp of every loaded module's file: darts and stages, and torch, numpy, … too, so
    that a `pip install -U torch` is caught as well as an edit (measured: ~8 ms a request for
    the ~1200 files after the preload, on a loaded 2-core machine; a stage's start-up is seconds)."""
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if isinstance(f, str) and f not in out:
            out[f] = _stamp(f)
    return out


def _refusal(req: dict, fds: list[int], sources: dict[str, tuple[int, int, int]]) -> str | None:
    if len(fds) != 3:
        return f"expected 3 file descriptors, got {len(fds)}"
    if req.get("python") != interpreter():
        return f"client runs {req.get('python')}, server {interpreter()}"
    if req.get("package") != _here():
        return f"client's stages package is {req.get('package')}, the server's {_here()}"
    for f, t in sources.items():
        if _stamp(f) != t:
            return f"{f} changed since the server started"
    return None


def _child(req: dict, fds: list[int], inherited: list[socket.socket]) -> None:
    """In the forked child: become the client's process, run the command, exit."""
    code = 70
    try:
        for s in inherited:
            s.close()
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        _take_process_settings(req)
        os.environ.clear()
        os.environ.update(req["env"])
        for sig in _FORWARDED + (signal.SIGCHLD,):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = os.fdopen(0, "r", closefd=False)
        sys.stdout = os.fdopen(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        if unbuffered:
            sys.stdout.reconfigure(write_through=True)
        sys.argv = list(req["argv"])
        sys.path[:] = req.get("path", sys.path)  # what the fresh process would search (its cwd first)
        from stages.cli import app

        try:
            app()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
    except BaseException:  # noqa: BLE001 - report like an uncaught exception would, then exit
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _take_process_settings(req: dict) -> None:
    """The client's umask, niceness and CPU set (`nice dvc repro`, `taskset`), which a fork would
    otherwise take from the server; a niceness we may not lower stays the server's."""
    if req.get("umask") is not None:
        os.umask(req["umask"])
    if req.get("nice") is not None and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, req["nice"])
        except OSError:
            pass
    if req.get("cpus") and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, req["cpus"])
        except OSError:
            pass


def serve(path: str, idle: float | None = None, lock_fd: int | None = None) -> None:
    """Preload, listen on ``path`` and fork one child per request until SIGTERM/SIGINT.

    An auto-started server (stages/autoserver.py) has ``idle`` (seconds) and holds the lock
    ``lock_fd`` while it listens: it stops listening after ``idle`` seconds with no child and
    no request, or at once after refusing a request for a changed source file (the next client
    starts a fresh one), and exits when its last child has. It removes its socket and releases
    the lock before it answers that refusal, so the refused client can start the next server."""
    import importlib
    import select

    for name in PRELOAD:
        importlib.import_module(name)
    sources = _sources()
    listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        os.unlink(path + ".tmp")  # left by a server killed while binding (auto mode: we hold the lock)
    except OSError:
        pass
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears only once the server can accept
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    orphans: dict[int, socket.socket] = {}  # children whose client went away
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    print(f"stage server {os.getpid()} listening on {path} ({len(sources)} module files watched"
          f"{f', exits after {idle:g} s idle' if idle is not None else ''})", flush=True)

    def stop_listening(why: str) -> None:
        nonlocal listener, lock_fd
        if listener is None:
            return
        try:
            os.unlink(path)
        except OSError:
            pass
        listener.close()
        listener = None
        if lock_fd is not None:
            os.close(lock_fd)  # releases the lock: the next client may start a server
            lock_fd = None
        print(f"stopped listening: {why}", flush=True)

    last = time.monotonic()
    try:
        while not stop and (listener is not None or children or orphans):
            waits = ([listener] if listener is not None else []) + list(children.values())
            try:
                ready = select.select(waits, [], [], 0.1)[0]
            except InterruptedError:
                continue
            for s in ready:
                if s is listener:
                    last = time.monotonic()
                    _accept(listener, children, orphans, sources, [] if lock_fd is None else [lock_fd],
                            (lambda: stop_listening("a module file changed")) if idle is not None else None)
                elif s in children.values():  # readable while its child runs: the client is gone (kill -9)
                    pid = next(p for p, c in children.items() if c is s)
                    orphans[pid] = children.pop(pid)
                    _kill(pid, signal.SIGKILL)
            if _reap(children, orphans):
                last = time.monotonic()
            if idle is not None and not children and not orphans and time.monotonic() - last > idle:
                stop_listening(f"idle for {idle:g} s")
    finally:
        stop_listening("stopped by a signal" if stop else "done")
    print("exiting", flush=True)


def _accept(listener, children, orphans, sources, private_fds: list[int], before_stale_refusal=None) -> None:
    """Take one request: fork its child (which closes ``private_fds``: a stage must not hold
    the server's lock), or refuse it, calling ``before_stale_refusal`` first if a file changed."""
    conn, _ = listener.accept()
    try:
        msg, fds, _, _ = socket.recv_fds(conn, _MAX, 3)
        req = json.loads(msg)
    except (OSError, ValueError) as e:
        conn.close()
        print(f"bad request ({e})", flush=True)
        return
    reason = _refusal(req, fds, sources)
    if reason:
        stale = reason.endswith("changed since the server started")
        if stale and before_stale_refusal:
            before_stale_refusal()
        try:
            conn.send(json.dumps({"refused": reason}).encode())
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        conn.close()
        print(f"refused {req.get('argv')}: {reason}", flush=True)
        return
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        for fd in private_fds:
            os.close(fd)
        _child(req, fds, [listener, conn, *children.values(), *orphans.values()])
    for fd in fds:
        os.close(fd)
    children[pid] = conn
    print(f"pid {pid}: {' '.join(req['argv'][1:])}", flush=True)
    conn.send(json.dumps({"pid": pid}).encode())


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(children: dict[int, socket.socket], orphans: dict[int, socket.socket]) -> bool:
    """Pass back the status of every child that ended; whether any did."""
    reaped = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped = True
        conn = children.pop(pid, None) or orphans.pop(pid, None)
        if conn is None:
            continue
        reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                 else {"status": os.waitstatus_to_exitcode(status)})
        try:
            conn.send(json.dumps(reply).encode())
        except OSError:
            pass
        conn.close()


def main(args: list[str]) -> None:
    """`python -m stages.stageserver SOCKET [--idle SECONDS --lock-fd FD]` serves (the last
    two from auto mode); `python -m stages.stageserver --where` says where auto mode's server
    for this environment lives and whether it answers."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m stages.stageserver", description=main.__doc__)
    ap.add_argument("socket", nargs="?")
    ap.add_argument("--idle", type=float)
    ap.add_argument("--lock-fd", type=int)
    ap.add_argument("--where", action="store_true")
    a = ap.parse_args(args)
    if a.where:
        from .autoserver import describe

        print(describe(os.environ))
    elif a.socket:
        serve(a.socket, a.idle, a.lock_fd)
    else:
        ap.error("SOCKET or --where")


if __name__ == "__main__":
    main(sys.argv[1:])
