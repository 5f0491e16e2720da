"""The technique registry: declarations only, no torch (the torch code is in ``pipeline/run/techniques/``)."""

from __future__ import annotations

from .base import (  # noqa: F401
    CAUSAL_LM,
    CLASSIFICATION,
    ENCODER_KINDS,
    RUN_KINDS,
    SIMILARITY,
    TASKS,
    TEXT_TO_TEXT,
    TRAINING_KEYS,
    Param,
    Technique,
    is_class_bias,
    is_head_param,
)
from .catalog import ALL

REGISTRY: dict[str, Technique] = {}


def register(t: Technique) -> Technique:
    if t.name in REGISTRY:
        raise ValueError(f"technique {t.name!r} registered twice")
    REGISTRY[t.name] = t
    return t


def get(name: str) -> Technique:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown technique {name!r} (known: {', '.join(REGISTRY)})") from None


def known() -> list[str]:
    return list(REGISTRY)


for _t in ALL:  # order = display order
    register(_t)
