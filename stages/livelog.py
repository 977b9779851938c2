"""Live metrics of a search or retrain with DVCLive, the logger made for DVC: what a multi-day
run has done so far shows in `dvc exp show` and `dvc plots` while it is going.

Why DVCLive rather than our own writer: its layout (``metrics.json`` with the latest values,
``plots/metrics/<name>.tsv`` with one ``step``-indexed row per logged value) is the one DVC's
commands, Studio and the VS Code extension read. The stage declares both as its outputs
(study/search/dvc.yaml and study/retrain/dvc.yaml for the study's runs, dvc.yaml for the
variant chain), cached like the others so they travel with the run-cache.

x axis: the run's global optimiser step (w steps in a search). Rows: every epoch's curve
(the values of epochs.tsv) at the step that ended it, and on long epochs the running mean of
the epoch's training loss (``train_loss_running``) every ``DARTS_LIVE_EVERY`` steps
(default 100; a setting of the machine, not a param: it changes no result).

Resume without gaps or duplicates: the logged rows travel in the run's checkpoint
(``rows()``), and a resumed stage starts a clean log and replays them (``LiveLog(rows=...)``)
before going on. DVC wipes a stage's outputs before it reruns it, and rows logged after the
last checkpoint by a killed process are logged again by the rerun, exactly once.

DVCLive looks for the DVC project (and, in a Git repository without one, runs `dvc init`
there), so a log is only opened inside a DVC project: ``--live`` elsewhere stops with one line.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from .params import ParamsError

DEFAULT_EVERY = 100
Row = tuple[int, dict[str, float]]


def live_every() -> int:
    """Steps between running-loss rows, from DARTS_LIVE_EVERY (validated, one line)."""
    raw = os.environ.get("DARTS_LIVE_EVERY", "").strip()
    if not raw:
        return DEFAULT_EVERY
    if not raw.isdigit() or int(raw) < 1:
        raise ParamsError(f"DARTS_LIVE_EVERY={raw!r} is invalid; must be a positive integer (steps between rows)")
    return int(raw)


def _inside_dvc_project(path: Path) -> bool:
    return any((p / ".dvc").is_dir() for p in (path, *path.parents))


def check_live(directory: str | Path | None) -> None:
    """Fail in one line, before any work, on a bad DARTS_LIVE_EVERY or a ``--live`` outside a
    DVC project."""
    if directory is None:
        return
    live_every()
    if not _inside_dvc_project(Path.cwd().resolve()):
        raise ParamsError(f"--live {directory}: live metrics need a DVC project (no .dvc/ in {Path.cwd()} or "
                          "above); run inside one, or leave --live out")


class LiveLog:
    """Step-indexed metrics of one run in ``directory`` (None: log nothing)."""

    every: int = DEFAULT_EVERY  # steps between running-loss rows: set from DARTS_LIVE_EVERY when logging

    def __init__(self, directory: str | Path | None, rows: list[Row] | None = None, every: int | None = None):
        self._rows: list[Row] = []
        self._live = None
        if directory is None:
            return
        check_live(directory)
        self.every = live_every() if every is None else every
        logging.getLogger("dvclive").setLevel(logging.WARNING)  # its "Logging to experiment" line per stage
        from dvclive import Live

        self._live = Live(str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=None)
        for step, values in rows or []:
            self.log(step, values)

    def log(self, step: int, values: dict[str, object]) -> None:
        """Log the finite numbers of ``values`` at ``step`` (None, NaN and text are left out)."""
        if self._live is None:
            return
        clean = {k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if not clean:
            return
        self._live.step = int(step)
        for name, value in clean.items():
            self._live.log_metric(name, value)
        self._live.make_summary()
        self._rows.append((int(step), clean))

    def due(self, step: int) -> bool:
        """Whether a running-loss row is due at ``step`` (the caller pays the host sync only then)."""
        return self._live is not None and step % self.every == 0

    def rows(self) -> list[Row]:
        """Every row logged so far, for the checkpoint."""
        return list(self._rows)
