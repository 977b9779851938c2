"""`darts clean`: list the run checkpoints and remove those no command can resume any more.

A search or retrain keeps ``<root>/<stage>-<key>/state.pt`` (18-31 MB at paper size)
until it finishes; ``key`` hashes everything that determines the run (params, code,
prepared data, genotype), so a run whose inputs changed starts afresh under a new key
and its old checkpoint is never read again. Runs also leave ``<root>/locks/*.lock``.
``<root>`` is DARTS_CHECKPOINT_DIR (default ``.checkpoints``).

The rule (default), for each checkpoint:

* held by a running process (its lock is taken): kept, always;
* resumable: the command that wrote it (its arguments are in ``command.json``) would
  compute the same key today: kept, however old. This is what a user who pressed
  Ctrl-C expects: running the same command (or ``dvc repro``) resumes from it;
* stale: that command would now compute another key (params.yaml, darts/ code,
  prepared data or genotype changed): removed;
* undecidable (no ``command.json``, i.e. written before clean existed, or the key
  cannot be recomputed: params file, prepared data or genotype gone, config no longer
  in params.yaml): kept if it is the newest checkpoint of its stage for its output
  folder, removed if a newer one exists (only the newest can be the one in use);
* empty (no ``state.pt``: stopped before its first save) and older than a minute: removed.

Lock files no process holds are removed (each taken, then unlinked while held).
``--all`` removes every checkpoint no process holds; ``--dry-run`` removes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from darts.loops import checkpoint as ckpt

from . import common
from .params import ParamsError
from .runguard import lock_held, remove_if_unheld

STAGES = ("search", "retrain")
EMPTY_GRACE_S = 60.0  # a starting run creates its folder a moment before it takes the lock


@dataclass
class Entry:
    """One checkpoint folder and what clean decided for it."""

    folder: Path
    stage: str
    key: str
    owner: str | None
    size: int
    saved: float | None  # mtime of state.pt; None: no state saved
    held: bool
    remove: bool = False
    reason: str = ""


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def scan(root: Path) -> list[Entry]:
    """Every ``<stage>-<key>`` folder under ``root`` (other names are left alone)."""
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        stage, _, key = folder.name.partition("-")
        if stage not in STAGES or not key:
            continue
        state = folder / "state.pt"
        entries.append(Entry(folder, stage, key, _read(folder / "owner.txt"), _size(folder),
                             state.stat().st_mtime if state.is_file() else None, lock_held(folder / "lock")))
    return entries


def _digest_cache():
    """``file_digest`` memoised per (path, size, mtime): 36 runs share one 150 MB train.pt."""

    @lru_cache(maxsize=None)
    def cached(path: str, size: int, mtime_ns: int) -> str:
        return ckpt.file_digest(path)

    def digest(path: Path) -> str:
        st = os.stat(path)
        return cached(str(path), st.st_size, st.st_mtime_ns)

    return digest


def current_key(entry: Entry, digest) -> tuple[str | None, str]:
    """(the key the recorded command would use now, or None; why not)."""
    text = _read(entry.folder / "command.json")
    if text is None:
        return None, "no command.json (written by an older version)"
    from darts.data import DataError
    from darts.space.primitives import GenotypeError

    from . import retrain, search

    module = search if entry.stage == "search" else retrain
    try:
        if entry.owner is None:
            return None, "no owner.txt"
        return common.owned_key(module.checkpoint_key(json.loads(text), digest), entry.owner), ""
    except (ParamsError, DataError, GenotypeError, OSError, ValueError, KeyError, TypeError) as e:
        return None, (str(e).splitlines() or [type(e).__name__])[0]


def decide(entries: list[Entry], everything: bool, now: float) -> None:
    """Set ``remove`` and ``reason`` of each entry by the rule in the module doc."""
    digest = _digest_cache()
    newest: dict[tuple[str, str | None], float] = {}
    for e in entries:
        if e.saved is not None:
            k = (e.stage, e.owner)
            newest[k] = max(newest.get(k, e.saved), e.saved)
    for e in entries:
        if e.held:
            e.reason = f"held by a running process (pid {(_read(e.folder / 'lock') or '?').strip() or '?'})"
        elif everything:
            e.remove, e.reason = True, "--all"
        elif e.saved is None:
            made = max(f.stat().st_mtime for f in (e.folder, *e.folder.glob("*.txt")))  # owner.txt: (re)started
            if now - made < EMPTY_GRACE_S:
                e.reason = "no state saved yet (a run may be starting)"
            else:
                e.remove, e.reason = True, "no state saved (stopped before its first checkpoint)"
        else:
            key, why = current_key(e, digest)
            if key == e.key:
                e.reason = "resumable: the same command would resume from it"
            elif key is not None:
                e.remove, e.reason = True, f"stale: the same command now uses key {key} (inputs or code changed)"
            elif e.saved < newest[(e.stage, e.owner)]:
                e.remove, e.reason = True, f"superseded by a newer checkpoint for its folder; key unknown: {why}"
            else:
                e.reason = f"newest for its folder; key unknown: {why}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(max(seconds, 0))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _shown(owner: str | None) -> str:
    if owner is None:
        return "?"
    try:
        rel = os.path.relpath(owner)
    except ValueError:
        return owner
    return owner if rel.startswith("..") else rel


def _unheld_locks(root: Path) -> list[Path]:
    locks = root / "locks"
    return sorted(p for p in locks.glob("*.lock") if not lock_held(p)) if locks.is_dir() else []


def run(everything: bool = False, dry_run: bool = False, root: Path | None = None, echo=print) -> dict:
    """List the checkpoints under ``root`` (default DARTS_CHECKPOINT_DIR) and remove the stale
    ones and unheld lock files (see the module doc); returns counts for tests and callers."""
    root = Path(common.CHECKPOINT_ROOT if root is None else root)
    if root.exists() and not root.is_dir():
        raise ParamsError(f"checkpoint folder {root} (DARTS_CHECKPOINT_DIR) is not a folder; "
                          "valid: a folder path, or unset for .checkpoints")
    entries = scan(root) if root.is_dir() else []
    now = time.time()
    decide(entries, everything, now)
    echo(f"{root}: {len(entries)} checkpoint(s), {_mb(sum(e.size for e in entries))}")
    if entries:
        echo(f"{'stage':8} {'key':16}  {'size':>8}  {'age':>6}  {'lock':4}  {'owner folder':32}  action")
    for e in entries:
        echo(f"{e.stage:8} {e.key:16}  {_mb(e.size):>8}  {_age(None if e.saved is None else now - e.saved):>6}  "
             f"{'held' if e.held else 'free':4}  {_shown(e.owner):32}  "
             f"{'remove' if e.remove else 'keep'}: {e.reason}")
    removed, freed, skipped = [], 0, []
    for e in (e for e in entries if e.remove):
        if dry_run:
            removed.append(e.folder)
            freed += e.size
        elif remove_if_unheld(e.folder / "lock", also=lambda f=e.folder: shutil.rmtree(f, ignore_errors=True)):
            removed.append(e.folder)
            freed += e.size
        else:  # a run took it between the listing and now
            skipped.append(e.folder)
    locks = _unheld_locks(root)
    if not dry_run:
        locks = [p for p in locks if remove_if_unheld(p)]
    verb = "would remove" if dry_run else "removed"
    echo(f"{verb} {len(removed)} checkpoint(s) ({_mb(freed)}) and {len(locks)} unused lock file(s)"
         + (f"; kept {len(skipped)} that a run took meanwhile" if skipped else "")
         + ("; --dry-run: nothing removed" if dry_run else ""))
    return {"checkpoints": len(entries), "removed": [str(p) for p in removed], "locks_removed": len(locks),
            "freed_bytes": freed, "kept": [str(e.folder) for e in entries if not e.remove]}
