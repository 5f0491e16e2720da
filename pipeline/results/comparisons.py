"""The report's "Paired comparisons" section: how the comparisons were made, and the table of them."""

from __future__ import annotations

import pandas as pd

from . import stats
from .document import Doc
from .intervals import FEW_SEED_DF
from .prose import MISS_MARK, ci_text, is_hierarchical
from .sweepdata import SweepData
from .tables import FEW, METRICS, at_floor, few, fmt_p, is_na, pair_label, regime_label

MCNEMAR = ("McNemar: in how many of the run pairs a is better at p < {alpha} (exact McNemar test on the examples only "
           "one of the two runs got right; per pair, uncorrected); after the semicolon, how many favour b.")


def comparisons(doc: Doc, d: SweepData, pooled: pd.DataFrame, by_dir: pd.DataFrame, metric: str, n_boot: int,
                seed: int) -> None:
    m = METRICS[metric]
    doc.h(2, "Paired comparisons")
    family = int(pooled["p"].notna().sum()) if len(pooled) else 0
    method = str(pooled["method"].iloc[0]) if len(pooled) else ""
    pairs = (f"Each run pair is two runs that differ only in condition: same technique, host direction, dataset, "
             f"budget and seed; within a pair the two runs are compared example by example on the same eval examples. "
             f"Each row pools, for one technique at one budget, its run pairs **over host directions, datasets and "
             f"seeds**. a − b: the mean over run pairs of the difference in {m}. ")
    holm = f"p_Holm: Holm's step-down correction across the {family} comparisons of this table. "
    lacking = int(pooled["pairs_without_preds"].sum()) if is_hierarchical(pooled) else 0
    tail = (f" {lacking} run pair(s) lack per-example predictions for one of their runs (older or failed prediction "
            f"files) and are left out." if lacking else "")
    if method == "two-level t":
        doc.p(pairs + "95% CI: two-level t interval — the estimate's variance is split into a **seed part** and an "
              "**example part**. The seed part clusters on the seed: a seed fixes the module's initial values, the batch "
              "order and the sampling noise in every host direction and dataset, so each run pair's mean difference, "
              "less its host direction and dataset's mean, is summed per seed and the spread of those per-seed sums "
              "gives the seed part, on t with seeds − 1 degrees of freedom (not summed over host directions and "
              "datasets: they are not independent replicates); the run-pair noise inside it (each pair's per-example "
              "noise averaged over the examples) is estimated on many degrees of freedom and gets its own quantile. "
              "The example part is taken within each host direction and dataset (how the per-example difference "
              "varies over the eval examples, which every seed and both conditions share, less the run-pair noise), on "
              "t with the example degrees of freedom (about 1.96); the half-widths add in quadrature "
              "(`pipeline/results/intervals.py`). Its coverage of a known difference "
              "is measured on synthetic sweeps shaped like every grid in `sweeps/` (BENCHMARKS.md, “Interval "
              "coverage”). p: analytic, the interval inverted (the α at which the 1 − α interval reaches 0); no "
              "resampling, so no resampling floor. " + holm + MCNEMAR.format(alpha=stats.ALPHA) + tail)
    elif method == "hierarchical bootstrap":
        doc.p(pairs + f"95% CI: percentile interval of a two-level bootstrap ({n_boot} resamples, seed {seed}): run "
              f"pairs drawn with replacement, then examples within each drawn pair (the same examples for a and b) — "
              f"**too narrow at few seeds** (see BENCHMARKS.md, “Interval coverage”); the report's default is the "
              f"two-level t interval. p: two-sided bootstrap p-value (twice the smaller share of resampled differences "
              f"at or beyond 0, +1-corrected, so never below {stats.boot_floor(n_boot):.2g}; a p at that floor is "
              f"shown as “< {stats.boot_floor(n_boot):.2g}” and its Holm adjustment as an upper bound). " + holm
              + MCNEMAR.format(alpha=stats.ALPHA) + tail)
    else:
        why = ("this sweep has no per-example predictions (`predictions.parquet`: made by an earlier version)"
               if d.preds is None else f"{m} has no per-example decomposition")
        doc.p(f"Run-level comparisons, because {why}: each pair is two runs that differ only in condition (same "
              f"technique, host direction, dataset, budget and seed), one number per run; rows pool the pairs over "
              f"host directions, datasets and seeds. Differences are a − b in {m}. CI: percentile bootstrap over "
              f"pairs ({n_boot} resamples, seed {seed}); p: two-sided Wilcoxon signed-rank test (exact; zero "
              f"differences dropped); " + holm + "W/L/T: pairs where a is better / worse / tied.")
    doc.table(*stats_rows(pooled, ["technique", "regime"]))
    doc.p(f"Per host direction (pooled over datasets and seeds; Holm across these {len(by_dir)} comparisons, a "
          f"separate family): see `tables/stats_by_direction.csv` and the heatmaps below.")


