"""The host ladder's report: retention joined with each receiving host's recorded distance, per family, retention
above the floor with its Fieller interval, and the technique tests (two-level interval, Holm per claim) on
per-example predictions (synthetic sweeps with known answers)."""

import numpy as np
import pandas as pd
import pytest

from pipeline.results import stats
from pipeline.results.document import Doc
from pipeline.results.drift import drift_section, drift_table, fig_drift, host_ladder, technique_tests
from pipeline.results.floor import UNIT_EXAMPLES, UNIT_RUNS, above_floor

N = 400
TECHS = ("bottleneck", "lora")


def _hosts():
    def info(family, cka, change, **kw):
        return {"build_info": {"family": family, **kw, "seconds": 60.0, "distance": {
            "linear_cka": cka, "mean_pooled_cosine": cka, "relative_weight_change": change,
            "probe_accuracy_base": 0.7, "probe_accuracy_host": 0.7}}}
    return {"origin": {"build_info": None},
            "same": {"build_info": {"recipe": "simcse-v1", "steps": 0, "distance": {  # the identical host, no family
                "linear_cka": 1.0, "mean_pooled_cosine": 1.0, "relative_weight_change": 0.0}}},
            "nat": info("natural", 0.9, 0.01),
            "nat2": info("natural", 0.8, 0.02),
            "far": info("task", 0.6, 0.05, recipe="tweetsent-v1"),
            "perm": info("coordinate", 1.0, 0.9, kinds=["heads"], fraction=1.0),
            "unmeasured": {"build_info": None}}


def _sweep(floor="no-module", seeds=(0,)):
    """Two techniques ported from `origin` to every host, per seed; on `perm` LoRA falls to the floor while the
    bottleneck keeps its origin predictions; on `far` both lose a little, on `nat` / `nat2` less (LoRA more than the
    bottleneck on `nat2`); on `same` nothing changes."""
    rng = np.random.default_rng(0)
    bare = rng.random(N) < 0.6  # the bare host's correctness (the same for every seed: a deterministic host)
    runs, preds = [], []

    def add(run_id, stage, tech, recv, cond, correct, seed, origin_run=None):
        runs.append({"run_id": run_id, "stage": stage, "state": "done", "technique": tech, "dataset": "rt",
                     "host_pair": "origin" if stage == 1 else f"origin->{recv}", "condition": cond,
                     "regime": None if stage == 1 else 0, "seed": seed, "origin_run": origin_run,
                     "accuracy": float(correct.mean())})
        preds.append(pd.DataFrame({"run_id": run_id, "example_id": np.arange(N), "correct": correct}))

    for seed in seeds:
        origin = {t: rng.random(N) < 0.8 for t in TECHS}
        for t in TECHS:
            add(f"s1-{t}-{seed}", 1, t, None, None, origin[t], seed)
            for recv in ("same", "nat", "nat2", "far", "perm", "unmeasured"):
                if recv == "perm" and t == "lora":
                    ported = bare
                elif recv in ("far", "nat", "nat2"):
                    share = {"far": 0.15, "nat": 0.02, "nat2": 0.2 if t == "lora" else 0.05}[recv]
                    ported = np.where(rng.random(N) < share, bare, origin[t])
                else:
                    ported = origin[t]
                add(f"p-{t}-{recv}-{seed}", 2, t, recv, "ported", ported, seed, f"s1-{t}-{seed}")
                add(f"n-{t}-{recv}-{seed}", 2, t, recv, floor, bare, seed, f"s1-{t}-{seed}")
    runs = pd.DataFrame(runs)
    runs["regime"] = pd.array(runs["regime"], dtype="Int64")
    return runs, stats.Predictions.from_frame(pd.concat(preds, ignore_index=True))


