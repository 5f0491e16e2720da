"""Writing files so that a reader never sees half of one, and locking them: the one place it is done.

* :func:`atomic_path` / :func:`atomic_write`: write to a hidden temp sibling
  (``.<name>.tmp<pid>``) and rename it over the target, so the target is either the old file
  or the whole new one -- a writer killed mid-write leaves only a hidden temp file, which every
  listing of the pipeline skips (names starting with ``.``).
* :func:`atomic_dir`: the same for a folder (a built host), by renames.
* :func:`locked` / :func:`try_lock`: an exclusive ``flock`` on a lock file, dropped by the
  kernel when its holder dies (even by ``kill -9``), so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO


def temp_sibling(path: Path | str, what: str = "tmp") -> Path:
    """``dir/.name.tmp<pid>``: hidden, unique to this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{what}{os.getpid()}")


@contextmanager
def atomic_path(path: Path | str, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path to write; when the block ends without error it replaces ``path`` by a rename.

    On an error the temp file is removed and ``path`` is untouched.  ``fsync``: flush the temp
    file to disk before the rename (shards: a finished run survives a power cut).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: Path | str, data: str | bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def atomic_dir(out_dir: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``out_dir`` (by renames) once the block succeeds."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temp_sibling(out_dir, "tmp-"), temp_sibling(out_dir, "old-")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def locked(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block; waits for other holders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def try_lock(path: Path | str) -> IO | None:
    """An exclusive lock on ``path`` without waiting: the open lock file (close it to release), or None
    if another live process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f
