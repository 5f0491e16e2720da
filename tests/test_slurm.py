"""`pipeline sweep / status / resume` against the real local Slurm (slurm/cluster.sh start; .ci/run brings it up).

Every command runs as a separate process, as a user on a login node would, so status and
resume only know what the sweep folder (jobs.jsonl) and Slurm tell them.  Without Slurm
these tests FAIL (set PIPELINE_SKIP_SLURM=1 to skip them deliberately).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    if os.environ.get("PIPELINE_SKIP_SLURM") == "1":
        pytest.skip("PIPELINE_SKIP_SLURM=1")
    hint = "start the local cluster with `make slurm-up` (bash slurm/cluster.sh start) or set PIPELINE_SKIP_SLURM=1"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.fail(f"Slurm is not available (no sinfo/sbatch on PATH): {hint}", pytrace=False)
    p = subprocess.run(["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        pytest.fail(f"sinfo does not answer ({(p.stderr or p.stdout).strip()[:200]}): {hint}", pytrace=False)
    p = subprocess.run(["sacct", "-X", "-n", "-S", "now"], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"Slurm accounting does not work (sacct: {p.stderr.strip()[:200]}): {hint}", pytrace=False)


def cli(*args, check=True, timeout=300, env=None):
    p = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def records(sweep: Path) -> list[dict]:
    f = sweep / "jobs.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def queued(sweep: Path) -> list[str]:
    ids = sorted({r["job_id"] for r in records(sweep)})
    if not ids:
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True).stdout
    return out.split()


def in_queue(sweep: Path, job: str) -> bool:
    return any(k.split("_")[0] == job for k in queued(sweep))


def wait_idle(sweep: Path, timeout: float) -> None:
    t0 = time.time()
    while queued(sweep):
        if time.time() - t0 > timeout:
            raise AssertionError(f"jobs still queued after {timeout} s:\n{cli('status', sweep, check=False)}")
        time.sleep(2)


def wait_for(cond, timeout: float, what: str, poll: float = 1.0):
    t0 = time.time()
    while True:
        got = cond()
        if got:
            return got
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def release_requeue_hold(job: str, timeout: float = 60) -> None:
    """Slurm holds a requeued job back (Reason=BeginTime, about 120 s after the requeue) before it may start
    again.  That wait is Slurm's policy, not the pipeline's: an operator's ``scontrol update StartTime=now``
    lifts it, so a requeue test waits for the pipeline's resume, not for the clock."""
    def held():
        out = subprocess.run(["squeue", "-h", "-o", "%T %r", "-j", job], capture_output=True, text=True).stdout
        return "BeginTime" in out or "RUNNING" in out
    wait_for(held, timeout, f"job {job} to be held after its requeue", poll=0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)


def counts(status_out: str) -> dict[str, dict[str, int]]:
    """The stage x state table of `pipeline status` -> {'1': {'done': 3, ...}, '2': ..., 'all': ...}."""
    states = ("done", "waiting", "pending", "running", "failed", "timeout", "cancelled", "missing", "total")
    out = {}
    for line in status_out.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line) if c.strip()]
        if len(cells) == 10 and cells[0] in ("1", "2", "all"):
            out[cells[0]] = {s: 0 if v == "-" else int(v) for s, v in zip(states, cells[1:], strict=True)}
    assert set(out) == {"1", "2", "all"}, status_out
    return out


@pytest.fixture
def make_spec(tiny_spec, write_spec, tmp_path):
    """A small tiny-host spec writing into tmp_path; cancels whatever its sweep left queued."""
    made = []

    def make(**over) -> tuple[Path, Path]:
        d = dict(tiny_spec)
        d.update({"techniques": ["lora"], "both_directions": False, "technique_params": {},
                  "resources": {"stage1": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 2},
                                "stage2": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 4}}})
        d.update(over)
        made.append(Path(d["output_dir"]))
        return write_spec(d), Path(d["output_dir"])

    yield make
    for sweep in made:
        ids = sorted({r["job_id"] for r in records(sweep)})
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)


