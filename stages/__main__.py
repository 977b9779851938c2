"""`python -m stages …`: through the study's stage server when one runs (stages/stageserver.py:
the seconds of Python and torch start-up are paid once per study, not once per stage),
else in this process."""
import os
import sys

if os.environ.get("DARTS_STAGE_SERVER"):
    from .stageserver import run_via_server

    _code = run_via_server(os.environ["DARTS_STAGE_SERVER"], sys.argv[1:])
    if _code is not None:
        sys.exit(_code)

from .cli import app  # noqa: E402

app()
