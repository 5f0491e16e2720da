"""Tests for pipeline.stats on synthetic numbers with known answers (no models, milliseconds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import stats

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


def test_t_interval_known_values():
    m, lo, hi, n = stats.t_interval([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3)
    assert hi - m == pytest.approx(T_975_2 * 1.0 / math.sqrt(3))
    assert m - lo == pytest.approx(hi - m)


def test_t_interval_tiny_samples():
    assert all(math.isnan(v) for v in stats.t_interval([])[:3]) and stats.t_interval([])[3] == 0
    m, lo, hi, n = stats.t_interval([0.7])
    assert (m, n) == (0.7, 1) and math.isnan(lo) and math.isnan(hi)
    assert stats.t_interval([0.5, 0.5, 0.5])[:3] == (0.5, 0.5, 0.5)
    assert stats.t_interval([0.5, float("nan"), None, 0.7])[3] == 2  # NaN/None are not observations


def test_bootstrap_ci_contains_known_mean_and_is_seeded():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.02, 30)
    d = 0.05 + noise - noise.mean()  # mean exactly 0.05
    lo, hi = stats.bootstrap_ci(d, n_boot=4000, seed=3)
    assert lo < 0.05 < hi
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)  # percentile CI ~ normal CI for n = 30
    assert stats.bootstrap_ci(d, n_boot=4000, seed=3) == (lo, hi)
    assert stats.bootstrap_ci(d, n_boot=4000, seed=4) != (lo, hi)


def test_bootstrap_ci_degenerate():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.1]))
    assert stats.bootstrap_ci([0.0, 0.0, 0.0]) == (0.0, 0.0)
    assert stats.bootstrap_ci([0.02] * 4) == (0.02, 0.02)


def test_wilcoxon_consistent_shift_is_small():
    d = 0.01 * np.arange(1, 21)  # 20 positive differences
    assert stats.wilcoxon_p(d) == pytest.approx(2 / 2 ** 20)
    assert stats.wilcoxon_p(-d) == pytest.approx(2 / 2 ** 20)


def test_wilcoxon_noise_is_large():
    x = np.random.default_rng(0).normal(0, 1, 15)
    assert stats.wilcoxon_p(np.concatenate([x, -x])) == pytest.approx(1.0)  # perfectly symmetric
    noise = np.random.default_rng(7).normal(0, 1, 40)
    assert stats.wilcoxon_p(noise - np.median(noise)) > 0.5


def test_wilcoxon_tiny_and_zero():
    assert math.isnan(stats.wilcoxon_p([]))
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert stats.wilcoxon_p([0.1]) == 1.0
    assert stats.wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(0.0625)
    assert stats.min_wilcoxon_p(5) == pytest.approx(0.0625) and math.isnan(stats.min_wilcoxon_p(0))


def test_float_noise_does_not_break_ties_or_zeros():
    # 0.515625 - 0.5 and 0.5 - 0.484375 are the same difference, and 0.3 - 0.1 - 0.2 is zero
    df = pd.DataFrame({"technique": "lora", "host_pair": "a->b", "dataset": "d", "regime": 0,
                       "seed": [0, 0, 1, 1, 2, 2], "condition": ["ported", "scratch"] * 3,
                       "run_id": list("abcdef"), "accuracy": [0.515625, 0.5, 0.5, 0.484375, 0.3 - 0.1, 0.2]})
    d = stats.paired_differences(df, "ported", "scratch")["diff"].tolist()
    assert d[0] == d[1] and d[2] == 0.0


def test_holm_against_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.01, float("nan"), 0.04]), [0.02, float("nan"), 0.04])  # m = 2
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    assert stats.holm([]).size == 0
    np.testing.assert_allclose(stats.holm([0.2]), [0.2])


def _frame(diff_by_seed, techniques=("lora",), regimes=(0,), base=0.6):
    rows = []
    for t in techniques:
        for r in regimes:
            for s, d in enumerate(diff_by_seed):
                for cond, v in (("ported", base + d), ("scratch", base), ("sampled", base + 0.5 * d)):
                    rows.append({"technique": t, "host_pair": "a->b", "dataset": "d", "regime": r, "seed": s,
                                 "condition": cond, "run_id": f"{t}{r}{s}{cond}", "accuracy": v + 0.01 * s})
    return pd.DataFrame(rows)


def test_paired_compare_known_difference():
    df = _frame([0.05] * 8, techniques=("lora", "ia3"))
    out = stats.paired_compare(df, [("ported", "scratch"), ("ported", "sampled")], ["technique", "regime"],
                               n_boot=500)
    assert len(out) == 4
    ps = out[out["b"] == "scratch"]
    np.testing.assert_allclose(ps["mean_diff"], 0.05)
    np.testing.assert_allclose(ps[["ci_low", "ci_high"]].to_numpy(), 0.05)
    assert (ps["wins"] == 8).all() and (ps["n"] == 8).all()
    np.testing.assert_allclose(out.loc[out["b"] == "sampled", "mean_diff"], 0.025)
    # Holm across the 4 comparisons, each exact p = 2/2^8
    np.testing.assert_allclose(out["p_wilcoxon"], 2 / 256)
    np.testing.assert_allclose(out["p_holm"], 4 * 2 / 256)


def test_paired_compare_pairs_on_seed_not_on_row_order():
    rng = np.random.default_rng(0)
    diffs = 0.04 + rng.normal(0, 0.01, 12)
    df = _frame(diffs).sample(frac=1.0, random_state=1)  # shuffled rows
    out = stats.paired_compare(df, [("ported", "scratch")], ["technique"], n_boot=2000)
    r = out.iloc[0]
    assert r["n"] == 12 and r["mean_diff"] == pytest.approx(diffs.mean())
    assert r["ci_low"] < diffs.mean() < r["ci_high"]
    assert r["p_wilcoxon"] < 0.001


def test_paired_compare_drops_unpartnered_runs_and_handles_tiny_n():
    df = _frame([0.05, 0.02, 0.03])
    df = df[~((df["condition"] == "scratch") & (df["seed"] == 1))]  # seed 1's scratch run is missing
    out = stats.paired_compare(df, [("ported", "scratch")], ["technique"], n_boot=200)
    assert out.iloc[0]["n"] == 2 and out.iloc[0]["mean_diff"] == pytest.approx(0.04)
    one = _frame([0.05])
    r = stats.paired_compare(one, [("ported", "scratch")], ["technique"]).iloc[0]
    assert r["n"] == 1 and math.isnan(r["ci_low"]) and r["p_wilcoxon"] == 1.0
    zero = _frame([0.0, 0.0, 0.0])
    r = stats.paired_compare(zero, [("ported", "scratch")], ["technique"]).iloc[0]
    assert r["mean_diff"] == 0 and r["ties"] == 3 and r["p_wilcoxon"] == 1.0 and r["ci_low"] == r["ci_high"] == 0
    empty = stats.paired_compare(df[df["condition"] == "ported"], [("ported", "scratch")], ["technique"])
    assert empty.empty and "p_holm" in empty.columns


def test_paired_compare_bootstrap_independent_of_other_comparisons():
    df = _frame(0.03 + np.random.default_rng(2).normal(0, 0.02, 10), techniques=("lora", "ia3"))
    both = stats.paired_compare(df, [("ported", "scratch")], ["technique"], n_boot=500)
    one = stats.paired_compare(df[df["technique"] == "lora"], [("ported", "scratch")], ["technique"], n_boot=500)
    a = both[both["technique"] == "lora"].iloc[0]
    assert (a["ci_low"], a["ci_high"]) == (one.iloc[0]["ci_low"], one.iloc[0]["ci_high"])
