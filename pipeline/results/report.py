"""``pipeline report TARGET``: a paper-style report of a sweep (tables, figures, paired statistics).

The report folder (default ``<sweep>/report/``) holds::

    report.md  report.html        the report (the HTML is self-contained: figures inlined as base64 PNG)
    figures/*.png                 the forest plot of every comparison (shown first, under the findings), grouped
                                  bars, accuracy vs budget, one heatmap per contrast (ported - scratch, ...)
    tables/*.csv                  every table of the report, long form, with the run ids behind each cell

It reads ``plan.parquet``, ``results.parquet`` (one row per run), and where
they exist ``predictions.parquet`` (one row per run and eval example; see
pipeline.results.merge) and ``hosts.json`` (each host's pooling and its distance from
its base).  The contrasts and what each measures come from pipeline/conditions.py.  With
predictions, each comparison's interval is the two-level t interval over seeds and shared examples
(pipeline.results.intervals; its coverage is measured in BENCHMARKS.md) with per-pair McNemar tests;
without (older sweeps), the run-level Wilcoxon comparisons of earlier versions.  The sweep itself is
read by pipeline.results.sweepdata.

Cells are defined by the plan (plan.parquet), not by what has finished, so a
planned run without a result is counted as missing in its cell and never
silently dropped; results whose run is not in the plan are counted and left out.

Any cell traces back to its runs with one DuckDB query (missing runs show up
with NULL metrics; string literals are quoted with single quotes doubled, so a
folder named ``bob's sweep`` works)::

    SELECT p.run_id, p.seed, r.accuracy, r.macro_f1, r.finished_at, p.origin_run
    FROM read_parquet('SWEEP/plan.parquet') AS p
    LEFT JOIN read_parquet('SWEEP/results.parquet') AS r USING (run_id)
    WHERE p.stage = 2 AND p.technique = 'lora' AND p.host_pair = 'a->b'
      AND p.dataset = 'rt' AND p.condition = 'ported' AND p.regime = 0
    ORDER BY p.seed;
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..conditions import contrasts_for
from ..errors import UsageError
from ..files import atomic_write
from ..plan import PLAN_COLUMNS
from . import intervals, stats
from .drift import drift_table, fig_drift, technique_tests
from .figures import fig_bars, fig_budget, fig_forest, fig_heatmap
from .sections import FOREST, document
from .sweepdata import RUN_NUMBERS, SweepData, load, needs_merge  # noqa: F401  (re-exported: report.load, report.needs_merge)
from .tables import cell_table, class_balance_table, hosts_table, learn_table, ordered, retention_table

MISSING_COLUMNS = [c for c in PLAN_COLUMNS if c not in ("needs", "origin_run")]  # tables/missing_runs.csv
INTERVALS = ("two-level", "bootstrap")  # the report's interval: intervals.two_level (default) or the old bootstrap


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    out: Path
    markdown: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    done: int
    planned: int
    merged: bool


def contrasts_of(d: SweepData) -> list[tuple[str, str]]:
    """The contrasts of pipeline/conditions.py whose two conditions are both planned."""
    conds = set(d.stage(2)["condition"].dropna()) if len(d.stage(2)) else set()
    return [(c.a, c.b) for c in contrasts_for(conds)]


def compare(d: SweepData, done2: pd.DataFrame, by: list[str], metric: str, n_boot: int, seed: int,
            interval: str = "two-level") -> pd.DataFrame:
    """The comparison table.  With per-example predictions (accuracy): the two-level t interval
    (intervals.compare), or with ``interval="bootstrap"`` the hierarchical bootstrap; else the run-level
    Wilcoxon comparisons."""
    contrasts = contrasts_of(d)
    if interval not in INTERVALS:
        raise UsageError(f"report: interval must be one of {', '.join(INTERVALS)}, not {interval!r}")
    if metric == "accuracy" and d.preds is not None:
        if interval == "bootstrap":
            return stats.hierarchical_compare(done2, d.preds, contrasts, by, n_boot, seed)
        return intervals.compare(done2, d.preds, contrasts, by)
    return stats.paired_compare(done2, contrasts, by, metric, n_boot, seed)


def pairs_table(d: SweepData, done2: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every matched run pair with both run ids and its difference; with predictions also the paired
    example count, the discordant counts and the pair's exact McNemar p."""
    keys = list(stats.PAIR_KEYS)
    frames = []
    for a, b in contrasts_of(d):
        p = stats.paired_differences(done2, a, b, metric)
        if p.empty:
            continue
        p = p.assign(contrast=f"{a} - {b}")
        if d.preds is not None:
            pp = stats.prediction_pairs(done2, d.preds, a, b)
            p = p.merge(pp[[*keys, "n_examples", "mcnemar_b", "mcnemar_c", "p_mcnemar"]], on=keys, how="left")
        frames.append(p)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*keys, "contrast", "diff"])


