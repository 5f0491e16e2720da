"""The training and evaluation loop (accelerate): one screen, no magic.

Batches are length-bucketed: examples are shuffled, cut into mega-batches of
50 batches, sorted by length inside each, batched, and the batches shuffled
again -- random enough for sound training, with little padding.

Reproducibility (docs/cluster.md, "Reproducibility per device"): everything is seeded and a checkpoint
restores every RNG the run uses, so on CPU a run gives bit-identical numbers whichever process,
pack or executor runs it (at the same torch thread count).  On a GPU it is reproducible only
within a tolerance (bf16 autocast, nondeterministic SDPA backward and NLL-loss kernels, other
kernels on another GPU model): ``PIPELINE_DETERMINISTIC=1`` turns on torch's deterministic
algorithms (``deterministic()``), bit-identical on one GPU model and software stack, at a cost in
speed.  The device and precision a run uses are resolved once from the plan and the hardware
(:func:`resolve_device`) and recorded in its shard; what cannot be honoured is refused.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_path
from ..spec import Training
from ..techniques.base import CLASSIFICATION
from .memory import accelerator_class, release, reset_accelerate  # noqa: F401  (release: job, benches)
from .tasks import Task
from .tracking import log_step

MEGA = 50
LOSS_READ_EVERY = 50  # step losses stay on the device and are read (one sync) this often, and at the end
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    out = []
    for s in range(0, len(idx), batch_size * MEGA):
        chunk = sorted(idx[s: s + batch_size * MEGA], key=lambda i: lengths[i])
        out += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- device and precision
class DeviceError(RuntimeError):
    """The run cannot run as planned on this machine (one line: what is wrong and what to do)."""


@dataclass(frozen=True)
class Device:
    """What a run really uses, resolved once from its plan and the hardware: ``kind`` cuda | cpu and
    ``precision`` bf16 (autocast) | fp32 -- never fp16 (T5 v1.1 overflows in it)."""

    kind: str
    precision: str

    def record(self) -> dict:
        """The shard's columns (``precision``, ``device_kind``)."""
        return {"precision": self.precision, "device_kind": self.kind}


def gpu_allocated() -> bool:
    """Whether the scheduler handed this process a GPU (``SLURM_GPUS_ON_NODE``, a non-empty
    ``CUDA_VISIBLE_DEVICES``), whether or not torch can use it."""
    slurm = os.environ.get("SLURM_GPUS_ON_NODE", "").strip()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return slurm not in ("", "0") or visible not in ("", "-1", "NoDevFiles")


def resolve_device(planned_device: str | None, planned_precision: str) -> Device:
    """The run's device and precision on this machine, or DeviceError.

    ``planned_device`` is the plan's ``device`` (cuda when the stage's resources request a GPU; None in a
    plan made before it was recorded: then a GPU the scheduler allocated counts as planned).  A run planned
    for a GPU never falls back to CPU (a CPU-only torch wheel, a driver too old for the wheel: it would train
    on CPU until its time limit).  bf16 needs native bf16 (``is_bf16_supported(including_emulation=False)``:
    Ampere or newer; emulated bf16 on a V100/T4 is slower than fp32): a run planned in bf16 on a GPU without
    it is refused, not silently run in fp32 under the bf16 run id.  ``auto`` (old plans) resolves to bf16
    where native, else fp32.  On CPU, bf16 (only when planned so explicitly) is accelerate's CPU autocast."""
    cuda = torch.cuda.is_available()
    want_gpu = planned_device == "cuda" or (planned_device is None and gpu_allocated())
    if want_gpu and not cuda:
        why = (f"this torch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None else
               f"CUDA is not usable (torch built for CUDA {torch.version.cuda}: driver too old, or no device visible;"
               f" CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r})")
        raise DeviceError(f"run planned for a GPU, but {why}: refusing to train on CPU; install a CUDA build of "
                          "torch that matches the node's driver, or plan the stage without a GPU (resources gpus: 0)")
    kind = "cuda" if want_gpu or (planned_device is None and cuda) else "cpu"
    if kind == "cpu":
        return Device("cpu", "bf16" if planned_precision == "bf16" else "fp32")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    if planned_precision == "bf16" and not native:
        raise DeviceError(f"run planned in bf16, but {torch.cuda.get_device_name()} has no native bf16 (needs compute "
                          "capability >= 8.0): plan it with precision: fp32 (other run ids), or run it on an Ampere "
                          "or newer GPU (resources constraint)")
    return Device("cuda", "bf16" if planned_precision == "bf16" or (planned_precision == "auto" and native) else "fp32")


def run_settings(cfg: dict, settings: dict) -> tuple[Training, Device]:
    """A planned run's Training and the Device it runs on, resolved once (before anything is loaded: a run
    that cannot run here fails in a moment).  Starts the run's accounting: the CUDA peak-memory counter is
    reset, so ``peak_mem_mb`` is this run's peak, not the largest of every earlier run in the process."""
    training = dict(cfg["training"] or {})
    planned = training.pop("device", None)
    tr = Training(**{**settings, **training})
    dev = resolve_device(planned, tr.precision)
    if dev.kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    deterministic()
    return tr, dev


