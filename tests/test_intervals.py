"""The report's interval (pipeline.results.intervals) on synthetic numbers with known answers, and its coverage.

The coverage test runs the simulation of pipeline.results.coverage with 2,000 sweeps a cell (Monte-Carlo SE
about 0.005), against a band 0.925-0.98: the 0.93-0.97 that `make bench` checks with 10,000, widened by its error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pipeline.results import coverage, intervals, stats


def _units(d_matrix, stratum="a->b|rt", examples="rt", seeds=None):
    """Run pairs from a seeds x examples matrix of differences in {-1, 0, 1} (a right / both or neither / b right);
    row s is seed ``seeds[s]`` (default s)."""
    d = np.asarray(d_matrix)
    ids = np.arange(d.shape[1])
    seeds = range(len(d)) if seeds is None else seeds
    return [(stratum, s, examples, ids, (row > 0).astype(int), (row < 0).astype(int)) for s, row in zip(seeds, d)]


def _sweep(seeds, n=400, seed_sd=0.03, rng=0):
    rng = np.random.default_rng(rng)
    ex = rng.normal(0, 1, n)
    d = np.stack([np.digitize(ex + rng.normal(0, 1, n) + 0.3 + rng.normal(0, seed_sd * 10), [-0.5, 0.9]) - 1
                  for _ in range(seeds)])
    return d


def test_balanced_one_stratum_is_the_crossed_anova():
    d = _sweep(4).astype(float)
    s, n = d.shape
    g, rm, cm = d.mean(), d.mean(1), d.mean(0)
    ms_s = n * ((rm - g) ** 2).sum() / (s - 1)
    ms_e = s * ((cm - g) ** 2).sum() / (n - 1)
    ms_r = ((d - rm[:, None] - cm[None, :] + g) ** 2).sum() / ((s - 1) * (n - 1))
    r = intervals.two_level(_units(d))
    assert r["mean_diff"] == pytest.approx(g) and r["n_units"] == 4 and r["n_examples"] == 4 * n
    assert r["seed_var"] == pytest.approx(ms_s / (s * n)) and r["seed_df"] == 3
    assert r["example_var"] == pytest.approx((ms_e - ms_r) / (s * n))
    assert r["noise_var"] == pytest.approx(ms_r / (s * n))  # the run-pair noise inside the seed part
    h = math.sqrt(sps.t.ppf(0.975, 3) ** 2 * (ms_s - ms_r) / (s * n) + sps.t.ppf(0.975, 3 * (n - 1)) ** 2 * ms_r / (s * n)
                  + sps.t.ppf(0.975, n - 1) ** 2 * r["example_var"])
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((g - h, g + h))
    assert not r["few_seeds"] and not r["no_variation"]


def test_two_seeds_use_t_with_one_degree_of_freedom():
    """With 2 seeds the seed part is scaled by t(1) = 12.7, not ~2: the old bootstrap's interval is far narrower."""
    d = _sweep(2, seed_sd=0.2, rng=3)
    r = intervals.two_level(_units(d))
    assert r["seed_df"] == 1 and r["few_seeds"]
    half = (r["ci_high"] - r["ci_low"]) / 2
    assert half >= 12.7 * math.sqrt(r["seed_var"] - r["noise_var"])
    boot = stats.hierarchical_bootstrap([(u[4], u[5]) for u in _units(d)], n_boot=4000)
    assert boot["ci_high"] - boot["ci_low"] < 0.5 * (r["ci_high"] - r["ci_low"])


def test_p_is_the_interval_inverted():
    for rng in range(6):
        r = intervals.two_level(_units(_sweep(3, rng=rng)))
        excludes_zero = r["ci_low"] > 0 or r["ci_high"] < 0
        assert (r["p"] < 0.05) == excludes_zero
        m = r["n_examples"] // 3
        parts = ((r["seed_var"] - r["noise_var"], 2), (r["noise_var"], 2 * (m - 1)), (r["example_var"], m - 1))
        at_p = intervals.half_width(parts, 1 - r["p"])
        assert at_p == pytest.approx(abs(r["mean_diff"]), rel=1e-6)  # the 1 - p interval just reaches 0


