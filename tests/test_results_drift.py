"""The host ladder's report: retention joined with each receiving host's recorded distance, per family, and the
Holm-adjusted technique tests on per-example predictions (synthetic sweeps)."""

import numpy as np
import pandas as pd
import pytest

from pipeline.results import stats
from pipeline.results.document import Doc
from pipeline.results.drift import drift_section, drift_table, fig_drift, host_ladder, sign_flip_test, technique_tests

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
            "far": info("task", 0.6, 0.05),
            "perm": info("coordinate", 1.0, 0.9, kinds=["heads"], fraction=1.0),
            "unmeasured": {"build_info": None}}


def _sweep(floor="no-module"):
    """Two techniques ported from `origin` to every host, one seed; on `perm` LoRA falls to the floor while the
    bottleneck keeps its origin predictions; on `far` both lose a little; on `same` nothing changes."""
    rng = np.random.default_rng(0)
    bare = rng.random(N) < 0.6  # the bare host's correctness
    origin = {t: rng.random(N) < 0.8 for t in TECHS}
    runs, preds = [], []

    def add(run_id, stage, tech, recv, cond, correct, origin_run=None):
        runs.append({"run_id": run_id, "stage": stage, "state": "done", "technique": tech, "dataset": "rt",
                     "host_pair": "origin" if stage == 1 else f"origin->{recv}", "condition": cond,
                     "regime": None if stage == 1 else 0, "seed": 0, "origin_run": origin_run,
                     "accuracy": float(correct.mean())})
        preds.append(pd.DataFrame({"run_id": run_id, "example_id": np.arange(N), "correct": correct}))

    for t in TECHS:
        add(f"s1-{t}", 1, t, None, None, origin[t])
        for recv in ("same", "nat", "far", "perm", "unmeasured"):
            if recv == "perm" and t == "lora":
                ported = bare
            elif recv in ("far", "nat"):
                flip = rng.random(N) < (0.15 if recv == "far" else 0.02)
                ported = np.where(flip, bare, origin[t])
            else:
                ported = origin[t]
            add(f"p-{t}-{recv}", 2, t, recv, "ported", ported, f"s1-{t}")
            add(f"n-{t}-{recv}", 2, t, recv, floor, bare, f"s1-{t}")
    runs = pd.DataFrame(runs)
    runs["regime"] = pd.array(runs["regime"], dtype="Int64")
    return runs, stats.Predictions.from_frame(pd.concat(preds, ignore_index=True))


def test_host_ladder_reads_families_and_marks_the_identical_host():
    lad = host_ladder(_hosts()).set_index("host")
    assert set(lad.index) == {"same", "nat", "far", "perm"}  # hosts without a distance are left out
    assert lad.loc["same", "family"] == "identical" and lad.loc["nat", "family"] == "natural"
    assert lad.loc["perm", "kinds"] == "heads" and lad.loc["perm", "fraction"] == 1.0
    assert host_ladder(None).empty


@pytest.mark.parametrize("floor", ["no-module", "head-only"])
def test_drift_table_pairs_retention_with_distance(tmp_path, floor):
    runs, _ = _sweep(floor)
    t = drift_table(runs, _hosts())
    assert set(t["receiving_host"]) == {"same", "nat", "far", "perm"}
    assert set(t["condition"]) == {"ported", floor}
    r = t.set_index(["technique", "receiving_host", "condition"])
    assert r.loc[("lora", "same", "ported"), "retention_mean"] == pytest.approx(1.0)
    assert r.loc[("bottleneck", "perm", "ported"), "retention_mean"] == pytest.approx(1.0)
    lora_perm = r.loc[("lora", "perm", "ported"), "retention_mean"]
    assert lora_perm == pytest.approx(r.loc[("lora", "perm", floor), "retention_mean"]) and lora_perm < 0.85
    assert r.loc[("lora", "far", "ported"), "family"] == "task"
    assert fig_drift(t, tmp_path / "drift.png").stat().st_size > 1000


def test_no_figure_with_fewer_than_two_measured_hosts(tmp_path):
    runs, _ = _sweep()
    t = drift_table(runs[runs["host_pair"].isin(["origin", "origin->same"])], _hosts())
    assert len(t) == 4 and fig_drift(t, tmp_path / "drift.png") is None
    assert drift_table(runs, None).empty


def test_technique_tests_find_the_technique_that_breaks_and_holm_adjust_per_host():
    runs, preds = _sweep()
    t = technique_tests(runs, preds, _hosts(), n_perm=2000)
    assert set(t["receiving_host"]) == {"same", "nat", "far", "perm"} and (t["a"] == "bottleneck").all()
    r = t.set_index("receiving_host")
    same, perm = r.loc["same"], r.loc["perm"]
    assert same["diff"] == 0 and same["p"] == 1 and same["n_examples"] == N
    # on the permuted host LoRA (b) loses its whole gain over the bare host, the bottleneck (a) nothing
    assert perm["loss_a"] == 0 and perm["loss_b"] > 0.1 and perm["diff"] < -0.1
    assert perm["p"] == perm["p_floor"] == pytest.approx(1 / 2001) and perm["p_holm"] <= 1 / 2001 + 1e-12
    assert perm["ci_high"] < 0 and perm["p_mcnemar_ported"] < 1e-6
    assert technique_tests(runs, None, _hosts()).empty


def test_holm_adjusts_over_the_pairs_of_one_host():
    runs, preds = _sweep()
    runs3 = pd.concat([runs, runs[runs["technique"] == "lora"].assign(
        technique="prefix", run_id=lambda f: f["run_id"] + "x", origin_run=lambda f: f["origin_run"] + "x")])
    extra = stats.Predictions({**preds.by_run, **{k + "x": v for k, v in preds.by_run.items() if "lora" in k}})
    t = technique_tests(runs3, extra, _hosts(), n_perm=500)
    g = t[t["receiving_host"] == "far"]
    assert len(g) == 3 and np.allclose(g["p_holm"], stats.holm(g["p"].tolist()))


def test_sign_flip_test_is_calibrated_and_exact_at_zero():
    assert sign_flip_test(np.zeros(50))["p"] == 1.0
    rng = np.random.default_rng(1)
    ps = [sign_flip_test(rng.choice([-1, 0, 1], 300), n_perm=500, seed=i)["p"] for i in range(200)]
    assert 0.02 < np.mean(np.array(ps) < 0.05) < 0.09  # about 5 % false positives under the null
    assert np.isnan(sign_flip_test([])["p"])


def test_drift_section_names_hosts_floor_and_tests():
    runs, preds = _sweep()
    hosts = _hosts()
    doc = Doc()
    drift_section(doc, drift_table(runs, hosts), technique_tests(runs, preds, hosts, n_perm=200), hosts)
    md = doc.markdown()
    assert "Host ladder" in md and "coordinate" in md and "no-module level" in md and "< 0.0050" in md
