"""The `darts` command: one subcommand per DVC stage (thin wrappers over `stages.*`).

Every subcommand validates its inputs before any work and turns bad input into a
one-line error on stderr with exit code 2; nothing half-written is left as a result.
"""
from __future__ import annotations

import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Constrained differentiable NAS (CRB, FIMT, PR, ADMM on DARTS): pipeline stages.")

PARAMS = typer.Option("params.yaml", "--params", help="params file")
CONFIG = typer.Option(None, "--config", help="study config name (a key of params.configs); omit for the variant run")
SEED = typer.Option(None, "--seed", help="seed (default: params.seed for the variant run, 0 otherwise)")
PREPARED = typer.Option("data/prepared", "--prepared", help="folder written by prepare-split")
DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: $DARTS_DEVICE, else auto); "
                      "a machine setting, not a param")
THREADS = typer.Option(None, "--threads", help="CPU threads, 0 = all cores (default: $DARTS_THREADS, else 1)")
LIVE = typer.Option(None, "--live", help="folder for live metrics with DVCLive (metrics.json, plots/metrics/*.tsv), "
                    "updated every epoch and every $DARTS_LIVE_EVERY steps (default 100); inside a DVC project")


def _guard(fn, *args, **kwargs):
    from darts.data import DataError
    from darts.loops.search import NonFiniteError
    from darts.space.primitives import GenotypeError
    from darts.space.projection import ProjectionError

    from .params import ParamsError
    from .runguard import Interrupted

    try:
        return fn(*args, **kwargs)
    except (ParamsError, DataError, GenotypeError, ProjectionError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except Interrupted:
        raise typer.Exit(130)
    except NonFiniteError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3)


@app.command("check-params")
def check_params(params: str = PARAMS, out: str = typer.Option("data/params.ok", "--out")) -> None:
    """Validate every value of params.yaml (the first DVC stage: a typo costs nothing)."""
    from . import check_params as stage

    n = _guard(stage.run, params, out)
    typer.echo(f"params.yaml is valid ({n} runs: the study's configs × seeds and the variant run)")


@app.command("prepare-split")
def prepare_split(params: str = PARAMS, out: str = typer.Option("data/prepared", "--out")) -> None:
    """Materialise the train/test sets (uint8 tensors) from params.data."""
    from darts.data import size_text

    from . import prepare_split as stage

    def _fmt(values: list[float]) -> str:
        return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"

    meta = _guard(stage.run, params, out)
    typer.echo(f"prepared {meta['dataset']}: {meta['train']} train / {meta['test']} test images "
               f"at {size_text(meta['image_size'])}px, {meta['channels']} channel(s), mean {_fmt(meta['mean'])} "
               f"std {_fmt(meta['std'])} ({meta['normalize']}) in {out}")


@app.command()
def search(out: str = typer.Option(..., "--out", help="output folder"), config: Optional[str] = CONFIG,
           seed: Optional[int] = SEED, params: str = PARAMS, prepared: str = PREPARED,
           device: Optional[str] = DEVICE, threads: Optional[int] = THREADS, live: Optional[str] = LIVE) -> None:
    """Run (or resume) the bilevel architecture search of one run."""
    from . import search as stage

    _guard(stage.run, params, config, seed, prepared, out, device=device, threads=threads, live=live)


@app.command()
def discretize(search_dir: str = typer.Option(..., "--search", help="search output folder"),
               out: str = typer.Option(..., "--out", help="folder for genotype.json, genotype.txt, genotype_ptdarts.txt")) -> None:
    """Project the final α onto S: write genotype.json and both text forms (DARTS flat, pt.darts nested)."""
    from . import discretize as stage

    g = _guard(stage.run, search_dir, out)
    typer.echo(f"genotype: normal {g['normal']} reduce {g['reduce']}")


@app.command()
def retrain(genotype: str = typer.Option(..., "--genotype", help="genotype.json, genotype.txt / "
                                          "genotype_ptdarts.txt (Genotype(...) text, flat or nested), that text "
                                          "inline, or a published name (DARTS_V1, DARTS_V2, PC_DARTS, PDARTS)"),
            out: str = typer.Option(..., "--out"), config: Optional[str] = CONFIG, seed: Optional[int] = SEED,
            params: str = PARAMS, prepared: str = PREPARED, device: Optional[str] = DEVICE,
            threads: Optional[int] = THREADS, live: Optional[str] = LIVE) -> None:
    """Train the evaluation network of a genotype from scratch (resumable)."""
    from . import retrain as stage

    _guard(stage.run, params, config, seed, genotype, prepared, out, device=device, threads=threads, live=live)


