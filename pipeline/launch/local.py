"""Run a sweep on this machine through submitit (``pipeline run``): local processes or in-process debug.

Locally, each stage runs in ``workers`` processes (torch threads shared out between
them) that take runs from one shared list, stage 2 starts when stage 1 is finished,
and a progress bar follows the shards as they land.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import submitit

from ..run.job import RunPack, is_complete
from ..sweep import Sweep


def split(run_ids: list[str], n: int) -> list[list[str]]:
    """n views of all the runs, each starting at another point: the workers steal work from one
    another (a run is claimed by a lock while it runs), so none idles while another has a queue."""
    n = max(1, min(n, len(run_ids)))
    return [run_ids[i * len(run_ids) // n:] + run_ids[:i * len(run_ids) // n] for i in range(n)]


def pending(sweep: Sweep, stage: int) -> list[str]:
    rows = sweep.plan_rows
    done = sweep.done_ids()
    return [rid for rid, r in rows.items() if r["stage"] == stage and not (rid in done and is_complete(sweep, r))]


def run_local(sweep: Sweep, workers: int = 2, debug: bool = False, console=None) -> dict:
    """Run every unfinished run of the sweep on this machine; returns counts."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console or Console()
    folder = sweep.root / "submitit" / "local"
    counts = {"failed": 0}
    for stage in (1, 2):
        todo = pending(sweep, stage)
        total = sum(1 for r in sweep.plan_rows.values() if r["stage"] == stage)
        if not todo:
            console.print(f"stage {stage}: all {total} runs already done")
            continue
        packs = split(todo, 1 if debug else workers)
        # threads follow --workers, not the pack count, so a rerun of a few runs uses the same
        # float reduction order as the first pass and reproduces its numbers bit for bit
        threads = max(1, (os.cpu_count() or 1) // (1 if debug else workers))
        if debug:
            ex = submitit.DebugExecutor(folder=folder)
        else:
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=24 * 60)
        with ex.batch():
            jobs = [ex.submit(RunPack(str(sweep.root), p, threads, shared=True)) for p in packs]
        if debug:  # DebugExecutor runs the job when its result is asked for
            for j in jobs:
                _result(j, counts, console)
            continue
        with Progress(TextColumn(f"stage {stage}"), BarColumn(), MofNCompleteColumn(), TextColumn("runs"),
                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                      transient=False) as bar:
            task = bar.add_task("runs", total=len(todo))
            todo_set = set(todo)
            t0, last = time.time(), (-1, 0.0)
            while not all(j.done() for j in jobs):
                n = len(todo_set & sweep.done_ids())
                bar.update(task, completed=n)
                if not console.is_terminal and n != last[0] and time.time() - last[1] > 30:
                    console.print(f"stage {stage}: {n}/{len(todo)} runs done ({time.time() - t0:.0f} s)")
                    last = (n, time.time())
                time.sleep(1.0)
            bar.update(task, completed=len(todo_set & sweep.done_ids()))
        for j in jobs:
            _result(j, counts, console)
    return counts


def _result(job, counts, console) -> None:
    try:
        job.result()
    except Exception as e:
        counts["failed"] += 1
        msg = str(e).strip().splitlines()
        console.print(f"[red]pack {job.job_id} failed:[/red] {msg[-1] if msg else e}")


def log_dir(sweep: Sweep) -> Path:
    return sweep.root / "submitit"
