"""`darts scale quick|paper`: rewrite params.yaml's scale sections from a preset.

The variant keys are kept; `seeds`, `data`, `search` and `retrain` are replaced by the
preset in `stages/scales/<name>.yaml`, and so are `configs` and `labels` when the preset
names its own study (cifar-cpu is sized for its 7 rows). `--root` naming a folder with
`train/` in it means an ImageFolder tree (such as a JPEG export of CIFAR-10).

Study sets (`stages/sets/<name>.yaml`: configs and labels) are switched on or off on top of
the preset: `related`, the related-work rows, is what a preset's `related: true|false` says
(paper: on; quick, cifar-cpu: off) unless `--related/--no-related` says otherwise; likewise
`calibration`, the published DARTS_V2 cell retrained with the study's protocol. On adds the
set's configs and labels after the study's own (an existing config of the same name is kept);
off removes them. The other configs are untouched, so their stages keep their DVC hashes. Then
`cost_report` says what `dvc repro` at the new scale costs on this device, from steps
measured here (`stages.estimate`): a preset alone does not tell a CPU user that the
paper's protocol would take years there.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .params import DATASETS, ParamsError, load_params

SCALES_DIR = Path(__file__).resolve().parent / "scales"
SETS_DIR = Path(__file__).resolve().parent / "sets"
#: study sets a preset (or the command line) switches on or off: preset key -> set file stem
SET_SWITCHES = {"related": "related", "calibration": "calibration"}
SCALE_KEYS = ("seeds", "data", "search", "retrain")
#: top-level keys the variant chain's search stage lists as params (DVC needs them present)
VARIANT_DEFAULTS = {"method": "darts", "genotype": None}
STUDY_KEYS = ("configs", "labels")  # a preset may also name its study (cifar-cpu: the 7 rows it is sized for)
HEADER = """\
# Study parameters. `configs` x `seeds` is the Table 1 study (dvc.yaml expands it);
# the top-level method/activation/schedule/regularization/order/seed (and genotype, for
# method fixed) drive the single variant chain under current/ (dvc exp run -S activation=crb).
# Switch scale with `darts scale quick` / `darts scale paper` (rewrites this file).
"""


def preset(name: str) -> dict:
    valid = sorted(p.stem for p in SCALES_DIR.glob("*.yaml"))
    if name not in valid:
        raise ParamsError(f"scale {name!r} is unknown; valid: {', '.join(valid)}")
    return yaml.safe_load((SCALES_DIR / f"{name}.yaml").read_text())


def study_set(name: str) -> dict:
    """A study set's configs and labels (``stages/sets/<name>.yaml``)."""
    return yaml.safe_load((SETS_DIR / f"{name}.yaml").read_text())


def switch_set(params: dict, name: str, on: bool) -> dict:
    """``params`` with study set ``name``'s configs and labels added (on) or removed (off)."""
    s = study_set(name)
    out = dict(params)
    configs, labels = dict(out.get("configs") or {}), dict(out.get("labels") or {})
    for key, entry in s["configs"].items():
        if on:
            configs.setdefault(key, entry)
            if key in s.get("labels", {}):
                labels.setdefault(key, s["labels"][key])
        else:
            configs.pop(key, None)
            labels.pop(key, None)
    out["configs"], out["labels"] = configs, labels
    return out


def apply(name: str, params_path: str, dataset: str | None = None, root: str | None = None,
          sets: dict[str, bool] | None = None) -> dict:
    """Rewrite ``params_path`` at scale ``name``; ``sets`` (switch -> on/off) overrides the
    preset's study-set switches (``SET_SWITCHES``)."""
    params = load_params(params_path)
    p = preset(name)
    switches = {key: bool(p.pop(key, False)) for key in SET_SWITCHES}
    switches.update(sets or {})
    if dataset is not None:
        if dataset not in DATASETS:
            raise ParamsError(f"--dataset {dataset!r} is invalid; valid: {', '.join(DATASETS)}")
        p["data"]["dataset"] = dataset
    if root is not None:
        p["data"]["root"] = root
        if dataset is None and (Path(root) / "train").is_dir():  # an ImageFolder tree, not torchvision's files
            p["data"]["dataset"] = "imagefolder"
            p["data"].pop("download", None)
    replaced = SCALE_KEYS + tuple(k for k in STUDY_KEYS if k in p)
    out = {k: v for k, v in params.items() if k not in replaced}
    for key, default in VARIANT_DEFAULTS.items():  # a file from before they were listed gets them
        out.setdefault(key, default)
    out["scale"] = name
    out.update(p)
    for key, on in switches.items():
        out = switch_set(out, SET_SWITCHES[key], on)
    Path(params_path).write_text(HEADER + dump(out))
    return out


def cost_report(params: dict, steps: int = 2) -> str:
    """The measured cost table of a study at ``params`` (torch is imported only here)."""
    from . import estimate

    try:
        return estimate.estimate(params, steps)
    except (RuntimeError, MemoryError) as e:  # out of (GPU) memory at these sizes, most likely
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        return f"cannot time a step at these sizes on this device ({reason}); the study cannot run here either"


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: `seeds: [0, 1]` but one key per line elsewhere."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump(params: dict) -> str:
    """YAML with one line per config entry and block mappings elsewhere (readable diffs)."""
    parts = []
    for key, value in params.items():
        if key == "configs" and isinstance(value, dict):
            parts.append("configs:\n" + "".join(
                f"  {name}: {yaml.safe_dump(entry, default_flow_style=True, sort_keys=False).strip()}\n"
                for name, entry in value.items()))
        else:
            parts.append(yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000))
    return "".join(parts)
