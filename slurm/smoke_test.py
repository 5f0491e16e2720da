"""End-to-end check of the local Slurm cluster through submitit.

Usage: python slurm/smoke_test.py [FOLDER]   (FOLDER defaults to a fresh temporary directory)

Checks: a single job (latency, result, sacct state COMPLETED), a 20-task map_array with
slurm_array_parallelism=4, a job held by `dependency=afterok:ID`, and that cancelling a pending
job makes result() raise UncompletedJobError quickly. Exits non-zero on the first failure.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import submitit


def square(x: int) -> int:
    return x * x


def sleep_then(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


class TwoAttempts(submitit.helpers.Checkpointable):
    """Sleeps on its first attempt (to be signalled and requeued), returns at once on the second."""

    def __init__(self) -> None:
        self.attempts = 0

    def __call__(self, marker: str) -> int:
        self.attempts += 1
        Path(marker).write_text(str(self.attempts))
        if self.attempts == 1:
            time.sleep(600)
        return self.attempts


def sacct_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return out[0] if out else "?"


def squeue_state(job_id: str) -> str:
    """State as slurmctld sees it. Jobs that are not yet eligible (held by a dependency or a begin
    time) are not in the accounting database yet, so sacct does not list them."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.split()
    return out[0] if out else "?"


def wait_state(job: submitit.Job, want: str, timeout: float = 20.0) -> str:
    """submitit caches states; poll sacct until it reports `want` (accounting lags a little)."""
    deadline = time.time() + timeout
    state = "?"
    while time.time() < deadline:
        state = sacct_state(job.job_id)
        if state == want:
            break
        time.sleep(0.5)
    return state


def check(cond: bool, msg: str) -> None:
    print(("ok    " if cond else "FAIL  ") + msg, flush=True)
    if not cond:
        sys.exit(1)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    requeue = "--no-requeue" not in sys.argv
    folder = Path(args[0] if args else tempfile.mkdtemp(prefix="submitit-smoke-"))
    ex = submitit.AutoExecutor(folder=folder / "%j")
    check(ex.cluster == "slurm", f"AutoExecutor picked slurm (folder {folder})")
    ex.update_parameters(timeout_min=10, slurm_partition=None)

    # 1. single trivial job
    t = time.time()
    job = ex.submit(square, 7)
    res = job.result()
    latency = time.time() - t
    check(res == 49, f"single job {job.job_id}: result {res} in {latency:.1f}s (submit -> result)")
    st = wait_state(job, "COMPLETED")
    # submitit's cached state can be stale right after result() (it saw the result file, not sacct)
    t = time.time()
    while job.state != "COMPLETED" and time.time() - t < 30:
        time.sleep(0.5)
    check(st == "COMPLETED" and job.state == "COMPLETED",
          f"single job sacct state {st}; submitit job.state {job.state} ({time.time() - t:.1f}s after result)")

    # 2. array of 20 with parallelism 4
    ex.update_parameters(slurm_array_parallelism=4)
    t = time.time()
    jobs = ex.map_array(sleep_then, list(range(20)), [1.0] * 20)
    results = [j.result() for j in jobs]
    dt = time.time() - t
    check(results == list(range(20)), f"map_array 20 tasks (1 s each, parallelism 4) in {dt:.1f}s, "
          f"array id {jobs[0].job_id.split('_')[0]}")
    states = {wait_state(j, "COMPLETED") for j in jobs}
    check(states == {"COMPLETED"}, f"array task states {states}")
    ex.update_parameters(slurm_array_parallelism=256)

    # 3. dependency afterok
    first = ex.submit(sleep_then, 1, 3.0)
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{first.job_id}"})
    second = ex.submit(square, 5)
    ex.update_parameters(slurm_additional_parameters={})
    time.sleep(1.0)
    pending = squeue_state(second.job_id)
    print(f"      while held: squeue {pending}, sacct {sacct_state(second.job_id)}, submitit {second.state}")
    r1, r2 = first.result(), second.result()
    check((r1, r2) == (1, 25), f"dependency: {second.job_id} waited on {first.job_id} "
          f"(state while first ran: {pending}), results {r1}, {r2}")
    check(pending == "PENDING", "dependent job was PENDING while its dependency ran")
    st1, st2 = wait_state(first, "COMPLETED"), wait_state(second, "COMPLETED")
    check((st1, st2) == ("COMPLETED", "COMPLETED"), f"dependency states {st1}, {st2}")

    # 4. cancel a pending job -> UncompletedJobError quickly
    ex.update_parameters(slurm_additional_parameters={"begin": "now+1hour"})
    held = ex.submit(square, 3)
    ex.update_parameters(slurm_additional_parameters={})
    time.sleep(0.5)
    check(squeue_state(held.job_id) == "PENDING", f"job {held.job_id} pending (begin=now+1hour); "
          f"sacct {sacct_state(held.job_id)}, submitit {held.state}")
    subprocess.run(["scancel", held.job_id], check=True)
    t = time.time()
    while not held.done() and time.time() - t < 30:
        time.sleep(0.2)
    seen = time.time() - t
    check(held.done() and seen < 10, f"cancelled job seen as done by submitit after {seen:.1f}s")
    # after a job is done without a result file, submitit waits Job._results_timeout_s (15 s by
    # default, meant for slow shared filesystems) before raising; shorten it for this job
    held._results_timeout_s = 1
    t = time.time()
    try:
        held.result()
    except submitit.core.utils.UncompletedJobError as e:
        dt = time.time() - t
        check(dt < 5, f"cancelled job raised UncompletedJobError {dt:.1f}s later "
              f"({str(e).splitlines()[1][:60]})")
    else:
        check(False, "cancelled job returned a result")
    check(wait_state(held, "CANCELLED").startswith("CANCELLED"), f"cancelled job sacct state {sacct_state(held.job_id)}")

    # 5. checkpoint + requeue
    if requeue:
        marker = folder / "requeue-marker"
        job = ex.submit(TwoAttempts(), str(marker))
        t = time.time()
        while not (marker.exists() and marker.read_text() == "1") and time.time() - t < 30:
            time.sleep(0.2)
        check(marker.exists(), f"checkpointable job {job.job_id} running")
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
        t = time.time()
        res = job.result()
        states = subprocess.run(["sacct", "-n", "-D", "-X", "-P", "-j", job.job_id, "-o", "State"],
                                capture_output=True, text=True).stdout.split()
        check(res == 2, f"requeued job finished on attempt {res} {time.time() - t:.1f}s after USR2 "
              f"(sacct: {' -> '.join(states)})")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
