"""Auto mode of the stage server: a plain `dvc repro` (or any `python -m stages …` typed by
hand) reuses one server too, without `darts study run` having started it.

``DARTS_STAGE_SERVER`` decides (stages/__main__.py): unset or ``auto`` → this module; ``off``
→ always the plain process; a socket path → that server (what `darts study run` sets).

In auto mode the socket's name is a hash of what a forked child would otherwise inherit
wrongly: the user, the interpreter, the checkout (the stages package's real path) and the
environment variables that modules read when they are imported (threads, libraries, the
checkpoint folder); not ``CUDA_VISIBLE_DEVICES`` or the ``DARTS_*`` settings that each
command reads itself. So another checkout, venv or thread setting gets a server of its own,
and a server is never asked to run code it did not import. The socket, its log and a lock
sit in a folder only the user can enter, under ``$XDG_RUNTIME_DIR`` or the temp folder.

A client that finds no server starts one, detached, under the lock (a live server holds it
for as long as it listens, so two racing clients start one), and runs its own command in
this process at once: the next stage finds the server ready. The server exits after
``DARTS_STAGE_SERVER_IDLE`` seconds (default 120) without work, and after refusing a
request because a loaded module file changed (the refused client starts the next one).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from typing import Mapping, NamedTuple

from .stageclient import _here, connect, hand_over, interpreter

#: variables read while modules are imported (the server imports once, with the first
#: client's environment): a client whose values differ needs another server
IMPORT_TIME_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "TORCH", "PYTORCH", "LD_")
IMPORT_TIME_NAMES = ("DARTS_CHECKPOINT_DIR", "SUBMITIT_PREEMPT_SIGNAL")  # stages.common, stages.submit
IDLE_DEFAULT = 120.0
_MAX_SOCKET = 100  # sun_path has 108 bytes on Linux, 104 on macOS


class Place(NamedTuple):
    """Where auto mode's server for one environment lives."""
    socket: str
    log: str
    lock: str


def mode(env: Mapping[str, str]) -> str:
    """``off``, ``auto`` or a socket path, from ``DARTS_STAGE_SERVER``."""
    value = env.get("DARTS_STAGE_SERVER", "").strip()
    return "auto" if value in ("", "auto") else value


def fingerprint(env: Mapping[str, str]) -> str:
    """A short hash of the user, interpreter, checkout and import-time environment."""
    picked = sorted((k, v) for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) or k in IMPORT_TIME_NAMES)
    blob = json.dumps([os.getuid(), interpreter(), _here(), picked])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _private_folder(base: str) -> str | None:
    """``base``/darts-stages-UID, made 0700; None unless it is a real folder of ours that no one
    else can enter (in a shared /tmp another user could have made it first)."""
    folder = os.path.join(base, f"darts-stages-{os.getuid()}")
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return folder


def place(env: Mapping[str, str]) -> Place | None:
    """The socket, log and lock paths for this environment, or None (no usable folder)."""
    name = fingerprint(env)
    bases = [env.get("XDG_RUNTIME_DIR", ""), env.get("TMPDIR") or tempfile.gettempdir(), "/tmp"]
    for base in bases:
        if not base or not os.path.isdir(base):
            continue
        if len(os.fsencode(os.path.join(base, f"darts-stages-{os.getuid()}", name + ".sock.tmp"))) > _MAX_SOCKET:
            continue
        folder = _private_folder(base)
        if folder:
            stem = os.path.join(folder, name)
            return Place(stem + ".sock", stem + ".log", stem + ".lock")
    return None


def _idle(env: Mapping[str, str]) -> float:
    try:
        return max(0.1, float(env.get("DARTS_STAGE_SERVER_IDLE", IDLE_DEFAULT)))
    except ValueError:
        return IDLE_DEFAULT


def start(where: Place, env: Mapping[str, str]) -> bool:
    """Start a detached server at ``where`` unless one lives or is starting (it holds the lock);
    whether this call started it. Its imports see ``env``; its cwd is the checkout's root,
    so ``-m stages.stageserver`` imports this very package."""
    lock = os.open(where.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        try:
            os.unlink(where.socket)  # a dead server's socket file (its lock is free, so it is dead)
        except FileNotFoundError:
            pass
        if os.path.exists(where.log) and os.path.getsize(where.log) > 1 << 20:
            os.unlink(where.log)
        with open(where.log, "a") as log:
            subprocess.Popen([sys.executable, "-m", "stages.stageserver", where.socket, "--idle", str(_idle(env)),
                              "--lock-fd", str(lock)], cwd=os.path.dirname(_here()), env=dict(env),
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock,),
                             start_new_session=True)
        return True
    finally:
        os.close(lock)  # the server's copy keeps the lock


def run(argv: list[str]) -> int | None:
    """Auto mode's client: the command's exit status from the server, or None when this process
    should run it itself (no server yet: one is started for the next commands)."""
    if not (hasattr(os, "fork") and hasattr(os, "getuid")):
        return None
    try:  # nothing has run yet: any trouble here means the plain run
        where = place(os.environ)
        if where is None:
            return None
        conn = connect(where.socket)
        if isinstance(conn, OSError):
            if conn.errno in (errno.ENOENT, errno.ECONNREFUSED) and start(where, os.environ):
                print(f"stage server: starting one for the next commands (log {where.log})", file=sys.stderr)
            return None  # no line when another client is starting it: that is no news
    except OSError as e:
        print(f"stage server: none ({e}); running in this process", file=sys.stderr)
        return None
    out = hand_over(conn, argv)
    if isinstance(out, str):
        try:
            fresh = start(where, os.environ)  # a stale server has stopped listening: replace it
        except OSError:
            fresh = False
        print(f"stage server: {out}; running in this process"
              f"{', a fresh server starts for the next commands' if fresh else ''}", file=sys.stderr)
        return None
    return out


def describe(env: Mapping[str, str]) -> str:
    """For `python -m stages.stageserver --where`: the paths, and whether a server answers."""
    where = place(env)
    if mode(env) != "auto":
        return f"DARTS_STAGE_SERVER={mode(env)}: auto mode is not in use"
    if where is None:
        return "no private folder for a socket: auto mode runs every command as a plain process"
    alive = _held(where.lock)
    pid = ""
    if alive and os.path.exists(where.log):
        starts = [ln for ln in open(where.log, errors="replace") if ln.startswith("stage server ")]
        pid = f" (pid {starts[-1].split()[2]}: `kill PID` stops it)" if starts else ""
    return (f"socket {where.socket}: {'a server listens' + pid if alive else 'no server'}\n"
            f"log    {where.log}")


def _held(lock_path: str) -> bool:
    """Whether a server holds the lock (it does while it starts and listens)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def stop_all(folder: str) -> int:
    """SIGTERM every auto server whose log lies under ``folder`` (a runtime folder that a
    benchmark or a test made for itself); how many were signalled. Each log names its
    server's pid on the line it writes at start."""
    import signal

    sent = 0
    for root, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".log"):
                continue
            for line in open(os.path.join(root, name), errors="replace"):
                if line.startswith("stage server "):
                    try:
                        os.kill(int(line.split()[2]), signal.SIGTERM)
                        sent += 1
                    except (ProcessLookupError, ValueError):
                        pass
    return sent
