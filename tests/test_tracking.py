"""Training curves: TensorBoard event files per run under <sweep>/tb, with the loss, lrs and eval metrics
the shards record; off with tracking: []; a tracker that is not installed costs a warning, not the run."""

import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.sweep import Sweep

ROOT = Path(__file__).resolve().parent.parent


def events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file in ``folder`` (TFRecord framing, tensorboardX's protobufs)."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def run(tiny_spec, write_spec, **changes):
    tiny_spec.update(techniques=["lora"], conditions=["ported"], regimes=[4], both_directions=False, **changes)
    path = write_spec(tiny_spec)
    p = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--workers", "1"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return Sweep(Path(tiny_spec["output_dir"])), p


def test_tensorboard_curves_per_run(tiny_spec, write_spec):
    sweep, _ = run(tiny_spec, write_spec)
    rows = {r["run_id"]: r for r in pq.read_table(sweep.results).to_pylist()}
    assert len(rows) == 2
    for rid, r in rows.items():
        dirs = list((sweep.root / "tb").glob(f"stage{r['stage']}/lora/**/s0-{rid}"))
        assert len(dirs) == 1, rid
        ev = events(dirs[0])
        steps = r["train_steps"]
        assert [s for s, _ in ev["train/loss"]] == list(range(1, steps + 1))
        assert ev["train/lr_module"][0][1] > 0 and "train/lr_head" not in ev  # head-free (default): no head group
        assert ev["eval/accuracy"] == [(steps, pytest.approx(r["accuracy"], abs=1e-6))]
        assert ev["eval/loss"][0][1] == pytest.approx(r["eval_loss"], rel=1e-5)
    # the runs are named by stage/technique/condition[/regime]/pair/seed
    assert {p.relative_to(sweep.root / "tb").parts[:4] for p in (sweep.root / "tb").glob("*/*/*/*")} == {
        ("stage1", "lora", "origin", "tiny-a"), ("stage2", "lora", "ported", "+4")}


def test_tracking_off_and_missing_tracker(tiny_spec, write_spec):
    import importlib.util

    missing = [n for n in ("wandb", "mlflow") if importlib.util.find_spec(n) is None]
    if not missing:
        pytest.skip("wandb and mlflow are both installed here: no missing tracker to check")
    sweep, p = run(tiny_spec, write_spec, tracking=[missing[0]])
    assert not (sweep.root / "tb").exists()
    assert len(pq.read_table(sweep.results)) == 2  # the runs are done all the same
    logs = "".join(f.read_text(errors="replace") for f in (sweep.root / "submitit").rglob("*.err"))
    assert f"tracking: {missing[0]} asked for but not installed" in logs + p.stderr + p.stdout


def test_a_tracker_that_cannot_start_costs_a_warning_not_the_run(caplog):
    from accelerate.tracking import GeneralTracker

    from pipeline.run import tracking
    from pipeline.run.train import accelerator

    class Down(GeneralTracker):
        name, requires_logging_directory = "down", False

        def __init__(self):
            super().__init__()

        @property
        def tracker(self):
            return None

        def start(self):
            raise ConnectionError("tracking server unreachable")

    acc = accelerator("fp32", [Down()])
    with caplog.at_level("WARNING"):
        tracking.start(acc, "p", {"run_id": "x"})
    assert acc.trackers == [] and "could not start (tracking server unreachable)" in caplog.text
    tracking.finish(acc, 0, {"accuracy": 1.0})  # and finishing is a no-op
