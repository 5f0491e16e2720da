"""A sweep folder read for the report and for ``pipeline.results.load``: the plan with each run's result and
state, per-example predictions and hosts.json (:class:`SweepData`); and whether it needs merging first.

Its own module so that the report's parts (tables, prose, sections, figures) read one data type without
importing the report that imports them.  Sweeps made before the head-free formulation named the
receiving host without a module ``head-only``; they are read as ``no-module`` (the same control under
``head: trained``: no module, the ported head).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..plan import PLAN_COLUMNS
from . import stats

RUN_NUMBERS = ("accuracy", "macro_f1", "auc", "majority_acc", "train_pos_rate", "eval_pos_rate",
               "pred_positive_rate", "eval_examples")
OLD_NAMES = {"head-only": "no-module"}  # condition names of older sweeps


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
    if "condition" in runs:
        runs["condition"] = runs["condition"].replace(OLD_NAMES)
        plan = plan.assign(condition=plan["condition"].replace(OLD_NAMES)) if "condition" in plan else plan
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
