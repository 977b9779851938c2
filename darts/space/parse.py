"""A genotype from any of its text forms: JSON, DARTS' ``Genotype(...)`` text, pt.darts'
text (nodes as lists), or a published genotype's name. ``parse_genotype`` is the single
dispatch point, so a new form is added here only. It sits apart from ``primitives``
because names resolve through ``published``, which builds its genotypes from
``primitives``: together they would import each other."""
from __future__ import annotations

import json
import re

from darts.space.primitives import Genotype, GenotypeError, shorten
from darts.space.published import PUBLISHED, find_published, published_genotype

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a published genotype's name (darts.space.published)
FORMS = ("a JSON genotype {\"normal\": [...], ...}, DARTS text Genotype(normal=[('sep_conv_3x3', 0), ...], ...), "
         "pt.darts text Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ...], ...)")


def genotype_format(text: str) -> str | None:
    """The form of a genotype text: "json" (``{...}``), "darts" (``Genotype(normal=[(op, src),
    ...], ...)``), "ptdarts" (``Genotype(normal=[[(op, src), (op, src)], ...], ...)``), "name"
    (an identifier: a published genotype, see darts.space.published), or None.

    The single dispatch point of ``parse_genotype``. DARTS and pt.darts text differ only in
    the cells' nesting, so the first list that opens a list or tuple decides: ``[(`` or
    ``[['`` (a pair, written as a tuple or a list) is DARTS, ``[[`` followed by anything else
    (a node's list) pt.darts; a text mixing the two is refused by the parser chosen, naming
    the cell."""
    head = text.strip()
    if head.startswith("{"):
        return "json"
    if re.match(r"Genotype\s*\(", head):
        first = re.search(r"\[\s*([\[(])\s*(.?)", head, re.DOTALL)
        return "ptdarts" if first and first.group(1) == "[" and first.group(2) not in ("'", '"') else "darts"
    if NAME_RE.fullmatch(head):
        return "name"
    return None


def _unrecognised(text: str) -> GenotypeError:
    """The one-line error for a text that is no genotype form (a mistyped name included)."""
    return GenotypeError(f"{shorten(text.strip())} is neither {FORMS} nor a published genotype name "
                         f"({', '.join(PUBLISHED)}, any case)")


def parse_genotype(text: str) -> Genotype:
    """A genotype from its text in any accepted form (see ``genotype_format``), checked
    against S; raises GenotypeError (one line) naming the problem."""
    form = genotype_format(text)
    if form == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"invalid JSON ({e})") from None
        except RecursionError:
            raise GenotypeError("invalid JSON (nested too deeply)") from None
        return Genotype.from_dict(data)
    if form == "darts":
        return Genotype.from_darts_text(text)
    if form == "ptdarts":
        return Genotype.from_ptdarts_text(text)
    if form == "name":
        name = find_published(text.strip())
        if name is not None:
            return published_genotype(name)
    raise _unrecognised(text)