def test_host_ladder_reads_families_and_marks_the_identical_host():
    lad = host_ladder(_hosts()).set_index("host")
    assert set(lad.index) == {"same", "nat", "nat2", "far", "perm"}  # hosts without a distance are left out
    assert lad.loc["same", "family"] == "identical" and lad.loc["nat", "family"] == "natural"
    assert lad.loc["perm", "kinds"] == "heads" and lad.loc["perm", "fraction"] == 1.0
    assert lad.loc["far", "task_direction"] == "toward" and pd.isna(lad.loc["nat", "task_direction"])  # by recipe
    hosts = _hosts()
    hosts["far"]["build_info"]["task_direction"] = "away"  # recorded: wins over the recipe
    assert host_ladder(hosts).set_index("host").loc["far", "task_direction"] == "away"
    assert host_ladder(None).empty


@pytest.mark.parametrize("floor", ["no-module", "head-only"])
def test_drift_table_pairs_retention_with_distance(tmp_path, floor):
    runs, preds = _sweep(floor, seeds=(0, 1, 2))
    t = drift_table(runs, _hosts(), preds)
    assert set(t["receiving_host"]) == {"same", "nat", "nat2", "far", "perm"}
    assert set(t["condition"]) == {"ported", floor}
    r = t.set_index(["technique", "receiving_host", "condition"])
    assert r.loc[("lora", "same", "ported"), "retention_mean"] == pytest.approx(1.0)
    assert r.loc[("bottleneck", "perm", "ported"), "retention_mean"] == pytest.approx(1.0)
    lora_perm = r.loc[("lora", "perm", "ported"), "retention_mean"]
    assert lora_perm == pytest.approx(r.loc[("lora", "perm", floor), "retention_mean"]) and lora_perm < 0.85
    assert r.loc[("lora", "far", "ported"), "family"] == "task"
    # above the floor: all kept where the module is bit-exact (an exact [1, 1]), none where it fell to the floor
    same, perm = r.loc[("lora", "same", "ported")], r.loc[("lora", "perm", "ported")]
    assert (same["above_floor"], same["above_floor_low"], same["above_floor_high"]) == (1.0, 1.0, 1.0)
    assert perm["above_floor"] == 0.0 and perm["above_floor_low"] == perm["above_floor_high"] == 0.0
    far = r.loc[("bottleneck", "far", "ported")]  # 15 % of the predictions replaced by the floor's: about 0.85 kept
    assert far["above_floor_low"] < far["above_floor"] < far["above_floor_high"]
    assert far["above_floor_low"] < 0.85 < far["above_floor_high"] and far["above_floor_unit"] == UNIT_EXAMPLES
    assert r.xs(floor, level="condition")["above_floor"].isna().all()  # only the ported rows carry it
    assert fig_drift(t, tmp_path / "drift.png").stat().st_size > 1000


def test_above_floor_without_predictions_or_with_one_seed():
    runs, preds = _sweep(seeds=(0, 1, 2))
    r = drift_table(runs, _hosts()).set_index(["technique", "receiving_host", "condition"])  # run accuracies only
    far = r.loc[("bottleneck", "far", "ported")]
    assert far["above_floor_unit"] == UNIT_RUNS and far["above_floor_low"] < far["above_floor"] < far["above_floor_high"]
    runs1, preds1 = _sweep()
    r1 = drift_table(runs1, _hosts(), preds1).set_index(["technique", "receiving_host", "condition"])
    one = r1.loc[("bottleneck", "far", "ported")]
    assert 0 < one["above_floor"] < 1 and np.isnan(one["above_floor_low"]) and "one seed" in one["above_floor_why"]


