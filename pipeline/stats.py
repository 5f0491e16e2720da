"""Statistics for the report: t-intervals over seeds, paired comparisons, Holm correction.

Everything here is pure (numpy/scipy/pandas, no plotting, no I/O) so it can be
tested on synthetic numbers with known answers.

Paired comparisons (``paired_compare``) match two conditions, e.g. ported and
scratch, on everything else that defines a run -- technique, host pair,
dataset, budget (regime) and seed -- and summarise the differences
``a - b`` per group with

* the mean difference and a seeded percentile bootstrap 95% CI (resampling pairs),
* the two-sided Wilcoxon signed-rank p-value (zero differences dropped, the
  ``wilcox`` convention; exact distribution for small n as scipy chooses),
* Holm's step-down adjustment across all the comparisons in one table.

Tiny samples are reported, never crash: no pairs gives NaN everywhere, one
pair gives its difference without a CI, and all-zero differences give p = 1.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

# Differences are rounded before ranking: accuracies are ratios of small
# integers, and 0.515625 - 0.5 must tie with 0.5 - 0.484375 and be exactly 0
# when two runs agree, whatever the float rounding of the subtraction.
DIFF_DECIMALS = 12
PAIR_KEYS = ("technique", "host_pair", "dataset", "regime", "seed")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of a Student-t interval for the mean; NaN where undefined.

    n = 0 gives all NaN; n = 1 gives the value with a NaN interval (one seed says
    nothing about spread); identical values give a zero-width interval.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not _isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(x.mean())
    if n == 1:
        return m, math.nan, math.nan, 1
    sd = float(x.std(ddof=1))
    h = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return m, m - h, m + h, n


def bootstrap_ci(diffs: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
                 seed: int | Sequence[int] = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (resamples pairs, seeded).

    Fewer than two differences: (NaN, NaN).  All equal: a zero-width interval at that value.
    """
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)  # bound memory for large n
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        means[start:start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value; NaN without data, 1.0 when every difference is zero."""
    from scipy import stats

    d = np.round(np.asarray(diffs, dtype=float), DIFF_DECIMALS)
    if len(d) == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give with n non-zero pairs."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else math.nan


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family = the non-NaN entries; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_differences(df: pd.DataFrame, a: str, b: str, metric: str = "accuracy",
                       keys: Sequence[str] = PAIR_KEYS) -> pd.DataFrame:
    """One row per matched pair: the keys, ``a``'s and ``b``'s metric, ``diff = a - b`` and both run ids.

    ``df`` holds stage-2 results (columns ``condition``, ``run_id``, ``metric`` and ``keys``).
    Runs without a partner (its run failed or has not finished) are left out of the pairs.
    """
    keys = list(keys)
    cols = [*keys, "run_id", metric]
    left = df.loc[df["condition"] == a, cols].dropna(subset=[metric])
    right = df.loc[df["condition"] == b, cols].dropna(subset=[metric])
    m = left.merge(right, on=keys, suffixes=(f"_{a}", f"_{b}"), validate="one_to_one")
    m = m.rename(columns={f"{metric}_{a}": a, f"{metric}_{b}": b, f"run_id_{a}": f"run_{a}",
                          f"run_id_{b}": f"run_{b}"})
    m["diff"] = np.round(m[a].astype(float) - m[b].astype(float), DIFF_DECIMALS)
    return m.sort_values(keys).reset_index(drop=True)


def paired_compare(df: pd.DataFrame, contrasts: Sequence[tuple[str, str]], by: Sequence[str],
                   metric: str = "accuracy", n_boot: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> pd.DataFrame:
    """Paired comparisons ``a`` vs ``b`` for each contrast and each group of ``by``, Holm-adjusted together.

    Pairs are matched on all of PAIR_KEYS, whatever ``by`` is; ``by`` only decides
    which pairs are pooled into one comparison.  Columns: contrast, the ``by``
    columns, n (pairs), mean_a, mean_b, mean_diff, ci_low, ci_high, p_wilcoxon,
    p_holm, wins/losses/ties (pairs where a is better/worse/equal).  The
    bootstrap of each comparison is seeded from ``seed`` and the comparison's
    own name, so adding a comparison does not change the others.
    """
    by = list(by)
    rows = []
    for a, b in contrasts:
        pairs = paired_differences(df, a, b, metric)
        if pairs.empty:
            continue
        for key, g in pairs.groupby(by, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            d = g["diff"].to_numpy(float)
            name = f"{a}-{b}|" + "|".join(map(str, key))
            lo, hi = bootstrap_ci(d, level, n_boot, seed=[seed, zlib.crc32(name.encode())])
            rows.append({"contrast": f"{a} - {b}", "a": a, "b": b, **dict(zip(by, key)), "n": len(d),
                         "mean_a": float(g[a].mean()), "mean_b": float(g[b].mean()),
                         "mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi,
                         "p_wilcoxon": wilcoxon_p(d), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
                         "ties": int((d == 0).sum())})
    out = pd.DataFrame(rows, columns=["contrast", "a", "b", *by, "n", "mean_a", "mean_b", "mean_diff", "ci_low",
                                      "ci_high", "p_wilcoxon", "wins", "losses", "ties"])
    out["p_holm"] = holm(out["p_wilcoxon"].to_numpy(float)) if len(out) else []
    return out


def _isnan(v) -> bool:
    try:
        return math.isnan(v)
    except TypeError:
        return False
