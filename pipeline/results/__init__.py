"""From finished runs to findings: shard files, merged results, statistics, the report.

* ``shards``   -- one Parquet row per run, written atomically (the run side writes them)
* ``merge``    -- shards -> results.parquet, predictions -> predictions.parquet (checked, quarantined, locked)
* ``summary``  -- the mean-accuracy tables ``pipeline run`` / ``summary`` print
* ``intervals`` -- the report's interval: two-level t over seeds and shared examples; ``coverage`` -- its
  coverage simulation (``make bench``)
* ``stats``    -- McNemar, Wilcoxon, Holm, the old hierarchical bootstrap, predictions by run
* ``sweepdata`` -- a sweep folder read as ``SweepData`` (plan, results, states, predictions, hosts)
* ``report``   -- ``pipeline report``: compare, write report/ (uses the modules below)
* ``tables``   -- the report's tables (cells, retention, class balance, did-it-learn, hosts)
* ``figures``  -- the report's figures (matplotlib, no pyplot)
* ``sections`` -- the report's sections; ``comparisons`` -- its paired-comparison section; ``prose`` -- its
  summary (one headline per contrast)
* ``document`` -- a tiny document model rendered to Markdown and self-contained HTML
* ``frames``   -- ``load`` / ``predictions`` below: a sweep as pandas DataFrames, from Python

    from pipeline import results
    df = results.load("sweeps/demo.yaml")          # one row per planned run: plan, state, metrics
    preds = results.predictions("sweeps/demo.yaml")  # one row per run and eval example

Nothing here imports torch.
"""

from __future__ import annotations


def load(sweep):
    """A sweep's results joined with its plan, one row per planned run (``state``: done / failed /
    missing), as a pandas DataFrame; merges first if needed.  ``sweep``: a spec file or a sweep folder."""
    from .frames import load as _load

    return _load(sweep)


def predictions(sweep):
    """A sweep's per-example predictions as a pandas DataFrame (empty, with the columns, when none)."""
    from .frames import predictions as _predictions

    return _predictions(sweep)
