"""Submit a sweep to Slurm as job arrays through submitit, and return: ``pipeline sweep`` / ``pipeline resume``.

``pipeline sweep SPEC`` plans, writes the sweep folder and submits every run that
is not done, pending or running; ``pipeline resume TARGET`` does the same for an
existing sweep folder.  Both return as soon as the arrays are queued, and both
submit nothing when nothing is left to do, so they are safe to repeat.

Layout of a submission:

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

import fcntl
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from . import status as st
from .sweep import Sweep

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize, and most sites'
TARGET_TASK_S = 600  # an estimated pack runs about this long ...
MIN_TASK_S = 120  # ... and at least this long when there are runs enough (start-up costs 5-30 s)
MAX_TIMEOUTS = 5  # requeues after a timeout (preemptions do not count); each resumes from checkpoints


class SlurmError(RuntimeError):
    """Slurm is missing or refused a submission; str() is one line for the user."""


# ---------------------------------------------------------------- cluster facts
@lru_cache(maxsize=1)
def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (read once); 1001 without Slurm."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(out)


def parse_max_array_size(text: str) -> int:
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", text, re.M)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE


# ---------------------------------------------------------------- packing
def resources(spec, stage: int):
    return spec.resources.stage1 if stage == 1 else spec.resources.stage2


def estimate_run_s(spec, stage: int) -> float:
    """A rough wall time of one run (MiniLM-size host): load + steps + evaluation.

    CPU: ~0.4 ms per token-step (MiniLM, measured), GPUs ~20x less; evaluation ~0.1 ms per token on CPU.
    Only used to choose a pack size when the spec sets none.
    """
    r = resources(spec, stage)
    tr = spec.origin_training if stage == 1 else spec.further_training
    steps = tr.steps if stage == 1 else sum(spec.regimes) / len(spec.regimes)
    gpu = r.gpus > 0
    step_s = tr.batch_size * tr.max_length * (2e-5 if gpu else 4e-4)
    eval_n = sum(d.eval_size for d in spec.datasets) / len(spec.datasets)
    eval_s = eval_n * tr.max_length * (5e-6 if gpu else 1e-4)
    return 5.0 + steps * step_s + eval_s


def pack_size(spec, stage: int, n_runs: int) -> tuple[int, str]:
    """Runs per array task, and where the number comes from."""
    r = resources(spec, stage)
    if r.pack_size:
        return r.pack_size, "spec"
    est = estimate_run_s(spec, stage)
    by_time = max(1, int(TARGET_TASK_S // est))  # a task of about TARGET_TASK_S
    fill = max(1, math.ceil(n_runs / r.array_parallelism))  # enough tasks to use every parallel slot ...
    floor = max(1, math.ceil(MIN_TASK_S / est))  # ... but each task worth its start-up
    size = min(by_time, max(fill, floor))
    fits = max(1, int(r.time_min * 60 * 0.5 // est))  # at most half the time limit
    return max(1, min(size, fits)), f"estimated, ~{est:.0f} s a run"


def make_packs(runs: list[tuple[str, str, str | None]], size: int) -> list[list[str]]:
    """(run id, host, needs) -> packs of at most ``size`` runs, one host per pack, sorted by module needed."""
    by_host: dict[str, list[tuple[str, str | None]]] = {}
    for rid, host, needs in runs:
        by_host.setdefault(host or "", []).append((rid, needs))
    packs = []
    for items in by_host.values():
        items = sorted(items, key=lambda x: x[1] or "")  # stable: plan order within one module
        packs += [[rid for rid, _ in items[i:i + size]] for i in range(0, len(items), size)]
    return packs


def split_arrays(tasks: list, max_size: int) -> list[list]:
    """Tasks -> arrays of at most ``max_size`` tasks (indices 0..MaxArraySize-1)."""
    max_size = max(1, max_size)
    return [tasks[i:i + max_size] for i in range(0, len(tasks), max_size)]


def share_parallelism(parallelism: int, sizes: list[int]) -> list[int]:
    """Split a stage's task cap between its arrays in proportion to their tasks (each >= 1, sum <= cap
    whenever the cap is at least the number of arrays)."""
    total = sum(sizes)
    if not total:
        return []
    out = [max(1, min(n, parallelism * n // total)) for n in sizes]
    spare = parallelism - sum(out)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # hand out what flooring left over
        if spare <= 0:
            break
        add = min(spare, sizes[i] - out[i])
        out[i] += add
        spare -= add
    return out


def signal_delay(time_min: int) -> int:
    """Seconds before the time limit that Slurm sends USR2: enough for a step and a checkpoint, a tenth of
    the limit, between 20 s and 120 s (Slurm may send it up to 60 s earlier still)."""
    return int(min(120, max(20, time_min * 60 // 10)))


def job_name(spec, stage: int) -> str:
    return f"{spec.name}.s{stage}"


def sbatch_params(spec, stage: int, throttle: int | None = None, dependency: str | None = None) -> dict:
    """submitit SlurmExecutor parameters (sbatch-level names) of one stage's arrays."""
    from submitit.slurm.slurm import _convert_mem

    r = resources(spec, stage)
    p = {"job_name": job_name(spec, stage), "time": r.time_min, "cpus_per_task": r.cpus, "mem": _convert_mem(r.mem_gb),
         "signal_delay_s": signal_delay(r.time_min), "array_parallelism": throttle or r.array_parallelism}
    if r.gpus:
        p["gpus_per_node"] = r.gpus
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(r, k):
            p[k] = getattr(r, k)
    if dependency:
        p["dependency"] = dependency
    if r.extra:
        p["additional_parameters"] = {str(k).replace("-", "_"): v for k, v in r.extra.items()}
    return p


