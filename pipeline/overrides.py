"""``--set KEY=VALUE`` on the command line (``plan``, ``run``, ``sweep``), as hydra and seml users expect.

The value is YAML (``seeds=[0,1]``), the key dotted for nested fields (``origin_training.steps=50``,
``technique_params.lora.lr=0.001``; a number indexes a list: ``hosts.1.model=...``).  Overrides are
applied to the file's mapping before validation, so they are validated exactly like the file
(``pipeline.spec.load``), and an error in a field an override set names that override.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .errors import SpecError
from .specfile import _format_loc, _StrictLoader


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``KEY=VALUE`` of ``--set``: the key path (dotted; a number indexes a list, e.g. ``hosts.1.model``)
    and the value parsed as YAML (``seeds=[0,1]``, ``origin_training.steps=50``, ``name=x``)."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise SpecError(f"--set {text}: expected KEY=VALUE (e.g. seeds=[0,1] or origin_training.steps=50)")
    parts: list[str | int] = []
    for part in key.split("."):
        if not part:
            raise SpecError(f"--set {text}: empty part in the key {key!r}")
        parts.append(int(part) if part.isdigit() else part)
    try:
        val = yaml.load(value, Loader=_StrictLoader) if value.strip() else None  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError(f"--set {text}: invalid YAML value ({getattr(e, 'problem', None) or e})") from None
    return parts, val


def apply_overrides(data: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """``data`` (the spec file's mapping) with each ``--set KEY=VALUE`` applied in order; missing
    mappings on the way are created (``--set technique_params.lora.lr=0.001``)."""
    data = copy.deepcopy(data)
    if overrides and not isinstance(data, dict):
        return data  # parse() reports the file
    for text in overrides:
        parts, val = parse_override(text)
        cur = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(map(str, parts[:i])) or "the spec"
            if isinstance(cur, list):
                if not isinstance(part, int) or part >= len(cur):
                    raise SpecError(f"--set {text}: {where} is a list of {len(cur)}; "
                                    f"{part!r} is not an index of it (0..{len(cur) - 1})")
            elif isinstance(cur, dict):
                if isinstance(part, int):
                    part = str(part)
                if not last and not isinstance(cur.get(part), (dict, list)):
                    cur[part] = {}
            else:
                raise SpecError(f"--set {text}: {where} is {cur!r}, not a mapping or list")
            if last:
                cur[part] = val
            else:
                cur = cur[part]
    return data


def override_for(message: str, overrides) -> str | None:
    """The last override whose key the error's field path starts with (or that starts with it)."""
    loc = message.split(": ", 1)[0]
    for text in reversed(list(overrides)):
        key = text.partition("=")[0].strip()
        path = _format_loc(tuple(int(p) if p.isdigit() else p for p in key.split(".")))
        for a, b in ((loc, path), (path, loc)):
            if a == b or (a.startswith(b) and a[len(b)] in ".["):
                return text
    return None
