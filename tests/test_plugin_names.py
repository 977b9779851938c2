"""The command layer asks components what they can do; it never compares their names.

The guide's rule for plug-ins (darts/loops/search.py's loop asks `alpha_step_due`, `needs_fisher`,
`penalty`): a new activation, schedule, regularizer or method is added in its own module and
the registry, and no `if x == "crb"` elsewhere has to learn about it. This scans the stages'
syntax trees for a comparison with a component's name.
"""
from __future__ import annotations

import ast
from pathlib import Path

from darts.method.activations import ACTIVATIONS
from darts.method.registry import METHODS
from darts.method.regularizers import REGULARIZERS
from darts.method.schedules import SCHEDULES

NAMES = set(ACTIVATIONS) | set(SCHEDULES) | set(REGULARIZERS) | set(METHODS)
STAGES = Path(__file__).resolve().parents[1] / "stages"
DARTS = STAGES.parent / "darts"
#: the registries' own modules, where a component is defined under its name
COMPONENT_MODULES = {"method/activations.py", "method/schedules.py", "method/regularizers.py", "method/registry.py"}
#: names that mean something else in these modules: the op `none` (a primitive of the space,
#: not the regularizer or schedule `none`), and "darts" as a genotype text form or as the
#: BatchNorm-statistics mode of second order (not the method)
OTHER_MEANING = {"space/primitives.py": {"none"}, "space/projection.py": {"none"}, "nn/supernet.py": {"none"},
                 "space/parse.py": {"darts"}, "method/unrolled.py": {"darts"}}


def name_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, name) of every ==, !=, in, not in with a component name as a constant operand."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and all(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            for side in (node.left, *node.comparators):
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                for c in consts:
                    if isinstance(c, ast.Constant) and c.value in NAMES:
                        found.append((node.lineno, c.value))
    return found


def test_the_scan_finds_a_name_comparison():
    assert name_comparisons("if spec.activation == 'crb':\n    pass\n") == [(1, "crb")]
    assert name_comparisons("x = s.schedule in ('fimt', 'other')\n") == [(1, "fimt")]
    assert name_comparisons("if spec.prunes:\n    pass\n") == []


def test_no_stage_compares_a_component_name():
    hits = {p.name: name_comparisons(p.read_text()) for p in sorted(STAGES.glob("*.py"))}
    assert {k: v for k, v in hits.items() if v} == {}


def test_nothing_in_darts_outside_a_component_compares_its_name():
    """The science asks capabilities too (``search_ops("crb")`` used to pick CRB's ops by name:
    each activation now names its own ``ops``)."""
    hits = {}
    for p in sorted(DARTS.rglob("*.py")):
        rel = p.relative_to(DARTS).as_posix()
        if rel not in COMPONENT_MODULES:
            found = [(line, n) for line, n in name_comparisons(p.read_text()) if n not in OTHER_MEANING.get(rel, ())]
            if found:
                hits[rel] = found
    assert hits == {}
