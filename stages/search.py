"""`darts search`: the bilevel search of one run (a study config × seed, or the variant).

Reads `search` and `data` params, builds the activation, schedule and regularizer the
run names, and resumes from its checkpoint when one exists (checkpoints are keyed by a
hash of everything that determines the run). Writes `supernet.pt` (weights, α, masks),
`history.pt` (α at every update, schedule log, pruning events), `search.json`, `log.txt`,
and `epochs.tsv` (the per-epoch curve, declared as DVC plots for the variant chain).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from darts.data import BatchStream, split_indices
from darts.loops import checkpoint as ckpt
from darts.loops.search import SearchConfig, Searcher, evaluate_supernet, final_ties
from darts.method.activations import ACTIVATIONS, make_activation
from darts.method.interfaces import Setting, as_setting, configured
from darts.method.registry import METHODS, Untrained
from darts.method.regularizers import REGULARIZER_TYPES
from darts.method.schedules import SCHEDULE_TYPES, train_fraction
from darts.nn.fast.hostmemory import retain_freed_memory
from darts.nn.supernet import SearchNetwork
from darts.space.projection import TIE_BREAKS

from .common import CHECKPOINT_ROOT, machine, reject_machine_settings, as_recorded, checkpoint_path, fault_injection, device_label, drop_checkpoint, load_prepared, seed_everything
from .livelog import LiveLog, check_live
from .params import ParamsError, RunSpec, check_data, load_params, run_spec, section
from .progress import Progress
from .runguard import guarded, run_epochs

#: columns of epochs.tsv (one row per search epoch; empty when an epoch had no α step)
CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "alpha_ratio", "alpha_steps", "penalty",
                 "live_ops_normal", "live_ops_reduce", "w_lr")


def curve_row(row: dict) -> dict:
    """One epoch of the curve, flat: the values of CURVE_COLUMNS (None where absent)."""
    flat = {**row, **{f"live_ops_{t}": n for t, n in (row.get("live_ops") or {}).items()}}
    return {c: flat.get(c) for c in CURVE_COLUMNS}


def write_curve(rows: list[dict], path: Path) -> None:
    """The per-epoch search curve as TSV (what `dvc plots` reads)."""
    lines = ["\t".join(CURVE_COLUMNS)]
    for r in rows:
        flat = curve_row(r)
        lines.append("\t".join("" if flat.get(c) is None else f"{flat[c]:.6g}" for c in CURVE_COLUMNS))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


#: keys of params.search that are neither SearchConfig fields nor a component's own
#: (``component_settings``): the supernet's size, the checkpoint rate, Π_S's tie rule
BASE_KEYS: dict[str, Setting] = {
    "layers": Setting(8, "positive_int"),  # and >= 3: two reduction cells (search_settings)
    "C": Setting(16, "positive_int"),  # and even: FactorizedReduce halves it (search_settings)
    "checkpoint_every": Setting(1, "positive_int"),
    "tie_break": Setting("raw_alpha", choices=(  # darts.space.projection.TIE_BREAKS
        ("raw_alpha", "equal activated values ordered by raw α"),
        ("index", "lowest op/edge index, the authors' code"))),
}
assert tuple(dict(BASE_KEYS["tie_break"].choices)) == TIE_BREAKS


def component_settings() -> dict[str, Setting]:
    """params.search keys that registered components read (``settings``: key -> Setting, its
    default and valid values), so a new activation, schedule, regularizer or method brings its
    own keys with it. Two components that share a key (the schedules' k) must agree on it."""
    out: dict[str, Setting] = {}
    for holder in (*ACTIVATIONS.values(), *SCHEDULE_TYPES.values(), *REGULARIZER_TYPES.values(),
                   *METHODS.values()):
        for key, value in (getattr(holder, "settings", None) or {}).items():
            setting = as_setting(value)
            if out.setdefault(key, setting) != setting:
                raise AssertionError(f"params.search key {key!r} is declared twice, differently: "
                                     f"{out[key]} and {setting} ({getattr(holder, 'name', holder)})")
    return out


def extra_settings() -> dict[str, Setting]:
    """Every params.search key that is not a SearchConfig field -> its Setting; read at each
    call, so a component registered after import brings its keys with it."""
    return {**BASE_KEYS, **component_settings()}


def search_settings(params: dict, spec: RunSpec) -> tuple[SearchConfig, dict]:
    """Validated (SearchConfig, extra settings) for a run, with CRB's α weight decay applied."""
    s = section(params, "search")
    reject_machine_settings("search", s)
    cfg_fields = {f.name for f in fields(SearchConfig)}
    settings = extra_settings()
    unknown = sorted(set(s) - cfg_fields - set(settings))
    if unknown:
        raise ParamsError(f"params.search has unknown key(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(cfg_fields | set(settings)))}")
    extra = {k: s.get(k, setting.default) for k, setting in settings.items()}
    for key, setting in settings.items():  # each checked by the rule its owner gives
        problem = setting.problem(extra[key])
        if problem:
            raise ParamsError(f"search.{key}={extra[key]!r} is invalid; {problem}")
    cfg = SearchConfig(**{k: (tuple(v) if k == "alpha_betas" else v) for k, v in s.items() if k in cfg_fields})
    cfg.order = spec.order
    own_decay = ACTIVATIONS[spec.activation].alpha_weight_decay_option  # CRB: none (paper §4.1)
    if own_decay is not None:
        cfg.alpha_weight_decay = extra[own_decay]
    w_decay = METHODS[spec.method].w_weight_decay_option  # R-DARTS (L2): its raised decay on w
    if w_decay is not None:
        cfg.w_weight_decay = extra[w_decay]
    try:
        cfg.validate()
    except ValueError as e:
        raise ParamsError(str(e)) from None
    if extra["layers"] < 3:
        raise ParamsError(f"search.layers={extra['layers']} is invalid; need >= 3 (two reduction cells)")
    if extra["C"] % 2:
        raise ParamsError(f"search.C={extra['C']} is invalid; must be even (FactorizedReduce halves it)")
    return cfg, extra


def build(spec: RunSpec, cfg: SearchConfig, extra: dict, train_set, device: torch.device, data_seed: int):
    """The search state of a run, freshly initialised from its seed: the bilevel Searcher, or
    for a method that sets α without training (random sampling), its `Untrained` state.
    Returns (state, split, evaluation or None): the evaluation is (validation batches to
    score the supernet on, w-split batches to re-estimate its BatchNorm statistics on first),
    both unaugmented and in a fixed order."""
    seed_everything(spec.seed)
    method = METHODS[spec.method]
    if not method.trains_supernet:
        net = SearchNetwork(make_activation(spec.activation), C=extra["C"], n_classes=len(train_set.classes),
                            layers=extra["layers"], generator=torch.Generator().manual_seed(spec.seed),
                            in_channels=train_set.channels).to(device)
        return Untrained(net, method.set_alpha, spec.seed, **dict(spec.options)), {"train_fraction": None, "train": 0, "val": 0}, None
    # each component takes the params.search keys its class names (``options``): none is listed here
    activation = configured(ACTIVATIONS, spec.activation, extra, "activation")
    schedule = configured(SCHEDULE_TYPES, spec.schedule, extra, "schedule")
    regularizer = configured(REGULARIZER_TYPES, spec.regularization, extra, "regularization")
    frac = train_fraction(schedule.ratio)
    tr_idx, va_idx = split_indices(len(train_set), frac, data_seed)
    for part, idx in (("train", tr_idx), ("validation", va_idx)):
        if cfg.batch_size > len(idx):
            raise ParamsError(f"search.batch_size={cfg.batch_size} is larger than the {part} part of the search "
                              f"split ({len(idx)} of {len(train_set)} images at train fraction {frac:.4f}); "
                              "lower the batch size or raise data.train_size")
    w_set, val_set = train_set.take(tr_idx), train_set.take(va_idx)  # one copy each: the streams only read them
    train_stream = BatchStream(w_set, cfg.batch_size, seed=spec.seed, device=device)
    val_stream = BatchStream(val_set, cfg.batch_size, seed=spec.seed + 1, device=device)
    g = torch.Generator().manual_seed(spec.seed)
    net = SearchNetwork(activation, C=extra["C"], n_classes=len(train_set.classes), layers=extra["layers"],
                        generator=g, in_channels=train_set.channels, **method.network_options).to(device)
    searcher = Searcher(net, cfg, schedule, regularizer, train_stream, val_stream)
    split = {"train_fraction": frac, "train": len(tr_idx), "val": len(va_idx)}
    evaluation = tuple(BatchStream(part, cfg.batch_size, seed=0, device=device, train=False)
                       for part in (val_set, w_set))
    return searcher, split, evaluation


def settings(params_path: str, config: str | None, seed: int | None) -> tuple[RunSpec, SearchConfig, dict, dict]:
    """(run, search config, extra settings, data params) of a command line, validated."""
    params = load_params(params_path)
    spec = run_spec(params, config, seed)
    cfg, extra = search_settings(params, spec)
    return spec, cfg, extra, check_data(section(params, "data"))


def run_key(spec: RunSpec, cfg: SearchConfig, extra: dict, data_params: dict, prepared: str,
            digest=ckpt.file_digest) -> str:
    """The checkpoint key: a hash of everything that determines the run (and the code)."""
    return ckpt.run_key("search", asdict(spec), asdict(cfg), extra, data_params, digest(Path(prepared) / "train.pt"))


def checkpoint_key(command: dict, digest=ckpt.file_digest) -> str:
    """The key `darts search` with these recorded arguments would use now (for `darts clean`)."""
    spec, cfg, extra, data_params = settings(command["params"], command["config"], command["seed"])
    return run_key(spec, cfg, extra, data_params, command["prepared"], digest)


def run(params_path: str, config: str | None, seed: int | None, prepared: str, out: str,
        device: str | None = None, threads: int | None = None, live: str | None = None) -> dict:
    spec, cfg, extra, data_params = settings(params_path, config, seed)
    check_live(live)  # before any work: a bad --live or DARTS_LIVE_EVERY is one line
    device = machine(device, threads)  # stages.common: --device/--threads, else DARTS_DEVICE/DARTS_THREADS
    retain_freed_memory()  # darts.nn.fast.hostmemory: each step's activations are not faulted in afresh
    train_set = load_prepared(prepared, "train")
    split_seed = int(data_params.get("seed", 0))
    meta = Path(prepared) / "meta.json"
    recorded = json.loads(meta.read_text()).get("split_seed", split_seed) if meta.is_file() else split_seed
    if recorded != split_seed:  # dvc.yaml's search stages see data params through data/prepared only
        raise ParamsError(f"prepared data {prepared} was made with data.seed={recorded} but params say "
                          f"data.seed={split_seed}; rerun `darts prepare-split`")
    searcher, split, evaluation = build(spec, cfg, extra, train_set, device, split_seed)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = {"params": as_recorded(params_path), "config": config, "seed": seed, "prepared": as_recorded(prepared)}
    state_file = checkpoint_path("search", run_key(spec, cfg, extra, data_params, prepared), out_dir, command)
    progress = Progress(f"search {spec.label} seed {spec.seed}", cfg.epochs, out_dir / "log.txt")
    with guarded(state_file, out_dir, CHECKPOINT_ROOT) as stop:
        saved = ckpt.load(state_file) if state_file.is_file() else None
        metrics = LiveLog(live, rows=(saved or {}).get("live"))
        if saved is not None:
            searcher.load_state_dict(saved)
            progress.line(f"resuming from {state_file} at epoch {searcher.epoch}/{cfg.epochs}, step {searcher.step}")
        else:
            progress.line(f"search {spec.label} ({spec.method}: {spec.activation}, {spec.schedule}, {spec.regularization}, "
                          f"order {spec.order}) seed {spec.seed} on {device_label(device)}; split {split}")

        def on_step(i: int, n: int, loss) -> None:
            progress.step(i, n, loss)
            if metrics.due(searcher.step) and i < n:  # an epoch's last step: its curve row follows
                metrics.log(searcher.step, {"train_loss_running": searcher.running_loss()})
            fault_injection(searcher.step, searcher.net)

        def save() -> None:
            ckpt.save_atomic({**searcher.state_dict(), "live": metrics.rows()}, state_file)

        def stopped() -> None:
            save()
            progress.line(f"stopped by signal {stop.signum} at step {searcher.step}; checkpoint saved to "
                          f"{state_file}; run the same command (or dvc repro) to resume")

        def end_epoch(row: dict) -> None:
            progress.end_epoch(row, ("train_loss", "train_acc", "val_loss", "alpha_ratio", "penalty"))
            metrics.log(searcher.step, curve_row(row))
            if searcher.epoch % extra["checkpoint_every"] == 0 or searcher.done:
                save()

        run_epochs(searcher, lambda should_stop: searcher.run_epoch(on_step=on_step, should_stop=should_stop),
                   stop.is_set, progress, end_epoch, stopped)
    # a method that trains no supernet has nothing to evaluate (its val_acc stays null)
    final = ({} if evaluation is None else
             evaluate_supernet(searcher.net, *(stream.epoch_batches() for stream in evaluation)))
    net = searcher.net
    ckpt.save_atomic({"state": net.state_dict(), "ops": list(net.ops), "activation": spec.activation,
                      "C": extra["C"], "layers": extra["layers"], "n_classes": len(train_set.classes),
                      "tie_break": extra["tie_break"]},  # discretize breaks Π_S's ties by the same rule
                     out_dir / "supernet.pt")
    ckpt.save_atomic(searcher.history.state_dict(), out_dir / "history.pt")
    summary = {
        "run": asdict(spec),
        "split": split,
        "device": device_label(device),
        "search_seconds": searcher.seconds,
        "search_gpu_days": searcher.seconds / 86400.0,
        "epochs": searcher.history.epochs,
        "alpha_steps": len(searcher.history.alpha_steps) - 1,
        "w_steps": searcher.step,
        "alpha_ratio": (len(searcher.history.alpha_steps) - 1) / max(searcher.step, 1),
        "pruned_ops": len(searcher.history.pruned),
        "tie_break": extra["tie_break"],
        "ties": final_ties(net, extra["tie_break"]),  # Π_S choices at the final α that a tie decided
        **final,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_curve(searcher.history.epochs, out_dir / "epochs.tsv")
    # the run's totals (prefixed as in runs.csv: `alpha_steps` alone is the per-epoch count above)
    metrics.log(searcher.step, {f"search_{k}": summary.get(k, final.get(k))
                                for k in ("val_acc", "w_steps", "alpha_steps", "pruned_ops")})
    ckpt.write_json_atomic(summary, out_dir / "search.json")
    progress.line(f"done in {searcher.seconds:.1f}s: val_acc {final.get('val_acc', float('nan')):.3f}, "
                  f"α steps {summary['alpha_steps']} / w steps {summary['w_steps']}; Π_S choices decided by a "
                  f"tie ({extra['tie_break']}): {summary['ties']}")
    progress.close()
    drop_checkpoint(state_file)
    return summary