def render_sbatch(sweep_root: Path, params: dict, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of n_tasks tasks (works without Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(sweep_root / "submitit"))])
    return _make_sbatch_string(command=command, folder=sweep_root / "submitit",
                               map_count=n_tasks if n_tasks > 1 else None, **params)


# ---------------------------------------------------------------- layout
@dataclass
class ArrayPlan:
    stage: int
    tasks: list[list[str]]
    depends: list[str] = field(default_factory=list)  # array job ids this array waits for (afterany)
    throttle: int = 1
    pack: int = 1
    pack_source: str = ""

    @property
    def runs(self) -> int:
        return sum(len(t) for t in self.tasks)

    def dependency(self) -> str | None:
        return f"afterany:{':'.join(self.depends)}" if self.depends else None


def layout(spec, stage: int, groups: list[tuple[list[tuple[str, str, str | None]], list[str]]],
           max_size: int) -> list[ArrayPlan]:
    """Groups of (runs, dependencies) of one stage -> arrays (packed, split, throttled)."""
    n = sum(len(g) for g, _ in groups)
    if not n:
        return []
    size, source = pack_size(spec, stage, n)
    arrays = []
    for runs, deps in groups:
        for tasks in split_arrays(make_packs(runs, size), max_size):
            arrays.append(ArrayPlan(stage, tasks, sorted(set(deps), key=str), pack=size, pack_source=source))
    for a, t in zip(arrays, share_parallelism(resources(spec, stage).array_parallelism,
                                              [len(a.tasks) for a in arrays]), strict=True):
        a.throttle = t
    return arrays


def _host_of(stage: int, origin: str, receiving: str | None) -> str:
    return origin if stage == 1 else (receiving or "")


# ---------------------------------------------------------------- submitting
@contextmanager
def _locked(sweep: Sweep):
    """One submitter per sweep folder at a time (a second `sweep` waits, then finds everything queued)."""
    sweep.root.mkdir(parents=True, exist_ok=True)
    with open(sweep.root / ".submit.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _submit(sweep: Sweep, spec, a: ArrayPlan) -> dict:
    """sbatch one array through submitit; append its record to jobs.jsonl; return the record."""
    import submitit

    from .job import RunPack

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
    if not st.have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): run the sweep on this machine with "
                         "`pipeline run SPEC`, or submit from a cluster login node")
    spec = spec or sweep.spec
    with _locked(sweep):
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
        _ensure_hosts(spec)
        max_size = max_array_size()

        def item(rid):
            i = idx[rid]
            return rid, _host_of(p["stage"][i], p["origin_host"][i], p["receiving_host"][i]), p["needs"][i]

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


def _ensure_hosts(spec) -> None:
    from .cli import _ensure_hosts as ensure

    ensure(spec)


