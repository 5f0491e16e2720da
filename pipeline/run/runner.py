"""Execute one planned run: load host, attach technique, port, train, evaluate, write shard.

Everything a run needs is in its planned config (``config_json``), so the same
function runs it on a laptop, in a Slurm array task or inside a pack: bit-identical
results on CPU; on a GPU within a tolerance (see pipeline.run.train and README,
"Reproducibility per device").  The device and precision it ran with are recorded
in its shard (``device_kind``, ``precision``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import traceback
from pathlib import Path

import torch

from .. import techniques as T
from ..files import atomic_write
from ..results import shards
from ..spec import Dataset, Training
from ..sweep import Sweep
from . import data, export, port, tracking
from . import techniques as RT
from .tasks import Task


def quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


class HostCache:
    """Load each host once per process; hand out fresh deep copies to runs."""

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        self._models: dict[tuple, torch.nn.Module] = {}
        self._tokenizers: dict[str, object] = {}
        self._fingerprints: dict[str, str] = {}

    def path(self, model: str) -> str:
        from ..hosts import resolve_host

        return resolve_host(model, self.models_dir)

    def check(self, host: dict) -> str:
        """The host's folder, after checking it is the host the run was planned with (its fingerprint)."""
        from ..hosts import HostError, fingerprint

        path = self.path(host["model"])
        want = host.get("fingerprint")
        if want and want != "unresolved" and Path(path).is_dir():
            got = self._fingerprints.get(path) or fingerprint(path)
            self._fingerprints[path] = got
            if got != want:
                raise HostError(f"host {host['model']} at {path} is not the one this run was planned with "
                                f"(fingerprint {got} != {want}): it was rebuilt or moved; plan the sweep again")
        return path

    def tokenizer(self, model: str):
        if model not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[model] = AutoTokenizer.from_pretrained(self.path(model))
        return self._tokenizers[model]

    def model(self, model: str, task: Task) -> torch.nn.Module:
        key = (model, task.kind, len(task.label_words), task.pooling)
        if key not in self._models:
            # fp32 master weights whatever dtype the host is stored in (transformers 5 loads dtype="auto":
            # a bf16 host would make new adapter parameters bf16); train.set_frozen_dtype may cast frozen ones
            self._models[key] = task.load_model(self.path(model)).float().eval()
        return copy.deepcopy(self._models[key])


def dataset_of(row: dict, cfg: dict) -> Dataset:
    """The run's dataset spec from its planned config (the split recipe's version is hashed, not a field)."""
    return Dataset(name=row["dataset"], **{k: v for k, v in cfg["dataset"].items() if k != "split_version"})


def make_task(cfg: dict, ds: Dataset, tokenizer, training: Training, path: str | None = None) -> Task:
    pooling = cfg["host"].get("pooling") or "cls"
    if pooling == "auto":
        from ..hosts import default_pooling

        pooling = default_pooling(path) if path else "cls"
    return Task(cfg["task"], tokenizer, tuple(ds.label_words), training.max_length, ds.template, pooling)


def _head_only(model, task_kind: str):
    """The control: no PEFT module, only the (ported) classification head is trainable."""
    from .techniques.adapter import enable_head

    model.requires_grad_(False)
    enable_head(model, task_kind)
    return model


