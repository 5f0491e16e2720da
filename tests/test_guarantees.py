"""Guarantees docs/architecture.md makes, each with a test that fails when the guarantee breaks.

Each test names the deliberate bug it was checked against (the mutation was applied, the test failed, the
code was restored); ``make mutate`` (benches/mutate.py) repeats such checks mechanically.

* a run is done only when its shard exists *and validates* (a torn shard, a shard naming another run);
* a dataset with its own evaluation split never leaks an evaluation text into training;
* a rewritten predictions file wins in ``predictions.parquet``;
* ``resume`` submits exactly the runs that ended without a result or were held back, never a done or
  queued one (a fake Slurm: no cluster needed);
* the hierarchical bootstrap is paired: on strongly correlated pairs its interval is as narrow as the
  paired differences say, far narrower than resampling a and b independently would make it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import spec as S
from pipeline.launch import queue, slurm
from pipeline.launch import status as st
from pipeline.results import merge, shards
from pipeline.sweep import Sweep
from tests.test_status import _fake_sweep


def _spec(root: Path, **kw) -> S.Spec:
    d = {"name": "t", "output_dir": str(root), "models_dir": str(root / "models"),
         "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
         "host_pairs": [["a", "b"]], "datasets": [{"name": "d", "source": "x.csv", "eval_size": 100}],
         "techniques": ["lora"], "conditions": ["ported"], "regimes": ["zero-shot"], "seeds": [0],
         "resources": {"stage1": {"pack_size": 1}, "stage2": {"pack_size": 1}}}
    d.update(kw)
    return S.parse(d)


def _write_spec(sweep: Sweep) -> S.Spec:
    spec = _spec(sweep.root)
    (sweep.root / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    return spec


def _row(rid: str, stage: int = 2) -> dict:
    return {"run_id": rid, "stage": stage, "technique": "lora", "seed": 0, "accuracy": 0.5, "macro_f1": 0.4}


def _module(sweep: Sweep, rid: str) -> None:
    """A stage-1 module whose file passes its checksum (what status and the job function check)."""
    import torch

    from pipeline.run import port

    port.save_module({"lora_A.weight": torch.ones(2, 2)}, sweep.module(rid), {"run_id": rid})


# ---------------------------------------------------------------- done means a valid shard
A0, A1 = "a00000000000", "a00000000001"
B0, B1, B2 = "b00000000000", "b00000000001", "b00000000002"


def _sweep_with_bad_shards(root: Path) -> Sweep:
    """a0, b0: done (valid shard, a0's module). a1: module fine, shard names a0. b1: torn shard. b2: shard
    naming b0 (a copy)."""
    sweep = _fake_sweep(root, 2, 3)
    _write_spec(sweep)
    for rid in (A0, A1):
        _module(sweep, rid)
    shards.write(sweep.shard(A0), _row(A0, 1))
    shards.write(sweep.shard(A1), _row(A0, 1))
    shards.write(sweep.shard(B0), _row(B0))
    sweep.shard(B1).write_bytes(b"PAR1\x00\x01torn")
    shards.write(sweep.shard(B2), _row(B0))
    return sweep


def test_a_torn_shard_or_one_naming_another_run_is_not_done(tmp_path):
    """Kills: is_done == shard file exists; read() not checking the run id or the row count."""
    sweep = _sweep_with_bad_shards(tmp_path / "s")
    assert shards.is_done(sweep.root, A0) and shards.is_done(sweep.root, B0)
    assert not shards.is_done(sweep.root, A1)
    assert not shards.is_done(sweep.root, B1)
    assert not shards.is_done(sweep.root, B2)
    assert not shards.is_done(sweep.root, "b00000000009")  # no shard at all
    two = sweep.shards / "two.parquet"  # two rows, the first naming the file: not a shard
    pq.write_table(pa.Table.from_pylist([_row("two"), _row("two")]), two)
    with pytest.raises(shards.ShardError, match="2 rows"):
        shards.read(two)
    lacking = sweep.shards / "lacking.parquet"
    pq.write_table(pa.table({"run_id": ["lacking"], "stage": [2]}), lacking)
    with pytest.raises(shards.ShardError, match="lacks columns"):
        shards.read(lacking)


def test_runs_with_bad_shards_are_pending_and_rerun(tmp_path, monkeypatch):
    """Kills: pending()/is_complete() trusting a shard file's existence; the job function skipping them."""
    from pipeline.launch import local
    from pipeline.run import job, runner

    sweep = _sweep_with_bad_shards(tmp_path / "s")
    assert local.pending(sweep, 1) == [A1]
    assert local.pending(sweep, 2) == [B1, B2]
    ran = []

    def execute(row, sw, hosts, stop_requested=None):
        ran.append(row["run_id"])
        shards.write(sw.shard(row["run_id"]), _row(row["run_id"], row["stage"]))

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "quiet", lambda: None)
    out = job.RunPack(str(sweep.root), [A0, A1])()
    assert ran == [A1] and out["skipped"] == [A0] and out["done"] == [A1]
    out = job.RunPack(str(sweep.root), [B0, B1, B2])()
    assert ran == [A1, B1, B2] and out["skipped"] == [B0]
    assert local.pending(Sweep(sweep.root), 1) == [] and local.pending(Sweep(sweep.root), 2) == []
    assert all(shards.is_done(sweep.root, r) for r in (A0, A1, B0, B1, B2))


