"""Merge shards into one results.parquet: check, dedupe, quarantine, replace atomically.

Each shard's footer is read (cheap) to check schema and row count; shards
that cannot be read, lack required columns or name another run are moved to
quarantine/ with a warning.  The good ones are read in one multi-threaded
DuckDB scan (union by name: stage-1 and stage-2 shards have different
columns) and written to a temp file that replaces results.parquet under a
lock, so concurrent merges never leave a torn file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from .shards import REQUIRED


@dataclass
class MergeResult:
    rows: int = 0
    shards: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    path: Path | None = None


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_footer(path: Path) -> str | None:
    """None if the shard looks valid from its footer, else the reason."""
    try:
        md = pq.read_metadata(path)
    except Exception as e:
        return f"unreadable ({str(e).splitlines()[0][:80]})"
    names = set(md.schema.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        return f"lacks columns {missing}"
    if md.num_rows != 1:
        return f"{md.num_rows} rows, expected 1"
    return None


def quarantine(sweep_root: Path, path: Path, reason: str) -> Path:
    q = sweep_root / "quarantine"
    q.mkdir(parents=True, exist_ok=True)
    dest = q / path.name
    n = 1
    while dest.exists():
        dest = q / f"{path.stem}.{n}{path.suffix}"
        n += 1
    shutil.move(str(path), dest)
    (q / f"{dest.name}.reason.txt").write_text(reason + "\n")
    return dest


def merge(sweep_root: Path, out: Path | None = None, warn=print) -> MergeResult:
    import duckdb

    sweep_root = Path(sweep_root)
    out = out or sweep_root / "results.parquet"
    res = MergeResult(path=out)
    shard_dir = sweep_root / "shards"
    files = sorted(str(shard_dir / e.name) for e in os.scandir(shard_dir)
                   if e.name.endswith(".parquet") and not e.name.startswith(".")) if shard_dir.exists() else []
    with locked(sweep_root / ".merge.lock"):
        good = []
        for f in files:
            reason = check_footer(Path(f))
            if reason:
                quarantine(sweep_root, Path(f), reason)
                res.quarantined.append((f, reason))
            else:
                good.append(f)
        con = duckdb.connect()
        con.execute("SET enable_progress_bar=false")
        if good:
            con.execute("CREATE TABLE r AS SELECT * FROM read_parquet(?, union_by_name=true, filename=true)", [good])
            misnamed = "run_id <> regexp_extract(filename, '([^/]+)\\.parquet$', 1)"
            wrong = con.execute(f"SELECT filename, run_id FROM r WHERE {misnamed}").fetchall()
            for fname, rid in wrong:
                reason = f"names run {rid!r}, not its file name"
                quarantine(sweep_root, Path(fname), reason)
                res.quarantined.append((fname, reason))
            con.execute(f"DELETE FROM r WHERE {misnamed}")
            con.execute("ALTER TABLE r DROP COLUMN filename")
            res.rows = con.execute("SELECT count(*) FROM r").fetchone()[0]
            res.shards = len(good) - len(wrong)
            tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
            con.execute(f"COPY (SELECT * FROM r ORDER BY stage, run_id) TO '{tmp}' (FORMAT parquet)")
            os.replace(tmp, out)
        for f, reason in res.quarantined:
            warn(f"warning: {f}: {reason}; moved to {sweep_root / 'quarantine'}")
    return res
