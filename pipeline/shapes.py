"""Plan-time check that each host pair has one shape, before anything trains or is submitted.

A module can only be ported between hosts of the same architecture and sizes.  The check
reads each host's ``config.json`` without loading weights or building anything: local
folders, embedded hosts already built, embedded hosts not built yet by the config they will
have (``hosts.planned_config``: a derived host has its base's shape, a tiny host its declared
one), and hub names found in the local HF cache.  A host whose config cannot be read
offline is not checked here; porting still verifies every tensor's shape at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import SpecError

SHAPE_KEYS = ("model_type", "hidden_size", "d_model", "num_hidden_layers", "num_layers", "num_decoder_layers",
              "num_attention_heads", "num_heads", "d_kv", "d_ff", "intermediate_size", "vocab_size",
              "num_key_value_heads", "n_embd", "n_layer", "n_head", "n_inner")


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
        return None
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
