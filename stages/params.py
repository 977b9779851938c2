"""Reading and validating params.yaml: the study matrix, the variant run, the sections.

Every command validates what it reads before doing any work, and every error is one
line naming the bad value and the valid ones (raised as ParamsError, printed by the CLI).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from darts.method.activations import ACTIVATIONS as ACTIVATION_TYPES
from darts.method.registry import METHODS
from darts.method.regularizers import REGULARIZER_TYPES
from darts.method.schedules import SCHEDULE_TYPES

DATASETS = ("synthetic", "cifar10", "imagefolder")
#: data.normalize: auto = CIFAR's constants for cifar10, the training split's own statistics otherwise
NORMALIZE = ("auto", "cifar", "dataset")
MIN_SIDE = 8  # the smallest image side the networks take (two reductions leave 2 pixels)
#: the keys of a run description: a method, the four dimensions, and the options a method
#: adds (darts.method.registry: `fixed` takes `genotype`)
RUN_KEYS = ("method", "activation", "schedule", "regularization", "order",
            *dict.fromkeys(k for m in METHODS.values() for k in m.options))
# the registries themselves (dicts: `in` and iteration see their names), so a component
# registered after import (a user's own, a test's) is valid at once
DIMENSION_CHOICES = {"activation": ACTIVATION_TYPES, "schedule": SCHEDULE_TYPES, "regularization": REGULARIZER_TYPES,
                     "order": (1, 2)}


class ParamsError(ValueError):
    """Bad params.yaml content (one-line message)."""


@dataclass(frozen=True)
class RunSpec:
    """One search run: a point of activation × schedule × regularization × order, and a seed."""

    name: str
    label: str
    activation: str
    schedule: str
    regularization: str
    order: int
    seed: int
    method: str = "darts"  # darts.method.registry.METHODS: what searches (or samples) the genotype
    options: tuple[tuple[str, object], ...] = ()  # the method's own config keys (fixed: genotype)


def load_params(path: str | Path = "params.yaml") -> dict:
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"params file {p} does not exist; run from the project root or pass --params")
    try:
        params = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"params file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"params file {p} must hold a mapping, got {type(params).__name__}")
    return params


def _choice(where: str, value, valid: tuple) -> None:
    if value not in valid:
        raise ParamsError(f"{where}={value!r} is invalid; valid: {', '.join(map(str, valid))}")


def _int(where: str, value, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ParamsError(f"{where}={value!r} is invalid; must be an integer >= {minimum}")
    return value


def check_run(where: str, entry: dict) -> None:
    """Validate one run description (a `configs` entry or the top-level variant keys): its
    method (default darts) and the dimensions that method takes (darts.method.registry)."""
    if not isinstance(entry, dict):
        raise ParamsError(f"{where} must be a mapping with keys {', '.join(RUN_KEYS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(RUN_KEYS))
    if unknown:
        raise ParamsError(f"{where} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(RUN_KEYS)}")
    _choice(f"{where}.method", entry.get("method", "darts"), tuple(METHODS))
    method = METHODS[entry.get("method", "darts")]
    takes = ("method", *method.dimensions, *method.options)
    extra = [k for k in entry if k not in takes]
    if extra:
        raise ParamsError(f"{where} sets {', '.join(extra)}, which method {method.name!r} does not take; "
                          f"valid keys for it: {', '.join(takes)}")
    for key in (*method.dimensions, *method.options):
        if key not in entry and key not in method.optional:
            raise ParamsError(f"{where} is missing {key!r}; valid keys: {', '.join(takes)}")
        if key in DIMENSION_CHOICES:
            _choice(f"{where}.{key}", entry.get(key, 1), DIMENSION_CHOICES[key])
    for key, check in method.options.items():
        try:
            check(entry[key])
        except ValueError as e:
            raise ParamsError(f"{where}.{key}: {e}") from None


def resolve_run(entry: dict) -> dict:
    """The method and all four dimensions of a checked run entry (the method fixes those it
    does not take)."""
    method = METHODS[entry.get("method", "darts")]
    dims = {"order": 1, **method.fixed, **{k: entry[k] for k in method.dimensions if k in entry}}
    return {"method": method.name, **{k: dims[k] for k in DIMENSION_CHOICES},
            "options": tuple((k, entry[k]) for k in method.options)}


def study_runs(params: dict) -> list[RunSpec]:
    """Every config × seed of the study, validated."""
    configs = params.get("configs")
    if not isinstance(configs, dict) or not configs:
        raise ParamsError("params.configs must be a non-empty mapping of NAME: {method, activation, schedule, regularization}")
    seeds = params.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise ParamsError(f"params.seeds={seeds!r} is invalid; must be a non-empty list of integers")
    for s in seeds:
        _int("seeds[]", s)
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"params.seeds={seeds!r} has duplicates")
    return [run_spec(params, name, seed) for name in configs for seed in seeds]


def run_spec(params: dict, config: str | None, seed: int | None) -> RunSpec:
    """The run of `--config NAME --seed N`, or the variant run (top-level keys) when config is None."""
    if config is None:
        entry = {k: params[k] for k in RUN_KEYS if k in params}
        _choice("params.method", entry.get("method", "darts"), tuple(METHODS))
        method = METHODS[entry.get("method", "darts")]
        # the variant keys sit side by side at the top level: the method takes those it needs
        entry = {k: v for k, v in entry.items() if k in ("method", *method.dimensions, *method.options)}
        check_run("params", entry)
        seed = _int("seed", params.get("seed", 0) if seed is None else seed)
        run = resolve_run(entry)
        name = (f"{run['activation']}-{run['schedule']}-{run['regularization']}" if method.dimensions
                else method.name)
        label = name
    else:
        configs = params.get("configs") or {}
        if config not in configs:
            raise ParamsError(f"config {config!r} is not in params.configs; valid: {', '.join(configs) or '(none)'}")
        if not config.isidentifier():
            raise ParamsError(f"config name {config!r} is invalid; use identifiers (letters, digits, _)")
        entry = configs[config]
        check_run(f"configs.{config}", entry)
        seed = _int("seed", 0 if seed is None else seed)
        name = config
        label = (params.get("labels") or {}).get(config, config)
    run = resolve_run(entry)
    return RunSpec(name=name, label=str(label), activation=run["activation"], schedule=run["schedule"],
                   regularization=run["regularization"], order=int(run["order"]), seed=seed, method=run["method"],
                   options=run["options"])


def section(params: dict, key: str) -> dict:
    value = params.get(key)
    if not isinstance(value, dict):
        raise ParamsError(f"params.{key} must be a mapping, got {value!r}")
    return dict(value)


def check_data(d: dict) -> dict:
    _choice("data.dataset", d.get("dataset"), DATASETS)
    for key in ("train_size", "test_size"):
        if d.get(key) is not None:
            _int(f"data.{key}", d[key], 1)
    image_size(d)
    _choice("data.normalize", d.get("normalize", "auto"), NORMALIZE)
    _int("data.seed", d.get("seed", 0))
    if d["dataset"] in ("imagefolder",) and not d.get("root"):
        raise ParamsError("data.root is required for dataset=imagefolder; give the folder with train/ and test/")
    return d


def image_size(d: dict) -> tuple[int, int]:
    """data.image_size as (height, width): one side for square images, or [height, width]."""
    v = d.get("image_size", 32)
    valid = f"valid: an integer >= {MIN_SIDE} (square) or [height, width], each >= {MIN_SIDE}"
    if isinstance(v, list) and len(v) == 2:
        sides = v
    elif isinstance(v, int) and not isinstance(v, bool):
        sides = [v, v]
    else:
        raise ParamsError(f"data.image_size={v!r} is invalid; {valid}")
    if any(isinstance(x, bool) or not isinstance(x, int) or x < MIN_SIDE for x in sides):
        raise ParamsError(f"data.image_size={v!r} is invalid; {valid}")
    return int(sides[0]), int(sides[1])


def normalize_mode(d: dict) -> str:
    """data.normalize resolved: "cifar" (CIFAR-10's published constants) or "dataset"
    (computed from the training split at prepare-split)."""
    mode = d.get("normalize", "auto")
    return ("cifar" if d["dataset"] == "cifar10" else "dataset") if mode == "auto" else mode


def positive(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ParamsError(f"{where}={value!r} is invalid; must be a positive number")
    return float(value)
