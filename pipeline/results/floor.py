"""Retention above the floor: how much of what a ported module adds over the bare receiving host survives.

The raw retention ratio (ported accuracy on the receiving host / the same module's accuracy on its origin host)
is near 1 even for a module that carries nothing, whenever the bare receiving host alone is nearly as good as the
module was (0.7-0.95 of it in the host ladder).  ``above_floor`` measures from the floor instead:
``(ported - floor) / (origin - floor)`` -- 1 = everything the module added is kept, 0 = it sits at the floor
(the bare host: ``no-module``; ``head-only`` in older trained-head sweeps), < 0 = it does harm -- with a
Fieller interval built on the report's two-level interval (``intervals.two_level``).  ``floor_triples`` matches
each ported run with its floor run and its stage-1 origin run.  Used by the retention table and the host ladder
(``tables.retention_table``, ``drift``).  Pure numpy/pandas (scipy for the root search).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import intervals, stats

FLOORS = ("no-module", "head-only")  # the bare receiving host (head-free) / the ported head alone (trained head)
CONDITIONS = ("ported", *FLOORS)
UNIT_EXAMPLES = "seeds x examples"  # per-example predictions of every run behind the number
UNIT_RUNS = "seeds (run accuracies)"  # some run lacks predictions: one number per run, the eval set taken as fixed


def zero_shot(runs: pd.DataFrame) -> pd.DataFrame:
    """Done zero-shot stage-2 runs of the ladder's conditions, with the matched stage-1 accuracy."""
    if "origin_run" not in runs:
        return runs.iloc[:0]
    s1 = runs[(runs["stage"] == 1) & (runs["state"] == "done")].set_index("run_id")["accuracy"]
    s2 = runs[(runs["stage"] == 2) & (runs["state"] == "done") & (runs["regime"] == 0)
              & runs["condition"].isin(CONDITIONS)]
    s2 = s2.assign(origin_accuracy=s2["origin_run"].map(s1),
                   receiving_host=s2["host_pair"].astype(str).str.split("->").str[-1])
    s2 = s2.dropna(subset=["origin_accuracy", "accuracy"])
    return s2[s2["origin_accuracy"] > 0]


