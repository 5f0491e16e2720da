"""Packing, array splitting, sacct/squeue parsing and run states -- no Slurm needed."""

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import plan as P
from pipeline import spec as S
from pipeline.launch import layout as L
from pipeline.launch import queue
from pipeline.launch import status as st
from pipeline.sweep import Sweep


# ---------------------------------------------------------------- sacct / squeue parsing
def test_expand_job_id_ranges():
    assert queue.expand_job_id("12_3") == ["12_3"]
    assert queue.expand_job_id("12") == ["12"]
    assert queue.expand_job_id("12_[2-5%2]") == ["12_2", "12_3", "12_4", "12_5"]
    assert queue.expand_job_id("12_[0,3-4]") == ["12_0", "12_3", "12_4"]
    assert queue.expand_job_id("7_[9]") == ["7_9"]


def test_parse_sacct_output():
    text = ("10_0|COMPLETED|s.s1\n10_1|CANCELLED by 0|s.s1\n10_[2-3%1]|PENDING|s.s1\n"
            "10_1.batch|CANCELLED|batch\n11|TIMEOUT|s.s2\n12_4|OUT_OF_MEMORY|s.s2\n")
    t = queue.parse_table(text)
    assert {k: queue.slurm_category(v["state"]) for k, v in t.items()} == {
        "10_0": "completed", "10_1": "cancelled", "10_2": "pending", "10_3": "pending", "11": "timeout",
        "12_4": "failed"}
    assert t["10_0"]["name"] == "s.s1"


def test_parse_squeue_output_with_reasons():
    t = queue.parse_table("5_0|PENDING|x.s2|Dependency\n5_1|RUNNING|x.s2|None\n6|COMPLETING|x.s1|None\n")
    assert t["5_0"] == {"state": "PENDING", "name": "x.s2", "reason": "Dependency"}
    assert queue.slurm_category(t["6"]["state"]) == "running"


@pytest.mark.parametrize("state,cat", [
    ("PENDING", "pending"), ("REQUEUED", "pending"), ("RUNNING", "running"), ("COMPLETING", "running"),
    ("COMPLETED", "completed"), ("FAILED", "failed"), ("NODE_FAIL", "failed"), ("TIMEOUT", "timeout"),
    ("CANCELLED by 1234", "cancelled"), ("PREEMPTED", "cancelled"), ("SOMETHING_NEW", "running")])
def test_slurm_category(state, cat):
    assert queue.slurm_category(state) == cat


def test_classify_precedence():
    q = lambda s: {"state": s, "name": "", "reason": ""}
    assert st.classify(q("PENDING"), None, False) == "pending"  # held by a dependency: not in sacct yet
    assert st.classify(q("RUNNING"), q("PENDING"), True) == "running"  # the queue is live
    assert st.classify(None, q("FAILED"), True) == "failed"
    assert st.classify(None, q("FAILED"), False) == "failed"  # the pack died before the run wrote an error
    assert st.classify(None, q("TIMEOUT"), False) == "timeout"
    assert st.classify(None, q("COMPLETED"), False) == "missing"  # task ended, shard gone
    assert st.classify(None, q("RUNNING"), False) == "missing"  # not queued any more; accounting lags
    assert st.classify(None, q("RUNNING"), False, queue_known=False) == "running"  # squeue failed: trust sacct
    assert st.classify(None, None, True) == "failed"
    assert st.classify(None, None, False) == "missing"


def test_parse_max_array_size():
    assert queue.parse_max_array_size("MaxArraySize            = 40001\nMaxJobCount = 10") == 40001
    assert queue.parse_max_array_size("nothing here") == queue.DEFAULT_MAX_ARRAY_SIZE


