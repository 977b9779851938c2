"""The package layout the README's Layout section describes: darts/ in subpackages with no
import cycle (lazy imports inside functions count too: a deferred import hides a cycle, it
does not remove it), and the science apart from the command layer."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DARTS = ROOT / "darts"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, anywhere in it (absolute names, relative ones resolved)."""
    name, found = module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in DARTS.rglob("*.py")}
    return {m: {d for d in imports(p) if d in mods and d != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = "open"
        for v in sorted(g[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, [*path, v])
        state[u] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_darts_has_no_import_cycle():
    assert cycles(graph()) == []


def test_darts_is_in_subpackages_and_every_module_imports():
    top = sorted(p.name for p in DARTS.iterdir() if p.suffix == ".py" and p.name != "__init__.py")
    assert top == ["inference.py"], "darts/ keeps its modules in subpackages (README: Layout)"
    for name in graph():
        importlib.import_module(name)


def test_the_science_knows_nothing_of_the_command_layer():
    outside = {"stages", "typer", "dvc", "dvclive", "submitit"}
    hits = {m: sorted(d for d in imports(p) if d.split(".")[0] in outside)
            for p in DARTS.rglob("*.py") for m in [module_name(p)]}
    assert {m: h for m, h in hits.items() if h} == {}