def test_sweep_through_arrays_with_dependency_to_merged_results(make_spec):
    spec, sweep = make_spec(both_directions=True, regimes=["zero-shot", 2])
    t0 = time.time()
    out = cli("sweep", spec)
    submit_s = time.time() - t0
    assert "2 stage-1 + 12 stage-2 runs" in out and "queued 3 array job(s)" in out
    recs = records(sweep)
    s1 = [r for r in recs if r["stage"] == 1]
    s2 = [r for r in recs if r["stage"] == 2]
    assert len(s1) == 1 and s1[0]["array"] and len(s1[0]["tasks"]) == 2  # pack size 2, but one host a task
    waiting = [r for r in s2 if r["depends"]]
    assert len(waiting) == 1 and waiting[0]["depends"] == [s1[0]["job_id"]]
    assert f"after job {s1[0]['job_id']} (afterany)" in out
    dep = subprocess.run(["squeue", "-h", "-j", waiting[0]["job_id"], "-o", "%E"], capture_output=True, text=True)
    if dep.stdout.strip():  # still held (normally: stage 1 takes longer than this)
        assert f"afterany:{s1[0]['job_id']}" in dep.stdout
    scratch = [r for r in s2 if not r["depends"]]  # scratch runs need no module: they start at once
    assert sum(len(t) for t in scratch[0]["tasks"]) == 4
    planned = pq.read_table(sweep / "plan.parquet").column("run_id").to_pylist()
    assert sorted(rid for r in recs for t in r["tasks"] for rid in t) == sorted(planned)  # each run once

    wait_idle(sweep, 300)
    st = counts(cli("status", sweep))
    assert st["all"]["done"] == st["all"]["total"] == 14, st
    out = cli("merge", sweep)
    rows = pq.read_table(sweep / "results.parquet").to_pylist()
    assert sorted(r["run_id"] for r in rows) == sorted(planned)  # one row per run
    assert sorted(r["slurm_array_task_id"] for r in rows if r["stage"] == 1) == ["0", "1"]
    print(f"submit {submit_s:.1f} s, whole sweep {time.time() - t0:.0f} s")


def test_a_decoder_sweep_through_slurm(make_spec):
    """A causal-lm pair (tiny Qwen2 hosts) through the real Slurm: stage 1 trains, stage 2 ports after it,
    every condition runs, the merge has one row per planned run."""
    spec, sweep = make_spec(
        hosts=[{"name": "qa", "model": "embedded:tiny-qwen2-a", "task": "causal-lm"},
               {"name": "qb", "model": "embedded:tiny-qwen2-b", "task": "causal-lm"}],
        host_pairs=[["qa", "qb"]],
        datasets=[{"name": "rt", "source": "embedded:rotten_tomatoes", "template": "Review: {text}\nSentiment:",
                   "train_size": 128, "eval_size": 32}],
        conditions=["ported", "scratch", "no-module"], regimes=["zero-shot"])
    out = cli("sweep", spec)
    assert "1 stage-1 + 3 stage-2 runs" in out, out
    wait_idle(sweep, 300)
    st = counts(cli("status", sweep))
    assert st["all"]["done"] == st["all"]["total"] == 4, st
    cli("merge", sweep)
    rows = pq.read_table(sweep / "results.parquet").to_pylist()
    planned = pq.read_table(sweep / "plan.parquet").column("run_id").to_pylist()
    assert sorted(r["run_id"] for r in rows) == sorted(planned)
    ported = [r for r in rows if r["condition"] == "ported"]
    assert ported and ported[0]["port_exact"] and ported[0]["slurm_job_id"]  # ran inside a Slurm job