def test_max_array_size_comes_from_slurm_conf_without_asking_a_daemon(tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n#MaxArraySize=5\nmaxarraysize=2500\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.setattr(queue, "_config", lambda: pytest.fail("scontrol asked although slurm.conf is readable"))
    queue.max_array_size.cache_clear()
    try:
        assert queue.max_array_size() == 2500
        conf.write_text("ClusterName=x\n")  # not set: Slurm's default
        queue.max_array_size.cache_clear()
        assert queue.max_array_size() == queue.DEFAULT_MAX_ARRAY_SIZE
    finally:
        queue.max_array_size.cache_clear()


# ---------------------------------------------------------------- packing and arrays
def test_make_packs_one_host_per_pack_sorted_by_module():
    runs = [("r1", "a", "m2"), ("r2", "b", None), ("r3", "a", "m1"), ("r4", "a", "m2"), ("r5", "b", "m3"),
            ("r6", "a", "m1")]
    packs = L.make_packs(runs, 2)
    host = {r: h for r, h, _ in runs}
    assert sorted(r for p in packs for r in p) == sorted(r for r, _, _ in runs)
    assert all(len(p) <= 2 and len({host[r] for r in p}) == 1 for p in packs)
    assert ["r3", "r6"] in packs and ["r1", "r4"] in packs  # runs loading the same module share a pack


def test_split_arrays_respects_max_array_size():
    tasks = [[str(i)] for i in range(2500)]
    arrays = L.split_arrays(tasks, 1001)
    assert [len(a) for a in arrays] == [1001, 1001, 498]
    assert [t for a in arrays for t in a] == tasks


@pytest.mark.parametrize("cap,sizes", [(64, [1001, 1001, 498]), (3, [5, 5, 5]), (10, [2, 100]), (64, [4])])
def test_share_parallelism(cap, sizes):
    got = L.share_parallelism(cap, sizes)
    assert all(1 <= g <= n for g, n in zip(got, sizes, strict=True))
    assert sum(got) <= max(cap, len(sizes))
    assert sum(got) == min(cap, sum(sizes)) or cap < len(sizes)


def _spec(**kw):
    d = {"name": "t", "output_dir": "/tmp/nowhere", "hosts": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}],
         "host_pairs": [["a", "b"]], "datasets": [{"name": "d", "source": "x.csv", "eval_size": 100}],
         "techniques": ["lora", "ia3"], "conditions": ["ported", "scratch", "sampled"], "regimes": ["zero-shot", 10],
         "seeds": [0, 1], "origin_training": {"steps": 50}}
    d.update(kw)
    return S.parse(d)


def test_pack_size_from_spec_and_estimated():
    spec = _spec(resources={"stage1": {"pack_size": 3}, "stage2": {"array_parallelism": 4, "time_min": 600}})
    assert L.pack_size(spec, 1, 100) == (3, "spec")
    size, src = L.pack_size(spec, 2, 10_000)
    est = L.estimate_run_s(spec, 2)
    assert src.startswith("estimated")
    assert size * est <= L.TARGET_TASK_S + est  # about TARGET_TASK_S a task
    assert size * est >= min(L.MIN_TASK_S, 10_000 / 4 * est)
    # few runs, many slots: packs only as big as needed for a task to be worth its start-up
    small, _ = L.pack_size(_spec(), 2, 8)
    est = L.estimate_run_s(_spec(), 2)
    assert small * est >= L.MIN_TASK_S and (small - 1) * est < L.MIN_TASK_S
    # never more than half the time limit
    tight = _spec(resources={"stage1": {"time_min": 1}}, origin_training={"steps": 200})
    assert L.pack_size(tight, 1, 1000)[0] == 1


def test_layout_of_a_fresh_sweep_splits_and_depends():
    spec = _spec(resources={"stage1": {"pack_size": 1, "array_parallelism": 5},
                            "stage2": {"pack_size": 2, "array_parallelism": 6}})
    plan = P.build(spec)
    arrays = L.fresh_layout(spec, plan, max_size=3)
    s1 = [a for a in arrays if a.stage == 1]
    s2 = [a for a in arrays if a.stage == 2]
    assert sum(a.runs for a in s1) == len(plan.stage1) == 8
    assert [len(a.tasks) for a in s1] == [3, 3, 2] and not any(a.depends for a in s1)
    assert sum(a.throttle for a in s1) <= 5
    assert sum(a.runs for a in s2) == len(plan.stage2)
    assert sum(a.throttle for a in s2) <= max(6, len(s2))
    needs = {r.run_id: r.needs for r in plan.stage2}
    s1_job = {rid: f"<stage-1 job {i + 1}>" for i, a in enumerate(s1) for t in a.tasks for rid in t}
    for a in s2:
        for t in a.tasks:
            for rid in t:
                if needs[rid] is None:
                    assert a.depends == []  # scratch runs start at once
                else:
                    assert a.depends == [s1_job[needs[rid]]]
    assert all(len(a.tasks) <= 3 for a in arrays)