def build(root: Path, out: Path | None = None, metric: str = "accuracy", n_boot: int = 10_000, seed: int = 0,
          merge: bool = True, figures: bool = True, warn=print, interval: str = "two-level") -> ReportResult:
    """Write the report of the sweep at ``root`` into ``out`` (default ``root/report``).

    Merges first when results.parquet is missing or older than the newest shard
    (``merge=False`` skips that); ``figures=False`` leaves the figures out (fast); ``interval``: see INTERVALS.
    """
    root = Path(root)
    if not (root / "plan.parquet").exists():
        raise UsageError(f"{root}: no plan.parquet (not a sweep folder; run the sweep first)")
    merged = False
    if merge and needs_merge(root):
        from .merge import merge as do_merge

        do_merge(root, warn=warn)
        merged = True
    d = load(root)
    out = Path(out) if out else root / "report"
    figdir, tabdir = out / "figures", out / "tables"
    for folder, pattern in ((figdir, "*.png"), (tabdir, "*.csv")):  # stale files of an earlier report
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.glob(pattern):
            f.unlink()

    s1, s2 = d.stage(1), d.stage(2)
    cells2 = cell_table(s2, ["host_pair", "dataset", "technique", "condition", "regime"]) if len(s2) else \
        pd.DataFrame()
    cells1 = cell_table(s1, ["technique", "origin_host", "dataset"]) if len(s1) else pd.DataFrame()
    done2 = s2[s2["state"] == "done"]
    pooled = compare(d, done2, ["technique", "regime"], metric, n_boot, seed, interval)
    by_dir = compare(d, done2, ["technique", "host_pair", "regime"], metric, n_boot, seed, interval)
    extra = {"retention": retention_table(d), "class_balance": class_balance_table(d), "did_it_learn": learn_table(d),
             "hosts": hosts_table(d.hosts)}
    extra["drift"] = drift_table(d.runs, d.hosts, d.preds)
    extra["drift_tests"] = technique_tests(d.runs, d.preds, d.hosts)

    tables = []
    for name, df in (("stage2_cells", cells2), ("stage1_cells", cells1), ("stats_pooled", pooled),
                     ("stats_by_direction", by_dir), ("pairs", pairs_table(d, done2, metric)), *extra.items(),
                     ("missing_runs", d.runs.loc[d.runs["state"] != "done", [*(c for c in MISSING_COLUMNS if c in d.runs), "state"]])):
        p = tabdir / f"{name}.csv"
        df.to_csv(p, index=False)
        tables.append(p)

    draw, figures = figures, []
    f = fig_forest(pooled, metric, figdir / f"{FOREST}.png") if draw else None
    if f:
        figures.append(f)
    datasets = ordered(s2["dataset"]) if len(s2) and draw else []
    for ds in datasets:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds)
        for fn, name in ((lambda p, ds=ds: fig_bars(cells2, ds, metric, p, done2), f"bars_{slug}.png"),
                         (lambda p, ds=ds: fig_budget(cells2, cells1, ds, metric, p), f"budget_{slug}.png")):
            f = fn(figdir / name)
            if f:
                figures.append(f)
    for a, b in contrasts_of(d) if draw else ():
        f = fig_heatmap(by_dir, a, b, metric, figdir / f"heatmap_{a}_minus_{b}.png")
        if f:
            figures.append(f)
    f = fig_drift(extra["drift"], figdir / "drift_retention_vs_distance.png") if draw else None
    if f:
        figures.append(f)

    doc = document(d, out, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed, extra)
    md, ht = out / "report.md", out / "report.html"
    title = f"PEFT portability report: {d.info.get('name', root.name)}"
    atomic_write(md, doc.markdown())
    atomic_write(ht, doc.html(out, title))
    return ReportResult(out, md, ht, figures, tables, int((d.runs["state"] == "done").sum()), len(d.runs), merged)
