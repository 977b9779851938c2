"""The DARTS CIFAR search space: op names, cell topology and the Genotype.

A cell has two input states (0 and 1: the outputs of the two previous cells) and
``N_NODES`` intermediate nodes; intermediate node ``i`` (state ``i + 2``) receives one
edge from every earlier state, giving 2 + 3 + 4 + 5 = 14 edges. Edges are ordered node
by node, sources ascending, exactly as in the original DARTS code, so α rows line up
with every other DARTS implementation.
"""
from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass, field

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
N_NODES = 4
#: the two cells of a DARTS network, in the order of their α (SearchNetwork.arch_parameters())
CELL_TYPES = ("normal", "reduce")
N_INPUTS = 2
CONCAT = tuple(range(N_INPUTS, N_INPUTS + N_NODES))  # (2, 3, 4, 5)


def edges(n_nodes: int = N_NODES) -> list[tuple[int, int]]:
    """(destination node, source state) for every edge, in α row order."""
    return [(i, j) for i in range(n_nodes) for j in range(N_INPUTS + i)]


def node_edge_rows(n_nodes: int = N_NODES) -> list[list[int]]:
    """For each intermediate node, the α rows of its incoming edges."""
    rows: list[list[int]] = [[] for _ in range(n_nodes)]
    for r, (i, _) in enumerate(edges(n_nodes)):
        rows[i].append(r)
    return rows


N_EDGES = len(edges())  # 14


#: the ops other than ``none``: an activation that drops ``none`` (CRB: K = 7; FairDARTS'
#: sigmoid) searches over these; which ops it uses is the activation's own ``ops``
WITHOUT_NONE: tuple[str, ...] = tuple(p for p in PRIMITIVES if p != "none")


def _pair(cell: str, op: object, src: object) -> tuple[str, int]:
    """One (op, source) pair; a float or bool source is a corrupt file, not a state to round."""
    try:
        if not isinstance(op, str) or isinstance(src, bool):
            raise TypeError
        return op, operator.index(src)
    except TypeError:
        raise GenotypeError(f"{cell} pair ({op!r}, {src!r}) is invalid; expected (op name, integer source state)") from None


class GenotypeError(ValueError):
    """A genotype that violates the DARTS constraints (set S of the paper)."""


