"""Merge shards into results.parquet, and per-example predictions into predictions.parquet -- incrementally.

A merge reads only the shards it has not merged before.  Beside the results it keeps a small store,
``<sweep>/merged/``: ``manifest.json`` (each merged shard's and predictions file's name, size and mtime,
and the store's part files) and two *datasets* -- ``merged/results/`` and ``merged/preds/``, one folder
of Parquet part files each, every part cast to one fixed schema (``shards.RESULT_SCHEMA``,
``shards.PRED_SCHEMA``) so DuckDB, pyarrow and pandas read a folder as one table.  A merge:

1. lists ``shards/`` (names, sizes, mtimes: no file opened) and reads only the new or changed shards,
   in chunks of ``CHUNK`` files, footers and data by pyarrow in a pool of threads (no DataFrame per
   file); each file is checked as before -- readable, the required columns, one row, naming its own
   run -- and a bad one is moved to quarantine/ with a warning.  The good rows of a chunk are cast to
   the result schema and appended to the dataset as one new part, so memory is one chunk's, whatever
   the number of shards;
2. does the same for ``preds/<run>.parquet`` of runs with a merged shard (a predictions file without a
   shard is a run in progress and is left alone; bad ones go to quarantine/preds/);
3. writes ``results.parquet`` and ``predictions.parquet`` from the datasets: one row per run id (a
   rewritten shard's newer row wins, and the merge says so), only runs whose shard is still there,
   sorted, to a temp file renamed into place.  When a newer row replaced an older one, a shard
   disappeared, or the parts grew past ``COMPACT_AT``, the dataset is compacted into one part.

Why ``results.parquet`` stays one file: every reader (report, summary, status, ``pd.read_parquet``, the
tests, users' notebooks) keeps working unchanged; it holds one row per run (tens of MB at 100,000 runs)
so writing it costs little next to reading the shards, and the incremental work lives in the store.

Everything runs under ``.merge.lock`` and every file is written to a temp name and renamed, so
concurrent merges never leave a torn file; a merge killed half-way leaves part files the manifest does
not name, which the next merge deletes.  A missing or unreadable manifest means a full merge.
Paths never enter SQL text (there is no SQL here): a sweep folder named ``runs/bob's sweep`` merges.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..files import atomic_path, atomic_write, locked
from .shards import PRED_SCHEMA, REQUIRED, RESULT_SCHEMA, conform

PRED_REQUIRED = ("run_id", "example_id", "label", "pred", "correct")
STORE = "merged"  # <sweep>/merged/{manifest.json, results/, preds/}
CHUNK = 1000  # files read per part
COMPACT_AT = 16  # parts per dataset before they are compacted into one
THREADS = 8  # file reads in flight (I/O and Parquet decoding release the GIL)
MANIFEST_VERSION = 1


@dataclass
class MergeResult:
    rows: int = 0
    shards: int = 0  # shards in results.parquet
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    path: Path | None = None
    pred_rows: int = 0  # rows of predictions.parquet (one per run and eval example)
    pred_runs: int = 0  # runs whose predictions were merged
    preds_path: Path | None = None  # predictions.parquet, when written
    read: int = 0  # shard files read by this merge (new or changed since the last one)
    preds_read: int = 0  # predictions files read by this merge
    replaced: list[str] = field(default_factory=list)  # run ids whose shard was rewritten: the newer row won
    compacted: bool = False


def check_footer(path: Path, required=REQUIRED, one_row: bool = True) -> str | None:
    """None if the file looks valid from its footer, else the reason (shards: one row; predictions:
    at least one)."""
    try:
        md = pq.read_metadata(path)
    except Exception as e:
        return f"unreadable ({str(e).splitlines()[0][:80]})"
    return _footer_reason(md, required, one_row)


def _footer_reason(md, required, one_row: bool) -> str | None:
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


def _listing(folder: Path) -> dict[str, list[int]]:
    """{file name: [size, mtime_ns]} of the visible .parquet files (temp files start with a dot)."""
    out = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return out
    for e in entries:
        if e.name.endswith(".parquet") and not e.name.startswith("."):
            try:
                st = e.stat()
            except FileNotFoundError:  # moved away meanwhile
                continue
            out[e.name] = [st.st_size, st.st_mtime_ns]
    return out


def _read_one(path: Path, required, one_row: bool) -> tuple[pa.Table | None, str | None]:
    """(table, None) for a valid file, else (None, reason): footer checks, then the data, then the run id."""
    try:
        with open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            reason = _footer_reason(pf.metadata, required, one_row)
            if reason:
                return None, reason
            t = pf.read()
    except Exception as e:
        return None, f"unreadable ({str(e).splitlines()[0][:80]})"
    rid = t.column("run_id")
    if one_row:
        got = rid[0].as_py()
        if got != path.stem:
            return None, f"names run {got!r}, not its file name"
        return t, None
    try:
        ok = not rid.null_count and pc.all(pc.equal(rid.cast(pa.string()), path.stem)).as_py()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        ok = False
    return (t, None) if ok else (None, "predictions name another run (or none)")


# ------------------------------------------------------------------------------------------------ the store
class _Store:
    """merged/: the manifest and the two datasets."""

    def __init__(self, sweep_root: Path):
        self.root = sweep_root / STORE
        self.path = self.root / "manifest.json"
        m = None
        try:
            m = json.loads(self.path.read_text())
            if m.get("version") != MANIFEST_VERSION:
                m = None
        except (OSError, ValueError):
            pass
        if m is None:  # no store, or one we cannot trust: start over (a full merge)
            shutil.rmtree(self.root, ignore_errors=True)
            m = {"version": MANIFEST_VERSION, "seq": 0, "files": {"results": {}, "preds": {}},
                 "parts": {"results": [], "preds": []}}
        self.m = m
        for kind in ("results", "preds"):  # parts a killed merge left behind (not in the manifest)
            d = self.root / kind
            if d.exists():
                named = set(m["parts"][kind])
                for e in os.scandir(d):
                    if e.name not in named:
                        Path(e.path).unlink(missing_ok=True)

    def files(self, kind: str) -> dict[str, list[int]]:
        return self.m["files"][kind]

    def parts(self, kind: str) -> list[Path]:
        return [self.root / kind / n for n in self.m["parts"][kind]]

    def add_part(self, kind: str, table: pa.Table) -> None:
        self.m["seq"] += 1
        name = f"part-{self.m['seq']:08d}.parquet"
        d = self.root / kind
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / name) as tmp:
            pq.write_table(table, tmp)
        self.m["parts"][kind].append(name)

    def replace_parts(self, kind: str, table: pa.Table) -> None:
        old = self.parts(kind)
        self.m["parts"][kind] = []
        self.add_part(kind, table)
        self.save()  # the manifest names the compacted part before the old ones go
        for p in old:
            p.unlink(missing_ok=True)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self.m, separators=(",", ":")))


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive")


def _ingest(sweep_root: Path, store: _Store, kind: str, folder: Path, names: list[str], res: MergeResult,
            pool: ThreadPoolExecutor) -> None:
    """Read ``names`` (new or changed files of ``folder``) in chunks; good ones become parts, bad ones quarantine."""
    shards = kind == "results"
    schema, required = (RESULT_SCHEMA, REQUIRED) if shards else (PRED_SCHEMA, PRED_REQUIRED)
    sub = "" if shards else "preds"
    listing = store.files(kind)
    for i in range(0, len(names), CHUNK):
        chunk = names[i:i + CHUNK]
        got = list(pool.map(lambda n: _read_one(folder / n, required, shards), chunk))
        good: list[tuple[str, pa.Table]] = []
        for name, (t, reason) in zip(chunk, got):
            if t is None:
                _bad(sweep_root, folder / name, reason, sub, res)
            else:
                good.append((name, t))
        if not good:
            continue
        try:
            table = conform(_concat([t for _, t in good]), schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # find the file(s) at fault
            ok = []
            for name, t in good:
                try:
                    ok.append((name, conform(t, schema)))
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                    why = f"a column does not fit the schema ({str(e).splitlines()[0][:100]})"
                    _bad(sweep_root, folder / name, why, sub, res)
            good = ok
            if not good:
                continue
            table = conform(_concat([t for _, t in good]), schema)
        store.add_part(kind, table)
        for name, _ in good:
            listing[name] = _stat(folder / name)
        if shards:
            res.read += len(chunk)
        else:
            res.preds_read += len(chunk)


def _forget_moved(merged: dict, folder: Path, names: list[str]) -> None:
    for n in names:
        if n in merged and not (folder / n).exists():
            del merged[n]


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _bad(sweep_root: Path, path: Path, reason: str, sub: str, res: MergeResult) -> None:
    quarantine(sweep_root, path, reason, sub)
    said = f"predictions {reason}" if sub == "preds" and not reason.startswith("predictions") else reason
    res.quarantined.append((str(path), said))


def _read_file(path: Path) -> pa.Table:
    with open(path, "rb") as fh:  # ParquetFile, not read_table: no pyarrow.dataset start-up for one file
        return pq.ParquetFile(fh).read()


def _read_parts(parts: list[Path], pool: ThreadPoolExecutor) -> list[pa.Table]:
    return list(pool.map(_read_file, parts))


def _compose_results(store: _Store, live: set[str], pool: ThreadPoolExecutor) -> tuple[pa.Table | None, bool]:
    """(one row per live run id, the newest part's row winning; whether the parts held anything else)."""
    tables = _read_parts(store.parts("results"), pool)
    if not tables:
        return None, False
    seen: set[str] = set()
    kept, extra = [], False
    for t in reversed(tables):  # newest part first
        ids = t.column("run_id").to_pylist()
        mask = []
        for rid in ids:
            take = rid in live and rid not in seen
            mask.append(take)
            if take:
                seen.add(rid)
        if not all(mask):
            extra = True
            t = t.filter(pa.array(mask, pa.bool_()))
        kept.append(t)
    table = conform(_concat(kept[::-1]), RESULT_SCHEMA)
    return table, extra


def _compose_preds(store: _Store, live: set[str], pool: ThreadPoolExecutor) -> tuple[pa.Table | None, bool]:
    """(the predictions of each live run from the newest part that has them; whether the parts held anything else)."""
    seen: set[str] = set()
    kept, extra = [], False
    for t in reversed(_read_parts(store.parts("preds"), pool)):
        runs = set(pc.unique(t.column("run_id")).to_pylist())
        take = (runs & live) - seen
        if take != runs:
            extra = True
            t = t.filter(pc.is_in(t.column("run_id"), value_set=pa.array(sorted(take), pa.string())))
        seen |= take
        if t.num_rows:
            kept.append(t)
    if not kept:
        return None, extra
    return conform(_concat(kept[::-1]), PRED_SCHEMA), extra


def _write_atomic(table: pa.Table, out: Path) -> None:
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


# ------------------------------------------------------------------------------------------------ merge
def merge(sweep_root: Path, out: Path | None = None, warn=print) -> MergeResult:
    sweep_root = Path(sweep_root)
    out = out or sweep_root / "results.parquet"
    res = MergeResult(path=out)
    with locked(sweep_root / ".merge.lock"), ThreadPoolExecutor(THREADS) as pool:
        store = _Store(sweep_root)
        # results: read what is new or changed
        now = _listing(sweep_root / "shards")
        merged = store.files("results")
        gone = [n for n in merged if n not in now]
        for n in gone:
            del merged[n]
        changed = sorted(n for n, st in now.items() if merged.get(n) != st)
        rewritten = {n for n in changed if n in merged}
        _ingest(sweep_root, store, "results", sweep_root / "shards", changed, res, pool)
        _forget_moved(merged, sweep_root / "shards", changed)  # a rewritten shard that went to quarantine
        res.replaced = sorted(n[:-len(".parquet")] for n in rewritten if n in merged)
        live = {n[:-len(".parquet")] for n in merged}
        dirty = bool(changed or gone) or not out.exists()
        table = None
        if dirty or len(store.m["parts"]["results"]) > COMPACT_AT:
            table, extra = _compose_results(store, live, pool)
            if table is not None and (extra or len(store.m["parts"]["results"]) > COMPACT_AT):
                store.replace_parts("results", table)
                res.compacted = True
        # predictions of runs with a merged shard
        pnow = {n: st for n, st in _listing(sweep_root / "preds").items() if n[:-len(".parquet")] in live}
        pmerged = store.files("preds")
        pgone = [n for n in pmerged if n not in pnow]
        for n in pgone:
            del pmerged[n]
        pchanged = sorted(n for n, st in pnow.items() if pmerged.get(n) != st)
        try:
            _ingest(sweep_root, store, "preds", sweep_root / "preds", pchanged, res, pool)
            _forget_moved(pmerged, sweep_root / "preds", pchanged)
            pdirty = bool(pchanged or pgone or changed or gone)
        except OSError as e:  # predictions are extra: results are merged all the same
            warn(f"warning: predictions not merged ({str(e).splitlines()[0][:160]}); the report falls back to "
                 f"run-level statistics")
            pdirty = False
        plive = {n[:-len(".parquet")] for n in pmerged}
        preds_out = sweep_root / "predictions.parquet"
        ptable = None
        if pdirty or (plive and not preds_out.exists()) or len(store.m["parts"]["preds"]) > COMPACT_AT:
            ptable, pextra = _compose_preds(store, plive, pool)
            if pextra or len(store.m["parts"]["preds"]) > COMPACT_AT:
                if ptable is None:
                    for p in store.parts("preds"):
                        p.unlink(missing_ok=True)
                    store.m["parts"]["preds"] = []
                else:
                    store.replace_parts("preds", ptable)
        store.save()
        # the outputs, from the store
        if table is not None:
            table = table.sort_by([("stage", "ascending"), ("run_id", "ascending")])
            _write_atomic(table, out)
            res.rows = res.shards = table.num_rows
        elif out.exists():
            res.rows = res.shards = pq.read_metadata(out).num_rows
        if ptable is not None:
            ptable = ptable.sort_by([("run_id", "ascending"), ("example_id", "ascending")])
            _write_atomic(ptable, preds_out)
            res.pred_rows, res.pred_runs, res.preds_path = ptable.num_rows, len(plive), preds_out
        elif plive and preds_out.exists():
            md = pq.read_metadata(preds_out)
            res.pred_rows, res.pred_runs, res.preds_path = md.num_rows, len(plive), preds_out
        for f, reason in res.quarantined:
            sub = "preds" if Path(f).parent.name == "preds" else ""
            warn(f"warning: {f}: {reason}; moved to {sweep_root / 'quarantine' / sub if sub else sweep_root / 'quarantine'}")
        if res.replaced:
            shown = ", ".join(res.replaced[:10]) + (" ..." if len(res.replaced) > 10 else "")
            warn(f"warning: {len(res.replaced)} shard(s) rewritten since the last merge ({shown}): the newer row "
                 f"replaces the older one")
    return res
