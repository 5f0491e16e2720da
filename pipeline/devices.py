"""What a stage's resources ask of devices, without torch: the GPUs a task holds and so the device
kind its runs are planned for (in their ids: plan.resolve_precision), costed (cost, launch.layout) and
checked against when they run (run.train.resolve_device)."""

from __future__ import annotations

GPU_OPTIONS = ("gres", "gpus", "gpus-per-node", "gpus-per-task")  # sbatch options that ask for GPUs


def gpu_count(resources) -> int:
    """GPUs a task of the stage holds: ``gpus``, or a GPU asked for through an sbatch option under ``extra``
    (``gres: gpu:1`` / ``gpu:a100:1``, ``gpus``, ``gpus-per-node``, ``gpus-per-task``), so a stage that asks
    that way is planned, costed and laid out as a GPU stage too, not as a CPU one."""
    if resources.gpus:
        return resources.gpus
    for key, value in resources.extra.items():
        key, first = str(key).replace("_", "-"), str(value).split(",")[0].strip().split(":")
        if key in GPU_OPTIONS and (key != "gres" or first[0] == "gpu"):
            return int(first[-1]) if first[-1].isdigit() else 1
    return 0


def device_kind(resources) -> str:
    """cuda when the stage's tasks hold a GPU, else cpu."""
    return "cuda" if gpu_count(resources) else "cpu"
