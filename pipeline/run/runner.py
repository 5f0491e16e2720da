"""Execute one planned run: load host, attach technique, port, train, evaluate, write shard.

Everything a run needs is in its planned config (``config_json``), so the same
function runs it on a laptop, in a Slurm array task or inside a pack: bit-identical
results on CPU; on a GPU within a tolerance (see pipeline.run.train and docs/cluster.md,
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
from ..conditions import CONDITIONS, FREE, FRESH, NONE, PORTED, SAMPLED, TRAINED
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
        """The host's folder, after checking it is the host the run was planned with (fingerprint, tokenizer, hub commit)."""
        from ..dataid import hub_revision, tokenizer_identity
        from ..hosts import HostError, fingerprint

        path = self.path(host["model"])
        want = host.get("fingerprint")
        if want and want != "unresolved" and Path(path).is_dir():
            got = self._fingerprints.get(path) or fingerprint(path)
            self._fingerprints[path] = got
            if got != want:
                raise HostError(f"host {host['model']} at {path} is not the one this run was planned with "
                                f"(fingerprint {got} != {want}): it was rebuilt or moved; plan the sweep again")
            tok = host.get("tokenizer")
            if tok and tok != "unresolved" and tokenizer_identity(path) != tok:
                raise HostError(f"host {host['model']} at {path}: its tokenizer files changed since this run was "
                                "planned; plan the sweep again (its runs get new ids)")
        rev = host.get("revision")
        if rev and rev != "unresolved":
            now = hub_revision(host["model"], "model")
            if now and now != rev:
                raise HostError(f"host {host['model']} now resolves to commit {now} in the HF cache, not {rev} as "
                                "when this run was planned; plan the sweep again (its runs get new ids)")
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
    """The run's dataset spec from its planned config (the split recipe's version and the content identity are
    hashed, not fields)."""
    return Dataset(name=row["dataset"], **{k: v for k, v in cfg["dataset"].items() if k not in ("split_version", "content")})


def check_data(ds: Dataset, cfg: dict) -> None:
    """Refuse to run on data that is not what the run was planned with (``pipeline.dataid``): a file edited in
    place, a hub dataset that now resolves to another commit.  Planned configs without ``content`` predate it."""
    from ..dataid import UNRESOLVED, dataset_identity
    from ..errors import DataError

    want = cfg["dataset"].get("content")
    if not want or UNRESOLVED in want.values():
        return
    got = dataset_identity(ds.source, ds.revision)
    if UNRESOLVED not in got.values() and got != want:
        raise DataError(f"dataset {ds.name!r} ({ds.source}) is not the data this run was planned with ({got} != "
                        f"{want}): it changed since planning; plan the sweep again (`pipeline run` / `pipeline sweep` "
                        "with its spec) -- its runs get new ids, the old results stay under theirs")


def run_kind(cfg: dict) -> str:
    """How the run scores classes: a classification host is SIMILARITY under ``head: free`` (the
    default; planned configs without the key predate it and had a trained head)."""
    if cfg["task"] != T.CLASSIFICATION:
        return cfg["task"]
    return T.SIMILARITY if cfg.get("head", "trained") == FREE else T.CLASSIFICATION


def make_task(cfg: dict, ds: Dataset, tokenizer, training: Training, path: str | None = None) -> Task:
    pooling = cfg["host"].get("pooling") or "cls"
    if pooling == "auto":
        from ..hosts import default_pooling

        pooling = default_pooling(path) if path else "cls"
    return Task(run_kind(cfg), tokenizer, tuple(ds.label_words), training.max_length, ds.template, pooling,
                temperature=cfg.get("temperature", 20.0), class_bias=cfg.get("class_bias", False),
                chat=bool(cfg["host"].get("chat_template")))


def _no_module(model, task_kind: str):
    """No PEFT module: the bare host (a trained-head formulation's head stays trainable)."""
    from .techniques.adapter import enable_head

    model.requires_grad_(False)
    enable_head(model, task_kind)
    return model


