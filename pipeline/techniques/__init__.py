"""Technique registry: one file a technique, one dict to look them up."""

from __future__ import annotations

from .base import Technique, is_head_param, module_state  # noqa: F401

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


# Importing the modules registers them (order = display order).
from . import lora, prefix, prompt, ia3, adapter, compacter  # noqa: E402,F401,I001  (order = display order)
