"""Per-stage fixed cost: what a stage pays before and after its work, fresh process vs the stage server.

    python -m benchmarks.stage_cost [--repeat 7]

Times, in alternation, `repeat` runs of each command as its own process (what DVC does),
and prints one JSON object per line with the median and the spread (min, max) in seconds:
- `python -c pass` and `python -c "import torch"`: the interpreter and torch alone;
- `check-params` (no torch in its work) and `discretize` (torch.load, Π_S, two small
  files) of a tiny run, each once as a fresh `python -m stages` and once through a stage
  server (stages/stageserver.py) started here the way `darts study run` starts it;
- `search`, `retrain` and `test` of that tiny run (1 epoch), fresh and served: their work
  is small, so the difference is the fixed cost again;
- each `python -m stages` command once more in auto mode (stages/autoserver.py: what a plain
  `dvc repro` gets), after one command that started the auto server, whose time is printed.
The server's own start-up (paid once per study) is printed too. Ratios are within one run.
`--only check-params,discretize` times those commands alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tiny(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_params

    p = tiny_params({"DARTS": {"activation": "softmax", "schedule": "alternate", "regularization": "none"}})
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def _time(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated command names to time (default: all)")
    args = ap.parse_args()
    from stages import stageserver

    st = [sys.executable, "-m", "stages"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _tiny(work)
        env = dict(os.environ, DARTS_THREADS="1", OMP_NUM_THREADS="1", DARTS_CHECKPOINT_DIR=str(work / ".ck"))
        env["DARTS_STAGE_SERVER"] = "off"  # fresh: a plain process
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # this checkout
        _time(st + ["prepare-split"], work, env)
        _time(st + ["search", "--config", "DARTS", "--out", "s"], work, env)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import torch": [sys.executable, "-c", "import torch"],
            "check-params": st + ["check-params", "--out", "ok"],
            "discretize": st + ["discretize", "--search", "s", "--out", "g"],
            "search (1 tiny epoch)": st + ["search", "--config", "DARTS", "--out", "s2"],
            "retrain (1 tiny epoch)": st + ["retrain", "--config", "DARTS", "--genotype", "g/genotype.json",
                                            "--out", "r"],
            "test": st + ["test", "--retrain", "r", "--search", "s", "--out", "m.json"],
        }
        if args.only:
            commands = {k: v for k, v in commands.items() if k in args.only.split(",")}
        runtime = tempfile.mkdtemp(prefix="dsb")  # short: a socket path has ~100 bytes
        auto = dict(env, DARTS_STAGE_SERVER="auto", XDG_RUNTIME_DIR=runtime, DARTS_STAGE_SERVER_IDLE="120")
        print(json.dumps({"what": "first command in auto mode (starts the server, runs plain)",
                          "seconds": round(_time(st + ["check-params", "--out", "first"], work, auto), 3)}))
        from stages.autoserver import place

        while not os.path.exists(place(auto).socket):  # it imports torch meanwhile
            time.sleep(0.05)
        t0 = time.perf_counter()
        os.chdir(ROOT)
        with stageserver.started(env, work / "server.log") as sock:
            started = time.perf_counter() - t0
            if not sock:
                raise SystemExit(f"no stage server: {(work / 'server.log').read_text()}")
            print(json.dumps({"what": "stage server start-up (once per study)", "seconds": round(started, 3)}))
            served = dict(env, DARTS_STAGE_SERVER=sock)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.repeat):
                for name, cmd in commands.items():
                    modes = ("fresh",) if not cmd[1:3] == ["-m", "stages"] else ("fresh", "server", "auto")
                    for mode in modes:
                        e = {"fresh": env, "server": served, "auto": auto}[mode]
                        times.setdefault((name, mode), []).append(_time(cmd, work, e))
        for (name, mode), ts in times.items():
            print(json.dumps({"what": name, "mode": mode, "median_s": round(statistics.median(ts), 3),
                              "min_s": round(min(ts), 3), "max_s": round(max(ts), 3), "n": len(ts)}))
        for name in commands:
            if (name, "server") in times:
                f, s, a = (statistics.median(times[(name, m)]) for m in ("fresh", "server", "auto"))
                print(json.dumps({"what": name, "saved_s": round(f - s, 3), "server_over_fresh": round(s / f, 3),
                                  "auto_over_fresh": round(a / f, 3)}))
        _stop_auto(Path(runtime))


def _stop_auto(runtime: Path) -> None:
    """SIGTERM to the auto server(s) this run started, then tidy."""
    import shutil

    from stages.autoserver import stop_all

    stop_all(str(runtime))
    shutil.rmtree(runtime, ignore_errors=True)


if __name__ == "__main__":
    main()
