"""Calibrate the coverage simulation's ``demo`` setting on a sweep's own runs (``make calibrate-coverage``).

``python -m benches.calibrate_coverage [SWEEP_DIR]`` (default ``runs/demo``, merged first if needed): for every
comparison of the sweep's three contrasts (per technique, regime and stratum, >= 2 seeds) it measures the five
moments of ``pipeline.results.coverage.moments`` and prints them, their medians, and the probit setting whose
moments match the medians (``coverage.calibrate``), as a line to paste into ``coverage.SETTINGS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from pipeline.conditions import CONTRASTS
    from pipeline.results import coverage, merge, sweepdata

    p = argparse.ArgumentParser(prog="python -m benches.calibrate_coverage", description=__doc__.splitlines()[0])
    p.add_argument("sweep", nargs="?", default="runs/demo", help="a sweep folder with done stage-2 runs")
    a = p.parse_args(argv)
    root = Path(a.sweep)
    if sweepdata.needs_merge(root):
        merge.merge(root)
    d = sweepdata.load(root)
    done = d.stage(2, done_only=True)
    rows = coverage.observed_moments(done, d.preds, [(c.a, c.b) for c in CONTRASTS])
    if not rows:
        print(f"{root}: no comparison with 2 or more seeds and predictions", file=sys.stderr)
        return 2
    for r in rows:
        print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    target = {k: float(np.median([r[k] for r in rows])) for k in coverage.MOMENTS}
    print(f"medians over {len(rows)} comparisons: " + ", ".join(f"{k} {v:.4g}" for k, v in target.items()))
    seeds = int(np.median([r["seeds"] for r in rows]))
    s = coverage.calibrate(target, seeds=seeds)
    print(f'Setting("demo", {s.mu_a:.3f}, {s.mu_b:.3f}, example_sd={s.example_sd:.3f}, '
          f'interaction_sd={s.interaction_sd:.3f}, seed_sd={s.seed_sd:.4f})')
    print(s.what)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
