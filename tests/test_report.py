"""Tests for pipeline.results.report on synthetic sweeps: plan.parquet + results.parquet built directly (no training).

The synthetic sweep mirrors the columns of a real one (see pipeline.plan.Run.row and
pipeline.run.runner.execute); its accuracies carry a known effect: ported = scratch + EFFECT
at zero-shot, shrinking with the budget, sampled halfway between, no-module (when asked
for; ``head-only``, its name in older sweeps, likewise) a quarter of the way.  ``make_sweep(..., preds=...)`` also writes per-example
predictions consistent with each run's accuracy, ``new_columns=True`` the newer shard
columns (auc, class balance, majority-class accuracy) and ``hosts=`` a hosts.json.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from pipeline.results import figures, report, stats, tables

EFFECT = 0.08
N_EVAL = 200  # eval examples of the synthetic dataset
POS_SHARE = 0.55  # its class-1 share (the majority class)


def _rid(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]


def make_sweep(root: Path, techniques=("lora", "prefix"), pairs=(("a", "b"), ("b", "a")), datasets=("rt",),
               conditions=("ported", "scratch", "sampled"), regimes=(0, 50), seeds=(0, 1, 2),
               drop=lambda row: False, write_results=True, noise=0.01, preds=None, new_columns=False,
               hosts=None, one_class=()) -> dict:
    """Write plan.parquet, sweep.json and results.parquet (rows for which ``drop(row)`` is false).

    ``preds``: None (an older sweep), "merged" (predictions.parquet beside results.parquet) or "files"
    (shards/ and preds/ as the runs leave them, nothing merged).  ``one_class``: techniques whose
    stage-1 modules predict class 1 everywhere while ranking well (AUC 0.75).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    plan, results = [], []
    stage1 = {}
    for t in techniques:
        for o, r in pairs:
            for ds in datasets:
                for s in seeds:
                    if (t, o, ds, s) not in stage1:
                        rid = _rid(1, t, o, ds, s)
                        stage1[(t, o, ds, s)] = rid
                        plan.append({"run_id": rid, "stage": 1, "technique": t, "origin_host": o,
                                     "receiving_host": None, "host_pair": o, "dataset": ds, "seed": s,
                                     "condition": None, "regime": None, "needs": None, "origin_run": None,
                                     "config_json": json.dumps({"stage": 1, "technique": t})})
                    s1 = stage1[(t, o, ds, s)]
                    for c in conditions:
                        for g in regimes:
                            plan.append({"run_id": _rid(2, t, o, r, ds, s, c, g), "stage": 2, "technique": t,
                                         "origin_host": o, "receiving_host": r, "host_pair": f"{o}->{r}",
                                         "dataset": ds, "seed": s, "condition": c, "regime": float(g),
                                         "needs": s1 if c != "scratch" else None, "origin_run": s1,
                                         "config_json": json.dumps({"stage": 2, "condition": c})})
    labels = (np.arange(N_EVAL) < round(POS_SHARE * N_EVAL)).astype(np.int16)
    difficulty = np.random.default_rng(1).normal(0, 1, N_EVAL)  # shared: runs get the easy examples right together
    pred_frames = {}
    for p in plan:
        base = 0.6 + 0.02 * p["seed"] + rng.normal(0, noise)
        flat = False
        if p["stage"] == 1:
            acc = 0.85 + rng.normal(0, noise)
            extra = {"module_sha256": f"sha-{p['run_id']}", "port_exact": None}
            flat = p["technique"] in one_class
        else:
            shrink = 1.0 / (1 + p["regime"] / 50)
            acc = base + 0.2 * (p["regime"] > 0) + {"ported": EFFECT, "sampled": EFFECT / 2, "scratch": 0,
                                                    "no-module": EFFECT / 4, "head-only": EFFECT / 4}[p["condition"]] * shrink
            extra = {"port_exact": True if p["condition"] != "scratch" else None,
                     "origin_module_sha256": f"sha-{p['needs']}" if p["needs"] else None,
                     "sample_mean_err": 0.01 if p["condition"] == "sampled" else None,
                     "sample_std_err": 0.02 if p["condition"] == "sampled" else None}
        if preds or new_columns:  # per-example predictions; the run's metrics are those of its predictions
            if flat:
                pred = np.ones(N_EVAL, np.int16)
            else:
                k = int(round(min(max(acc, 0.0), 1.0) * N_EVAL))
                order = np.argsort(difficulty + rng.normal(0, 0.5, N_EVAL))
                right = np.zeros(N_EVAL, bool)
                right[order[:k]] = True
                pred = np.where(right, labels, 1 - labels).astype(np.int16)
            correct = pred == labels
            score = (np.where(pred == 1, 1.0, -1.0) * (0.5 + rng.random(N_EVAL))).astype(np.float32)
            if flat:
                score = (np.where(labels == 1, 1.0, 0.6) + 0.5 * rng.random(N_EVAL)).astype(np.float32)
            acc = float(correct.mean())
            pred_frames[p["run_id"]] = pd.DataFrame({"run_id": p["run_id"], "example_id": np.arange(N_EVAL, dtype=np.int32),
                                                     "label": labels, "pred": pred, "correct": correct, "score": score})
            if new_columns:
                extra.update({"auc": stats.auc(labels, score), "train_pos_rate": 0.57, "eval_pos_rate": POS_SHARE,
                              "majority_acc": POS_SHARE, "pred_positive_rate": float(pred.mean()),
                              "eval_examples": N_EVAL})
        if not drop(p):
            results.append({**p, "accuracy": float(acc), "macro_f1": float(acc) - 0.05, "eval_loss": 0.5, **extra,
                            "v_torch": "2.13.0", "python": "3.11.7", "git_commit": "abc123", "hostname": "node1",
                            "device": "NVIDIA H100", "finished_at": f"2026-01-01T00:{len(results) % 60:02d}:00+0000"})
    pd.DataFrame(plan).to_parquet(root / "plan.parquet")
    (root / "sweep.json").write_text(json.dumps({"name": "synthetic", "spec_hash": "feedbeef0123",
                                                 "code_version": "abc123", "created": "2026-01-01T00:00:00+0000"}))
    if hosts is not None:
        (root / "hosts.json").write_text(json.dumps(hosts))
    done = {r["run_id"] for r in results}
    if preds == "files":
        from pipeline.results import shards

        (root / "preds").mkdir(parents=True, exist_ok=True)
        for row in results:
            pred_frames[row["run_id"]].to_parquet(root / "preds" / f"{row['run_id']}.parquet")
            shards.write(root / "shards" / f"{row['run_id']}.parquet", row)
    elif write_results and results:
        pd.DataFrame(results).to_parquet(root / "results.parquet")
        if preds == "merged":
            pd.concat([f for rid, f in pred_frames.items() if rid in done]).to_parquet(root / "predictions.parquet")
    return {"plan": plan, "results": results, "preds": pred_frames}


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    monkeypatch.setattr(figures, "DPI", 30)  # same drawing code, a fraction of the rasterising time


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    make_sweep(root)
    return root


