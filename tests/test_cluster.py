"""What a cluster user meets around the runs (issue 27), without a cluster: the job script's CPUs and allocator
setting, the GPU-size constraint, the reserved-memory peak and CPU binding in the shards.  The CPU-binding test
on the real local Slurm is ``tests/test_slurm.py::test_a_job_step_is_bound_to_the_cpus_its_task_asked_for``."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.launch import layout
from pipeline.run import train as T
from pipeline.spec import load


def _script(spec, stage: int = 1) -> list[str]:
    return layout.render_sbatch(Path("/x"), layout.sbatch_params(spec, stage), 2).splitlines()


def test_the_job_step_asks_for_the_tasks_cpus_and_the_allocator_setting(tiny_spec, write_spec):
    tiny_spec["resources"] = {"stage1": {"cpus": 6}, "stage2": {"cpus": 3}}
    spec = load(write_spec(tiny_spec))
    for stage, cpus in ((1, 6), (2, 3)):
        lines = _script(spec, stage)
        assert f"#SBATCH --cpus-per-task={cpus}" in lines
        srun = next(i for i, ln in enumerate(lines) if ln.startswith("srun "))
        # Slurm 22.05-23.02: a step does not inherit the job's --cpus-per-task; the srun line must say it
        assert f" --cpus-per-task {cpus} " in lines[srun]
        alloc = lines.index("export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}")
        assert alloc < srun


def test_gpu_memory_renders_a_constraint_of_the_features_big_enough(tiny_spec, write_spec):
    feats = {"v100": 32, "a100_40g": 40, "a100_80g": 80, "h100": 80}
    tiny_spec["resources"] = {"stage1": {"gpus": 1, "gpu_mem_gb": 40, "gpu_features": feats},
                              "stage2": {"gpus": 1, "gpu_mem_gb": 60, "constraint": "ib", "gpu_features": feats}}
    spec = load(write_spec(tiny_spec))
    assert "#SBATCH --constraint='a100_40g|a100_80g|h100'" in _script(spec, 1)
    assert "#SBATCH --constraint='ib&(a100_80g|h100)'" in _script(spec, 2)
    # no GPU asked for: the features do not apply, the stage's own constraint stays
    tiny_spec["resources"]["stage2"]["gpus"] = 0
    assert "#SBATCH --constraint=ib" in _script(load(write_spec(tiny_spec, "b.yaml")), 2)


def test_gpu_features_too_small_for_the_run_are_refused_in_one_line(tiny_spec, write_spec, capsys):
    from pipeline.cli import main

    tiny_spec["resources"] = {"stage1": {"gpus": 1, "gpu_mem_gb": 90, "gpu_features": {"a100_80g": 80}}}
    path = write_spec(tiny_spec)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no feature's GPU holds gpu_mem_gb 90 GB" in err, err


def test_a_gpu_run_records_the_reserved_peak_beside_the_allocated_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: 5 * 2**30)
    from pipeline.run.runner import peak_reserved_mb

    dev = T.Device("cuda", "bf16")
    assert T.peak_memory_mb(dev) == 3 * 1024 and peak_reserved_mb(dev) == 5 * 1024
    assert peak_reserved_mb(T.Device("cpu", "fp32")) is None


def test_a_shard_records_the_reserved_peak_and_the_cpus_it_ran_on(tiny_spec, write_spec):
    from pipeline.cli import main
    from pipeline.results import load as load_results

    tiny_spec.update({"techniques": ["lora"], "both_directions": False, "regimes": ["zero-shot"]})
    path = write_spec(tiny_spec)
    assert main(["run", str(path), "--workers", "1"]) == 0
    df = load_results(str(path))
    assert {"peak_reserved_mb", "cpus_bound", "torch_threads", "torch_cuda"} <= set(df.columns)
    assert (df["torch_cuda"].isna() if torch.version.cuda is None else df["torch_cuda"] == torch.version.cuda).all()
    import os

    assert (df["cpus_bound"] == len(os.sched_getaffinity(0))).all()
    assert df["peak_reserved_mb"].isna().all()  # CPU runs: no allocator to report
    assert (df["torch_threads"] >= 1).all()


def test_the_dry_run_says_when_nothing_asks_slurm_for_a_gpu_that_large(tiny_spec, write_spec, capsys):
    from pipeline.cli import main

    tiny_spec["resources"] = {"stage1": {"gpus": 1, "gpu_mem_gb": 40},
                              "stage2": {"gpus": 1, "gpu_mem_gb": 40, "gpu_features": {"a100_80g": 80}}}
    assert main(["plan", str(write_spec(tiny_spec)), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "stage 1: gpu_mem_gb 40 is only checked" in out and "stage 2: gpu_mem_gb" not in out
