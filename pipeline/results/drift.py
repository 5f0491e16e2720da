"""Retention against host distance: does a ported module survive a receiving host further away?

The abstract's claim that "the degree of success depends on differences between
originating and receiving models" as a curve.  For every receiving host whose
``build_info.json`` records a distance to the origin (``host_distance``:
linear CKA, mean-pooled cosine, relative weight change), it pairs that distance
with the zero-shot retention of the modules ported into it (ported accuracy on
the receiving host / the module's accuracy on its origin host, from the report's
retention table) -- and the same for the head-only control.  Pure pandas plus a
matplotlib figure; drawn by the report when a sweep has two or more such hosts
(``sweeps/drift.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLS = ["technique", "receiving_host", "condition", "linear_cka", "mean_pooled_cosine", "relative_weight_change",
        "n", "retention_mean", "retention_min", "retention_max"]
MARKERS = {"ported": "o", "head-only": "s"}


def drift_table(retention: pd.DataFrame, hosts: dict | None) -> pd.DataFrame:
    """One row per technique x receiving host x condition whose receiving host has a recorded distance."""
    dist = {}
    for name, h in (hosts or {}).items():
        info = h.get("build_info") if isinstance(h, dict) and isinstance(h.get("build_info"), dict) else {}
        d = info.get("distance") if isinstance(info.get("distance"), dict) else None
        if d and d.get("linear_cka") is not None:
            dist[name] = d
    rows = []
    for r in retention.itertuples(index=False):
        recv = str(r.host_pair).split("->")[-1]
        d = dist.get(recv)
        if d is None:
            continue
        rows.append([r.technique, recv, r.condition, d.get("linear_cka"), d.get("mean_pooled_cosine"),
                     d.get("relative_weight_change"), r.n, r.retention_mean, r.retention_min, r.retention_max])
    return pd.DataFrame(rows, columns=COLS).sort_values(["technique", "condition", "linear_cka"]).reset_index(drop=True)


def fig_drift(table: pd.DataFrame, path: Path) -> Path | None:
    """Retention (mean, min-max bar) against the receiving host's linear CKA to the origin, per technique."""
    if table.empty or table["receiving_host"].nunique() < 2:
        return None
    from .figures import _figure

    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    colors = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#F0E442"]
    for i, (tech, g) in enumerate(table.groupby("technique", sort=True)):
        for cond, h in g.groupby("condition", sort=True):
            h = h.sort_values("linear_cka")
            err = [h["retention_mean"] - h["retention_min"], h["retention_max"] - h["retention_mean"]]
            ax.errorbar(h["linear_cka"], h["retention_mean"], yerr=err, marker=MARKERS.get(cond, "^"),
                        color=colors[i % len(colors)], linestyle="-" if cond == "ported" else ":", capsize=3,
                        label=f"{tech} ({cond})")
    ax.axhline(1.0, color="#999", linewidth=0.8)
    ax.invert_xaxis()  # left: identical host (CKA 1); right: further away
    ax.set_xlabel("linear CKA of the receiving host to the origin (mean-pooled, eval texts)")
    ax.set_ylabel("zero-shot retention (receiving / origin accuracy)")
    ax.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
