"""Submit a sweep to Slurm as job arrays through submitit, and return (``pipeline sweep`` / ``pipeline resume``).

``pipeline sweep SPEC`` plans, writes the sweep folder and submits every run that
is not done, pending or running; ``pipeline resume TARGET`` does the same for an
existing sweep folder.  Both return as soon as the arrays are queued, and both
submit nothing when nothing is left to do, so they are safe to repeat.

Layout of a submission (computed by :mod:`pipeline.launch.layout`):

* runs are **packed** several to an array task (one Python start, one host load
  per task): ``pack_size`` from the spec's resources, or estimated so that a
  task runs a few minutes (never more than half its time limit).  A pack holds
  runs of one host only; stage-2 packs are sorted by the module they load.
* each stage's tasks are split into arrays of at most the cluster's
  ``MaxArraySize`` (``scontrol show config``; 1001 when Slurm is absent), and the
  stage's ``array_parallelism`` is shared out between its arrays, so no more
  than that many tasks of a stage run at once.
* stage-2 runs that need a stage-1 module which is being produced (submitted now,
  or still pending/running from an earlier submission) go into arrays that wait
  for that stage-1 array (``--dependency=afterany:ID``: a failed origin run does
  not block the rest; its dependants fail with a clear ModuleError and are
  redone by ``resume``).  Scratch runs and runs whose module is already done
  start at once.
* every array is recorded in ``<sweep>/jobs.jsonl`` (stage, job id, run ids per
  task index, time) so that ``status`` and ``resume`` work from any shell later.
* **submit limits**: when the user's association (MaxSubmitJobs) or QOS
  (MaxSubmitJobsPerUser) caps the jobs a user may have in the queue (``sacctmgr``;
  each array task is one job, and the user's jobs already queued count too:
  ``squeue``), only the tasks that fit are submitted; the rest -- and stage-2
  runs whose stage-1 run is among them, which must not get a dependency on a job
  that does not exist -- are recorded as **waiting** in ``<sweep>/waiting.json``
  with the reason, and ``resume`` (or ``--follow``, :mod:`pipeline.launch.follow`)
  submits them as slots free.  An sbatch refused for a limit all the same (a
  race with other submissions) holds back the rest the same way.  Without a
  limit everything is submitted at once.

Resources per stage come from ``spec.resources.stage1/stage2``: gpus ->
``--gpus-per-node`` (or ``--gres=gpu:N`` with ``gpu_request: gres``), cpus -> ``--cpus-per-task`` (and torch threads), mem_gb ->
``--mem``, time_min -> ``--time``, partition/account/qos/constraint, ``extra`` ->
more sbatch options (``{signal: "USR2@300"}`` overrides the signal delay).
The task is a submitit ``Checkpointable``: on timeout or preemption Slurm sends
USR2 ``signal_delay_s`` before the end, training checkpoints at the next step
and the task is requeued (at most ``MAX_TIMEOUTS`` timeouts), resuming there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlurmError
from ..files import atomic_write, locked
from ..plan import ensure_hosts
from ..sweep import Sweep
from . import queue
from . import status as st
from .layout import ArrayPlan, fit, host_of, job_name, layout, resources, sbatch_params, stage2_groups

MAX_TIMEOUTS = 5  # requeues after a timeout (preemptions do not count); each resumes from checkpoints
# what sbatch says when a submission would pass a limit (slurm 22-24: the reason, then the policy line)
_LIMIT_REFUSAL = re.compile(r"MaxSubmitJob|job submit limit|AssocGrpSubmitJobs", re.I)


class LimitRefused(SlurmError):
    """sbatch refused an array because it would pass the user's submit limit."""


@dataclass
class Submission:
    """What one submit_pending call did: arrays submitted, runs held back and why, the limit it worked under."""

    arrays: int = 0
    waiting: int = 0
    reason: str = ""
    limit: queue.SubmitLimit | None = None


