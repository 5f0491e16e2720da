"""Run a sweep on this machine through submitit (``pipeline run``): local processes or in-process debug.

Locally, each stage runs in ``workers`` processes (torch threads shared out between
them) that take runs from one shared list, stage 2 starts when stage 1 is finished,
and a progress bar follows the shards as they land.  A stage planned for a GPU
(its resources request one) spreads its workers over the GPUs visible here, one
``CUDA_VISIBLE_DEVICES`` per worker (several workers share a GPU when there are
more workers than GPUs); a CPU stage's workers see no GPU.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import submitit

from ..devices import gpu_count
from ..errors import UsageError
from ..run.job import RunPack, is_complete
from ..sweep import Sweep
from .layout import resources


def split(run_ids: list[str], n: int) -> list[list[str]]:
    """n views of all the runs, view i starting i runs further: the workers steal work from one
    another (a run is claimed by a lock while it runs), so none idles while another has a queue, and
    together they take the runs in the given order (``longest_first``: the stage ends with short runs,
    not with one worker finishing a long one while the others idle)."""
    n = max(1, min(n, len(run_ids)))
    return [run_ids[i:] + run_ids[:i] for i in range(n)]


def longest_first(sweep: Sweep, run_ids: list[str]) -> list[str]:
    """``run_ids`` by their training work (steps x batch size: a stage-1 run's budget, a stage-2 run's
    regime), the most first; plan order among equals."""
    rows = sweep.plan_rows

    def work(rid: str) -> int:
        cfg = json.loads(rows[rid]["config_json"])
        training = cfg.get("training") or {}
        steps = training.get("steps") if cfg.get("stage") == 1 else cfg.get("regime")
        return int(steps or 0) * int(training.get("batch_size") or 1)

    return sorted(run_ids, key=work, reverse=True)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without torch: ``CUDA_VISIBLE_DEVICES`` when set (ids or UUIDs),
    else one per ``GPU`` line of ``nvidia-smi -L``; [] when there is none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",")]
        return ids[:ids.index("-1")] if "-1" in ids else [d for d in ids if d]
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def worker_gpus(workers: int, gpus: list[str]) -> list[str]:
    """The GPU each of ``workers`` local workers uses: round robin over ``gpus``."""
    return [gpus[i % len(gpus)] for i in range(workers)] if gpus else []


def executor(folder: Path, gpu: str | None = None) -> submitit.LocalExecutor:
    """A local executor whose processes see only ``gpu`` (None: no GPU, submitit's default)."""
    ex = submitit.LocalExecutor(folder=folder)
    params: dict = {"timeout_min": 24 * 60}
    if gpu is not None and gpu.isdigit():
        params.update(gpus_per_node=1, visible_gpus=[int(gpu)])
    elif gpu is not None:  # a UUID or MIG id, which submitit's visible_gpus does not take
        params["setup"] = [f"export CUDA_VISIBLE_DEVICES={shlex.quote(gpu)}"]
    ex.update_parameters(**params)
    return ex


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
        packs = split(longest_first(sweep, todo), 1 if debug else workers)
        # threads follow --workers, not the pack count, so a rerun of a few runs uses the same
        # float reduction order as the first pass and reproduces its numbers bit for bit
        threads = max(1, (os.cpu_count() or 1) // (1 if debug else workers))
        gpus: list[str] = []
        if gpu_count(resources(sweep.spec, stage)) and not debug:
            gpus = worker_gpus(len(packs), visible_gpus())
            if not gpus:
                raise UsageError(f"stage {stage} is planned for a GPU (resources.stage{stage} requests one), but no "
                                 "GPU is visible here (CUDA_VISIBLE_DEVICES, nvidia-smi): run it where one is, or "
                                 f"plan it for CPU with --set resources.stage{stage}.gpus=0 (other run ids)")
        if debug:
            ex = submitit.DebugExecutor(folder=folder)
            jobs = [ex.submit(RunPack(str(sweep.root), p, threads, shared=True)) for p in packs]
        else:
            jobs = [executor(folder, gpus[i] if gpus else None).submit(RunPack(str(sweep.root), p, threads, shared=True))
                    for i, p in enumerate(packs)]
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
