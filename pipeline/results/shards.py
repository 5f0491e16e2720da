"""Result shards: one Parquet file per run, written to a temp name and renamed.

A run is done only when its shard exists, reads back, and names the run.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ShardError
from ..files import atomic_path
from ..sweep import code_version

REQUIRED = ("run_id", "stage", "technique", "seed", "accuracy", "macro_f1")

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
# One Arrow schema for a result row, stage 1 and stage 2 alike (the union of what pipeline.run writes: the plan's
# columns, training and evaluation metrics, port checks, provenance).  Merged results are cast to it, so every
# reader sees the same columns with the same types (a column a stage never fills is null, never null-typed).
RESULT_SCHEMA = pa.schema([
    # the planned run (plan.PLAN_COLUMNS, config and settings)
    ("run_id", _S), ("stage", _I), ("technique", _S), ("origin_host", _S), ("receiving_host", _S), ("host_pair", _S),
    ("dataset", _S), ("variant", _S), ("seed", _I), ("condition", _S), ("regime", _I), ("needs", _S),
    ("origin_run", _S), ("config_json", _S), ("settings_json", _S),
    # training and evaluation (pipeline.run.train)
    ("train_steps", _I), ("train_time_s", _F), ("train_samples_per_s", _F), ("train_loss", _F),
    ("accuracy", _F), ("macro_f1", _F), ("auc", _F), ("eval_loss", _F), ("eval_time_s", _F), ("eval_samples_per_s", _F),
    ("eval_examples", _I), ("pred_positive_rate", _F), ("eval_pos_rate", _F), ("majority_acc", _F),
    # stage 1: the saved module; stage 2: the port (pipeline.run.port)
    ("module_sha256", _S), ("module_tensors", _I), ("module_parameters", _I),
    ("origin_module_sha256", _S), ("port_exact", _B), ("ported_tensors", _I), ("ported_parameters", _I),
    ("sample_mean_err", _F), ("sample_std_err", _F),
    # the run's settings and cost (pipeline.run.runner)
    ("lr", _F), ("head_lr", _F), ("pooling", _S), ("train_examples", _I), ("train_pos_rate", _F),
    ("load_time_s", _F), ("total_time_s", _F), ("peak_mem_mb", _F), ("peak_reserved_mb", _F), ("trainable_parameters", _I),
    # the CPUs the run's process was bound to and torch's threads (Slurm's task binding shows here)
    ("cpus_bound", _I), ("torch_threads", _I),
    # what ran, resolved from the hardware (pipeline.run.train.Device): bf16 | fp32, cuda | cpu
    ("precision", _S), ("device_kind", _S),
    # provenance()
    ("v_torch", _S), ("v_transformers", _S), ("v_peft", _S), ("v_accelerate", _S), ("v_datasets", _S),
    ("v_pyarrow", _S), ("v_submitit", _S), ("python", _S), ("git_commit", _S), ("hostname", _S), ("device", _S), ("torch_cuda", _S),
    ("slurm_job_id", _S), ("slurm_array_task_id", _S), ("finished_at", _S),
])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns first, each cast to its type (null where absent), then any other
    columns it has (null-typed ones as strings).  Raises (pyarrow) when a value cannot be cast."""
    cols, names = [], []
    for f in schema:
        i = table.schema.get_field_index(f.name)
        cols.append(table.column(i).cast(f.type) if i >= 0 else pa.nulls(table.num_rows, f.type))
        names.append(f.name)
    for f in table.schema:
        if schema.get_field_index(f.name) < 0:
            col = table.column(f.name)
            cols.append(col.cast(pa.string()) if pa.types.is_null(f.type) else col)
            names.append(f.name)
    return pa.Table.from_arrays(cols, names=names)


def shard_path(sweep_dir: Path, run_id: str) -> Path:
    return Path(sweep_dir) / "shards" / f"{run_id}.parquet"


def write(path: Path, row: dict[str, Any]) -> Path:
    table = pa.Table.from_pylist([row])
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        pq.write_table(table, f)
    return path


PRED_SCHEMA = pa.schema([("run_id", pa.string()), ("example_id", pa.int32()), ("label", pa.int16()),
                         ("pred", pa.int16()), ("correct", pa.bool_()), ("score", pa.float32())])


def write_predictions(path: Path, run_id: str, labels, per_example: dict) -> Path:
    """One row per eval example (same example ids in every run of a dataset), written atomically."""
    n = len(labels)
    preds = per_example["pred"]
    table = pa.table({"run_id": [run_id] * n, "example_id": list(range(n)), "label": list(labels), "pred": preds,
                      "correct": [int(p) == int(y) for p, y in zip(preds, labels)], "score": per_example["score"]},
                     schema=PRED_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read(path: Path) -> dict[str, Any]:
    """Read and validate one shard; raises ShardError naming the file."""
    try:
        t = pq.read_table(path)
    except Exception as e:
        raise ShardError(f"{path}: unreadable shard ({str(e).splitlines()[0][:120]})") from None
    missing = [c for c in REQUIRED if c not in t.column_names]
    if missing:
        raise ShardError(f"{path}: shard lacks columns {missing}")
    if t.num_rows != 1:
        raise ShardError(f"{path}: shard has {t.num_rows} rows, expected 1")
    row = t.to_pylist()[0]
    if row["run_id"] != path.stem:
        raise ShardError(f"{path}: shard names run {row['run_id']!r}, not {path.stem!r}")
    return row


def is_done(sweep_dir: Path, run_id: str) -> bool:
    try:
        read(shard_path(sweep_dir, run_id))
        return True
    except (ShardError, FileNotFoundError):
        return False


@lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "pyarrow", "submitit"):
        try:
            out[f"v_{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            out[f"v_{pkg}"] = None
    return out


def provenance() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    return {
        **_versions(),
        "python": platform.python_version(),
        "git_commit": code_version(),
        "hostname": socket.gethostname(),
        "device": device,
        "torch_cuda": torch.version.cuda,  # the CUDA the torch build was made for (None: a CPU build)
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
