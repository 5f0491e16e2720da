"""Plan-time check that each host pair has one shape, before anything trains or is submitted.

A module can only be ported between hosts of the same architecture and sizes.  The check
reads each host's ``config.json`` without loading weights or building anything: local
folders, embedded hosts already built, embedded hosts not built yet by the config they will
have (``hosts.planned_config``: a derived host has its base's shape, a tiny host its declared
one), and hub names found in the local HF cache.  A host whose config cannot be read
offline is not checked here; porting still verifies every tensor's shape at load time.

Hub decoders a spec may name (``sweeps/llm.yaml``) have their config shapes declared in ``HUB_CONFIGS``
(copied from the published config.json files), so their pairs are checked -- and ``pipeline.cost``
counts their parameters and memory -- without the hub or the HF cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SpecError

SHAPE_KEYS = ("model_type", "hidden_size", "d_model", "num_hidden_layers", "num_layers", "num_decoder_layers",
              "num_attention_heads", "num_heads", "d_kv", "d_ff", "intermediate_size", "vocab_size",
              "num_key_value_heads", "n_embd", "n_layer", "n_head", "n_inner")


_QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
               "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
               "attention_bias": True}
_SMOLLM2_360M = {"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                 "num_attention_heads": 15, "num_key_value_heads": 5, "vocab_size": 49152, "tie_word_embeddings": True}
_LLAMA32_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}
HUB_CONFIGS = {
    "Qwen/Qwen2.5-0.5B": _QWEN25_05B, "Qwen/Qwen2.5-0.5B-Instruct": _QWEN25_05B,
    "HuggingFaceTB/SmolLM2-360M": _SMOLLM2_360M, "HuggingFaceTB/SmolLM2-360M-Instruct": _SMOLLM2_360M,
    "meta-llama/Llama-3.2-1B": _LLAMA32_1B, "meta-llama/Llama-3.2-1B-Instruct": _LLAMA32_1B,
}


def decoder_params(cfg: dict) -> int | None:
    """Parameters of a Llama/Qwen2-shaped (RMSNorm, gated MLP, grouped-query attention) or GPT-2 config."""
    if "n_embd" in cfg:  # GPT-2: token + position embeddings, blocks (attn c_attn/c_proj, mlp c_fc/c_proj), ln_f
        d, layers = cfg["n_embd"], cfg["n_layer"]
        ff = cfg.get("n_inner") or 4 * d
        block = (d * 3 * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
        return (cfg["vocab_size"] + cfg.get("n_positions", 1024)) * d + layers * block + 2 * d
    if "num_key_value_heads" not in cfg or "hidden_size" not in cfg:
        return None
    d, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    bias = (d + 2 * kv) if cfg.get("attention_bias") or cfg.get("model_type") == "qwen2" else 0
    layer = 2 * d * d + 2 * d * kv + bias + 3 * d * ff + 2 * d
    emb = cfg["vocab_size"] * d * (1 if cfg.get("tie_word_embeddings", True) else 2)
    return emb + layers * layer + d


def _config(model: str, models_dir: Path) -> dict | None:
    from . import hosts

    if Path(model).is_dir() or model.startswith(hosts.PREFIX):
        return hosts.planned_config(model, models_dir)  # built or not: the config it has or will have
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json")
        path = Path(cached).parent if isinstance(cached, str) else None
    except Exception:
        path = None
    if path is None or not (path / "config.json").exists():
        return {**HUB_CONFIGS[model], "_declared": True} if model in HUB_CONFIGS else None
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None


def shape(cfg: dict) -> dict:
    return {k: cfg[k] for k in SHAPE_KEYS if k in cfg}


def check_pairs(spec, source: str = "<spec>") -> None:
    """Raise SpecError naming the first host pair whose shapes differ."""
    models_dir = Path(spec.models_dir)
    cache: dict[str, dict | None] = {}
    for i, (a, b) in enumerate(spec.host_pairs):
        sa, sb = (cache.setdefault(h, _config(spec.host(h).model, models_dir)) for h in (a, b))
        if sa is None or sb is None:
            continue
        # a host not built yet may declare only part of its shape (no vocab_size): compare what both have
        keys = [k for k in SHAPE_KEYS if k in sa and k in sb] if "_declared" in sa or "_declared" in sb else SHAPE_KEYS
        diff = [f"{k} {shape(sa).get(k)} vs {shape(sb).get(k)}" for k in keys if shape(sa).get(k) != shape(sb).get(k)]
        if diff:
            raise SpecError(f"{source}: host_pairs[{i}]: hosts {a!r} and {b!r} differ in shape "
                            f"({', '.join(diff[:3])}); a module cannot be ported between them")