def test_cell_table_counts_runs_and_marks_missing(tmp_path):
    root = tmp_path / "s"
    gone = lambda p: (p["stage"] == 2 and p["technique"] == "lora" and p["condition"] == "ported"  # noqa: E731
                      and p["regime"] == 0 and p["host_pair"] == "a->b" and p["seed"] == 1)
    none = lambda p: (p["stage"] == 2 and p["technique"] == "prefix" and p["condition"] == "sampled"  # noqa: E731
                      and p["regime"] == 50 and p["host_pair"] == "b->a")
    info = make_sweep(root, drop=lambda p: gone(p) or none(p))
    d = report.load(root)
    cells = tables.cell_table(d.stage(2), ["host_pair", "dataset", "technique", "condition", "regime"])
    assert len(cells) == 2 * 2 * 3 * 2  # every planned cell is there, finished or not
    assert (cells["planned"] == 3).all()
    c = cells.set_index(["host_pair", "technique", "condition", "regime"])
    one = c.loc[("a->b", "lora", "ported", 0)]
    assert (one["done"], one["missing"], one["accuracy_n"]) == (2, 1, 2)
    missing_id = next(p["run_id"] for p in info["plan"] if gone(p))
    assert one["missing_run_ids"] == missing_id and missing_id not in one["run_ids"]
    assert len(one["run_ids"].split(";")) == 2
    empty = c.loc[("b->a", "prefix", "sampled", 50)]
    assert (empty["done"], empty["missing"]) == (0, 3) and np.isnan(empty["accuracy_mean"])
    full = c.loc[("a->b", "prefix", "scratch", 0)]
    assert full["done"] == 3 and full["missing"] == 0 and full["missing_run_ids"] == ""
    # the cell's mean is the mean of exactly its runs
    res = pd.DataFrame(info["results"]).set_index("run_id")
    assert full["accuracy_mean"] == pytest.approx(res.loc[full["run_ids"].split(";"), "accuracy"].mean())
    # formatting marks missing runs
    header, rows = tables.pivot_stage2(cells, "accuracy", "a->b", "rt")
    lora = next(r for r in rows if r[0] == "lora")
    assert lora[header.index("zero-shot: ported")].endswith("(2/3)†")
    assert lora[header.index("zero-shot: scratch")].endswith("(3)")
    header, rows = tables.pivot_stage2(cells, "accuracy", "b->a", "rt")
    assert next(r for r in rows if r[0] == "prefix")[header.index("50 steps: sampled")] == "— (0/3)†"


