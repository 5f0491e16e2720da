"""The report's figures (matplotlib's object API: no pyplot state, Agg canvas): grouped bars, accuracy against
the further-training budget, heatmaps of paired differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..conditions import NAMES as CONDITIONS
from . import stats
from .tables import METRICS, is_na, ordered, pair_label, regime_label

COLORS = {"ported": "#0072B2", "scratch": "#E69F00", "sampled": "#009E73",  # Okabe-Ito, colour-blind safe
          "no-module": "#CC79A7"}
DPI = 110  # figure resolution (tests lower it)
SEED_POINTS = 5  # a bar cell with fewer seeds than this shows each seed's run as a point, not a t-interval


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _halfwidth(lo, hi) -> float:
    return 0.0 if is_na(lo) else (hi - lo) / 2


def fig_bars(cells: pd.DataFrame, dataset: str, metric: str, path: Path, runs: pd.DataFrame | None = None) -> Path | None:
    """Grouped bars (see :func:`draw_bars`), saved to ``path``; None when the dataset has no finished run."""
    fig = draw_bars(cells, dataset, metric, runs)
    if fig is None:
        return None
    fig.savefig(path)
    return path


def draw_bars(cells: pd.DataFrame, dataset: str, metric: str, runs: pd.DataFrame | None = None):
    """Grouped bars: technique on x, one bar per condition (mean over seeds); rows host direction, cols budget.
    A cell with fewer than SEED_POINTS seeds shows each seed's run as a point (``runs``: the done stage-2 runs),
    as a t-interval over 2-4 seeds says little (over 2 it is 12.7 standard errors wide); others whiskers of the
    95% t-interval."""
    c = cells[cells["dataset"] == dataset]
    if not c["done"].any():
        return None
    pairs, regimes = ordered(c["host_pair"]), sorted(int(r) for r in c["regime"].dropna().unique())
    techs, conds = ordered(c["technique"]), ordered(c["condition"], CONDITIONS)
    fig = _figure(max(5.0, 1.2 + 0.5 * len(techs) * len(conds) * 0.55) * len(regimes) * 0.75 + 1.5,
                  1.0 + 2.9 * len(pairs))
    axes = fig.subplots(len(pairs), len(regimes), squeeze=False, sharey=True)
    width = 0.8 / len(conds)
    any_missing = drew_points = drew_whiskers = False
    keys = ["host_pair", "regime", "condition", "technique"]
    for i, hp in enumerate(pairs):
        for j, reg in enumerate(regimes):
            ax = axes[i][j]
            for k, cond in enumerate(conds):
                xs, ys, hatch_x, whisk, points = [], [], [], [], []
                for t, tech in enumerate(techs):
                    x = c[(c["host_pair"] == hp) & (c["regime"] == reg) & (c["condition"] == cond)
                          & (c["technique"] == tech)]
                    if not len(x):
                        continue
                    x = x.iloc[0]
                    pos = t - 0.4 + width * (k + 0.5)
                    if x["done"] == 0:
                        ax.text(pos, 0.02, "×", ha="center", va="bottom", color=COLORS.get(cond, "gray"), fontsize=11)
                        any_missing = True
                        continue
                    xs.append(pos)
                    ys.append(x[f"{metric}_mean"])
                    if runs is not None and x["done"] < SEED_POINTS:
                        sel = runs[(runs["dataset"] == dataset) & np.logical_and.reduce(
                            [runs[col] == v for col, v in zip(keys, (hp, reg, cond, tech))])]
                        vals = sel[metric].dropna().to_numpy(float)
                        points += [(pos + width * 0.25 * (q - (len(vals) - 1) / 2) / max(1, len(vals) - 1), v)
                                   for q, v in enumerate(vals)]
                    else:
                        whisk.append((pos, x[f"{metric}_mean"],
                                      _halfwidth(x[f"{metric}_ci_low"], x[f"{metric}_ci_high"])))
                    if x["missing"]:
                        hatch_x.append(len(xs) - 1)
                        any_missing = True
                bars = ax.bar(xs, ys, width * 0.95, color=COLORS.get(cond), label=cond)
                if whisk:
                    ax.errorbar(*zip(*whisk), fmt="none", capsize=2.5, elinewidth=1, ecolor="#333333")
                    drew_whiskers = True
                if points:
                    ax.scatter(*zip(*points), s=14, color="white", edgecolors="#222222", linewidths=0.9, zorder=3)
                    drew_points = True
                for b in hatch_x:
                    bars[b].set_hatch("///")
                    bars[b].set_edgecolor("white")
            ax.set_xticks(range(len(techs)), techs)
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if i == 0:
                ax.set_title(regime_label(reg), fontsize=11)
            if j == 0:
                ax.set_ylabel(f"{pair_label(hp)}\n{METRICS[metric]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    parts = ([f"points: each seed's run (fewer than {SEED_POINTS} seeds)"] if drew_points else []) + \
        (["whiskers: 95% CI over seeds"] if drew_whiskers else []) + \
        (["hatched: some planned runs missing; ×: none finished"] if any_missing else [])
    fig.legend(by.values(), by.keys(), loc="outside lower center", ncols=len(by),
               title="condition" + (f"  ({'; '.join(parts)})" if parts else ""), frameon=False)
    fig.suptitle(f"{METRICS[metric].capitalize()} on the receiving host by technique and condition — dataset "
                 f"{dataset}\n(rows: host direction origin → receiving; columns: further-training budget)",
                 fontsize=12)
    return fig


def fig_budget(cells: pd.DataFrame, stage1: pd.DataFrame, dataset: str, metric: str, path: Path) -> Path | None:
    """Metric against training budget per condition (zero-shot at 0); rows host direction, cols technique.
    The dashed line is the module's own accuracy on its origin host (stage 1)."""
    c = cells[cells["dataset"] == dataset]
    if not c["done"].any():
        return None
    pairs, techs = ordered(c["host_pair"]), ordered(c["technique"])
    regimes, conds = sorted(int(r) for r in c["regime"].dropna().unique()), ordered(c["condition"], CONDITIONS)
    fig = _figure(1.5 + 3.2 * len(techs), 1.2 + 2.8 * len(pairs))
    axes = fig.subplots(len(pairs), len(techs), squeeze=False, sharey=True, sharex=True)
    dodge = 0.06 * (np.arange(len(conds)) - (len(conds) - 1) / 2)
    drew_origin = False
    for i, hp in enumerate(pairs):
        origin = hp.split("->")[0]
        for j, tech in enumerate(techs):
            ax = axes[i][j]
            for k, cond in enumerate(conds):
                x = c[(c["host_pair"] == hp) & (c["technique"] == tech) & (c["condition"] == cond)]
                x = x.set_index(x["regime"].astype(int)).reindex(regimes)
                ok = x["done"].fillna(0).to_numpy() > 0
                pos = np.arange(len(regimes)) + dodge[k]
                y = x[f"{metric}_mean"].to_numpy(float)
                e = np.array([_halfwidth(lo, hi) for lo, hi in zip(x[f"{metric}_ci_low"], x[f"{metric}_ci_high"])])
                ax.errorbar(pos[ok], y[ok], yerr=e[ok], marker="o", ms=5, capsize=3, lw=1.8,
                            color=COLORS.get(cond), label=cond)
                partial = ok & (x["missing"].fillna(0).to_numpy() > 0)
                if partial.any():
                    ax.plot(pos[partial], y[partial], ls="none", marker="o", ms=10, mfc="none", mec="red",
                            label="some runs missing")
            s1 = stage1[(stage1["technique"] == tech) & (stage1["origin_host"] == origin)
                        & (stage1["dataset"] == dataset) & (stage1["done"] > 0)]
            if len(s1):
                ax.axhline(s1[f"{metric}_mean"].iloc[0], ls="--", color="gray", lw=1.2,
                           label="origin host (stage 1)")
                drew_origin = True
            ax.set_xticks(range(len(regimes)), [regime_label(r).replace(" steps", "") for r in regimes])
            ax.set_ylim(0, 1)  # a metric in [0, 1]: t-intervals of very few seeds run past it, and are cut here
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(tech, fontsize=11)
            if j == 0:
                ax.set_ylabel(f"{pair_label(hp)}\n{METRICS[metric]}")
            if i == len(pairs) - 1:
                ax.set_xlabel("further-training steps")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False,
               title="condition (whiskers: 95% CI over seeds)")
    fig.suptitle(f"Does the ported module's head start persist? {METRICS[metric]} vs training budget — dataset "
                 f"{dataset}\n(rows: host direction; columns: technique; budget axis is categorical"
                 + (";\ndashed: the module on its origin host" if drew_origin else "") + ")", fontsize=12)
    fig.savefig(path)
    return path


