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
import re
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


def search_ops(activation: str) -> tuple[str, ...]:
    """Candidate ops per edge: CRB drops ``none`` (K=7), softmax keeps all 8."""
    if activation == "crb":
        return tuple(p for p in PRIMITIVES if p != "none")
    return PRIMITIVES


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
        """Parse the DARTS text form with ``ast.literal_eval`` (never ``eval``)."""
        text = text.strip()
        m = re.fullmatch(r"Genotype\((.*)\)", text, flags=re.S)
        if not m:
            raise GenotypeError(f"not a DARTS genotype string: {text[:60]!r}")
        fields = {}
        for key in ("normal", "normal_concat", "reduce", "reduce_concat"):
            km = re.search(rf"\b{key}\s*=\s*(\[[^\]]*\]|range\(\s*\d+\s*,\s*\d+\s*\))", m.group(1))
            if km is None:
                raise GenotypeError(f"DARTS genotype string has no {key}=[...]")
            raw = km.group(1)
            rm = re.fullmatch(r"range\(\s*(\d+)\s*,\s*(\d+)\s*\)", raw)
            try:
                fields[key] = list(range(int(rm.group(1)), int(rm.group(2)))) if rm else ast.literal_eval(raw)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
                raise GenotypeError(f"DARTS genotype string: {key}={raw[:60]!r} is not a literal list") from e
        return cls.from_dict(fields)


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


# The genotype published with DARTS (second order), used as a reference in tests and docs.
DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
)
