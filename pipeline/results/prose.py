"""The report's summary: a status line, then one headline per contrast (what it measures -- from
pipeline/conditions.py --, the effect with its interval, whether it survives Holm); the detail is in the
comparison table.  Every clause is computed from the numbers of the comparison tables."""

from __future__ import annotations

import math

import pandas as pd

from ..conditions import CONTRASTS
from . import stats
from .sweepdata import SweepData
from .tables import FEW, LEARN_MARGIN, METRICS, RANKS_AUC, at_floor, few, fmt_p_eq, is_na, regime_label

PER_EXAMPLE = ("two-level t", "hierarchical bootstrap")  # methods that use per-example predictions
MISS_MARK = "§"  # marks an interval whose shape falls in a coverage cell known to miss (column ``shape_miss``)


def shape_miss(r) -> bool:
    """Does the interval method flag this row's interval shape as one whose coverage is known to miss?"""
    v = r.get("shape_miss", False)
    return False if is_na(v) else bool(v)


def is_hierarchical(comp: pd.DataFrame) -> bool:
    """Does the table compare on per-example predictions (two-level t or bootstrap), not one number per run?"""
    return "method" in comp and bool(comp["method"].isin(PER_EXAMPLE).any())


def measures(a: str, b: str) -> str:
    """What ``a - b`` measures, from pipeline/conditions.py ('' for a contrast it does not declare)."""
    return next((c.measures for c in CONTRASTS if (c.a, c.b) == (a, b)), "")


def ci_text(r) -> str:
    """'[+0.012, +0.080]', with FEW beside it when the interval rests on too few seeds (or run pairs)."""
    if r.get("no_variation", False):
        return "no variation"
    if is_na(r["ci_low"]):
        if r.get("method") != "two-level t":
            return "no interval"
        return "no interval (one seed)" if r.get("seed_df", 0) == 0 else "no interval (variance estimated as 0)"
    return (f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" + (f" {FEW}" if few(r) else "")
            + (f" {MISS_MARK}" if shape_miss(r) else ""))


def _where(r) -> str:
    parts = [str(r["technique"])] if "technique" in r else []
    if "regime" in r and not is_na(r["regime"]):
        parts.append(regime_label(r["regime"]))
    return ", ".join(parts)


def status_line(d: SweepData, learned: pd.DataFrame | None = None) -> str:
    s2 = d.stage(2)
    done2, planned2 = int((s2["state"] == "done").sum()), len(s2)
    done1, planned1 = int((d.stage(1)["state"] == "done").sum()), len(d.stage(1))
    out = [f"{done2} of {planned2} planned receiving-host runs and {done1} of {planned1} origin-host runs have "
           f"results" + ("" if done2 == planned2 and done1 == planned1
                         else "; the missing ones may change every number below") + "."]
    if learned is not None and len(learned):
        out.append(learn_sentence(learned))
    return " ".join(out)


def headlines(pooled: pd.DataFrame, metric: str) -> tuple[list[str], str]:
    """One line per contrast, and a note on what the marks mean (or why nothing can be significant)."""
    usable = pooled[(pooled["n"] > 0) & pooled["mean_diff"].notna()] if len(pooled) else pooled
    if usable.empty:
        return [], ("No paired comparison can be made yet (no seed has results for two conditions of the same "
                    "technique, host direction, dataset and budget"
                    + (", with per-example predictions for both" if len(pooled) else "") + ").")
    m = METRICS[metric]
    family = int(pooled["p"].notna().sum())
    lines = []
    for (a, b), g in usable.groupby(["a", "b"], sort=False):
        k = len(g)
        up = int((g["mean_diff"] > 0).sum())
        lo, hi = g.loc[g["mean_diff"].idxmin()], g.loc[g["mean_diff"].idxmax()]
        if k == 1:
            effect = f"{lo['mean_diff']:+.3f} ({_where(lo)}; 95% CI {ci_text(lo)})"
        else:
            effect = (f"{'by' if lo['mean_diff'] > 0 else 'from'} {lo['mean_diff']:+.3f} ({_where(lo)}; 95% CI "
                      f"{ci_text(lo)}) to {hi['mean_diff']:+.3f} ({_where(hi)}; {ci_text(hi)})")
        sig = (g["p_holm"] < stats.ALPHA).to_numpy()
        n_sig = int(sig.sum())
        if k == 1:
            holm = (f"survives Holm (p_Holm {fmt_p_eq(g['p_holm'].iloc[0], at_floor(g.iloc[0]))})" if n_sig
                    else "does not survive Holm")
        elif n_sig in (0, k):
            holm = f"all {k} survive Holm" if n_sig else "none survives Holm"
        elif n_sig <= k - n_sig:
            holm = f"{n_sig} of {k} survive{'s' if n_sig == 1 else ''} Holm ({'; '.join(_where(r) for _, r in g[sig].iterrows())})"
        else:
            holm = f"{n_sig} of {k} survive{'s' if n_sig == 1 else ''} Holm (all but {'; '.join(_where(r) for _, r in g[~sig].iterrows())})"
        what = measures(a, b)
        lines.append(f"**{a} − {b}** ({m})" + (f" — {what}" if what else "") + ": "
                     + (f"{effect}" if k == 1 else f"{a} higher in {up} of {k} technique × budget comparisons, {effect}")
                     + f"; {holm}.")
    return lines, _notes(pooled, usable, family)