def fig_heatmap(comp: pd.DataFrame, a: str, b: str, metric: str, path: Path) -> Path | None:
    """Mean paired difference a - b by host direction (rows) x technique (columns), one panel per budget."""
    d = comp[(comp["a"] == a) & (comp["b"] == b)]
    d = d[(d["n"] > 0) & d["mean_diff"].notna()]
    if d.empty:
        return None
    method = str(d["method"].iloc[0]) if "method" in d else "wilcoxon"
    techs, pairs = ordered(d["technique"]), ordered(d["host_pair"])
    regimes = sorted(int(r) for r in d["regime"].unique())
    lim = max(0.01, float(np.nanmax(np.abs(d["mean_diff"].to_numpy(float)))))
    label_w = 0.75 + 0.075 * max(len(pair_label(p)) for p in pairs)
    fig = _figure(label_w + 1.4 + (0.3 + 0.95 * len(techs)) * len(regimes), 2.3 + 0.62 * len(pairs))
    axes = fig.subplots(1, len(regimes), squeeze=False, sharey=True)[0]
    im = None
    for j, reg in enumerate(regimes):
        ax = axes[j]
        grid = np.full((len(pairs), len(techs)), np.nan)
        dr = d[d["regime"] == reg]
        for _, r in dr.iterrows():
            grid[pairs.index(r["host_pair"]), techs.index(r["technique"])] = r["mean_diff"]
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_facecolor("#dddddd")
        for _, r in dr.iterrows():
            star = "*" if r["p_holm"] < stats.ALPHA else ""
            dark = abs(r["mean_diff"]) > 0.6 * lim
            flat = " flat" if bool(r.get("no_variation", False)) else ""
            ax.text(techs.index(r["technique"]), pairs.index(r["host_pair"]),
                    f"{r['mean_diff']:+.3f}{star}\nn={r['n']}{flat}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
        for pi in range(len(pairs)):
            for ti in range(len(techs)):
                if np.isnan(grid[pi, ti]):
                    ax.text(ti, pi, "no\npairs", ha="center", va="center", fontsize=8, color="#555555")
        ax.set_xticks(range(len(techs)), techs)
        ax.set_yticks(range(len(pairs)), [pair_label(p) for p in pairs])
        ax.set_title(regime_label(reg), fontsize=11)
        ax.set_xlabel("technique")
    axes[0].set_ylabel("host direction (origin → receiving)")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.95, fraction=0.04)
    cb.set_label(f"{a} − {b}\n(blue: {a} better)")
    test = {"two-level t": "two-level t", "hierarchical bootstrap": "hierarchical-bootstrap"}.get(method, "Wilcoxon")
    fig.suptitle(f"{a.capitalize()} − {b}: mean paired difference in {METRICS[metric]}, over seeds and datasets\n"
                 f"(n = matched run pairs; * = Holm-adjusted {test} p < {stats.ALPHA};\nflat = no variation; "
                 f"grey = no pairs)", fontsize=12)
    fig.savefig(path)
    return path


