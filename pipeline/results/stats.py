"""Statistics for the report and the runs: AUC, per-example paired comparisons, intervals, Holm correction.

Everything here is pure (no plotting, no I/O) so it can be tested on synthetic
numbers with known answers.  The module imports numpy only; scipy and pandas are
imported inside the functions that need them.  ``auc`` lives in :mod:`pipeline.metrics`
(the run side computes it too) and is re-exported here.

Longer than most modules (~480 lines) on purpose: the hierarchical bootstrap, the run-level
fallback and the Holm family they share are one piece of statistics, read and tested together.

The report's interval is no longer here: :mod:`pipeline.results.intervals` (a two-level t interval whose
coverage :mod:`pipeline.results.coverage` measures).  The two-level bootstrap below was the report's interval
before; it covers 0.73-0.94 instead of 0.95 at 2-5 seeds (BENCHMARKS.md, figures 7a-7f) and stays as the
coverage bench's baseline and as ``report.build(interval="bootstrap")``; its p at the resampling floor
(``boot_floor``) is printed as "< floor".

**The bootstrap comparison, when per-example predictions exist** (``hierarchical_compare``):
two conditions, e.g. ported and scratch, are matched run by run on everything
else that defines a run -- technique, host pair, dataset, budget (regime) and
seed -- and, within a matched pair of runs, example by example (both runs
score the same fixed eval split).  A comparison pools the run pairs of a group
(e.g. one technique at one budget, over host directions, datasets and seeds)
and reports

* the mean over run pairs of ``acc_a - acc_b``,
* a percentile CI from a **two-level (hierarchical) bootstrap**
  (``hierarchical_bootstrap``): resample run pairs with replacement, then
  within each drawn pair resample its examples with replacement, the same
  example indices for a and b (paired); both the seed-to-seed and the
  example-to-example variation are in the interval,
* a two-sided bootstrap p-value, ``2 * min(P*(T <= 0), P*(T >= 0))`` with the
  ``+1`` correction (never 0),
* per run pair, an exact McNemar test on the discordant examples
  (``mcnemar_exact``), summarised as "k of n run pairs favour a at p < 0.05",
* Holm's step-down adjustment across all the comparisons of one table.

**Fallback for sweeps without predictions** (older sweeps; ``paired_compare``):
one number per run, the differences ``a - b`` of matched pairs, a seeded
percentile bootstrap over pairs and the two-sided Wilcoxon signed-rank test.

Flags, in both paths: ``few_units`` marks an interval from fewer than
``MIN_UNITS`` (10) run pairs (resampling so few units understates the
uncertainty); ``no_variation`` marks an interval of zero width (every resample
gave the same value, e.g. two runs that predict the same class on every
example).  Such an interval is no finding: its p is NaN and it is left out of
the Holm family (``p_holm`` NaN); the raw test p-value stays in its own column.

Tiny samples are reported, never crash: no pairs gives NaN everywhere, one
run pair still gives an (example-level) interval, flagged.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence

import numpy as np

from ..metrics import auc  # noqa: F401  (re-exported: the report and tests use stats.auc)

# Differences are rounded before ranking: accuracies are ratios of small
# integers, and 0.515625 - 0.5 must tie with 0.5 - 0.484375 and be exactly 0
# when two runs agree, whatever the float rounding of the subtraction.
DIFF_DECIMALS = 12
PAIR_KEYS = ("technique", "host_pair", "dataset", "regime", "seed")
MIN_UNITS = 10  # fewer run pairs than this: the interval is flagged (few_units)
ALPHA = 0.05
_MAX_LEVELS = 16  # per-unit distinct values up to which the multinomial shortcut is used
_CHUNK_CELLS = 2_000_000  # bound on resample x unit cells held at once


# --------------------------------------------------------------------------------------------------
# McNemar (numpy / the standard library only); auc is pipeline.metrics.auc, re-exported
# --------------------------------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for one pair of runs on the same examples.

    ``b`` = examples a got right and b got wrong, ``c`` = the reverse.  Under the
    null the ``b + c`` discordant examples split Binomial(b + c, 1/2); p =
    min(1, 2 * P(X <= min(b, c))).  No discordant examples: p = 1.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("mcnemar_exact: counts must be non-negative")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    if n <= 5000:  # exact integer arithmetic, one correctly rounded division
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    i = np.arange(k + 1)
    lg = np.vectorize(math.lgamma)
    logpmf = math.lgamma(n + 1) - lg(i + 1) - lg(n - i + 1) - n * math.log(2)
    top = logpmf.max()
    return min(1.0, 2 * math.exp(top) * float(np.exp(logpmf - top).sum()))


def discordant(correct_a, correct_b) -> tuple[int, int]:
    """(b, c): examples only a got right, examples only b got right."""
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    return int((a & ~bb).sum()), int((~a & bb).sum())


def mcnemar_summary(pairs: Sequence[tuple], alpha: float = ALPHA) -> dict:
    """Per-run-pair exact McNemar tests summarised: n run pairs, how many favour a (a right on more of
    the discordant examples) and how many favour b at p < ``alpha``."""
    fa = fb = 0
    for ca, cb in pairs:
        b, c = discordant(ca, cb)
        if mcnemar_exact(b, c) < alpha:
            fa += b > c
            fb += c > b
    return {"mcnemar_n": len(pairs), "mcnemar_favour_a": int(fa), "mcnemar_favour_b": int(fb)}


# --------------------------------------------------------------------------------------------------
# the hierarchical bootstrap
# --------------------------------------------------------------------------------------------------
def hierarchical_bootstrap(pairs: Sequence[tuple], n_boot: int = 10_000, seed: int | Sequence[int] = 0,
                           level: float = 0.95, method: str = "auto") -> dict:
    """Two-level paired bootstrap of the mean over run pairs of ``acc_a - acc_b``.

    ``pairs``: one ``(correct_a, correct_b)`` per matched pair of runs, each a
    1-D array of 0/1 (or bool) over the same examples in the same order
    (lengths may differ between pairs, e.g. two datasets).  A resample draws
    run pairs with replacement and, within each drawn pair (each draw
    independently), examples with replacement, the same indices for a and b.

    Returns a dict: ``mean_a``, ``mean_b``, ``mean_diff`` (observed, pairs
    weighted equally), ``ci_low``, ``ci_high`` (percentile), ``p`` (two-sided
    bootstrap p with the +1 correction; NaN when the interval has zero width),
    ``n_units`` (run pairs), ``n_examples`` (paired examples over all units),
    ``few_units`` (n_units < MIN_UNITS) and ``no_variation`` (zero-width
    interval).  No pairs: NaN values and n_units 0.

    ``method``: "auto" draws the within-pair resample as multinomial counts
    over the pair's distinct differences (-1, 0, 1 for correctness data),
    which has exactly the distribution of the statistic under index
    resampling and costs nothing per example; "direct" draws example indices
    (the textbook procedure; used for checking, and for data with many
    distinct values).  10,000 resamples of 6 pairs x 1,000 examples take a
    few milliseconds.
    """
    units = []
    for ca, cb in pairs:
        a, b = np.asarray(ca, dtype=float).ravel(), np.asarray(cb, dtype=float).ravel()
        if len(a) != len(b):
            raise ValueError(f"hierarchical_bootstrap: a pair has {len(a)} examples for a and {len(b)} for b")
        if len(a):
            units.append((a, b))
    n_units = len(units)
    out = {"mean_a": math.nan, "mean_b": math.nan, "mean_diff": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p": math.nan, "n_units": n_units,
           "n_examples": int(sum(len(a) for a, _ in units)), "few_units": n_units < MIN_UNITS,
           "no_variation": False}
    if n_units == 0:
        return out
    diffs = [a - b for a, b in units]
    obs = np.array([d.mean() for d in diffs])
    out.update(mean_a=float(np.mean([a.mean() for a, _ in units])),
               mean_b=float(np.mean([b.mean() for _, b in units])), mean_diff=float(obs.mean()))
    rng = np.random.default_rng(seed)
    levels = [np.unique(d, return_counts=True) for d in diffs]
    k_max = max(len(v) for v, _ in levels)
    if method not in ("auto", "direct"):
        raise ValueError(f"hierarchical_bootstrap: unknown method {method!r}")
    use_counts = method == "auto" and k_max <= _MAX_LEVELS
    sizes = np.array([len(d) for d in diffs])
    if use_counts:
        vals = np.zeros((n_units, k_max))
        probs = np.zeros((n_units, k_max))
        for u, (v, c) in enumerate(levels):
            vals[u, :len(v)] = v
            probs[u, :len(v)] = c / c.sum()
    stat = np.empty(n_boot)
    chunk = max(1, _CHUNK_CELLS // (n_units * (k_max if use_counts else 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        draw = rng.integers(0, n_units, size=(k, n_units))  # outer level: run pairs
        if use_counts:  # inner level: counts of each distinct difference in a resample of the pair's examples
            counts = rng.multinomial(sizes[draw], probs[draw])
            inner = (counts * vals[draw]).sum(axis=-1) / sizes[draw]
        else:
            inner = np.empty((k, n_units))
            for u in np.unique(draw):
                where = draw == u
                m = int(where.sum())
                idx = rng.integers(0, sizes[u], size=(m, sizes[u]))
                inner[where] = diffs[u][idx].mean(axis=1)
        stat[start:start + k] = inner.mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(stat, [alpha, 1 - alpha])
    lo, hi = float(np.round(lo, DIFF_DECIMALS)), float(np.round(hi, DIFF_DECIMALS))
    out.update(ci_low=lo, ci_high=hi, no_variation=bool(hi - lo == 0))
    if not out["no_variation"]:
        le, ge = int((stat <= 0).sum()), int((stat >= 0).sum())
        out["p"] = float(min(1.0, 2 * min(le + 1, ge + 1) / (n_boot + 1)))
    return out


class Predictions:
    """Per-example correctness by run id, sorted by example id (from predictions.parquet)."""

    def __init__(self, by_run: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.by_run = by_run

    @classmethod
    def from_frame(cls, df) -> Predictions:
        """``df`` with columns run_id, example_id, correct (one row per run and eval example)."""
        if df is None or not len(df):
            return cls({})
        rid = df["run_id"].astype(str).to_numpy()
        ex = df["example_id"].to_numpy(np.int64)
        ok = df["correct"].to_numpy()
        ok = np.asarray(ok == True, dtype=bool)  # noqa: E712 - nullable booleans: missing = wrong is not assumed
        codes, uniq = _factorize(rid)
        order = np.lexsort((ex, codes))
        codes, ex, ok = codes[order], ex[order], ok[order]
        bounds = np.flatnonzero(np.diff(codes)) + 1
        by_run = {}
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(codes)]):
            e, c = ex[lo:hi], ok[lo:hi]
            first = np.r_[True, e[1:] != e[:-1]]  # a duplicated example id counts once
            by_run[str(uniq[codes[lo]])] = (e[first], c[first])
        return cls(by_run)

    def __contains__(self, run_id) -> bool:
        return run_id in self.by_run

    def __len__(self) -> int:
        return len(self.by_run)

    def paired(self, run_a: str, run_b: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Correctness of both runs on the examples both scored (aligned by example id), or None."""
        got = self.paired_ids(run_a, run_b)
        return None if got is None else got[1:]

    def paired_ids(self, run_a: str, run_b: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(example ids, correctness of a, of b) on the examples both runs scored, sorted by id; or None."""
        if run_a not in self.by_run or run_b not in self.by_run:
            return None
        (ea, ca), (eb, cb) = self.by_run[run_a], self.by_run[run_b]
        if len(ea) == len(eb) and np.array_equal(ea, eb):
            return ea, ca, cb
        ids, ia, ib = np.intersect1d(ea, eb, assume_unique=True, return_indices=True)
        return ids, ca[ia], cb[ib]


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, codes = np.unique(values, return_inverse=True)
    return codes.ravel(), uniq


def matched_runs(df, a: str, b: str, keys: Sequence[str] = PAIR_KEYS):
    """One row per matched pair of runs of conditions ``a`` and ``b``: the keys, ``run_a`` and ``run_b``."""
    keys = list(keys)
    left = df.loc[df["condition"] == a, [*keys, "run_id"]]
    right = df.loc[df["condition"] == b, [*keys, "run_id"]]
    m = left.merge(right, on=keys, suffixes=("_a", "_b"), validate="one_to_one")
    return m.rename(columns={"run_id_a": "run_a", "run_id_b": "run_b"}).sort_values(keys).reset_index(drop=True)


def prediction_pairs(df, preds: Predictions, a: str, b: str, keys: Sequence[str] = PAIR_KEYS):
    """Matched run pairs with their per-example summary: n_examples (paired), acc_a, acc_b, diff,
    mcnemar_b, mcnemar_c (discordant counts), p_mcnemar.  Pairs without predictions for both runs
    have n_examples 0 and NaN elsewhere."""
    import pandas as pd

    m = matched_runs(df, a, b, keys)
    rows = []
    for ra, rb in zip(m["run_a"], m["run_b"]):
        pc = preds.paired(ra, rb)
        if pc is None or not len(pc[0]):
            rows.append((0, math.nan, math.nan, math.nan, pd.NA, pd.NA, math.nan))
            continue
        ca, cb = pc
        bb, cc = discordant(ca, cb)
        acc_a, acc_b = float(ca.mean()), float(cb.mean())
        rows.append((len(ca), acc_a, acc_b, round(acc_a - acc_b, DIFF_DECIMALS), bb, cc, mcnemar_exact(bb, cc)))
    extra = pd.DataFrame(rows, columns=["n_examples", "acc_a", "acc_b", "diff", "mcnemar_b", "mcnemar_c",
                                        "p_mcnemar"])
    return pd.concat([m, extra], axis=1)


def boot_floor(n_boot: int) -> float:
    """The smallest two-sided bootstrap p with the +1 correction: ``2 / (n_boot + 1)`` (no resample beyond 0).
    A p at this floor says only "p < floor": the report prints it so, and its Holm adjustment likewise."""
    return 2 / (n_boot + 1)


def hierarchical_compare(df, preds: Predictions, contrasts: Sequence[tuple[str, str]], by: Sequence[str],
                         n_boot: int = 10_000, seed: int = 0, level: float = 0.95,
                         keys: Sequence[str] = PAIR_KEYS, alpha: float = ALPHA):
    """The primary comparison table: ``a`` vs ``b`` per contrast and group of ``by``, on per-example
    predictions, Holm-adjusted together.

    ``df`` holds the done stage-2 runs (condition, run_id and ``keys``).  Run pairs are matched on
    all of ``keys``; ``by`` decides which are pooled into one comparison.  Columns: contrast, a, b,
    the ``by`` columns, n (run pairs with predictions for both runs), n_examples, pairs_without_preds,
    mean_a, mean_b, mean_diff, ci_low, ci_high, p_boot, p (= p_boot, NaN without variation), p_floor
    (:func:`boot_floor`), p_holm,
    mcnemar_n, mcnemar_favour_a, mcnemar_favour_b, few_units, no_variation, method.  Each bootstrap
    is seeded from ``seed`` and the comparison's name, so adding a comparison changes no other.
    """
    import pandas as pd

    by = list(by)
    rows = []
    for a, b in contrasts:
        m = matched_runs(df, a, b, keys)
        if m.empty:
            continue
        for key, g in m.groupby(by, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            units = [pc for pc in (preds.paired(ra, rb) for ra, rb in zip(g["run_a"], g["run_b"]))
                     if pc is not None and len(pc[0])]
            name = f"{a}-{b}|" + "|".join(map(str, key))
            r = hierarchical_bootstrap(units, n_boot, seed=[seed, zlib.crc32(name.encode())], level=level)
            rows.append({"contrast": f"{a} - {b}", "a": a, "b": b, **dict(zip(by, key)), "n": r["n_units"],
                         "n_examples": r["n_examples"], "pairs_without_preds": len(g) - len(units),
                         "mean_a": r["mean_a"], "mean_b": r["mean_b"], "mean_diff": r["mean_diff"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], "p_boot": r["p"], "p": r["p"],
                         "p_floor": boot_floor(n_boot),
                         **mcnemar_summary(units, alpha), "few_units": r["few_units"],
                         "no_variation": r["no_variation"], "method": "hierarchical bootstrap"})
    cols = ["contrast", "a", "b", *by, "n", "n_examples", "pairs_without_preds", "mean_a", "mean_b", "mean_diff",
            "ci_low", "ci_high", "p_boot", "p", "p_floor", "p_holm", "mcnemar_n", "mcnemar_favour_a", "mcnemar_favour_b",
            "few_units", "no_variation", "method"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c != "p_holm"])
    out.insert(cols.index("p_holm"), "p_holm", holm(out["p"].to_numpy(float)) if len(out) else [])
    return out


# --------------------------------------------------------------------------------------------------
# one number per run (the fallback for sweeps without predictions) and shared helpers
# --------------------------------------------------------------------------------------------------
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


def paired_differences(df, a: str, b: str, metric: str = "accuracy", keys: Sequence[str] = PAIR_KEYS):
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


def paired_compare(df, contrasts: Sequence[tuple[str, str]], by: Sequence[str], metric: str = "accuracy",
                   n_boot: int = 10_000, seed: int = 0, level: float = 0.95):
    """Run-level paired comparisons ``a`` vs ``b`` (one number per run; the fallback without predictions).

    Pairs are matched on all of PAIR_KEYS, whatever ``by`` is; ``by`` only decides
    which pairs are pooled into one comparison.  Columns: contrast, the ``by``
    columns, n (pairs), mean_a, mean_b, mean_diff, ci_low, ci_high, p_wilcoxon,
    p (= p_wilcoxon, NaN when the interval has zero width), p_holm (Holm over
    the non-NaN p), wins/losses/ties (pairs where a is better/worse/equal),
    few_units, no_variation, method.  The bootstrap of each comparison is
    seeded from ``seed`` and the comparison's own name, so adding a comparison
    does not change the others.
    """
    import pandas as pd

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
            flat = not _isnan(lo) and hi - lo == 0
            pw = wilcoxon_p(d)
            rows.append({"contrast": f"{a} - {b}", "a": a, "b": b, **dict(zip(by, key)), "n": len(d),
                         "mean_a": float(g[a].mean()), "mean_b": float(g[b].mean()),
                         "mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi,
                         "p_wilcoxon": pw, "p": math.nan if flat else pw, "wins": int((d > 0).sum()),
                         "losses": int((d < 0).sum()), "ties": int((d == 0).sum()), "few_units": len(d) < MIN_UNITS,
                         "no_variation": flat, "method": "wilcoxon"})
    out = pd.DataFrame(rows, columns=["contrast", "a", "b", *by, "n", "mean_a", "mean_b", "mean_diff", "ci_low",
                                      "ci_high", "p_wilcoxon", "p", "wins", "losses", "ties", "few_units",
                                      "no_variation", "method"])
    out["p_holm"] = holm(out["p"].to_numpy(float)) if len(out) else []
    return out


def _isnan(v) -> bool:
    try:
        return math.isnan(v)
    except TypeError:
        return False
