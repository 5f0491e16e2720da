"""The report's interval for a paired comparison: a two-level variance decomposition with t quantiles.

A comparison (say ported vs scratch for one technique at one budget) pools *run pairs*: two runs that
differ only in condition, matched on technique, host direction, dataset, budget and seed.  Within a
pair the two runs scored the same eval examples, so each pair gives one difference per example,
``D[u, i] = correct_a - correct_b``.  The estimate is the mean over run pairs of their mean
difference (pairs weighted equally).  The *strata* -- host direction x dataset, the study's design --
are fixed; two sources of chance move the estimate:

* **seeds** -- another seed trains other modules.  A seed is *shared*: seed s fixes the module's
  initial values, the batch order and the sampling noise in every direction and dataset, so the pairs
  of one seed in different strata are not independent replicates (a seed that trains a good module in
  one direction tends to in the other).  The seed part therefore **clusters on the seed**: each pair's
  mean difference less its stratum's mean (the fixed design taken out) is summed per seed, and the
  variance of the estimate is the sum over seeds of the squared cluster sums (CR2: each residual is
  scaled by ``sqrt(k / (k - 1))``, ``k`` its stratum's seed count, which undoes the shrinkage of a
  residual from an estimated mean; for a balanced design this is exactly ``var(c_s) / S`` of the
  per-seed means ``c_s`` over strata).  Its degrees of freedom are ``seeds - 1`` (the number of seed
  clusters less one), not ``sum(seeds - 1)`` over strata: pooling within-stratum spread over strata
  as if they were independent replicates covered 0.67 at 4 strata and 3 shared seeds (BENCHMARKS.md,
  figures 7).  Why clustering rather than a model with shared seed effects: it is valid whatever the
  correlation between a seed's effects in different strata (none, partial, total) and whatever their
  distribution's shape beyond what the t quantile assumes, with no variance component to estimate
  from three seeds; the price is fewer degrees of freedom when seed effects happen to be independent
  (e.g. t(2) instead of t(8) at 4 strata x 3 seeds), i.e. a wider interval -- honest, not optimal.
* **examples** -- another draw of eval examples: every seed and both conditions score the *same*
  examples (crossed, not nested), so an example that favours a in one seed tends to favour it in every
  seed, and this part does not average away over seeds.  It is estimated **within each stratum**: the
  stratum's per-example mean difference over its pairs, centred; strata that score the same examples
  (two host directions on one dataset) are summed example by example with their weights (share of
  pairs), so a direction x example interaction is kept as signal of that stratum, not removed as noise;
  from the variance over examples of that sum, the run-pair noise is subtracted (each stratum's own
  residual mean square of its pair x example table over its number of pairs).  Datasets score different
  examples and add independently.  One pair in a stratum: its residual cannot be told from the example
  part and is kept (conservative).

``Var(estimate) = seed part + example part``; for one stratum this is ``(MS_seed + MS_example -
MS_residual) / (seeds x examples)`` of the balanced two-way crossed random-effects ANOVA, unbiased
whatever the distribution.  The seed part holds two things: how the modules differ from seed to seed,
and the run-pair noise averaged over the examples (each stratum's residual mean square over its pairs and
examples, ``noise_var``), which is estimated on ``(pairs - 1) x (examples - 1)`` degrees of freedom, not on
``seeds - 1``.  **Each part gets its own quantile** -- t on seeds - 1 for the seed part less its noise, t
on the noise's degrees of freedom for the noise, t on the example degrees of freedom (hundreds: about
1.96) for the example part -- and the half-widths add in quadrature:

    half-width = sqrt(t(seeds - 1)^2 x (seed part - noise) + t(noise df)^2 x noise + t(example df)^2 x example part)

When the modules differ from seed to seed this is the t interval over per-seed means; when they barely do,
the normal interval over examples and run-pair noise.  (The seed part at t(seeds - 1) whole, noise
included, over-covered -- 0.98 at 1 and 2 strata x 3 seeds in the demo-calibrated simulation -- and one t on
Satterthwaite's pooled degrees of freedom under-covers at 2 and 3 seeds.)  The p-value is the interval
inverted: the alpha at which the 1 - alpha interval just reaches 0, from analytic quantiles -- no
resampling, so no resampling floor.

What it estimates: the expected accuracy difference on a new draw of seeds and of examples from the
same distribution, for these techniques, host directions and datasets.  Its coverage is measured by
:mod:`pipeline.results.coverage` on synthetic sweeps shaped like every grid in ``sweeps/`` (1, 2 and 4
strata; 2, 3 and 5 seeds; seed effects independent, half and fully shared across strata, heavy-tailed,
one collapsed seed): ``make bench``, figures 7 in BENCHMARKS.md.  The cells the simulation found to
miss 0.93-0.97 are listed in ``coverage_cells.json`` beside this module, and the report marks every
interval whose shape (strata, seeds) falls in one (``shape_miss``).  With one seed there is no seed
part to estimate: no interval (NaN), never an example-only one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

DECIMALS = 12  # as stats.DIFF_DECIMALS: accuracies are ratios of small integers
FEW_SEED_DF = 2  # fewer seed-level degrees of freedom than this (2 seeds): coverage rests on normal seed effects
METHOD = "two-level t"  # seed-clustered (see above)
CELLS_FILE = Path(__file__).with_name("coverage_cells.json")
BAND = (0.93, 0.97)  # coverage asked of a 95 % interval in the simulation


class Unit(NamedTuple):
    """One run pair: ``stratum`` (the pairs that differ in seed only, e.g. ``(host_pair, dataset)``), ``seed``
    (pairs of one seed in different strata share it), ``examples`` (the set the ids index: the dataset), ``ids``
    (1-D, unique example ids) and 0/1 correctness ``a`` and ``b`` aligned with them."""

    stratum: object
    seed: object
    examples: object
    ids: np.ndarray
    a: np.ndarray
    b: np.ndarray


def two_level(units: Sequence[tuple], level: float = 0.95, with_p: bool = True, split_noise: bool = True) -> dict:
    """The interval of the mean over run pairs of ``mean(correct_a - correct_b)``.

    ``units``: one :class:`Unit` (or a 6-tuple in its order) per run pair.  ``with_p=False`` skips the p-value
    (a root search; the coverage simulation needs none).  ``split_noise=False`` puts the whole seed part, run-pair
    noise included, on t(seeds - 1): conservative, for contrasts that are not paired 0/1 differences (the
    retention's Fieller inversion, :mod:`pipeline.results.floor`, where the split covered 0.85 in its
    test).  Returns mean_a, mean_b, mean_diff, se (sqrt of
    seed_var + example_var), df (= seed_df), ci_low, ci_high, p (two-sided, the interval inverted; NaN without
    variation or without an interval), n_units, n_examples, n_strata, n_seeds (seed clusters), seed_df
    (n_seeds - 1), seed_var, example_var (the two parts of the variance), noise_var (the run-pair noise inside
    seed_var, on its own many degrees of freedom), few_seeds (seed_df < FEW_SEED_DF)
    and no_variation (every run pair and example shows the same difference: a zero-width interval).  Where
    the data vary but both parts are estimated as 0 (e.g. two seeds with the same mean difference and no shared
    example effect) there is no interval (NaN), as with one seed.
    """
    out = {"mean_a": math.nan, "mean_b": math.nan, "mean_diff": math.nan, "se": math.nan, "df": math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "n_units": 0, "n_examples": 0, "n_strata": 0,
           "n_seeds": 0, "seed_df": 0, "seed_var": math.nan, "example_var": math.nan, "noise_var": math.nan,
           "few_seeds": True,
           "no_variation": False}
    rows = []
    for u in units:
        if len(u) != 6:
            raise ValueError(f"two_level: a run pair is (stratum, seed, examples, ids, a, b), got {len(u)} fields")
        stratum, seed, examples, ids, ca, cb = u
        a, b = np.asarray(ca, dtype=float).ravel(), np.asarray(cb, dtype=float).ravel()
        ids = np.asarray(ids).ravel()
        if not (len(a) == len(b) == len(ids)):
            raise ValueError(f"two_level: a run pair has {len(ids)} ids, {len(a)} values for a and {len(b)} for b")
        if len(a):
            rows.append(Unit(stratum, seed, examples, ids, a, b))
    n = len(rows)
    out.update(n_units=n, n_examples=int(sum(len(r.ids) for r in rows)))
    if n == 0:
        return out
    dbar = np.array([np.mean(r.a - r.b) for r in rows])
    est = float(dbar.mean())
    strata: dict = {}
    for i, r in enumerate(rows):
        strata.setdefault(r.stratum, []).append(i)
    out.update(mean_a=float(np.mean([r.a.mean() for r in rows])), mean_b=float(np.mean([r.b.mean() for r in rows])),
               mean_diff=est, n_strata=len(strata))

    seed_var, n_seeds = _seed_part(rows, dbar, strata, n)
    seed_df = n_seeds - 1 if n_seeds else 0
    out.update(n_seeds=n_seeds, seed_df=seed_df, few_seeds=seed_df < FEW_SEED_DF)
    if seed_df < 1:
        return out  # one seed (or no stratum with two): seed-to-seed variation cannot be estimated -> no interval
    example_var, example_df, noise_var, noise_df = _example_part(rows, strata, n)
    noise_var = min(noise_var, seed_var) if split_noise else 0.0
    out.update(seed_var=seed_var, example_var=example_var, noise_var=noise_var, se=math.sqrt(seed_var + example_var),
               df=float(seed_df))
    if round(seed_var + example_var, 2 * DECIMALS) <= 0:
        if np.ptp(np.concatenate([r.a - r.b for r in rows])) == 0:
            out.update(ci_low=round(est, DECIMALS), ci_high=round(est, DECIMALS), no_variation=True)
        return out  # else the data vary but both parts estimate 0 (two seeds that tie): no interval
    parts = ((seed_var - noise_var, seed_df), (noise_var, noise_df), (example_var, example_df))
    h = half_width(parts, level)
    out.update(ci_low=float(np.round(est - h, DECIMALS)), ci_high=float(np.round(est + h, DECIMALS)),
               p=p_value(est, parts) if with_p else math.nan)
    return out


def _seed_part(rows: list[Unit], dbar: np.ndarray, strata: dict, n: int) -> tuple[float, int]:
    """(variance of the estimate from seed to seed, number of seed clusters): CR2 on the seed, strata fixed."""
    k = np.empty(n)
    resid = np.empty(n)
    for us in strata.values():
        resid[us] = dbar[us] - dbar[us].mean()
        k[us] = len(us)
    clusters: dict = {}
    for i, r in enumerate(rows):
        if k[i] >= 2:  # a stratum with one seed adds to the estimate, not to the seed part
            clusters.setdefault(r.seed, []).append(i)
    total = 0.0
    for us in clusters.values():
        e = resid[us]
        if len({rows[i].stratum for i in us}) == len(us):  # one pair per stratum (the usual case): I - H_gg diagonal
            total += float((e * np.sqrt(k[us] / (k[us] - 1))).sum() / n) ** 2
            continue
        # I - H_gg for the stratum-mean design: 1 - 1/k on the diagonal, -1/k between two pairs of one stratum
        same = np.array([[rows[i].stratum == rows[j].stratum for j in us] for i in us], dtype=float)
        m = np.eye(len(us)) - same / k[us][None, :]
        w, v = np.linalg.eigh((m + m.T) / 2)
        inv_sqrt = (v / np.sqrt(np.clip(w, 1e-12, None))) @ v.T
        total += float((inv_sqrt @ e).sum() / n) ** 2
    return total, len(clusters)


def _example_part(rows: list[Unit], strata: dict, n: int) -> tuple[float, int, float, int]:
    """(variance of the estimate from the draw of examples, its degrees of freedom, the run-pair noise part of the
    seed part, its degrees of freedom), within each stratum."""
    total, df, noise_total, noise_df = 0.0, 0, 0.0, 0
    groups: dict = {}
    for s, us in strata.items():
        groups.setdefault(rows[us[0]].examples, []).append(s)
    for names in groups.values():
        ids = np.unique(np.concatenate([rows[i].ids for s in names for i in strata[s]]))
        m = len(ids)
        if m < 2:
            continue
        z = np.zeros(m)
        noise = 0.0
        for s in names:
            us = strata[s]
            mat = _matrix([rows[i] for i in us], ids)  # pairs x examples, NaN where a pair lacks an example
            k = len(us)
            full = not np.isnan(mat).any()
            mean = np.mean if full else np.nanmean
            col = mean(mat, axis=0)
            seen = ~np.isnan(col)
            w = k / n
            z[seen] += w * (col[seen] - col[seen].mean())
            if k > 1:
                resid = mat - mean(mat, axis=1, keepdims=True) - col[None, :] + mean(mat)
                ms_res = float(np.nansum(resid ** 2)) / max(1, (k - 1) * (int(seen.sum()) - 1))
                noise += w ** 2 * ms_res / k
                noise_df += (k - 1) * (int(seen.sum()) - 1)
        total += max(0.0, float((z ** 2).sum()) / (m - 1) - noise) / m
        noise_total += noise / m
        df += m - 1
    return total, df, noise_total, noise_df


def half_width(parts, level: float = 0.95) -> float:
    """Each part ``(variance, df)`` with its own t quantile, added in quadrature: sqrt(sum t(df)^2 * variance)."""
    q = 0.5 + level / 2
    return math.sqrt(sum(_t(q, df) ** 2 * v for v, df in parts if v > 0))


def p_value(est: float, parts) -> float:
    """Two-sided p of "no difference", consistent with the interval: the alpha at which the 1 - alpha interval
    just reaches 0 (found by root search on log alpha; analytic quantiles, no resampling, so no floor)."""
    from scipy.optimize import brentq

    if est == 0:
        return 1.0

    def gap(log_alpha: float) -> float:
        return half_width(parts, 1 - math.exp(log_alpha)) - abs(est)

    lo = math.log(1e-300)
    if gap(lo) <= 0:
        return 1e-300
    return float(min(1.0, math.exp(brentq(gap, lo, 0.0, xtol=1e-10))))


@lru_cache(maxsize=4096)
def _t(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _matrix(rows: list[Unit], ids: np.ndarray) -> np.ndarray:
    """The pairs x examples table of differences over ``ids`` (sorted, unique; NaN where a pair lacks one)."""
    if all(len(r.ids) == len(ids) and np.array_equal(r.ids, ids) for r in rows):
        return np.stack([r.a - r.b for r in rows])
    mat = np.full((len(rows), len(ids)), np.nan)
    for j, r in enumerate(rows):
        mat[j, np.searchsorted(ids, r.ids)] = r.a - r.b
    return mat


@lru_cache(maxsize=1)
def missed_cells() -> dict[tuple[int, int], str]:
    """{(strata, seeds): what missed} for the coverage cells outside 0.93-0.97 (``coverage_cells.json``, written by
    ``make bench``), the ``collapsed`` kind left out (``collapse_coverage``); empty when the file is absent."""
    miss: dict[tuple[int, int], list[str]] = {}
    for c in _cells():
        if c["kind"] != "collapsed" and not BAND[0] <= c["coverage"] <= BAND[1]:
            miss.setdefault((c["strata"], c["seeds"]), []).append(f"{c['kind']} {c['coverage']:.3f}")
    return {k: "; ".join(v) for k, v in miss.items()}


def collapse_coverage(n_strata: int, n_seeds: int) -> float:
    """The simulated coverage at this shape when a seed's module may have learned nothing (one seed in three, the
    ``collapsed`` kind, demo setting); NaN when not simulated.  The report quotes it beside its "did it learn" table."""
    h, s = simulated_shape(n_strata, n_seeds)
    got = [c["coverage"] for c in _cells() if (c["strata"], c["seeds"], c["kind"]) == (h, s, "collapsed")]
    return min(got) if got else math.nan


def _cells() -> list[dict]:
    if not CELLS_FILE.exists():
        return []
    return json.loads(CELLS_FILE.read_text())["cells"]


def simulated_shape(n_strata: int, n_seeds: int) -> tuple[int, int]:
    """The simulated cell an interval's shape is judged by: strata 1, 2 or 4 (4 stands for 4 and more), seeds 2, 3
    or 5 (3 for 3-4, 5 for 5 and more)."""
    h = 1 if n_strata <= 1 else 2 if n_strata <= 3 else 4
    s = 2 if n_seeds <= 2 else 3 if n_seeds <= 4 else 5
    return h, s


def shape_miss(n_strata: int, n_seeds: int) -> bool:
    """Whether an interval of this shape falls in a coverage cell known to miss 0.93-0.97 (any seed-effect kind)."""
    if n_seeds < 2:
        return False  # no interval to mark
    return simulated_shape(int(n_strata), int(n_seeds)) in missed_cells()


def compare(df, preds, contrasts: Sequence[tuple[str, str]], by: Sequence[str], level: float = 0.95,
            keys: Sequence[str] | None = None, alpha: float | None = None):
    """The report's comparison table on per-example predictions: ``a`` vs ``b`` per contrast and group of
    ``by``, the interval of :func:`two_level`, Holm-adjusted together.

    ``df`` holds the done stage-2 runs; run pairs are matched on all of ``keys`` (stats.PAIR_KEYS), ``by``
    decides which are pooled into one comparison, and within a comparison the pairs that differ only in
    seed form a stratum (the other keys not in ``by``); pairs of one seed form a seed cluster; examples are shared
    within a dataset.  Columns: contrast, a, b, the ``by`` columns, n (run pairs with predictions for both runs),
    n_examples, n_strata, n_seeds, pairs_without_preds, mean_a, mean_b, mean_diff, ci_low, ci_high, se, seed_df,
    seed_var, example_var, p (analytic), p_floor (NaN: no resampling floor), p_holm, mcnemar_n, mcnemar_favour_a,
    mcnemar_favour_b, few_units (fewer than stats.MIN_UNITS pairs), few_seeds (seed_df < FEW_SEED_DF),
    shape_miss (the shape falls in a coverage cell known to miss), no_variation, method.
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
                units.append(Unit(tuple(r[k] for k in strata_keys), r["seed"] if "seed" in r.index else None,
                                  r["dataset"] if "dataset" in r.index else "", ids, ca, cb))
                pairs.append((ca, cb))
            res = two_level(units, level)
            rows.append({"contrast": f"{a} - {b}", "a": a, "b": b, **dict(zip(by, key)), "n": res["n_units"],
                         "n_examples": res["n_examples"], "n_strata": res["n_strata"], "n_seeds": res["n_seeds"],
                         "pairs_without_preds": len(g) - len(units),
                         **{c: res[c] for c in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "se", "seed_df",
                                                "seed_var", "example_var", "p")},
                         "p_floor": math.nan, **stats.mcnemar_summary(pairs, alpha),
                         "few_units": res["n_units"] < stats.MIN_UNITS, "few_seeds": res["few_seeds"],
                         "shape_miss": shape_miss(res["n_strata"], res["n_seeds"]),
                         "no_variation": res["no_variation"], "method": METHOD})
    cols = ["contrast", "a", "b", *by, "n", "n_examples", "n_strata", "n_seeds", "pairs_without_preds", "mean_a",
            "mean_b", "mean_diff", "ci_low", "ci_high", "se", "seed_df", "seed_var", "example_var", "p", "p_floor",
            "mcnemar_n", "mcnemar_favour_a", "mcnemar_favour_b", "few_units", "few_seeds", "shape_miss",
            "no_variation", "method"]
    out = pd.DataFrame(rows, columns=cols)
    out.insert(cols.index("p_floor") + 1, "p_holm", stats.holm(out["p"].to_numpy(float)) if len(out) else [])
    return out