def test_a_job_step_is_bound_to_the_cpus_its_task_asked_for(make_spec):
    """Each run records ``os.sched_getaffinity`` and torch's threads (shard columns ``cpus_bound``,
    ``torch_threads``).  The local Slurm binds tasks (``TaskPlugin=task/affinity`` on the machine's real CPUs, two
    sockets), as a cluster does, so a stage that asks for one CPU gets one, not the machine.  And a job step must
    ask for its task's CPUs itself: srun of Slurm 22.05 to 23.02 does not take them from the job (documented;
    the local 22.05.8 does), so a plain ``srun`` gets one CPU while torch runs ``cpus`` threads.  Such an srun
    is emulated here by submitting with ``SRUN_CPUS_PER_TASK=1`` in the environment (sbatch passes it into the
    job, srun reads it before the job's own value)."""
    node = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%c"], capture_output=True, text=True).stdout.split()
    wide = int(node[0])
    assert wide >= 2, f"the local node must declare at least 2 CPUs for this test, it has {wide}"
    spec, sweep = make_spec(conditions=["scratch"], regimes=["zero-shot"],
                            resources={"stage1": {"time_min": 10, "mem_gb": 2, "cpus": 1},
                                       "stage2": {"time_min": 10, "mem_gb": 2, "cpus": wide}})
    cli("sweep", spec, env={"SRUN_CPUS_PER_TASK": "1"})
    wait_idle(sweep, 300)
    cli("merge", sweep)
    rows = pq.read_table(sweep / "results.parquet").to_pylist()
    got = {r["stage"]: (r["cpus_bound"], r["torch_threads"]) for r in rows}
    assert got == {1: (1, 1), 2: (wide, wide)}, got
    assert all(r["slurm_job_id"] for r in rows)
    from importlib.metadata import version  # the torch build is recorded with every array submitted

    assert {r["torch"] for r in records(sweep)} == {version("torch")}


def test_failed_run_shows_its_error_and_resume_finishes_it(make_spec):
    spec, sweep = make_spec(conditions=["ported", "scratch"], regimes=["zero-shot"])
    cli("sweep", spec)
    recs = records(sweep)
    s1 = next(r for r in recs if r["stage"] == 1)
    waiting = next(r for r in recs if r["depends"])
    subprocess.run(["scontrol", "hold", waiting["job_id"]], check=True)  # keep the ported run from starting ...
    wait_for(lambda: not in_queue(sweep, s1["job_id"]), 180, "stage 1")
    origin = s1["tasks"][0][0]
    module = sweep / "modules" / origin / "module.safetensors"
    blob = bytearray(module.read_bytes())
    blob[-1] ^= 0xFF
    module.write_bytes(bytes(blob))  # ... until its module is corrupt
    subprocess.run(["scontrol", "release", waiting["job_id"]], check=True)
    wait_idle(sweep, 180)

    out = cli("status", sweep)
    st = counts(out)
    assert st["2"]["failed"] == 1 and st["2"]["done"] == 1 and st["1"]["done"] == 1, out
    assert "fails its checksum" in out and "pipeline resume" in out
    ported = waiting["tasks"][0][0]
    assert f"{ported} failed" in out

    out = cli("resume", sweep)
    assert "1 stage-1 module(s) fail their checksum and are redone" in out
    new = records(sweep)[len(recs):]
    assert [r["stage"] for r in new] == [1, 2]
    assert new[0]["tasks"] == [[origin]] and new[1]["tasks"] == [[ported]]
    assert new[1]["depends"] == [new[0]["job_id"]]  # waits for the module being redone
    again = cli("resume", sweep)  # while those are queued or running
    assert "nothing to submit" in again and len(records(sweep)) == len(recs) + 2

    wait_idle(sweep, 180)
    st = counts(cli("status", sweep))
    assert st["all"]["done"] == st["all"]["total"] == 3
    assert "nothing to submit" in cli("resume", sweep)
    assert len(records(sweep)) == len(recs) + 2


def _ckpt_step(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, weights_only=False)["step"])
    except Exception:  # not there, or being replaced
        return None