def test_fmt_cell():
    assert tables.fmt_cell(0.8123, 0.8, 0.8246, 3, 3) == "0.812 ± 0.012 (3)"
    assert tables.fmt_cell(0.8, float("nan"), float("nan"), 1, 3) == "0.800 (1/3)†"
    assert tables.fmt_cell(float("nan"), float("nan"), float("nan"), 0, 2) == "— (0/2)†"


def test_report_writes_all_files_and_html_is_self_contained(sweep, tmp_path):
    out = tmp_path / "rep"
    r = report.build(sweep, out, n_boot=300)
    names = {f.name for f in r.figures}
    assert names == {"forest.png", "bars_rt.png", "budget_rt.png", "heatmap_ported_minus_scratch.png",
                     "heatmap_ported_minus_sampled.png"}
    for f in r.figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 2_000
    assert {p.name for p in r.tables} == {"stage2_cells.csv", "stage1_cells.csv", "stats_pooled.csv",
                                          "stats_by_direction.csv", "pairs.csv", "missing_runs.csv",
                                          "retention.csv", "class_balance.csv", "did_it_learn.csv", "hosts.csv", "drift.csv",
                                          "drift_tests.csv"}
    for p in r.tables:
        pd.read_csv(p)  # readable CSV
    page = r.html.read_text()
    assert page.count("src='data:image/png;base64,") == len(r.figures)
    assert not re.search(r"src='(?!data:)", page)  # no external image references
    md = r.markdown.read_text()
    for f in r.figures:
        assert f"figures/{f.name}" in md
    for section in ("## Summary", "## Paired comparisons", "## Provenance", "## Sanity checks",
                    "## Origin-host results (stage 1)", "## Receiving-host accuracy (stage 2)"):
        assert section in md
    assert "feedbeef0123" in md and "All 84 planned runs have results" in md
    assert "**OK** — `port_exact` true in 24 of 24 ported runs" in md
    assert "48 match, 0 differ" in md
    assert "NVIDIA H100" in md and "2026-01-01T00:00:00+0000" in md