def above_floor(units, level: float = 0.95) -> dict:
    """Retention above the floor, ``(ported - floor) / (origin - floor)``, with a Fieller-type 95 % interval.

    ``units``: one ``(stratum, seed, examples, ids, ported, floor, origin)`` per seed (and stratum, e.g. the
    dataset): the correctness (0/1, or any score) of the ported module, of the floor run (the bare receiving
    host) and of the same module on its origin host, aligned on the example ``ids`` of the set ``examples``.
    The estimate is the ratio of means over the units, ``R = mean(ported - floor) / mean(origin - floor)``.

    The interval, and why this one: R is a ratio whose denominator -- the origin's margin over the bare host --
    is itself estimated from a few seeds and can be small, so the delta method's symmetric ``R +/- t se`` under-
    covers exactly where the margin is uncertain.  Fieller's construction is exact for a ratio of means under
    normality and says so when the denominator is not distinguishable from 0 (the set is unbounded).  It is the
    test inversion ``{R0 : mean((ported - floor) - R0 (origin - floor)) = 0 is not rejected}``; the test here is
    the report's own two-level interval (``intervals.two_level``) of that linear contrast, so both sources of
    chance count as in every other interval of the report: seeds (clustered on the seed across strata, t on
    seeds - 1 degrees of freedom, the run-pair noise inside it not split off: the split covered 0.85 here, the whole
    seed part 0.96) and the eval examples all runs share (crossed).  With one number per run (``ids`` of length 1, no
    predictions) the example part vanishes and this is the classic Fieller interval on the per-seed values with
    t(seeds - 1).  The bounds are found by root search on each side of R (the acceptance set of a quadratic
    form: at most one bound per side).

    Returns above_floor (R), above_floor_low / _high, above_floor_why ("" or why there is no interval or no
    estimate: the origin not above the floor, one seed, an unbounded set), n_units, seed_df.
    """
    from scipy.optimize import brentq

    out = {"above_floor": np.nan, "above_floor_low": np.nan, "above_floor_high": np.nan, "above_floor_why": "",
           "n_units": len(units), "seed_df": 0}
    if not units:
        out["above_floor_why"] = "no matched runs"
        return out
    units = [(st, sd, ex, np.asarray(ids), *(np.asarray(v, dtype=float) for v in (p, f, o)))
             for st, sd, ex, ids, p, f, o in units]
    gain = np.mean([(p - f).mean() for *_, p, f, _o in units])
    margin = np.mean([(o - f).mean() for *_, _p, f, o in units])
    if not margin > 0:
        out["above_floor_why"] = f"origin not above the floor (margin {margin:+.3f}): nothing to retain"
        return out
    r = float(gain / margin)
    out["above_floor"] = r

    def gap(r0: float) -> float:  # >= 0: r0 is inside the interval (half-width reaches the contrast's mean)
        res = intervals.two_level([(st, sd, ex, ids, (p - f) - r0 * (o - f), np.zeros(len(ids)))
                          for st, sd, ex, ids, p, f, o in units], level, with_p=False,
                                  split_noise=False)  # the seed part whole on t(seeds - 1): see two_level
        out["seed_df"] = res["seed_df"]
        return (res["ci_high"] - res["ci_low"]) / 2 - abs(res["mean_diff"]) + 1e-12  # DECIMALS-level tolerance

    g0 = gap(r)
    if np.isnan(g0):
        out["above_floor_why"] = ("one seed: no interval (seed-to-seed variation cannot be estimated)"
                                  if out["seed_df"] == 0 else "no variation estimated: no interval")
        return out
    bounds = []
    for side in (-1.0, 1.0):
        for k in range(30):
            b = r + side * 0.05 * 2.0 ** k
            gb = gap(b)
            if gb < 0:
                bounds.append(brentq(gap, min(r, b), max(r, b), xtol=1e-9) if g0 > 0 else r)
                break
        else:
            out["above_floor_why"] = ("unbounded: the origin's margin over the floor is not distinguishable from 0 "
                                      "at this level")
            return out
    out["above_floor_low"], out["above_floor_high"] = (round(float(x), 6) for x in bounds)
    return out


def floor_triples(runs: pd.DataFrame, preds: stats.Predictions | None, by: list[str],
                  floors: tuple[str, ...] = FLOORS) -> dict:
    """``{key of by: (units for above_floor, unit)}``: each done zero-shot ported run with the floor run of the same
    technique, host pair, dataset and seed and its stage-1 origin run.  Units per example where all three runs
    have predictions (``UNIT_EXAMPLES``), else one number per run for the whole group (``UNIT_RUNS``).  ``runs``:
    the sweep's runs, stage 1 included; the floor: the first of ``floors`` the sweep has."""
    s2 = zero_shot(runs)
    floor = next((c for c in floors if c in set(s2["condition"])), None)
    if floor is None or s2.empty:
        return {}
    keys = ["technique", "host_pair", "dataset", "seed"]
    m = s2[s2["condition"] == "ported"].merge(s2[s2["condition"] == floor][[*keys, "run_id", "accuracy"]], on=keys,
                                               suffixes=("", "_floor"))
    out = {}
    for key, g in m.groupby(by, sort=True):
        rows = list(g.itertuples(index=False))
        if preds is not None and all(r.run_id in preds and r.run_id_floor in preds and r.origin_run in preds
                                     for r in rows):
            units = []
            for r in rows:
                (ep, cp), (ef, cf), (eo, co) = (preds.by_run[x] for x in (r.run_id, r.run_id_floor, r.origin_run))
                ids = np.intersect1d(np.intersect1d(ep, ef, assume_unique=True), eo, assume_unique=True)
                units.append((r.dataset, r.seed, r.dataset, ids, cp[np.searchsorted(ep, ids)],
                              cf[np.searchsorted(ef, ids)], co[np.searchsorted(eo, ids)]))
            out[key] = (units, UNIT_EXAMPLES)
        else:
            out[key] = ([(r.dataset, r.seed, r.dataset, np.zeros(1), [r.accuracy], [r.accuracy_floor],
                          [r.origin_accuracy]) for r in rows], UNIT_RUNS)
    return out