@dataclass(frozen=True)
class Genotype:
    """A discrete architecture: for each cell type, 2 (op, source) pairs per node."""

    normal: list[tuple[str, int]]
    reduce: list[tuple[str, int]]
    normal_concat: list[int] = field(default_factory=lambda: list(CONCAT))
    reduce_concat: list[int] = field(default_factory=lambda: list(CONCAT))

    def __post_init__(self) -> None:
        for name in ("normal", "reduce"):
            cell = getattr(self, name)
            try:
                pairs = [(op, src) for op, src in cell]
            except (TypeError, ValueError) as e:
                raise GenotypeError(f"{name}={cell!r:.80} is malformed; expected 8 (op name, source state) pairs") from e
            object.__setattr__(self, name, [_pair(name, op, src) for op, src in pairs])
            _validate_cell(name, getattr(self, name))
        for name in ("normal_concat", "reduce_concat"):
            try:
                object.__setattr__(self, name, [int(c) for c in getattr(self, name)])
            except (TypeError, ValueError) as e:
                raise GenotypeError(f"{name}={getattr(self, name)!r} is malformed; expected {list(CONCAT)}") from e
            if sorted(getattr(self, name)) != list(CONCAT):
                raise GenotypeError(f"{name}={getattr(self, name)} is invalid; expected {list(CONCAT)}")

    def to_dict(self) -> dict:
        return {
            "normal": [[op, src] for op, src in self.normal],
            "normal_concat": self.normal_concat,
            "reduce": [[op, src] for op, src in self.reduce],
            "reduce_concat": self.reduce_concat,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        if not isinstance(d, dict):
            raise GenotypeError(f"genotype must be a mapping with keys normal, reduce, *_concat; "
                                f"got {type(d).__name__}")
        missing = {"normal", "reduce"} - set(d)
        if missing:
            raise GenotypeError(f"genotype is missing keys {sorted(missing)}; expected normal, reduce, *_concat")
        try:
            cells = {k: [tuple(x) for x in d[k]] for k in ("normal", "reduce")}
            concats = {k: list(d.get(k, CONCAT)) for k in ("normal_concat", "reduce_concat")}
        except TypeError as e:
            raise GenotypeError(f"genotype is malformed ({e}); expected lists of (op name, source state) pairs") from e
        return cls(**cells, **concats)

    @classmethod
    def from_json(cls, text: str) -> "Genotype":
        return cls.from_dict(json.loads(text))

    def to_darts_text(self) -> str:
        """The ``Genotype(normal=[...], ...)`` form the original DARTS code prints and reads."""

        def cell(c: list[tuple[str, int]]) -> str:
            return "[" + ", ".join(f"('{op}', {src})" for op, src in c) + "]"

        return (
            f"Genotype(normal={cell(self.normal)}, normal_concat={self.normal_concat}, "
            f"reduce={cell(self.reduce)}, reduce_concat={self.reduce_concat})"
        )

    @classmethod
    def from_darts_text(cls, text: str) -> "Genotype":
        """Parse the DARTS ``Genotype(normal=[...], normal_concat=..., ...)`` text.

        The text is read as a syntax tree and only literals and ``range(a, b)`` are taken
        from it (never ``eval``): a genotype file from the internet cannot run code.
        Keywords or the namedtuple's positional order are both accepted.
        """
        fields = _call_fields(text, "DARTS", DARTS_TEXT_FORM)
        for key in ("normal", "reduce"):
            cell = fields[key]
            if isinstance(cell, (list, tuple)) and any(
                    isinstance(p, (list, tuple)) and p and isinstance(p[0], (list, tuple)) for p in cell):
                raise GenotypeError(f"DARTS genotype string: {key} holds per-node lists (pt.darts form) where flat "
                                    f"(op, source) pairs were expected; give both cells in one form")
        return cls.from_dict(fields)

    def to_ptdarts_text(self) -> str:
        """pt.darts' form (khanrc/pt.darts genotypes.py): one inner list of 2 pairs per node,
        concat printed as the ``range`` it builds, so pt.darts' ``augment.py --genotype`` takes it."""

        def cell(c: list[tuple[str, int]]) -> str:
            nodes = (c[2 * i : 2 * i + 2] for i in range(N_NODES))
            return "[" + ", ".join("[" + ", ".join(f"('{op}', {src})" for op, src in n) + "]" for n in nodes) + "]"

        def concat(c: list[int]) -> str:
            return f"range({CONCAT[0]}, {CONCAT[-1] + 1})" if c == list(CONCAT) else str(c)

        return (
            f"Genotype(normal={cell(self.normal)}, normal_concat={concat(self.normal_concat)}, "
            f"reduce={cell(self.reduce)}, reduce_concat={concat(self.reduce_concat)})"
        )

    @classmethod
    def from_ptdarts_text(cls, text: str) -> "Genotype":
        """Parse pt.darts' nested ``Genotype(normal=[[(op, src), (op, src)], ...], ...)`` text
        (read as a syntax tree like ``from_darts_text``, never evaluated)."""
        fields = _call_fields(text, "pt.darts", PTDARTS_TEXT_FORM)
        for key in ("normal", "reduce"):
            fields[key] = _flatten_nodes(key, fields[key])
        return cls.from_dict(fields)


def _call_fields(text: str, label: str, form: str) -> dict[str, object]:
    """The four fields of a ``Genotype(...)`` call given as text, as literals (DARTS and
    pt.darts print the same namedtuple; only the cells' nesting differs)."""
    src = text.strip()
    try:
        call = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise GenotypeError(f"{label} genotype string {shorten(src)} is not valid syntax ({type(e).__name__}); "
                            f"expected {form}") from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise GenotypeError(f"not a {label} genotype string: {shorten(src)}; expected {form}")
    if len(call.args) > len(DARTS_FIELDS):
        raise GenotypeError(f"{label} genotype string has {len(call.args)} positional fields; expected "
                            f"at most {len(DARTS_FIELDS)} ({', '.join(DARTS_FIELDS)})")
    named = list(zip(DARTS_FIELDS, call.args)) + [(kw.arg, kw.value) for kw in call.keywords]
    fields: dict[str, object] = {}
    for key, node in named:
        if key not in DARTS_FIELDS:
            raise GenotypeError(f"{label} genotype string has field {key}=; valid fields: {', '.join(DARTS_FIELDS)}")
        if key in fields:
            raise GenotypeError(f"{label} genotype string gives {key} twice")
        fields[key] = _darts_value(label, key, node)
    for key in DARTS_FIELDS:
        if key not in fields:
            raise GenotypeError(f"{label} genotype string has no {key}=[...]; expected {form}")
    return fields


def _flatten_nodes(cell: str, nodes: object) -> list[object]:
    """pt.darts' per-node lists -> DARTS' flat pair list, checking the nesting itself
    (S is checked afterwards on the flat list): exactly N_NODES lists of exactly 2 pairs."""
    where = f"pt.darts genotype string: {cell}"
    if not isinstance(nodes, (list, tuple)):
        raise GenotypeError(f"{where}={nodes!r:.60} is not a list of {N_NODES} per-node lists")
    flat: list[object] = []
    for i, node in enumerate(nodes):
        if isinstance(node, (list, tuple)) and node and isinstance(node[0], str):
            raise GenotypeError(f"{where}[{i}]={node!r:.60} is a flat (op, source) pair; the nested form needs "
                                f"one inner list per node, e.g. [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]")
        if not isinstance(node, (list, tuple)) or len(node) != 2:
            count = f"has {len(node)} (op, source) pairs" if isinstance(node, (list, tuple)) else f"is {node!r:.40}"
            raise GenotypeError(f"{where} node {i} {count}; expected a list of 2 (op, source) pairs")
        flat.extend(node)
    if len(nodes) != N_NODES:
        raise GenotypeError(f"{where} has {len(nodes)} node lists; expected {N_NODES} lists of 2 (op, source) pairs")
    return flat


DARTS_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")  # the namedtuple's order
DARTS_TEXT_FORM = ("Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], "
                   "reduce_concat=range(2, 6))")
PTDARTS_TEXT_FORM = ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ...], normal_concat=range(2, 6), "
                     "reduce=[[...], ...], reduce_concat=range(2, 6))")