def execute(row: dict, sweep: Sweep, hosts: HostCache, stop_requested=lambda: False, on_step=None) -> dict:
    """Run one planned run, write its predictions and then its shard; returns the shard row.

    Conditions: ``scratch`` = the technique freshly attached; ``ported`` = its
    stage-1 module copied in bit-exactly; ``sampled`` = that module's tensors
    drawn from their own per-tensor N(mean, std); ``head-only`` = no module at
    all, only the stage-1 head (the control for what the head alone carries).
    """
    from .train import Checkpoint, accelerator, evaluate, peak_memory_mb, run_settings, set_frozen_dtype, train

    cfg = json.loads(row["config_json"])
    settings = json.loads(row.get("settings_json") or "{}")
    stage, seed, technique = cfg["stage"], cfg["seed"], T.get(cfg["technique"])
    condition = cfg.get("condition")
    training, dev = run_settings(cfg, settings)  # device and precision, from the plan and the hardware (or refused)
    t_start = time.perf_counter()
    path = hosts.check(cfg["host"])
    ds = dataset_of(row, cfg)
    task = make_task(cfg, ds, hosts.tokenizer(cfg["host"]["model"]), training, path)
    train_split, eval_split = data.load(ds)

    torch.manual_seed(seed)
    model = hosts.model(cfg["host"]["model"], task)
    task.reset_head(model, seed)
    torch.manual_seed(seed)
    if condition == "head-only":
        model = _head_only(model, task.kind)
    else:
        model = RT.build(technique, model, task.kind, cfg["params"])  # the fresh (scratch) initialisation
    checks: dict = {}
    if stage == 2 and condition != "scratch":
        state, info = port.load_module(sweep.module(row["needs"]))
        if condition == "head-only":
            state = {n: t for n, t in state.items() if T.is_head_param(n)}
            checks.update(port.load_head(model, state))
        else:
            state = {n: t for n, t in state.items() if cfg["port_head"] or not T.is_head_param(n)}
            if condition == "sampled":
                state, checks = port.sample_like(state, seed)
            checks.update(port.load_into(model, state, include_head=cfg["port_head"]))
        checks["origin_module_sha256"] = info["sha256"]
    spec = sweep.spec
    set_frozen_dtype(model, training.frozen_dtype)
    acc = accelerator(dev, tracking.trackers(spec.tracking, sweep.root, spec.name, row))
    tracking.start(acc, spec.name, {k: row.get(k) for k in ("run_id", "stage", "technique", "condition", "host_pair",
                                                             "seed", "regime", "dataset", "variant")}
                   | {"params": cfg["params"]})
    model = model.to(acc.device)
    load_s = time.perf_counter() - t_start
    steps = training.steps if stage == 1 else cfg["regime"]
    lr = training.lr or cfg["params"].get("lr") or 1e-3
    torch.manual_seed(seed)
    tr = train(model, task, train_split.texts, train_split.labels, steps=steps, lr=lr, cfg=training, seed=seed,
               acc=acc, ckpt=Checkpoint(sweep.ckpt(row["run_id"])), stop_requested=stop_requested, on_step=on_step)
    model = acc.unwrap_model(model)
    ev, per_example = evaluate(model, task, eval_split.texts, eval_split.labels, cfg=training, acc=acc)
    tracking.finish(acc, tr["train_steps"], ev)
    if stage == 1:
        state = RT.module_state(model)
        sha = port.save_module(state, sweep.module(row["run_id"]), {"run_id": row["run_id"], "technique": cfg["technique"],
                                                                    "host": cfg["host"]["model"]})
        export.save(model, sweep.module(row["run_id"]) / export.FOLDER, state, technique=cfg["technique"],
                    params=cfg["params"], task=task, host=cfg["host"])
        checks.update({"module_sha256": sha, "module_tensors": len(state),
                       "module_parameters": sum(t.numel() for t in state.values())})
    result = {k: v for k, v in row.items()}
    result.update(tr)
    result.update(ev)
    result.update(checks)
    ones = sum(train_split.labels)
    result.update({"lr": lr, "head_lr": training.head_lr, "pooling": task.pooling if task.kind == "classification" else None,
                   "train_examples": len(train_split), "train_pos_rate": ones / len(train_split),
                   "load_time_s": load_s, "total_time_s": time.perf_counter() - t_start, "peak_mem_mb": peak_memory_mb(dev),
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)})
    result.update(shards.provenance())
    result.update(dev.record())
    shards.write_predictions(sweep.preds(row["run_id"]), row["run_id"], eval_split.labels, per_example)
    shards.write(sweep.shard(row["run_id"]), result)
    ck = sweep.ckpt(row["run_id"])
    if ck.exists():
        ck.unlink()
    err = sweep.error(row["run_id"])
    if err.exists():
        err.unlink()
    return result


def record_error(sweep: Sweep, run_id: str, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    atomic_write(sweep.error(run_id), f"{type(exc).__name__}: {exc}\n\n{text}")
