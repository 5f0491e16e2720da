"""What a run is called and what an example is: TensorBoard run names carry condition and regime;
``results.examples`` maps a prediction's example_id back to its text (the three-line join of docs/results.md)."""

from __future__ import annotations

import pyarrow.parquet as pq
from test_report import N_EVAL, make_sweep

from pipeline import results
from pipeline.run.tracking import run_name


def test_run_names_tell_a_zero_shot_run_from_its_trained_twin():
    row = {"stage": 2, "technique": "lora", "condition": "ported", "host_pair": "a->b", "seed": 0, "run_id": "r1"}
    assert run_name({**row, "regime": 0}) == "stage2/lora/ported/zero-shot/a_to_b/s0-r1"
    assert run_name({**row, "regime": 10}) == "stage2/lora/ported/+10/a_to_b/s0-r1"
    assert run_name({**row, "regime": 10.0, "condition": "head-only"}) == "stage2/lora/head-only/+10/a_to_b/s0-r1"
    one = {"stage": 1, "technique": "lora", "condition": None, "regime": None, "host_pair": "a", "seed": 3, "run_id": "r0"}
    assert run_name(one) == "stage1/lora/origin/a/s3-r0"
    assert run_name({**one, "regime": float("nan")}) == "stage1/lora/origin/a/s3-r0"  # a null read from a table


def test_examples_are_the_runs_eval_split(tmp_path, tiny_spec, write_spec):
    from pipeline.run import data
    from pipeline.spec import load

    tiny_spec["datasets"][0]["eval_size"] = 40
    spec = write_spec(tiny_spec)
    ex = results.examples(spec)
    assert list(ex.columns) == ["dataset", "example_id", "text", "label"] and len(ex) == 40
    _, ev = data.load(load(spec).datasets[0])
    assert list(ex["example_id"]) == list(range(40)) and set(ex["dataset"]) == {"rt"}
    assert list(ex["text"]) == list(ev.texts) and list(ex["label"]) == list(ev.labels)


def test_the_readmes_join_of_predictions_with_their_texts(tmp_path, tiny_spec, write_spec):
    root = tmp_path / "sweep"
    made = make_sweep(root, techniques=("lora",), seeds=(0,), preds="files")
    tiny_spec.update(output_dir=str(root))
    tiny_spec["datasets"][0]["eval_size"] = N_EVAL
    spec = write_spec(tiny_spec)
    truth = results.examples(spec)
    for f in (root / "preds").glob("*.parquet"):  # as a real run writes them: the eval split's own labels
        t = pq.read_table(f).to_pandas()
        t["label"] = truth["label"].to_numpy()[t["example_id"]]
        t["correct"] = t["pred"] == t["label"]
        t.to_parquet(f, index=False)

    # the three lines of docs/results.md
    runs = results.load(spec)[["run_id", "dataset", "technique", "condition", "regime", "seed"]]
    ex = results.examples(spec)
    df = results.predictions(spec).merge(runs, on="run_id").merge(ex, on=["dataset", "example_id", "label"])

    assert len(df) == N_EVAL * len(made["results"]) and df["text"].notna().all()
    assert set(df.groupby("run_id")["text"].nunique()) == {N_EVAL}