def test_timed_out_task_is_requeued_and_resumes_from_its_checkpoint(make_spec):
    # a training run far longer than its 2-minute limit; USR2 60 s before the end (Slurm may send it earlier)
    spec, sweep = make_spec(conditions=["scratch"], regimes=["zero-shot"],
                            origin_training={"steps": 1_000_000, "batch_size": 16, "max_length": 32,
                                             "checkpoint_every": 10},
                            resources={"stage1": {"time_min": 2, "mem_gb": 2, "cpus": 1,
                                                  "extra": {"signal": "USR2@60"}},
                                       "stage2": {"time_min": 10, "mem_gb": 2, "cpus": 1}})
    t0 = time.time()
    cli("sweep", spec)
    s1 = next(r for r in records(sweep) if r["stage"] == 1)
    rid, job = s1["tasks"][0][0], s1["job_id"]
    log = sweep / "submitit" / f"{job}_0_log.out"
    ckpt = sweep / "ckpt" / f"{rid}.pt"
    read = lambda: log.read_text() if log.exists() else ""

    wait_for(lambda: "Requeued job" in read(), 240, "the timeout signal and the requeue", poll=2)
    assert "this job is timed-out" in read()
    saved = _ckpt_step(ckpt)
    assert saved and saved > 0  # checkpointed at the signal
    st = counts(cli("status", sweep))
    assert st["1"]["pending"] + st["1"]["running"] == 1, st  # requeued, not failed
    release_requeue_hold(job)

    wait_for(lambda: "resuming from checkpoint" in read(), 180, "the requeued task to start again", poll=2)
    seen = []

    def progressed():
        s = _ckpt_step(ckpt)
        if s is not None:
            seen.append(s)
        return s is not None and s > saved

    wait_for(progressed, 90, "a checkpoint after resuming", poll=1)
    assert min(seen) >= saved, (saved, seen)  # went on from the checkpoint, never restarted at step 0
    print(f"signal -> requeue -> resumed at step {saved} -> step {max(seen)} in {time.time() - t0:.0f} s")
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: not in_queue(sweep, job), 60, "the cancel")
    out = cli("status", sweep)
    assert counts(out)["1"]["cancelled"] == 1, out


def test_status_and_resume_from_fresh_processes_while_in_flight(make_spec):
    spec, sweep = make_spec(conditions=["ported"], regimes=["zero-shot"])
    cli("sweep", spec)  # this process has exited: only the sweep folder and Slurm know about the jobs
    n = len(records(sweep))
    again = cli("sweep", spec)
    assert "nothing to submit" in again and len(records(sweep)) == n
    st = counts(cli("status", spec))
    assert st["all"]["total"] == 2 and st["all"]["missing"] == st["all"]["failed"] == 0, st
    assert st["all"]["pending"] + st["all"]["running"] + st["all"]["done"] == 2
    assert "nothing to submit" in cli("resume", sweep) and len(records(sweep)) == n
    wait_idle(sweep, 180)
    out = cli("status", sweep)
    assert counts(out)["all"]["done"] == 2 and "all runs done" in out
    assert "nothing to submit" in cli("resume", spec) and len(records(sweep)) == n


# ---------------------------------------------------------------- submit limits (Slurm etiquette)
def user_jobs() -> list[str]:
    """This user's jobs in the queue, one line per array task."""
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    return subprocess.run(["squeue", "-h", "-r", "-u", user, "-o", "%i"], capture_output=True, text=True).stdout.split()


@pytest.fixture
def max_submit():
    """set(n): MaxSubmitJobs=n on this user's associations (sacctmgr); cleared again after the test, even when it
    fails.  Waits first until none of the user's jobs is left in the queue (earlier tests' cancelled ones)."""
    conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if not re.search(r"AccountingStorageEnforce\s*=\s*\S*limits", conf):
        pytest.fail("Slurm does not enforce limits (AccountingStorageEnforce lacks 'limits'): restart it with "
                    "`bash slurm/cluster.sh start`", pytrace=False)
    wait_for(lambda: not user_jobs(), 90, "an empty queue")
    user = __import__("pwd").getpwuid(os.getuid()).pw_name

    def set_(n: int) -> None:
        subprocess.run(["sacctmgr", "-i", "modify", "user", user, "set", f"maxsubmit={n}"], check=True,
                       capture_output=True)

    yield set_
    set_(-1)


@contextmanager
def drained(node: str = "localhost"):
    """The node takes no new jobs inside the block (drained), and takes them again after it, even on failure."""
    subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=test: queue held"], check=True)
    try:
        yield
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=True)