def stats_rows(comp: pd.DataFrame, by: list[str]):
    hier = is_hierarchical(comp)
    header = ["comparison", *["budget" if b == "regime" else b.replace("_", " ") for b in by], "run pairs",
              *(["examples"] if hier else []), "mean a", "mean b", "a − b", "95% CI", "p", "p_Holm",
              "McNemar: pairs favouring a" if hier else "W/L/T"]
    rows = []
    for _, r in comp.iterrows():
        keys = [regime_label(r[b]) if b == "regime" else pair_label(r[b]) for b in by]
        if r["n"] == 0 or is_na(r["mean_diff"]):
            rows.append([r["contrast"], *keys, 0, *(["—"] if hier else []), "—", "—", "—",
                         "no pairs with predictions" if hier else "no pairs", "—", "—", "—"])
            continue
        sig = " *" if r["p_holm"] < stats.ALPHA else ""
        bound = at_floor(r)
        if hier:
            more = f"; {r['mcnemar_favour_b']} favour {r['b']}" if r["mcnemar_favour_b"] else ""
            last = f"{r['mcnemar_favour_a']} of {r['mcnemar_n']}{more}"
        else:
            last = f"{r['wins']}/{r['losses']}/{r['ties']}"
        rows.append([r["contrast"], *keys, int(r["n"]), *([f"{int(r['n_examples']):,}"] if hier else []),
                     f"{r['mean_a']:.3f}", f"{r['mean_b']:.3f}", f"{r['mean_diff']:+.3f}", ci_text(r),
                     "—" if r["no_variation"] else fmt_p(r["p"], bound), fmt_p(r["p_holm"], bound) + sig, last])
    notes = []
    if len(comp):
        notes.append(f"A star (*) after p_Holm marks p_Holm < {stats.ALPHA}.")
        flagged = [few(r) for _, r in comp.iterrows()]
        if any(flagged) and (comp["method"] == "two-level t").any():
            notes.append(f"{FEW} beside an interval: coverage unreliable — fewer than {FEW_SEED_DF} seed-level degrees "
                         f"of freedom (2 seeds), so the seed part uses t(1) = 12.7 and is honest only as far as seed "
                         f"effects are roughly normal.")
        elif any(flagged):
            notes.append(f"{FEW} beside an interval: fewer than {stats.MIN_UNITS} run pairs behind it — resampling so "
                         f"few units gives an interval that is likely too narrow; read it as rough.")
        if "shape_miss" in comp and comp["shape_miss"].fillna(False).astype(bool).any():
            notes.append(f"{MISS_MARK} beside an interval: its shape (host directions × datasets, seeds) falls in a cell "
                         f"where the coverage simulation found the 95 % interval outside 0.93–0.97 (BENCHMARKS.md, "
                         f"figures 7; `pipeline/results/coverage_cells.json`); read it as rough.")
        if any(at_floor(r) for _, r in comp.iterrows()):
            notes.append("“< p”: no bootstrap resample crossed 0, so p is only known to lie below the resampling "
                         "floor; the Holm-adjusted value is an upper bound likewise.")
        if comp["no_variation"].any():
            notes.append("no variation: a zero-width interval (e.g. both conditions predict the same class on every "
                         "example); such a comparison is no finding, gets no p-value and is not in the Holm family.")
    return header, rows, " ".join(notes) if notes else "No pairs yet."
