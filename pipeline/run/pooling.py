"""A classification host's pooling and positions: part of the host, the same for every technique.

``AutoModelForSequenceClassification`` on a BERT-style encoder classifies
from ``BertPooler`` (dense + tanh on the first token).  That is right for a
BERT pretrained with next-sentence prediction, wrong for a sentence-transformers
model such as all-MiniLM-L6-v2, whose pooler was never trained and whose own
sentence vector is the mean of its token vectors.  ``install`` replaces the
encoder's pooler by ``Pool``, which computes the host's pooling:

* ``mean``: mean of the last hidden states over the real tokens (attention mask);
* ``cls``: the first real token's hidden state;
* ``pooler``: the host's own pooler (dense + tanh) on the first real token.

Virtual tokens never enter the pool.  Prompt tuning prepends
``virtual_front`` embeddings (set by the prompt technique); prefix tuning adds
key/values only, so the hidden states are the real tokens' but the attention
mask peft passes is longer.  ``Pool`` takes the real tokens' part of both.

Positions: on absolute-position hosts (BERT), peft's prefix tuning passes a
``cache_length`` that shifts the real tokens to positions ``v..v+n-1``, and
prompt tuning's prepended embeddings push [CLS] to position ``v``.  A forward
pre-hook on the embeddings gives real tokens positions ``0..n-1`` whatever the
technique, and the prompt's virtual tokens position 0 (their position
embedding is a constant the trained prompt absorbs).  Relative-position hosts
(T5) need neither.

Both hooks are bound methods of the ``Pool`` module (a child of the model), so
``copy.deepcopy`` of a host carries them over correctly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import PoolingError
from ..spec import POOLINGS


class Pool(nn.Module):
    def __init__(self, mode: str, pooler: nn.Module | None) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise PoolingError(f"unknown pooling {mode!r} (known: {', '.join(POOLINGS)})")
        self.mode = mode
        self.virtual_front = 0  # prompt tuning's prepended virtual tokens
        if mode == "pooler":
            if pooler is None or not hasattr(pooler, "dense"):
                raise PoolingError("pooling 'pooler' needs a host with a BERT-style pooler (dense + tanh)")
            self.dense, self.activation = pooler.dense, pooler.activation
        self._mask: torch.Tensor | None = None
        self.last: torch.Tensor | None = None  # the pooled vectors of the last forward (head-free scoring reads it)
        self.class_bias: nn.Parameter | None = None  # head-free hosts: the module's per-class bias (add_class_bias)
        self.last_positions: torch.Tensor | None = None  # what the embeddings last saw (tests read it)

    # -- hooks ---------------------------------------------------------------------
    def capture_mask(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._mask = kwargs.get("attention_mask")

    def fix_positions(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None or kwargs.get("position_ids") is not None:
            return None
        length = ref.shape[1]
        v = min(self.virtual_front, length) if ids is None else 0  # virtual tokens come as embeddings
        pos = torch.cat([torch.zeros(v, dtype=torch.long), torch.arange(length - v, dtype=torch.long)])
        kwargs["position_ids"] = pos.unsqueeze(0).to(ref.device)
        if "cache_length" in kwargs:
            kwargs["cache_length"] = 0
        self.last_positions = kwargs["position_ids"].detach()
        return args, kwargs

    # -- pooling -------------------------------------------------------------------
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        v = min(self.virtual_front, length)
        real = hidden[:, v:]
        if self.mode == "mean":
            mask = self._mask
            if mask is None:
                self.last = real.mean(1)
                return self.last
            m = mask[:, -length:][:, v:].to(real.dtype).unsqueeze(-1)
            self.last = (real * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return self.last
        first = real[:, 0]
        self.last = first if self.mode == "cls" else self.activation(self.dense(first))
        return self.last


def encoder_of(model: nn.Module) -> nn.Module | None:
    """The base encoder (``model.bert`` ..., or the model itself when it is one) that owns ``embeddings``
    and ``pooler``."""
    if hasattr(model, "embeddings") and hasattr(model, "pooler"):
        return model
    prefix = getattr(model, "base_model_prefix", None)
    enc = getattr(model, prefix, None) if prefix else None
    return enc if enc is not None and hasattr(enc, "embeddings") else None


def install(model: nn.Module, mode: str) -> Pool:
    """Give a classification host ``mode`` pooling and fixed real-token positions (see module doc)."""
    enc = encoder_of(model)
    if enc is None or not hasattr(enc, "pooler"):
        raise PoolingError(f"{type(model).__name__}: pooling needs a BERT-style encoder with embeddings and a pooler")
    pool = Pool(mode, enc.pooler)
    enc.pooler = pool
    enc.register_forward_pre_hook(pool.capture_mask, with_kwargs=True)
    if hasattr(enc.embeddings, "position_embeddings"):
        enc.embeddings.register_forward_pre_hook(pool.fix_positions, with_kwargs=True)
    return pool


def add_class_bias(pool: Pool, classes: int) -> None:
    """Give a head-free host's pool a per-class bias (zeros, frozen until a technique's module takes it:
    it is part of the module, ported and sampled with it; the bare host has none in effect)."""
    pool.class_bias = nn.Parameter(torch.zeros(classes), requires_grad=False)


def find(model: nn.Module) -> Pool | None:
    return next((m for m in model.modules() if isinstance(m, Pool)), None)
