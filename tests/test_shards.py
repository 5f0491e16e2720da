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
