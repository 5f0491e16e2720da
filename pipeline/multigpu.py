"""Runs that hold more than one GPU: started with ``accelerate launch`` inside their Slurm task.

A stage whose resources ask for ``gpus: 1`` (every stage of ``sweeps/paper.yaml``:
T5-large is 783 M frozen parameters) runs as always: one process a task,
``python -u -m submitit.core._submit FOLDER``.  A stage with ``gpus: G > 1``
gets one process per GPU, started by accelerate with the config kept in the
repo (``configs/accelerate/multi_gpu.yaml``: one node, data parallel, bf16)::

    python -m accelerate.commands.launch --config_file configs/accelerate/multi_gpu.yaml \\
        --num_processes G --num_machines 1 --main_process_port P -m submitit.core._submit FOLDER

``accelerate_command(G)`` returns exactly that list (``G <= 1``: the plain
command).  ``P`` is derived from ``SLURM_JOB_ID`` so that several multi-GPU
tasks sharing a node do not collide on the rendezvous port.

How the Slurm launcher uses it: submitit builds the task's command line as
``{python} -u -m submitit.core._submit FOLDER``, so give the executor
``python=python_for_submitit(G)``.  That is ``python -m pipeline.multigpu --gpus G``,
a small shim (:func:`main`) that drops the ``-u`` and ``exec``s
``accelerate_command(G, ["-m", "submitit.core._submit", FOLDER])`` (``-u`` is
kept as ``PYTHONUNBUFFERED=1``).  The sbatch script needs ``--gpus-per-node=G``
(or ``--gres=gpu:G``) and one task per node, as for one GPU.

Inside the processes, :func:`pipeline.train.accelerator` builds an
``Accelerator`` that picks up the launch (rank, world size; bf16 where the GPU
supports it) and ``train`` deals batches round-robin to the ranks.

Before a spec sets ``gpus > 1``, know what the run code does *not* yet do
(every stage of the paper's sweep has ``gpus: 1``, where none of this arises):

* every rank runs the whole pack: each decides on its own which runs are
  already done, evaluates on the full evaluation split, and writes the same
  shard and module (atomically, so no file is torn; the module bytes are
  identical, the shard's timing fields differ) -- a rank that sees another's
  shard and skips a run would leave the others waiting in a collective;
* ``train`` counts optimizer steps, each on ``G`` batches, so a step sees
  ``G x batch_size`` examples: halve ``batch_size`` for 2 GPUs to keep a
  one-GPU run's numbers;
* the checkpoint-and-requeue signal (USR2) reaches the launcher, not
  necessarily every rank.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "accelerate" / "multi_gpu.yaml"
SUBMITIT_TARGET = ("-m", "submitit.core._submit")
PORT_BASE, PORT_SPAN = 20000, 20000  # rendezvous ports 20000-39999
DEFAULT_PORT = 29500


def main_process_port(env: Mapping[str, str] | None = None) -> int:
    """A rendezvous port unique to this Slurm job (array tasks have their own SLURM_JOB_ID)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID", "")
    return PORT_BASE + int(job) % PORT_SPAN if job.isdigit() else DEFAULT_PORT


def accelerate_command(gpus: int, target: Sequence[str] = SUBMITIT_TARGET, *, config: Path | str = CONFIG,
                       python: str = sys.executable, env: Mapping[str, str] | None = None) -> list[str]:
    """The command that runs ``target`` (``-m module args`` or ``script args``) on ``gpus`` GPUs of this node."""
    if gpus <= 1:
        return [python, "-u", *target]
    return [python, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(gpus), "--num_machines", "1",
            "--main_process_port", str(main_process_port(env)), *target]


def python_for_submitit(gpus: int, python: str = sys.executable) -> str:
    """What to pass as submitit's ``python=`` for a stage with ``gpus`` GPUs a task."""
    if gpus <= 1:
        return shlex.quote(python)
    return f"{shlex.quote(python)} -m pipeline.multigpu --gpus {int(gpus)}"


def shim_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``--gpus G [-u] TARGET...`` -> the accelerate command (``G`` defaults to the GPUs Slurm gave the task)."""
    env = os.environ if env is None else env
    args = list(argv)
    gpus = None
    if args[:1] == ["--gpus"]:
        gpus, args = int(args[1]), args[2:]
    if args[:1] == ["-u"]:
        args = args[1:]
    if not args:
        raise SystemExit("usage: python -m pipeline.multigpu [--gpus G] [-u] (-m MODULE | SCRIPT) [ARGS...]")
    if gpus is None:
        gpus = int(env.get("SLURM_GPUS_ON_NODE", "1").split("(")[0] or 1)
    return accelerate_command(gpus, args, env=env)


def main(argv: Sequence[str] | None = None) -> None:
    cmd = shim_command(sys.argv[1:] if argv is None else argv)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
