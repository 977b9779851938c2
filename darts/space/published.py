"""Genotypes published with DARTS and its successors, by name, with their sources.

The genotypes live in ``published_genotypes.json`` (package data), not in code, so that
each one sits next to its citation (paper, repository, file, commit, the variable it was
copied from) and the CIFAR-10 test error and parameter count its authors report; the
tests check every entry against the upstream text and against S. Names are matched
case-insensitively (``darts_v2`` is ``DARTS_V2``): a name on a command line should not
fail on its case.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources

from darts.space.primitives import Genotype, GenotypeError, shorten

DATA_FILE = "published_genotypes.json"


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    return json.loads(resources.files("darts.space").joinpath(DATA_FILE).read_text())["genotypes"]


PUBLISHED: tuple[str, ...] = tuple(_entries())  # DARTS_V1, DARTS_V2, PC_DARTS, PDARTS


def find_published(name: str) -> str | None:
    """The canonical spelling of a published genotype's name, or None if there is none."""
    return next((k for k in PUBLISHED if k.lower() == name.strip().lower()), None)


def published_info(name: str) -> dict:
    """The entry of a published genotype: source (paper, repo, file, commit, source_name),
    reported cifar10_test_error (%) and params_m, and the genotype as a dict (a copy)."""
    key = find_published(name)
    if key is None:
        raise GenotypeError(f"{shorten(name)} is not a published genotype; valid names: {', '.join(PUBLISHED)} "
                            "(any case)")
    return copy.deepcopy(_entries()[key])


def published_genotype(name: str) -> Genotype:
    """A published genotype by name, checked against S like every other genotype."""
    return Genotype.from_dict(published_info(name)["genotype"])
