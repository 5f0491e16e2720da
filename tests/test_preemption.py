"""Preemption (issue 6): an interrupted run resumes from its last checkpoint and ends with the
same numbers, bit for bit, as a run that was never interrupted.

* in-process (no Slurm): `runner.execute` is stopped after k steps (what RunPack does on USR2:
  checkpoint and raise Stop), executed again, and compared with an uninterrupted execute;
* real Slurm: `scontrol requeue` of the running stage-1 task of `pipeline sweep` kills it
  (SIGTERM, then SIGKILL), Slurm starts it again, and it picks up the last periodic checkpoint;
  its shard is compared with a `pipeline run` of the same spec on this machine.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import plan as planmod
from pipeline.run import runner
from pipeline.run.train import Stop
from pipeline.spec import load
from pipeline.sweep import Sweep
from tests import test_slurm as ts

ROOT = Path(__file__).resolve().parent.parent
# what must not change when a run is interrupted and resumed (module_sha256: the trained weights)
SAME = ("train_steps", "train_loss", "accuracy", "macro_f1", "eval_loss", "pred_positive_rate",
        "module_sha256", "trainable_parameters")
ONE_RUN = {"techniques": ["lora"], "technique_params": {}, "both_directions": False,
           "conditions": ["scratch"], "regimes": ["zero-shot"]}  # 1 stage-1 run (+ 1 zero-shot stage-2 run)


def metrics(row: dict) -> dict:
    return {k: row[k] for k in SAME}


def shard(sweep: Path, rid: str) -> dict:
    return pq.read_table(sweep / "shards" / f"{rid}.parquet").to_pylist()[0]


# ---------------------------------------------------------------- in-process, no Slurm
def _sweep(tiny_spec, write_spec, name: str, steps: int) -> Sweep:
    d = dict(tiny_spec, **ONE_RUN)
    d["output_dir"] = str(Path(d["output_dir"]).with_name(name))
    d["origin_training"] = {"steps": steps, "batch_size": 16, "max_length": 32}  # checkpoint only on a stop
    spec = load(write_spec(d, f"{name}.yaml"))
    sweep = Sweep.for_spec(spec)
    sweep.write(spec, planmod.build(spec))
    return sweep


def _stage1(sweep: Sweep) -> dict:
    return next(r for r in sweep.plan_rows.values() if r["stage"] == 1)


# train_loss is the mean of the last 10 step losses, but a checkpoint does not keep them: a run resumed
# with fewer than 10 steps to go averages fewer (and one resumed at its last step reports None)


@pytest.mark.parametrize("stop_at", [21, 33])  # 16 batches an epoch
def test_stopped_run_resumes_from_its_checkpoint_with_the_same_metrics(tiny_spec, write_spec, stop_at):
    steps = 40
    runner.quiet()
    hosts = runner.HostCache(Path(tiny_spec["models_dir"]))
    fresh = _sweep(tiny_spec, write_spec, "ref", steps)
    ref = runner.execute(_stage1(fresh), fresh, hosts)

    sweep = _sweep(tiny_spec, write_spec, "stopped", steps)
    row = _stage1(sweep)
    assert row["run_id"] == ref["run_id"]  # run ids do not depend on output_dir
    seen = []
    with pytest.raises(Stop):
        runner.execute(row, sweep, hosts, stop_requested=lambda: len(seen) >= stop_at, on_step=seen.append)
    assert seen[-1] == stop_at and not sweep.shard(row["run_id"]).exists()
    assert ts._ckpt_step(sweep.ckpt(row["run_id"])) == stop_at

    seen.clear()
    got = runner.execute(row, sweep, hosts, on_step=seen.append)
    assert seen == list(range(stop_at + 1, steps + 1))  # went on from the checkpoint
    assert not sweep.ckpt(row["run_id"]).exists()
    assert metrics(got) == metrics(ref)


# ---------------------------------------------------------------- real Slurm
make_spec = ts.make_spec


def _state(task: str) -> str:
    p = subprocess.run(["squeue", "-h", "-o", "%T", "-j", task], capture_output=True, text=True)
    return p.stdout.strip()


@pytest.fixture
def slurm_cluster():
    """test_slurm's check, for the Slurm test only: FAIL without Slurm unless PIPELINE_SKIP_SLURM=1."""
    if os.environ.get("PIPELINE_SKIP_SLURM") == "1":
        pytest.skip("PIPELINE_SKIP_SLURM=1")
    hint = "start the local cluster with `make slurm-up` (bash slurm/cluster.sh start) or set PIPELINE_SKIP_SLURM=1"
    for cmd in (["sinfo", "-h", "-o", "%a %t"], ["sacct", "-X", "-n", "-S", "now"]):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            pytest.fail(f"Slurm is not available ({cmd[0]}: {e}): {hint}", pytrace=False)
        if p.returncode != 0 or (cmd[0] == "sinfo" and not p.stdout.strip()):
            pytest.fail(f"Slurm does not answer ({cmd[0]}: {(p.stderr or p.stdout).strip()[:200]}): {hint}",
                        pytrace=False)


