"""`darts check-params`: validate every value of params.yaml before any stage runs.

DVC deletes a stage's outputs just before it runs the stage, and runs independent stages
one after another: when each stage validated only its own section, a typo
(`activation: crbb`, `schedule: fimtt`) surfaced only when its stage came up, after other
stages had run for minutes and after that stage's previous outputs were gone. This
stage depends on the whole of params.yaml and every other stage depends on its output,
so DVC runs it first and stops on its error before touching anything.

Its output (`data/params.ok`) holds a fixed text, so rerunning it after an edit never
invalidates a downstream stage: only the stages whose own params changed rerun.
"""
from __future__ import annotations

from pathlib import Path

from darts.method.registry import METHODS

from .params import (RUN_KEYS, ParamsError, check_data, load_params, run_spec, section, study_runs)
from .scales import VARIANT_DEFAULTS

#: the top-level keys of params.yaml (anything else is a typo, e.g. `serach:`)
TOP_KEYS = (*RUN_KEYS, "seed", "configs", "labels", "scale", "seeds", "data", "search", "retrain")
#: what the gate writes; constant, so that downstream stages do not rerun when it does
OK_TEXT = "params.yaml validated by `darts check-params`\n"
#: CIFAR-10's training set size, for checking search batch sizes when data.train_size is null
FULL_TRAIN_SIZE = {"cifar10": 50_000, "synthetic": 2000}


def validate(params: dict) -> int:
    """Check the study (configs × seeds), the variant run and every section; return the
    number of runs checked. Raises ParamsError with the first bad value."""
    from darts.data import split_indices
    from darts.method.interfaces import configured
    from darts.method.schedules import SCHEDULE_TYPES, train_fraction

    from .retrain import retrain_settings
    from .search import search_settings

    unknown = sorted(set(params) - set(TOP_KEYS))
    if unknown:
        raise ParamsError(f"params.yaml has unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(TOP_KEYS)}")
    missing = [k for k in VARIANT_DEFAULTS if k not in params]
    if missing:  # dvc.yaml's variant-search lists them: DVC would stop on a missing param, less clearly
        raise ParamsError(f"params.yaml lacks the top-level key(s) {', '.join(missing)} of the variant chain; add "
                          + ", ".join(f"`{k}: {'null' if v is None else v}`" for k, v in VARIANT_DEFAULTS.items()
                                      if k in missing) + " (or run `darts scale NAME`, which adds them)")
    labels = params.get("labels") or {}
    if not isinstance(labels, dict):
        raise ParamsError(f"params.labels={labels!r} is invalid; must be a mapping of config name: display label")
    stray = sorted(set(labels) - set(params.get("configs") or {}))
    if stray:
        raise ParamsError(f"params.labels names unknown config(s) {', '.join(map(str, stray))}; "
                          f"valid: {', '.join(params.get('configs') or {})}")
    data = check_data(section(params, "data"))
    if data["dataset"] == "imagefolder":
        for part in ("train", "test"):
            if not (Path(data["root"]) / part).is_dir():
                raise ParamsError(f"data.root={data['root']!r} has no {part}/ folder; "
                                  "give a folder with train/<class>/ and test/<class>/ images")
    retrain_settings(params)
    specs = [*study_runs(params), run_spec(params, None, None)]
    n_train = data.get("train_size") or FULL_TRAIN_SIZE.get(data["dataset"])
    for spec in specs:
        cfg, extra = search_settings(params, spec)
        if n_train is None or not METHODS[spec.method].trains_supernet:
            continue  # an ImageFolder of unknown size: the search stage checks the split itself
        schedule = configured(SCHEDULE_TYPES, spec.schedule, extra, "schedule")
        frac = train_fraction(schedule.ratio)
        tr, va = split_indices(int(n_train), frac, int(data.get("seed", 0)))
        smallest = min(len(tr), len(va))
        if cfg.batch_size > smallest:
            raise ParamsError(f"search.batch_size={cfg.batch_size} is larger than the smaller part of "
                              f"{spec.name}'s search split ({smallest} of {n_train} images at train fraction "
                              f"{frac:.4f}); lower the batch size or raise data.train_size")
    return len(specs)


def run(params_path: str, out: str) -> int:
    n = validate(load_params(params_path))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OK_TEXT)
    return n