def _notes(pooled: pd.DataFrame, usable: pd.DataFrame, family: int) -> str:
    notes = [f"Holm across the {family} comparisons of the table below (α = {stats.ALPHA})." if family else
             "No comparison has a p-value, so there is no Holm family."]
    method = str(usable["method"].iloc[0])
    flagged = usable[[few(r) for _, r in usable.iterrows()]]
    if method == "two-level t":
        if len(flagged):
            notes.append(f"{FEW} coverage unreliable: the interval rests on one seed-level degree of freedom (2 seeds "
                         f"per host direction and dataset), so its seed part uses t(1) = 12.7 standard errors. It is "
                         f"honest only as far as seed effects are roughly normal (the coverage simulation in "
                         f"BENCHMARKS.md measures it), and wide: 3 seeds (t = 4.3) or 5 (t = 2.8) narrow it most.")
        none = usable[usable["ci_low"].isna() & ~usable["no_variation"].astype(bool)]
        if (none["seed_df"] == 0).any():
            notes.append("No interval (one seed): one seed per host direction and dataset, so seed-to-seed variation "
                         "cannot be estimated.")
        if (none["seed_df"] > 0).any():
            notes.append("No interval (variance estimated as 0): the run pairs' mean differences tie across seeds and "
                         "no example-level spread is left, which says nothing about the spread of another seed.")
    elif len(flagged):
        notes.append(f"{FEW} fewer than {stats.MIN_UNITS} run pairs: read the interval as rough.")
    if method == "hierarchical bootstrap" and any(at_floor(r) for _, r in usable.iterrows()):
        floor = float(usable["p_floor"].dropna().iloc[0])
        notes.append(f"A p at the bootstrap's floor ({floor:.2g}: no resample crossed 0) is shown as < {floor:.2g}, "
                     f"and its Holm adjustment as an upper bound too.")
    if usable["no_variation"].all():
        notes.append("No comparison shows any variation: the two conditions made the same predictions.")
    if method == "wilcoxon" and not (usable["p_holm"] < stats.ALPHA).any():
        nz = int((usable["n"] - usable["ties"]).max())
        floor = stats.min_wilcoxon_p(nz) if nz > 0 else math.nan
        if nz == 0:
            notes.append("Every pair is tied.")
        elif floor * max(family, 1) >= stats.ALPHA:
            notes.append(f"With at most {nz} non-tied pairs per comparison the smallest possible Wilcoxon p is "
                         f"{floor:.3g}, too large to survive Holm correction over {family} comparisons; more seeds "
                         f"are needed to detect a difference.")
    return " ".join(notes)


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


# --------------------------------------------------------------------------------------------------
# what was found: one sentence per claim of the study, in plain words, each with its strongest number
# --------------------------------------------------------------------------------------------------
def findings(pooled: pd.DataFrame, learned: pd.DataFrame | None, retention: pd.DataFrame | None,
             metric: str) -> list[str]:
    """The report's first lines: did the origin modules learn; do ported modules keep their accuracy and beat
    every control at zero-shot; does the lead last through further training.  Each sentence is computed from
    the did-it-learn, retention and comparison tables and says how sure it is (intervals, Holm)."""
    out = []
    if learned is not None and len(learned):
        out.append(_learned_finding(learned))
    usable = pooled[(pooled["n"] > 0) & pooled["mean_diff"].notna()] if len(pooled) else pooled
    if usable.empty:
        return out
    m = METRICS[metric]
    regime = usable["regime"].astype(float) if "regime" in usable else pd.Series(0.0, index=usable.index)
    zs, later = usable[regime == 0], usable[regime > 0]
    if len(zs) or retention is not None and len(retention):
        out.append(_zero_shot_finding(zs, retention, m))
    if len(later):
        out.append(_later_finding(later, zs, m))
    return out


def _pct(x: float) -> str:
    s = f"{100 * x:.0f}"
    return (f"{100 * x:.1f}" if s in ("100", "0") and abs(100 * x - float(s)) >= 0.05 else s) + " %"


def _range(g: pd.DataFrame) -> str:
    lo, hi = g["mean_diff"].min(), g["mean_diff"].max()
    return f"{lo:+.3f}" if abs(hi - lo) < 5e-4 else f"{lo:+.3f} to {hi:+.3f}"