def test_sbatch_params_and_rendered_script(tmp_path):
    spec = _spec(resources={"stage2": {"gpus": 1, "cpus": 6, "mem_gb": 1.5, "time_min": 30, "partition": "gpu",
                                       "account": "acc", "qos": "high", "constraint": "a100",
                                       "extra": {"mail-type": "END"}}})
    p = L.sbatch_params(spec, 2, throttle=7, dependency="afterany:12:13")
    assert p["gpus_per_node"] == 1 and p["cpus_per_task"] == 6 and p["mem"] == "1536MB" and p["time"] == 30
    assert p["signal_delay_s"] == L.signal_delay(30)
    script = L.render_sbatch(tmp_path, p, 40)
    for flag in ("--array=0-39%7", "--gpus-per-node=1", "--cpus-per-task=6", "--mem=1536MB", "--time=30",
                 "--partition=gpu", "--account=acc", "--qos=high", "--constraint=a100", "--mail-type=END",
                 "--dependency=afterany:12:13", f"--signal=USR2@{L.signal_delay(30)}", "--job-name=t.s2"):
        assert flag in script, flag
    assert "submitit.core._submit" in script


def test_signal_delay_bounds():
    assert L.signal_delay(2) == 20 and L.signal_delay(10) == 60 and L.signal_delay(24 * 60) == 120


def test_dry_run_extra_without_slurm(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setenv("PATH", "/nonexistent")
    queue.max_array_size.cache_clear()
    try:
        spec = _spec()
        L.print_layout(Console(width=200), spec, P.build(spec), queue.max_array_size())
    finally:
        queue.max_array_size.cache_clear()
    out = capsys.readouterr().out
    assert "MaxArraySize 1001" in out and "#SBATCH --array=" in out and "afterany:<stage-1 job 1>" in out


# ---------------------------------------------------------------- run states from files and records
def _fake_sweep(root: Path, n1: int, n2: int) -> Sweep:
    """A sweep folder with a synthetic plan (no spec, no runs)."""
    ids1 = [f"a{i:011d}" for i in range(n1)]
    rows = [{"run_id": r, "stage": 1, "needs": None, "technique": "lora", "origin_host": "a", "receiving_host": None,
             "host_pair": "a", "condition": None, "regime": None} for r in ids1]
    rows += [{"run_id": f"b{i:011d}", "stage": 2, "needs": ids1[i % n1], "technique": "lora", "origin_host": "a",
              "receiving_host": "b", "host_pair": "a->b", "condition": "ported", "regime": 0} for i in range(n2)]
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "plan.parquet")
    return Sweep(root)


def _touch_done(sweep: Sweep, rid: str, stage: int) -> None:
    sweep.shards.mkdir(exist_ok=True)
    sweep.shard(rid).write_bytes(b"")
    if stage == 1:
        sweep.module(rid).mkdir(parents=True, exist_ok=True)
        (sweep.module(rid) / "module.safetensors").write_bytes(b"x")
        (sweep.module(rid) / "module.json").write_text("{}")


def test_local_sweep_states_without_slurm(tmp_path):
    sweep = _fake_sweep(tmp_path / "s", 2, 4)
    _touch_done(sweep, "a00000000000", 1)
    sweep.shard("a00000000001").write_bytes(b"")  # stage 1 shard without its module: not done
    _touch_done(sweep, "b00000000000", 2)
    sweep.error("b00000000001").parent.mkdir()
    sweep.error("b00000000001").write_text("ValueError: boom\n\nTraceback...\nValueError: boom\n")
    snap = st.snapshot(sweep, slurm=False)
    assert snap.state == {"a00000000000": "done", "a00000000001": "missing", "b00000000000": "done",
                          "b00000000001": "failed", "b00000000002": "missing", "b00000000003": "missing"}
    assert st.error_lines(sweep, "b00000000001", None, 1) == ["ValueError: boom"]