def test_stats_and_summary_find_the_known_effect(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, seeds=tuple(range(8)), regimes=(0,), noise=0.003)  # run-level noise: the CI has width
    r = report.build(root, tmp_path / "rep", n_boot=300, figures=False)
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    ps = pooled[pooled["b"] == "scratch"]
    np.testing.assert_allclose(ps["mean_diff"], EFFECT, atol=0.005)
    assert (ps["n"] == 16).all() and (ps["p_holm"] < 0.05).all() and not ps["no_variation"].any()
    assert (ps["ci_low"] < ps["mean_diff"]).all() and (ps["mean_diff"] < ps["ci_high"]).all()
    np.testing.assert_allclose(pooled.loc[pooled["b"] == "sampled", "mean_diff"], EFFECT / 2, atol=0.005)
    assert (pooled["method"] == "wilcoxon").all()  # no predictions: the run-level fallback
    md = r.markdown.read_text()
    summary = md[md.index("## Summary"):md.index("## Did the origin")]
    assert "**ported − scratch** (accuracy) — what the trained module carries beyond the technique's own " \
           "initialisation: ported higher in 2 of 2 technique × budget comparisons, by +0.08" in summary
    assert summary.count("all 2 survive Holm") == 2 and "none survives Holm" not in summary
    assert "Run-level comparisons, because this sweep has no per-example predictions" in md


def test_zero_width_differences_are_no_finding(tmp_path):
    """Every pair differs by exactly EFFECT: a zero-width interval, shown as "no variation", never significant."""
    root = tmp_path / "s"
    make_sweep(root, seeds=tuple(range(8)), regimes=(0,), noise=0.0)
    r = report.build(root, tmp_path / "rep", n_boot=300, figures=False)
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    np.testing.assert_allclose(pooled.loc[pooled["b"] == "scratch", "mean_diff"], EFFECT, atol=1e-9)
    assert pooled["no_variation"].all() and pooled["p_holm"].isna().all()
    md = r.markdown.read_text()
    assert "no variation" in md and f"[{EFFECT:+.3f}, {EFFECT:+.3f}]" not in md
    assert "none survives Holm" in md and "survive Holm" not in md.replace("none survives Holm", "")


def test_summary_says_when_nothing_can_be_significant(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, seeds=(0, 1), pairs=(("a", "b"),))
    md = report.build(root, tmp_path / "rep", n_boot=200, figures=False).markdown.read_text()
    assert "none survives Holm" in md and "more seeds are needed" in md


def test_partial_sweep_reports_whats_missing(tmp_path):
    root = tmp_path / "s"
    # stage 1 of technique prefix never ran, so its ported/sampled runs are missing too; one run failed
    info = make_sweep(root, drop=lambda p: p["technique"] == "prefix" and (p["stage"] == 1 or p["needs"]))
    failed = next(p["run_id"] for p in info["plan"] if p["technique"] == "prefix" and p["stage"] == 1)
    (root / "errors").mkdir()
    (root / "errors" / f"{failed}.txt").write_text("RuntimeError: boom\n")
    r = report.build(root, tmp_path / "rep", n_boot=200)
    md = r.markdown.read_text()
    n_missing = sum(1 for p in info["plan"] if p["technique"] == "prefix" and (p["stage"] == 1 or p["needs"]))
    assert f"Partial sweep: {n_missing} of 84 planned runs have no result" in md
    assert "(0/3)†" in md and "| stage 1 | 12 | 6 | 5 | 1 |" in md
    miss = pd.read_csv(r.out / "tables" / "missing_runs.csv")
    assert len(miss) == n_missing and (miss["state"] == "failed").sum() == 1
    assert r.done == 84 - n_missing and r.planned == 84
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    assert set(pooled["technique"]) == {"lora"}  # prefix has no pairs yet: not made up


def test_report_without_any_results(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, write_results=False)
    r = report.build(root, tmp_path / "rep", n_boot=100)
    md = r.markdown.read_text()
    assert r.figures == [] and "0 of 72 planned receiving-host runs" in md
    assert "No paired comparison can be made yet" in md and "— (0/3)†" in md


def test_report_with_only_stage1_results(tmp_path):
    root = tmp_path / "s"
    info = make_sweep(root, drop=lambda p: p["stage"] == 2)
    stage1 = pd.DataFrame(info["results"]).drop(columns=["condition", "regime", "needs", "origin_run",
                                                         "receiving_host", "origin_module_sha256",
                                                         "sample_mean_err", "sample_std_err"], errors="ignore")
    stage1.to_parquet(root / "results.parquet")  # as merge writes it when only stage-1 shards exist
    md = report.build(root, tmp_path / "rep", n_boot=100).markdown.read_text()
    assert "| lora | a | rt | 0.8" in md and "no ported or sampled runs have finished yet" in md


