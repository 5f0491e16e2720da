"""Shared glue for techniques that peft implements."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from ...techniques.base import CAUSAL_LM, CLASSIFICATION, SIMILARITY

PEFT_TASK = {CLASSIFICATION: "SEQ_CLS", SIMILARITY: "FEATURE_EXTRACTION", CAUSAL_LM: "CAUSAL_LM"}


def task_type(task: str) -> str:
    return PEFT_TASK.get(task, "SEQ_2_SEQ_LM")


def wrap(model: nn.Module, config: Any) -> nn.Module:
    import peft

    model.requires_grad_(False)
    return peft.get_peft_model(model, config)


def host_config(model: nn.Module) -> dict[str, int]:
    """Layer count, heads and width of the host, as peft's prompt-learning configs want them."""
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or c.num_layers
    heads = getattr(c, "num_attention_heads", None) or c.num_heads
    hidden = getattr(c, "hidden_size", None) or c.d_model
    return {"num_layers": layers, "num_attention_heads": heads, "token_dim": hidden}


def cache_shim(model: nn.Module) -> nn.Module:
    """Let peft's prefix tuning drive hosts whose forward names the KV cache ``cache``.

    transformers 5.x renamed ``past_key_values`` to ``cache`` on BERT-style
    encoders; peft 0.21 still checks for and passes ``past_key_values``.  The
    shim adds that argument to the forward signature and hands it on as
    ``cache``.  Hosts that still accept ``past_key_values`` are left alone.
    """
    params = inspect.signature(model.forward).parameters
    if "past_key_values" in params or "cache" not in params and not _inner_takes_cache(model):
        return model
    original = model.forward

    @functools.wraps(original)
    def forward(*args, past_key_values=None, **kwargs):
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return original(*args, **kwargs)

    sig = inspect.signature(original)
    extra = inspect.Parameter("past_key_values", inspect.Parameter.KEYWORD_ONLY, default=None)
    ps = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    ps += [extra] + [p for p in sig.parameters.values() if p.kind == inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = sig.replace(parameters=ps)
    model.forward = forward
    return model


def _inner_takes_cache(model: nn.Module) -> bool:
    base = getattr(model, "base_model_prefix", None)
    inner = getattr(model, base, None) if base else None
    return inner is not None and "cache" in inspect.signature(inner.forward).parameters
