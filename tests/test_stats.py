"""Welch's interval and the Student t quantile behind it, on inputs with known answers."""
from __future__ import annotations

import math

import pytest

from darts.report.stats import betainc, t_cdf, t_ppf, welch_interval

#: t_{0.975, df} from printed tables (3 decimals) and, for df = 2.5, from the closed form below
TABULATED = {1: 12.706, 2: 4.303, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df, expected", sorted(TABULATED.items()))
def test_t_quantile_matches_tables(df, expected):
    assert t_ppf(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_ppf(0.025, df) == pytest.approx(-expected, abs=5e-4)  # symmetric about 0


def test_t_quantile_closed_forms_to_1e_10():
    """df = 1 is Cauchy: t_p = tan(π(p − ½)); df = 2: t_p = (2p − 1)·sqrt(2 / (4p(1 − p)))."""
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert t_ppf(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-10)
    assert t_ppf(0.5, 3.7) == 0.0
    assert t_ppf(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)  # the normal's 1.96 in the limit


def test_t_quantile_non_integer_df():
    """Between the tabulated neighbours, and the inverse of t_cdf (df = 4.41 is the Welch case below)."""
    q = t_ppf(0.975, 2.5)
    assert TABULATED[2] > q > 3.182  # t_{0.975,3} = 3.182
    assert q == pytest.approx(3.5747, abs=1e-4)  # scipy.stats.t.ppf(0.975, 2.5) = 3.574654842
    for df in (0.7, 2.5, 4.411764705882353, 17.3):
        for p in (0.01, 0.3, 0.975):
            assert t_cdf(t_ppf(p, df), df) == pytest.approx(p, abs=1e-12)


def test_betainc_known_values():
    """I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 − (1 − x)^b; I_½(a, a) = ½."""
    assert betainc(1, 1, 0.3) == pytest.approx(0.3, rel=1e-12)
    assert betainc(2.5, 1, 0.4) == pytest.approx(0.4 ** 2.5, rel=1e-12)
    assert betainc(1, 3.5, 0.8) == pytest.approx(1 - 0.2 ** 3.5, rel=1e-12)
    assert betainc(7.3, 7.3, 0.5) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        betainc(1, 1, 1.5)


def test_welch_interval_by_hand():
    """a = [1, 2, 3, 4], b = [2, 4, 6, 8].

    means 2.5 and 5 -> diff = −2.5; variances (ddof 1) 5/3 = 1.667 and 20/3 = 6.667;
    s_a²/n_a = 0.41667, s_b²/n_b = 1.66667, se = sqrt(2.08333) = 1.44338;
    df = 2.08333² / (0.41667²/3 + 1.66667²/3) = 4.34028 / 0.98380 = 75/17 = 4.41176;
    t_{0.975, 4.41176} = 2.67755 (between t_{.975,4} = 2.776 and t_{.975,5} = 2.571);
    half width = 2.67755 · 1.44338 = 3.86471 -> [−6.36417, +1.36417]: crosses zero.
    (scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval() gives the same.)"""
    d = welch_interval([1, 2, 3, 4], [2, 4, 6, 8])
    assert d.mean_diff == pytest.approx(-2.5)
    assert d.df == pytest.approx(75 / 17, rel=1e-12)
    assert (d.n_a, d.n_b) == (4, 4)
    assert d.low == pytest.approx(-6.364167215486197, rel=1e-9)
    assert d.high == pytest.approx(1.364167215486197, rel=1e-9)
    assert d.verdict == "no difference shown"


def test_equal_variances_equal_n_is_the_pooled_interval():
    """Same spread and n: Welch's df is 2n − 2 and the interval is the classic pooled one.

    a = [10, 12, 14], b = [0, 2, 4]: diff 10, s² = 4 each, se = sqrt(4/3 + 4/3) = 1.63299,
    df = 4, t_{.975,4} = 2.77645 -> 10 ± 4.53391 = [5.46609, 14.53391]: excludes zero, higher."""
    d = welch_interval([10, 12, 14], [0, 2, 4])
    assert d.df == pytest.approx(4.0)
    assert d.low == pytest.approx(10 - 2.776445105 * math.sqrt(8 / 3), rel=1e-9)
    assert d.high == pytest.approx(10 + 2.776445105 * math.sqrt(8 / 3), rel=1e-9)
    assert d.verdict == "higher"
    swapped = welch_interval([0, 2, 4], [10, 12, 14])  # antisymmetric under a <-> b
    assert (swapped.mean_diff, swapped.low, swapped.high) == pytest.approx((-10, -d.high, -d.low))
    assert swapped.verdict == "lower"


def test_identical_groups_give_an_interval_centred_on_zero():
    d = welch_interval([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    assert d.mean_diff == 0.0 and d.low == pytest.approx(-d.high) and d.low < 0
    assert d.verdict == "no difference shown"


def test_one_constant_group_uses_the_other_groups_df():
    """s_b = 0: se² = s_a²/n_a and df = n_a − 1, i.e. the one-sample t interval of a around mean(b).
    a = [1, 3], b = [0, 0, 0]: diff 2, se = sqrt(2/2) = 1, df 1 -> 2 ± 12.7062."""
    d = welch_interval([1, 3], [0, 0, 0])
    assert d.df == pytest.approx(1.0)
    assert (d.low, d.high) == pytest.approx((2 - 12.706204736, 2 + 12.706204736), rel=1e-9)


@pytest.mark.parametrize("a, b, why", [([1.0], [1.0, 2.0], "fewer than 2"), ([1.0, 2.0], [], "fewer than 2"),
                                       ([2.0, 2.0], [3.0, 3.0, 3.0], "no spread")])
def test_undefined_interval_says_why(a, b, why):
    d = welch_interval(a, b)
    assert not d.defined and why in d.reason and d.verdict == ""
    assert math.isnan(d.low) and math.isnan(d.high) and math.isnan(d.df)
    if a and b:
        assert d.mean_diff == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_level_changes_width():
    """A 99 % interval is wider than the 95 % one: t_{.995,4} / t_{.975,4} = 4.604 / 2.776."""
    a, b = [10, 12, 14], [0, 2, 4]
    w95 = welch_interval(a, b).high - 10
    w99 = welch_interval(a, b, level=0.99).high - 10
    assert w99 / w95 == pytest.approx(4.604094871 / 2.776445105, rel=1e-8)
    with pytest.raises(ValueError):
        welch_interval(a, b, level=95)


@pytest.mark.parametrize("p, d1, d2, expected", [
    (0.95, 3, 10, 3.708265), (0.975, 5, 7, 5.285237), (0.975, 2, 2, 39.0), (0.99, 1, 1, 4052.181),
    (0.95, 10, 30, 2.164579), (0.025, 2, 2, 1 / 39.0)])
def test_f_quantiles_match_tables(p, d1, d2, expected):
    from darts.report.stats import f_cdf, f_ppf

    assert f_ppf(p, d1, d2) == pytest.approx(expected, rel=1e-5)
    assert f_cdf(f_ppf(p, d1, d2), d1, d2) == pytest.approx(p, abs=1e-9)


def test_sd_ratio_interval_by_hand():
    """a = [1, 2, 3] (s² = 1), b = [1, 3, 5] (s² = 4): σ_a/σ_b = 0.5, 2 and 2 df, F_.975 = 39,
    F_.025 = 1/39: [0.5/√39, 0.5·√39] = [0.080064, 3.122499]; crosses 1."""
    from darts.report.stats import sd_ratio_interval

    r = sd_ratio_interval([1, 2, 3], [1, 3, 5])
    assert (r.ratio, r.low, r.high) == pytest.approx((0.5, 0.5 / 39 ** 0.5, 0.5 * 39 ** 0.5), rel=1e-7)
    assert r.verdict == "no difference shown"
    tight = sd_ratio_interval([10.0, 10.01, 10.02, 10.0, 10.01], [1.0, 9.0, 4.0, 12.0, 0.0])
    assert tight.verdict == "smaller" and tight.high < 1
    assert sd_ratio_interval([1.0], [1.0, 2.0]).reason == "fewer than 2 seeds in a group"
    assert sd_ratio_interval([1.0, 2.0], [3.0, 3.0]).reason.startswith("no spread")
