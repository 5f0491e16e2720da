"""Merge shards into one results.parquet, and per-example predictions into predictions.parquet.

Each shard's footer is read (cheap) to check schema and row count; shards
that cannot be read, lack required columns or name another run are moved to
quarantine/ with a warning.  The good ones are read in one multi-threaded
DuckDB scan (union by name: stage-1 and stage-2 shards have different
columns) and written to a temp file that replaces results.parquet under a
lock, so concurrent merges never leave a torn file.

Per-example predictions (``preds/<run_id>.parquet``, one row per eval example)
go the same way into ``predictions.parquet``: only the files of runs with a
valid shard in the same merge are taken (a run writes its predictions before
its shard, so a predictions file without a shard is a run in progress and is
left alone); unreadable ones, ones lacking columns or naming another run are
moved to quarantine/preds/.  A sweep without preds/ (older sweeps) merges as
before.

Paths never enter SQL text: file lists are DuckDB parameters and the output is
written through pyarrow, so a sweep folder named ``runs/bob's sweep`` merges.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from ..files import atomic_path, locked
from .shards import REQUIRED

PRED_REQUIRED = ("run_id", "example_id", "label", "pred", "correct")
PRED_TYPES = {"run_id": "VARCHAR", "example_id": "INTEGER", "label": "SMALLINT", "pred": "SMALLINT",
              "correct": "BOOLEAN", "score": "FLOAT"}


@dataclass
class MergeResult:
    rows: int = 0
    shards: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    path: Path | None = None
    pred_rows: int = 0  # rows of predictions.parquet (one per run and eval example)
    pred_runs: int = 0  # runs whose predictions were merged
    preds_path: Path | None = None  # predictions.parquet, when written


def check_footer(path: Path, required=REQUIRED, one_row: bool = True) -> str | None:
    """None if the file looks valid from its footer, else the reason (shards: one row; predictions:
    at least one)."""
    try:
        md = pq.read_metadata(path)
    except Exception as e:
        return f"unreadable ({str(e).splitlines()[0][:80]})"
    names = set(md.schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        return f"lacks columns {missing}"
    if one_row and md.num_rows != 1:
        return f"{md.num_rows} rows, expected 1"
    if not one_row and md.num_rows < 1:
        return "no rows"
    return None


def quarantine(sweep_root: Path, path: Path, reason: str, sub: str = "") -> Path:
    q = sweep_root / "quarantine" / sub if sub else sweep_root / "quarantine"
    q.mkdir(parents=True, exist_ok=True)
    dest = q / path.name
    n = 1
    while dest.exists():
        dest = q / f"{path.stem}.{n}{path.suffix}"
        n += 1
    shutil.move(str(path), dest)
    (q / f"{dest.name}.reason.txt").write_text(reason + "\n")
    return dest


def _listing(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(folder / e.name) for e in os.scandir(folder)
                  if e.name.endswith(".parquet") and not e.name.startswith("."))


def _write_atomic(con, query: str, out: Path) -> None:
    """Run ``query`` and write its rows to ``out`` through a temp file and a rename (no path in SQL)."""
    with atomic_path(out) as tmp:
        rel = con.sql(query)
        pq.write_table(rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow(), tmp)  # duckdb 2 / 1


def merge(sweep_root: Path, out: Path | None = None, warn=print) -> MergeResult:
    import duckdb

    sweep_root = Path(sweep_root)
    out = out or sweep_root / "results.parquet"
    res = MergeResult(path=out)
    files = _listing(sweep_root / "shards")
    pred_files = _listing(sweep_root / "preds")
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
        misnamed = "run_id <> regexp_extract(filename, '([^/]+)\\.parquet$', 1)"
        valid_runs: set[str] = set()
        if good:
            con.execute("CREATE TABLE r AS SELECT * FROM read_parquet(?, union_by_name=true, filename=true)", [good])
            wrong = con.execute(f"SELECT filename, run_id FROM r WHERE {misnamed}").fetchall()
            for fname, rid in wrong:
                reason = f"names run {rid!r}, not its file name"
                quarantine(sweep_root, Path(fname), reason)
                res.quarantined.append((fname, reason))
            con.execute(f"DELETE FROM r WHERE {misnamed}")
            con.execute("ALTER TABLE r DROP COLUMN filename")
            res.rows = con.execute("SELECT count(*) FROM r").fetchall()[0][0]
            res.shards = len(good) - len(wrong)
            valid_runs = {r[0] for r in con.execute("SELECT run_id FROM r").fetchall()}
            _write_atomic(con, "SELECT * FROM r ORDER BY stage, run_id", out)
        try:
            _merge_preds(con, sweep_root, pred_files, valid_runs, res)
        except (duckdb.Error, OSError) as e:  # predictions are extra: results.parquet is already written
            warn(f"warning: predictions not merged ({str(e).splitlines()[0][:160]}); the report falls back to "
                 f"run-level statistics")
        for f, reason in res.quarantined:
            sub = "preds" if Path(f).parent.name == "preds" else ""
            warn(f"warning: {f}: {reason}; moved to {sweep_root / 'quarantine' / sub if sub else sweep_root / 'quarantine'}")
    return res


def _merge_preds(con, sweep_root: Path, files: list[str], valid_runs: set[str], res: MergeResult) -> None:
    """preds/<run>.parquet of the runs in ``valid_runs`` -> predictions.parquet (checked, atomic)."""
    mine = [f for f in files if Path(f).stem in valid_runs]
    good = []
    for f in mine:
        reason = check_footer(Path(f), PRED_REQUIRED, one_row=False)
        if reason:
            quarantine(sweep_root, Path(f), reason, "preds")
            res.quarantined.append((f, f"predictions {reason}"))
        else:
            good.append(f)
    if not good:
        return
    con.execute("CREATE TABLE p AS SELECT * FROM read_parquet(?, union_by_name=true, filename=true)", [good])
    wrong = con.execute("SELECT DISTINCT filename FROM p WHERE run_id IS NULL OR "
                        "run_id <> regexp_extract(filename, '([^/]+)\\.parquet$', 1)").fetchall()
    for (fname,) in wrong:
        quarantine(sweep_root, Path(fname), "predictions name another run (or none)", "preds")
        res.quarantined.append((fname, "predictions name another run (or none)"))
        con.execute("DELETE FROM p WHERE filename = ?", [fname])
    have = {r[0] for r in con.execute("DESCRIBE p").fetchall()}
    cols = [f"CAST({c} AS {t}) AS {c}" if c in have else f"CAST(NULL AS {t}) AS {c}" for c, t in PRED_TYPES.items()]
    cols += ['"' + c.replace('"', '""') + '"' for c in sorted(have - set(PRED_TYPES) - {"filename"})]
    res.pred_runs = len(good) - len(wrong)
    res.pred_rows = con.execute("SELECT count(*) FROM p").fetchall()[0][0]
    if res.pred_runs:
        res.preds_path = sweep_root / "predictions.parquet"
        _write_atomic(con, f"SELECT {', '.join(cols)} FROM p ORDER BY run_id, example_id", res.preds_path)