def _controls(g: pd.DataFrame) -> str:
    names = list(dict.fromkeys(g["b"]))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _sure(g: pd.DataFrame) -> str:
    """How sure a group of comparisons is: intervals that exclude 0, and how many survive Holm."""
    k = len(g)
    with_ci = g[g["ci_low"].notna()]
    excl = int(((with_ci["ci_low"] > 0) | (with_ci["ci_high"] < 0)).sum())
    sig = int((g["p_holm"] < stats.ALPHA).sum())
    if with_ci.empty:
        ci = "no interval"
    elif excl == k:
        ci = "every 95% interval excludes 0" if k > 1 else "its 95% interval excludes 0"
    else:
        ci = f"{excl} of {k} 95% intervals exclude 0"
    holm = (f"all {k} survive Holm" if sig == k and k > 1 else "it survives Holm" if sig == k
            else "none survives Holm" if sig == 0 else f"{sig} of {k} survive Holm")
    return f"{ci}, {holm}"


def _lead(g: pd.DataFrame) -> tuple[str, str]:
    """('every' | 'k of n' | 'none', a verb phrase) for how often ported is ahead in ``g``."""
    k, up = len(g), int((g["mean_diff"] > 0).sum())
    return ("every" if up == k else "none" if up == 0 else f"{up} of {k}"), _range(g)


def _learned_finding(learned: pd.DataFrame) -> str:
    if learned["majority_not_recorded"].sum() == learned["runs"].sum():
        return learn_sentence(learned)
    by_tech = learned.groupby("technique", sort=False)["accuracy"].mean()
    majority = learned["majority_acc"].dropna().unique()
    chance = f" ({majority[0]:.3f})" if len(majority) == 1 else ""
    spread = (f"{by_tech.iloc[0]:.3f}" if len(by_tech) == 1 else
              f"{by_tech.min():.3f} ({by_tech.idxmin()}) to {by_tech.max():.3f} ({by_tech.idxmax()})")
    bad = learned[learned["learned"] < learned["runs"]]
    if bad.empty:
        return (f"**The modules learned the task on their origin host**: every origin run beats always predicting "
                f"the majority class{chance} by at least {LEARN_MARGIN}; mean accuracy {spread}.")
    cells = "; ".join(f"{r['technique']} on {r['origin_host']}, {r['dataset']}: {r['verdict']}"
                      for _, r in bad.head(3).iterrows()) + ("; …" if len(bad) > 3 else "")
    return (f"**Not every origin module learned the task**: in {len(bad)} of {len(learned)} technique × origin host "
            f"× dataset cells some run is not {LEARN_MARGIN} above the majority class{chance} ({cells}); what a "
            f"module that did not learn keeps after porting says nothing about portability. Mean accuracy {spread}.")


def _zero_shot_finding(zs: pd.DataFrame, retention: pd.DataFrame | None, m: str) -> str:
    ported = retention[retention["condition"] == "ported"] if retention is not None and len(retention) else None
    keep = ""
    if ported is not None and len(ported):
        by_tech = ported.groupby("technique", sort=False)["retention_mean"].mean()
        keep = (f"keep {_pct(by_tech.mean())} of their origin accuracy on the receiving host"
                + (f" ({by_tech.min():.3f} to {by_tech.max():.3f} by technique)" if len(by_tech) > 1 else ""))
    if zs.empty:
        return f"**At zero-shot, ported modules {keep}**; no control was compared at zero-shot."
    who, span = _lead(zs)
    controls = _controls(zs)
    if who == "every":
        head = f"beat every control ({controls}) for every technique"
    elif who == "none":
        head = f"do not beat the controls ({controls}) for any technique"
    else:
        head = f"beat the controls ({controls}) in {who} technique × control comparisons"
    lead = f"**At zero-shot, ported modules {keep + ' and ' if keep else ''}{head}**"
    return f"{lead}: {m} differences {span}; {_sure(zs)}."


def _later_finding(later: pd.DataFrame, zs: pd.DataFrame, m: str) -> str:
    parts, verdicts = [], []
    for reg, g in later.groupby(later["regime"].astype(float), sort=True):
        who, span = _lead(g)
        parts.append(f"after {regime_label(reg)} {span} ({_sure(g)})")
        verdicts.append(who)
    shrink = ""
    if len(zs):
        both = later.merge(zs[["a", "b", "technique", "mean_diff"]] if "technique" in zs else zs[["a", "b", "mean_diff"]],
                           on=[c for c in ("a", "b", "technique") if c in zs], suffixes=("", "_zs"))
        if len(both):
            before, after = both["mean_diff_zs"].mean(), both["mean_diff"].mean()
            shrink = (f"; on average the lead {'shrinks' if after < before else 'grows'} from {before:+.3f} at "
                      f"zero-shot to {after:+.3f}" if abs(after - before) >= 5e-4 else "")
    if all(v == "every" for v in verdicts):
        head = "**With further training the ported modules stay ahead of every control**"
    elif all(v == "none" for v in verdicts):
        head = "**With further training the ported modules fall behind the controls**"
    else:
        head = "**With further training the ported modules' lead is mixed**"
    return f"{head}: {m} differences {'; '.join(parts)}{shrink}."
