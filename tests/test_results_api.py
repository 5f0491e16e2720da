"""``from pipeline import results``: results.load / results.predictions on synthetic sweep folders
(pipeline files written directly, as in tests/test_report.py), by folder and by spec."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from test_report import N_EVAL, make_sweep

from pipeline import results
from pipeline.errors import UsageError
from tests.conftest import ROOT

PRED_COLUMNS = ["run_id", "example_id", "label", "pred", "correct", "score"]


def test_load_merges_first_and_gives_one_row_per_planned_run_with_its_state(tmp_path):
    root = tmp_path / "sweep"
    dropped = lambda p: p["stage"] == 2 and p["seed"] == 2 and p["condition"] == "sampled"  # noqa: E731
    made = make_sweep(root, techniques=("lora",), seeds=(0, 1, 2), drop=dropped, preds="files")
    missing = [p["run_id"] for p in made["plan"] if dropped(p)]
    (root / "errors").mkdir()
    (root / "errors" / f"{missing[0]}.txt").write_text("boom\n")  # a failed run: error file, no result
    assert not (root / "results.parquet").exists()

    df = results.load(root)
    assert isinstance(df, pd.DataFrame) and (root / "results.parquet").exists()  # merged first
    assert len(df) == len(made["plan"]) and df["run_id"].is_unique
    assert set(df["run_id"]) == {p["run_id"] for p in made["plan"]}
    state = df.set_index("run_id")["state"]
    assert state[missing[0]] == "failed" and (state[missing[1:]] == "missing").all()
    assert (state.drop(missing) == "done").all()
    assert df.loc[df["state"] != "done", "accuracy"].isna().all()
    want = {r["run_id"]: r["accuracy"] for r in made["results"]}
    got = df[df["state"] == "done"].set_index("run_id")["accuracy"]
    assert got.to_dict() == pytest.approx(want)
    for c in ("stage", "technique", "host_pair", "condition", "regime", "seed", "macro_f1"):
        assert c in df.columns

    p = results.predictions(root)
    assert list(p.columns) == PRED_COLUMNS
    assert set(p["run_id"]) == set(want) and len(p) == N_EVAL * len(want)
    one = made["preds"][made["results"][0]["run_id"]]
    mine = p[p["run_id"] == one["run_id"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine[PRED_COLUMNS], one[PRED_COLUMNS], check_dtype=False)


def test_without_predictions_an_empty_frame_with_the_columns(tmp_path):
    root = tmp_path / "old"
    make_sweep(root, techniques=("lora",), seeds=(0,))  # an older sweep: results.parquet, no predictions
    assert len(results.load(root)) > 0
    p = results.predictions(root)
    assert p.empty and list(p.columns) == PRED_COLUMNS
    assert str(p["example_id"].dtype) == "int32" and str(p["correct"].dtype) == "bool"


def test_a_spec_names_its_sweep_folder(tmp_path, tiny_spec, write_spec):
    root = tmp_path / "sweep"
    make_sweep(root, techniques=("lora",), seeds=(0,), preds="merged")
    tiny_spec["output_dir"] = str(root)
    spec = write_spec(tiny_spec)
    pd.testing.assert_frame_equal(results.load(spec), results.load(root))
    assert len(results.predictions(spec)) == len(results.predictions(root)) > 0


def test_no_sweep_yet_is_a_user_error(tmp_path, tiny_spec, write_spec):
    tiny_spec["output_dir"] = str(tmp_path / "nothing")
    with pytest.raises(UsageError, match="no sweep there yet"):
        results.load(write_spec(tiny_spec))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a sweep folder"):
        results.predictions(tmp_path / "empty")


def test_loading_results_imports_no_torch(tmp_path):
    root = tmp_path / "sweep"
    make_sweep(root, techniques=("lora",), seeds=(0,), preds="files")
    code = ("import sys\nfrom pipeline import results\n"
            f"n = len(results.load({str(root)!r})) + len(results.predictions({str(root)!r}))\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft'))\n"
            "print('N', n > 0, 'HEAVY', heavy)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "N True HEAVY []", p.stderr[-2000:]