def test_one_seed_gives_no_interval_and_identical_runs_no_variation():
    r = intervals.two_level(_units(_sweep(1)))
    assert r["seed_df"] == 0 and math.isnan(r["ci_low"]) and math.isnan(r["p"]) and not math.isnan(r["mean_diff"])
    same = intervals.two_level(_units(np.zeros((3, 50))))
    assert same["no_variation"] and math.isnan(same["p"]) and same["ci_low"] == same["ci_high"] == 0
    assert intervals.two_level([])["n_units"] == 0
    tie = intervals.two_level(_units([[1, -1, 0, 0], [-1, 1, 0, 0]]))  # varies, but both parts estimate 0
    assert math.isnan(tie["ci_low"]) and math.isnan(tie["p"]) and not tie["no_variation"] and tie["seed_df"] == 1


def test_strata_are_fixed_the_seed_part_clusters_on_the_seed():
    """Two host directions with very different effects: their difference is design, not seed-to-seed noise; a seed
    is shared by both directions, so the seed part is the spread of the per-seed means over directions, on
    seeds - 1 degrees of freedom (not 2 x (seeds - 1))."""
    a = _sweep(3, rng=1)
    b = np.clip(_sweep(3, rng=2) + 1, -1, 1)  # a much larger effect in the other direction
    pooled = intervals.two_level(_units(a, "a->b|rt") + _units(b, "b->a|rt"))
    assert pooled["seed_df"] == 2 and pooled["n_seeds"] == 3 and pooled["n_strata"] == 2
    per_seed = (a.mean(1) + b.mean(1)) / 2
    assert pooled["seed_var"] == pytest.approx(per_seed.var(ddof=1) / 3)
    # the same runs with seeds that are NOT shared (6 seed clusters) pool within-stratum spread over 5 df
    indep = intervals.two_level(_units(a, "a->b|rt") + _units(b, "b->a|rt", seeds=[3, 4, 5]))
    assert indep["seed_df"] == 5


def test_a_shared_seed_effect_widens_the_interval():
    """A seed effect shared by every stratum moves all of a seed's pairs together: pooled within strata as
    independent replicates it would look like 4 x 2 = 8 df of small spread; clustered, it is 2 df of large spread."""
    rng = np.random.default_rng(5)
    base = _sweep(3, rng=7).astype(float)
    shift = np.array([0.0, 0.3, -0.3])  # seed s shifts every stratum's differences alike
    units = []
    for h in range(4):
        d = base.copy()
        for s in range(3):
            flip = rng.random(d.shape[1]) < abs(shift[s])
            d[s, flip] = np.sign(shift[s])
        units += _units(d, f"h{h}|rt", seeds=range(3))
    r = intervals.two_level(units)
    per_seed = np.array([np.mean([np.mean(u[4] - u[5]) for u in units if u[1] == s]) for s in range(3)])
    assert r["seed_df"] == 2 and r["seed_var"] == pytest.approx(per_seed.var(ddof=1) / 3)


def test_unbalanced_seeds_use_cr2_residuals():
    """A stratum missing a seed: each residual is scaled by sqrt(k / (k - 1)) of its own stratum before the per-seed
    sums (CR2 for the stratum-mean design); a stratum with a single seed adds nothing to the seed part."""
    a, b = _sweep(3, rng=11), _sweep(2, rng=12)
    units = _units(a, "A|rt") + _units(b, "B|rt") + _units(_sweep(1, rng=13), "C|rt", seeds=[0])
    r = intervals.two_level(units)
    n = len(units)
    ra, rb = a.mean(1) - a.mean(1).mean(), b.mean(1) - b.mean(1).mean()
    sums = [ra[0] * math.sqrt(1.5) + rb[0] * math.sqrt(2), ra[1] * math.sqrt(1.5) + rb[1] * math.sqrt(2),
            ra[2] * math.sqrt(1.5)]
    assert r["seed_var"] == pytest.approx(sum((x / n) ** 2 for x in sums))
    assert r["n_seeds"] == 3 and r["seed_df"] == 2 and r["n_units"] == 6