def test_status_verify_names_the_runs_whose_shard_fails_validation(tmp_path, capsys):
    """Kills: verify_done trusting the listing; `status --verify` exiting 0 with bad shards."""
    from pipeline import cli

    sweep = _sweep_with_bad_shards(tmp_path / "s")
    assert st.verify_done(st.snapshot(sweep, slurm=False)) == [A1, B1, B2]
    assert cli.main(["status", str(sweep.root), "--verify"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("verify:"))
    assert "3 done run(s) fail validation" in line
    assert A1 in line and B1 in line and B2 in line and A0 not in line and B0 not in line
    for rid in (A1, B1, B2):  # rewritten properly: verify passes
        shards.write(sweep.shard(rid), _row(rid, 1 if rid == A1 else 2))
    assert cli.main(["status", str(sweep.root), "--verify"]) == 0
    assert "verify: 0 done run(s) fail validation" in capsys.readouterr().out


# ---------------------------------------------------------------- a separate evaluation split
def test_a_local_dataset_with_its_own_validation_file_yields_disjoint_splits(tmp_path):
    """A folder of CSVs (train.csv, validation.csv) with eval_split: validation texts that are also in
    train -- exactly, in another case, with other spacing -- leave train.  Kills: the eval/train overlap
    filter dropped, or comparing raw texts instead of _key."""
    from pipeline.run import data
    from pipeline.spec import Dataset

    train = [("Good film", 1), ("bad one", 0), ("Meh", 0), ("Great", 1), ("Awful  movie", 0), ("Loved it", 1),
             ("Dull", 0), ("Fine work", 1), ("A mess", 0), ("Superb", 1)]
    valid = [("good FILM", 1), ("awful movie", 0), ("  A   mess ", 0), ("Superb", 1), ("brand new", 1), ("not seen", 0)]
    d = tmp_path / "ds"
    d.mkdir()
    pd.DataFrame(train, columns=["text", "label"]).to_csv(d / "train.csv", index=False)
    pd.DataFrame(valid, columns=["text", "label"]).to_csv(d / "validation.csv", index=False)
    tr, ev = data.load(Dataset(name="x", source=str(d), eval_split="validation", eval_size=50))
    key = data._key
    assert sorted(map(key, ev.texts)) == sorted(map(key, (t for t, _ in valid)))  # the validation file is the eval set
    assert not {key(t) for t in tr.texts} & {key(t) for t in ev.texts}
    assert sorted(tr.texts) == sorted(["bad one", "Meh", "Great", "Loved it", "Dull", "Fine work"])
    assert all(dict(train)[t] == y for t, y in zip(tr.texts, tr.labels))


# ---------------------------------------------------------------- rewritten predictions win
def _preds(rid: str, pred: list[int]) -> pd.DataFrame:
    n = len(pred)
    label = [i % 2 for i in range(n)]
    return pd.DataFrame({"run_id": rid, "example_id": np.arange(n, dtype=np.int32), "label": np.array(label, np.int16),
                         "pred": np.array(pred, np.int16), "correct": [p == y for p, y in zip(pred, label)],
                         "score": np.zeros(n, np.float32)})


def _bump_mtime(path: Path) -> None:
    s = os.stat(path)
    os.utime(path, ns=(s.st_atime_ns, s.st_mtime_ns + 10**9))


def test_a_rewritten_predictions_file_wins_after_merge(tmp_path):
    """Kills: _compose_preds taking the oldest part of a rewritten run (or both)."""
    root = tmp_path / "sweep"
    (root / "preds").mkdir(parents=True)
    for i in range(3):
        shards.write(root / "shards" / f"r{i}.parquet", _row(f"r{i}"))
        _preds(f"r{i}", [0] * 6).to_parquet(root / "preds" / f"r{i}.parquet")
    res = merge.merge(root, warn=lambda m: None)
    assert res.pred_runs == 3 and res.pred_rows == 18
    new = [1, 1, 1, 0, 0, 0]
    _preds("r1", new).to_parquet(root / "preds" / "r1.parquet")  # the run redone: new predictions
    _bump_mtime(root / "preds" / "r1.parquet")
    res = merge.merge(root, warn=lambda m: None)
    assert res.preds_read == 1 and res.pred_rows == 18
    t = pq.read_table(root / "predictions.parquet").to_pandas()
    assert len(t) == 18 and not t.duplicated(["run_id", "example_id"]).any()
    assert t[t["run_id"] == "r1"].sort_values("example_id")["pred"].tolist() == new
    assert t[t["run_id"] != "r1"]["pred"].tolist() == [0] * 12
    # and again, with the shard rewritten too (a rerun rewrites both): still the newest predictions
    shards.write(root / "shards" / "r1.parquet", _row("r1"))
    _bump_mtime(root / "shards" / "r1.parquet")
    newer = [0, 1, 0, 1, 0, 1]
    _preds("r1", newer).to_parquet(root / "preds" / "r1.parquet")
    _bump_mtime(root / "preds" / "r1.parquet")
    _bump_mtime(root / "preds" / "r1.parquet")
    merge.merge(root, warn=lambda m: None)
    t = pq.read_table(root / "predictions.parquet").to_pandas()
    assert len(t) == 18 and t[t["run_id"] == "r1"].sort_values("example_id")["pred"].tolist() == newer
    ds = pq.read_table(root / merge.STORE / "preds")  # the store holds one copy of each run's predictions
    assert ds.num_rows == 18


# ---------------------------------------------------------------- resume under a fake Slurm
class _Queue:
    """squeue, sacct and sbatch as far as snapshot and submit_pending use them."""

    def __init__(self, monkeypatch, sweep: Sweep, squeue: str, sacct: str):
        self.sweep, self.squeue, self.sacct = sweep, queue.parse_table(squeue), queue.parse_table(sacct)
        self.next_id, self.arrays = 100, []
        monkeypatch.setattr(queue, "have_slurm", lambda: True)
        monkeypatch.setattr(queue, "max_array_size", lambda: 1001)
        monkeypatch.setattr(queue, "submit_limit", lambda targets: None)
        monkeypatch.setattr(queue, "query_squeue", lambda ids: dict(self.squeue))
        monkeypatch.setattr(queue, "query_sacct", lambda ids: dict(self.sacct))
        monkeypatch.setattr(slurm, "ensure_hosts", lambda spec: None)
        monkeypatch.setattr(slurm, "_submit", self.submit)

    def submit(self, sweep, spec, a):
        for dep in a.depends:  # a dependency names a job that is in the queue
            assert any(k.split("_")[0] == dep for k in self.squeue), (dep, sorted(self.squeue))
        job = str(self.next_id)
        self.next_id += 1
        self.arrays.append(a)
        for i in range(len(a.tasks)):
            self.squeue[f"{job}_{i}"] = {"state": "PENDING", "name": f"t.s{a.stage}", "reason": "None"}
        rec = {"stage": a.stage, "job_id": job, "array": True, "name": f"t.s{a.stage}", "tasks": a.tasks,
               "depends": a.depends}
        with open(sweep.root / st.JOBS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    def submitted(self) -> list[str]:
        return [rid for a in self.arrays for t in a.tasks for rid in t]


def _b(i: int) -> str:
    return f"b{i:011d}"


def _a(i: int) -> str:
    return f"a{i:011d}"


def test_resume_submits_exactly_the_failed_timed_out_waiting_and_lost_runs(tmp_path, monkeypatch, capsys):
    """Through `pipeline resume` with a fake Slurm.  Kills: resume resubmitting done or queued runs, or
    skipping failed, timed-out, cancelled, waiting or never-submitted ones (RESUBMIT / classify / snapshot)."""
    from pipeline import cli

    sweep = _fake_sweep(tmp_path / "s", 4, 10)  # b_i needs a_(i % 4)
    _write_spec(sweep)
    recs = [{"stage": 1, "job_id": "10", "array": True, "name": "t.s1", "tasks": [[_a(i)] for i in range(4)]},
            {"stage": 2, "job_id": "11", "array": True, "name": "t.s2",
             "tasks": [[_b(0)], [_b(1)], [_b(2)], [_b(4)], [_b(5)], [_b(6)], [_b(8)], [_b(9)]]}]
    (sweep.root / st.JOBS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    for rid, stage in ((_a(0), 1), (_a(3), 1), (_b(0), 2), (_b(8), 2)):
        shards.write(sweep.shard(rid), _row(rid, stage))
        if stage == 1:
            _module(sweep, rid)
    (sweep.root / "errors").mkdir()
    sweep.error(_b(1)).write_text("RuntimeError: boom\n")
    (sweep.root / st.WAITING_FILE).write_text(json.dumps({"runs": [_b(3)], "reason": "MaxSubmitJobs", "time": "t"}))
    fake = _Queue(monkeypatch, sweep,
                  squeue="11_3|PENDING|t.s2|Priority\n11_4|RUNNING|t.s2|None\n",
                  sacct=("10_0|COMPLETED|t.s1\n10_1|FAILED|t.s1\n10_2|TIMEOUT|t.s1\n10_3|COMPLETED|t.s1\n"
                         "11_0|COMPLETED|t.s2\n11_1|FAILED|t.s2\n11_2|TIMEOUT|t.s2\n11_5|CANCELLED by 0|t.s2\n"
                         "11_6|OUT_OF_MEMORY|t.s2\n11_7|RUNNING|t.s2\n"))  # 11_7: gone from the queue, sacct lags
    monkeypatch.setattr(cli, "_fetch", lambda *a, **k: {"hosts": [], "datasets": []})
    want_state = {_a(0): "done", _a(1): "failed", _a(2): "timeout", _a(3): "done",
                  _b(0): "done", _b(1): "failed", _b(2): "timeout", _b(3): "waiting", _b(4): "pending",
                  _b(5): "running", _b(6): "cancelled", _b(7): "missing", _b(8): "done", _b(9): "missing"}
    assert st.snapshot(sweep, slurm=True).state == want_state
    assert cli.main(["resume", str(sweep.root)]) == 0
    sub = fake.submitted()
    redo = sorted(r for r, s in want_state.items() if s in ("failed", "timeout", "cancelled", "missing", "waiting"))
    assert sorted(sub) == redo and len(sub) == len(set(sub))
    assert not {r for r, s in want_state.items() if s in ("done", "pending", "running")} & set(sub)
    # stage-2 runs whose stage-1 run is redone wait for its new array; the others start at once
    s1 = [a for a in fake.arrays if a.stage == 1]
    assert len(s1) == 1 and sorted(s1[0].run_ids()) == [_a(1), _a(2)]
    dep = {rid: a.depends for a in fake.arrays if a.stage == 2 for rid in a.run_ids()}
    assert dep[_b(1)] == dep[_b(2)] == dep[_b(6)] == ["100"]
    assert dep[_b(3)] == dep[_b(7)] == []
    assert not (sweep.root / st.WAITING_FILE).exists()
    # everything is queued now: a second resume submits nothing
    n = len(fake.arrays)
    assert cli.main(["resume", str(sweep.root)]) == 0
    assert len(fake.arrays) == n and "nothing to submit" in capsys.readouterr().out


# ---------------------------------------------------------------- the bootstrap is paired
def _correlated_pairs(seed: int = 7, units: int = 24, m: int = 400):
    """Run pairs over the same examples: units of very different difficulty, b = a with 3 % of its answers
    flipped (2 of 3 flips a loss for b): a and b agree on 97 % of the examples."""
    rng = np.random.default_rng(seed)
    pairs = []
    for p in np.linspace(0.55, 0.92, units):
        a = (rng.random(m) < p).astype(float)
        flip = rng.random(m) < 0.03
        b = a.copy()
        b[flip & (a == 1)] = 0
        b[flip & (a == 0) & (rng.random(m) < 0.5)] = 1
        pairs.append((a, b))
    return pairs


def _normal_width(units: list[np.ndarray], z: float = 1.959964) -> float:
    """Width of the normal interval of a two-level bootstrap of the mean over units of each unit's mean:
    between-unit variance of the means plus the mean within-unit variance of a mean, over the units."""
    n = len(units)
    means = np.array([u.mean() for u in units])
    var = (means.var() + np.mean([u.var() / len(u) for u in units])) / n
    return 2 * z * math.sqrt(var)


def test_bootstrap_on_correlated_pairs_is_as_narrow_as_the_paired_differences():
    """Kills: a and b resampled independently (examples or run pairs), the inner or outer level dropped."""
    from pipeline.results.stats import hierarchical_bootstrap

    pairs = _correlated_pairs()
    res = hierarchical_bootstrap(pairs, seed=0)
    width = res["ci_high"] - res["ci_low"]
    paired = _normal_width([a - b for a, b in pairs])
    unpaired = math.hypot(_normal_width([a for a, _ in pairs]), _normal_width([b for _, b in pairs]))
    assert unpaired > 5 * paired  # the data make the two clearly different
    assert abs(width / paired - 1) < 0.15, (width, paired)
    assert width < 0.3 * unpaired
    diff = np.mean([(a - b).mean() for a, b in pairs])
    assert res["mean_diff"] == pytest.approx(diff) and res["ci_low"] < diff < res["ci_high"]
    assert res["ci_low"] > 0  # b loses on most flips: a clear effect for a paired test, none for an unpaired one

    # the within-pair level counts too: one unit only, so the interval is the examples' alone
    one = pairs[:1]
    r1 = hierarchical_bootstrap(one, seed=0)
    w1, p1 = r1["ci_high"] - r1["ci_low"], _normal_width([one[0][0] - one[0][1]])
    assert abs(w1 / p1 - 1) < 0.2, (w1, p1)


# ---------------------------------------------------------------- the spec's documented bounds
# (section, field) -> (the smallest legal value, the largest illegal one below it).  Written out, not read from
# the models, so that a bound changed in spec.py (gt=0 -> gt=1, min_length=1 -> 2, ...) fails here.
_T = {"steps": (0, -1), "batch_size": (1, 0), "eval_batch_size": (1, 0), "max_length": (1, 0), "lr": (1e-9, 0),
      "head_lr": (1e-9, 0), "weight_decay": (0, -1e-9), "warmup_ratio": (0, -1e-9), "max_grad_norm": (1e-9, 0),
      "checkpoint_every": (0, -1)}
_R = {"gpus": (0, -1), "cpus": (1, 0), "mem_gb": (1e-3, 0), "time_min": (1, 0), "array_parallelism": (1, 0),
      "pack_size": (1, 0)}
BOUNDS = ([(("origin_training", k), v) for k, v in _T.items()] + [(("further_training", k), v) for k, v in _T.items()]
          + [(("resources", "stage1", k), v) for k, v in _R.items()] + [(("resources", "stage2", k), v) for k, v in _R.items()]
          + [(("datasets", 0, "train_size"), (1, 0)), (("datasets", 0, "eval_size"), (1, 0)),
             (("datasets", 0, "name"), ("d", "")), (("datasets", 0, "source"), ("x.csv", "")),
             (("hosts", 0, "name"), ("a", "")), (("hosts", 0, "model"), ("m", "")),
             (("name",), ("t", "")), (("output_dir",), ("o", ""))]
          + [((k,), (v, [])) for k, v in (("host_pairs", [["a", "b"]]), ("datasets", None), ("techniques", ["lora"]),
                                          ("conditions", ["ported"]), ("regimes", [0]), ("seeds", [0]))])


def _base() -> dict:
    return {"name": "t", "output_dir": "o", "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
            "host_pairs": [["a", "b"]], "datasets": [{"name": "d", "source": "x.csv"}], "techniques": ["lora"],
            "conditions": ["ported"], "regimes": ["zero-shot"], "seeds": [0]}


def _set(d: dict, path: tuple, value) -> dict:
    cur = d
    for k in path[:-1]:
        cur = cur.setdefault(k, {}) if isinstance(k, str) else cur[k]
    if value is not None:
        cur[path[-1]] = value
    return d


@pytest.mark.parametrize("path,bounds", BOUNDS, ids=lambda x: ".".join(map(str, x)) if isinstance(x, tuple) and
                         all(isinstance(p, (str, int)) for p in x) else None)
def test_each_bound_of_the_spec_admits_its_edge_and_refuses_past_it(path, bounds):
    """Kills: a bound moved by one (gt=0 -> gt=1, ge=0 -> ge=1, lt=1 -> lt=2, min_length=1 -> 2)."""
    ok, bad = bounds
    S.parse(_set(_base(), path, ok))
    with pytest.raises(S.SpecError, match=str(path[-1])):
        S.parse(_set(_base(), path, bad))


def test_the_spec_refuses_a_warmup_ratio_of_one_and_a_single_host():
    S.parse(_set(_base(), ("origin_training", "warmup_ratio"), 0.999))
    with pytest.raises(S.SpecError, match="warmup_ratio"):
        S.parse(_set(_base(), ("origin_training", "warmup_ratio"), 1))
    one = _base()
    one["hosts"] = one["hosts"][:1]
    with pytest.raises(S.SpecError, match="hosts"):
        S.parse(one)


def test_bootstrap_p_has_the_plus_one_correction():
    """Every resample favours one side: p is its floor, 2 (0 + 1) / (n_boot + 1) (never 0), whichever side.
    Kills: a +1 of the correction dropped or turned into -1."""
    from pipeline.results.stats import hierarchical_bootstrap

    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(12):
        a = (rng.random(300) < 0.8).astype(float)
        b = a.copy()
        b[(a == 1) & (rng.random(300) < 0.3)] = 0  # b loses about a quarter of a's answers, never gains
        pairs.append((a, b))
    for n_boot in (999, 2000):
        res = hierarchical_bootstrap(pairs, n_boot=n_boot, seed=0)
        assert res["ci_low"] > 0 and res["p"] == pytest.approx(2 / (n_boot + 1), rel=1e-12)
        res = hierarchical_bootstrap([(b, a) for a, b in pairs], n_boot=n_boot, seed=0)  # every one favours b
        assert res["ci_high"] < 0 and res["p"] == pytest.approx(2 / (n_boot + 1), rel=1e-12)


def test_the_named_hub_cache_follows_hf_home_and_hf_hub_cache(monkeypatch, tmp_path):
    """The cache named in every offline message is the one the libraries read: HF_HUB_CACHE, else HF_HOME/hub."""
    from pipeline import hub

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub.cache_dir() == tmp_path / "direct"
