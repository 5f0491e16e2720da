"""Shards are atomic; merge checks, dedupes and quarantines."""

import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from pipeline.results import merge, shards


def row(rid, **kw):
    r = {"run_id": rid, "stage": 2, "technique": "lora", "seed": 0, "accuracy": 0.5, "macro_f1": 0.4,
         "condition": "ported"}
    r.update(kw)
    return r


def test_write_is_atomic_and_read_validates(tmp_path):
    p = tmp_path / "shards" / "abc.parquet"
    shards.write(p, row("abc"))
    assert shards.read(p)["accuracy"] == 0.5
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")]
    shards.write(tmp_path / "shards" / "xyz.parquet", row("abc"))
    with pytest.raises(shards.ShardError, match="names run 'abc'"):
        shards.read(tmp_path / "shards" / "xyz.parquet")
    (tmp_path / "shards" / "bad.parquet").write_bytes(b"PAR1garbage")
    with pytest.raises(shards.ShardError, match="unreadable"):
        shards.read(tmp_path / "shards" / "bad.parquet")


def test_killed_writer_leaves_no_visible_shard(tmp_path):
    """A process killed in the middle of writing leaves only a hidden temp file, never a shard."""
    target = tmp_path / "shards" / "r1.parquet"
    code = textwrap.dedent(f"""
        import os, pyarrow.parquet as pq
        from pipeline.results import shards
        real = pq.write_table
        def slow(table, f, **kw):
            real(table, f, **kw)
            os.kill(os.getpid(), 9)  # die after the bytes, before the rename
        pq.write_table = slow
        shards.write(__import__('pathlib').Path({str(target)!r}), {row('r1')!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == -9
    assert not target.exists()
    assert not shards.is_done(tmp_path, "r1")


def test_merge_one_row_per_run_and_quarantine(tmp_path):
    d = tmp_path / "shards"
    for i in range(5):
        shards.write(d / f"r{i}.parquet", row(f"r{i}", accuracy=i / 10))
    shards.write(d / "s1.parquet", {**row("s1", stage=1), "module_sha256": "x", "condition": None})
    (d / "torn.parquet").write_bytes(b"PAR1\x00\x01")  # truncated
    shards.write(d / "copied.parquet", row("r0"))  # names another run
    res = merge.merge(tmp_path, warn=lambda m: None)
    assert res.rows == 6
    t = pq.read_table(tmp_path / "results.parquet").to_pylist()
    ids = [r["run_id"] for r in t]
    assert sorted(ids) == sorted(["r0", "r1", "r2", "r3", "r4", "s1"]) and len(set(ids)) == len(ids)
    assert "module_sha256" in t[0]
    q = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert "torn.parquet" in q and "copied.parquet" in q
    assert not (d / "torn.parquet").exists()
    # merging again is stable
    assert merge.merge(tmp_path, warn=lambda m: None).rows == 6


def test_concurrent_merges_never_tear_results(tmp_path):
    """Merges running at once (two users, a cron and a report) leave a whole results.parquet."""
    import multiprocessing as mp

    d = tmp_path / "shards"
    for i in range(200):
        shards.write(d / f"r{i:03d}.parquet", row(f"r{i:03d}", accuracy=i / 200))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=merge.merge, args=(tmp_path,), kwargs={"warn": print}) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    t = pq.read_table(tmp_path / "results.parquet")
    assert t.num_rows == 200 and len(set(t.column("run_id").to_pylist())) == 200
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]


def _ids(path):
    return sorted(pq.read_table(path).column("run_id").to_pylist())


def test_merge_is_incremental_reads_only_new_shards_and_keeps_a_fixed_schema(tmp_path):
    d = tmp_path / "shards"
    for i in range(30):
        shards.write(d / f"r{i:02d}.parquet", row(f"r{i:02d}"))
    shards.write(d / "s1.parquet", {**row("s1", stage=1), "module_sha256": "x", "condition": None})
    first = merge.merge(tmp_path, warn=lambda m: None)
    assert first.read == 31 and first.rows == 31
    again = merge.merge(tmp_path, warn=lambda m: None)
    assert again.read == 0 and again.rows == 31  # nothing new: no shard opened
    for i in range(30, 35):
        shards.write(d / f"r{i:02d}.parquet", row(f"r{i:02d}"))
    (d / "torn.parquet").write_bytes(b"PAR1\x00\x01")
    warned = []
    res = merge.merge(tmp_path, warn=warned.append)
    assert res.read == 6 and res.rows == 36  # the 5 new shards and the torn one, nothing else
    assert [f for f, _ in res.quarantined] == [str(d / "torn.parquet")] and (tmp_path / "quarantine" / "torn.parquet").exists()
    assert len(warned) == 1 and "torn.parquet" in warned[0]
    assert _ids(tmp_path / "results.parquet") == sorted([f"r{i:02d}" for i in range(35)] + ["s1"])
    t = pq.read_table(tmp_path / "results.parquet")
    assert t.schema.names[:len(shards.RESULT_SCHEMA)] == shards.RESULT_SCHEMA.names
    assert all(not str(f.type) == "null" for f in t.schema)  # no null-typed column, stage 1 and 2 alike
    assert t.schema.field("module_sha256").type == "string" and t.schema.field("regime").type == "int64"
    # the store is a dataset readable as one table, equal to results.parquet
    ds = pq.read_table(tmp_path / merge.STORE / "results")
    assert sorted(ds.column("run_id").to_pylist()) == _ids(tmp_path / "results.parquet")


def test_rewritten_shard_newer_row_wins_and_is_reported(tmp_path):
    d = tmp_path / "shards"
    for i in range(4):
        shards.write(d / f"r{i}.parquet", row(f"r{i}", accuracy=0.1))
    merge.merge(tmp_path, warn=lambda m: None)
    shards.write(d / "r2.parquet", row("r2", accuracy=0.9))  # rerun: a newer shard under the same name
    os.utime(d / "r2.parquet", ns=(os.stat(d / "r2.parquet").st_atime_ns, os.stat(d / "r2.parquet").st_mtime_ns + 10**9))
    warned = []
    res = merge.merge(tmp_path, warn=warned.append)
    assert res.read == 1 and res.replaced == ["r2"] and res.rows == 4 and res.compacted
    assert any("rewritten" in w and "r2" in w for w in warned)
    rows = {r["run_id"]: r["accuracy"] for r in pq.read_table(tmp_path / "results.parquet").to_pylist()}
    assert rows == {"r0": 0.1, "r1": 0.1, "r2": 0.9, "r3": 0.1}
    ds = pq.read_table(tmp_path / merge.STORE / "results")  # compacted: one row per run in the dataset too
    assert ds.num_rows == 4
    # a shard that goes away (moved by hand) leaves the results at the next merge
    (d / "r0.parquet").unlink()
    assert merge.merge(tmp_path, warn=lambda m: None).rows == 3 and _ids(tmp_path / "results.parquet") == ["r1", "r2", "r3"]


def test_many_parts_are_compacted_and_a_broken_manifest_means_a_full_merge(tmp_path, monkeypatch):
    monkeypatch.setattr(merge, "CHUNK", 2)
    monkeypatch.setattr(merge, "COMPACT_AT", 3)
    d = tmp_path / "shards"
    for i in range(9):
        shards.write(d / f"r{i}.parquet", row(f"r{i}"))
    res = merge.merge(tmp_path, warn=lambda m: None)
    assert res.rows == 9 and res.compacted
    assert len(list((tmp_path / merge.STORE / "results").glob("*.parquet"))) == 1
    (tmp_path / merge.STORE / "manifest.json").write_text("{torn")
    (tmp_path / merge.STORE / "results" / "part-99999999.parquet").write_bytes(b"junk")  # not in any manifest
    res = merge.merge(tmp_path, warn=lambda m: None)
    assert res.read == 9 and res.rows == 9 and _ids(tmp_path / "results.parquet") == [f"r{i}" for i in range(9)]