def test_example_part_keeps_a_direction_by_example_interaction():
    """Two directions score the same examples; each has its own per-example pattern, identical in every seed (no
    run-pair noise).  The example part is the variance over examples of the two directions' summed patterns; a
    residual taken across the two directions would count their disagreement as noise and shrink it."""
    rng = np.random.default_rng(3)
    m = 400
    pa, pb = rng.integers(-1, 2, m), rng.integers(-1, 2, m)
    units = _units(np.stack([pa] * 3), "a->b|rt") + _units(np.stack([pb] * 3), "b->a|rt")
    r = intervals.two_level(units)
    z = (pa - pa.mean()) / 2 + (pb - pb.mean()) / 2
    assert r["example_var"] == pytest.approx((z ** 2).sum() / (m - 1) / m)
    # another dataset's examples add independently
    other = intervals.two_level(units + _units(np.stack([pa] * 3), "a->b|sst", examples="sst"))
    assert other["example_var"] > 0 and other["n_strata"] == 3


def test_pairs_with_missing_examples_align_on_example_id():
    d = _sweep(3).astype(float)
    full = intervals.two_level(_units(d))
    units = _units(d)
    drop = np.arange(d.shape[1]) != 7  # one pair lacks example 7
    s, seed, ex, ids, a, b = units[0]
    units[0] = (s, seed, ex, ids[drop], a[drop], b[drop])
    part = intervals.two_level(units)
    assert part["n_examples"] == full["n_examples"] - 1
    assert part["ci_high"] - part["ci_low"] == pytest.approx(full["ci_high"] - full["ci_low"], rel=0.05)


def test_compare_table_matches_two_level_and_holm():
    rows, preds = [], []
    rng = np.random.default_rng(0)
    ex = rng.normal(0, 1, 300)
    for tech, eff in (("lora", 1.0), ("ia3", 0.0)):
        for s in range(3):
            for cond in ("ported", "scratch"):
                rid = f"{tech}{s}{cond}"
                rows.append({"technique": tech, "host_pair": "a->b", "dataset": "rt", "regime": 0, "seed": s,
                             "condition": cond, "run_id": rid})
                shift = eff * (cond == "ported") + rng.normal(0, 0.1)
                preds.append(pd.DataFrame({"run_id": rid, "example_id": np.arange(300),
                                           "correct": ex + shift + rng.normal(0, 1, 300) > 0}))
    df = pd.DataFrame(rows)
    p = stats.Predictions.from_frame(pd.concat(preds))
    out = intervals.compare(df, p, [("ported", "scratch")], ["technique", "regime"])
    assert list(out["technique"]) == ["ia3", "lora"] and (out["method"] == "two-level t").all()
    assert out["p_floor"].isna().all() and (out["seed_df"] == 2).all() and (out["n"] == 3).all()
    np.testing.assert_allclose(out["p_holm"], stats.holm(out["p"]))
    lora = out[out["technique"] == "lora"].iloc[0]
    assert lora["ci_low"] > 0 and lora["p_holm"] < 0.05 and lora["mean_diff"] > 0.2
    units = [("a->b|rt", s, "rt", *p.paired_ids(f"lora{s}ported", f"lora{s}scratch")) for s in range(3)]
    assert lora["ci_high"] == pytest.approx(intervals.two_level(units)["ci_high"])


@pytest.mark.parametrize("kind", ["shared", "t3", "collapsed"])
def test_coverage_simulation_truth_matches_its_sweeps(kind):
    s = coverage.SETTINGS["seed"]
    cell = coverage.Cell(4, 5, kind)
    ya, yb = coverage.sweeps(s, cell, 800, rng=1)
    assert ya.mean() - yb.mean() == pytest.approx(s.truth(4, kind, 5), abs=0.004)  # Monte-Carlo SE about 0.0013