def test_above_floor_is_fieller_on_per_seed_values():
    """One number per run (no example part): the classic Fieller interval, t(seeds - 1), computed by hand."""
    from scipy.stats import t as student

    x, y, f = np.array([0.10, 0.14, 0.08]), np.array([0.20, 0.22, 0.17]), 0.6  # ported - floor, origin - floor
    units = [("rt", s, "rt", np.zeros(1), [f + x[s]], [f], [f + y[s]]) for s in range(3)]
    got = above_floor(units)
    n, q, cov = 3, student.ppf(0.975, 2), np.cov(x, y)
    a = y.mean() ** 2 - q ** 2 * cov[1, 1] / n
    b = -2 * (x.mean() * y.mean() - q ** 2 * cov[0, 1] / n)
    c = x.mean() ** 2 - q ** 2 * cov[0, 0] / n
    lo, hi = sorted(np.roots([a, b, c]).real)
    assert got["above_floor"] == pytest.approx(x.mean() / y.mean())
    assert got["above_floor_low"] == pytest.approx(lo, abs=1e-6) and got["above_floor_high"] == pytest.approx(hi, abs=1e-6)
    assert lo < x.mean() / y.mean() - 0.3 < 0.3 + x.mean() / y.mean() < hi + 0.2  # not a symmetric delta interval
    noisy = [("rt", s, "rt", np.zeros(1), [f + xs], [f], [f + ys]) for s, (xs, ys) in
             enumerate([(0.05, 0.10), (0.02, -0.05), (0.04, 0.06)])]  # margin not distinguishable from 0
    got = above_floor(noisy)
    assert got["above_floor"] > 0 and np.isnan(got["above_floor_low"]) and "unbounded" in got["above_floor_why"]
    below = [("rt", s, "rt", np.zeros(1), [0.6], [0.7], [0.65]) for s in range(3)]
    got = above_floor(below)
    assert np.isnan(got["above_floor"]) and "origin not above the floor" in got["above_floor_why"]
    assert "no matched runs" in above_floor([])["above_floor_why"]


def test_above_floor_covers_a_known_share_kept():
    """Examples drawn anew, a seed effect on the origin and on what is kept: the true share is R = 0.6, since each
    ported prediction is the origin's with probability R (per seed around R) and else the floor's."""
    rng = np.random.default_rng(1)
    hits = total = 0
    for _ in range(150):
        q = rng.beta(4, 1.5, 300)
        fl = rng.random(300) < 0.6 * q
        units = []
        for s in range(3):
            o = rng.random(300) < np.clip(q + rng.normal(0, 0.02), 0, 1)
            keep = rng.random(300) < 0.6 + rng.normal(0, 0.1)
            units.append(("rt", s, "rt", np.arange(300), np.where(keep, o, fl), fl, o))
        got = above_floor(units)
        if not np.isnan(got["above_floor_low"]):
            total += 1
            hits += got["above_floor_low"] <= 0.6 <= got["above_floor_high"]
    assert total > 140 and 0.88 < hits / total <= 1.0


def test_no_figure_with_fewer_than_two_measured_hosts(tmp_path):
    runs, _ = _sweep()
    t = drift_table(runs[runs["host_pair"].isin(["origin", "origin->same"])], _hosts())
    assert len(t) == 4 and fig_drift(t, tmp_path / "drift.png") is None
    assert drift_table(runs, None).empty


def test_technique_tests_use_seeds_and_examples_and_find_the_technique_that_breaks():
    runs, preds = _sweep(seeds=(0, 1, 2))
    t = technique_tests(runs, preds, _hosts())
    assert set(t["receiving_host"]) == {"same", "nat", "nat2", "far", "perm"} and (t["a"] == "bottleneck").all()
    r = t.set_index("receiving_host")
    same, perm = r.loc["same"], r.loc["perm"]
    assert same["diff"] == 0 and same["no_variation"] and np.isnan(same["p"]) and same["n_examples"] == N
    # on the permuted host LoRA (b) loses its whole gain over the bare host, the bottleneck (a) nothing
    assert perm["loss_a"] == 0 and perm["loss_b"] > 0.1 and perm["diff"] < -0.1
    assert perm["n_seeds"] == 3 and perm["seed_df"] == 2 and perm["ci_high"] < 0 and perm["p"] < 0.05
    assert perm["unit"] == UNIT_EXAMPLES and perm["seed_var"] > 0 and perm["example_var"] > 0
    # the same test by hand: intervals.two_level on the run pairs (technique a, technique b at one seed)
    from pipeline.results.intervals import two_level

    units = []
    for s in (0, 1, 2):
        ids, o_a, p_a = np.arange(N), preds.by_run[f"s1-bottleneck-{s}"][1], preds.by_run[f"p-bottleneck-perm-{s}"][1]
        o_b, p_b = preds.by_run[f"s1-lora-{s}"][1], preds.by_run[f"p-lora-perm-{s}"][1]
        units.append((("perm", "rt"), s, "rt", ids, o_a.astype(float) - p_a, o_b.astype(float) - p_b))
    ref = two_level(units)
    assert (perm["diff"], perm["ci_low"], perm["ci_high"], perm["p"]) == pytest.approx(
        (ref["mean_diff"], ref["ci_low"], ref["ci_high"], ref["p"]))


