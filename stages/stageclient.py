"""The client half of the stage server (stages/stageserver.py): what `python -m stages` runs
to hand its command to a server. Kept apart and free of heavy imports, because every stage
process imports it before anything else.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

_MAX = 1 << 20
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def interpreter() -> str:
    """Which Python this is: the real file of the executable and the environment's prefix.
    Not sys.executable as written: `darts`'s entry-point script runs `.../bin/python3.11` where
    DVC's `python -m stages` runs `.../bin/python`, one interpreter under two names; but two
    venvs over one base interpreter share the real file and differ in sys.prefix."""
    return f"{os.path.realpath(sys.executable)} (prefix {sys.prefix})"


def _here() -> str:
    return os.path.realpath(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- client

def run_via_server(path: str, argv: list[str]) -> int | None:
    """Run `python -m stages argv` in a child of the server at ``path``; its exit status,
    or None when the caller should run the command itself (reason printed on stderr)."""
    conn = connect(path)
    if isinstance(conn, OSError):
        print(f"stage server {path!r} unreachable ({conn.strerror or conn}); running in this process", file=sys.stderr)
        return None
    out = hand_over(conn, argv)
    if isinstance(out, str):
        print(f"stage server: {out}; running in this process", file=sys.stderr)
        return None
    return out


def connect(path: str) -> socket.socket | OSError:
    """A connection to the server at ``path``, or the error (ENOENT: no server; ECONNREFUSED:
    a socket file left by a dead one), which auto mode (stages/autoserver.py) acts on."""
    if not hasattr(socket, "send_fds"):
        return OSError(0, "no fd passing on this platform")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
    except OSError as e:
        conn.close()
        return e
    return conn


def hand_over(conn: socket.socket, argv: list[str]) -> int | str:
    """Have the server run argv with our cwd, environment, sys.path and stdio: the child's exit
    status (or we die of its signal), or the server's reason for refusing."""
    umask = os.umask(0o022)
    os.umask(umask)
    request = {"argv": [sys.argv[0], *argv], "cwd": os.getcwd(), "env": dict(os.environ),
               "python": interpreter(), "package": _here(), "path": sys.path, "umask": umask,
               "nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None,
               "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    fds = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
    with conn:
        socket.send_fds(conn, [json.dumps(request).encode()], fds)
        first = json.loads(conn.recv(_MAX) or b'{"refused": "the server closed the connection"}')
        if "refused" in first:
            return str(first["refused"])
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