# ---------------------------------------------------------------- commands
def _user_errors(fn):
    """Slurm refusals end as one line on stderr (exit 2), like every other bad input."""

    def wrapped(a) -> int:
        from .cli import UsageError

        try:
            return fn(a)
        except SlurmError as e:
            raise UsageError(str(e)) from None

    return wrapped


@_user_errors
def cmd_sweep(a) -> int:
    from .cli import console, prepare

    if not st.have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): `pipeline run "
                         f"{a.spec}` runs the sweep on this machine; `pipeline plan {a.spec}` shows the arrays")
    spec, plan, sweep = prepare(a.spec)  # checks everything before anything is submitted
    sweep.write(spec, plan)
    console.print(f"[bold]{spec.name}[/bold]: {len(plan.stage1)} stage-1 + {len(plan.stage2)} stage-2 runs "
                  f"-> {sweep.root}", highlight=False)
    submit_pending(sweep, console, a.spec, spec)
    return 0


@_user_errors
def cmd_resume(a) -> int:
    from .cli import UsageError, _sweep_of, console

    sweep = _sweep_of(a.target)
    if not (sweep.root / "plan.parquet").exists():
        raise UsageError(f"{sweep.root}: no sweep there yet; start it with `pipeline sweep {a.target}`")
    submit_pending(sweep, console, a.target)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="submit a sweep to Slurm as job arrays (stage 2 after stage 1) and return")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.set_defaults(fn=cmd_sweep)
    s = sub.add_parser("resume", help="resubmit exactly the failed and missing runs of a sweep (Slurm)")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.set_defaults(fn=cmd_resume)


# ---------------------------------------------------------------- dry run
def fresh_layout(spec, plan, max_size: int) -> list[ArrayPlan]:
    """The arrays a first `pipeline sweep` would submit (stage-1 job ids as placeholders)."""
    s1 = [(r.run_id, r.labels["origin_host"], None) for r in plan.stage1]
    arrays = layout(spec, 1, [(s1, [])], max_size)
    job = {rid: f"<stage-1 job {i + 1}>" for i, a in enumerate(arrays) for t in a.tasks for rid in t}
    groups: dict[str, list] = {}
    for r in plan.stage2:
        dep = job[r.needs] if r.needs else ""
        groups.setdefault(dep, []).append((r.run_id, r.labels["receiving_host"], r.needs))
    arrays += layout(spec, 2, [(groups[d], [d] if d else []) for d in sorted(groups)], max_size)
    return arrays


def _at_once(throttles: list[int]) -> str:
    if len(throttles) == 1:
        return str(throttles[0])
    lo, hi = min(throttles), max(throttles)
    return f"{sum(throttles)} ({lo if lo == hi else f'{lo}-{hi}'} per array)"


def print_plan_extra(console, spec, plan) -> None:
    from rich.table import Table

    max_size = max_array_size()
    arrays = fresh_layout(spec, plan, max_size)
    t = Table(title=f"Slurm layout of `pipeline sweep` (MaxArraySize {max_size})")
    for c in ("stage", "runs", "pack size", "tasks", "arrays", "at once", "starts"):
        t.add_column(c)
    for stage in (1, 2):
        mine = [a for a in arrays if a.stage == stage]
        for dep in sorted({a.dependency() or "" for a in mine}):
            grp = [a for a in mine if (a.dependency() or "") == dep]
            if not grp:
                continue
            t.add_row(str(stage), str(sum(a.runs for a in grp)), f"{grp[0].pack} ({grp[0].pack_source})",
                      str(sum(len(a.tasks) for a in grp)), str(len(grp)),
                      _at_once([a.throttle for a in grp]), dep or "at once")
    console.print(t)
    sweep_root = Path(spec.output_dir).resolve()
    for stage in (1, 2):
        mine = [a for a in arrays if a.stage == stage]
        if not mine:
            continue
        a = mine[-1]  # for stage 2 the one with a dependency, when there is one
        script = render_sbatch(sweep_root, sbatch_params(spec, stage, a.throttle, a.dependency()), len(a.tasks))
        console.print(f"[bold]sbatch script of a stage-{stage} array[/bold] ({len(a.tasks)} tasks):")
        console.print(script, markup=False, highlight=False, soft_wrap=True)
