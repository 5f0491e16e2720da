"""The report's interval for a paired comparison: a two-level variance decomposition with t quantiles.

A comparison (say ported vs scratch for one technique at one budget) pools *run pairs*: two runs that
differ only in condition, matched on technique, host direction, dataset, budget and seed.  Within a
pair the two runs scored the same eval examples, so each pair gives one difference per example,
``D[u, i] = correct_a - correct_b``.  The estimate is the mean over run pairs of their mean
difference (pairs weighted equally).  Two sources of chance move it:

* **seeds** -- another seed trains another module: a pair's mean difference varies from seed to
  seed.  Estimated from the spread of the pairs' mean differences *within* each stratum (run pairs
  that share host direction and dataset and differ only in seed; the strata are the study's design,
  fixed), with ``sum(seeds - 1)`` degrees of freedom;
* **examples** -- another draw of eval examples: every seed and both conditions are scored on the
  *same* examples (crossed, not nested), so an example that favours a in one seed tends to favour it
  in every seed, and this part does not average away over seeds.  Estimated per dataset from the
  spread over examples of the per-example mean difference (over all run pairs of the dataset), less
  the part of that spread that is run-pair noise (the residual mean square of the pair x example
  table, divided by the number of pairs).

``Var(estimate) = seed part + example part``, the seed part being the within-strata variance of the
pairs' mean differences over the number of pairs, the example part the sum over datasets of (share of
pairs)^2 x example-level variance / examples -- for one stratum, ``(MS_seed + MS_example - MS_residual) /
(seeds x examples)`` of the balanced two-way crossed random-effects ANOVA, unbiased whatever the
distribution.  **Each part gets its own quantile**: a t quantile on the seed degrees of freedom for the
seed part (what a paired t interval over seeds does), a t quantile on the example degrees of freedom
(hundreds: about 1.96) for the example part, and the two half-widths add in quadrature:

    half-width = sqrt(t(seed_df)^2 x seed part + t(example_df)^2 x example part)

When the seed part dominates this is the t interval over seeds; when the example part dominates, the
normal interval over examples.  (One t on Satterthwaite's pooled degrees of freedom under-covers at 2
and 3 seeds -- 0.90 to 0.93 in the simulation -- because the pooled degrees of freedom are estimated
from the same noisy seed part; so does the two-level bootstrap this replaces, 0.75 to 0.91 at 2 seeds.)
The p-value is the interval inverted: the alpha at which the 1 - alpha interval just reaches 0, from
analytic quantiles -- no resampling, so no resampling floor.

What it estimates: the expected accuracy difference on a new draw of seeds and of examples from the
same distribution, for these techniques, host directions and datasets.  Its coverage is measured by
:mod:`pipeline.results.coverage` (``make bench``, figures in BENCHMARKS.md).  With one seed per
stratum the seed part cannot be estimated at all: no interval (NaN), never an example-only one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DECIMALS = 12  # as stats.DIFF_DECIMALS: accuracies are ratios of small integers
FEW_SEED_DF = 2  # fewer seed-level degrees of freedom than this (2 seeds, one stratum): coverage unreliable
METHOD = "two-level t"


def two_level(units: Sequence[tuple], level: float = 0.95, with_p: bool = True) -> dict:
    """The interval of the mean over run pairs of ``mean(correct_a - correct_b)``.

    ``units``: one ``(stratum, examples, ids, correct_a, correct_b)`` per run pair: ``stratum`` names
    the run pairs that differ in seed only (e.g. ``(host_pair, dataset)``), ``examples`` the set the
    ids index (the dataset), ``ids`` the example ids (1-D, unique) and ``correct_*`` 0/1 aligned with
    them.  ``with_p=False`` skips the p-value (a root search; the coverage simulation needs none).
    Returns mean_a, mean_b, mean_diff, se (sqrt of seed_var + example_var), df (= seed_df), ci_low,
    ci_high, p (two-sided, the interval inverted; NaN without variation or without an interval),
    n_units, n_examples, seed_df, seed_var, example_var (the two parts of the variance), few_seeds
    (seed_df < FEW_SEED_DF: coverage unreliable) and no_variation (every run pair and example shows the same
    difference: a zero-width interval).  Where the data vary but both parts are estimated as 0 (e.g. two seeds
    with the same mean difference and no shared example effect) there is no interval (NaN), as with one seed.
    """
    out = {"mean_a": math.nan, "mean_b": math.nan, "mean_diff": math.nan, "se": math.nan, "df": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n_units": 0, "n_examples": 0, "seed_df": 0,
           "seed_var": math.nan, "example_var": math.nan, "few_seeds": True, "no_variation": False}
    rows = []
    for stratum, examples, ids, ca, cb in units:
        a, b = np.asarray(ca, dtype=float).ravel(), np.asarray(cb, dtype=float).ravel()
        ids = np.asarray(ids).ravel()
        if not (len(a) == len(b) == len(ids)):
            raise ValueError(f"two_level: a run pair has {len(ids)} ids, {len(a)} values for a and {len(b)} for b")
        if len(a):
            rows.append((stratum, examples, ids, a, b))
    n = len(rows)
    out.update(n_units=n, n_examples=int(sum(len(r[2]) for r in rows)))
    if n == 0:
        return out
    dbar = np.array([np.mean(a - b) for *_, a, b in rows])
    est = float(dbar.mean())
    out.update(mean_a=float(np.mean([a.mean() for *_, a, _ in rows])),
               mean_b=float(np.mean([b.mean() for *_, b in rows])), mean_diff=est)

    # seed part: spread of the pairs' mean differences within strata
    strata: dict = {}
    for u, r in enumerate(rows):
        strata.setdefault(r[0], []).append(u)
    ss = sum(float(((dbar[us] - dbar[us].mean()) ** 2).sum()) for us in strata.values())
    seed_df = sum(len(us) - 1 for us in strata.values())
    out.update(seed_df=seed_df, few_seeds=seed_df < FEW_SEED_DF)
    if seed_df == 0:
        return out  # one seed per stratum: seed-to-seed variation cannot be estimated -> no interval
    seed_term = ss / seed_df / n

    # example part, per example set: spread of the per-example mean difference, less run-pair noise
    example_term, example_df = 0.0, 0
    groups: dict = {}
    for u, r in enumerate(rows):
        groups.setdefault(r[1], []).append(u)
    for us in groups.values():
        mat = _matrix([rows[u] for u in us])  # pairs x examples, NaN where a pair lacks an example
        k, m = mat.shape
        if m < 2:
            continue
        col = np.nanmean(mat, axis=0)
        w2 = (k / n) ** 2
        v_col = float(np.var(col, ddof=1))
        if k > 1:
            resid = mat - np.nanmean(mat, axis=1, keepdims=True) - col[None, :] + np.nanmean(mat)
            ms_res = float(np.nansum(resid ** 2)) / max(1, (k - 1) * (m - 1))
        else:
            ms_res = 0.0  # one pair: the residual cannot be told from the example part (kept: conservative)
        part = max(0.0, v_col - ms_res / k) / m
        example_term += w2 * part
        example_df += m - 1
    out.update(seed_var=seed_term, example_var=example_term, se=math.sqrt(seed_term + example_term), df=float(seed_df))
    if round(seed_term + example_term, 2 * DECIMALS) <= 0:
        if np.ptp(np.concatenate([a - b for *_, a, b in rows])) == 0:
            out.update(ci_low=round(est, DECIMALS), ci_high=round(est, DECIMALS), no_variation=True)
        return out  # else the data vary but both parts estimate 0 (two seeds that tie): no interval
    h = half_width(seed_term, seed_df, example_term, example_df, level)
    out.update(ci_low=float(np.round(est - h, DECIMALS)), ci_high=float(np.round(est + h, DECIMALS)),
               p=p_value(est, seed_term, seed_df, example_term, example_df) if with_p else math.nan)
    return out


def half_width(seed_var: float, seed_df: float, example_var: float, example_df: float, level: float = 0.95) -> float:
    """Each part with its own quantile, added in quadrature: sqrt(t(seed_df)^2 * seed_var + t(example_df)^2 * example_var)."""
    from scipy.stats import t

    q = 0.5 + level / 2
    return math.sqrt(sum(float(t.ppf(q, df)) ** 2 * v for v, df in ((seed_var, seed_df), (example_var, example_df))
                         if v > 0))


def p_value(est: float, seed_var: float, seed_df: float, example_var: float, example_df: float) -> float:
    """Two-sided p of "no difference", consistent with the interval: the alpha at which the 1 - alpha interval
    just reaches 0 (found by root search on log alpha; analytic quantiles, no resampling, so no floor)."""
    from scipy.optimize import brentq

    if est == 0:
        return 1.0

    def gap(log_alpha: float) -> float:
        return half_width(seed_var, seed_df, example_var, example_df, 1 - math.exp(log_alpha)) - abs(est)

    lo = math.log(1e-300)
    if gap(lo) <= 0:
        return 1e-300
    return float(min(1.0, math.exp(brentq(gap, lo, 0.0, xtol=1e-10))))


def _matrix(rows) -> np.ndarray:
    """The pairs x examples table of differences over the union of example ids (NaN where missing)."""
    first = rows[0][2]
    if all(len(r[2]) == len(first) and np.array_equal(r[2], first) for r in rows):
        return np.stack([a - b for *_, a, b in rows])
    ids = np.unique(np.concatenate([r[2] for r in rows]))
    mat = np.full((len(rows), len(ids)), np.nan)
    for j, (*_, i, a, b) in enumerate(rows):
        mat[j, np.searchsorted(ids, i)] = a - b
    return mat


def compare(df, preds, contrasts: Sequence[tuple[str, str]], by: Sequence[str], level: float = 0.95,
            keys: Sequence[str] | None = None, alpha: float | None = None):
    """The report's comparison table on per-example predictions: ``a`` vs ``b`` per contrast and group of
    ``by``, the interval of :func:`two_level`, Holm-adjusted together.

    ``df`` holds the done stage-2 runs; run pairs are matched on all of ``keys`` (stats.PAIR_KEYS), ``by``
    decides which are pooled into one comparison, and within a comparison the pairs that differ only in
    seed form a stratum (the other keys not in ``by``); examples are shared within a dataset.  Columns:
    contrast, a, b, the ``by`` columns, n (run pairs with predictions for both runs), n_examples,
    pairs_without_preds, mean_a, mean_b, mean_diff, ci_low, ci_high, se, seed_df, seed_var, example_var, p
    (analytic), p_floor (NaN: no resampling floor), p_holm, mcnemar_n, mcnemar_favour_a, mcnemar_favour_b,
    few_units (fewer than stats.MIN_UNITS pairs), few_seeds (seed_df < FEW_SEED_DF), no_variation, method.
    """
    import pandas as pd

    from . import stats

    keys = list(keys or stats.PAIR_KEYS)
    alpha = stats.ALPHA if alpha is None else alpha
    by = list(by)
    strata_keys = [k for k in keys if k not in by and k != "seed"]
    rows = []
    for a, b in contrasts:
        m = stats.matched_runs(df, a, b, keys)
        if m.empty:
            continue
        for key, g in m.groupby(by, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            units, pairs = [], []
            for _, r in g.iterrows():
                got = preds.paired_ids(r["run_a"], r["run_b"])
                if got is None or not len(got[0]):
                    continue
                ids, ca, cb = got
                units.append((tuple(r[k] for k in strata_keys), r["dataset"] if "dataset" in r.index else "", ids, ca, cb))
                pairs.append((ca, cb))
            res = two_level(units, level)
            rows.append({"contrast": f"{a} - {b}", "a": a, "b": b, **dict(zip(by, key)), "n": res["n_units"],
                         "n_examples": res["n_examples"], "pairs_without_preds": len(g) - len(units),
                         **{c: res[c] for c in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "se", "seed_df",
                                                "seed_var", "example_var", "p")},
                         "p_floor": math.nan, **stats.mcnemar_summary(pairs, alpha),
                         "few_units": res["n_units"] < stats.MIN_UNITS, "few_seeds": res["few_seeds"],
                         "no_variation": res["no_variation"], "method": METHOD})
    cols = ["contrast", "a", "b", *by, "n", "n_examples", "pairs_without_preds", "mean_a", "mean_b", "mean_diff",
            "ci_low", "ci_high", "se", "seed_df", "seed_var", "example_var", "p", "p_floor", "mcnemar_n",
            "mcnemar_favour_a", "mcnemar_favour_b", "few_units", "few_seeds", "no_variation", "method"]
    out = pd.DataFrame(rows, columns=cols)
    out.insert(cols.index("p_floor") + 1, "p_holm", stats.holm(out["p"].to_numpy(float)) if len(out) else [])
    return out