@app.command()
def test(retrain_dir: str = typer.Option(..., "--retrain", help="retrain output folder"),
         search_dir: Optional[str] = typer.Option(None, "--search", help="search output folder of the same run; "
                                                  "omit for a genotype that was not searched (search fields null)"),
         out: str = typer.Option(..., "--out", help="metrics json to write"), prepared: str = PREPARED,
         device: Optional[str] = DEVICE, threads: Optional[int] = THREADS) -> None:
    """Test error of the retrained network; writes the run's metrics file."""
    from . import test as stage

    m = _guard(stage.run, retrain_dir, search_dir, prepared, out, device=device, threads=threads)
    typer.echo(f"{m['label']} seed {m['seed']}: test error {m['test_error']:.2f}% params {m['params_m']:.3f}M")


@app.command()
def aggregate(params: str = PARAMS, metrics: str = typer.Option("metrics", "--metrics"),
              out: str = typer.Option("reports", "--out")) -> None:
    """Table 1 (md/csv/tex) over exactly params' configs × seeds."""
    from . import aggregate as stage

    _guard(stage.run, params, metrics, out)
    typer.echo(f"wrote {out}/table1.md, table1.csv, table1.tex")


@app.command()
def figures(params: str = PARAMS, metrics: str = typer.Option("metrics", "--metrics"),
            runs: str = typer.Option("runs", "--runs", help="folder with <config>/<seed>/{search,genotype,retrain}"),
            out: str = typer.Option("reports/figures", "--out")) -> None:
    """The paper's figures (PNG + PDF) over exactly params' configs × seeds."""
    from . import figures as stage

    written = _guard(stage.run, params, metrics, runs, out)
    typer.echo(f"wrote {len(written)} files to {out} (see {out}/index.md)")


@app.command()
def claims(params: str = PARAMS, metrics: str = typer.Option("metrics", "--metrics"),
           runs: str = typer.Option("runs", "--runs", help="folder with <config>/<seed>/search/history.pt"),
           out: str = typer.Option("reports", "--out")) -> None:
    """The paper's claims (a)-(d) tested on this study: claims.md and claims.csv."""
    from . import claims as stage

    table = _guard(stage.run, params, metrics, runs, out)
    typer.echo(f"wrote {out}/claims.md ({len(table)} comparisons)")


@app.command("variant-figures")
def variant_figures(search_dir: str = typer.Option("current/search", "--search"),
                    genotype: str = typer.Option("current/genotype/genotype.json", "--genotype"),
                    retrain_dir: str = typer.Option("current/retrain", "--retrain"),
                    metrics: Optional[str] = typer.Option("current/metrics.json", "--metrics"),
                    out: str = typer.Option("current/figures", "--out")) -> None:
    """The figures of the variant run (current/): α, cells, curves, FIMT schedule, pruning."""
    from . import figures as stage

    written = _guard(stage.run_variant, search_dir, genotype, retrain_dir, out, metrics)
    typer.echo(f"wrote {len(written)} files to {out}")


