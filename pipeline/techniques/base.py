"""The one interface every PEFT technique implements.

A technique turns a frozen host model into a model whose *trainable*
parameters are exactly the PEFT module (plus, for classification hosts, the
classification head).  Porting, sampling and checkpointing all work on
``module_state(model)`` -- the trainable parameters by name -- so every
technique, peft-backed or written here, is treated alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Task formulations a host can have.
CLASSIFICATION = "classification"  # encoder + classification head (AutoModelForSequenceClassification)
TEXT_TO_TEXT = "text-to-text"  # encoder-decoder, label verbalised as a word (AutoModelForSeq2SeqLM)
TASKS = (CLASSIFICATION, TEXT_TO_TEXT)

# Keys of a technique's params that configure its training, not the module: its learning rate and
# its origin-training step budget (overriding origin_training.steps).  ``attach`` never sees them.
TRAINING_KEYS = ("lr", "steps")

# Parameter-name fragments that belong to a classification head.
HEAD_MARKERS = ("classifier", "score")


def is_head_param(name: str) -> bool:
    """True for parameters of the classification head (ported only when the spec asks)."""
    return any(f"{m}." in name or name.startswith(m) for m in HEAD_MARKERS)


@dataclass(frozen=True)
class Technique:
    """A PEFT technique: its name, default hyperparameters and how to attach it.

    ``attach(model, task, params)`` freezes the host, injects a freshly
    initialised module (initialised from torch's current RNG state, exactly as
    the technique initialises) and returns the model to train.  ``params`` is
    ``defaults`` updated with the spec's per-technique values; the training
    keys (``lr``) are ignored by ``attach``.
    """

    name: str
    attach: Callable[[nn.Module, str, dict[str, Any]], nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    paper: bool = False  # one of the study's four techniques

    def build(self, model: nn.Module, task: str, params: dict[str, Any] | None = None) -> nn.Module:
        merged = {**self.defaults, **(params or {})}
        for k in TRAINING_KEYS:
            merged.pop(k, None)
        return self.attach(model, task, merged)


def module_state(model: nn.Module, include_head: bool = True) -> dict[str, torch.Tensor]:
    """The module's parameters: every trainable parameter, by name, as detached CPU copies."""
    return {
        name: p.detach().to("cpu").clone().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad and (include_head or not is_head_param(name))
    }