def prepare(cfg: dict, task: Task, model, module_folder=None) -> tuple[torch.nn.Module, dict]:
    """The model a run starts from: the host with what its condition puts on it (pipeline/conditions.py),
    and a record of what was loaded.  Stage 1 and every condition with a module start from the technique's
    fresh initialisation (torch's RNG seeded with the run's seed); stage 2 then loads the stage-1 module's
    tensors the condition names (``module_folder``), bit-exactly, and -- under a trained head -- its head."""
    from .pooling import find

    stage, seed = cfg["stage"], cfg["seed"]
    cond = CONDITIONS[cfg["condition"]] if stage == 2 else None
    if task.kind == T.CLASSIFICATION:
        task.reset_head(model, seed)
    torch.manual_seed(seed)
    with_module = cond is None or cond.module != NONE
    if with_module:
        model = RT.build(T.get(cfg["technique"]), model, task.kind, cfg["params"])  # the fresh initialisation
        pool = find(model) if task.kind == T.SIMILARITY else None
        if pool is not None and pool.class_bias is not None:
            pool.class_bias.requires_grad_(True)  # the per-class bias is part of the module
    else:
        model = _no_module(model, task.kind)
    checks: dict = {}
    if cond is None:
        return model, checks
    formulation = TRAINED if task.kind == T.CLASSIFICATION else FREE
    head = cond.head(formulation, cfg.get("port_head", True))
    checks.update({"loaded_module": cond.module, "loaded_head": head})
    if formulation == FREE:
        checks["loaded_bias"] = cond.class_bias(formulation)
    if not cond.needs_stage1(formulation, cfg.get("port_head", True)):
        return model, checks
    state, info = port.load_module(module_folder)
    module_part = {n: t for n, t in state.items() if not T.is_head_param(n)}
    # what the condition loads, tensor by tensor (Condition.tensor): ported or sampled, or FRESH -- left at the
    # technique's fresh initialisation the model already has (sampled: the class bias, tensors too small to sample)
    parts = {n: cond.tensor(n, t.numel(), formulation) for n, t in module_part.items()}
    fresh = frozenset(n for n, p in parts.items() if p == FRESH)
    if cond.module == SAMPLED:
        drawn, sampled = port.sample_like({n: t for n, t in module_part.items() if parts[n] == SAMPLED}, seed)
        checks.update(sampled)
        module_part = {**drawn, **{n: t for n, t in module_part.items() if parts[n] == PORTED}}
    else:
        module_part = {n: t for n, t in module_part.items() if parts[n] == PORTED}
    if cond.module in (PORTED, SAMPLED):
        checks.update(port.load_into(model, module_part, include_head=False, fresh=fresh))
        checks["fresh_tensors"] = len(fresh)
    if head == PORTED:
        got = port.load_head(model, state)
        checks["port_exact"] = checks.get("port_exact", True) and got["port_exact"]
        checks["ported_head_tensors"] = got["ported_tensors"]
    checks["origin_module_sha256"] = info["sha256"]
    return model, checks


def peak_reserved_mb(dev=None) -> float | None:
    """This run's peak of GPU memory the caching allocator reserved (allocated + cached blocks, fragmentation
    included: what runs a GPU out of memory, what ``nvidia-smi`` shows; reset with the allocated peak by
    ``train.run_settings``); None on CPU."""
    if (dev is None or dev.kind == "cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / 2**20
    return None


def cpu_binding() -> dict:
    """The CPUs this process may run on (``os.sched_getaffinity``: what Slurm's task binding left it) and the
    threads torch uses: a shard's ``cpus_bound`` / ``torch_threads``."""
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus_bound": bound, "torch_threads": torch.get_num_threads()}


def execute(row: dict, sweep: Sweep, hosts: HostCache, stop_requested=lambda: False, on_step=None) -> dict:
    """Run one planned run, write its predictions and then its shard; returns the shard row.

    What each stage-2 condition loads is declared in ``pipeline/conditions.py``
    and done by ``prepare``.
    """
    from .train import (
        Checkpoint,
        accelerator,
        evaluate,
        peak_memory_mb,
        run_settings,
        set_frozen_dtype,
        set_gradient_checkpointing,
        train,
    )

    cfg = json.loads(row["config_json"])
    settings = json.loads(row.get("settings_json") or "{}")
    stage, seed = cfg["stage"], cfg["seed"]
    training, dev = run_settings(cfg, settings)  # device and precision, from the plan and the hardware (or refused)
    t_start = time.perf_counter()
    path = hosts.check(cfg["host"])
    ds = dataset_of(row, cfg)
    check_data(ds, cfg)
    task = make_task(cfg, ds, hosts.tokenizer(cfg["host"]["model"]), training, path)
    train_split, dev_split, eval_split = data.splits(ds)
    if cfg.get("evaluate_on") == "dev":  # a tuning sweep: scored on the development split, never on eval
        eval_split = dev_split

    torch.manual_seed(seed)
    model = hosts.model(cfg["host"]["model"], task)
    model, checks = prepare(cfg, task, model, sweep.module(row["needs"]) if row.get("needs") else None)
    spec = sweep.spec
    set_frozen_dtype(model, training.frozen_dtype)
    set_gradient_checkpointing(model, training.gradient_checkpointing)
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
    result.update({"lr": lr, "head_lr": training.head_lr, "pooling": task.pooling if task.kind in T.ENCODER_KINDS else None,
                   "train_examples": len(train_split), "train_pos_rate": ones / len(train_split),
                   "load_time_s": load_s, "total_time_s": time.perf_counter() - t_start, "peak_mem_mb": peak_memory_mb(dev),
                   "peak_reserved_mb": peak_reserved_mb(dev),
                   "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                   **cpu_binding()})
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
