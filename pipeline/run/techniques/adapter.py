"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021).

An adapter is a small residual MLP, ``h + up(act(down(h)))``, inserted on the
output projection of a transformer sublayer -- after the projection, before
the host's dropout, residual add and LayerNorm (the Houlsby position):

* BERT-style encoders (``BertLayer``, and layers shaped like it: RoBERTa,
  ELECTRA, XLM-R): ``attention.output.dense`` (attention) and ``output.dense``
  (feed-forward);
* T5 blocks (encoder and decoder): ``layer[0].SelfAttention.o`` (attention)
  and ``layer[-1].DenseReluDense`` (feed-forward);
* decoder layers shaped like Llama's (``LlamaDecoderLayer``, Qwen2, Mistral, ...):
  ``self_attn.o_proj`` (attention) and ``mlp.down_proj`` (feed-forward), i.e.
  after each sublayer's output projection, before its residual add;
* GPT-2 blocks: ``attn.c_proj`` and ``mlp.c_proj`` (GPT-2's ``Conv1D``, whose
  output width is ``nf``), before the host's residual dropout.

``placement='pfeiffer'`` puts one adapter per layer, after the feed-forward
sublayer; ``'houlsby'`` puts two, after attention and after feed-forward.

The adapter module becomes a child of the sublayer (``...output.adapter`` for
BERT, ``...layer.1.adapter`` for T5) and is applied by a forward hook on the
projection, so the host's own parameter names are untouched and the module's
names (``<sublayer>.adapter.down.weight`` ...) depend only on the host's shape
-- what porting by name needs.

