"""The host ladder: does a ported module survive a receiving host further away, and do techniques differ?

For every receiving host whose ``build_info.json`` records a distance to the origin
(``hostdist.host_distance``) this pairs that distance with the zero-shot retention of
the modules ported into it: accuracy on the receiving host / accuracy of the same
stage-1 module on its origin host (matched on ``origin_run``), for ``ported`` and, as
the floor, ``no-module`` (the bare receiving host; the old trained-head ``head-only``
control is read the same way).  Hosts come in families (``build_info["family"]``,
``pipeline.run.hostladder``): natural drift (more of the host's own objective), task
drift (fine-tuned on another task or objective) and coordinate drift (a
function-preserving permutation: same function, other coordinates; its distance is the
permuted share, since CKA and cosine stay at 1).  The identical host (weight change 0)
anchors every family at distance 0.

Beside the raw ratio, *retention above the bare host* ``(ported - floor) / (origin - floor)`` with its
Fieller interval (``pipeline.results.floor``): a bare host alone "retains" 0.7-0.95 of the origin accuracy on
this task, so the raw ratio near 1 says little; this one is 0 at the floor.

``technique_tests`` compares techniques on each receiving host: per example, a technique's *loss* is
(correct on the origin host) - (correct when ported); for each pair of techniques the mean difference of
losses gets the report's two-level interval (``intervals.two_level``: the units are run pairs -- technique a and
technique b at one seed -- so seed-to-seed variation and the shared eval examples both count; one seed: no
interval).  Holm runs over one family per *claim*: "technique a keeps more than b under drift family K" is
one family spanning K's receiving hosts (not one family per host), so a claim made across a family's hosts
is adjusted across them.

Pure pandas/numpy plus a matplotlib figure; the report draws it when a sweep has two or
more measured receiving hosts (``sweeps/drift.yaml``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from . import intervals, stats
from .floor import FLOORS, UNIT_EXAMPLES, UNIT_RUNS, above_floor, floor_triples
from .floor import zero_shot as _zero_shot

FAMILIES = ("natural", "task", "coordinate")
COLS = ["technique", "dataset", "receiving_host", "family", "kinds", "fraction", "condition", "linear_cka",
        "mean_pooled_cosine", "relative_weight_change", "n", "origin_accuracy", "accuracy", "retention_mean",
        "retention_min", "retention_max"]
ABOVE_COLS = ["above_floor", "above_floor_low", "above_floor_high", "above_floor_why", "above_floor_unit"]
COLS += ABOVE_COLS
TEST_COLS = ["receiving_host", "family", "dataset", "a", "b", "claim", "holm_family_size", "n_seeds", "n_examples",
             "loss_a", "loss_b", "diff", "ci_low", "ci_high", "p", "p_holm", "seed_df", "seed_var", "example_var",
             "few_seeds", "no_variation", "unit"]
# task rungs built before build_info recorded the direction: by recipe (toward the study's sentiment task or not)
TASK_DIRECTIONS = {"tweetsent": "toward", "rtgenre": "away", "mlm": "none"}
MARKERS = {"ported": "o", "no-module": "x", "head-only": "s"}
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7"]


# ---------------------------------------------------------------- the hosts


def host_ladder(hosts: dict | None) -> pd.DataFrame:
    """One row per host with a recorded distance: family, task direction (task rungs: toward / away from the
    study's task, or none), kinds, fraction, the distances and the probe."""
    rows = []
    for name, h in (hosts or {}).items():
        info = h.get("build_info") if isinstance(h, dict) and isinstance(h.get("build_info"), dict) else {}
        d = info.get("distance") if isinstance(info.get("distance"), dict) else None
        if not d or d.get("linear_cka") is None:
            continue
        family = info.get("family") or ("natural" if str(info.get("recipe", "")).startswith("simcse") else "other")
        if family != "coordinate" and not d.get("relative_weight_change"):
            family = "identical"
        kinds = "+".join(info.get("kinds") or []) or None
        direction = info.get("task_direction") or (TASK_DIRECTIONS.get(str(info.get("recipe", "")).split("-")[0])
                                                    if family == "task" else None)
        rows.append([name, family, direction, kinds, info.get("fraction"), d.get("linear_cka"), d.get("mean_pooled_cosine"),
                     d.get("relative_weight_change"), d.get("probe_accuracy_base"), d.get("probe_accuracy_host"),
                     info.get("steps"), info.get("lr"), info.get("seconds")])
    df = pd.DataFrame(rows, columns=["host", "family", "task_direction", "kinds", "fraction", "linear_cka", "mean_pooled_cosine",
                                     "relative_weight_change", "probe_base", "probe_host", "steps", "lr",
                                     "build_seconds"])
    rank = {f: i for i, f in enumerate(("identical", *FAMILIES))}
    order = sorted(range(len(df)), key=lambda i: (rank.get(df["family"].iat[i], len(rank)), -df["linear_cka"].iat[i],
                                                   df["relative_weight_change"].iat[i] or 0.0, df["host"].iat[i]))
    return df.iloc[order].reset_index(drop=True)  # identical, natural, task, coordinate; nearer hosts first


def drift_table(runs: pd.DataFrame, hosts: dict | None, preds: stats.Predictions | None = None,
                level: float = 0.95) -> pd.DataFrame:
    """One row per technique x dataset x measured receiving host x condition (ported, no-module/head-only); the
    ported rows carry retention above the floor (``above_floor``) with its interval and unit."""
    ladder = host_ladder(hosts).set_index("host")
    s2 = _zero_shot(runs)
    s2 = s2[s2["receiving_host"].isin(ladder.index)]
    above = floor_triples(runs, preds, ["technique", "dataset", "receiving_host"])
    rows = []
    for (tech, ds, recv, cond), g in s2.groupby(["technique", "dataset", "receiving_host", "condition"], sort=True):
        h = ladder.loc[recv]
        ratio = g["accuracy"] / g["origin_accuracy"]
        extra = [np.nan, np.nan, np.nan, "", ""]
        if cond == "ported" and (tech, ds, recv) in above:
            units, unit = above[(tech, ds, recv)]
            a = above_floor(units, level)
            extra = [a["above_floor"], a["above_floor_low"], a["above_floor_high"], a["above_floor_why"], unit]
        rows.append([tech, ds, recv, h["family"], h["kinds"], h["fraction"], cond, h["linear_cka"],
                     h["mean_pooled_cosine"], h["relative_weight_change"], len(g), g["origin_accuracy"].mean(),
                     g["accuracy"].mean(), ratio.mean(), ratio.min(), ratio.max(), *extra])
    rung = {h: i for i, h in enumerate(ladder.index)}
    df = pd.DataFrame(rows, columns=COLS)
    return df.sort_values(["technique", "condition", "receiving_host"], key=lambda c: c.map(rung) if c.name ==
                          "receiving_host" else c).reset_index(drop=True)  # hosts in ladder order


# ---------------------------------------------------------------- technique differences per host


def _losses(runs: pd.DataFrame, preds: stats.Predictions | None) -> dict:
    """``{(receiving host, dataset, technique): {seed: (ids, loss)}}``, loss per example = correct on the origin
    host - correct when ported (1, 0 or -1); where a run lacks predictions, one number per run (origin accuracy -
    ported accuracy) with the id -1."""
    s2 = _zero_shot(runs)
    s2 = s2[s2["condition"] == "ported"]
    out: dict = {}
    for r in s2.itertuples(index=False):
        if preds is not None and r.run_id in preds and r.origin_run in preds:
            (ep, cp), (eo, co) = preds.by_run[r.run_id], preds.by_run[r.origin_run]
            ex, ip, io = np.intersect1d(ep, eo, assume_unique=True, return_indices=True)
            got = (ex, co[io].astype(float) - cp[ip])
        else:
            got = (np.array([-1]), np.array([r.origin_accuracy - r.accuracy]))
        out.setdefault((r.receiving_host, r.dataset, r.technique), {})[r.seed] = got
    return out


def technique_tests(runs: pd.DataFrame, preds: stats.Predictions | None, hosts: dict | None,
                    level: float = 0.95) -> pd.DataFrame:
    """Every pair of techniques on every measured receiving host: the difference of their mean zero-shot accuracy
    losses (a - b; > 0: a loses more) with the two-level interval over run pairs (a and b at one seed) and
    examples, and its p; Holm-adjusted within each claim (the pair under one drift family, across that family's
    hosts: ``claim``, ``holm_family_size``).  Without predictions for a run pair's four runs the pair counts as
    one number (``unit``)."""
    ladder = host_ladder(hosts).set_index("host")
    losses = _losses(runs, preds)
    rows = []
    rung = {h: i for i, h in enumerate(ladder.index)}
    groups = sorted({(h, ds) for h, ds, _ in losses if h in rung}, key=lambda g: (rung[g[0]], g[1]))
    for recv, ds in groups:
        fam = ladder.loc[recv, "family"]
        techs = sorted(t for h, d, t in losses if (h, d) == (recv, ds))
        for a, b in itertools.combinations(techs, 2):
            la, lb = losses[(recv, ds, a)], losses[(recv, ds, b)]
            units, examples = [], set()
            for sd in sorted(set(la) & set(lb)):
                (ea, xa), (eb, xb) = la[sd], lb[sd]
                ex, ia, ib = np.intersect1d(ea, eb, assume_unique=True, return_indices=True)
                units.append(((recv, ds), sd, ds, ex, xa[ia], xb[ib]))
                examples |= set(ex.tolist())
            res = intervals.two_level(units, level)
            unit = UNIT_RUNS if examples == {-1} else UNIT_EXAMPLES
            rows.append([recv, fam, ds, a, b, f"{a} vs {b} under {fam} drift ({ds})", 0, res["n_units"],
                         len(examples) if unit == UNIT_EXAMPLES else 0, res["mean_a"], res["mean_b"],
                         res["mean_diff"], res["ci_low"], res["ci_high"], res["p"], np.nan, res["seed_df"],
                         res["seed_var"], res["example_var"], res["few_seeds"], res["no_variation"], unit])
    df = pd.DataFrame(rows, columns=TEST_COLS)
    for _, idx in df.groupby("claim", sort=False).groups.items():
        df.loc[idx, "p_holm"] = stats.holm(df.loc[idx, "p"].to_numpy(float))
        df.loc[idx, "holm_family_size"] = int(df.loc[idx, "p"].notna().sum())
    return df


# ---------------------------------------------------------------- figure and section


def _x(table: pd.DataFrame, family: str) -> pd.Series:
    """Distance on the family's axis: 1 - linear CKA (natural, task), the permuted share (coordinate)."""
    if family == "coordinate":
        return table["fraction"].fillna(0.0).astype(float)
    return 1.0 - table["linear_cka"].astype(float)


def fig_drift(table: pd.DataFrame, path: Path) -> Path | None:
    """Retention against distance, one column of panels per host family present (the identical host in each), one
    colour per technique.  Top row: the raw ratio -- circles and solid lines: ported (mean, min-max bar over
    seeds); crosses and dotted lines: the no-module (or head-only) floor.  Bottom row: retention above the floor,
    (ported - floor) / (origin - floor), with its 95 % interval (``above_floor``; no bar where there is none).
    The coordinate panels' hosts are categories (markers only)."""
    if table.empty or table["receiving_host"].nunique() < 2:
        return None
    from .figures import _figure

    fams = [f for f in (*FAMILIES, "other") if f in set(table["family"])] or ["identical"]
    fig = _figure(4.0 * len(fams) + 0.6, 7.6)
    axes = fig.subplots(2, len(fams), sharey="row", squeeze=False)
    techs = sorted(table["technique"].unique())
    for top, bottom, fam in zip(axes[0], axes[1], fams):
        sub = table[table["family"].isin([fam, "identical"])]
        if fam == "coordinate":
            sub = sub.assign(_label=np.where(sub["family"] == "identical", "identical",
                                             sub["kinds"].fillna("") + " " + sub["fraction"].map("{:g}".format)))
            cats = ["identical", *sorted(set(sub["_label"]) - {"identical"})]
            sub = sub.assign(_x=sub["_label"].map({c: i for i, c in enumerate(cats)}))
            for ax in (top, bottom):
                ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=7)
            bottom.set_xlabel("permuted (same function, other coordinates)")
        else:
            sub = sub.assign(_x=_x(sub, fam))
            bottom.set_xlabel("1 - linear CKA to the origin (mean-pooled)")
            for host, x in sub.drop_duplicates("receiving_host")[["receiving_host", "_x"]].itertuples(index=False):
                if host in set(sub.loc[sub["family"] == fam, "receiving_host"]):  # name the rungs (not the anchor)
                    bottom.annotate(host, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=6,
                                    color="#666", ha="right", va="bottom")
        line = "none" if fam == "coordinate" else "-"
        for i, tech in enumerate(techs):
            color = COLORS[i % len(COLORS)]
            off = (i - (len(techs) - 1) / 2) * 0.06 if fam == "coordinate" else 0.0
            for cond, h in sub[sub["technique"] == tech].groupby("condition", sort=True):
                h = h.sort_values("_x")
                mean = h["retention_mean"]
                err = [mean - h["retention_min"], h["retention_max"] - mean]
                top.errorbar(h["_x"] + off, mean, yerr=err, marker=MARKERS.get(cond, "^"), color=color,
                             linestyle=line if cond == "ported" or fam == "coordinate" else ":", capsize=2,
                             markersize=4, label=f"{tech} ({cond})" if top is axes[0][0] else None)
            h = sub[(sub["technique"] == tech) & (sub["condition"] == "ported")].sort_values("_x")
            est = h["above_floor"].astype(float)
            lo, hi = h["above_floor_low"].astype(float), h["above_floor_high"].astype(float)
            err = [(est - lo).fillna(0.0).clip(lower=0), (hi - est).fillna(0.0).clip(lower=0)]
            bottom.errorbar(h["_x"] + off, est, yerr=err, marker="o", color=color, linestyle=line, capsize=2,
                            markersize=4)
        top.axhline(1.0, color="#999", linewidth=0.8)
        for y in (0.0, 1.0):
            bottom.axhline(y, color="#999", linewidth=0.8)
        top.set_title(f"{fam} drift", fontsize=9)
    axes[0][0].set_ylabel("zero-shot retention\n(receiving / origin accuracy)")
    axes[1][0].set_ylabel("retention above the floor, 95% CI\n(ported - floor) / (origin - floor)")
    fig.legend(fontsize=7, loc="outside right center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _f(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def _p(p) -> str:
    if p is None or np.isnan(p):
        return "—"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"  # analytic (no resampling floor)


def _ci(est, lo, hi, why="") -> str:
    if est is None or (isinstance(est, float) and np.isnan(est)):
        return "—"
    if lo is None or (isinstance(lo, float) and np.isnan(lo)):
        return f"{est:.3f} [—]"
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"


def drift_section(doc, table: pd.DataFrame, tests: pd.DataFrame, hosts: dict | None) -> None:
    """The report's "Host ladder" section: the hosts, retention per technique and host (raw and above the floor),
    the technique tests."""
    ladder = host_ladder(hosts)
    if table.empty or len(ladder) < 2:
        return
    doc.h(2, "Host ladder: retention against distance")
    doc.p("Each receiving host's distance to the origin, measured when it was built (`build_info.json`): relative "
          "weight change, mean-pooled cosine, linear CKA and a fixed linear probe. Coordinate-drift hosts compute "
          "the origin's function in permuted coordinates: their CKA stays 1 while the weights move; their distance "
          "is the share of heads / FFN units / residual dimensions moved. Task rungs say their direction: trained "
          "*toward* the study's task (sentiment), *away* from it (another task on other labels), or on no task "
          "(masked-LM).")
    doc.table(["host", "family", "permuted", "weight change", "cosine", "CKA", "probe (base → host)", "build s"],
              [[r.host, f"{r.family} ({r.task_direction})" if isinstance(r.task_direction, str) else r.family,
                f"{r.kinds} {r.fraction:g}" if isinstance(r.kinds, str) else "—", _f(r.relative_weight_change, "{:.4f}"),
                _f(r.mean_pooled_cosine), _f(r.linear_cka), f"{_f(r.probe_base)} → {_f(r.probe_host)}",
                _f(r.build_seconds, "{:.0f}")] for r in ladder.itertuples(index=False)])
    floor = next((c for c in FLOORS if c in set(table["condition"])), None)
    techs = sorted(table["technique"].unique())
    raw, above = [], []
    cells = table[["receiving_host", "dataset"]].drop_duplicates()
    cells = cells.assign(_r=cells["receiving_host"].map({h: i for i, h in enumerate(ladder["host"])}))
    whys = set()
    for recv, ds in cells.sort_values(["_r", "dataset"])[["receiving_host", "dataset"]].itertuples(index=False):
        g = table[(table["receiving_host"] == recv) & (table["dataset"] == ds)]
        row, arow = [recv, ds], [recv, ds]
        for t in techs:
            p = g[(g["technique"] == t) & (g["condition"] == "ported")]
            f = g[(g["technique"] == t) & (g["condition"] == floor)]
            cell = _f(p["retention_mean"].iloc[0]) if len(p) else "—"
            if len(f):
                cell += f" ({_f(f['retention_mean'].iloc[0])})"
            row.append(cell)
            if len(p):
                r = p.iloc[0]
                why = r["above_floor_why"] if isinstance(r["above_floor_why"], str) else ""
                whys |= {why.split(":")[0]} if why else set()
                arow.append(_ci(r["above_floor"], r["above_floor_low"], r["above_floor_high"]))
            else:
                arow.append("—")
        raw.append(row)
        above.append(arow)
    doc.p(f"Zero-shot retention of the ported module (accuracy on the receiving host / the same module's accuracy on "
          f"the origin host), mean over seeds; in brackets the {floor or 'floor'} level on the same host, divided by "
          f"the same origin accuracy." + (" A ported module at its bracketed value carries nothing over." if floor else ""))
    origin = table[table["condition"] == "ported"].groupby("technique")["origin_accuracy"].mean()
    head = ["receiving host", "dataset", *(f"{t} (origin {_f(origin.get(t, np.nan))})" for t in techs)]
    doc.table(head, raw)
    if floor:
        units = set(table["above_floor_unit"].dropna()) - {""}
        unit = ("seeds and eval examples (the two-level interval's two parts)" if units == {UNIT_EXAMPLES} else
                "seeds only (some runs lack per-example predictions: the eval set is taken as fixed)")
        doc.p(f"Retention above the floor: (ported − {floor}) / (origin − {floor}) accuracy — 1 = everything the "
              f"module added over the bare receiving host is kept, 0 = nothing (the module sits at the floor), below "
              f"0 = it does harm. Ratio of the means over seeds, with a 95% Fieller interval: the values R at which "
              f"the two-level interval of mean((ported − {floor}) − R (origin − {floor})) still holds 0; it counts "
              f"{unit}, and is unbounded (—) where the origin's margin over the floor is itself not distinguishable "
              f"from 0; no interval from one seed (`pipeline/results/floor.py`)."
              + (f" Without an interval here: {'; '.join(sorted(whys))}." if whys else ""))
        doc.table(head, above)
    if tests.empty:
        doc.p("No ported runs on two techniques: technique differences not tested.")
        return
    fams = tests.drop_duplicates("claim")
    doc.p("Technique differences per receiving host: loss = accuracy on the origin host − accuracy when ported "
          "(per example where predictions exist); diff = loss(a) − loss(b) (> 0: a loses more), with the report's "
          "two-level 95% interval (`pipeline/results/intervals.py`: the units are run pairs — technique a and b at "
          "one seed — so seed-to-seed variation counts as well as the eval examples every run shares; t on seeds − 1 "
          "degrees of freedom; no interval from one seed) and its analytic p. Holm runs per **claim**: “a keeps more "
          f"(or less) than b under one drift family” is one family across that family's receiving hosts ({len(fams)} "
          "claims; the family size is in the table), not one family per host.")
    doc.table(["receiving host", "a", "b", "seeds", "loss a", "loss b", "diff [95% CI]", "p", "p (Holm)",
               "Holm family"],
              [[r.receiving_host, r.a, r.b, r.n_seeds, _f(r.loss_a), _f(r.loss_b),
                f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if not np.isnan(r.ci_low) else f"{r.diff:+.3f} [—]",
                "—" if r.no_variation else _p(r.p), "—" if r.no_variation else _p(r.p_holm),
                f"{r.family}, {int(r.holm_family_size)} host(s)" if not np.isnan(r.p) else
                "— (no variation)" if r.no_variation else "— (no interval)"] for r in tests.itertuples(index=False)])