@pytest.mark.slurm
def test_scontrol_requeue_of_a_running_task_resumes_with_the_metrics_of_an_uninterrupted_run(
        slurm_cluster, make_spec, tiny_spec, write_spec, tmp_path, request):
    # 1 torch thread: ~30 ms a step here; Slurm kills the task KillWait (5 s) after the requeue, so the
    # run must last well beyond that on a faster machine too
    steps = 800
    # torch threads (float reduction order): resources.stage1.cpus in the Slurm task, cpu_count // workers
    # in `pipeline run`: 1 in both
    res = {"time_min": 10, "mem_gb": 2, "cpus": 1}
    over = dict(ONE_RUN, origin_training={"steps": steps, "batch_size": 16, "max_length": 32,
                                          "checkpoint_every": 20},
                resources={"stage1": res, "stage2": res})
    spec, sweep = make_spec(**over)
    t0 = time.time()
    ts.cli("sweep", spec)
    # the uninterrupted reference on this machine, the same spec elsewhere (same run ids), alongside
    ref_spec = write_spec(dict(tiny_spec, **over, output_dir=str(tmp_path / "reference")), "reference.yaml")
    ref_log = (tmp_path / "reference.log").open("w")
    local = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(ref_spec),
                              "--workers", str(os.cpu_count() or 1)],  # -> 1 torch thread, as cpus: 1
                             cwd=ROOT, stdout=ref_log, stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: local.poll() is None and os.killpg(local.pid, signal.SIGKILL))
    s1 = next(r for r in ts.records(sweep) if r["stage"] == 1)
    rid, job = s1["tasks"][0][0], s1["job_id"]
    task = f"{job}_0" if s1["array"] else job  # one task: submitit submits a plain job
    ckpt, done = sweep / "ckpt" / f"{rid}.pt", sweep / "shards" / f"{rid}.parquet"
    log = sweep / "submitit" / f"{job}_0_log.out"

    ts.wait_for(lambda: ckpt.exists() and _state(task) == "RUNNING", 180, "the first checkpoint", poll=0.2)
    assert not done.exists(), "training finished before the requeue: make it longer"
    subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True)
    ts.wait_for(lambda: _state(task) == "PENDING", 60, "the task to be requeued", poll=0.5)
    resumed_at = ts._ckpt_step(ckpt)  # killed: nothing writes it until the task starts again
    assert resumed_at and resumed_at % 20 == 0 and resumed_at < steps, resumed_at
    assert not done.exists(), "the first attempt finished before Slurm killed it: make training longer"
    ts.release_requeue_hold(task)

    ts.wait_for(done.exists, 300, "the requeued task to finish the run", poll=1)
    assert local.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    text = log.read_text()
    assert text.count(f"{rid}: resuming from checkpoint") == 1, text[-3000:]

    got, want = shard(sweep, rid), shard(tmp_path / "reference", rid)
    assert got["slurm_job_id"] and want["slurm_job_id"] is None
    assert metrics(got) == metrics(want)
    print(f"requeued at checkpoint step {resumed_at}/{steps}; done in {time.time() - t0:.0f} s")