def test_technique_tests_with_one_seed_give_no_interval_and_without_predictions_use_run_accuracies():
    runs, preds = _sweep()
    t = technique_tests(runs, preds, _hosts()).set_index("receiving_host")
    assert t.loc["perm", "diff"] < -0.1 and np.isnan(t.loc["perm", "ci_low"]) and np.isnan(t.loc["perm", "p"])
    runs3, _ = _sweep(seeds=(0, 1, 2))
    r = technique_tests(runs3, None, _hosts()).set_index("receiving_host")
    assert (r["unit"] == UNIT_RUNS).all() and (r["n_examples"] == 0).all()
    assert r.loc["perm", "ci_high"] < 0 and r.loc["perm", "seed_df"] == 2


def test_holm_runs_per_claim_across_the_family_hosts_not_per_host():
    runs, preds = _sweep(seeds=(0, 1, 2))
    runs3 = pd.concat([runs, runs[runs["technique"] == "lora"].assign(
        technique="prefix", run_id=lambda f: f["run_id"] + "x", origin_run=lambda f: f["origin_run"] + "x")])
    extra = stats.Predictions({**preds.by_run, **{k + "x": v for k, v in preds.by_run.items() if "lora" in k}})
    t = technique_tests(runs3, extra, _hosts())
    nat = t[(t["family"] == "natural") & (t["a"] == "bottleneck") & (t["b"] == "lora")]
    assert list(nat["receiving_host"]) == ["nat", "nat2"] and (nat["holm_family_size"] == 2).all()
    assert np.allclose(nat["p_holm"], stats.holm(nat["p"].tolist()))  # one family across the two natural hosts
    assert nat["p_holm"].min() > nat["p"].min()
    assert nat["claim"].nunique() == 1 and "under natural drift" in nat["claim"].iloc[0]
    far = t[t["receiving_host"] == "far"]
    assert len(far) == 3 and far["claim"].nunique() == 3  # three claims on one host: not one family
    tested = far[far["p"].notna()]  # lora vs prefix (a copy of lora): no variation, no p, not in any family
    assert len(tested) == 2 and (tested["holm_family_size"] == 1).all() and np.allclose(tested["p_holm"], tested["p"])
    assert far[far["p"].isna()]["no_variation"].all() and (far[far["p"].isna()]["holm_family_size"] == 0).all()


def test_drift_section_names_hosts_floor_and_tests():
    runs, preds = _sweep(seeds=(0, 1, 2))
    hosts = _hosts()
    doc = Doc()
    drift_section(doc, drift_table(runs, hosts, preds), technique_tests(runs, preds, hosts), hosts)
    md = doc.markdown()
    assert "Host ladder" in md and "coordinate" in md and "no-module level" in md and "task (toward)" in md
    assert "Retention above the floor" in md and "Fieller" in md and "1.000 [1.000, 1.000]" in md
    assert "Holm runs per **claim**" in md and "natural, 2 host(s)" in md and "seeds and eval examples" in md