@app.command()
def scale(name: str = typer.Argument(..., help="quick | cifar-cpu | paper"), params: str = PARAMS,
          dataset: Optional[str] = typer.Option(None, "--dataset", help="override data.dataset"),
          root: Optional[str] = typer.Option(None, "--root", help="override data.root (a folder with train/ in it: an ImageFolder tree)"),
          estimate: bool = typer.Option(True, "--estimate/--no-estimate",
                                        help="time a few steps at the new sizes; print what the study costs here"),
          estimate_steps: int = typer.Option(2, "--estimate-steps", min=1,
                                             help="timed steps of each kind, after a warm-up"),
          related: Optional[bool] = typer.Option(
              None, "--related/--no-related",
              help="the related-work rows (stages/sets/related.yaml: R-DARTS (L2), FairDARTS, DARTS-, NASP); "
                   "default: the preset's (paper: on; quick, cifar-cpu: off)"),
          calibration: Optional[bool] = typer.Option(
              None, "--calibration/--no-calibration",
              help="the DARTS_V2 cell retrained with this study's protocol (stages/sets/calibration.yaml); "
                   "default: the preset's (paper: on; quick, cifar-cpu: off)")) -> None:
    """Switch params.yaml to a scale preset; then print what `dvc repro` costs on this device, from measured steps."""
    from . import scales as stage

    sets = {key: on for key, on in (("related", related), ("calibration", calibration)) if on is not None}
    new = _guard(stage.apply, name, params, dataset, root, sets)
    typer.echo(f"params.yaml now at the {name!r} scale; run `dvc repro`")
    if estimate:
        typer.echo("timing a few steps of each network at these sizes (skip with --no-estimate)...")
        typer.echo(_guard(stage.cost_report, new, estimate_steps))


study_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="The whole study (configs × seeds) through DVC, on several cores, GPUs or machines.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(jobs: int = typer.Option(1, "--jobs", "-j", help="chains run at once"),
              devices: Optional[str] = typer.Option(None, "--devices",
                                                    help="comma-separated devices, one per job slot in turn "
                                                         "(cuda:0,cuda:1); default: cuda if present, else cpu"),
              params: str = PARAMS,
              shard: Optional[str] = typer.Option(None, "--shard",
                                                  help="I/N: run only shard I of N (chain k of the study's order "
                                                       "goes to shard k mod N + 1), then push its runs and the "
                                                       "run-cache to the default DVC remote; no Table 1 (see "
                                                       "`darts study collect`)"),
              stage_server: bool = typer.Option(True, "--stage-server/--no-stage-server",
                                                help="run the stages as forks of one process that has imported "
                                                     "torch once (stages/stageserver.py), not as fresh Pythons"),
              setup: bool = typer.Option(True, "--setup/--no-setup", hidden=True,
                                         help="--no-setup: check-params and prepare-split are up to date "
                                              "(`darts study submit`'s tasks, sharing one clone)")) -> None:
    """Run every config × seed chain (and the variant chain) in parallel through DVC, then
    Table 1 and the figures. A rerun resumes; `dvc status` is clean afterwards."""
    from . import study as stage

    raise typer.Exit(_guard(stage.run, params, jobs, devices, shard=shard, setup=setup,
                            stage_server=stage_server))


@study_app.command("collect")
def study_collect(params: str = PARAMS) -> None:
    """Restore every shard's runs from the default DVC remote's run-cache (none is computed
    here), then write Table 1, the claims and the figures. Names the missing chains, exit 1."""
    from . import shard as stage

    raise typer.Exit(_guard(stage.collect, params))


@study_app.command("submit")
def study_submit(executor: str = typer.Option(..., "--executor", help="slurm | local (local processes, "
                                              "submitit's stand-in for a cluster)"),
                 partition: Optional[str] = typer.Option(None, "--partition", help="Slurm partition"),
                 gpus_per_job: str = typer.Option("1", "--gpus-per-job", help="GPUs per task (0 = CPU); a task "
                                                  "with G > 1 runs G chains at once, one per GPU"),
                 cpus_per_job: str = typer.Option("1", "--cpus-per-job", help="CPU cores per task, split between "
                                                  "its chains (DARTS_THREADS)"),
                 parallel: Optional[str] = typer.Option(None, "--parallel", help="Slurm: array tasks running at "
                                                        "once (default all); local: the number of tasks (default "
                                                        "1), each a round-robin shard of the chains"),
                 hours: str = typer.Option("24", "--time", help="time limit per task in hours; a task stopped "
                                           "by it (or preempted) checkpoints and is requeued"),
                 wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the tasks, then collect "
                                           "Table 1 (`darts study collect`)"),
                 params: str = PARAMS) -> None:
    """Submit the study as a job array through submitit: Slurm, one task per chain (or local
    processes), each `darts study run --shard I/N` pushing to the default DVC remote."""
    from . import submit as stage

    opts = _guard(stage.parse_options, executor, parallel, hours, partition, gpus_per_job, cpus_per_job)
    code, _ = _guard(stage.submit, params, opts, wait)
    raise typer.Exit(code)


