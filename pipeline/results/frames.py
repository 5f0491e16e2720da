"""Results from Python: a sweep as pandas DataFrames (``from pipeline import results``).

    df = results.load("sweeps/demo.yaml")        # one row per planned run, with its state and metrics
    df[df.state == "done"].groupby(["technique", "condition", "regime"]).accuracy.mean()
    preds = results.predictions("runs/demo")     # one row per run and eval example

``sweep`` is a spec file (its ``output_dir``) or a sweep folder.  Shards not merged yet are merged
first (as ``pipeline report`` does).  Nothing here imports torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..errors import UsageError
from ..sweep import Sweep


def _root(sweep: str | Path) -> Path:
    root = Sweep.of(sweep).root
    if not (root / "plan.parquet").exists():
        raise UsageError(f"{root}: no sweep there yet (no plan.parquet); run `pipeline run {sweep}` first")
    return root


def _merged(sweep: str | Path) -> Path:
    """The sweep folder, merged first if shards or predictions are newer than the merged files."""
    from .sweepdata import needs_merge

    root = _root(sweep)
    if needs_merge(root):
        from .merge import merge

        merge(root, warn=lambda m: warnings.warn(m, stacklevel=3))
    return root


def load(sweep: str | Path) -> pd.DataFrame:
    """The merged results joined with the plan: one row per planned run (plan columns, then the
    result columns), ``state`` done / failed (an error file, no result) / missing; metrics are NaN
    where the run has no result."""
    from .sweepdata import load as load_sweep

    return load_sweep(_merged(sweep)).runs.reset_index(drop=True)


def predictions(sweep: str | Path) -> pd.DataFrame:
    """Per-example predictions of the planned runs that have them (run_id, example_id, label, pred,
    correct, score); an empty frame with those columns when the sweep has none (an older sweep)."""
    from .shards import PRED_SCHEMA

    root = _merged(sweep)
    path = root / "predictions.parquet"
    if not path.exists():
        return PRED_SCHEMA.empty_table().to_pandas()
    df = pd.read_parquet(path)
    planned = set(pd.read_parquet(root / "plan.parquet", columns=["run_id"])["run_id"])
    return df[df["run_id"].isin(planned)].reset_index(drop=True)
