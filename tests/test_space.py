"""Search space: edge order, Genotype validation and its JSON / DARTS-text forms."""
from __future__ import annotations

import json

import pytest

from darts.space.primitives import (
    CONCAT,
    DARTS_V2,
    N_EDGES,
    PRIMITIVES,
    Genotype,
    GenotypeError,
    edges,
    WITHOUT_NONE,
    node_edge_rows,
)

# Verbatim from genotypes.py of the original DARTS repository (quark0/darts).
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])"
)
# The same genotype as train_search.py logs it under Python 3 (concat is a range object).
DARTS_V2_LOG_TEXT = DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")

NORMAL_OK = [("sep_conv_3x3", 0), ("skip_connect", 1), ("max_pool_3x3", 2), ("sep_conv_5x5", 0),
             ("dil_conv_3x3", 3), ("avg_pool_3x3", 1), ("dil_conv_5x5", 4), ("sep_conv_3x3", 2)]
REDUCE_OK = [("max_pool_3x3", 1), ("max_pool_3x3", 0), ("avg_pool_3x3", 0), ("skip_connect", 2),
             ("sep_conv_5x5", 3), ("sep_conv_3x3", 1), ("skip_connect", 2), ("dil_conv_3x3", 4)]


def test_edges_are_in_darts_order():
    assert N_EDGES == 14
    assert edges() == [
        (0, 0), (0, 1),
        (1, 0), (1, 1), (1, 2),
        (2, 0), (2, 1), (2, 2), (2, 3),
        (3, 0), (3, 1), (3, 2), (3, 3), (3, 4),
    ]
    assert node_edge_rows() == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]
    assert CONCAT == (2, 3, 4, 5)


def test_search_ops():
    from darts.method.activations import make_activation

    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                          "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert WITHOUT_NONE == PRIMITIVES[1:]
    # each activation names its own ops: softmax all 8, CRB and FairDARTS' sigmoid drop `none`
    assert make_activation("softmax").ops == PRIMITIVES
    assert make_activation("crb").ops == make_activation("sigmoid").ops == WITHOUT_NONE


def test_json_round_trip():
    g = Genotype(normal=NORMAL_OK, reduce=REDUCE_OK)
    text = g.to_json()
    d = json.loads(text)
    assert d["normal"][0] == ["sep_conv_3x3", 0]
    assert d["normal_concat"] == [2, 3, 4, 5]
    back = Genotype.from_json(text)
    assert back == g
    assert back.normal == NORMAL_OK and back.reduce == REDUCE_OK
    assert Genotype.from_json(DARTS_V2.to_json()) == DARTS_V2


def test_darts_text_round_trip():
    for g in (Genotype(normal=NORMAL_OK, reduce=REDUCE_OK), DARTS_V2):
        text = g.to_darts_text()
        assert Genotype.from_darts_text(text) == g
    assert DARTS_V2.to_darts_text() == DARTS_V2_TEXT


def test_parse_original_darts_v2_string():
    g = Genotype.from_darts_text(DARTS_V2_TEXT)
    assert g == DARTS_V2
    assert g.normal[7] == ("dil_conv_3x3", 2)
    assert g.reduce[2] == ("skip_connect", 2)
    assert g.normal_concat == [2, 3, 4, 5] and g.reduce_concat == [2, 3, 4, 5]


def test_parse_range_form_and_log_prefix_whitespace():
    assert Genotype.from_darts_text(DARTS_V2_LOG_TEXT) == DARTS_V2
    multiline = DARTS_V2_LOG_TEXT.replace(", reduce=", ",\n    reduce=")
    assert Genotype.from_darts_text("  " + multiline + "\n") == DARTS_V2


def _one_line_error(match: str, **kw) -> str:
    with pytest.raises(GenotypeError, match=match) as info:
        Genotype(**{"normal": NORMAL_OK, "reduce": REDUCE_OK, **kw})
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_rejects_none_op():
    bad = list(NORMAL_OK)
    bad[3] = ("none", 0)
    msg = _one_line_error("'none'", normal=bad)
    assert "node 1" in msg


def test_rejects_unknown_op():
    bad = list(REDUCE_OK)
    bad[0] = ("conv_7x7", 1)
    msg = _one_line_error("'conv_7x7'", reduce=bad)
    assert msg.startswith("reduce node 0")


def test_rejects_wrong_count():
    msg = _one_line_error("has 7 ", normal=NORMAL_OK[:7])
    assert "expected 8" in msg
    _one_line_error("has 9 ", reduce=REDUCE_OK + [("skip_connect", 0)])


def test_rejects_duplicate_source():
    bad = list(NORMAL_OK)
    bad[4], bad[5] = ("dil_conv_3x3", 3), ("avg_pool_3x3", 3)  # node 2: both from state 3
    msg = _one_line_error("state 3", normal=bad)
    assert "node 2" in msg


def test_rejects_source_out_of_range():
    bad = list(NORMAL_OK)
    bad[2] = ("max_pool_3x3", 3)  # node 1 may only read states 0..2
    msg = _one_line_error("source 3", normal=bad)
    assert "node 1" in msg and "0..2" in msg
    bad[2] = ("max_pool_3x3", -1)
    _one_line_error("source -1", normal=bad)