@contextmanager
def _no_interrupt():
    """Ctrl-C waits until the block is over: an array sbatch accepted is always recorded in jobs.jsonl
    (else resume would submit its runs a second time)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


def _submit(sweep: Sweep, spec, a: ArrayPlan) -> dict:
    """sbatch one array through submitit; append its record to jobs.jsonl; return the record."""
    import submitit

    from ..run.job import RunPack

    ex = submitit.SlurmExecutor(folder=sweep.root / "submitit", max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(**sbatch_params(spec, a.stage, a.throttle, a.dependency()))
    threads = resources(spec, a.stage).cpus
    root = str(sweep.root.resolve())
    with _no_interrupt():
        try:
            with ex.batch():
                jobs = [ex.submit(RunPack(root, t, threads)) for t in a.tasks]
        except Exception as e:  # sbatch refused (bad partition/account, limits, ...)
            msg = [x for x in str(e).strip().splitlines() if x.strip()]
            last = msg[-1].strip().removeprefix("sbatch: error: ") if msg else type(e).__name__
            why = f"sbatch refused the stage-{a.stage} array: {last}"
            raise (LimitRefused if _LIMIT_REFUSAL.search(str(e)) else SlurmError)(why) from None
        first = jobs[0].job_id
        rec = {"stage": a.stage, "job_id": first.split("_")[0], "array": "_" in first, "name": job_name(spec, a.stage),
               "tasks": a.tasks, "depends": a.depends, "throttle": a.throttle, "torch": torch_build(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(sweep.root / st.JOBS_FILE, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return rec


def torch_build() -> str | None:
    """The installed torch's version with its build label (``2.13.0+cu126``; plain ``2.13.0`` is the default
    index's CUDA build, ``+cpu`` a CPU one), read from its metadata without importing torch; None if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def _quarantine_shard(sweep: Sweep, rid: str) -> None:
    """A stage-1 run whose module fails its checksum is not done: move its shard aside before rerunning it."""
    src = sweep.shard(rid)
    if src.exists():
        dst = sweep.root / "quarantine" / f"{rid}.bad-module.parquet"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def _record_waiting(sweep: Sweep, runs: list[str], reason: str) -> None:
    path = sweep.root / st.WAITING_FILE
    if runs:
        atomic_write(path, json.dumps({"runs": runs, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    elif path.exists():
        path.unlink()


def limit_targets(spec) -> list[tuple[str | None, str | None, str | None]]:
    """(account, qos, partition) of each stage's jobs: the associations and QOS whose limits apply."""
    return sorted({(r.account, r.qos, r.partition) for r in (spec.resources.stage1, spec.resources.stage2)},
                  key=str)


def _submit_all(sweep, spec, arrays: list[ArrayPlan], free: int | None, out: list, held: list[str]
                ) -> tuple[int | None, str]:
    """Submit the arrays that fit into ``free`` slots (appending (array, record) to ``out`` and held-back run
    ids to ``held``); returns the slots left and the refusal that stopped it ('' when none)."""
    todo, back = fit(arrays, free)
    held += back
    for i, a in enumerate(todo):
        try:
            out.append((a, _submit(sweep, spec, a)))
        except LimitRefused as e:
            held += [rid for b in todo[i:] for rid in b.run_ids()]
            return 0, str(e)
        if free is not None:
            free -= len(a.tasks)
    return free, ""


def submit_pending(sweep: Sweep, console, target: str, spec=None, only_waiting: bool = False) -> Submission:
    """Submit every run that is waiting/failed/timeout/cancelled/missing, as far as the user's submit limit
    allows (see the module docstring); ``only_waiting``: only runs held back earlier (``--follow``'s later
    rounds: runs that failed meanwhile are left to ``resume``).

    ``spec`` gives the resources (default: the spec recorded in the sweep folder)."""
    if not queue.have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): run the sweep on this machine with "
                         "`pipeline run SPEC`, or submit from a cluster login node")
    spec = spec or sweep.spec
    res = Submission()
    with locked(sweep.root / ".submit.lock"):  # one submitter per sweep: a second waits, then finds all queued
        snap = st.snapshot(sweep, slurm=True)
        if not snap.slurm_ok:
            raise SlurmError("cannot tell queued runs from lost ones: " + "; ".join(snap.warnings)
                             + " -- nothing submitted, try again")
        p = snap.plan
        idx = {rid: i for i, rid in enumerate(p["run_id"])}
        todo_states = ("waiting",) if only_waiting else st.RESUBMIT
        s1 = snap.ids(*todo_states, stage=1)
        s2 = snap.ids(*todo_states, stage=2)
        # modules that stage-2 runs to redo will load must pass their checksum, else their stage-1 run is redone
        s1_set = set(s1)
        bad = []
        for need in sorted({p["needs"][idx[r]] for r in s2 if p["needs"][idx[r]]} - s1_set):
            if snap.state[need] == "done" and not st.module_checksum_ok(sweep, need):
                bad.append(need)
        for rid in bad:
            _quarantine_shard(sweep, rid)
            s1.append(rid)
        if bad:
            console.print(f"[yellow]{len(bad)} stage-1 module(s) fail their checksum and are redone:[/yellow] "
                          f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        c = snap.counts()
        n_done = c[1]["done"] + c[2]["done"] - len(bad)
        n_queued = sum(c[s][k] for s in (1, 2) for k in st.ACTIVE)
        if not s1 and not s2:
            _record_waiting(sweep, [], "")
            if not only_waiting:
                console.print(f"nothing to submit: every run is done ({n_done}) or pending/running ({n_queued}); "
                              f"see `pipeline status {target}`")
            return res
        ensure_hosts(spec)
        max_size = queue.max_array_size()
        try:
            res.limit = queue.submit_limit(limit_targets(spec))
        except queue.SlurmQueryError as e:
            raise SlurmError(f"cannot count your jobs in the queue against your submit limit ({e}) "
                             "-- nothing submitted, try again") from None
        free = res.limit.free if res.limit else None

        def item(rid):
            i = idx[rid]
            return rid, host_of(p["stage"][i], p["origin_host"][i], p["receiving_host"][i]), p["needs"][i]

        submitted: list[tuple[ArrayPlan, dict]] = []
        held: list[str] = []
        free, refused = _submit_all(sweep, spec, layout(spec, 1, [([item(r) for r in s1], [])], max_size),
                                    free, submitted, held)
        new_job = {rid: rec["job_id"] for a, rec in submitted for rid in a.run_ids()}
        groups, held2 = stage2_groups([item(r) for r in s2], set(held),
                                      lambda need: new_job.get(need) or snap.active_job(need))
        order = sorted(groups, key=lambda d: (d != "", int(d) if d else 0))
        arrays2 = layout(spec, 2, [(groups[d], [d] if d else []) for d in order], max_size)
        if refused:
            held += [rid for a in arrays2 for rid in a.run_ids()]
        else:
            free, refused = _submit_all(sweep, spec, arrays2, free, submitted, held)
        held += held2
        res.arrays, res.waiting = len(submitted), len(held)
        if held:
            used = sum(len(a.tasks) for a, _ in submitted)
            res.reason = refused or (res.limit.reason(used) if res.limit else "")
            if held2:
                res.reason += f" ({len(held2)} stage-2 run(s) wait for their stage-1 run)"
        _record_waiting(sweep, held, res.reason)
    for a, rec in submitted:
        when = f"after job {', '.join(a.depends)} (afterany)" if a.depends else "starts now"
        console.print(f"stage {a.stage}: {a.runs} run(s) in {len(a.tasks)} task(s) of up to {a.pack} "
                      f"({a.pack_source}) -> job {rec['job_id']}, at most {a.throttle} at once, {when}",
                      highlight=False)
    if only_waiting and not submitted:
        return res
    skipped = f" ({n_done} done and {n_queued} pending/running left alone)" if n_done or n_queued else ""
    console.print(f"queued {len(submitted)} array job(s){skipped}; recorded in {sweep.root / st.JOBS_FILE}",
                  highlight=False)
    if held:
        console.print(f"[yellow]{len(held)} run(s) waiting, not submitted:[/yellow] {res.reason}; "
                      f"`pipeline resume {target}` submits more as slots free (`--follow` keeps at it)",
                      highlight=False)
    if not only_waiting:
        console.print(f"follow with `pipeline status {target}`, redo failures with `pipeline resume {target}`, "
                      f"then `pipeline merge {target}`", highlight=False)
    return res


def dry_run(console, spec, plan) -> None:
    """``pipeline sweep --dry-run``: the arrays a first submission would make, and for each one line with
    Slurm's answer to ``sbatch --test-only`` on its script (the estimated start; nothing is submitted).
    A stage-2 array's dependency is left out of its test (the stage-1 job does not exist yet); arrays past
    the user's submit limit are listed as waiting."""
    from .layout import fresh_layout, print_layout, render_sbatch

    max_size = queue.max_array_size()
    arrays = fresh_layout(spec, plan, max_size)
    print_layout(console, spec, plan, max_size, scripts=False)
    if not queue.have_slurm():
        console.print("sbatch --test-only skipped: Slurm is not reachable here (no sbatch/squeue); "
                      "`pipeline plan` shows the sbatch scripts", highlight=False)
        return
    try:
        limit = queue.submit_limit(limit_targets(spec))
    except queue.SlurmQueryError as e:
        console.print(f"[yellow]warning:[/yellow] cannot count your queued jobs ({e}): submit limit not applied")
        limit = None
    tasks = sum(len(a.tasks) for a in arrays)
    if limit:
        console.print(f"submit limit: {limit.reason()}: {min(limit.free, tasks)} of {tasks} task(s) would be "
                      "submitted now, the rest wait (`pipeline resume` / `--follow` submit them as slots free)",
                      highlight=False)
    fitting, _ = fit(arrays, limit.free if limit else None)  # a prefix of arrays, the last one maybe cut short
    root = Path(spec.output_dir).resolve()
    for i, a in enumerate(arrays):
        n = len(fitting[i].tasks) if i < len(fitting) else 0
        head = (f"array {i + 1}/{len(arrays)} (stage {a.stage}, {len(a.tasks)} task(s), {a.runs} run(s)"
                + (f", after {', '.join(a.depends)}" if a.depends else "") + ")")
        if not n:
            console.print(f"{head}: waits (submit limit)", highlight=False)
            continue
        answer = queue.sbatch_test_only(render_sbatch(root, sbatch_params(spec, a.stage, min(a.throttle, n)), n))
        if "Unable to contact" in answer:
            console.print(f"sbatch --test-only skipped: Slurm is not reachable ({answer.removeprefix('refused: ')})",
                          highlight=False)
            return
        part = f" of its first {n} task(s) (the rest wait: submit limit)" if n < len(a.tasks) else ""
        dep = " (without its dependency)" if a.depends else ""
        console.print(f"{head}: sbatch --test-only{part}{dep}: {answer}", highlight=False)
