"""The torch side of the techniques: attach a declared technique to a host, and read its module back.

Each technique's declaration (name, defaults, hyperparameter types) is in
``pipeline/techniques/``; ``build`` loads the module named by its ``impl``
(``lora``, ``prefix``, ``prompt``, ``ia3`` through peft; ``adapter`` for the
bottleneck adapter and ``compacter`` written here) and calls its
``attach(model, task, params)``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ...techniques import TRAINING_KEYS, Technique, get, is_head_param


def build(technique: str | Technique, model, task: str, params: dict[str, Any] | None = None):
    """Freeze ``model``, attach a freshly initialised ``technique`` (torch's current RNG) and return the model
    to train.  ``params`` update the declaration's defaults; the training keys (``lr``, ``steps``) are dropped."""
    t = get(technique) if isinstance(technique, str) else technique
    merged = {**t.defaults, **(params or {})}
    for k in TRAINING_KEYS:
        merged.pop(k, None)
    return implementation(t).attach(model, task, merged)


def implementation(technique: str | Technique):
    """The module that holds a technique's torch code (imported on first use)."""
    t = get(technique) if isinstance(technique, str) else technique
    return importlib.import_module(f"{__name__}.{t.impl}")


def module_state(model, include_head: bool = True) -> dict:
    """The module's parameters: every trainable parameter, by name, as detached CPU copies."""
    return {
        name: p.detach().to("cpu").clone().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad and (include_head or not is_head_param(name))
    }
