"""Faults on a laptop: kill -9 at any moment, corrupt modules, full or unwritable disks.

Nothing finished is lost, nothing is doubled, and the next run finishes the rest.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import plan as P
from pipeline import spec as S
from pipeline.results import shards
from pipeline.sweep import Sweep

ROOT = Path(__file__).resolve().parent.parent


def small(tiny_spec, **kw):
    tiny_spec.update(techniques=["lora", "ia3"], conditions=["ported", "sampled"], regimes=[0, 6])
    tiny_spec["origin_training"]["steps"] = 30
    tiny_spec.update(kw)
    return tiny_spec


def start(path, *extra):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def visible_shards_valid(sweep: Sweep) -> int:
    n = 0
    for f in sweep.shards.glob("*.parquet"):  # hidden temp files start with '.'
        assert not f.name.startswith(".")
        shards.read(f)  # raises if partial
        n += 1
    return n


@pytest.mark.slow
@pytest.mark.parametrize("when", ["training", "between-runs", "late"])
def test_kill_9_loses_nothing_and_doubles_nothing(tiny_spec, write_spec, when):
    path = write_spec(small(tiny_spec))
    spec = S.load(path)
    sweep = Sweep(Path(spec.output_dir))
    ids = {r.run_id for r in P.build(spec).runs}
    proc = start(path, "--workers", "1")
    target = {"training": 0, "between-runs": 2, "late": 9}[when]
    deadline = time.time() + 300
    while time.time() < deadline:
        if sweep.shards.exists() and len(sweep.done_ids()) >= target and (target or list((sweep.root / "ckpt").glob("*"))
                                                                          or sweep.done_ids()):
            break
        time.sleep(0.05 if when == "training" else 0.2)
    if when == "training":
        time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, at once
    proc.wait()
    before = visible_shards_valid(sweep)
    assert before < len(ids), "the kill came too late to test anything"
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = pq.read_table(sweep.results).to_pylist()
    got = [r["run_id"] for r in rows]
    assert len(got) == len(set(got)), "a run id appears twice"
    assert set(got) == ids, (f"missing {ids - set(got)}, unexpected {set(got) - ids}, "
                             f"quarantined {list((sweep.root / 'quarantine').glob('*'))}\n{out.stdout[-3000:]}")


@pytest.mark.slow
def test_stage2_with_corrupt_module_fails_clearly_then_recovers(tiny_spec, write_spec):
    path = write_spec(small(tiny_spec, techniques=["lora"], conditions=["ported"], regimes=[0]))
    spec = S.load(path)
    sweep = Sweep(Path(spec.output_dir))
    plan = P.build(spec)
    subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, check=True, capture_output=True)
    first = {r["run_id"]: r for r in pq.read_table(sweep.results).to_pylist()}
    s2 = plan.stage2[0]
    mod = sweep.module(s2.needs) / "module.safetensors"
    mod.write_bytes(mod.read_bytes()[:100])  # truncated
    sweep.shard(s2.run_id).unlink()

    from pipeline.run.job import PackFailed, RunPack

    with pytest.raises(PackFailed, match="fails its checksum"):
        RunPack(str(sweep.root), [s2.run_id])()
    assert "fails its checksum" in sweep.error(s2.run_id).read_text().splitlines()[0]
    assert not sweep.shard(s2.run_id).exists()

    # the next run sees the broken module, retrains that stage-1 run, then finishes stage 2
    out = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    again = {r["run_id"]: r for r in pq.read_table(sweep.results).to_pylist()}
    assert set(again) == set(first)
    assert again[s2.run_id]["accuracy"] == first[s2.run_id]["accuracy"]  # deterministic retraining
    assert again[s2.needs]["module_sha256"] == first[s2.needs]["module_sha256"]
    assert not sweep.error(s2.run_id).exists()


@pytest.mark.slow
def test_full_disk_gives_one_line_and_touches_nothing(tiny_spec, write_spec, tmp_path):
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, f"the test needs root to mount a tmpfs: {r.stderr.strip()}"
    try:
        (mnt / "filler").write_bytes(b"x" * 40_000)
        path = write_spec(small(tiny_spec, output_dir=str(mnt / "sweep")))
        out = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=ROOT, capture_output=True,
                             text=True)
        assert out.returncode == 2, out.stdout + out.stderr
        err = out.stderr.strip()
        assert err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err, err
        assert (mnt / "filler").stat().st_size == 40_000
        leftovers = [p for p in (mnt / "sweep").rglob("*") if p.is_file()] if (mnt / "sweep").exists() else []
        assert all(p.name.startswith(".") is False for p in leftovers) and not any(".tmp" in p.name for p in leftovers)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow
def test_two_packs_with_the_same_runs_never_run_one_twice(tiny_spec, write_spec, tmp_path):
    """A double submission (or a local run beside a Slurm task): each run executes exactly once."""
    import json

    path = write_spec(small(tiny_spec, techniques=["lora", "ia3", "prompt"]))
    spec = S.load(path)
    sweep = Sweep(Path(spec.output_dir))
    plan = P.build(spec)
    sweep.write(spec, plan)
    ids = [r.run_id for r in plan.stage1]
    code = ("import json, sys; from pipeline.run.job import RunPack; "
            f"print('RESULT', json.dumps(RunPack({str(sweep.root)!r}, {ids!r}, 1)()))")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0
        results.append(json.loads(out.split("RESULT", 1)[1]))
    done = [rid for r in results for rid in r["done"]]
    assert sorted(done) == sorted(ids), results  # every run once, none twice
    assert all(shards.is_done(sweep.root, rid) for rid in ids)
