"""The training and evaluation loop (accelerate): one screen, no magic.

Batches are length-bucketed: examples are shuffled, cut into mega-batches of
50 batches, sorted by length inside each, batched, and the batches shuffled
again -- random enough for sound training, with little padding.  Everything is
seeded, so a run gives the same numbers whichever process or pack runs it.
"""

from __future__ import annotations

import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_path
from .tasks import Task
from .tracking import log_step

MEGA = 50


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


def accelerator(precision: str = "auto", trackers=()):
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() and precision in ("auto", "bf16")
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no", log_with=list(trackers) or None)


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
            "rng": torch.get_rng_state(),
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
        torch.set_rng_state(state["rng"])
        return int(state["step"]), list(state.get("losses", []))


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
    while step < steps:
        mine = batches(lengths, cfg.batch_size, seed, epoch)[acc.process_index::acc.num_processes]
        skip = step - epoch * len(mine)  # resume mid-epoch on the same batch sequence
        for b in mine[max(skip, 0):]:
            if step >= steps:
                break
            batch = {k: v.to(acc.device) for k, v in task.collate([ids[i] for i in b], [labels[i] for i in b]).items()}
            loss = task.loss(model, batch)
            acc.backward(loss)
            if cfg.max_grad_norm:
                acc.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += len(b)
            losses.append(loss.item())
            log_step(acc, step, losses[-1], opt)
            if on_step:
                on_step(step)
            if ckpt and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or stop_requested()):
                ckpt.save(acc.unwrap_model(model), opt, sched, step, losses)
                if stop_requested():
                    raise Stop(step)
        epoch += 1
    dt = time.perf_counter() - t0
    tail = losses[-10:]
    return {"train_steps": step, "train_time_s": dt, "train_samples_per_s": seen / dt if dt else None,
            "train_loss": sum(tail) / len(tail) if tail else None}


@torch.no_grad()
def evaluate(model, task: Task, texts, labels, *, cfg, acc) -> tuple[dict, dict]:
    """Metrics of the eval set, and its per-example predictions (``pred``, ``score``).

    ``score`` is class 1's score minus class 0's (logits, or label-word
    log-likelihoods) for two classes -- what AUC ranks -- and None otherwise.
    """
    from ..metrics import auc as roc_auc
    from ..metrics import macro_f1

    model.eval()
    ids = task.encode(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    preds = [0] * len(ids)
    margin: list[float | None] = [None] * len(ids)
    loss_sum, t0 = 0.0, time.perf_counter()
    for s in range(0, len(order), cfg.eval_batch_size):
        b = order[s: s + cfg.eval_batch_size]
        batch = {k: v.to(acc.device) for k, v in task.collate([ids[i] for i in b], [labels[i] for i in b]).items()}
        with acc.autocast():
            scores = task.scores(model, batch)
        scores = scores.float()
        loss_sum += torch.nn.functional.cross_entropy(scores, batch["class_ids"], reduction="sum").item()
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


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