def test_coverage_cells_share_seeds_and_examples_as_declared():
    """Two directions of one dataset see the same example difficulty; a fully shared seed moves every stratum."""
    ex = coverage.Setting("x", 0.5, 0.5, example_sd=3.0, interaction_sd=0.0, seed_sd=0.01)
    ya, _ = coverage.sweeps(ex, coverage.Cell(4, 3, "shared"), 40, rng=2)
    same_set = np.corrcoef(ya[:, :, 0].ravel(), ya[:, :, 1].ravel())[0, 1]
    other_set = np.corrcoef(ya[:, :, 0].ravel(), ya[:, :, 2].ravel())[0, 1]
    assert same_set > 0.4 and abs(other_set) < 0.1  # examples shared within a dataset only
    s = coverage.Setting("x", 0.5, 0.5, example_sd=0.5, interaction_sd=0.0, seed_sd=2.0)
    ya, _ = coverage.sweeps(s, coverage.Cell(4, 3, "shared"), 40, rng=2)
    acc = ya.mean(-1)  # reps x seeds x strata
    assert np.corrcoef(acc[:, :, 0].ravel(), acc[:, :, 3].ravel())[0, 1] > 0.8  # the seed moves all strata
    ya, _ = coverage.sweeps(s, coverage.Cell(4, 3, "independent"), 40, rng=2)
    acc = ya.mean(-1)
    assert abs(np.corrcoef(acc[:, :, 0].ravel(), acc[:, :, 3].ravel())[0, 1]) < 0.3


def test_shape_miss_reads_the_coverage_cells(tmp_path, monkeypatch):
    f = tmp_path / "cells.json"
    f.write_text(json.dumps({"band": [0.93, 0.97], "cells": [
        {"strata": 4, "seeds": 3, "kind": "t3", "coverage": 0.91},
        {"strata": 4, "seeds": 5, "kind": "collapsed", "coverage": 0.90},
        {"strata": 2, "seeds": 3, "kind": "shared", "coverage": 0.95}]}))
    monkeypatch.setattr(intervals, "CELLS_FILE", f)
    intervals.missed_cells.cache_clear()
    try:
        assert intervals.shape_miss(4, 3) and intervals.shape_miss(12, 4)  # 12 directions x datasets: judged as 4
        assert not intervals.shape_miss(2, 3) and not intervals.shape_miss(4, 1)
        assert not intervals.shape_miss(4, 5) and intervals.collapse_coverage(4, 7) == 0.90  # quoted, not marked
    finally:
        intervals.missed_cells.cache_clear()


def test_the_shipped_coverage_cells_cover_every_simulated_shape():
    data = json.loads(intervals.CELLS_FILE.read_text())
    have = {(c["strata"], c["seeds"], c["kind"]) for c in data["cells"]}
    assert {(c.strata, c.seeds, c.kind) for c in coverage.CELLS} <= have


@pytest.mark.slow
def test_coverage_with_shared_seeds_and_the_pooled_interval_under_covers():
    """Four strata sharing 3 seeds: the seed-clustered interval covers 0.93-0.97 (here within Monte-Carlo error:
    1,000 sweeps, SE ~0.007); the interval it replaced, pooling strata as independent replicates, covers far less."""
    from benches.bench_coverage import before

    s = coverage.SETTINGS["seed"]
    for cell in (coverage.Cell(4, 3, "shared"), coverage.Cell(2, 5, "t3")):
        r = coverage.coverage(s, cell, 1000, seed=11)
        assert 0.92 <= r["coverage"] <= 0.98 and r["no_interval"] == 0, r
    old = coverage.coverage(s, coverage.Cell(4, 3, "shared"), 300, method=before, seed=11)
    assert old["coverage"] < 0.85, old


def test_calibration_recovers_a_known_setting():
    """Moments measured on sweeps of a known probit setting lead `calibrate` back to its standard deviations."""
    true = coverage.Setting("t", 1.2, 0.6, example_sd=1.5, interaction_sd=0.8, seed_sd=0.2)
    cell = coverage.Cell(1, 3, "shared")
    ya, yb = coverage.sweeps(true, cell, 120, rng=4)
    ms = [coverage.moments(ya[r, :, 0], yb[r, :, 0]) for r in range(len(ya))]
    target = {k: float(np.mean([m[k] for m in ms])) for k in coverage.MOMENTS}
    fit = coverage.calibrate(target, seeds=3, rng=9)
    assert fit.example_sd == pytest.approx(1.5, rel=0.15)
    assert fit.interaction_sd == pytest.approx(0.8, rel=0.2)
    assert fit.seed_sd == pytest.approx(0.2, rel=0.35)
    assert fit.truth() == pytest.approx(true.truth(), abs=0.01)