def test_rejects_non_integer_sources():
    # a float or bool source is a corrupt file: it must not be silently rounded to a state
    for src in (1.0, 1.5, True, "1"):
        bad = list(NORMAL_OK)
        bad[0] = (bad[0][0], src)
        with pytest.raises(GenotypeError, match="integer source") as info:
            Genotype(normal=bad, reduce=REDUCE_OK)
        assert "\n" not in str(info.value)
    # integer-like sources (numpy / 0-d tensors from derive_genotype) are fine
    import numpy as np
    import torch
    good = [(op, np.int64(src)) for op, src in NORMAL_OK]
    good[1] = (good[1][0], torch.tensor(NORMAL_OK[1][1]))
    assert Genotype(normal=good, reduce=REDUCE_OK).normal == [tuple(x) for x in NORMAL_OK]


def test_rejects_bad_concat():
    msg = _one_line_error(r"\[2, 3, 4\]", normal_concat=[2, 3, 4])
    assert "normal_concat" in msg


def test_rejects_malformed_entries_with_genotype_error():
    # (source, op) swapped and a bare int must be GenotypeError, not TypeError/ValueError leaking out
    with pytest.raises(GenotypeError):
        Genotype(normal=[(0, "sep_conv_3x3")] * 8, reduce=REDUCE_OK)
    with pytest.raises(GenotypeError):
        Genotype.from_dict({"normal": [1] * 8, "reduce": REDUCE_OK})
    with pytest.raises(GenotypeError, match="missing"):
        Genotype.from_dict({"normal": NORMAL_OK})


def test_from_darts_text_rejects_garbage():
    with pytest.raises(GenotypeError):
        Genotype.from_darts_text("hello")
    with pytest.raises(GenotypeError, match="reduce"):
        Genotype.from_darts_text("Genotype(normal=[], normal_concat=[2, 3, 4, 5])")
    bad = DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 7)")
    with pytest.raises(GenotypeError, match="source 7"):
        Genotype.from_darts_text(bad)


def test_from_darts_text_never_evaluates(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        # inside a list: the part that reaches the literal parser
        DARTS_V2_TEXT.replace("('sep_conv_3x3', 0), ", f"__import__('os').mkdir({str(marker)!r}), ", 1),
        # a call in place of the whole list
        DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", f"normal_concat=__import__('os').mkdir({str(marker)!r})"),
        f"Genotype(normal=[(open({str(marker)!r}, 'w'), 0)], normal_concat=[2,3,4,5], reduce=[], reduce_concat=[2,3,4,5])",
    ]
    for text in payloads:
        with pytest.raises(GenotypeError) as info:
            Genotype.from_darts_text(text)
        assert "\n" not in str(info.value)
        assert not marker.exists()


def test_round_trip_json_to_text_to_parse():
    """genotype.json -> DARTS text (what discretize writes as genotype.txt) -> parse_genotype: the same genotype."""
    from darts.space.parse import parse_genotype

    for g in (Genotype(normal=NORMAL_OK, reduce=REDUCE_OK), DARTS_V2):
        from_json = parse_genotype(g.to_json())
        assert from_json == g
        text = from_json.to_darts_text()
        assert parse_genotype(text) == g
        assert parse_genotype(text.replace("[2, 3, 4, 5]", "range(2, 6)")) == g  # Python 3's print of DARTS
        assert parse_genotype("\n  " + text + "\n") == g


def test_parse_genotype_concat_forms_and_positional():
    from darts.space.parse import parse_genotype

    assert parse_genotype(DARTS_V2_TEXT) == DARTS_V2
    assert parse_genotype(DARTS_V2_LOG_TEXT) == DARTS_V2
    mixed = DARTS_V2_TEXT.replace("reduce_concat=[2, 3, 4, 5]", "reduce_concat=range(2,6)")
    assert parse_genotype(mixed) == DARTS_V2
    d = DARTS_V2.to_dict()
    positional = f"Genotype({d['normal']}, range(2, 6), {d['reduce']}, [2, 3, 4, 5])"
    assert parse_genotype(positional) == DARTS_V2


@pytest.mark.parametrize("text,match", [
    ("", "neither a JSON genotype"),
    ("hello", "'hello'"),
    ("[1, 2]", "neither a JSON genotype"),
    ('{"normal": [', "invalid JSON"),
    (DARTS_V2_TEXT.replace("reduce_concat", "colour"), "colour"),
    (DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(0, 10**9)"), "range"),
    (DARTS_V2_TEXT + " + 1", "not a DARTS genotype"),
    (DARTS_V2_TEXT[:-1], "not valid syntax"),
    (DARTS_V2_TEXT.replace("normal=", "normal=", 1).replace("reduce_concat=[2, 3, 4, 5]", "normal=[]"), "twice"),
    # nested per-node lists that are not pt.darts' form (a list product; reduce empty) are refused in one line
    ("Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]] * 4, normal_concat=range(2, 6), "
     "reduce=[], reduce_concat=range(2, 6))", "not a literal"),
    ("Genotype(normal=" + str([[("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]] * 4) + ", normal_concat=range(2, 6), "
     "reduce=[], reduce_concat=range(2, 6))", "pair"),
])
def test_parse_genotype_rejects_with_one_line(text, match):
    from darts.space.parse import parse_genotype

    with pytest.raises(GenotypeError, match=match) as info:
        parse_genotype(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
