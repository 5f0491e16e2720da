"""Reading a spec file: the YAML document, refused in one line naming the file when it is too big, is
not UTF-8, is not valid YAML, repeats a key in one mapping (YAML would keep only the last value), or has
aliases that expand past ``MAX_YAML_VALUES`` values or refer to themselves (a few lines of nested aliases
stand for billions of values: checked on the node graph, before anything is built or walked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

MAX_SPEC_BYTES = 4 * 1024 * 1024  # a spec file over this size is refused before it is parsed
MAX_YAML_VALUES = 1_000_000  # values a YAML document may expand to, its aliases followed


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _TooBig(yaml.YAMLError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (plain YAML keeps the last value), and a
    document whose aliases expand to more than MAX_YAML_VALUES values or refer to themselves (checked on the
    node graph, where an alias is one shared node, before anything is built or walked)."""

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


def _expanded_size(root: yaml.Node) -> int:
    """The number of values ``root`` stands for with every alias followed; _TooBig past MAX_YAML_VALUES.
    Each node is counted once (memoised by identity), so this is linear in the document, not its expansion."""
    size: dict[int, int] = {}
    open_: set[int] = set()

    def visit(n: yaml.Node) -> int:
        k = id(n)
        if k in size:
            return size[k]
        if k in open_:
            raise _TooBig(f"line {n.start_mark.line + 1}: a YAML alias refers to itself (a recursive value)")
        open_.add(k)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(visit(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(visit(a) + visit(b) for a, b in n.value)
        open_.discard(k)
        if total > MAX_YAML_VALUES:
            raise _TooBig(f"YAML aliases expand to over {MAX_YAML_VALUES:,} values (a spec needs a few hundred); "
                          "write the values out, or use fewer nested aliases")
        size[k] = total
        return total

    return visit(root)


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges are YAML's own way to combine mappings
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = first.get(key)
        except TypeError:  # an unhashable key: construct_mapping gives YAML's own error
            continue
        if seen is not None:
            raise _DuplicateKey(key, key_node.start_mark.line + 1, seen)
        first[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``; SpecError (one line naming the file) when it cannot be read, is not
    UTF-8, is not valid YAML or repeats a key in one mapping."""
    p = Path(path)
    try:
        n = p.stat().st_size
        if n > MAX_SPEC_BYTES:
            raise SpecError(f"{p}: {n:,} bytes, over the {MAX_SPEC_BYTES:,} bytes a spec may have; a sweep that "
                            "large is several sweeps (or a generated list that belongs in a loop, not a spec)")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{p}: no such spec file") from None
    except OSError as e:
        raise SpecError(f"{p}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SpecError(f"{p}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "save the spec as UTF-8") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooBig as e:
        raise SpecError(f"{p}: {e}") from None
    except _DuplicateKey as e:
        raise SpecError(f"{p}: line {e.line}: duplicate key {e.key!r} (first on line {e.first}); "
                        "YAML would keep only the last value") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise SpecError(f"{p}: {where}invalid YAML ({getattr(e, 'problem', None) or e})") from None


def _format_loc(loc) -> str:
    """A field path as the user wrote it: ``datasets[0].eval_size``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isidentifier():  # odd keys (spaces, control characters) shown quoted
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"
