"""`darts retrain`: train the evaluation network of a genotype from scratch (DARTS protocol).

Trains on the whole prepared training set for a fixed number of epochs; nothing is
selected on the test set (it is not even loaded here). Resumes from its checkpoint.
Writes `model.pt`, `retrain.json` (per-epoch curve, params), `epochs.tsv` (the same curve
as TSV, declared as DVC plots for the variant chain) and `log.txt`.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch

from darts import checkpoint as ckpt
from darts.data import BatchStream
from darts.search import NonFiniteError
from darts.evalnet import EvalNetwork, count_params_m
from darts.hostmemory import retain_freed_memory
from darts.inference import model_record
from darts.published import PUBLISHED, find_published, published_genotype
from darts.space import Genotype, GenotypeError, genotype_format, parse_genotype, shorten
from darts.train import RetrainConfig, Retrainer

from .common import CHECKPOINT_ROOT, machine, reject_machine_settings, as_recorded, checkpoint_path, fault_injection, device_label, drop_checkpoint, load_prepared, seed_everything
from .params import ParamsError, check_data, load_params, run_spec, section
from .progress import Progress
from .runguard import Interrupted, RunLock, StopOnSignal

CURVE_COLUMNS = ("epoch", "loss", "acc", "lr")  # epochs.tsv, one row per trained epoch (1-based)


def write_curve(rows: list[dict], path: Path) -> None:
    lines = ["\t".join(CURVE_COLUMNS)] + ["\t".join(f"{r[c]:.6g}" for c in CURVE_COLUMNS) for r in rows]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


EXTRA_KEYS = {"layers": 20, "C": 36, "auxiliary": True}


def retrain_settings(params: dict) -> tuple[RetrainConfig, dict]:
    r = section(params, "retrain")
    reject_machine_settings("retrain", r)
    extra = {k: r.pop(k, v) for k, v in EXTRA_KEYS.items()}
    try:
        cfg = RetrainConfig.from_dict(r)
    except (ValueError, TypeError) as e:
        raise ParamsError(str(e).replace("retrain.", "retrain.", 1)) from None
    for key in ("layers", "C"):
        v = extra[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ParamsError(f"retrain.{key}={v!r} is invalid; must be a positive integer")
    if extra["layers"] < 3:
        raise ParamsError(f"retrain.layers={extra['layers']} is invalid; need >= 3 (two reduction cells)")
    if extra["C"] % 2:
        raise ParamsError(f"retrain.C={extra['C']} is invalid; must be even")
    return cfg, extra


GENOTYPE_FORMS = ("--genotype takes a genotype.json file, a file of DARTS Genotype(normal=[...], "
                  "normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6)) text (genotype.txt) or of "
                  "pt.darts' nested Genotype(normal=[[...], ...], ...) text (genotype_ptdarts.txt), that text inline, "
                  f"or a published genotype's name ({', '.join(PUBLISHED)}, any case)")
MAX_GENOTYPE_BYTES = 1 << 20  # a genotype is < 1 kB; anything this big is the wrong file


def read_genotype(arg: str) -> tuple[Genotype, dict]:
    """The genotype of `--genotype ARG` and where it came from (recorded in retrain.json).

    ARG is a file (content decides the form: JSON, DARTS or pt.darts text, so genotype.txt
    works too), the genotype text itself, or a published genotype's name; an existing file
    wins over a name of the same spelling. What ARG means is decided here and what text
    means in darts.space.parse_genotype, so a new form is added in one place. Every
    failure is one line naming ARG (shortened) and the accepted forms.
    """
    path_like = len(arg) <= 255 and "\n" not in arg  # shown whole: the user must see which path
    shown = repr(arg) if path_like else shorten(arg)
    if not arg.strip():
        raise ParamsError(f"--genotype {shown} is empty; {GENOTYPE_FORMS}")
    p = Path(arg)
    try:
        is_dir, is_file = p.is_dir(), p.is_file()
    except (OSError, ValueError):  # a name too long for the file system: inline text, or nothing
        is_dir = is_file = False
    form = genotype_format(arg)
    if form == "name" and not is_file:
        # a bare word is a name or a path: say both when it is neither (a directory gets its own message)
        name = find_published(arg)
        if name is not None:
            return published_genotype(name), {"inline": True, "path": None, "format": "name", "name": name}
        if not is_dir:
            raise ParamsError(f"--genotype {shown} is neither an existing file nor a published genotype name; "
                              f"{GENOTYPE_FORMS}")
    elif form is not None and not is_file:
        try:
            return parse_genotype(arg), {"inline": True, "path": None, "format": form}
        except GenotypeError as e:
            raise ParamsError(f"--genotype text {shorten(arg)} is invalid: {e}; {GENOTYPE_FORMS}") from None
    if is_dir:
        hint = f" (pass {p / 'genotype.json'})" if (p / "genotype.json").is_file() else ""
        raise ParamsError(f"--genotype {shown} is a directory{hint}; {GENOTYPE_FORMS}")
    if not is_file:
        hint = " (`darts discretize` writes genotype.json, genotype.txt and genotype_ptdarts.txt)" if path_like else ""
        raise ParamsError(f"--genotype {shown} is neither an existing file nor genotype text nor a published "
                          f"genotype name{hint}; {GENOTYPE_FORMS}")
    if p.stat().st_size > MAX_GENOTYPE_BYTES:
        raise ParamsError(f"genotype file {p} is {p.stat().st_size} bytes, too large for a genotype; {GENOTYPE_FORMS}")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ParamsError(f"genotype file {p} is not a text file; {GENOTYPE_FORMS}") from None
    except OSError as e:
        raise ParamsError(f"genotype file {p} cannot be read ({e.strerror}); {GENOTYPE_FORMS}") from None
    if not text.strip():
        raise ParamsError(f"genotype file {p} is empty; {GENOTYPE_FORMS}")
    try:
        return parse_genotype(text), {"inline": False, "path": arg, "format": genotype_format(text)}
    except GenotypeError as e:
        raise ParamsError(f"genotype file {p} is invalid: {e}; {GENOTYPE_FORMS}") from None


def run_key(seed: int, genotype: Genotype, cfg: RetrainConfig, extra: dict, data_params: dict, prepared: str,
            digest=ckpt.file_digest) -> str:
    """The checkpoint key: a hash of everything that determines the run (and the code)."""
    return ckpt.run_key("retrain", seed, genotype.to_dict(), cfg.to_dict(), extra, data_params,
                        digest(Path(prepared) / "train.pt"))


def checkpoint_key(command: dict, digest=ckpt.file_digest) -> str:
    """The key `darts retrain` with these recorded arguments would use now (for `darts clean`);
    derives its inputs as run() does (tests/test_clean.py checks the two agree)."""
    params = load_params(command["params"])
    spec = run_spec(params, command["config"], command["seed"])
    cfg, extra = retrain_settings(params)
    data_params = check_data(section(params, "data"))
    genotype = read_genotype(command["genotype"])[0]
    return run_key(spec.seed, genotype, cfg, extra, data_params, command["prepared"], digest)


def run(params_path: str, config: str | None, seed: int | None, genotype_path: str, prepared: str, out: str,
        device: str | None = None, threads: int | None = None) -> dict:
    params = load_params(params_path)
    spec = run_spec(params, config, seed)
    cfg, extra = retrain_settings(params)
    data_params = check_data(section(params, "data"))
    genotype, genotype_source = read_genotype(genotype_path)
    device = machine(device, threads)  # stages.common: --device/--threads, else DARTS_DEVICE/DARTS_THREADS
    retain_freed_memory()  # darts.hostmemory: each step's activations are not faulted in afresh
    train_set = load_prepared(prepared, "train")

    seed_everything(spec.seed)
    model = EvalNetwork(genotype, C=extra["C"], n_classes=len(train_set.classes), layers=extra["layers"],
                        auxiliary=bool(extra["auxiliary"])).to(device)
    stream = BatchStream(train_set, cfg.batch_size, seed=spec.seed, device=device, cutout=cfg.cutout)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(f"retrain {spec.label} seed {spec.seed}", cfg.epochs, out_dir / "log.txt")
    trainer = Retrainer(model, cfg, on_step=lambda i, n: progress.step(i, n, None))
    command = {"params": as_recorded(params_path), "config": config, "seed": seed,
               "genotype": as_recorded(genotype_path), "prepared": as_recorded(prepared)}
    key = run_key(spec.seed, genotype, cfg, extra, data_params, prepared)
    state_file = checkpoint_path("retrain", key, out_dir, command)
    curve: list[dict] = []

    def save() -> None:
        ckpt.save_atomic({"trainer": trainer.state_dict(), "stream": stream.state_dict(), "curve": curve,
                          "rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}, state_file)

    with RunLock(state_file.with_name("lock"), RunLock.for_dir(CHECKPOINT_ROOT, out_dir)), StopOnSignal() as stop:
        if state_file.is_file():
            state = ckpt.load(state_file)
            trainer.load_state_dict(state["trainer"])
            stream.load_state_dict(state["stream"])
            curve = state["curve"]
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None and device.type == "cuda":
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            progress.line(f"resuming from {state_file} at epoch {trainer.epoch}/{cfg.epochs}")
        else:
            progress.line(f"retrain {spec.label} seed {spec.seed}: {count_params_m(model):.3f}M params on "
                          f"{device_label(device)}")
        steps = [0]

        def on_step(i: int, n: int) -> None:
            progress.step(i, n, None)
            steps[0] += 1
            fault_injection(steps[0], model)

        trainer.on_step = on_step
        while not trainer.done:
            # polled before each epoch too: a signal in an epoch's last step finishes that epoch
            # (darts.train), and the next one must not start
            row = None
            if not stop.is_set():
                progress.start_epoch(trainer.epoch + 1, trainer.epoch)
                row = trainer.train_epoch(stream.epoch_batches(), should_stop=stop.is_set)
            if row is None:
                save()
                where = f"in epoch {trainer.epoch + 1}" if trainer.mid_epoch else f"after epoch {trainer.epoch}"
                progress.line(f"stopped by signal {stop.signum} {where}; checkpoint saved to "
                              f"{state_file}; run the same command (or dvc repro) to resume")
                raise Interrupted()
            if not math.isfinite(row["loss"]):
                raise NonFiniteError(f"non-finite training loss in retrain epoch {trainer.epoch}; stopping "
                                     "(the last checkpoint is kept)")
            row["epoch"] = trainer.epoch
            curve.append(row)
            progress.end_epoch(row, ("loss", "acc", "lr"))
            save()
    # darts.inference defines the format: the network, plus class names, image size and mean/std
    ckpt.save_atomic(model_record(model, genotype, extra["C"], extra["layers"], bool(extra["auxiliary"]),
                                  train_set.classes, train_set.images.shape[-1]), out_dir / "model.pt")
    # the run's own identity, so `darts test` needs no search (a published genotype has none)
    summary = {"run": asdict(spec), "genotype_source": genotype_source, "genotype": genotype.to_dict(),
               "params_m": count_params_m(model), "device": device_label(device),
               "retrain_seconds": sum(r.get("seconds", 0.0) for r in curve), "epochs": curve}
    write_curve(curve, out_dir / "epochs.tsv")
    ckpt.write_json_atomic(summary, out_dir / "retrain.json")
    progress.close()
    drop_checkpoint(state_file)
    return summary
