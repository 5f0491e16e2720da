"""A host folder's identity: the fingerprint of its config and weights (torch-free; ``pipeline.hosts`` re-exports it)."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from pathlib import Path

from .files import sha256_file

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def fingerprint(path: Path | str) -> str:
    """16 hex chars identifying a host folder's config and weights.

    sha256 over config.json's bytes and, per weights file (``*.safetensors``,
    ``pytorch_model*.bin``, by name), its name and sha256.  The per-file hashes
    are cached in ``<path>/.fingerprint.json`` keyed by each file's name, size
    and mtime_ns (rehashed when any changes); a read-only folder is just not
    cached.  Torch-free.
    """
    path = Path(path)
    cache_file = path / ".fingerprint.json"
    try:
        cached = json.loads(cache_file.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    weights = sorted({f for pattern in WEIGHT_FILES for f in path.glob(pattern) if f.is_file()})
    files, changed = {}, False
    for f in weights:
        st = f.stat()
        entry = cached.get(f.name)
        if not (isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
                and isinstance(entry.get("sha256"), str)):
            entry, changed = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(f)}, True
        files[f.name] = entry
    h = hashlib.sha256((path / "config.json").read_bytes())
    for name, entry in files.items():
        h.update(f"\0{name}\0{entry['sha256']}".encode())
    if changed or set(files) != set(cached):
        tmp = path / f".fingerprint.json.{os.getpid()}"
        try:
            tmp.write_text(json.dumps(files, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, cache_file)
        except OSError:  # read-only folder (e.g. an installed package): no cache
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
    return h.hexdigest()[:16]
