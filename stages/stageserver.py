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

Anything unusual falls back to the plain in-process run, with one line on stderr: no
server at the path, another interpreter or checkout, or a preloaded source file changed
since the server started (its modules would be stale). Forking is safe because the
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

#: modules the server imports once: every stage that a chain runs, and the CLI
PRELOAD = ("stages.cli", "stages.check_params", "stages.prepare_split", "stages.search", "stages.discretize",
           "stages.retrain", "stages.test")
_MAX = 1 << 20
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _here() -> str:
    return os.path.realpath(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- client

def run_via_server(path: str, argv: list[str]) -> int | None:
    """Run `python -m stages argv` in a child of the server at ``path``; its exit status,
    or None when the caller should run the command itself (reason printed on stderr)."""
    if not hasattr(socket, "send_fds"):
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
    except OSError as e:
        print(f"stage server {path!r} unreachable ({e.strerror or e}); running in this process", file=sys.stderr)
        return None
    request = {"argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": dict(os.environ),
               "python": sys.executable, "package": _here()}
    fds = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
    with conn:
        socket.send_fds(conn, [json.dumps(request).encode()], fds)
        first = json.loads(conn.recv(_MAX) or b'{"refused": "the server closed the connection"}')
        if "refused" in first:
            print(f"stage server: {first['refused']}; running in this process", file=sys.stderr)
            return None
        child = first["pid"]

        def forward(signum, frame):
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

        for sig in _FORWARDED:
            signal.signal(sig, forward)
        reply = conn.recv(_MAX)  # PEP 475: retried after each forwarded signal
    if not reply:
        print(f"stage server died while running pid {child}", file=sys.stderr)
        return 1
    final = json.loads(reply)
    if "signal" in final:  # die as the child did, so DVC sees what a plain process would give
        try:
            signal.signal(final["signal"], signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL, SIGSTOP: no handler to reset
            pass
        os.kill(os.getpid(), final["signal"])
        return 128 + final["signal"]  # a signal whose default is to be ignored
    return int(final["status"])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


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

def _sources() -> dict[str, int]:
    """mtime of every loaded module file of this checkout (darts and stages)."""
    root = os.path.dirname(_here())
    out = {}
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if f and os.path.realpath(f).startswith(root + os.sep) and f.endswith(".py"):
            try:
                out[f] = os.stat(f).st_mtime_ns
            except OSError:
                out[f] = -1
    return out


def _refusal(req: dict, fds: list[int], sources: dict[str, int]) -> str | None:
    if len(fds) != 3:
        return f"expected 3 file descriptors, got {len(fds)}"
    if req.get("python") != sys.executable:
        return f"client runs {req.get('python')}, server {sys.executable}"
    if req.get("package") != _here():
        return f"client's stages package is {req.get('package')}, the server's {_here()}"
    for f, t in sources.items():
        try:
            now = os.stat(f).st_mtime_ns
        except OSError:
            now = -1
        if now != t:
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


def serve(path: str) -> None:
    """Preload, listen on ``path`` and fork one child per request until SIGTERM/SIGINT."""
    import importlib
    import select

    for name in PRELOAD:
        importlib.import_module(name)
    sources = _sources()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the path appears only once the server can accept
    listener.listen(64)
    children: dict[int, socket.socket] = {}
    orphans: dict[int, socket.socket] = {}  # children whose client went away
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    print(f"stage server {os.getpid()} listening on {path} ({len(sources)} source files preloaded)", flush=True)
    try:
        while not stop:
            try:
                ready = select.select([listener, *children.values()], [], [], 0.1)[0]
            except InterruptedError:
                continue
            for s in ready:
                if s is listener:
                    _accept(listener, children, orphans, sources)
                else:  # readable while its child runs: the client is gone (killed with -9)
                    pid = next(p for p, c in children.items() if c is s)
                    orphans[pid] = children.pop(pid)
                    _kill(pid, signal.SIGKILL)
            _reap(children, orphans)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _accept(listener, children, orphans, sources) -> None:
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
        conn.send(json.dumps({"refused": reason}).encode())
        for fd in fds:
            os.close(fd)
        conn.close()
        print(f"refused {req.get('argv')}: {reason}", flush=True)
        return
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
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


def _reap(children: dict[int, socket.socket], orphans: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
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


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.stageserver SOCKET_PATH")
    serve(sys.argv[1])
