"""Tests for pipeline.results.stats on synthetic numbers with known answers (no models, milliseconds)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.results import stats

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
    spread = 0.001 * (np.arange(8) - 3.5)  # distinct, all positive, mean exactly 0: the CI has width
    df = _frame(0.05 + spread, techniques=("lora", "ia3"))
    out = stats.paired_compare(df, [("ported", "scratch"), ("ported", "sampled")], ["technique", "regime"],
                               n_boot=500)
    assert len(out) == 4
    ps = out[out["b"] == "scratch"]
    np.testing.assert_allclose(ps["mean_diff"], 0.05)
    assert ((ps["ci_low"] < 0.05) & (0.05 < ps["ci_high"])).all() and (ps["ci_high"] - ps["ci_low"] < 0.005).all()
    assert (ps["wins"] == 8).all() and (ps["n"] == 8).all()
    np.testing.assert_allclose(out.loc[out["b"] == "sampled", "mean_diff"], 0.025)
    # Holm across the 4 comparisons, each exact p = 2/2^8
    np.testing.assert_allclose(out["p_wilcoxon"], 2 / 256)
    np.testing.assert_allclose(out["p"], 2 / 256)
    np.testing.assert_allclose(out["p_holm"], 4 * 2 / 256)
    assert out["few_units"].all() and not out["no_variation"].any() and (out["method"] == "wilcoxon").all()


def test_zero_width_interval_is_no_finding():
    """Identical differences give a zero-width interval: flagged, no p, left out of the Holm family."""
    df = pd.concat([_frame([0.05] * 8), _frame(0.03 + 0.001 * np.arange(12), techniques=("ia3",))])
    out = stats.paired_compare(df, [("ported", "scratch")], ["technique"], n_boot=500).set_index("technique")
    flat = out.loc["lora"]
    assert flat["ci_low"] == flat["ci_high"] == pytest.approx(0.05) and flat["no_variation"]
    assert flat["p_wilcoxon"] == pytest.approx(2 / 256)  # the raw test is kept ...
    assert math.isnan(flat["p"]) and math.isnan(flat["p_holm"])  # ... but gives no significance
    other = out.loc["ia3"]
    assert not other["no_variation"] and not other["few_units"]  # 12 pairs
    assert other["p_holm"] == pytest.approx(other["p"])  # a family of one: the flat comparison is not counted


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


# --------------------------------------------------------------------------------------------------
# AUC, McNemar, hierarchical bootstrap
# --------------------------------------------------------------------------------------------------
def _auc_brute(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y == 1]
    neg = [s for y, s in zip(labels, scores) if y != 1]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        s = np.round(rng.normal(y * 0.5, 1.0, n), int(rng.integers(0, 3)))  # coarse rounding: many ties
        assert stats.auc(y, s) == pytest.approx(_auc_brute(y, s), abs=1e-12)
    assert stats.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert stats.auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert stats.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert stats.auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == pytest.approx(0.875)


def test_auc_undefined_and_missing_values():
    assert math.isnan(stats.auc([1, 1, 1], [0.1, 0.2, 0.3]))  # one class only
    assert math.isnan(stats.auc([], []))
    assert stats.auc([0, 1, 1, 0], [0.1, 0.9, None, float("nan")]) == 1.0  # None / NaN scores left out
    assert stats.auc([0, 1, 2, 2], [0.1, 0.9, 0.5, 0.95], pos_label=2) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        stats.auc([0, 1], [0.1])


def test_auc_imports_without_scipy_or_pandas():
    import subprocess
    import sys

    code = ("import sys; sys.modules['scipy'] = None; sys.modules['pandas'] = None\n"
            "from pipeline.results.stats import auc; print(auc([0, 1, 1], [0.2, 0.1, 0.9]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == pytest.approx(0.5)


def test_mcnemar_exact_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for b, c in [(0, 0), (1, 0), (0, 5), (3, 3), (10, 3), (3, 10), (25, 40), (120, 80), (400, 455), (3100, 2900)]:
        want = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
        assert stats.mcnemar_exact(b, c) == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_mcnemar_summary_counts_pairs_favouring_each_side():
    n = 300
    right, wrong = np.ones(n, bool), np.zeros(n, bool)
    half = np.arange(n) < n // 2
    pairs = [(right, half), (right, half), (half, right), (half, half), (half, ~half)]
    # pair 1, 2: a better on 150 discordant (p tiny); 3: b better; 4: no discordant; 5: 150 vs 150 (p = 1)
    assert stats.discordant(right, half) == (150, 0)
    assert stats.mcnemar_summary(pairs) == {"mcnemar_n": 5, "mcnemar_favour_a": 2, "mcnemar_favour_b": 1}
    assert stats.mcnemar_summary([]) == {"mcnemar_n": 0, "mcnemar_favour_a": 0, "mcnemar_favour_b": 0}
    assert stats.discordant(wrong, right) == (0, n)


def _pairs(effect, n_pairs=6, n_ex=500, base=0.6, spread=0.0, rng=None):
    """Per-example correctness of run pairs: b right with p = base (+ a per-pair shift), a with p + effect."""
    rng = rng or np.random.default_rng(0)
    out = []
    for _ in range(n_pairs):
        p = base + rng.normal(0, spread)
        u = rng.random(n_ex)
        out.append((u < p + effect, rng.random(n_ex) < p))
    return out


def test_hierarchical_bootstrap_finds_a_known_effect():
    pairs = _pairs(0.1, spread=0.02)
    r = stats.hierarchical_bootstrap(pairs, n_boot=10_000, seed=0)
    obs = np.mean([a.mean() - b.mean() for a, b in pairs])
    assert r["mean_diff"] == pytest.approx(obs) and 0.05 < r["mean_diff"] < 0.15
    assert 0 < r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["p"] < 0.01 and r["p"] >= 1 / 10_001  # +1 correction: never 0
    assert (r["n_units"], r["n_examples"]) == (6, 3000) and r["few_units"] and not r["no_variation"]
    assert r["mean_a"] - r["mean_b"] == pytest.approx(r["mean_diff"])
    assert stats.hierarchical_bootstrap(pairs, n_boot=10_000, seed=0) == r  # seeded
    assert stats.hierarchical_bootstrap(pairs, n_boot=10_000, seed=1)["ci_low"] != r["ci_low"]


def test_hierarchical_bootstrap_covers_zero_without_an_effect():
    rng = np.random.default_rng(5)
    covered, small_p = 0, 0
    draws = 40
    for _ in range(draws):
        r = stats.hierarchical_bootstrap(_pairs(0.0, rng=rng), n_boot=2_000, seed=int(rng.integers(1 << 30)))
        covered += r["ci_low"] <= 0 <= r["ci_high"]
        small_p += r["p"] < 0.05
    assert covered >= 0.8 * draws and small_p <= 0.2 * draws


def test_hierarchical_bootstrap_shortcut_equals_index_resampling():
    """The multinomial draw of counts is the index resampling in distribution: the two give the same CI."""
    pairs = _pairs(0.05, n_pairs=4, n_ex=300, spread=0.03, rng=np.random.default_rng(3))
    fast = stats.hierarchical_bootstrap(pairs, n_boot=20_000, seed=1)
    slow = stats.hierarchical_bootstrap(pairs, n_boot=20_000, seed=2, method="direct")
    assert fast["ci_low"] == pytest.approx(slow["ci_low"], abs=0.006)
    assert fast["ci_high"] == pytest.approx(slow["ci_high"], abs=0.006)
    assert fast["mean_diff"] == slow["mean_diff"]


def test_hierarchical_bootstrap_resamples_run_pairs_too():
    """Between-pair variation widens the interval: pairs that disagree give a wider CI than pairs that agree."""
    same = [(np.arange(1000) < 700, np.arange(1000) < 600)] * 6  # every pair +0.1
    varied = [(np.arange(1000) < 600 + d, np.arange(1000) < 600) for d in (0, 20, 60, 140, 180, 200)]  # mean +0.1
    r_same = stats.hierarchical_bootstrap(same, 4000)
    w_same = r_same["ci_high"] - r_same["ci_low"]
    r = stats.hierarchical_bootstrap(varied, 4000)
    assert r["mean_diff"] == pytest.approx(0.1)
    assert r["ci_high"] - r["ci_low"] > 2 * w_same


def test_hierarchical_bootstrap_is_fast():
    import time

    pairs = _pairs(0.02, n_pairs=6, n_ex=1000)
    t = time.perf_counter()
    stats.hierarchical_bootstrap(pairs, n_boot=10_000)
    assert time.perf_counter() - t < 1.0


def test_hierarchical_bootstrap_degenerate_inputs():
    r = stats.hierarchical_bootstrap([])
    assert r["n_units"] == 0 and all(math.isnan(r[k]) for k in ("mean_diff", "ci_low", "ci_high", "p"))
    same = np.arange(50) % 3 == 0
    r = stats.hierarchical_bootstrap([(same, same)] * 3, n_boot=500)  # identical predictions
    assert r["no_variation"] and r["ci_low"] == r["ci_high"] == 0 and math.isnan(r["p"])
    r = stats.hierarchical_bootstrap([(np.ones(40), np.zeros(40))] * 3, n_boot=500)  # all discordant one way
    assert r["mean_diff"] == 1 and r["no_variation"] and math.isnan(r["p"])  # a zero-width interval: no finding
    one = stats.hierarchical_bootstrap([(np.arange(200) < 150, np.arange(200) < 100)], n_boot=2000)
    assert one["n_units"] == 1 and one["few_units"] and one["ci_low"] < 0.25 < one["ci_high"]
    assert not stats.hierarchical_bootstrap(_pairs(0.05, n_pairs=10), n_boot=200)["few_units"]
    with pytest.raises(ValueError):
        stats.hierarchical_bootstrap([(np.ones(3), np.ones(4))])


def _pred_frames(effects, n_ex=400, seeds=(0, 1, 2), techniques=("lora",), drop_preds=()):
    """Runs (ported/scratch per technique x seed) and their per-example predictions with a known effect."""
    rng = np.random.default_rng(11)
    runs, preds = [], []
    for t in techniques:
        for s in seeds:
            u = rng.random(n_ex)
            for cond, p in (("ported", 0.6 + effects[t]), ("scratch", 0.6)):
                u = np.where(rng.random(n_ex) < 0.3, rng.random(n_ex), u)  # runs agree on most examples, not all
                rid = f"{t}-{s}-{cond}"
                runs.append({"technique": t, "host_pair": "a->b", "dataset": "d", "regime": 0, "seed": s,
                             "condition": cond, "run_id": rid})
                if rid in drop_preds:
                    continue
                ex = rng.permutation(n_ex)  # rows in any order: aligned by example id
                preds.append(pd.DataFrame({"run_id": rid, "example_id": ex, "correct": (u < p)[ex]}))
    return pd.DataFrame(runs), pd.concat(preds, ignore_index=True)


def test_predictions_align_on_example_id():
    df = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 3, "example_id": [3, 1, 2, 0, 2, 1, 3],
                       "correct": [True, False, True, False, True, True, False]})
    p = stats.Predictions.from_frame(df)
    assert len(p) == 2 and "a" in p and "c" not in p
    ca, cb = p.paired("a", "b")  # common examples 1, 2, 3
    assert ca.tolist() == [False, True, True] and cb.tolist() == [True, True, False]
    assert p.paired("a", "c") is None
    assert len(stats.Predictions.from_frame(df.iloc[:0])) == 0


def test_hierarchical_compare_known_effect_holm_and_missing_predictions():
    runs, preds = _pred_frames({"lora": 0.12, "ia3": 0.0}, seeds=tuple(range(4)), techniques=("lora", "ia3"),
                               drop_preds=("ia3-3-scratch",))
    out = stats.hierarchical_compare(runs, stats.Predictions.from_frame(preds), [("ported", "scratch")],
                                     ["technique", "regime"], n_boot=4000).set_index("technique")
    lora, ia3 = out.loc["lora"], out.loc["ia3"]
    assert lora["n"] == 4 and lora["n_examples"] == 1600 and lora["pairs_without_preds"] == 0
    assert lora["ci_low"] > 0 and lora["p_boot"] < 0.01 and lora["p_holm"] == pytest.approx(min(1, 2 * lora["p"]))
    assert lora["mcnemar_n"] == 4 and lora["mcnemar_favour_a"] >= 3 and lora["mcnemar_favour_b"] == 0
    assert ia3["n"] == 3 and ia3["pairs_without_preds"] == 1  # a run without predictions: its pair is left out
    assert ia3["ci_low"] <= 0 <= ia3["ci_high"] and ia3["p_holm"] > 0.05
    assert (out["method"] == "hierarchical bootstrap").all() and out["few_units"].all()
    pp = stats.prediction_pairs(runs, stats.Predictions.from_frame(preds), "ported", "scratch")
    assert len(pp) == 8 and (pp["n_examples"] == 0).sum() == 1
    row = pp[(pp["technique"] == "lora") & (pp["seed"] == 0)].iloc[0]
    assert row["acc_a"] - row["acc_b"] == pytest.approx(row["diff"])
    assert row["p_mcnemar"] == pytest.approx(stats.mcnemar_exact(row["mcnemar_b"], row["mcnemar_c"]))
