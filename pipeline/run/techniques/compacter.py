"""Compacter (Mahabadi, Henderson & Ruder, NeurIPS 2021).

A bottleneck adapter (same sites and residual form as :mod:`.adapter`) whose
down- and up-projections are PHM layers: an (in x out) weight

    W = sum_{i=1..n} A_i (x) B_i,      B_i = s_i t_i^T  (rank ``phm_rank``)

with ``A_i`` (n x n, ``n = phm_dim``) shared by *every* PHM layer of the
model -- all layers, encoder and decoder, down and up -- and ``s_i``
((in/n) x r), ``t_i`` (r x (out/n)) per layer.  ``placement='pfeiffer'``
(the default, one adapter after the feed-forward sublayer) is what the paper
calls Compacter++; ``'houlsby'`` (after attention and feed-forward) is the
paper's Compacter.

Parameter names: the shared rule is one Parameter, ``compacter.phm_rule``
(shape n x n x n), owned by a small module attached to the model root; each
adapter holds ``<sublayer>.adapter.{down,up}.{s,t,bias}``.  PHM layers read
the rule through an unregistered reference to its owner, so it is listed once
by ``named_parameters``/``state_dict`` and porting it by name updates every
layer at once.

Defaults and initialisation follow AdapterHub's ``CompacterPlusPlusConfig``
(itself from the authors' code): reduction factor 32, GELU, n = 4, rank 1;
``phm_rule`` ~ N(0, 1e-4), ``s``/``t`` Glorot-uniform per slice (the configs'
"glorot-uniform"; AdapterHub's code path actually draws Glorot-normal),
biases zero.  The host is therefore *not* exactly unchanged at attach -- the
adapter adds a term of order 1e-8 relative to the hidden state, usually below
float32 resolution of the logits -- unlike ``bottleneck``, whose up-projection
starts at exactly zero.  Default lr 3e-3 (Mahabadi et al.'s setting).  Both
widths of every PHM layer must be multiples of ``phm_dim`` (hidden 384 / rf 32
= 12 is fine; a 64-wide host needs rf <= 16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .adapter import (
    PLACEMENTS,
    ResidualAdapter,
    bottleneck_width,
    check_common,
    config_from_params,
    enable_head,
    find_sites,
    insert_adapter,
    prepare_host,
)

SHARED_ATTR = "compacter"  # the shared-rule owner's attribute on the model root
PHM_RULE_INIT_STD = 1e-4


@dataclass(frozen=True)
class CompacterConfig:
    reduction_factor: float = 32
    placement: str = "pfeiffer"  # 'pfeiffer' = Compacter++, 'houlsby' = Compacter
    non_linearity: str = "gelu"
    phm_dim: int = 4  # n: number of Kronecker summands; must divide hidden and bottleneck widths
    phm_rank: int = 1  # r: rank of each B_i

    def __post_init__(self) -> None:
        check_common(self)
        if self.phm_dim < 1 or self.phm_rank < 1:
            raise ValueError(f"phm_dim and phm_rank must be >= 1, got {self.phm_dim}, {self.phm_rank}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CompacterConfig":
        return config_from_params(cls, params)


class SharedPHMRule(nn.Module):
    """Owner of the shared ``phm_rule`` A (n x n x n), one per model."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.phm_rule = nn.Parameter(torch.empty(n, n, n).normal_(0.0, PHM_RULE_INIT_STD))


class PHMLinear(nn.Module):
    """``y = x W + bias`` with ``W = sum_i A_i (x) (s_i t_i)`` and A read from the shared owner."""

    def __init__(self, in_features: int, out_features: int, rank: int, shared: SharedPHMRule) -> None:
        super().__init__()
        n = shared.phm_rule.shape[0]
        if in_features % n or out_features % n:
            raise ValueError(
                f"phm_dim={n} must divide both widths of a PHM layer, got {in_features} -> {out_features}"
                " (pick reduction_factor/phm_dim so hidden and hidden // reduction_factor are multiples of phm_dim)"
            )
        self.s = nn.Parameter(torch.empty(n, in_features // n, rank))
        self.t = nn.Parameter(torch.empty(n, rank, out_features // n))
        self.bias = nn.Parameter(torch.zeros(out_features))
        with torch.no_grad():
            for i in range(n):
                nn.init.xavier_uniform_(self.s[i])
                nn.init.xavier_uniform_(self.t[i])
        # A plain tuple is not registered by nn.Module: the rule stays owned (and
        # named) once, at the model root.  Read at call time, so it follows
        # whatever Parameter the owner holds (after .to(), load_state_dict, ...).
        self._shared = (shared,)

    def weight(self) -> torch.Tensor:
        a = self._shared[0].phm_rule  # (n, n, n)
        b = self.s @ self.t  # (n, in/n, out/n)
        n, p, q = b.shape
        # sum_k kron(a[k], b[k]): entry [x*p + i, y*q + j] = sum_k a[k, x, y] * b[k, i, j]
        return torch.einsum("kxy,kij->xiyj", a, b).reshape(n * p, n * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight()
        # the bias in the product's dtype, as nn.Linear does under autocast: an fp32 bias added to a bf16
        # product would promote it, and with it the host's whole residual stream, to fp32
        return y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        n, p, r = self.s.shape
        return f"in={n * p}, out={self.t.shape[0] * self.t.shape[2]}, phm_dim={n}, rank={r}"


def compacter_adapter(hidden: int, cfg: CompacterConfig, shared: SharedPHMRule) -> ResidualAdapter:
    width = bottleneck_width(hidden, cfg.reduction_factor)
    down = PHMLinear(hidden, width, cfg.phm_rank, shared)
    up = PHMLinear(width, hidden, cfg.phm_rank, shared)
    return ResidualAdapter(down, up, cfg.non_linearity)


def inject_compacter(model: nn.Module, cfg: CompacterConfig) -> list[str]:
    """Insert the shared rule and fresh Compacter adapters (torch's current RNG); returns sublayer names."""
    if hasattr(model, SHARED_ATTR):
        raise ValueError(f"{type(model).__name__} already has .{SHARED_ATTR} (attach called twice?)")
    sites = find_sites(model, PLACEMENTS[cfg.placement])
    shared = SharedPHMRule(cfg.phm_dim)
    adapters = [compacter_adapter(site.hidden, cfg, shared) for site in sites]  # validate before mutating
    ref = next(sites[0].proj.parameters())
    model.add_module(SHARED_ATTR, shared.to(device=ref.device, dtype=ref.dtype))
    for site, adapter in zip(sites, adapters, strict=True):
        insert_adapter(site, adapter)
    return [s.name for s in sites]


def attach(model: nn.Module, task: str, params: dict[str, Any]) -> nn.Module:
    cfg = CompacterConfig.from_params(params)
    prepare_host(model, task)
    inject_compacter(model, cfg)
    enable_head(model, task)
    return model