def deterministic() -> None:
    """``PIPELINE_DETERMINISTIC=1``: torch's deterministic algorithms (bit-identical GPU reruns on one GPU model
    and stack; slower: deterministic scatter/index kernels, no cuDNN autotuning).  Off by default; CPU runs are
    deterministic without it."""
    if os.environ.get("PIPELINE_DETERMINISTIC", "") not in ("", "0"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def accelerator(dev: Device | str, trackers=()):
    """A fresh Accelerator for one run on ``dev`` (accelerate's state from an earlier run is reset first);
    a precision name instead of a Device: resolved here, as for a plan without a device (benches, tests)."""
    if isinstance(dev, str):
        dev = resolve_device(None, dev)
    reset_accelerate()
    return accelerator_class()(cpu=dev.kind == "cpu", log_with=list(trackers) or None,
                               mixed_precision="no" if dev.precision == "fp32" else dev.precision)


def set_frozen_dtype(model, frozen_dtype: str) -> None:
    """Cast the frozen (host) weights to ``frozen_dtype``; trainable parameters stay fp32 (master weights).
    Hosts load in fp32 (runner.HostCache), so fp32 is a no-op; bf16 halves the frozen weights' memory and
    saves autocast's per-step bf16 copies of them (needs bf16 precision; plan.resolve_precision checks)."""
    dtype = DTYPES[frozen_dtype]
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def set_gradient_checkpointing(model, on: bool) -> None:
    """Recompute the host's activations in the backward pass instead of keeping them (decoder hosts on a GPU:
    activation memory ~ layers x batch x length falls to ~ one layer's); the same numbers, more compute."""
    if not on:
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def to_device(batch: dict, device, task: Task) -> dict:
    """A collated batch on ``device`` (pinned, non-blocking copies on CUDA).  A text-to-text batch keeps its
    ``class_ids`` on the CPU: the task reads them as a list to build its targets (a device tensor there
    would be a host sync every step)."""
    cuda = torch.device(device).type == "cuda"
    keep = ("class_ids",) if task.kind != CLASSIFICATION else ()
    return {k: v if k in keep else (v.pin_memory() if cuda else v).to(device, non_blocking=cuda)
            for k, v in batch.items()}


# ---------------------------------------------------------------- RNG
def rng_state() -> dict:
    """Every RNG a run may draw from: torch's CPU generator, every CUDA device's (dropout on a GPU draws from
    them), Python's ``random`` and numpy's global one (when numpy is loaded)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def set_rng_state(state) -> None:
    if isinstance(state, torch.Tensor):  # a checkpoint from before every RNG was saved: the CPU one only
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise DeviceError("checkpoint was written on a GPU, but CUDA is not available here")
        torch.cuda.set_rng_state_all(state["cuda"])
    np = sys.modules.get("numpy")
    if np is not None and "numpy" in state:
        np.random.set_state(state["numpy"])


@dataclass
class Checkpoint:
    """Trainable state + optimizer + scheduler + RNG at a step, written atomically."""

    path: Path

    def save(self, model, opt, sched, step: int, losses=()) -> None:
        state = {
            "step": step,
            "losses": list(losses)[-10:],  # train_loss averages the last 10 steps, across a resume too
            "params": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "rng": rng_state(),
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self, model, opt, sched) -> tuple[int, list[float]]:
        if not self.path.exists():
            return 0, []
        state = torch.load(self.path, weights_only=False)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in state["params"].items():
                params[n].copy_(t)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        set_rng_state(state["rng"])
        return int(state["step"]), list(state.get("losses", []))


@dataclass
class _Groups:
    """The optimizer's param groups (name, lr) as they were at a step: what tracking.log_step reads."""

    param_groups: list[dict]


class Stop(Exception):
    """Raised inside the loop when a checkpoint-and-stop was requested (preemption)."""


def param_groups(model, lr: float, head_lr: float) -> list[dict]:
    """Two optimizer groups: the PEFT module at the technique's ``lr``, the classification head at
    ``head_lr`` (one value for every technique, so techniques differ only in their module)."""
    from ..techniques.base import is_head_param

    module, head = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if is_head_param(name) else module).append(p)
    groups = [{"params": module, "lr": lr, "name": "module"}, {"params": head, "lr": head_lr, "name": "head"}]
    return [g for g in groups if g["params"]]


