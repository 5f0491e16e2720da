"""Where every run of a sweep stands (``pipeline status TARGET``).

A run is

* **done**      its shard file exists (stage 1: and its module files too);
* **waiting**   not submitted: the submitter held it back because of the user's submit limit (or its
  stage-1 run was held back), as recorded in ``waiting.json``; ``resume`` submits it when slots free;
* **pending** / **running**   its latest array task is in the queue (``squeue``);
* **failed** / **timeout** / **cancelled**   its latest array task ended that way (``sacct``),
  or it recorded an error in ``errors/<run_id>.txt`` and is not queued;
* **missing**   never submitted, or its job is gone (finished without a shard, purged, lost).

Everything comes from file listings (``shards/``, ``modules/``, ``errors/``), the
``jobs.jsonl`` the submitter wrote (run ids per array task) and ONE ``sacct`` call
plus ONE ``squeue`` call over the recorded array jobs -- no per-run subprocess and
no per-run Parquet read, so it stays fast for 100,000 runs and works after the
submitting shell is gone.  Jobs held by a dependency are not in the accounting
database yet; ``squeue`` sees them.  Without Slurm (a local sweep) runs are done,
failed (error recorded) or missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..errors import UsageError
from ..plan import PLAN_COLUMNS
from ..sweep import Sweep
from . import queue
from .queue import SlurmQueryError, slurm_category

STATES = ("done", "waiting", "pending", "running", "failed", "timeout", "cancelled", "missing")
ACTIVE = ("pending", "running")  # never resubmitted
REDO = ("failed", "timeout", "cancelled", "missing")  # ended without a result: resume redoes them
RESUBMIT = ("waiting", *REDO)
JOBS_FILE = "jobs.jsonl"
WAITING_FILE = "waiting.json"  # {"runs": [...], "reason": "...", "time": "..."}: held back by the last submitter


# ---------------------------------------------------------------- the jobs record
def read_jobs(sweep: Sweep) -> list[dict]:
    """The arrays submitted for this sweep, oldest first (a torn last line is ignored)."""
    path = sweep.root / JOBS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "job_id" in rec and "tasks" in rec:
            out.append(rec)
    return out


def read_waiting(sweep: Sweep) -> dict:
    """The runs the last submitter held back, and why ({} when none)."""
    try:
        rec = json.loads((sweep.root / WAITING_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) and isinstance(rec.get("runs"), list) else {}


def task_key(rec: dict, index: int) -> str:
    """The Slurm id of one task of a recorded array ('12_3'; a one-task submission is plain '12')."""
    return f"{rec['job_id']}_{index}" if rec.get("array", True) else str(rec["job_id"])


def latest_tasks(records: list[dict]) -> dict[str, tuple[int, int]]:
    """run id -> (record index, task index) of the last submission that contained it."""
    out: dict[str, tuple[int, int]] = {}
    for ri, rec in enumerate(records):
        for ti, runs in enumerate(rec["tasks"]):
            for rid in runs:
                out[rid] = (ri, ti)
    return out


# ---------------------------------------------------------------- the snapshot
@dataclass
class Snapshot:
    sweep: Sweep
    plan: dict[str, list]  # columns of plan.parquet (run_id, stage, needs, labels)
    state: dict[str, str]  # run id -> one of STATES
    job_of: dict[str, str]  # run id -> Slurm task id of its latest submission
    records: list[dict]
    queue: dict[str, dict]  # task id -> squeue entry (pending/running)
    errors: set[str]  # run ids with errors/<run_id>.txt
    warnings: list[str] = field(default_factory=list)
    slurm_ok: bool = True  # squeue answered (so 'not queued' is known, not guessed)
    waiting: dict = field(default_factory=dict)  # waiting.json: why runs are held back, since when

    def counts(self) -> dict[int, Counter]:
        out = {1: Counter(), 2: Counter()}
        for rid, stage in zip(self.plan["run_id"], self.plan["stage"], strict=True):
            out[stage][self.state[rid]] += 1
        return out

    def ids(self, *states: str, stage: int | None = None) -> list[str]:
        return [rid for rid, s in zip(self.plan["run_id"], self.plan["stage"], strict=True)
                if self.state[rid] in states and (stage is None or s == stage)]

    def active_job(self, rid: str) -> str | None:
        """The array job id (master id) of a pending/running run."""
        if self.state.get(rid) in ACTIVE and rid in self.job_of:
            return self.job_of[rid].split("_")[0]
        return None


def read_plan(sweep: Sweep, columns=PLAN_COLUMNS) -> dict[str, list]:
    """The plan's label columns (those this sweep's plan.parquet has: older sweeps lack some)."""
    path = sweep.root / "plan.parquet"
    if not path.exists():
        raise UsageError(f"{sweep.root}: no plan.parquet (not a sweep folder; run `pipeline sweep` first)")
    f = pq.ParquetFile(path)  # (read_table imports pyarrow.dataset: slow)
    have = set(f.schema_arrow.names)
    return f.read(columns=[c for c in columns if c in have]).to_pydict()


def _listing(folder: Path, suffix: str) -> set[str]:
    if not folder.exists():
        return set()
    n = len(suffix)
    return {e.name[:-n] for e in os.scandir(folder) if e.name.endswith(suffix) and not e.name.startswith(".")}


def module_files_exist(sweep: Sweep, rid: str) -> bool:
    m = sweep.module(rid)
    return (m / "module.safetensors").exists() and (m / "module.json").exists()


def module_checksum_ok(sweep: Sweep, rid: str) -> bool:
    """The stage-1 module's file matches the sha256 in module.json (no torch import)."""
    m = sweep.module(rid)
    try:
        want = json.loads((m / "module.json").read_text()).get("sha256")
        h = hashlib.sha256()
        with open(m / "module.safetensors", "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, ValueError):
        return False
    return h.hexdigest() == want


def classify(queued: dict | None, accounted: dict | None, has_error: bool, queue_known: bool = True) -> str:
    """The state of a run that has no shard, from its latest task's squeue and sacct entries."""
    cat = None
    if queued is not None:
        cat = slurm_category(queued["state"])
        if cat not in ACTIVE and accounted is not None:  # squeue shows ended jobs for a short while
            cat = slurm_category(accounted["state"])
    elif accounted is not None:
        cat = slurm_category(accounted["state"])
        if cat in ACTIVE and queue_known:  # gone from the queue: the accounting record lags behind
            cat = None
    if cat is None or cat == "completed":  # never submitted, lost, or the task ended without its shard
        return "failed" if has_error else "missing"
    return cat


def snapshot(sweep: Sweep, slurm: bool | None = None) -> Snapshot:
    """Classify every planned run (see the module docstring)."""
    plan = read_plan(sweep)
    shards = sweep.done_ids()
    errors = _listing(sweep.root / "errors", ".txt")
    records = read_jobs(sweep)
    latest = latest_tasks(records)
    warnings: list[str] = []

    done: set[str] = set()
    for rid, stage in zip(plan["run_id"], plan["stage"], strict=True):
        if rid in shards and (stage != 1 or module_files_exist(sweep, rid)):
            done.add(rid)
    job_of = {rid: task_key(records[ri], ti) for rid, (ri, ti) in latest.items()}
    # only arrays that still hold an unfinished run need asking about
    wanted = {job_of[rid] for rid in latest if rid not in done}
    array_ids = {k.split("_")[0] for k in wanted}
    names = {str(r["job_id"]): r.get("name") for r in records}

    queue_: dict[str, dict] = {}  # squeue's entries
    acct: dict[str, dict] = {}
    slurm_ok = True
    if slurm is None:
        slurm = queue.have_slurm()
    if array_ids and not slurm:
        slurm_ok = False
        warnings.append("no Slurm commands here (squeue/sacct): states of submitted jobs are unknown; "
                        "unfinished runs show as failed (error recorded) or missing")
    elif array_ids:
        try:
            queue_ = queue.query_squeue(array_ids)
        except SlurmQueryError as e:
            slurm_ok = False
            warnings.append(f"squeue failed ({e}): queued jobs cannot be told from finished ones")
        try:
            acct = queue.query_sacct(array_ids)
        except SlurmQueryError as e:
            warnings.append(f"sacct failed ({e}): finished jobs show as failed (error recorded) or missing")

    def entry(table: dict, key: str) -> dict | None:
        e = table.get(key)
        if e is None:
            return None
        want = names.get(key.split("_")[0])
        if want and e.get("name") and e["name"] != want:  # job id reused (cluster state wiped)
            return None
        return e

    state: dict[str, str] = {}
    for rid in plan["run_id"]:
        if rid in done:
            state[rid] = "done"
            continue
        state[rid] = classify(entry(queue_, job_of[rid]) if rid in job_of else None,
                              entry(acct, job_of[rid]) if rid in job_of else None,
                              rid in errors, slurm_ok)
    waiting = read_waiting(sweep)
    for rid in waiting.get("runs", ()):
        if state.get(rid) in RESUBMIT:  # held back by the submitter, not lost (queued or done ones moved on)
            state[rid] = "waiting"
    if any(e.get("reason") == "DependencyNeverSatisfied" for e in queue_.values()):
        warnings.append("some jobs wait on a dependency that can never be satisfied: scancel them and resume")
    return Snapshot(sweep, plan, state, job_of, records, queue_, errors, warnings, slurm_ok, waiting)


# ---------------------------------------------------------------- error lines
def error_lines(sweep: Sweep, rid: str, job_key: str | None, n: int = 3) -> list[str]:
    """The last n non-empty lines of the run's recorded error, else of its task's submitit stderr."""
    paths = [sweep.error(rid)]
    if job_key:
        from submitit.core.utils import JobPaths

        paths.append(JobPaths(sweep.root / "submitit", job_id=job_key, task_id=0).stderr)
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        lines = [x.rstrip() for x in text.splitlines() if x.strip()]
        if lines:
            return lines[-n:]
    return []


# ---------------------------------------------------------------- printing
def _label(snap: Snapshot, i: int) -> str:
    p = snap.plan
    if p["stage"][i] == 1:
        return f"stage 1 {p['technique'][i]} on {p['origin_host'][i]}"
    regime = p["regime"][i]
    return (f"stage 2 {p['technique'][i]} {p['host_pair'][i]} {p['condition'][i]} "
            f"{'zero-shot' if not regime else f'+{regime} steps'}")


def print_status(console, snap: Snapshot, lines: int = 3, max_errors: int = 10, target: str = "") -> None:
    from rich.table import Table

    counts = snap.counts()
    t = Table(title=f"{snap.sweep.root}: runs by stage and state")
    t.add_column("stage")
    for s in STATES:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right")
    for stage in (1, 2):
        c = counts[stage]
        t.add_row(str(stage), *[str(c[s]) if c[s] else "-" for s in STATES], str(sum(c.values())))
    tot = counts[1] + counts[2]
    t.add_row("all", *[str(tot[s]) if tot[s] else "-" for s in STATES], str(sum(tot.values())), style="bold")
    console.print(t)
    for w in snap.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if snap.records:
        last = snap.records[-1]
        active = sorted({k.split("_")[0] for k in snap.queue}, key=int)
        console.print(f"{len(snap.records)} array job(s) recorded in {JOBS_FILE}, "
                      f"last submitted {last.get('time', '?')}"
                      + (f"; in the queue: {', '.join(active)}" if active else "; none in the queue"))
    bad = [i for i, rid in enumerate(snap.plan["run_id"]) if snap.state[rid] in ("failed", "timeout", "cancelled")]
    if bad:
        shown = bad if max_errors <= 0 else bad[:max_errors]
        console.print(f"[red]{len(bad)} run(s) failed, timed out or were cancelled[/red]"
                      + (f" (first {len(shown)})" if len(shown) < len(bad) else "") + ":")
        for i in shown:
            rid = snap.plan["run_id"][i]
            job = snap.job_of.get(rid)
            console.print(f"  [bold]{rid}[/bold] {snap.state[rid]} ({_label(snap, i)}"
                          + (f", job {job}" if job else "") + ")", highlight=False)
            for line in error_lines(snap.sweep, rid, job, lines):
                console.print(f"      {line}", highlight=False, markup=False)
    todo = sum(tot[k] for k in REDO)
    where = target or str(snap.sweep.root)
    if tot["waiting"]:
        console.print(f"{tot['waiting']} run(s) waiting, not submitted: {snap.waiting.get('reason') or '?'} "
                      f"(as of {snap.waiting.get('time', '?')}); `pipeline resume {where}` submits more as slots "
                      "free, `--follow` keeps at it", highlight=False)
    if todo:
        console.print(f"{todo} run(s) to redo: `pipeline resume {where}` resubmits exactly those")
    elif tot["pending"] + tot["running"]:
        console.print(f"{tot['pending'] + tot['running']} run(s) queued or running"
                      + ("" if tot["waiting"] else "; nothing to resume yet"))
    elif not tot["waiting"]:
        console.print(f"all runs done: `pipeline merge {where}`")


def verify_done(snap: Snapshot) -> list[str]:
    """Slow, thorough: read every done shard and checksum every done stage-1 module."""
    from ..results import shards

    bad = []
    for rid, stage in zip(snap.plan["run_id"], snap.plan["stage"], strict=True):
        if snap.state[rid] != "done":
            continue
        if not shards.is_done(snap.sweep.root, rid) or (stage == 1 and not module_checksum_ok(snap.sweep, rid)):
            bad.append(rid)
    return bad


