"""The report's plain-language summary: every clause computed from the numbers of the comparison tables."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from . import stats

if TYPE_CHECKING:
    from .report import SweepData
from .tables import FEW, LEARN_MARGIN, METRICS, RANKS_AUC, fmt_p_eq, regime_label


def is_hierarchical(comp: pd.DataFrame) -> bool:
    return "method" in comp and bool((comp["method"] == "hierarchical bootstrap").any())


def summary_paragraph(d: SweepData, pooled: pd.DataFrame, metric: str, learned: pd.DataFrame | None = None) -> str:
    s2 = d.stage(2)
    done2, planned2 = int((s2["state"] == "done").sum()), len(s2)
    done1, planned1 = int((d.stage(1)["state"] == "done").sum()), len(d.stage(1))
    out = [f"{done2} of {planned2} planned receiving-host runs and {done1} of {planned1} origin-host runs have "
           f"results" + ("" if done2 == planned2 and done1 == planned1
                         else "; the missing ones may change every number below") + "."]
    if learned is not None and len(learned):
        out.append(learn_sentence(learned))
    usable = pooled[(pooled["n"] > 0) & pooled["mean_diff"].notna()] if len(pooled) else pooled
    if usable.empty:
        out.append("No paired comparison can be made yet (no seed has results for two conditions of the same "
                   "technique, host direction, dataset and budget"
                   + (", with per-example predictions for both" if len(pooled) else "") + ").")
        return " ".join(out)
    m = METRICS[metric]
    hier = is_hierarchical(pooled)
    family = int(pooled["p"].notna().sum())
    flat = int(pooled["no_variation"].sum())
    fam = f"all {family} comparisons" + (f" with variation ({flat} without)" if flat else "")
    for (a, b), g in usable.groupby(["a", "b"], sort=False):
        k = len(g)
        up, down = int((g["mean_diff"] > 0).sum()), int((g["mean_diff"] < 0).sum())
        eq = k - up - down
        lo, hi = g.loc[g["mean_diff"].idxmin()], g.loc[g["mean_diff"].idxmax()]
        sent = (f"Matched on seed, dataset and host direction{' (and example by example)' if hier else ''}, {a} "
                f"modules had a higher mean {m} than {b} ones in {up} of {k} technique × budget comparisons, a lower "
                f"one in {down or 'none'}" + (f" and the same in {eq}" if eq else "") + f"; the mean difference ranged "
                f"from {lo['mean_diff']:+.3f} ({lo['technique']}, {regime_label(lo['regime'])}) to "
                f"{hi['mean_diff']:+.3f} ({hi['technique']}, {regime_label(hi['regime'])}).")
        out.append(sent)
        sig = g[g["p_holm"] < stats.ALPHA]
        if len(sig):
            all_few = bool(sig["few_units"].all())
            items = ", ".join(f"{r['technique']} at {regime_label(r['regime'])} ({r['mean_diff']:+.3f}, "
                              f"95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p_Holm {fmt_p_eq(r['p_holm'])}"
                              + (f" {FEW}" if r["few_units"] and not all_few else "") + ")"
                              for _, r in sig.iterrows())
            out.append(f"After Holm correction across {fam}, {len(sig)} of these {k} are significant at "
                       f"α = {stats.ALPHA}: {items}"
                       + (f" — {'each' if all_few else f'those marked {FEW}'} from fewer than {stats.MIN_UNITS} run "
                          f"pairs, so read the intervals as rough" if sig["few_units"].any() else "") + ".")
        else:
            tail = ""
            if g["no_variation"].all():
                tail = " (no comparison shows any variation: the two conditions made the same predictions)"
            elif hier:
                if g["few_units"].all():
                    tail = (f" (each rests on fewer than {stats.MIN_UNITS} run pairs; more seeds or host pairs are "
                            f"needed to narrow the intervals)")
            else:
                nz = int((g["n"] - g["ties"]).max())
                floor = stats.min_wilcoxon_p(nz) if nz > 0 else math.nan
                if nz == 0:
                    tail = " (every pair is tied)"
                elif floor * max(family, 1) >= stats.ALPHA:
                    tail = (f" (with at most {nz} non-tied pairs per comparison the smallest possible Wilcoxon p is "
                            f"{floor:.3g}, too large to survive Holm correction over {family} comparisons; "
                            f"more seeds are needed to detect a difference)")
            out.append(f"None of these {k} differences is significant at α = {stats.ALPHA} after Holm correction across "
                       f"{fam}{tail}.")
        regs = sorted(int(r) for r in g["regime"].unique())
        if a == "ported" and b == "scratch" and len(regs) > 1:
            first = g[g["regime"] == regs[0]]["mean_diff"].mean()
            last = g[g["regime"] == regs[-1]]["mean_diff"].mean()
            out.append(f"Averaged over techniques, the {a} − {b} difference is {first:+.3f} at "
                       f"{regime_label(regs[0])} and {last:+.3f} after {regs[-1]} steps.")
    return " ".join(out)


def learn_sentence(learned: pd.DataFrame) -> str:
    k = len(learned)
    if learned["majority_not_recorded"].sum() == learned["runs"].sum():
        return ("The origin runs do not record the majority-class accuracy (an older sweep), so whether the modules "
                "learned is judged from the tables alone.")
    full = int((learned["learned"] == learned["runs"]).sum())
    none = int((learned["learned"] == 0).sum())
    ranks = int((learned["ranks_but_predicts_one_class"] > 0).sum())
    return (f"Origin modules: in {full} of {k} technique × origin-host × dataset cells every run beats the "
            f"majority class by at least {LEARN_MARGIN}, in {none} none does"
            + (f", and in {ranks} some runs rank the classes (AUC ≥ {RANKS_AUC}) but predict one class" if ranks
               else "") + " (see “Did the origin modules learn?”).")
