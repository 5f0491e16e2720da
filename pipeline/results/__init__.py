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
    ex = results.examples("sweeps/demo.yaml")      # one row per eval example: dataset, example_id, text, label

Nothing here imports torch (``examples`` reads the data with ``datasets``, as the runs do).
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


def examples(sweep):
    """The evaluation examples of each dataset of a sweep, as a pandas DataFrame (dataset, example_id, text,
    label): ``example_id`` is the one in ``predictions`` -- the example's place in its dataset's eval split,
    made by the very split code the runs use (``pipeline.run.data.load``: deterministic, no torch).
    ``sweep``: a spec file or a sweep folder (its recorded spec, overrides applied)."""
    import pandas as pd

    from ..run import data
    from ..spec import load as load_spec
    from ..sweep import Sweep

    s = Sweep.of(sweep)
    spec = s.spec if (s.root / "spec.yaml").exists() else load_spec(sweep)
    rows = []
    for ds in spec.datasets:
        _, ev = data.load(ds)
        rows += [(ds.name, i, text, label) for i, (text, label) in enumerate(zip(ev.texts, ev.labels))]
    return pd.DataFrame(rows, columns=["dataset", "example_id", "text", "label"]).astype(
        {"example_id": "int32", "label": "int16"})
