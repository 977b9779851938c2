"""Several machines sharing a DVC remote: `darts study run --shard I/N` and `darts study collect`.

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

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .chains import (RESTORE_ONLY_ENV, SETUP_STAGES, Board, Chain, check_params_path, dvc, final_repro, printer,
                     stale_stages, study_chains, tail)
from .params import ParamsError, load_params
from .progress import _fmt_seconds as fmt_seconds


class RemoteError(ParamsError):
    """No usable DVC remote for `--shard` / `collect`: a setup error, reported like a bad
    parameter (one line, exit 2) before any run starts, not after hours of compute."""


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


def push(board: Board, chains: list[Chain], part: tuple[int, int], remote: str, env: dict, logs: Path,
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
        pushed = dvc(["push", "--run-cache", *targets], env, log=log)
    if pushed.returncode != 0:
        say(f"[study] {tag}: `dvc push` failed (exit {pushed.returncode}), log {push_log}:\n" + tail(push_log, 6)
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
    say = printer(out)
    t0 = time.monotonic()
    check_params_path(params_path)
    chains = study_chains(load_params(params_path))
    env = dict(os.environ, DVC_NO_ANALYTICS="1", **{RESTORE_ONLY_ENV: "1"})
    remote = default_remote(env)
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)

    say(f"[study] collecting {len(chains)} chains from DVC remote {remote!r}; no search, discretize, retrain "
        f"or test runs here ({RESTORE_ONLY_ENV}=1)")
    collect_log = logs / "collect.log"
    with open(collect_log, "w") as log:
        setup = dvc(["repro", "--pull", *SETUP_STAGES], env, log=log)
    if setup.returncode != 0:
        say(tail(collect_log, 6))
        say(f"[study] stopped before restoring any run: fix the error above (log {collect_log})")
        return 2
    stale = stale_stages(env)
    if stale is None:
        say("[study] `dvc status` failed: run it to see why")
        return 2
    todo = [c for c in chains if stale.intersection(c.stages)]
    if todo:
        with open(collect_log, "a") as log:
            dvc(["repro", "--pull", "--keep-going", *(st for c in todo for st in c.stages)], env, log=log)
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
    return final_repro(env, logs, say, t0)