def test_orphan_results_are_counted_not_used(sweep, tmp_path):
    res = pd.read_parquet(sweep / "results.parquet")
    extra = res.iloc[[0]].assign(run_id="notinplan00", accuracy=0.0)
    pd.concat([res, extra]).to_parquet(sweep / "results.parquet")
    md = report.build(sweep, tmp_path / "rep", n_boot=100, figures=False).markdown.read_text()
    assert "1 result rows belong to runs that are not in the current plan" in md


def test_trace_query_returns_the_cells_runs(tmp_path):
    root = tmp_path / "s"
    info = make_sweep(root, drop=lambda p: p["stage"] == 2 and p["seed"] == 2)
    cells = tables.cell_table(report.load(root).stage(2), ["host_pair", "dataset", "technique", "condition",
                                                          "regime"])
    cell = cells.iloc[0]
    rows = duckdb.sql(tables.trace_sql(root, cell)).fetchall()  # run_id, seed, accuracy, macro_f1, ...
    assert [r[1] for r in rows] == [0, 1, 2] and len(rows) == cell["planned"]
    assert {r[0] for r in rows if r[2] is not None} == set(cell["run_ids"].split(";"))
    assert [r[0] for r in rows if r[2] is None] == [cell["missing_run_ids"]]  # seed 2: planned, no result
    acc = {r["run_id"]: r["accuracy"] for r in info["results"]}
    assert all(r[2] == pytest.approx(acc[r[0]]) for r in rows if r[2] is not None)
    assert tables.TRACE_SQL.split("FROM")[0] in report.__doc__  # the docstring shows the same query


def test_merges_first_when_results_are_stale(tmp_path):
    from pipeline.results import shards

    root = tmp_path / "s"
    info = make_sweep(root, write_results=False, techniques=("lora",), pairs=(("a", "b"),), seeds=(0, 1))
    for row in info["results"]:
        shards.write(root / "shards" / f"{row['run_id']}.parquet", row)
    assert report.needs_merge(root)
    r = report.build(root, tmp_path / "rep", n_boot=100, figures=False)
    assert r.merged and (root / "results.parquet").exists() and not report.needs_merge(root)
    assert r.done == len(info["results"])
    assert not report.build(root, tmp_path / "rep", n_boot=100, figures=False).merged
    next((root / "shards").iterdir()).unlink()  # a shard removed since the merge
    assert report.needs_merge(root)
    r = report.build(root, tmp_path / "rep", n_boot=100, figures=False)
    assert r.merged and r.done == len(info["results"]) - 1


