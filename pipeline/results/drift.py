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

``technique_tests`` compares techniques on each receiving host with the per-example
predictions: for every example, a technique's *loss* is (correct on the origin host) -
(correct when ported), averaged over seeds; for each pair of techniques the mean
difference of losses is tested with a paired sign-flip permutation test over the shared
examples (the examples are the unit; with one seed, that is all there is), with a
percentile bootstrap interval, Holm-adjusted over the pairs of each host.  An exact
McNemar test on the ported predictions alone is given beside it.

Pure pandas/numpy plus a matplotlib figure; the report draws it when a sweep has two or
more measured receiving hosts (``sweeps/drift.yaml``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats

FAMILIES = ("natural", "task", "coordinate")
FLOORS = ("no-module", "head-only")  # the bare receiving host (head-free) / the ported head alone (trained head)
CONDITIONS = ("ported", *FLOORS)
COLS = ["technique", "dataset", "receiving_host", "family", "kinds", "fraction", "condition", "linear_cka",
        "mean_pooled_cosine", "relative_weight_change", "n", "origin_accuracy", "accuracy", "retention_mean",
        "retention_min", "retention_max"]
TEST_COLS = ["receiving_host", "family", "dataset", "a", "b", "n_seeds", "n_examples", "loss_a", "loss_b", "diff",
             "ci_low", "ci_high", "p", "p_floor", "p_holm", "p_mcnemar_ported"]
MARKERS = {"ported": "o", "no-module": "x", "head-only": "s"}
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7"]


# ---------------------------------------------------------------- the hosts


def host_ladder(hosts: dict | None) -> pd.DataFrame:
    """One row per host with a recorded distance: family, kinds, fraction, the distances and the probe."""
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
        rows.append([name, family, kinds, info.get("fraction"), d.get("linear_cka"), d.get("mean_pooled_cosine"),
                     d.get("relative_weight_change"), d.get("probe_accuracy_base"), d.get("probe_accuracy_host"),
                     info.get("steps"), info.get("lr"), info.get("seconds")])
    df = pd.DataFrame(rows, columns=["host", "family", "kinds", "fraction", "linear_cka", "mean_pooled_cosine",
                                     "relative_weight_change", "probe_base", "probe_host", "steps", "lr",
                                     "build_seconds"])
    rank = {f: i for i, f in enumerate(("identical", *FAMILIES))}
    order = sorted(range(len(df)), key=lambda i: (rank.get(df["family"].iat[i], len(rank)), -df["linear_cka"].iat[i],
                                                   df["relative_weight_change"].iat[i] or 0.0, df["host"].iat[i]))
    return df.iloc[order].reset_index(drop=True)  # identical, natural, task, coordinate; nearer hosts first


def _zero_shot(runs: pd.DataFrame) -> pd.DataFrame:
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


def drift_table(runs: pd.DataFrame, hosts: dict | None) -> pd.DataFrame:
    """One row per technique x dataset x measured receiving host x condition (ported, no-module/head-only)."""
    ladder = host_ladder(hosts).set_index("host")
    s2 = _zero_shot(runs)
    s2 = s2[s2["receiving_host"].isin(ladder.index)]
    rows = []
    for (tech, ds, recv, cond), g in s2.groupby(["technique", "dataset", "receiving_host", "condition"], sort=True):
        h = ladder.loc[recv]
        ratio = g["accuracy"] / g["origin_accuracy"]
        rows.append([tech, ds, recv, h["family"], h["kinds"], h["fraction"], cond, h["linear_cka"],
                     h["mean_pooled_cosine"], h["relative_weight_change"], len(g), g["origin_accuracy"].mean(),
                     g["accuracy"].mean(), ratio.mean(), ratio.min(), ratio.max()])
    rung = {h: i for i, h in enumerate(ladder.index)}
    df = pd.DataFrame(rows, columns=COLS)
    return df.sort_values(["technique", "condition", "receiving_host"], key=lambda c: c.map(rung) if c.name ==
                          "receiving_host" else c).reset_index(drop=True)  # hosts in ladder order


# ---------------------------------------------------------------- technique differences per host


def sign_flip_test(diff, n_perm: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired test of mean(diff) = 0 by random sign flips of the per-example differences (two-sided, +1
    correction; the floor is 1 / (n_perm + 1)), with a percentile bootstrap interval of the mean."""
    diff = np.asarray(diff, dtype=float)
    n = len(diff)
    if n == 0:
        return {"diff": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "p_floor": np.nan}
    rng = np.random.default_rng(seed)
    obs = diff.mean()
    signs = rng.integers(0, 2, size=(n_perm, n), dtype=np.int8) * 2 - 1
    null = (signs * diff).mean(1)
    p = (1 + int((np.abs(null) >= abs(obs) - 1e-12).sum())) / (n_perm + 1)
    boot = diff[rng.integers(0, n, size=(n_perm, n))].mean(1)
    a = (1 - level) / 2
    return {"diff": obs, "ci_low": float(np.quantile(boot, a)), "ci_high": float(np.quantile(boot, 1 - a)),
            "p": min(1.0, p), "p_floor": 1 / (n_perm + 1)}


def _losses(runs: pd.DataFrame, preds: stats.Predictions) -> dict:
    """{(receiving host, dataset, technique): (example ids, mean loss over seeds, mean ported correct, seeds)}.

    Loss per example = correct on the origin host - correct when ported (1, 0 or -1)."""
    s2 = _zero_shot(runs)
    s2 = s2[s2["condition"] == "ported"]
    out = {}
    for key, g in s2.groupby(["receiving_host", "dataset", "technique"], sort=True):
        per_seed = []
        for r in g.itertuples(index=False):
            if r.run_id not in preds or r.origin_run not in preds:
                continue
            (ep, cp), (eo, co) = preds.by_run[r.run_id], preds.by_run[r.origin_run]
            ex, ip, io = np.intersect1d(ep, eo, assume_unique=True, return_indices=True)
            per_seed.append(pd.DataFrame({"loss": co[io].astype(float) - cp[ip], "ported": cp[ip].astype(float)},
                                         index=ex))
        if not per_seed:
            continue
        common = per_seed[0].index
        for f in per_seed[1:]:
            common = common.intersection(f.index)
        loss = np.mean([f.loc[common, "loss"].to_numpy() for f in per_seed], axis=0)
        ported = np.mean([f.loc[common, "ported"].to_numpy() for f in per_seed], axis=0)
        out[key] = (common.to_numpy(), loss, ported, len(per_seed))
    return out


def technique_tests(runs: pd.DataFrame, preds: stats.Predictions | None, hosts: dict | None, n_perm: int = 10_000,
                    seed: int = 0) -> pd.DataFrame:
    """Every pair of techniques on every measured receiving host: the difference of their mean zero-shot accuracy
    losses (a - b; > 0: a loses more), its interval and sign-flip p, Holm-adjusted over the pairs of the host."""
    if preds is None or not len(preds):
        return pd.DataFrame(columns=TEST_COLS)
    ladder = host_ladder(hosts).set_index("host")
    losses = _losses(runs, preds)
    rows = []
    rung = {h: i for i, h in enumerate(ladder.index)}
    groups = sorted({(h, ds) for h, ds, _ in losses if h in rung}, key=lambda g: (rung[g[0]], g[1]))
    for recv, ds in groups:
        techs = sorted(t for h, d, t in losses if (h, d) == (recv, ds))
        block = []
        for a, b in itertools.combinations(techs, 2):
            ea, la, pa, na = losses[(recv, ds, a)]
            eb, lb, pb, nb = losses[(recv, ds, b)]
            ex, ia, ib = np.intersect1d(ea, eb, assume_unique=True, return_indices=True)
            t = sign_flip_test(la[ia] - lb[ib], n_perm, seed)
            ca, cb = pa[ia] >= 0.5, pb[ib] >= 0.5  # ported correctness (majority over seeds)
            block.append([recv, ladder.loc[recv, "family"], ds, a, b, min(na, nb), len(ex), float(la[ia].mean()),
                          float(lb[ib].mean()), t["diff"], t["ci_low"], t["ci_high"], t["p"], t["p_floor"], np.nan,
                          stats.mcnemar_exact(*stats.discordant(ca, cb))])
        adj = stats.holm([r[12] for r in block])
        for r, p in zip(block, adj):
            r[14] = p
        rows += block
    return pd.DataFrame(rows, columns=TEST_COLS)


# ---------------------------------------------------------------- figure and section


def _x(table: pd.DataFrame, family: str) -> pd.Series:
    """Distance on the family's axis: 1 - linear CKA (natural, task), the permuted share (coordinate)."""
    if family == "coordinate":
        return table["fraction"].fillna(0.0).astype(float)
    return 1.0 - table["linear_cka"].astype(float)


def fig_drift(table: pd.DataFrame, path: Path) -> Path | None:
    """Retention against distance, one panel per host family present (the identical host in each), one colour per
    technique; circles and solid lines: ported (mean, min-max bar); crosses and dotted lines: the no-module (or
    head-only) floor.  The coordinate panel's hosts are categories (markers only)."""
    if table.empty or table["receiving_host"].nunique() < 2:
        return None
    from .figures import _figure

    fams = [f for f in (*FAMILIES, "other") if f in set(table["family"])] or ["identical"]
    fig = _figure(4.0 * len(fams) + 0.6, 4.2)
    axes = fig.subplots(1, len(fams), sharey=True, squeeze=False)[0]
    techs = sorted(table["technique"].unique())
    for ax, fam in zip(axes, fams):
        sub = table[table["family"].isin([fam, "identical"])]
        if fam == "coordinate":
            sub = sub.assign(_label=np.where(sub["family"] == "identical", "identical",
                                             sub["kinds"].fillna("") + " " + sub["fraction"].map("{:g}".format)))
            cats = ["identical", *sorted(set(sub["_label"]) - {"identical"})]
            sub = sub.assign(_x=sub["_label"].map({c: i for i, c in enumerate(cats)}))
            ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=7)
            ax.set_xlabel("permuted (same function, other coordinates)")
        else:
            sub = sub.assign(_x=_x(sub, fam))
            ax.set_xlabel("1 - linear CKA to the origin (mean-pooled)")
        for i, tech in enumerate(techs):
            for cond, h in sub[sub["technique"] == tech].groupby("condition", sort=True):
                h = h.sort_values("_x")
                mean = h["retention_mean"]
                err = [mean - h["retention_min"], h["retention_max"] - mean]
                off = (i - (len(techs) - 1) / 2) * 0.06 if fam == "coordinate" else 0.0
                ax.errorbar(h["_x"] + off, mean, yerr=err, marker=MARKERS.get(cond, "^"), color=COLORS[i % len(COLORS)],
                            linestyle="none" if fam == "coordinate" else "-" if cond == "ported" else ":",
                            capsize=2, markersize=4,
                            label=f"{tech} ({cond})" if ax is axes[0] else None)
        ax.axhline(1.0, color="#999", linewidth=0.8)
        ax.set_title(f"{fam} drift", fontsize=9)
    axes[0].set_ylabel("zero-shot retention (receiving / origin accuracy)")
    fig.legend(fontsize=7, loc="outside right center")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _f(x, fmt="{:.3f}") -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else fmt.format(x)


def _p(p, floor) -> str:
    if p is None or np.isnan(p):
        return "—"
    return f"< {floor:.4f}" if p <= floor + 1e-15 else f"{p:.4f}"  # at the resampling floor: not a measured value


def drift_section(doc, table: pd.DataFrame, tests: pd.DataFrame, hosts: dict | None) -> None:
    """The report's "Host ladder" section: the hosts, retention per technique and host, the technique tests."""
    ladder = host_ladder(hosts)
    if table.empty or len(ladder) < 2:
        return
    doc.h(2, "Host ladder: retention against distance")
    doc.p("Each receiving host's distance to the origin, measured when it was built (`build_info.json`): relative "
          "weight change, mean-pooled cosine, linear CKA and a fixed linear probe. Coordinate-drift hosts compute "
          "the origin's function in permuted coordinates: their CKA stays 1 while the weights move; their distance "
          "is the share of heads / FFN units / residual dimensions moved.")
    doc.table(["host", "family", "permuted", "weight change", "cosine", "CKA", "probe (base → host)", "build s"],
              [[r.host, r.family, f"{r.kinds} {r.fraction:g}" if isinstance(r.kinds, str) else "—", _f(r.relative_weight_change, "{:.4f}"),
                _f(r.mean_pooled_cosine), _f(r.linear_cka), f"{_f(r.probe_base)} → {_f(r.probe_host)}",
                _f(r.build_seconds, "{:.0f}")] for r in ladder.itertuples(index=False)])
    floor = next((c for c in FLOORS if c in set(table["condition"])), None)
    techs = sorted(table["technique"].unique())
    rows = []
    cells = table[["receiving_host", "dataset"]].drop_duplicates()
    cells = cells.assign(_r=cells["receiving_host"].map({h: i for i, h in enumerate(ladder["host"])}))
    for recv, ds in cells.sort_values(["_r", "dataset"])[["receiving_host", "dataset"]].itertuples(index=False):
        g = table[(table["receiving_host"] == recv) & (table["dataset"] == ds)]
        row = [recv, ds]
        for t in techs:
            p = g[(g["technique"] == t) & (g["condition"] == "ported")]
            f = g[(g["technique"] == t) & (g["condition"] == floor)]
            cell = _f(p["retention_mean"].iloc[0]) if len(p) else "—"
            if len(f):
                cell += f" ({_f(f['retention_mean'].iloc[0])})"
            row.append(cell)
        rows.append(row)
    doc.p(f"Zero-shot retention of the ported module (accuracy on the receiving host / the same module's accuracy on "
          f"the origin host), mean over seeds; in brackets the {floor or 'floor'} level on the same host, divided by "
          f"the same origin accuracy." + (" A ported module at its bracketed value carries nothing over." if floor else ""))
    origin = table[table["condition"] == "ported"].groupby("technique")["origin_accuracy"].mean()
    doc.table(["receiving host", "dataset", *(f"{t} (origin {_f(origin.get(t, np.nan))})" for t in techs)], rows)
    if tests.empty:
        doc.p("No per-example predictions: technique differences not tested.")
        return
    doc.p("Technique differences per receiving host: loss = accuracy on the origin host − accuracy when ported, per "
          "example (averaged over seeds); diff = loss(a) − loss(b) (> 0: a loses more) with a 95% bootstrap interval "
          "over examples and a paired sign-flip permutation p (floor printed as “< floor”), Holm-adjusted over the "
          "technique pairs of each host; McNemar: exact test of the two techniques' ported predictions alone. The "
          "examples are the unit: with few seeds these intervals do not include seed-to-seed variation.")
    doc.table(["receiving host", "a", "b", "loss a", "loss b", "diff [95% CI]", "p", "p (Holm)", "McNemar p (ported)"],
              [[r.receiving_host, r.a, r.b, _f(r.loss_a), _f(r.loss_b),
                f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", _p(r.p, r.p_floor), _p(r.p_holm, r.p_floor),
                _p(r.p_mcnemar_ported, 1e-4)] for r in tests.itertuples(index=False)])
