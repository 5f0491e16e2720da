"""7. Interval coverage: how often the report's 95 % interval covers a known difference, on sweeps shaped like
every grid in ``sweeps/``.

Not a speed figure.  ``pipeline.results.coverage`` draws synthetic paired sweeps (a probit model with crossed
example effects, a direction x example interaction, fixed stratum effects and a seed effect per run) with a
known true accuracy difference, in every cell of ``coverage.CELLS``: 1, 2 (two host directions on one dataset,
sharing eval examples) and 4 strata (two directions x two datasets), 2, 3 and 5 seeds, seed effects independent
across strata, half shared, fully shared, fully shared and heavy-tailed (t3), and half shared with a seed that
collapses (a module that learned nothing) one time in three.  Each sweep goes through the report's interval
(``pipeline.results.intervals.two_level``: seed part clustered on the seed, on t(seeds - 1); example part within
strata) and, as the baseline, through the interval it replaces (``before``: the seed part pooled within strata
over sum(seeds - 1) degrees of freedom, the example part's residual taken across strata).  One figure per shape
(strata x seeds): its value is the coverage of the *worst* kind, its note every kind's coverage with yes/NO
against 93-97 %; the collapsed kind is listed, not judged (see the figures' notes).
The cells that miss are written to ``pipeline/results/coverage_cells.json``, from which the
report marks intervals of those shapes.  Target: every kind within 93-97 % at 3 and 5 seeds; 2-seed cells are
reported and marked, not judged.  Seeded: the same numbers on every machine; the only noise is Monte-Carlo error.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from pipeline.results.intervals import BAND  # coverage asked of the report's interval at 3 and 5 seeds

from .common import Figure, Sizes

SEED_X3_KINDS = ("shared", "t3")  # the seed-heavy setting runs these kinds (the hardest for the seed part)


def before(units) -> dict:
    """The interval this replaces: seed part pooled within strata on sum(k - 1) df as if strata were independent
    replicates; example part per dataset with the residual taken across strata (both as issue 25 found them)."""
    from pipeline.results import intervals

    rows = [intervals.Unit(u[0], u[1], u[2], u[3], np.asarray(u[4], float), np.asarray(u[5], float)) for u in units]
    n = len(rows)
    dbar = np.array([np.mean(r.a - r.b) for r in rows])
    strata: dict = {}
    for i, r in enumerate(rows):
        strata.setdefault(r.stratum, []).append(i)
    ss = sum(float(((dbar[us] - dbar[us].mean()) ** 2).sum()) for us in strata.values())
    seed_df = sum(len(us) - 1 for us in strata.values())
    if seed_df == 0:
        return {"ci_low": math.nan, "ci_high": math.nan}
    seed_term = ss / seed_df / n
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.examples, []).append(i)
    ex_term, ex_df = 0.0, 0
    for us in groups.values():
        mat = np.stack([rows[i].a - rows[i].b for i in us])
        k, m = mat.shape
        col = mat.mean(0)
        resid = mat - mat.mean(1, keepdims=True) - col[None, :] + mat.mean()
        ms_res = float((resid ** 2).sum()) / max(1, (k - 1) * (m - 1)) if k > 1 else 0.0
        ex_term += (k / n) ** 2 * max(0.0, float(np.var(col, ddof=1)) - ms_res / k) / m
        ex_df += m - 1
    est = float(dbar.mean())
    h = intervals.half_width(((seed_term, seed_df), (ex_term, ex_df)))
    return {"ci_low": est - h, "ci_high": est + h}


def run(sizes: Sizes, tmp: Path, log=print, cells_out: Path | None = None) -> list[Figure]:
    from pipeline.results import coverage, intervals

    cells_out = cells_out or intervals.CELLS_FILE
    settings = [coverage.SETTINGS["demo"], coverage.SETTINGS["seed"]]
    results, figs = [], []
    shapes = sorted({(c.strata, c.seeds) for c in coverage.CELLS})
    for i, (h, s) in enumerate(shapes):
        t0 = time.perf_counter()
        per = []
        for setting in settings:
            for cell in (c for c in coverage.CELLS if (c.strata, c.seeds) == (h, s)):
                if setting.name == "seed" and cell.kind not in SEED_X3_KINDS:
                    continue
                new = coverage.coverage(setting, cell, sizes.coverage_reps, seed=2026)
                old = coverage.coverage(setting, cell, sizes.coverage_boot_reps, method=before, seed=2026)
                new["before"], new["before_mc_se"] = old["coverage"], old["mc_se"]
                new["before_width"] = old["median_width"]
                per.append(new)
        results += per
        judged = [r for r in per if r["kind"] != "collapsed"]  # a collapse is quoted by the report, not marked
        worst = min(judged, key=lambda r: abs(r["coverage"] - 0.95))
        worst = min(judged, key=lambda r: r["coverage"]) if any(r["coverage"] < BAND[0] for r in judged) else worst
        worst_old = min(judged, key=lambda r: r["before"])
        secs = time.perf_counter() - t0
        f = Figure(f"7{'abcdefghijklmnop'[i]}", f"95% interval coverage, {h} strata, {s} seeds (worst seed-effect kind)",
                   "%", [100 * worst["coverage"]], label="seed-clustered two-level t",
                   baseline_label="pooled strata (before)", baseline=[100 * worst_old["before"]],
                   how=(f"{sizes.coverage_reps:,} synthetic sweeps per cell ({sizes.coverage_boot_reps:,} for the "
                        f"baseline), 500 examples per dataset, the probit model of pipeline/results/coverage.py "
                        f"(settings: {'; '.join(f'{x.name}: {x.what}' for x in settings)}), seeded; coverage = share of "
                        f"95 % intervals that contain the true difference; the value is the cell furthest below 93 % "
                        f"if any, else the one furthest from 95 %"))
        if s >= 3:
            f.ok = all(BAND[0] <= r["coverage"] <= BAND[1] for r in judged)
            f.target = "93–97 % every kind but collapsed"
        f.note = ("; ".join(f"{r['setting']}/{r['kind']} {100 * r['coverage']:.1f} % "
                            f"{'yes' if BAND[0] <= r['coverage'] <= BAND[1] else 'NO'} (before "
                            f"{100 * r['before']:.1f} %; width {r['median_width']:.3f} vs {r['before_width']:.3f})"
                            for r in per)
                  + f". Monte-Carlo SE about ±{100 * max(r['mc_se'] for r in per):.1f} points"
                  + (" (baseline ±{:.1f})".format(100 * max(r['before_mc_se'] for r in per)))
                  + (". Two seeds: the seed part rests on 1 degree of freedom (t = 12.7); the report marks such "
                     "intervals ‡" if s == 2 else "")
                  + ". Collapsed (a module that learned nothing, one seed in three): no interval over so few seeds can "
                    "hold its coverage, since in (2/3)^seeds of the sweeps no collapse is seen; it is not judged, and the "
                    "report quotes its coverage where a stage-1 module did not learn" + f". {secs:.0f} s.")
        log(f"  {f.key} {h} strata {s} seeds: " + ", ".join(f"{r['setting'][0]}/{r['kind']} {r['coverage']:.3f} "
                                                           f"(before {r['before']:.3f})" for r in per))
        figs.append(f)
    if cells_out is not None and sizes.coverage_reps >= 1000:  # toy runs do not overwrite the report's lookup
        cells_out.write_text(json.dumps({
            "band": list(BAND), "reps": sizes.coverage_reps,
            "settings": {x.name: x.what for x in settings},
            "cells": [{k: r[k] for k in ("setting", "strata", "seeds", "kind", "coverage", "mc_se", "median_width",
                                         "before")} for r in results]}, indent=1) + "\n")
    return figs