def test_cli_report(tmp_path, capsys):
    from pipeline.cli import main

    sweep = tmp_path / "sweep"
    make_sweep(sweep, techniques=("lora",), pairs=(("a", "b"),), regimes=(0, 10))
    assert main(["report", str(sweep), "--out", str(tmp_path / "rep"), "--bootstrap", "100"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (tmp_path / "rep" / "report.html").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the summary, the intervals and p-values it prints, the bars, the module layout (issues 17 and 18)
# --------------------------------------------------------------------------------------------------
def _section(md: str, start: str, end: str) -> str:
    return md[md.index(start):md.index(end)]


def test_summary_is_one_headline_per_contrast_worded_by_the_conditions_table(tmp_path):
    from pipeline.conditions import CONTRASTS

    root = tmp_path / "s"
    make_sweep(root, conditions=("ported", "scratch", "sampled", "no-module"), preds="merged", seeds=(0, 1, 2))
    md = report.build(root, tmp_path / "rep", figures=False).markdown.read_text()
    summary = _section(md, "## Summary", "## Did the origin")
    bullets = [x for x in summary.splitlines() if x.startswith("- ")]
    assert len(bullets) == len(CONTRASTS) == 3
    for line, c in zip(bullets, CONTRASTS):
        assert line.startswith(f"- **{c.a} − {c.b}** (accuracy) — {c.measures}: ")
        assert "95% CI [" in line and "survive" in line
    assert len(summary.split()) < 350  # a few lines, not one 450-word paragraph


def test_two_seeds_mark_the_interval_as_unreliable_beside_it(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, pairs=(("a", "b"),), seeds=(0, 1), preds="merged")
    r = report.build(root, tmp_path / "rep", figures=False)
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    assert (pooled["method"] == "two-level t").all() and (pooled["seed_df"] == 1).all() and pooled["few_seeds"].all()
    md = r.markdown.read_text()
    rows = [x for x in _section(md, "## Paired comparisons", "## Retention").splitlines() if x.startswith("| ported")]
    assert rows and all(re.search(r"\| \[[-+]\d\.\d{3}, [-+]\d\.\d{3}\] ‡ § \|", x) or "| no interval (variance estimated "
                        "as 0) |" in x for x in rows)  # § too: the simulated 1-stratum x 2-seed cell misses 0.93-0.97
    assert "‡ beside an interval: coverage unreliable" in md
    assert "§ beside an interval: its shape" in md
    assert "‡ coverage unreliable" in _section(md, "## Summary", "## Did the origin")


def test_p_at_the_bootstrap_floor_prints_as_a_bound(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, pairs=(("a", "b"),), seeds=(0, 1, 2), regimes=(0,), preds="merged")
    r = report.build(root, tmp_path / "rep", n_boot=999, figures=False, interval="bootstrap")
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    assert (pooled["method"] == "hierarchical bootstrap").all()
    floor = stats.boot_floor(999)
    assert (pooled["p_floor"] == floor).all()
    at = pooled[pooled["p"] <= floor]
    assert len(at)  # the known effect: no resample crosses 0
    md = r.markdown.read_text()
    table = _section(md, "## Paired comparisons", "## Retention")
    assert "| < 0.002 |" in table and f"| {floor:.3f} |" not in table
    for _, row in at.iterrows():
        assert f"| < {row['p_holm']:.2g} *" in table  # Holm-adjusted floor: an upper bound as well
    assert "“< p”: no bootstrap resample crossed 0" in table


def test_fmt_p_bounds():
    assert tables.fmt_p(0.0002, bound=True) == "< 0.0002" and tables.fmt_p(0.0048, bound=True) == "< 0.0048"
    assert tables.fmt_p(0.012) == "0.012" and tables.fmt_p(0.0004) == "< 0.001" and tables.fmt_p(float("nan")) == "—"
    assert tables.fmt_p_eq(0.03) == "= 0.030" and tables.fmt_p_eq(0.0002, True) == "< 0.0002"


def test_bars_show_seeds_as_points_under_five_seeds(tmp_path):
    from matplotlib.collections import PathCollection
    from matplotlib.container import ErrorbarContainer

    for seeds, points in (((0, 1), True), (tuple(range(5)), False)):
        root = tmp_path / f"s{len(seeds)}"
        make_sweep(root, pairs=(("a", "b"),), seeds=seeds, regimes=(0,))
        d = report.load(root)
        s2 = d.stage(2)
        cells = tables.cell_table(s2, ["host_pair", "dataset", "technique", "condition", "regime"])
        fig = figures.draw_bars(cells, "rt", "accuracy", s2[s2["state"] == "done"])
        ax = fig.axes[0]
        scattered = [c for c in ax.collections if isinstance(c, PathCollection)]
        whiskers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        if points:  # one point per run: 2 techniques x 3 conditions x 2 seeds
            assert sum(len(c.get_offsets()) for c in scattered) == 12 and not whiskers
        else:
            assert not scattered and len(whiskers) == 3


def test_results_modules_import_no_circle_even_for_type_hints():
    """SweepData has its own module: tables, prose and sections no longer import the report that imports them."""
    import ast

    folder = Path(report.__file__).parent
    graph = {}
    for p in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):  # every import, TYPE_CHECKING blocks and functions included
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                deps |= {n.split(".")[0] for n in names if (folder / f"{n.split('.')[0]}.py").exists()}
        graph[p.stem] = deps - {p.stem}

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in graph.get(a, ()))

    circles = sorted(m for m in graph if reaches(m, m))
    assert not [m for m in circles if m in ("report", "tables", "prose", "sections", "sweepdata", "comparisons")], circles