def fig_forest(comp: pd.DataFrame, metric: str, path: Path) -> Path | None:
    """Every paired comparison with its interval (see :func:`draw_forest`), saved to ``path``; None when no
    comparison has a difference."""
    fig = draw_forest(comp, metric)
    if fig is None:
        return None
    fig.savefig(path)
    return path


def draw_forest(comp: pd.DataFrame, metric: str):
    """A forest plot of the comparison table: one panel per contrast (ported − scratch, − sampled, − no-module),
    one row per technique and budget, the mean paired difference as a dot with its 95% interval as a line, the
    zero line, and the difference written at the right.  A filled dot survives Holm, a hollow one does not;
    FEW after the row's value marks an interval resting on too few seeds, MISS_MARK one whose shape falls in a
    coverage cell known to miss (the ``shape_miss`` column, where the interval method gives it)."""
    from .prose import MISS_MARK, shape_miss
    from .tables import FEW, few

    d = comp[(comp["n"] > 0) & comp["mean_diff"].notna()] if len(comp) else comp
    if d.empty:
        return None
    contrasts = list(dict.fromkeys(zip(d["a"], d["b"])))
    regimes = sorted({int(r) for r in d["regime"].dropna()}) if "regime" in d else [0]
    techs = ordered(d["technique"]) if "technique" in d else [""]
    rows = [(reg, tech) for reg in regimes for tech in techs]  # zero-shot first, then each budget
    lo = np.nanmin(np.r_[d["ci_low"].to_numpy(float), d["mean_diff"].to_numpy(float), 0.0])
    hi = np.nanmax(np.r_[d["ci_high"].to_numpy(float), d["mean_diff"].to_numpy(float), 0.0])
    pad = 0.08 * max(hi - lo, 0.02)
    fig = _figure(11.0, 1.25 + 0.24 * len(rows) + 0.12 * max(0, len(regimes) - 1))
    axes = fig.subplots(1, len(contrasts), squeeze=False, sharey=True, sharex=True)[0]
    marks = set()
    for ax, (a, b) in zip(axes, contrasts):
        g = d[(d["a"] == a) & (d["b"] == b)]
        ax.axvline(0, color="#444444", lw=1)
        for y, (reg, tech) in enumerate(rows):
            x = g
            if "regime" in g:
                x = x[x["regime"].astype(float) == reg]
            if "technique" in g:
                x = x[x["technique"] == tech]
            if not len(x):
                continue
            r = x.iloc[0]
            colour = COLORS.get(b, "#333333")
            sig = not is_na(r["p_holm"]) and r["p_holm"] < stats.ALPHA
            if not is_na(r["ci_low"]):
                ax.plot([r["ci_low"], r["ci_high"]], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            ax.plot([r["mean_diff"]], [y], marker="o", ms=7, color=colour, mfc=colour if sig else "white", mew=1.6)
            tag = (f" {FEW}" if few(r) else "") + (f" {MISS_MARK}" if shape_miss(r) else "")
            marks |= {m for m, on in ((FEW, few(r)), (MISS_MARK, shape_miss(r))) if on}
            ax.annotate(f"{r['mean_diff']:+.3f}{tag}", (1.0, y), xycoords=("axes fraction", "data"),
                        xytext=(4, 0), textcoords="offset points", va="center", fontsize=8.5, color="#222222")
        for k in range(1, len(regimes)):  # a rule between budgets
            ax.axhline(k * len(techs) - 0.5, color="#bbbbbb", lw=0.8)
        ax.set_title(f"{a} − {b}", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(f"difference in {METRICS[metric]}")
    axes[0].set_yticks(range(len(rows)), [f"{tech}, {regime_label(reg)}" if tech else regime_label(reg)
                                          for reg, tech in rows])
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    legend = ["filled: survives Holm", "hollow: does not", "lines: 95% interval"]
    legend += [f"{FEW}: too few seeds"] if FEW in marks else []
    legend += [f"{MISS_MARK}: interval shape known to miss"] if MISS_MARK in marks else []
    fig.suptitle(f"Every paired comparison: mean difference in {METRICS[metric]} (ported − control) with its 95% "
                 f"interval\n({'; '.join(legend)})", fontsize=11)
    return fig