def test_states_from_recorded_jobs(tmp_path, monkeypatch):
    sweep = _fake_sweep(tmp_path / "s", 2, 6)
    recs = [{"stage": 1, "job_id": "10", "array": True, "name": "t.s1", "tasks": [["a00000000000"], ["a00000000001"]]},
            {"stage": 2, "job_id": "11", "array": True, "name": "t.s2",
             "tasks": [["b00000000000", "b00000000001"], ["b00000000002"], ["b00000000003"], ["b00000000004"]]},
            {"stage": 2, "job_id": "12", "array": False, "name": "t.s2", "tasks": [["b00000000004"]]}]
    (sweep.root / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
    _touch_done(sweep, "a00000000000", 1)
    _touch_done(sweep, "b00000000000", 2)
    monkeypatch.setattr(queue, "query_squeue", lambda ids: queue.parse_table("11_1|PENDING|t.s2|Dependency\n"))
    monkeypatch.setattr(queue, "query_sacct", lambda ids: queue.parse_table(
        "10_0|COMPLETED|t.s1\n10_1|FAILED|t.s1\n11_0|FAILED|t.s2\n11_2|TIMEOUT|t.s2\n12|RUNNING|OTHER\n"))
    snap = st.snapshot(sweep, slurm=True)
    assert snap.state == {
        "a00000000000": "done", "a00000000001": "failed",  # its task failed
        "b00000000000": "done", "b00000000001": "failed", "b00000000002": "pending", "b00000000003": "timeout",
        "b00000000004": "missing",  # latest record is job 12, whose id now names another job (cluster reset)
        "b00000000005": "missing"}  # never submitted
    assert snap.active_job("b00000000002") == "11" and snap.active_job("b00000000001") is None
    assert snap.job_of["b00000000004"] == "12"


def test_status_is_fast_for_100k_runs(tmp_path, monkeypatch):
    n1, n2 = 5_000, 95_000
    sweep = _fake_sweep(tmp_path / "s", n1, n2)
    plan = st.read_plan(sweep, ("run_id", "stage"))
    ids = plan["run_id"]
    sweep.shards.mkdir()
    for rid in ids[: 90_000]:  # 90 % done
        (sweep.shards / f"{rid}.parquet").touch()
    for rid in ids[:n1]:
        m = sweep.module(rid)
        m.mkdir(parents=True)
        (m / "module.safetensors").touch()
        (m / "module.json").touch()
    tasks = [ids[i:i + 20] for i in range(0, len(ids), 20)]
    recs = [{"stage": 1, "job_id": str(100 + k), "array": True, "name": "t", "tasks": tasks[k * 1000:(k + 1) * 1000]}
            for k in range(5)]
    (sweep.root / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    calls = []
    monkeypatch.setattr(queue, "query_squeue", lambda j: calls.append("squeue") or queue.parse_table(
        "\n".join(f"104_{i}|RUNNING|t|None" for i in range(500, 1000))))
    monkeypatch.setattr(queue, "query_sacct", lambda j: calls.append("sacct") or {})
    t0 = time.perf_counter()
    snap = st.snapshot(sweep, slurm=True)
    dt = time.perf_counter() - t0
    c = snap.counts()
    assert c[1]["done"] == n1 and c[2]["done"] == 85_000 and c[2]["running"] == 10_000
    assert calls == ["squeue", "sacct"]  # one call each, whatever the number of runs
    assert dt < 10, f"snapshot of 100k runs took {dt:.1f} s"
    print(f"snapshot of 100,000 runs: {dt:.2f} s")


def test_module_checksum(tmp_path):
    sweep = Sweep(tmp_path)
    m = sweep.module("r1")
    m.mkdir(parents=True)
    (m / "module.safetensors").write_bytes(b"abc")
    import hashlib

    (m / "module.json").write_text(json.dumps({"sha256": hashlib.sha256(b"abc").hexdigest()}))
    assert st.module_checksum_ok(sweep, "r1")
    (m / "module.safetensors").write_bytes(b"abd")
    assert not st.module_checksum_ok(sweep, "r1")
    assert not st.module_checksum_ok(sweep, "nope")


def test_status_cli_on_a_local_sweep(tmp_path, capsys):
    from pipeline import cli

    sweep = _fake_sweep(tmp_path / "s", 1, 2)
    _touch_done(sweep, "a00000000000", 1)
    os.makedirs(sweep.root / "errors")
    sweep.error("b00000000000").write_text("RuntimeError: broken\n")
    assert cli.main(["status", str(sweep.root)]) == 0
    out = capsys.readouterr().out
    assert "b00000000000 failed" in out and "RuntimeError: broken" in out and "pipeline resume" in out


def test_sweep_without_slurm_is_a_clear_error(tmp_path, monkeypatch, capsys, write_spec, tiny_spec):
    from pipeline import cli

    monkeypatch.setattr(queue, "have_slurm", lambda: False)
    assert cli.main(["sweep", str(write_spec(tiny_spec))]) == 2
    err = capsys.readouterr().err
    assert "Slurm is not available" in err and "pipeline run" in err
    assert not (tmp_path / "sweep" / "jobs.jsonl").exists()
