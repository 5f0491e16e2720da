"""The job function Slurm (or a local process) runs: a pack of planned runs.

One process, one import of torch, one load per host, several runs.  Runs
already done (valid shard) are skipped, so a resubmitted or requeued pack
only does what is left.  A failing run is recorded in errors/ and the pack
goes on; the task fails at the end if any run failed, so the scheduler shows it.

On preemption or timeout (SIGUSR2 from Slurm) the training loop finishes its
step, saves a checkpoint, and submitit requeues the task, which resumes there.
A run that cannot run on this machine as planned (a GPU run where CUDA is not
usable, bf16 on a GPU without it: ``train.DeviceError``) fails like any other:
one line in its error file, and the task fails rather than being requeued.

Between runs everything a run held is freed (``train.release``: the model,
optimizer and accelerator, cached GPU memory, accelerate's state), so a pack's
GPU memory does not pile up run after run; the cycle collector runs only when
something a run prepared outlived it (a full collection costs about a tiny
run's whole work).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import submitit

from ..files import try_lock
from ..sweep import Sweep


class PackFailed(RuntimeError):
    pass


class _Preemption:
    """Defer submitit's checkpoint-and-requeue signal to the end of a training step."""

    def __init__(self) -> None:
        self.pending = None
        self.in_loop = False
        self.old = None

    def install(self) -> None:
        sig = signal.SIGUSR2
        self.old = signal.getsignal(sig)
        if callable(self.old):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.pending = (signum, frame)
        if not self.in_loop:
            self.fire()

    def requested(self) -> bool:
        return self.pending is not None

    def fire(self) -> None:
        self.old(*self.pending)  # submitit: pickle the checkpointed call, requeue, exit


class RunPack(submitit.helpers.Checkpointable):
    def __init__(self, sweep_dir: str, run_ids: list[str], threads: int | None = None, shared: bool = False):
        self.sweep_dir = str(sweep_dir)
        self.run_ids = list(run_ids)
        self.threads = threads
        # shared: several packs walk the same runs (from different starting points) and take
        # whatever is neither done nor claimed -- work stealing through the per-run lock; a run
        # another pack already failed during this pass is left for the next pass
        self.shared = shared

    def __call__(self) -> dict:
        from . import runner
        from .train import Stop, release

        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        runner.quiet()
        sweep = Sweep(Path(self.sweep_dir))
        rows = sweep.plan_rows
        hosts = runner.HostCache(Path(sweep.spec.models_dir))
        pre = _Preemption()
        pre.install()
        started = time.time()
        done, skipped, failed, busy = [], [], [], []
        for rid in self.run_ids:
            if is_complete(sweep, rows[rid]):
                skipped.append(rid)
                continue
            if self.shared and _failed_since(sweep, rid, started):
                continue
            claim = _claim(sweep, rid)
            if claim is None:  # another live process is running it right now
                busy.append(rid)
                continue
            if sweep.ckpt(rid).exists():  # requeued after a timeout/preemption: training picks it up
                print(f"{rid}: resuming from checkpoint {sweep.ckpt(rid)}", flush=True)
            try:
                pre.in_loop = True
                runner.execute(rows[rid], sweep, hosts, stop_requested=pre.requested)
                done.append(rid)
            except Stop:
                pre.fire()
                raise
            except Exception as e:  # record and go on with the pack
                runner.record_error(sweep, rid, e)
                failed.append(rid)
            finally:
                pre.in_loop = False
                claim.close()  # releases the lock
                release()  # the run's model, optimizer, accelerator and cached GPU memory, before the next run
            if pre.requested():
                pre.fire()
        if failed:
            first = sweep.error(failed[0]).read_text().splitlines()[0]
            raise PackFailed(f"{len(failed)} of {len(self.run_ids)} runs failed (first: {failed[0]}: {first})")
        return {"done": done, "skipped": skipped, "busy": busy, "pid": os.getpid()}


def _failed_since(sweep: Sweep, run_id: str, t: float) -> bool:
    try:
        return sweep.error(run_id).stat().st_mtime >= t
    except FileNotFoundError:
        return False


def _claim(sweep: Sweep, run_id: str):
    """An exclusive lock on the run, held while it executes; None if a live process holds it.

    The kernel drops the lock when its holder dies (even by kill -9), so a crashed run is
    never stuck, and two packs that both get a run (a double submission, a local run beside
    a Slurm task) never execute it at the same time.
    """
    f = try_lock(sweep.root / "locks" / f"{run_id}.lock")
    if f is None:
        return None
    if is_complete(sweep, sweep.plan_rows[run_id]):  # finished by the holder we just waited out
        f.close()
        return None
    return f


def is_complete(sweep: Sweep, row: dict) -> bool:
    """Done = a valid shard (and, for stage 1, a module that passes its checksum)."""
    from ..results import shards
    from . import port

    if not shards.is_done(sweep.root, row["run_id"]):
        return False
    return row["stage"] != 1 or port.module_ok(sweep.module(row["run_id"]))
