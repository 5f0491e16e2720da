"""``pipeline report TARGET``: a paper-style report of a sweep (tables, figures, paired statistics).

The report folder (default ``<sweep>/report/``) holds::

    report.md  report.html        the report (the HTML is self-contained: figures inlined as base64 PNG)
    figures/*.png                 grouped bars, accuracy vs budget, ported - scratch/sampled/head-only heatmaps
    tables/*.csv                  every table of the report, long form, with the run ids behind each cell

It reads ``plan.parquet``, ``results.parquet`` (one row per run), and where
they exist ``predictions.parquet`` (one row per run and eval example; see
pipeline.results.merge) and ``hosts.json`` (each host's pooling and its distance from
its base).  With predictions, the paired comparisons are a hierarchical
bootstrap over run pairs and examples with per-pair McNemar tests
(pipeline.results.stats.hierarchical_compare); without (older sweeps), the run-level
Wilcoxon comparisons of earlier versions.

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

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..files import atomic_write
from ..plan import PLAN_COLUMNS
from . import stats
from .drift import drift_table, fig_drift, technique_tests
from .figures import fig_bars, fig_budget, fig_heatmap
from .sections import document
from .tables import cell_table, class_balance_table, hosts_table, learn_table, ordered, retention_table

# head-only: the receiving host with no PEFT module and the ported classification head (how much the head carries)
CONTRASTS = (("ported", "scratch"), ("ported", "sampled"), ("ported", "head-only"))
RUN_NUMBERS = ("accuracy", "macro_f1", "auc", "majority_acc", "train_pos_rate", "eval_pos_rate",
               "pred_positive_rate", "eval_examples")
MISSING_COLUMNS = [c for c in PLAN_COLUMNS if c not in ("needs", "origin_run")]  # tables/missing_runs.csv


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
@dataclass
class SweepData:
    root: Path
    info: dict  # sweep.json
    plan: pd.DataFrame  # every planned run
    results: pd.DataFrame  # results.parquet as merged (may include runs no longer planned)
    runs: pd.DataFrame  # the plan with each run's results joined on and its state
    orphans: int = 0  # results whose run id is not in the plan
    quarantined: int = 0
    preds: stats.Predictions | None = None  # per-example correctness of done runs (predictions.parquet)
    hosts: dict | None = None  # hosts.json
    notes: list = field(default_factory=list)  # what could not be read, for the provenance section

    def stage(self, s: int, done_only: bool = False) -> pd.DataFrame:
        r = self.runs[self.runs["stage"] == s]
        return r[r["state"] == "done"] if done_only else r


def needs_merge(root: Path) -> bool:
    """True if results.parquet is missing, older than the newest shard, or holds another number of runs
    than there are shards (a shard was removed or quarantined since the last merge)."""
    import pyarrow.parquet as pq

    shard_dir = root / "shards"
    if not shard_dir.exists():
        return False
    shards = {e.name: e.stat().st_mtime for e in os.scandir(shard_dir)
              if e.name.endswith(".parquet") and not e.name.startswith(".")}
    mtimes = list(shards.values())
    if not mtimes:
        return False
    res = root / "results.parquet"
    if not res.exists() or res.stat().st_mtime < max(mtimes):
        return True
    if (root / "preds").exists():  # predictions of finished runs not merged yet
        pm = [e.stat().st_mtime for e in os.scandir(root / "preds") if e.name in shards]
        pp = root / "predictions.parquet"
        if pm and (not pp.exists() or pp.stat().st_mtime < max(pm)):
            return True
    try:
        return pq.read_metadata(res).num_rows != len(mtimes)
    except Exception:  # unreadable: merging rewrites it
        return True


def load(root: Path) -> SweepData:
    root = Path(root)
    if not (root / "plan.parquet").exists():
        raise UsageError(f"{root}: no plan.parquet (not a sweep folder; run the sweep first)")
    info = json.loads((root / "sweep.json").read_text()) if (root / "sweep.json").exists() else {}
    plan = pd.read_parquet(root / "plan.parquet")
    results = pd.read_parquet(root / "results.parquet") if (root / "results.parquet").exists() else pd.DataFrame(
        {"run_id": pd.Series([], dtype=object)})
    planned = set(plan["run_id"])
    orphans = int((~results["run_id"].isin(planned)).sum())
    extra = [c for c in results.columns if c not in PLAN_COLUMNS and c != "config_json"]
    runs = plan[[c for c in PLAN_COLUMNS if c in plan.columns]].merge(
        results[["run_id", *extra]], on="run_id", how="left", indicator=True)
    runs["state"] = np.where(runs["_merge"] == "both", "done", "missing")
    runs = runs.drop(columns="_merge")
    errors = root / "errors"
    if errors.exists():
        failed = {p.stem for p in errors.glob("*.txt")}
        runs.loc[(runs["state"] == "missing") & runs["run_id"].isin(failed), "state"] = "failed"
    for c in RUN_NUMBERS:  # older sweeps lack the newer columns: NaN, and the report says "not recorded"
        if c not in runs.columns:
            runs[c] = np.nan
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    runs["stage"] = runs["stage"].astype(int)
    runs["seed"] = runs["seed"].astype(int)
    runs["regime"] = pd.to_numeric(runs["regime"], errors="coerce").astype("Int64")
    quarantined = len(list((root / "quarantine").glob("*.parquet"))) if (root / "quarantine").exists() else 0
    d = SweepData(root, info, plan, results, runs, orphans, quarantined)
    d.preds = _load_preds(root, set(runs.loc[runs["state"] == "done", "run_id"]), d.notes)
    d.hosts = _load_hosts(root, d.notes)
    return d


def _load_preds(root: Path, done: set, notes: list) -> stats.Predictions | None:
    """Per-example correctness of the done runs, or None (no predictions.parquet: an older sweep)."""
    path = root / "predictions.parquet"
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path, columns=["run_id", "example_id", "correct"])
    except Exception as e:  # unreadable or lacking columns: the run-level statistics still work
        notes.append(f"`predictions.parquet` unreadable ({str(e).splitlines()[0][:100]}); run-level statistics "
                     f"used instead")
        return None
    df = df[df["run_id"].isin(done)]
    return stats.Predictions.from_frame(df) if len(df) else None


def _load_hosts(root: Path, notes: list) -> dict | None:
    path = root / "hosts.json"
    if not path.exists():
        return None
    try:
        hosts = json.loads(path.read_text())
        if not isinstance(hosts, dict):
            raise ValueError("not an object")
        return {str(k): (v if isinstance(v, dict) else {}) for k, v in hosts.items()}
    except (OSError, ValueError) as e:
        notes.append(f"`hosts.json` unreadable ({str(e)[:100]})")
        return None


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
    """The contrasts whose two conditions are both planned (ported - head-only only with head-only runs)."""
    conds = set(d.stage(2)["condition"].dropna()) if len(d.stage(2)) else set()
    return [(a, b) for a, b in CONTRASTS if a in conds and b in conds] or list(CONTRASTS[:2])


def compare(d: SweepData, done2: pd.DataFrame, by: list[str], metric: str, n_boot: int, seed: int) -> pd.DataFrame:
    """The comparison table: hierarchical bootstrap on predictions when the sweep has them (accuracy),
    else the run-level Wilcoxon comparisons."""
    contrasts = contrasts_of(d)
    if metric == "accuracy" and d.preds is not None:
        return stats.hierarchical_compare(done2, d.preds, contrasts, by, n_boot, seed)
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
          merge: bool = True, figures: bool = True, warn=print) -> ReportResult:
    """Write the report of the sweep at ``root`` into ``out`` (default ``root/report``).

    Merges first when results.parquet is missing or older than the newest shard
    (``merge=False`` skips that); ``figures=False`` leaves the figures out (fast).
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
    pooled = compare(d, done2, ["technique", "regime"], metric, n_boot, seed)
    by_dir = compare(d, done2, ["technique", "host_pair", "regime"], metric, n_boot, seed)
    extra = {"retention": retention_table(d), "class_balance": class_balance_table(d), "did_it_learn": learn_table(d),
             "hosts": hosts_table(d.hosts)}
    extra["drift"] = drift_table(d.runs, d.hosts)
    extra["drift_tests"] = technique_tests(d.runs, d.preds, d.hosts, seed=seed)

    tables = []
    for name, df in (("stage2_cells", cells2), ("stage1_cells", cells1), ("stats_pooled", pooled),
                     ("stats_by_direction", by_dir), ("pairs", pairs_table(d, done2, metric)), *extra.items(),
                     ("missing_runs", d.runs.loc[d.runs["state"] != "done", [*(c for c in MISSING_COLUMNS if c in d.runs), "state"]])):
        p = tabdir / f"{name}.csv"
        df.to_csv(p, index=False)
        tables.append(p)

    draw, figures = figures, []
    datasets = ordered(s2["dataset"]) if len(s2) and draw else []
    for ds in datasets:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds)
        for fn, name in ((lambda p, ds=ds: fig_bars(cells2, ds, metric, p), f"bars_{slug}.png"),
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