#: the commands that compute a run; `darts study collect` sets DARTS_RESTORE_ONLY (its name is
#: stages.chains.RESTORE_ONLY_ENV, not imported here: kept free of the stage modules) and they refuse
RUN_COMMANDS = ("search", "discretize", "retrain", "test")


@app.callback()
def _restore_only(ctx: typer.Context) -> None:
    """Refuse the run commands under DARTS_RESTORE_ONLY. A collector must only restore runs:
    if DVC found a stage missing from the run-cache (not pushed yet, or pushed for other
    params) it would run it, silently computing on the wrong machine. Refusing here, in the
    command DVC runs, holds whatever DVC decides. (The app's help stays Typer(help=...).)"""
    import os

    flag = os.environ.get("DARTS_RESTORE_ONLY", "")
    if flag not in ("", "0") and ctx.invoked_subcommand in RUN_COMMANDS:
        typer.echo(f"error: `darts {ctx.invoked_subcommand}` refused: DARTS_RESTORE_ONLY={flag} is set "
                   "(`darts study collect` only restores runs from the DVC remote); unset it to compute this run",
                   err=True)
        raise typer.Exit(2)


@app.command()
def clean(everything: bool = typer.Option(False, "--all", help="remove every checkpoint no running process holds"),
          dry_run: bool = typer.Option(False, "--dry-run", help="only list what would be removed")) -> None:
    """List checkpoints in DARTS_CHECKPOINT_DIR (.checkpoints) and remove those no command can resume.

    Never touches a checkpoint that a running process holds.
    Keeps a resumable one (its command would compute the same key today), however old.
    Removes a stale one (params, darts/ code, prepared data or genotype changed since).
    Where the key cannot be recomputed: keeps only the newest per stage and output folder.
    Also removes lock files no process holds. Details: stages/clean.py.
    """
    from . import clean as stage

    _guard(stage.run, everything, dry_run)


MODEL = typer.Option(..., "--model", help="model.pt written by `darts retrain` (or its retrain folder)")
IMAGE_SIZE = typer.Option(None, "--image-size", help="input size in pixels, N or HxW (default: the size model.pt "
                          "records; required for a model.pt of an older `darts retrain`, which records none)")


@app.command()
def predict(inputs: list[str] = typer.Argument(..., help="image files, or folders searched recursively"),
            model: str = MODEL, top: Optional[int] = typer.Option(None, "--top", help="classes shown per image "
                                                                  "(default: 5, or all if fewer)"),
            image_size: Optional[str] = IMAGE_SIZE, device: Optional[str] = DEVICE,
            threads: Optional[int] = THREADS) -> None:
    """Classify images with a retrained model: top-K classes and probabilities per image.

    Preprocessing is the test stage's (RGB, resize to the training size, the training mean/std)."""
    from . import models as stage

    rows, notes = _guard(stage.predict, model, inputs, top, image_size, device, threads)
    for note in notes:
        typer.echo(note, err=True)
    for path, best in rows:
        typer.echo(f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in best))


@app.command()
def export(model: str = MODEL, fmt: str = typer.Option(..., "--format", help="onnx | torchscript"),
           out: str = typer.Option(..., "--out", help="file to write"),
           image_size: Optional[str] = IMAGE_SIZE) -> None:
    """A standalone model (logits of normalised images, dynamic batch, no auxiliary head),
    checked against PyTorch on random batches of 2 sizes (max |logit difference| <= 1e-4).

    ONNX needs the `export` extra: pip install 'darts-constrained[export]'."""
    from darts.data import size_text

    from . import models as stage

    try:
        r = _guard(stage.export, model, fmt, out, image_size)
    except stage.ExportFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"wrote {r['out']} ({r['format']}: {r['classes']} classes, {size_text(r['image_size'])}px input, any batch size)")
    if r["diffs"] is None:
        typer.echo(f"check against PyTorch skipped: onnxruntime is not installed; {stage.EXTRA}")
    else:
        typer.echo("check against PyTorch: max |logit difference| " + ", ".join(
            f"{d:.3g} at batch {n}" for n, d in r["diffs"].items()) + f" (tolerance {stage.TOLERANCE:g})")


def main() -> None:  # pragma: no cover
    sys.exit(app())
