"""`darts retrain`: train the evaluation network of a genotype from scratch (DARTS protocol).

Trains on the whole prepared training set for a fixed number of epochs; nothing is
selected on the test set (it is not even loaded here). Resumes from its checkpoint.
Writes `model.pt`, `retrain.json` (per-epoch curve, params), `epochs.tsv` (the same curve
as TSV, declared as DVC plots for the variant chain) and `log.txt`.

Under `torchrun --nproc_per_node G -m stages retrain ...` each of the G processes trains a
DistributedDataParallel replica on its batch_size/G rows of every global batch (darts.data
BatchStream's shard); rank 0 alone writes outputs, logs and checkpoints, and every rank
resumes from rank 0's checkpoint. torchrun rather than a `--nproc` option: it is the
launcher every cluster scheduler already speaks (several nodes, restarts), and one process
per device is what DDP expects; with one process nothing here starts a process group
(stages/ranks.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import distributed as dist

from darts.data import BatchStream, ImageSet
from darts.inference import model_record
from darts.loops import checkpoint as ckpt
from darts.loops.search import NonFiniteError
from darts.loops.train import RetrainConfig, Retrainer
from darts.nn.evalnet import EvalNetwork, count_params_m
from darts.nn.evalnet_imagenet import NETWORKS, build_network, choose_network
from darts.nn.fast.hostmemory import retain_freed_memory
from darts.space.parse import genotype_format, parse_genotype
from darts.space.primitives import Genotype, GenotypeError, shorten
from darts.space.published import PUBLISHED, find_published, published_genotype

from .common import CHECKPOINT_ROOT, machine, reject_machine_settings, as_recorded, checkpoint_path, fault_injection, device_label, drop_checkpoint, load_prepared, seed_everything
from .livelog import LiveLog, check_live
from .params import ParamsError, RunSpec, check_data, image_size, load_params, run_spec, section
from .progress import Progress
from .ranks import (Ranks, any_rank, check_shards, from_lead, rank_device, rank_rng, rank_seed, restore_rng,
                    said_once, start_group, to_lead)
from .runguard import guarded, run_epochs

CURVE_COLUMNS = ("epoch", "loss", "acc", "lr")  # epochs.tsv, one row per trained epoch (1-based)


def write_curve(rows: list[dict], path: Path) -> None:
    lines = ["\t".join(CURVE_COLUMNS)] + ["\t".join(f"{r[c]:.6g}" for c in CURVE_COLUMNS) for r in rows]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


EXTRA_KEYS = {"layers": 20, "C": 36, "auxiliary": True}
#: DARTS' sizes of the ImageNet network, the defaults when it is chosen and layers/C are not set
IMAGENET_DEFAULTS = {"layers": 14, "C": 48}
MIN_IMAGENET_SIDE = 32  # its stems and two reductions take the input to 1/32


def retrain_settings(params: dict) -> tuple[RetrainConfig, dict]:
    """(config, extra) of params.retrain; ``extra`` holds layers, C, auxiliary and, only when
    set, ``network`` (as given: it is part of the checkpoint key, which must not change for
    params that do not set it). ``network_kind`` resolves it against the image size."""
    r = section(params, "retrain")
    reject_machine_settings("retrain", r)
    network = r.pop("network", None)
    kind = network_kind({"network": network} if network is not None else {}, params)
    defaults = {**EXTRA_KEYS, **(IMAGENET_DEFAULTS if kind == "imagenet" else {})}
    extra = {k: r.pop(k, v) for k, v in defaults.items()}
    if network is not None:
        extra["network"] = network
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


def network_kind(extra: dict, params: dict) -> str:
    """The evaluation network (darts.nn.evalnet_imagenet.NETWORKS) of retrain.network (default
    auto: from data.image_size), with a one-line error for a value or size it cannot take."""
    setting = extra.get("network", "auto")
    if setting not in ("auto", *NETWORKS):
        raise ParamsError(f"retrain.network={setting!r} is invalid; valid: auto, {', '.join(NETWORKS)}")
    size = image_size(check_data(section(params, "data")))
    kind = choose_network(setting, size)
    if kind == "imagenet" and min(size) < MIN_IMAGENET_SIDE:
        raise ParamsError(f"retrain.network=imagenet needs images of at least {MIN_IMAGENET_SIDE}x{MIN_IMAGENET_SIDE} "
                          f"(it takes them to 1/32) but data.image_size={params['data'].get('image_size')!r}; "
                          f"valid here: auto, cifar")
    return kind


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
    means in darts.space.parse.parse_genotype, so a new form is added in one place. Every
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
        device: str | None = None, threads: int | None = None, live: str | None = None) -> dict:
    """Retrain one run; under `torchrun --nproc_per_node G` as one of G DDP processes."""
    ranks = Ranks.from_env()
    with said_once(ranks):
        params = load_params(params_path)
        spec = run_spec(params, config, seed)
        cfg, extra = retrain_settings(params)
        data_params = check_data(section(params, "data"))
        genotype, genotype_source = read_genotype(genotype_path)
        network = network_kind(extra, params)
        check_live(live)
        # stages.common: --device/--threads, else DARTS_DEVICE/DARTS_THREADS
        device = rank_device(machine(device, threads), ranks)
        check_shards(cfg, ranks, device)
        retain_freed_memory()  # darts.nn.fast.hostmemory: each step's activations are not faulted in afresh
        train_set = load_prepared(prepared, "train")
        if train_set.size != image_size(data_params):
            raise ParamsError(f"prepared data {prepared} holds {train_set.size[0]}x{train_set.size[1]} images but "
                              f"data.image_size={data_params.get('image_size')!r}; rerun `darts prepare-split`")
    job = Job(params_path, config, seed, genotype_path, prepared, out, spec, cfg, extra, data_params, genotype,
              genotype_source, device, train_set, network, live)
    if ranks.world == 1:
        return train(job, ranks)
    ranks = start_group(ranks, job.device)
    try:
        return train(job, ranks)
    finally:
        dist.destroy_process_group()


@dataclass
class Job:
    """A validated retrain: the arguments as given and what was derived from them."""

    params_path: str
    config: str | None
    seed: int | None
    genotype_path: str
    prepared: str
    out: str
    spec: RunSpec
    cfg: RetrainConfig
    extra: dict
    data_params: dict
    genotype: Genotype
    genotype_source: dict
    device: torch.device
    train_set: ImageSet
    network: str  # darts.nn.evalnet_imagenet.NETWORKS: retrain.network resolved for the image size
    live: str | None = None  # the DVCLive folder (stages.livelog), written by rank 0

    def command(self) -> dict:
        """The arguments as `command.json` records them (for `darts clean`)."""
        return {"params": as_recorded(self.params_path), "config": self.config, "seed": self.seed,
                "genotype": as_recorded(self.genotype_path), "prepared": as_recorded(self.prepared)}


def build_model(job: Job, ranks: Ranks) -> EvalNetwork:
    """The network, initialised from the run's seed (DDP then copies rank 0's weights anyway);
    ranks > 0 then move to their own torch stream (``rank_seed``)."""
    seed_everything(job.spec.seed)
    model = build_network(job.network, job.genotype, C=job.extra["C"], n_classes=len(job.train_set.classes),
                          layers=job.extra["layers"], auxiliary=bool(job.extra["auxiliary"]),
                          in_channels=job.train_set.channels).to(job.device)
    if not ranks.lead:
        torch.manual_seed(rank_seed(job.spec.seed, ranks.rank))
    return model


def save_state(trainer: Retrainer, stream: BatchStream, curve: list[dict], ranks: Ranks, device: torch.device,
               state_file: Path, live_rows: list | None = None) -> None:
    """Checkpoint the run (atomically); under DDP every rank calls it (collectives), rank 0 writes.

    One process writes exactly what it always did. Under DDP the trainer's state carries
    each rank's partial sums and ``rank_rng`` each rank's RNG (drop-path draws), so the same
    number of processes resumes exactly; the stream's state is the same on every rank."""
    trainer_state = trainer.state_dict()
    if ranks.world == 1:
        ckpt.save_atomic({"trainer": trainer_state, "stream": stream.state_dict(), "curve": curve,
                          "live": live_rows or [], "rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}, state_file)
        return
    rngs = to_lead(ranks, rank_rng(device))
    if ranks.lead:
        ckpt.save_atomic({"trainer": trainer_state, "stream": stream.state_dict(), "curve": curve,
                          "live": live_rows or [], "rng": rngs[0]["cpu"], "cuda_rng": None, "rank_rng": rngs}, state_file)


def resume(state: dict, trainer: Retrainer, stream: BatchStream, ranks: Ranks, job: Job, progress: Progress,
           state_file: Path) -> list[dict]:
    """Load a checkpoint into this rank's trainer, stream and RNG; return the curve so far."""
    trainer.load_state_dict(state["trainer"])
    stream.load_state_dict(state["stream"])
    same = restore_rng(state, ranks, job.device, job.spec.seed, (trainer.epoch, stream.position))
    progress.line(f"resuming from {state_file} at epoch {trainer.epoch}/{job.cfg.epochs}")
    if not same:
        written = len(state.get("rank_rng") or [None])
        progress.line(f"the checkpoint was written by {written} process(es), resumed by {ranks.world}: "
                      "from here BatchNorm statistics and drop-path draws differ from an uninterrupted run's")
    return state["curve"]


def train(job: Job, ranks: Ranks) -> dict:
    """Train to the end, resuming from and saving to the run's checkpoint; rank 0 alone writes."""
    spec, cfg, device = job.spec, job.cfg, job.device
    model = build_model(job, ranks)
    stream = BatchStream(job.train_set, cfg.batch_size, seed=spec.seed, device=device, cutout=cfg.cutout,
                         shard=(ranks.rank, ranks.world))
    out_dir = Path(job.out)
    if ranks.lead:
        out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(f"retrain {spec.label} seed {spec.seed}", cfg.epochs,
                        out_dir / "log.txt" if ranks.lead else None,
                        stream=None if ranks.lead else open(os.devnull, "w"))  # only rank 0 speaks
    trainer = Retrainer(model, cfg, on_step=lambda i, n: progress.step(i, n, None), distributed=ranks.world > 1)
    state_file = None
    if ranks.lead:
        key = run_key(spec.seed, job.genotype, cfg, job.extra, job.data_params, job.prepared)
        state_file = checkpoint_path("retrain", key, out_dir, job.command())
    curve: list[dict] = []
    with guarded(state_file, out_dir, CHECKPOINT_ROOT, lead=ranks.lead) as stop:
        state_file = from_lead(ranks, state_file)  # the others wait here until rank 0 holds the locks
        # rank 0 reads the checkpoint and sends it: every rank resumes from the same state,
        # and ranks on other machines need not see rank 0's file system
        state = from_lead(ranks, ckpt.load(state_file) if ranks.lead and state_file.is_file() else None)
        metrics = LiveLog(job.live if ranks.lead else None, rows=(state or {}).get("live"))
        if state is not None:
            curve = resume(state, trainer, stream, ranks, job, progress, state_file)
        else:
            where = device_label(device) if ranks.world == 1 else \
                f"{ranks.world} processes (DDP) of {device_label(device)}"
            progress.line(f"retrain {spec.label} seed {spec.seed}: {count_params_m(model):.3f}M params on {where}")
        steps = [0]

        per_epoch = len(stream)

        def on_step(i: int, n: int) -> None:
            progress.step(i, n, None)
            steps[0] += 1
            step = trainer.epoch * per_epoch + i  # global: the live log's x axis
            if metrics.due(step) and i < per_epoch:  # an epoch's last step: its curve row follows
                metrics.log(step, {"train_loss_running": trainer.running_loss()})
            fault_injection(steps[0], model)

        def should_stop() -> bool:
            return any_rank(ranks, stop.is_set())

        def stopped() -> None:
            save_state(trainer, stream, curve, ranks, device, state_file, metrics.rows())
            where = f"in epoch {trainer.epoch + 1}" if trainer.mid_epoch else f"after epoch {trainer.epoch}"
            by = f"signal {stop.signum}" if stop.signum is not None else "a signal to another process"
            progress.line(f"stopped by {by} {where}; checkpoint saved to "
                          f"{state_file}; run the same command (or dvc repro) to resume")
            from_lead(ranks, None)  # nobody exits before rank 0 has written: torchrun would kill it

        def end_epoch(row: dict) -> None:
            if not math.isfinite(row["loss"]):
                raise NonFiniteError(f"non-finite training loss in retrain epoch {trainer.epoch}; stopping "
                                     "(the last checkpoint is kept)")
            row["epoch"] = trainer.epoch
            curve.append(row)
            progress.end_epoch(row, ("loss", "acc", "lr"))
            metrics.log(trainer.epoch * per_epoch, {k: row[k] for k in ("epoch", "loss", "acc", "lr")})
            save_state(trainer, stream, curve, ranks, device, state_file, metrics.rows())

        trainer.on_step = on_step
        run_epochs(trainer, lambda stop_now: trainer.train_epoch(stream.epoch_batches(), should_stop=stop_now),
                   should_stop, progress, end_epoch, stopped)
    return finish(job, ranks, model, curve, progress, state_file)


def finish(job: Job, ranks: Ranks, model: EvalNetwork, curve: list[dict], progress: Progress,
           state_file: Path) -> dict:
    """Write model.pt, epochs.tsv and retrain.json (rank 0 only) and drop the checkpoint."""
    out_dir = Path(job.out)
    device_text = device_label(job.device)
    # the run's own identity, so `darts test` needs no search (a published genotype has none)
    summary = {"run": asdict(job.spec), "genotype_source": job.genotype_source, "genotype": job.genotype.to_dict(),
               "params_m": count_params_m(model), "network": job.network,
               "device": device_text if ranks.world == 1 else f"{ranks.world}x {device_text} (DDP)",
               "retrain_seconds": sum(r.get("seconds", 0.0) for r in curve), "epochs": curve}
    if ranks.world > 1:
        summary["ddp"] = {"processes": ranks.world, "sync_bn": job.cfg.sync_bn,
                          "backend": "nccl" if job.device.type == "cuda" else "gloo"}
    progress.close()
    if not ranks.lead:
        progress.stream.close()  # the os.devnull it was given
        return summary
    # darts.inference defines the format: the network, plus class names, image size and mean/std
    ckpt.save_atomic(model_record(model, job.genotype, job.extra["C"], job.extra["layers"],
                                  bool(job.extra["auxiliary"]), job.train_set), out_dir / "model.pt")
    write_curve(curve, out_dir / "epochs.tsv")
    ckpt.write_json_atomic(summary, out_dir / "retrain.json")
    drop_checkpoint(state_file)
    return summary
