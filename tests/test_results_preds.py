"""Per-example predictions through merge and report; folder names with quotes and spaces; hosts.json; no-module
(and head-only, its name in older sweeps).

Synthetic sweeps only (pipeline files written directly, no training): see tests/test_report.py::make_sweep.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_report import EFFECT, N_EVAL, POS_SHARE, make_sweep

from pipeline.results import figures, merge, report, shards, tables

HOSTS = {
    "a": {"model": "embedded:all-minilm-l6-v2", "path": "/models/a", "fingerprint": "0123456789abcdef0123",
          "pooling": "mean", "build_info": {}},
    "b": {"model": "embedded:all-minilm-l6-v2-tweets", "path": None, "fingerprint": None, "pooling": "cls",
          "build_info": {"steps": 120, "distance": {"base": "a", "relative_weight_change": 0.066,
                                                    "mean_pooled_cosine": 0.401, "linear_cka": 0.657,
                                                    "probe_accuracy_base": 0.742, "probe_accuracy_host": 0.681,
                                                    "probe": "logistic regression, 700/500"}}},
}


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(figures, "DPI", 30)


def _row(rid, **kw):
    return {"run_id": rid, "stage": 2, "technique": "lora", "seed": 0, "accuracy": 0.5, "macro_f1": 0.4,
            "condition": "ported", **kw}


def _preds(rid, n=20, seed=0, **over):
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(np.int16)
    pred = rng.integers(0, 2, n).astype(np.int16)
    df = pd.DataFrame({"run_id": rid, "example_id": np.arange(n, dtype=np.int32), "label": label, "pred": pred,
                       "correct": pred == label, "score": rng.normal(0, 1, n).astype(np.float32)})
    for k, v in over.items():
        df[k] = v
    return df


# --------------------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------------------
def test_merge_takes_predictions_of_runs_with_a_valid_shard_and_quarantines_bad_ones(tmp_path):
    root = tmp_path / "sweep"
    (root / "preds").mkdir(parents=True)
    for i in range(4):
        shards.write(root / "shards" / f"r{i}.parquet", _row(f"r{i}"))
    _preds("r0", seed=0).to_parquet(root / "preds" / "r0.parquet")
    _preds("r1", seed=1).to_parquet(root / "preds" / "r1.parquet")
    # r2: a run without predictions (an older run or a failed write): merged without them
    (root / "preds" / "r3.parquet").write_bytes(b"PAR1\x00\x01")  # torn predictions of a run with a shard
    _preds("inprogress").to_parquet(root / "preds" / "inprogress.parquet")  # written before its shard: left alone
    _preds("r0").to_parquet(root / "preds" / "stray.parquet")  # no shard named stray: not merged, not moved
    _preds("r0", n=5).drop(columns=["correct"]).to_parquet(root / "preds" / ".r9.parquet.tmp123")  # temp: ignored
    warnings = []
    res = merge.merge(root, warn=warnings.append)
    assert res.rows == 4 and res.pred_runs == 2 and res.pred_rows == 40
    assert res.preds_path == root / "predictions.parquet"
    t = pq.read_table(root / "predictions.parquet")
    assert sorted(set(t.column("run_id").to_pylist())) == ["r0", "r1"]
    types = {f.name: str(f.type) for f in t.schema}
    assert types["example_id"] == "int32" and types["label"] == "int16" and types["pred"] == "int16"
    assert types["correct"] == "bool" and types["score"] == "float"
    got = t.to_pandas()
    want = _preds("r0", seed=0)
    np.testing.assert_array_equal(got[got["run_id"] == "r0"]["correct"].to_numpy(), want["correct"].to_numpy())
    assert (root / "quarantine" / "preds" / "r3.parquet").exists()
    assert (root / "quarantine" / "preds" / "r3.parquet.reason.txt").read_text().startswith("unreadable")
    assert not (root / "quarantine" / "r3.parquet").exists()  # a shard of that name would be a different file
    assert (root / "preds" / "inprogress.parquet").exists() and (root / "preds" / "stray.parquet").exists()
    assert len(warnings) == 1 and "r3.parquet" in warnings[0] and "quarantine/preds" in warnings[0]
    assert pq.read_table(root / "results.parquet").num_rows == 4
    # the in-progress run finishes: the next merge takes its predictions
    shards.write(root / "shards" / "inprogress.parquet", _row("inprogress"))
    res = merge.merge(root, warn=lambda m: None)
    assert res.rows == 5 and res.pred_runs == 3 and res.pred_rows == 60


def test_merge_quarantines_predictions_that_name_another_run_or_lack_columns(tmp_path):
    root = tmp_path / "s"
    (root / "preds").mkdir(parents=True)
    for rid in ("a", "b", "c", "d"):
        shards.write(root / "shards" / f"{rid}.parquet", _row(rid))
    _preds("a").to_parquet(root / "preds" / "a.parquet")
    _preds("a").to_parquet(root / "preds" / "b.parquet")  # names run a
    _preds("c").drop(columns=["correct"]).to_parquet(root / "preds" / "c.parquet")  # lacks a column
    _preds("d").iloc[:0].to_parquet(root / "preds" / "d.parquet")  # no rows
    res = merge.merge(root, warn=lambda m: None)
    assert res.pred_runs == 1 and set(pq.read_table(root / "predictions.parquet").column("run_id").to_pylist()) == {"a"}
    reasons = {Path(f).name: r for f, r in res.quarantined}
    assert set(reasons) == {"b.parquet", "c.parquet", "d.parquet"}
    assert "another run" in reasons["b.parquet"] and "lacks columns ['correct']" in reasons["c.parquet"]
    assert "no rows" in reasons["d.parquet"]
    assert sorted(p.name for p in (root / "quarantine" / "preds").glob("*.parquet")) == ["b.parquet", "c.parquet",
                                                                                         "d.parquet"]


def test_merge_of_an_older_sweep_without_predictions(tmp_path):
    root = tmp_path / "old"
    for i in range(3):
        shards.write(root / "shards" / f"r{i}.parquet", _row(f"r{i}"))
    res = merge.merge(root, warn=lambda m: None)
    assert res.rows == 3 and res.pred_runs == 0 and res.preds_path is None
    assert not (root / "predictions.parquet").exists()


def test_merge_with_a_quote_and_a_space_in_the_folder_name(tmp_path):
    root = tmp_path / "runs" / "bob's sweep"
    (root / "preds").mkdir(parents=True)
    for i in range(3):
        shards.write(root / "shards" / f"r{i}.parquet", _row(f"r{i}", accuracy=i / 10))
        _preds(f"r{i}", seed=i).to_parquet(root / "preds" / f"r{i}.parquet")
    shards.write(root / "shards" / "copied.parquet", _row("r0"))  # names another run: quarantined by path
    res = merge.merge(root, warn=lambda m: None)
    assert res.rows == 3 and res.pred_runs == 3 and res.pred_rows == 60
    assert sorted(pq.read_table(root / "results.parquet").column("run_id").to_pylist()) == ["r0", "r1", "r2"]
    assert (root / "quarantine" / "copied.parquet").exists()
    assert not [f for f in root.iterdir() if ".tmp" in f.name]


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def full_sweep(tmp_path):
    """A sweep as the newer run side leaves it, in a folder whose name has a quote and a space: shards and
    per-example predictions (not merged yet), a no-module condition, hosts.json, the newer shard columns,
    and one technique (prefix) whose origin modules rank well but predict one class."""
    root = tmp_path / "runs" / "bob's sweep"
    info = make_sweep(root, conditions=("ported", "scratch", "sampled", "no-module"), preds="files",
                      new_columns=True, hosts=HOSTS, one_class=("prefix",), seeds=(0, 1, 2, 3, 4))
    return root, info


def test_report_with_predictions_no_module_and_hosts(full_sweep, tmp_path):
    root, info = full_sweep
    r = report.build(root, n_boot=2000)
    assert r.merged and (root / "results.parquet").exists() and (root / "predictions.parquet").exists()
    assert r.done == r.planned == len(info["plan"])
    md = r.markdown.read_text()
    for section in ("## Summary", "## Did the origin modules learn? (stage 1)", "## Paired comparisons",
                    "## Retention (zero-shot)", "## Receiving host at a glance (stage 2)",
                    "## Receiving-host accuracy (stage 2)", "## Receiving-host macro-F1 (stage 2)",
                    "## Receiving-host AUC (stage 2)", "## Origin-host results (stage 1)", "## Class balance",
                    "## Hosts", "## Provenance", "## Sanity checks"):
        assert section in md, section

    # the main table: two-level t, three contrasts, pooled over directions/datasets/seeds (and says so)
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    assert (pooled["method"] == "two-level t").all()
    assert set(pooled["contrast"]) == {"ported - scratch", "ported - sampled", "ported - no-module"}
    assert len(pooled) == 3 * 2 * 2  # contrasts x techniques x budgets
    assert (pooled["n"] == 10).all() and (pooled["n_examples"] == 10 * N_EVAL).all()  # 2 directions x 5 seeds
    # 2 directions share the 5 seeds: the seed part clusters on the seed, seeds - 1 = 4 df (not 2 x 4)
    assert not pooled["few_units"].any() and not pooled["few_seeds"].any() and (pooled["seed_df"] == 4).all()
    assert (pooled["pairs_without_preds"] == 0).all() and pooled["p_floor"].isna().all()
    zs = pooled[(pooled["b"] == "scratch") & (pooled["regime"] == 0)]
    assert ((zs["mean_diff"] - EFFECT).abs() < 0.03).all() and (zs["ci_low"] > 0).all() and (zs["p_holm"] < 0.05).all()
    assert "two-level t interval" in md and "over host directions, datasets and seeds" in md
    assert "McNemar: pairs favouring a" in md and "| ported - no-module | lora | zero-shot | 10 | 2,000 |" in md
    by_dir = pd.read_csv(r.out / "tables" / "stats_by_direction.csv")
    assert (by_dir["n"] == 5).all() and by_dir["few_units"].all() and (by_dir["seed_df"] == 4).all()
    pairs = pd.read_csv(r.out / "tables" / "pairs.csv")
    assert {"mcnemar_b", "mcnemar_c", "p_mcnemar", "n_examples"} <= set(pairs.columns)
    assert (pairs["n_examples"] == N_EVAL).all() and len(pairs) == 3 * 2 * 2 * 2 * 5

    # no-module: its colour, its heatmap, its retention
    assert figures.COLORS["no-module"] == "#CC79A7"
    assert {f.name for f in r.figures} == {"forest.png", "bars_rt.png", "budget_rt.png", "heatmap_ported_minus_scratch.png",
                                           "heatmap_ported_minus_sampled.png", "heatmap_ported_minus_no-module.png"}
    ret = pd.read_csv(r.out / "tables" / "retention.csv")
    assert set(ret["condition"]) == {"ported", "no-module"} and (ret["n"] == 5).all()
    res = pd.read_parquet(root / "results.parquet").set_index("run_id")
    row = ret[(ret["technique"] == "lora") & (ret["host_pair"] == "a->b") & (ret["condition"] == "ported")].iloc[0]
    ratios = [res.loc[rid, "accuracy"] / res.loc[res.loc[rid, "origin_run"], "accuracy"]
              for rid in row["run_ids"].split(";")]
    assert row["retention_mean"] == pytest.approx(np.mean(ratios)) and row["retention_min"] == pytest.approx(min(ratios))
    assert "retention (no module)" in md
    # above the bare host: the ratio of means over the matched (ported, no-module, origin) runs, per example
    res_all = pd.read_parquet(root / "results.parquet")
    nm = res_all[(res_all["condition"] == "no-module") & (res_all["technique"] == "lora") &
                 (res_all["host_pair"] == "a->b") & (res_all["regime"] == 0)].set_index("seed")["accuracy"]
    ported = res.loc[row["run_ids"].split(";")]
    origin = res.loc[ported["origin_run"], "accuracy"].to_numpy()
    gain, margin = (ported["accuracy"].to_numpy() - nm.loc[ported["seed"]].to_numpy()).mean(), \
        (origin - nm.loc[ported["seed"]].to_numpy()).mean()
    assert margin > 0 and row["above_floor"] == pytest.approx(gain / margin)
    assert row["above_floor_low"] < row["above_floor"] < row["above_floor_high"] and row["above_floor_unit"] == \
        "seeds x examples"
    assert ret[ret["condition"] == "no-module"]["above_floor"].isna().all() and "above the bare host [95% CI]" in md

    # did it learn: lora learned, prefix ranks but predicts one class
    learned = pd.read_csv(r.out / "tables" / "did_it_learn.csv").set_index(["technique", "origin_host"])
    assert (learned.loc["lora", "learned"] == 5).all()
    assert (learned.loc["prefix", "ranks_but_predicts_one_class"] == 5).all()
    assert "**ranks but predicts one class** (5/5)" in md and "learned (5/5)" in md

    # class balance, AUC beside accuracy
    assert "| rt | 180 | 0.570 | 0.550 | 0.550 |" in md
    assert re.search(r"\| lora \| a \| rt \| 0\.\d{3} ± 0\.\d{3} \(5\) \| 0\.\d{3} ± 0\.\d{3} \(5\) \| 0\.\d{3} ± "
                     r"0\.\d{3} \(5\) \|", md)  # stage 1: accuracy, macro-F1, AUC
    assert re.search(r"\| lora \| no-module \| 0\.\d{3} / 0\.\d{3} / 0\.\d{3} \(5\) \|", md)

    # hosts
    assert "**The hosts pool differently (cls, mean)**" in md
    assert "| b | a | 0.066 | 0.401 | 0.657 | 0.742 | 0.681 | logistic regression, 700/500 |" in md
    assert "| a | `embedded:all-minilm-l6-v2` | mean | `0123456789abcdef` |" in md
    assert "ported head bit-equal to the origin module's head (head: trained): **OK**" in md
    assert "per-example predictions (`predictions.parquet`): 160 of 160 finished stage-2 runs" in md

    # the HTML is self-contained; the printed trace query runs as printed
    page = r.html.read_text()
    assert page.count("src='data:image/png;base64,") == len(r.figures) and not re.search(r"src='(?!data:)", page)
    sql = md.split("```sql\n")[1].split("\n```")[0]
    assert "bob''s sweep" in sql
    rows = duckdb.sql(sql).fetchall()
    assert len(rows) == 5 and all(x[2] is not None for x in rows)


def test_trace_sql_quotes_every_literal(tmp_path):
    root = tmp_path / "it's here"
    make_sweep(root, techniques=("lo'ra",), pairs=(("a", "b"),), seeds=(0, 1))
    cells = tables.cell_table(report.load(root).stage(2), ["host_pair", "dataset", "technique", "condition", "regime"])
    cell = cells.iloc[0]
    sql = tables.trace_sql(root, cell)
    assert "it''s here/plan.parquet'" in sql and "'lo''ra'" in sql
    assert {x[0] for x in duckdb.sql(sql).fetchall()} == set(cell["run_ids"].split(";"))
    assert tables.sql_literal("a'b''c") == "'a''b''''c'"


def test_report_without_predictions_falls_back_and_says_so(tmp_path):
    """An older sweep: no predictions, and its control still named head-only (read as no-module)."""
    root = tmp_path / "old sweep"
    make_sweep(root, conditions=("ported", "scratch", "sampled", "head-only"), seeds=(0, 1, 2))
    md = report.build(root, n_boot=200, figures=False).markdown.read_text()
    pooled = pd.read_csv(root / "report" / "tables" / "stats_pooled.csv")
    assert (pooled["method"] == "wilcoxon").all() and "ported - no-module" in set(pooled["contrast"])
    assert "head-only" not in md
    assert "Run-level comparisons, because this sweep has no per-example predictions" in md
    assert "No `hosts.json` in this sweep" in md
    assert "do not record class balance" in md and "majority not recorded" in md
    assert "— none: run-level statistics" in md


def test_report_with_predictions_for_some_runs_only(tmp_path):
    root = tmp_path / "s"
    info = make_sweep(root, pairs=(("a", "b"),), regimes=(0,), seeds=(0, 1, 2, 3), preds="merged", new_columns=True)
    pp = pd.read_parquet(root / "predictions.parquet")
    gone = next(p["run_id"] for p in info["plan"] if p["stage"] == 2 and p["condition"] == "scratch"
                and p["technique"] == "lora")
    pp[pp["run_id"] != gone].to_parquet(root / "predictions.parquet")
    r = report.build(root, n_boot=500, figures=False, merge=False)
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv").set_index(["contrast", "technique"])
    assert pooled.loc[("ported - scratch", "lora"), "n"] == 3
    assert pooled.loc[("ported - scratch", "lora"), "pairs_without_preds"] == 1
    assert pooled.loc[("ported - scratch", "prefix"), "n"] == 4
    md = r.markdown.read_text()
    assert "1 run pair(s) lack per-example predictions" in md


def test_report_with_unreadable_predictions_or_hosts_still_renders(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, pairs=(("a", "b"),), regimes=(0,), seeds=(0, 1), preds="merged", new_columns=True)
    (root / "predictions.parquet").write_bytes(b"PAR1 torn")
    (root / "hosts.json").write_text("{not json")
    md = report.build(root, n_boot=200, figures=False, merge=False).markdown.read_text()
    assert "`predictions.parquet` unreadable" in md and "`hosts.json` unreadable" in md
    assert "Run-level comparisons" in md


def test_needs_merge_sees_unmerged_predictions(tmp_path):
    root = tmp_path / "s"
    info = make_sweep(root, techniques=("lora",), pairs=(("a", "b"),), regimes=(0,), seeds=(0,), preds="files",
                      new_columns=True)
    assert report.needs_merge(root)
    merge.merge(root, warn=lambda m: None)
    assert not report.needs_merge(root)
    (root / "predictions.parquet").unlink()  # results merged by an older version: predictions not yet
    assert report.needs_merge(root)
    merge.merge(root, warn=lambda m: None)
    assert not report.needs_merge(root)
    # predictions of a run still in progress (no shard yet) do not force a merge
    rid = info["results"][0]["run_id"]
    pd.read_parquet(root / "preds" / f"{rid}.parquet").assign(run_id="zzz").to_parquet(root / "preds" / "zzz.parquet")
    assert not report.needs_merge(root)


def test_summary_of_a_sweep_with_a_quote_and_head_only(tmp_path):
    from rich.console import Console

    from pipeline.results.summary import print_summary

    root = tmp_path / "bob's sweep"
    make_sweep(root, conditions=("ported", "scratch", "sampled", "head-only"), pairs=(("a", "b"),), regimes=(0,),
               seeds=(0,))

    class _Sweep:
        results = root / "results.parquet"
        plan_rows = {p["run_id"]: p for p in pd.read_parquet(root / "plan.parquet").to_dict("records")}

    console = Console(record=True, width=200)
    print_summary(console, _Sweep(), None)
    text = console.export_text()
    assert "stage 1: module on its origin host" in text and "head-only" not in text  # an older sweep's name for ...
    assert text.index("ported") < text.index("scratch") < text.index("sampled") < text.index("no-module")  # CONDITIONS
    assert "stage 2 8/8" in text.replace(" (", "(")


def test_summary_counts_only_the_runs_of_this_plan(tmp_path):
    """Results of runs planned before (another run id: the data or a host changed) stay in the folder but are
    not this plan's: the summary neither averages nor counts them, and says how many it left out."""
    from rich.console import Console

    from pipeline.results.summary import print_summary

    root = tmp_path / "s"
    make_sweep(root, conditions=("ported", "scratch"), pairs=(("a", "b"),), regimes=(0,), seeds=(0,))
    res = pd.read_parquet(root / "results.parquet")
    old = res.assign(run_id=res["run_id"] + "-old", accuracy=0.0)  # the same cells, other (older) ids
    pd.concat([res, old]).to_parquet(root / "results.parquet")

    class _Sweep:
        results = root / "results.parquet"
        plan_rows = {p["run_id"]: p for p in pd.read_parquet(root / "plan.parquet").to_dict("records")}

    console = Console(record=True, width=200)
    print_summary(console, _Sweep(), None)
    text = console.export_text().replace(" (", "(")
    n1, n2 = (int((res["stage"] == s).sum()) for s in (1, 2))
    assert f"stage 1 {n1}/{n1}, stage 2 {n2}/{n2};" in text and f"{len(old)} result(s) of runs not in this plan" in text
    assert "0.000" not in text


def test_class_balance_and_learn_verdicts():
    v = tables.learn_verdict
    assert v(0.80, 0.55, 0.85, 0.50) == "learned"
    assert v(0.55, 0.55, 0.80, 1.00) == "ranks but predicts one class"
    assert v(0.45, 0.55, 0.80, 0.00) == "ranks but predicts one class"  # all minority class, still ranks
    assert v(0.55, 0.55, 0.52, 1.00) == "predicts one class"
    assert v(0.55, 0.55, float("nan"), 1.00) == "predicts one class"
    assert v(0.40, 0.55, 0.45, 0.50) == "below the majority class"
    assert v(0.56, 0.55, 0.70, 0.40) == "at the majority level"
    assert v(0.80, float("nan"), 0.85, 0.5) == "majority not recorded"
    assert POS_SHARE == 0.55  # the synthetic sweep's majority class, used in the tables above
    json.dumps(HOSTS)  # hosts.json as the run side writes it is plain JSON