def test_submit_limit_holds_runs_back_until_slots_free(make_spec, max_submit):
    spec, sweep = make_spec(both_directions=True, conditions=["ported", "scratch"], regimes=["zero-shot"],
                            resources={"stage1": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 1},
                                       "stage2": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 1}})
    max_submit(3)  # 2 stage-1 + 4 stage-2 runs, one a task: 6 jobs, 3 may be queued
    t0 = time.time()
    with drained():  # no job may start (and free a slot) before the hold below takes effect
        out = cli("sweep", spec)
        recs = records(sweep)
        assert sum(len(r["tasks"]) for r in recs) == 3, out  # exactly what fits
        assert [(r["stage"], len(r["tasks"])) for r in recs] == [(1, 2), (2, 1)]  # stage 1 first
        assert "3 run(s) waiting, not submitted: MaxSubmitJobs of association" in out
        subprocess.run(["scontrol", "hold", *[r["job_id"] for r in recs]], check=True)  # the queue stays full ...
        assert len(user_jobs()) == 3
        out = cli("status", sweep)
        st = counts(out)
        assert st["all"]["waiting"] == 3 and st["all"]["pending"] + st["all"]["running"] == 3, out
        assert "3 run(s) waiting, not submitted: MaxSubmitJobs of association" in out and "is 3" in out
        out = cli("resume", sweep)  # ... so resume submits nothing more
        assert "queued 0 array job(s)" in out and len(records(sweep)) == 2 and counts(cli("status", sweep))["all"][
            "waiting"] == 3

        # --follow polls; Ctrl-C stops it cleanly with nothing half-done
        # as from a terminal: a shell's background job (`make test &`) ignores SIGINT, and a child inherits that
        p = subprocess.Popen([sys.executable, "-m", "pipeline", "resume", str(sweep), "--follow", "--interval", "30"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        seen = []
        for line in p.stdout:
            seen.append(line)
            if "next check in 30 s" in line:
                break
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
        assert p.returncode == 130, "".join(seen) + rest
        assert "waiting 3" in "".join(seen) and "stopped following (Ctrl-C)" in rest and "Traceback" not in rest
        assert len(records(sweep)) == 2

    subprocess.run(["scontrol", "release", *[r["job_id"] for r in recs]], check=True)
    out = cli("resume", sweep, "--follow", "--until-done", "--interval", "2", timeout=400)
    assert "all runs done" in out and "refused" not in out, out  # never past the limit: sbatch never said no
    st = counts(cli("status", sweep))
    assert st["all"]["done"] == st["all"]["total"] == 6 and st["all"]["waiting"] == 0, st
    assert not (sweep / "waiting.json").exists()
    planned = pq.read_table(sweep / "plan.parquet").column("run_id").to_pylist()
    submitted = [rid for r in records(sweep) for t in r["tasks"] for rid in t]
    assert sorted(submitted) == sorted(planned)  # every run submitted once: none lost, none doubled
    for r in records(sweep):  # a stage-2 array only ever waited on a stage-1 array that had been submitted
        assert all(any(q["job_id"] == d and q["stage"] == 1 for q in records(sweep)) for d in r["depends"])
    cli("merge", sweep)
    assert sorted(r["run_id"] for r in pq.read_table(sweep / "results.parquet").to_pylist()) == sorted(planned)
    print(f"6 runs under MaxSubmitJobs=3 in {time.time() - t0:.0f} s")


def test_dry_run_asks_sbatch_test_only_for_each_array(make_spec, max_submit):
    spec, sweep = make_spec(conditions=["ported", "scratch"], regimes=["zero-shot"],
                            resources={"stage1": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 1},
                                       "stage2": {"time_min": 10, "mem_gb": 2, "cpus": 1, "pack_size": 1}})
    out = cli("sweep", spec, "--dry-run")
    lines = [x for x in out.splitlines() if x.startswith("array ")]
    assert len(lines) == 3 and all("sbatch --test-only" in x and "to start at 20" in x for x in lines), out
    assert "without its dependency" in lines[2]
    max_submit(2)  # three one-task arrays: the last no longer fits
    out = cli("sweep", spec, "--dry-run")
    lines = [x for x in out.splitlines() if x.startswith("array ")]
    assert "submit limit: MaxSubmitJobs of association" in out and "2 of 3 task(s) would be submitted now" in out
    assert "to start at" in lines[0] and "to start at" in lines[1] and lines[2].endswith("waits (submit limit)"), out
    assert not sweep.exists() and not user_jobs()  # nothing written, nothing submitted
