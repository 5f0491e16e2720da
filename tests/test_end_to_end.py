"""A tiny sweep end to end through submitit's LocalExecutor: plan -> stage 1 -> stage 2 -> shards -> merge."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline import plan as P
from pipeline import spec as S
from pipeline.sweep import Sweep

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_tiny_sweep_end_to_end(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    spec = S.load(path)
    plan = P.build(spec)
    out = cli("run", str(path), "--workers", "2")
    assert "stage 2: mean accuracy on the receiving host" in out.stdout
    sweep = Sweep(Path(spec.output_dir))
    rows = pq.read_table(sweep.results).to_pylist()
    ids = [r["run_id"] for r in rows]
    assert sorted(ids) == sorted(r.run_id for r in plan.runs)  # one row per planned run, none doubled
    by_id = {r["run_id"]: r for r in rows}
    for r in plan.stage2:
        got = by_id[r.run_id]
        assert got["technique"] == r.key["technique"] and got["condition"] == r.key["condition"]
        assert 0.0 <= got["accuracy"] <= 1.0 and got["eval_examples"] == 64
        if r.key["condition"] == "ported":
            assert got["port_exact"] is True
            assert got["origin_module_sha256"] == by_id[r.needs]["module_sha256"]
        assert got["train_steps"] == r.key["regime"]
    for r in plan.stage1:
        assert (sweep.module(r.run_id) / "module.safetensors").exists()
        assert by_id[r.run_id]["train_steps"] == 8
    assert {r["git_commit"] for r in rows} and all(r["v_torch"] for r in rows)
    # the three conditions really load different modules: zero-shot losses differ for every technique
    zs = {(r["technique"], r["condition"]): r["eval_loss"] for r in rows if r["stage"] == 2 and r["regime"] == 0
          and r["host_pair"] == "tiny-a->tiny-b"}
    for t in spec.techniques:
        assert len({zs[(t, c)] for c in ("ported", "scratch", "sampled")}) == 3, t

    # a second run does nothing and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in sweep.shards.iterdir()}
    again = cli("run", str(path))
    assert "stage 1: all 12 runs already done" in again.stdout and "stage 2: all 72 runs already done" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in sweep.shards.iterdir()} == before


@pytest.mark.slow
def test_same_run_twice_gives_identical_metrics(tiny_spec, write_spec):
    """Reproducibility: a run's metrics do not depend on its process, pack or executor."""
    tiny_spec.update(techniques=["lora", "prefix"], conditions=["sampled"], regimes=[3])
    path = write_spec(tiny_spec)
    cli("run", str(path), "--workers", "1")  # a worker process with as many threads as --debug uses
    sweep = Sweep(Path(tiny_spec["output_dir"]))
    first = {r["run_id"]: r for r in pq.read_table(sweep.results).to_pylist()}
    for f in sweep.shards.iterdir():
        if first[f.stem]["stage"] == 2:
            f.unlink()
    cli("run", str(path), "--debug")  # now in one process, in another order
    second = {r["run_id"]: r for r in pq.read_table(sweep.results).to_pylist()}
    keys = ("accuracy", "macro_f1", "eval_loss", "train_loss", "sample_mean_err")
    for rid, r in first.items():
        assert {k: r[k] for k in keys} == {k: second[rid][k] for k in keys}, rid


def test_dry_run_prints_plan_and_runs_nothing(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    out = cli("plan", str(path), "--rows", "2")
    assert "12 stage-1 runs" in out.stdout and "72 stage-2 runs" in out.stdout
    assert not Path(tiny_spec["output_dir"]).exists()


def test_plan_file_records_the_config(tiny_spec, write_spec):
    path = write_spec(tiny_spec)
    spec = S.load(path)
    sweep = Sweep(Path(spec.output_dir))
    sweep.write(spec, P.build(spec))
    rows = sweep.plan_rows
    assert len(rows) == 84
    cfg = json.loads(next(iter(rows.values()))["config_json"])
    assert cfg["dataset"]["source"] == "embedded:rotten_tomatoes"


def test_sweep_folder_with_a_quote_and_a_space_through_run_merge_report(tmp_path, tiny_spec, write_spec):
    """`runs/bob's sweep`: no command pastes the folder into SQL or a shell line."""
    out_dir = tmp_path / "runs" / "bob's sweep"
    tiny_spec.update(techniques=["lora"], conditions=["ported", "scratch"], regimes=["zero-shot"],
                     both_directions=False, output_dir=str(out_dir))
    path = write_spec(tiny_spec)
    run = cli("run", str(path), "--debug")
    assert "runs with results: stage 1 1/1, stage 2 2/2" in run.stdout, run.stdout
    sweep = Sweep(out_dir)
    assert {r["condition"] for r in pq.read_table(sweep.results).to_pylist()} == {None, "ported", "scratch"}
    merged = cli("merge", str(out_dir))
    assert "merged 3 shards" in merged.stdout and "0 quarantined" in merged.stdout
    report = cli("report", str(out_dir), "--bootstrap", "200")
    assert "3 of 3 planned runs have results" in report.stdout
    md = (out_dir / "report" / "report.md").read_text()
    assert "bob''s sweep/plan.parquet" in md  # the trace query quotes the folder for SQL
    assert (out_dir / "report" / "report.html").stat().st_size > 0
    assert "all runs done" in cli("status", str(out_dir)).stdout
