"""`python -m stages …`: through a stage server when one runs (stages/stageserver.py: the
seconds of Python and torch start-up are paid once per server, not once per stage), else in
this process. ``DARTS_STAGE_SERVER``: unset or ``auto`` → the server of this checkout and
environment, started on first use (stages/autoserver.py); ``off`` → never; a socket path →
that server (`darts study run` sets it). `study …` (run, submit, collect) never goes through a
server: it runs for the whole study, starts processes and passes signals to them, and gains
nothing from a forked start (the same as `darts study …`, whose entry point never does)."""
import os
import sys

_mode = os.environ.get("DARTS_STAGE_SERVER", "").strip() or "auto"
if sys.argv[1:2] == ["study"]:
    _mode = "off"
if _mode != "off":
    if _mode == "auto":
        from .autoserver import run as _run
    else:
        from functools import partial

        from .stageclient import run_via_server

        _run = partial(run_via_server, _mode)
    _code = _run(sys.argv[1:])
    if _code is not None:
        sys.exit(_code)

from .cli import app  # noqa: E402

app()