def _darts_value(label: str, key: str, node: ast.expr) -> object:
    """A field of the DARTS / pt.darts text: a literal, or ``range(a, b)`` with small integer
    bounds (Python 3 prints DARTS' concat as a range object)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        bounds = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
        if node.keywords or len(bounds) != 2 or not all(type(b) is int and 0 <= b <= 64 for b in bounds):
            raise GenotypeError(f"{label} genotype string: {key}={shorten(ast.unparse(node))[1:-1]} is invalid; "
                                f"expected range(2, 6) or [2, 3, 4, 5]")
        return list(range(*bounds))
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise GenotypeError(f"{label} genotype string: {key}={shorten(ast.unparse(node))[1:-1]} is not a literal "
                            "list of (op name, source state) pairs") from None


def shorten(text: str, width: int = 60) -> str:
    """``repr`` of ``text`` on one line, cut in the middle when long, for error messages
    that name what the user gave (a whole genotype string would bury the message)."""
    if len(text) > width:
        text = text[: width - 20] + " … " + text[-17:]
    return repr(text)


def _validate_cell(name: str, cell: list[tuple[str, int]]) -> None:
    """Check the DARTS constraints S1–S3: 2 edges per node, distinct sources, no `none`."""
    if len(cell) != 2 * N_NODES:
        raise GenotypeError(f"{name} has {len(cell)} (op, source) pairs; expected {2 * N_NODES}")
    valid_ops = [p for p in PRIMITIVES if p != "none"]
    for i in range(N_NODES):
        pair = cell[2 * i : 2 * i + 2]
        for op, src in pair:
            if op not in valid_ops:
                raise GenotypeError(f"{name} node {i}: op {op!r} is not allowed; valid ops: {', '.join(valid_ops)}")
            if not 0 <= src < N_INPUTS + i:
                raise GenotypeError(f"{name} node {i}: source {src} is invalid; valid sources: 0..{N_INPUTS + i - 1}")
        if pair[0][1] == pair[1][1]:
            raise GenotypeError(f"{name} node {i}: both edges come from state {pair[0][1]}; sources must differ")


# The genotype published with DARTS (second order), used as a reference in tests and docs; the
# same as darts.space.published's DARTS_V2 (tests/test_published_genotypes.py checks it), kept as code
# so that importing the search space needs no data file.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)