Initialisation (documented choice): ``down`` weight ~ N(0, 1e-2) truncated at
+-2 std (Houlsby et al.; AdapterHub ``init_weights="houlsby"``), ``up`` weight
and both biases zero (AdapterHub ``"mam_adapter"``), so a freshly attached
host computes exactly what the bare host computes.  Default lr 1e-3 (the top
of Houlsby et al.'s sweep; AdapterHub suggests 1e-4 for long runs).

Differences from AdapterHub worth knowing: its Pfeiffer config also routes the
adapter input through the host's (frozen) LayerNorm and applies the adapter
after the host's dropout; here both placements use the plain Houlsby position
described above (identical in eval mode).  Houlsby et al. also trained the
host's LayerNorms; here everything of the host but the classification head is
frozen.

This file also holds the pieces :mod:`.compacter` reuses: ``ResidualAdapter``,
``find_sites``, ``insert_adapter`` and ``prepare_host``/``enable_head``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from transformers.activations import get_activation

from ...techniques.base import CLASSIFICATION, RUN_KINDS, TRAINING_KEYS, is_head_param

ATTENTION, FFN = "attention", "ffn"
PLACEMENTS = {"pfeiffer": (FFN,), "houlsby": (ATTENTION, FFN)}
ADAPTER_ATTR = "adapter"  # the adapter's attribute name on its sublayer

DOWN_INIT_STD = 1e-2


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BottleneckConfig:
    reduction_factor: float = 16  # bottleneck width = hidden // reduction_factor
    placement: str = "pfeiffer"  # 'pfeiffer' (after FFN) or 'houlsby' (after attention and FFN)
    non_linearity: str = "relu"  # any name transformers.activations knows (relu, gelu, swish, ...)

    def __post_init__(self) -> None:
        check_common(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "BottleneckConfig":
        return config_from_params(cls, params)


def check_common(cfg: Any) -> None:
    if cfg.placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {cfg.placement!r}")
    if not cfg.reduction_factor > 0:
        raise ValueError(f"reduction_factor must be positive, got {cfg.reduction_factor!r}")
    get_activation(cfg.non_linearity)  # raises KeyError on an unknown name


def config_from_params(cls: type, params: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known - set(TRAINING_KEYS)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} parameter(s): {sorted(unknown)} (known: {sorted(known)})")
    return cls(**{k: v for k, v in params.items() if k in known})


def bottleneck_width(hidden: int, reduction_factor: float) -> int:
    return max(1, int(hidden // reduction_factor))


# --------------------------------------------------------------------------- modules


class ResidualAdapter(nn.Module):
    """``x + up(act(down(x)))``; ``down``/``up`` are any (in -> out) modules."""

    def __init__(self, down: nn.Module, up: nn.Module, non_linearity: str) -> None:
        super().__init__()
        self.down = down
        self.act = get_activation(non_linearity)
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))

    def after_projection(self, _module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        # Forward hook on the sublayer's output projection.  A bound method (not
        # a closure) so copy.deepcopy of the model rebinds it to the copied adapter.
        return self(output)


def bottleneck_adapter(hidden: int, cfg: BottleneckConfig) -> ResidualAdapter:
    """A freshly initialised Linear bottleneck adapter (see module docstring for the init)."""
    width = bottleneck_width(hidden, cfg.reduction_factor)
    down = nn.utils.skip_init(nn.Linear, hidden, width)
    up = nn.utils.skip_init(nn.Linear, width, hidden)
    with torch.no_grad():
        nn.init.trunc_normal_(down.weight, std=DOWN_INIT_STD, a=-2 * DOWN_INIT_STD, b=2 * DOWN_INIT_STD)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
    return ResidualAdapter(down, up, cfg.non_linearity)


# --------------------------------------------------------------------------- injection


@dataclass(frozen=True)
class Site:
    """Where one adapter goes: ``parent.adapter``, applied to ``proj``'s output."""

    name: str  # dotted path of the parent sublayer
    kind: str  # ATTENTION or FFN
    parent: nn.Module
    proj: nn.Module
    hidden: int


def _is_bert_layer(m: nn.Module) -> bool:
    att, out = getattr(m, "attention", None), getattr(m, "output", None)
    return (
        hasattr(m, "intermediate")
        and isinstance(getattr(out, "dense", None), nn.Linear)
        and isinstance(getattr(getattr(att, "output", None), "dense", None), nn.Linear)
    )


def _is_t5_block(m: nn.Module) -> bool:
    layers = getattr(m, "layer", None)
    return (
        isinstance(layers, nn.ModuleList)
        and len(layers) >= 2
        and hasattr(layers[0], "SelfAttention")
        and hasattr(layers[-1], "DenseReluDense")
    )


def _is_llama_layer(m: nn.Module) -> bool:
    return isinstance(getattr(getattr(m, "self_attn", None), "o_proj", None), nn.Linear) and isinstance(
        getattr(getattr(m, "mlp", None), "down_proj", None), nn.Linear)


def _is_gpt2_block(m: nn.Module) -> bool:
    return hasattr(m, "ln_1") and hasattr(getattr(m, "attn", None), "c_proj") and hasattr(
        getattr(m, "mlp", None), "c_proj")


def _width(proj: nn.Module) -> int:
    """Output width of a projection: nn.Linear's out_features, GPT-2 Conv1D's nf."""
    return proj.out_features if hasattr(proj, "out_features") else proj.nf


def find_sites(model: nn.Module, kinds: tuple[str, ...]) -> list[Site]:
    """Adapter sites of ``kinds``, in module order (deterministic for a given architecture)."""

    def sites() -> Iterator[Site]:
        for name, m in model.named_modules():
            if _is_bert_layer(m):
                so = m.attention.output
                yield Site(f"{name}.attention.output", ATTENTION, so, so.dense, so.dense.out_features)
                yield Site(f"{name}.output", FFN, m.output, m.output.dense, m.output.dense.out_features)
            elif _is_t5_block(m):
                sa, ff = m.layer[0], m.layer[-1]
                yield Site(f"{name}.layer.0", ATTENTION, sa, sa.SelfAttention.o, sa.SelfAttention.o.out_features)
                last = f"{name}.layer.{len(m.layer) - 1}"
                yield Site(last, FFN, ff, ff.DenseReluDense, ff.DenseReluDense.wo.out_features)
            elif _is_llama_layer(m) or _is_gpt2_block(m):
                att, mlp = (m.self_attn, m.mlp) if _is_llama_layer(m) else (m.attn, m.mlp)
                ao, mo = (att.o_proj, mlp.down_proj) if _is_llama_layer(m) else (att.c_proj, mlp.c_proj)
                yield Site(f"{name}.{'self_attn' if _is_llama_layer(m) else 'attn'}", ATTENTION, att, ao, _width(ao))
                yield Site(f"{name}.mlp", FFN, mlp, mo, _width(mo))

    found = [s for s in sites() if s.kind in kinds]
    if not found:
        raise ValueError(
            f"no BERT-style (attention/intermediate/output), T5-style, Llama-style (self_attn.o_proj/mlp.down_proj)"
            f" or GPT-2-style (attn/mlp.c_proj) blocks found in {type(model).__name__}"
        )
    return found


def insert_adapter(site: Site, adapter: nn.Module) -> None:
    """Register ``adapter`` as ``site.parent.adapter`` and hook it onto ``site.proj``'s output."""
    if hasattr(site.parent, ADAPTER_ATTR):
        raise ValueError(f"{site.name} already has an adapter (attach called twice?)")
    ref = next(site.proj.parameters())
    adapter.to(device=ref.device, dtype=ref.dtype)
    site.parent.add_module(ADAPTER_ATTR, adapter)
    site.proj.register_forward_hook(adapter.after_projection)


def prepare_host(model: nn.Module, task: str) -> None:
    """Check the task and freeze every host parameter."""
    if task not in RUN_KINDS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(RUN_KINDS)})")
    model.requires_grad_(False)


def enable_head(model: nn.Module, task: str) -> None:
    """Make the classification head trainable (peft's modules_to_save); nothing for head-free kinds."""
    if task != CLASSIFICATION:
        return
    head = [p for n, p in model.named_parameters() if is_head_param(n)]
    if not head:
        raise ValueError(f"task {task!r} but {type(model).__name__} has no classifier/score head")
    for p in head:
        p.requires_grad_(True)


def inject_bottleneck(model: nn.Module, cfg: BottleneckConfig) -> list[str]:
    """Insert fresh bottleneck adapters (from torch's current RNG); returns the sublayer names."""
    sites = find_sites(model, PLACEMENTS[cfg.placement])
    for site in sites:
        insert_adapter(site, bottleneck_adapter(site.hidden, cfg))
    return [s.name for s in sites]


def attach(model: nn.Module, task: str, params: dict[str, Any]) -> nn.Module:
    cfg = BottleneckConfig.from_params(params)
    prepare_host(model, task)
    inject_bottleneck(model, cfg)  # new parameters are trainable
    enable_head(model, task)
    return model
