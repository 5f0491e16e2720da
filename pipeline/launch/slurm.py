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

Resources per stage come from ``spec.resources.stage1/stage2``: gpus ->
``--gpus-per-node``, cpus -> ``--cpus-per-task`` (and torch threads), mem_gb ->
``--mem``, time_min -> ``--time``, partition/account/qos/constraint, ``extra`` ->
more sbatch options (``{signal: "USR2@300"}`` overrides the signal delay).
The task is a submitit ``Checkpointable``: on timeout or preemption Slurm sends
USR2 ``signal_delay_s`` before the end, training checkpoints at the next step
and the task is requeued (at most ``MAX_TIMEOUTS`` timeouts), resuming there.
"""

from __future__ import annotations

import json
import os
import time

from ..errors import SlurmError
from ..files import locked
from ..plan import ensure_hosts
from ..sweep import Sweep
from . import queue
from . import status as st
from .layout import ArrayPlan, host_of, job_name, layout, resources, sbatch_params

MAX_TIMEOUTS = 5  # requeues after a timeout (preemptions do not count); each resumes from checkpoints


def _submit(sweep: Sweep, spec, a: ArrayPlan) -> dict:
    """sbatch one array through submitit; append its record to jobs.jsonl; return the record."""
    import submitit

    from ..run.job import RunPack

    ex = submitit.SlurmExecutor(folder=sweep.root / "submitit", max_num_timeout=MAX_TIMEOUTS)
    ex.update_parameters(**sbatch_params(spec, a.stage, a.throttle, a.dependency()))
    threads = resources(spec, a.stage).cpus
    root = str(sweep.root.resolve())
    try:
        with ex.batch():
            jobs = [ex.submit(RunPack(root, t, threads)) for t in a.tasks]
    except Exception as e:  # sbatch refused (bad partition/account, limits, ...)
        msg = str(e).strip().splitlines()
        raise SlurmError(f"sbatch refused the stage-{a.stage} array: {msg[-1] if msg else type(e).__name__}") from None
    first = jobs[0].job_id
    rec = {"stage": a.stage, "job_id": first.split("_")[0], "array": "_" in first, "name": job_name(spec, a.stage),
           "tasks": a.tasks, "depends": a.depends, "throttle": a.throttle,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(sweep.root / st.JOBS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return rec


def _quarantine_shard(sweep: Sweep, rid: str) -> None:
    """A stage-1 run whose module fails its checksum is not done: move its shard aside before rerunning it."""
    src = sweep.shard(rid)
    if src.exists():
        dst = sweep.root / "quarantine" / f"{rid}.bad-module.parquet"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def submit_pending(sweep: Sweep, console, target: str, spec=None) -> int:
    """Submit every run that is failed/timeout/cancelled/missing; returns the number of arrays submitted.

    ``spec`` gives the resources (default: the spec recorded in the sweep folder)."""
    if not queue.have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): run the sweep on this machine with "
                         "`pipeline run SPEC`, or submit from a cluster login node")
    spec = spec or sweep.spec
    with locked(sweep.root / ".submit.lock"):  # one submitter per sweep: a second waits, then finds all queued
        snap = st.snapshot(sweep, slurm=True)
        if not snap.slurm_ok:
            raise SlurmError("cannot tell queued runs from lost ones: " + "; ".join(snap.warnings)
                             + " -- nothing submitted, try again")
        p = snap.plan
        idx = {rid: i for i, rid in enumerate(p["run_id"])}
        s1 = snap.ids(*st.RESUBMIT, stage=1)
        s2 = snap.ids(*st.RESUBMIT, stage=2)
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
            console.print(f"nothing to submit: every run is done ({n_done}) or pending/running ({n_queued}); "
                          f"see `pipeline status {target}`")
            return 0
        ensure_hosts(spec)
        max_size = queue.max_array_size()

        def item(rid):
            i = idx[rid]
            return rid, host_of(p["stage"][i], p["origin_host"][i], p["receiving_host"][i]), p["needs"][i]

        submitted = []
        new_job: dict[str, str] = {}  # stage-1 run id -> array job id submitted now
        for a in layout(spec, 1, [([item(r) for r in s1], [])], max_size):
            rec = _submit(sweep, spec, a)
            submitted.append((a, rec))
            for t in a.tasks:
                for rid in t:
                    new_job[rid] = rec["job_id"]
        groups: dict[str, list] = {}  # dependency ("" = none) -> runs
        for rid in s2:
            need = p["needs"][idx[rid]]
            dep = (new_job.get(need) or snap.active_job(need) or "") if need else ""
            groups.setdefault(dep, []).append(item(rid))
        order = sorted(groups, key=lambda d: (d != "", int(d) if d else 0))
        for a in layout(spec, 2, [(groups[d], [d] if d else []) for d in order], max_size):
            submitted.append((a, _submit(sweep, spec, a)))
    for a, rec in submitted:
        when = f"after job {', '.join(a.depends)} (afterany)" if a.depends else "starts now"
        console.print(f"stage {a.stage}: {a.runs} run(s) in {len(a.tasks)} task(s) of up to {a.pack} "
                      f"({a.pack_source}) -> job {rec['job_id']}, at most {a.throttle} at once, {when}",
                      highlight=False)
    skipped = f" ({n_done} done and {n_queued} pending/running left alone)" if n_done or n_queued else ""
    console.print(f"queued {len(submitted)} array job(s){skipped}; recorded in {sweep.root / st.JOBS_FILE}\n"
                  f"follow with `pipeline status {target}`, redo failures with `pipeline resume {target}`, "
                  f"then `pipeline merge {target}`", highlight=False)
    return len(submitted)