def train(model, task: Task, texts, labels, *, steps: int, lr: float, cfg, seed: int, acc,
          ckpt: Checkpoint | None = None, stop_requested=lambda: False, on_step=None) -> dict:
    if steps <= 0:
        return {"train_steps": 0, "train_time_s": 0.0, "train_samples_per_s": None, "train_loss": None}
    from transformers import get_linear_schedule_with_warmup

    ids = task.encode(texts)
    groups = param_groups(model, lr, cfg.head_lr)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * steps), steps)
    model, opt = acc.prepare(model, opt)
    step, losses = ckpt.load(acc.unwrap_model(model), opt, sched) if ckpt else (0, [])
    model.train()
    t0, seen, epoch = time.perf_counter(), 0, 0
    lengths = [len(x) for x in ids]
    pending: list[tuple[int, torch.Tensor, list[dict]]] = []  # (step, loss on the device, lrs) not read yet

    def read_losses() -> None:  # one host sync for every pending step
        if not pending:
            return
        values = torch.stack([loss for _, loss, _ in pending]).float().tolist()
        for (s, _, groups), v in zip(pending, values, strict=True):
            losses.append(v)
            log_step(acc, s, v, _Groups(groups))
        pending.clear()

    while step < steps:
        mine = batches(lengths, cfg.batch_size, seed, epoch)[acc.process_index::acc.num_processes]
        skip = step - epoch * len(mine)  # resume mid-epoch on the same batch sequence
        for b in mine[max(skip, 0):]:
            if step >= steps:
                break
            batch = to_device(task.collate([ids[i] for i in b], [labels[i] for i in b]), acc.device, task)
            loss = task.loss(model, batch)
            acc.backward(loss)
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            groups = [{"name": g.get("name", "module"), "lr": g["lr"]} for g in opt.param_groups]  # as logged before
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += len(b)
            pending.append((step, loss.detach(), groups))
            if len(pending) >= LOSS_READ_EVERY:
                read_losses()
            if on_step:
                on_step(step)
            if ckpt and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop_requested()):
                read_losses()
                ckpt.save(acc.unwrap_model(model), opt, sched, step, losses)
                if stop_requested():
                    raise Stop(step)
        epoch += 1
    read_losses()
    dt = time.perf_counter() - t0
    tail = losses[-10:]
    return {"train_steps": step, "train_time_s": dt, "train_samples_per_s": seen / dt if dt else None,
            "train_loss": sum(tail) / len(tail) if tail else None}


@torch.no_grad()
def evaluate(model, task: Task, texts, labels, *, cfg, acc) -> tuple[dict, dict]:
    """Metrics of the eval set, and its per-example predictions (``pred``, ``score``).

    ``score`` is class 1's score minus class 0's (logits, or label-word
    log-likelihoods) for two classes -- what AUC ranks -- and None otherwise.

    Scores are computed in fp32 whatever the training precision: accelerate's autocast wrapper is taken
    off the model, and a model whose weights are all fp32 is evaluated outside autocast, so GPU-bf16 and
    CPU-fp32 runs score alike (to fp32 rounding); with bf16 frozen weights the forward runs under
    autocast and the logits are cast to fp32 before any softmax (Task.scores).
    """
    from ..metrics import auc as roc_auc
    from ..metrics import macro_f1

    model = acc.unwrap_model(model, keep_fp32_wrapper=False)  # also ends the wrapper's reference cycle
    mixed = any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point())
    model.eval()
    ids = task.encode(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    preds = [0] * len(ids)
    margin: list[float | None] = [None] * len(ids)
    loss_sum, t0 = 0.0, time.perf_counter()
    for s in range(0, len(order), cfg.eval_batch_size):
        b = order[s: s + cfg.eval_batch_size]
        batch = to_device(task.collate([ids[i] for i in b], [labels[i] for i in b]), acc.device, task)
        with acc.autocast() if mixed else contextlib.nullcontext():
            scores = task.scores(model, batch)
        scores = scores.float().cpu()  # the batch's one host sync
        gold_b = torch.tensor([labels[i] for i in b])
        loss_sum += torch.nn.functional.cross_entropy(scores, gold_b, reduction="sum").item()
        two = scores.shape[-1] == 2
        diff = (scores[:, 1] - scores[:, 0]).tolist() if two else [None] * len(b)
        for i, p, m in zip(b, scores.argmax(-1).tolist(), diff):
            preds[i], margin[i] = p, m
    dt = time.perf_counter() - t0
    gold = list(labels)
    counts = [gold.count(c) for c in range(len(task.label_words))]
    auc = roc_auc(gold, margin) if margin and margin[0] is not None else None
    auc = None if auc is None or auc != auc else auc  # NaN (one class only) stored as null
    metrics = {"accuracy": sum(int(p == y) for p, y in zip(preds, gold)) / len(gold),
               "macro_f1": macro_f1(preds, gold, len(task.label_words)), "auc": auc,
               "eval_loss": loss_sum / len(gold), "eval_time_s": dt, "eval_samples_per_s": len(gold) / dt if dt else None,
               "eval_examples": len(gold), "pred_positive_rate": sum(preds) / len(preds),
               "eval_pos_rate": counts[1] / len(gold) if len(counts) > 1 else None,
               "majority_acc": max(counts) / len(gold)}
    return metrics, {"pred": preds, "score": margin}


def peak_memory_mb(dev: Device | None = None) -> float:
    """This run's peak of GPU memory allocated (the counter is reset per run: ``run_settings``); on CPU the
    process's peak resident memory (which includes earlier runs of the process)."""
    if (dev is None or dev.kind == "cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
