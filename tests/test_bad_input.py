"""Bad input: every case gets a one-line error naming the bad value, exit code 2, and no
output passed off as a result. Runs the real `darts` CLI in-process (typer's runner)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import assert_one_line_error as _assert_one_line_error, tiny_params
from stages.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prepared")
    p = d / "params.yaml"
    p.write_text(yaml.safe_dump(tiny_params()))
    r = runner.invoke(app, ["prepare-split", "--params", str(p), "--out", str(d / "data")])
    assert r.exit_code == 0, r.output
    return d / "data"


def _invoke(tmp_path: Path, params: dict, args: list[str]):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    return runner.invoke(app, [*args, "--params", str(p)])


def _set(p: dict, path: str, value) -> dict:
    keys = path.split(".")
    node = p
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return p


SEARCH_CASES = [  # (params path, bad value, words the message must contain)
    ("configs.DARTS.activation", "tanh", ["tanh", "softmax, crb, sigmoid"]),
    ("configs.DARTS.schedule", "weekly", ["weekly", "alternate, constant, fimt"]),
    ("configs.DARTS.regularization", "l1", ["l1", "none, pr, admm, zero_one"]),
    ("configs.DARTS.order", 3, ["order=3", "1", "2"]),
    ("configs.DARTS.colour", "red", ["colour", "valid keys"]),
    ("search.epochs", 0, ["search.epochs=0", "positive integer"]),
    ("search.batch_size", -4, ["search.batch_size=-4", "positive integer"]),
    ("search.w_lr", 0, ["search.w_lr=0", "positive"]),
    ("search.alpha_lr", -1e-3, ["search.alpha_lr=-0.001", "positive"]),
    ("search.w_momentum", 1.5, ["search.w_momentum=1.5", "[0, 1)"]),
    ("search.k", 0, ["search.k=0", "positive integer"]),
    ("search.fimt_m", 1.0, ["search.fimt_m=1.0", "> 1"]),
    ("search.fimt_lambda", 1.5, ["search.fimt_lambda=1.5", "(0, 1]"]),
    ("search.fimt_lambda", 0, ["search.fimt_lambda=0", "(0, 1]"]),
    ("search.admm_discount", 0, ["search.admm_discount=0", "(0, 1]"]),
    ("search.admm_n", 0, ["search.admm_n=0", "positive integer"]),
    ("search.pr_rho", -0.1, ["search.pr_rho=-0.1", "positive"]),
    ("search.C", 5, ["search.C=5", "even"]),
    ("search.layers", 2, ["search.layers=2", ">= 3"]),
    ("search.device", "tpu", ["search.device='tpu'", "machine setting", "DARTS_DEVICE"]),
    ("search.learning_rate", 0.1, ["learning_rate", "valid"]),
    ("search.batch_size", 100000, ["search.batch_size=100000", "larger than"]),
    ("data.dataset", "mnist", ["mnist", "synthetic, cifar10, imagefolder"]),
]


@pytest.mark.parametrize("path,value,needles", SEARCH_CASES, ids=[f"{c[0]}={c[1]}" for c in SEARCH_CASES])
def test_search_rejects(tmp_path, prepared, path, value, needles):
    params = _set(tiny_params(), path, value)
    out = tmp_path / "out"
    r = _invoke(tmp_path, params, ["search", "--config", "DARTS", "--seed", "0", "--prepared", str(prepared),
                                   "--out", str(out)])
    _assert_one_line_error(r, *needles)
    assert not (out / "search.json").exists() and not (out / "supernet.pt").exists()


def test_unknown_config_name(tmp_path, prepared):
    r = _invoke(tmp_path, tiny_params(), ["search", "--config", "NOPE", "--prepared", str(prepared), "--out",
                                          str(tmp_path / "o")])
    _assert_one_line_error(r, "NOPE", "DARTS")


def test_variant_keys_validated(tmp_path, prepared):
    r = _invoke(tmp_path, _set(tiny_params(), "activation", "relu"), ["search", "--prepared", str(prepared),
                                                                      "--out", str(tmp_path / "o")])
    _assert_one_line_error(r, "relu", "softmax, crb")


def test_empty_seeds_rejected_by_aggregate(tmp_path):
    r = _invoke(tmp_path, _set(tiny_params(), "seeds", []), ["aggregate", "--metrics", str(tmp_path / "m"),
                                                             "--out", str(tmp_path / "rep")])
    _assert_one_line_error(r, "seeds")
    assert not (tmp_path / "rep" / "table1.md").exists()


def test_missing_metrics_named(tmp_path):
    r = _invoke(tmp_path, tiny_params(), ["aggregate", "--metrics", str(tmp_path / "m"), "--out", str(tmp_path / "r")])
    _assert_one_line_error(r, "metrics file", "DARTS")


@pytest.mark.parametrize("path,value,needles", [
    ("retrain.epochs", 0, ["retrain.epochs=0"]),
    ("retrain.lr", -1.0, ["retrain.lr"]),
    ("retrain.C", 7, ["retrain.C=7", "even"]),
    ("retrain.drop_path_prob", 1.5, ["retrain.drop_path_prob"]),
])
def test_retrain_rejects(tmp_path, prepared, path, value, needles):
    g = tmp_path / "genotype.json"
    from darts.space.primitives import DARTS_V2

    g.write_text(DARTS_V2.to_json())
    r = _invoke(tmp_path, _set(tiny_params(), path, value), ["retrain", "--config", "DARTS", "--genotype", str(g),
                                                             "--prepared", str(prepared), "--out", str(tmp_path / "o")])
    _assert_one_line_error(r, *needles)
    assert not (tmp_path / "o" / "model.pt").exists()


@pytest.mark.parametrize("mutate,needles", [
    (lambda g: g["normal"].__setitem__(0, ["none", 0]), ["none", "not allowed"]),
    (lambda g: g["normal"].__setitem__(1, ["sep_conv_3x3", 0]), ["both edges", "state 0"]),
    (lambda g: g["reduce"].__setitem__(0, ["conv_9x9", 0]), ["conv_9x9", "valid ops"]),
    (lambda g: g["normal"].pop(), ["7 (op, source) pairs", "expected 8"]),
    (lambda g: g["reduce"].__setitem__(2, ["skip_connect", 7]), ["source 7", "valid sources"]),
])
def test_bad_genotype_file(tmp_path, prepared, mutate, needles):
    from darts.space.primitives import DARTS_V2

    g = json.loads(DARTS_V2.to_json())
    mutate(g)
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(g))
    r = _invoke(tmp_path, tiny_params(), ["retrain", "--config", "DARTS", "--genotype", str(path), "--prepared",
                                          str(prepared), "--out", str(tmp_path / "o")])
    _assert_one_line_error(r, str(path), *needles)


def _imagefolder_params(root: Path) -> dict:
    p = tiny_params()
    p["data"].update({"dataset": "imagefolder", "root": str(root)})
    return p


def _write_images(folder: Path, classes: list[str], n: int = 3) -> None:
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 10, 200)).save(folder / c / f"{i}.png")


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "corrupt", "no_root"])
def test_bad_dataset_folder(tmp_path, case):
    root = tmp_path / "ds"
    needles: list[str]
    if case == "missing":
        needles = [str(root / "train"), "does not exist"]
    elif case == "empty":
        (root / "train").mkdir(parents=True)
        needles = [str(root / "train")]
    elif case == "one_class":
        _write_images(root / "train", ["cat"])
        needles = ["1 class", "cat"]
    elif case == "corrupt":
        _write_images(root / "train", ["cat", "dog"])
        (root / "train" / "dog" / "9.png").write_bytes(b"this is not a png")
        needles = ["9.png"]
    else:
        needles = ["data.root", "imagefolder"]
    params = _imagefolder_params(root)
    if case == "no_root":
        params["data"]["root"] = None
    out = tmp_path / "prep"
    r = _invoke(tmp_path, params, ["prepare-split", "--out", str(out)])
    _assert_one_line_error(r, *needles)
    assert not (out / "train.pt").exists()


def test_split_leaving_empty_validation(tmp_path, prepared):
    params = tiny_params()
    params["configs"]["DARTS"]["schedule"] = "constant"
    params["search"]["k"] = 100000
    r = _invoke(tmp_path, params, ["search", "--config", "DARTS", "--prepared", str(prepared), "--out", str(tmp_path / "o")])
    _assert_one_line_error(r, "train_fraction")


def test_missing_params_file(tmp_path):
    r = runner.invoke(app, ["aggregate", "--params", str(tmp_path / "nope.yaml")])
    _assert_one_line_error(r, "nope.yaml", "does not exist")


def test_scale_unknown(tmp_path):
    r = _invoke(tmp_path, tiny_params(), ["scale", "huge"])
    _assert_one_line_error(r, "huge", "paper", "quick")


def _darts_text(old: str = "", new: str = "") -> str:
    from darts.space.primitives import DARTS_V2

    return DARTS_V2.to_darts_text().replace("[2, 3, 4, 5]", "range(2, 6)").replace(old, new, 1)


FORMS = "--genotype takes a genotype.json file"  # every --genotype error ends with the accepted forms
GENOTYPE_ARG_CASES = {  # name -> (how to build the --genotype argument in tmp_path, words the message must contain)
    "missing_path": (lambda d: str(d / "nope" / "genotype.json"), ["nope/genotype.json", "neither an existing file"]),
    "too_long_string": (lambda d: "x" * 5000, ["xxxx … xxxx", "neither an existing file"]),
    "empty_string": (lambda d: "", ["''", "empty"]),
    "directory": (lambda d: str(d), ["is a directory"]),
    "invalid_json_file": (lambda d: _file(d / "genotype.json", '{"normal": [["sep_conv_3x3", 0],'),
                          ["genotype.json", "invalid JSON"]),
    "empty_file": (lambda d: _file(d / "genotype.txt", "\n"), ["genotype.txt", "is empty"]),
    "not_a_genotype_file": (lambda d: _file(d / "genotype.txt", "hello"), ["'hello'", "neither a JSON genotype"]),
    "text_file_unknown_op": (lambda d: _file(d / "genotype.txt", _darts_text("dil_conv_3x3", "conv_9x9")),
                             ["genotype.txt", "'conv_9x9'", "valid ops: max_pool_3x3"]),
    "inline_unknown_op": (lambda d: _darts_text("dil_conv_3x3", "conv_9x9"),
                          ["--genotype text \"Genotype(normal=", "'conv_9x9'", "valid ops: max_pool_3x3"]),
    "inline_wrong_node_count": (lambda d: _darts_text("('sep_conv_3x3', 0), ", ""), ["normal has 7", "expected 8"]),
    "inline_none_op": (lambda d: _darts_text("('sep_conv_3x3', 1)", "('none', 1)"), ["'none'", "not allowed"]),
    "inline_same_source": (lambda d: _darts_text("('sep_conv_3x3', 1)", "('sep_conv_3x3', 0)"),
                           ["both edges", "state 0"]),
    "inline_bad_concat": (lambda d: _darts_text("range(2, 6)", "range(2, 7)"), ["normal_concat", "[2, 3, 4, 5]"]),
    "inline_not_literal": (lambda d: _darts_text("[", "[__import__('os').getcwd(), ", ), ["not a literal"]),
    "inline_invalid_json": (lambda d: '{"normal": ', ["--genotype text", "invalid JSON"]),
}


def _file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(GENOTYPE_ARG_CASES))
def test_bad_genotype_argument(tmp_path, prepared, case):
    build, needles = GENOTYPE_ARG_CASES[case]
    arg = build(tmp_path)
    out = tmp_path / "o"
    r = _invoke(tmp_path, tiny_params(), ["retrain", "--config", "DARTS", "--genotype", arg, "--prepared",
                                          str(prepared), "--out", str(out)])
    _assert_one_line_error(r, *needles, FORMS, "inline")
    assert len(r.output) < 1200, r.output  # a 5000-character argument is shortened, not echoed
    assert not (out / "model.pt").exists()
