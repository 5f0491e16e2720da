"""The report's tables as data frames: cells with intervals, retention, class balance, did-it-learn, hosts;
and the formatting of their numbers.  Every table is also written as CSV (``report/tables/``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..conditions import NAMES as CONDITIONS
from . import stats
from .floor import above_floor, floor_triples
from .sweepdata import SweepData

METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}  # metrics of the figures and paired statistics
TABLE_METRICS = {**METRICS, "auc": "AUC"}  # metrics of the cell tables
LEARN_MARGIN = 0.02  # accuracy this far above the majority class counts as learned
RANKS_AUC = 0.6  # AUC at or above this, with one class predicted: "ranks but predicts one class"
ONE_CLASS = 0.02  # a predicted class-1 share within this of 0 or 1 counts as predicting one class
FEW = "‡"  # marks an interval resting on too few seeds (or, bootstrap and run-level, too few run pairs)


def is_na(v) -> bool:
    try:
        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def fmt_p_eq(p, bound: bool = False) -> str:
    """'= 0.012', '< 0.001', or '< 0.0002' for a p that is only bounded (for prose)."""
    s = fmt_p(p, bound)
    return s if s.startswith("<") else f"= {s}"


def fmt_p(p, bound: bool = False) -> str:
    """A p-value: 3 decimals, '< 0.001' below that; with ``bound`` (p at its resampling floor, or the Holm
    adjustment of one) '< p', as only an upper bound is known."""
    if is_na(p):
        return "—"
    if bound:
        return f"< {float(p):.2g}" if p < 0.01 else f"< {float(p):.3f}"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def at_floor(r) -> bool:
    """Is this comparison's p at the resampling floor (so p and its Holm adjustment are upper bounds)?"""
    floor, p = r.get("p_floor", math.nan), r.get("p", math.nan)
    return not is_na(floor) and not is_na(p) and p <= floor * (1 + 1e-9)


def few(r) -> bool:
    """The flag behind FEW: too few seeds for the two-level interval, too few run pairs for the others (a shape whose
    coverage cell misses is marked apart: prose.MISS_MARK)."""
    if r.get("method") == "two-level t":
        return bool(r.get("few_seeds", False))
    return bool(r.get("few_units", False))


def ordered(values, order=()) -> list:
    vals = [v for v in pd.unique(pd.Series(list(values))) if not is_na(v)]
    known = [v for v in order if v in vals]
    return known + sorted(v for v in vals if v not in order)


def cell_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per cell (group of ``keys``): planned/done/missing counts, mean and 95% t-CI of
    accuracy, macro-F1 and AUC over the done runs (an undefined AUC is no observation), and the run ids
    behind the cell."""
    rows = []
    for key, g in runs.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = g[g["state"] == "done"]
        row = {**dict(zip(keys, key)), "planned": len(g), "done": len(done), "missing": len(g) - len(done)}
        for m in TABLE_METRICS:
            mean, lo, hi, n = stats.t_interval(done[m].tolist() if m in done else [])
            row.update({f"{m}_mean": mean, f"{m}_ci_low": lo, f"{m}_ci_high": hi, f"{m}_n": n})
        row["run_ids"] = ";".join(sorted(done["run_id"]))
        row["missing_run_ids"] = ";".join(sorted(g.loc[g["state"] != "done", "run_id"]))
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_cell(mean, lo, hi, done: int, planned: int) -> str:
    """'0.812 ± 0.013 (5)'; '(3/5)†' when runs are missing; '— (0/5)†' when none finished."""
    count = f"({done})" if done == planned else f"({done}/{planned})†"
    if done == 0 or is_na(mean):
        return f"— {count}"
    ci = "" if is_na(lo) else f" ± {(hi - lo) / 2:.3f}"
    return f"{mean:.3f}{ci} {count}"


def regime_label(r) -> str:
    return "zero-shot" if int(r) == 0 else f"{int(r)} steps"


def pair_label(p: str) -> str:
    return str(p).replace("->", " → ")


def pivot_stage2(cells: pd.DataFrame, metric: str, host_pair: str, dataset: str) -> tuple[list[str], list[list[str]]]:
    c = cells[(cells["host_pair"] == host_pair) & (cells["dataset"] == dataset)]
    regimes = sorted(int(r) for r in c["regime"].dropna().unique())
    conds = ordered(c["condition"], CONDITIONS)
    header = ["technique", *[f"{regime_label(r)}: {cond}" for r in regimes for cond in conds]]
    body = []
    for tech in ordered(c["technique"]):
        row = [tech]
        for r in regimes:
            for cond in conds:
                x = c[(c["technique"] == tech) & (c["regime"] == r) & (c["condition"] == cond)]
                row.append(fmt_row(x.iloc[0], metric) if len(x) else "")
        body.append(row)
    return header, body


def fmt_row(x, metric: str) -> str:
    return fmt_cell(x[f"{metric}_mean"], x[f"{metric}_ci_low"], x[f"{metric}_ci_high"], int(x["done"]),
                    int(x["planned"]))


def glance_stage2(cells: pd.DataFrame, host_pair: str, dataset: str) -> tuple[list[str], list[list[str]]]:
    """Accuracy, macro-F1 and AUC side by side (means over seeds), rows technique × condition."""
    c = cells[(cells["host_pair"] == host_pair) & (cells["dataset"] == dataset)]
    regimes = sorted(int(r) for r in c["regime"].dropna().unique())
    conds = ordered(c["condition"], CONDITIONS)
    header = ["technique", "condition", *[f"{regime_label(r)}: accuracy / macro-F1 / AUC" for r in regimes]]
    body = []
    for tech in ordered(c["technique"]):
        for cond in conds:
            row = [tech, cond]
            for r in regimes:
                x = c[(c["technique"] == tech) & (c["regime"] == r) & (c["condition"] == cond)]
                if not len(x):
                    row.append("")
                    continue
                x = x.iloc[0]
                done, planned = int(x["done"]), int(x["planned"])
                count = f"({done})" if done == planned else f"({done}/{planned})†"
                vals = " / ".join("—" if is_na(x[f"{m}_mean"]) else f"{x[f'{m}_mean']:.3f}" for m in TABLE_METRICS)
                row.append(f"{vals} {count}" if done else f"— {count}")
            body.append(row)
    return header, body


# --------------------------------------------------------------------------------------------------
# derived tables: retention, class balance, did it learn, hosts
# --------------------------------------------------------------------------------------------------
RETENTION_COLS = ["technique", "host_pair", "condition", "n", "origin_accuracy", "accuracy", "retention_mean",
                  "retention_min", "retention_max", "above_floor", "above_floor_low", "above_floor_high",
                  "above_floor_why", "above_floor_unit", "run_ids"]


def retention_table(d: SweepData) -> pd.DataFrame:
    """Zero-shot accuracy on the receiving host / accuracy of the same stage-1 module on its origin host
    (matched on ``origin_run``), for ported and no-module runs, per technique and host direction.  Ported rows
    also carry retention above the bare host, (ported - no-module) / (origin - no-module), with its 95 % Fieller
    interval (``floor.above_floor``: seeds and, where predictions exist, examples as units)."""

    runs = d.runs
    if "origin_run" not in runs:
        return pd.DataFrame(columns=RETENTION_COLS)
    s1 = runs[(runs["stage"] == 1) & (runs["state"] == "done")].set_index("run_id")["accuracy"]
    s2 = runs[(runs["stage"] == 2) & (runs["state"] == "done") & (runs["regime"] == 0)
              & runs["condition"].isin(["ported", "no-module"])]
    s2 = s2.assign(origin_accuracy=s2["origin_run"].map(s1)).dropna(subset=["origin_accuracy", "accuracy"])
    s2 = s2[s2["origin_accuracy"] > 0]
    triples = floor_triples(runs, d.preds, ["technique", "host_pair"], floors=("no-module",))
    rows = []
    for (tech, hp, cond), g in s2.groupby(["technique", "host_pair", "condition"], sort=True):
        ratio = g["accuracy"] / g["origin_accuracy"]
        above = [np.nan, np.nan, np.nan, "", ""]
        if cond == "ported" and (tech, hp) in triples:
            units, unit = triples[(tech, hp)]
            a = above_floor(units)
            above = [a["above_floor"], a["above_floor_low"], a["above_floor_high"], a["above_floor_why"], unit]
        rows.append([tech, hp, cond, len(g), g["origin_accuracy"].mean(), g["accuracy"].mean(), ratio.mean(),
                     ratio.min(), ratio.max(), *above, ";".join(sorted(g["run_id"]))])
    return pd.DataFrame(rows, columns=RETENTION_COLS)


BALANCE_COLS = ["dataset", "runs", *[f"{c}_{s}" for c in ("train_pos_rate", "eval_pos_rate", "majority_acc")
                                     for s in ("mean", "min", "max", "n")]]


def class_balance_table(d: SweepData) -> pd.DataFrame:
    """Per dataset, over all done runs: class-1 share of the train and eval splits and the accuracy of always
    predicting the eval majority class (what chance is)."""
    done = d.runs[d.runs["state"] == "done"]
    rows = []
    for ds, g in done.groupby("dataset", sort=True):
        row = [ds, len(g)]
        for c in ("train_pos_rate", "eval_pos_rate", "majority_acc"):
            x = g[c].dropna()
            row += [x.mean(), x.min(), x.max(), len(x)] if len(x) else [np.nan, np.nan, np.nan, 0]
        rows.append(row)
    return pd.DataFrame(rows, columns=BALANCE_COLS)


VERDICTS = ("learned", "ranks but predicts one class", "predicts one class", "at the majority level",
            "below the majority class", "majority not recorded")


def learn_verdict(acc, majority, auc_, pred_pos) -> str:
    """One run's "did it learn?" verdict from its accuracy, the eval majority-class accuracy, its AUC and its
    predicted class-1 share (see VERDICTS; thresholds LEARN_MARGIN, RANKS_AUC, ONE_CLASS)."""
    if is_na(acc) or is_na(majority):
        return "majority not recorded"
    one_class = (not is_na(pred_pos) and (pred_pos <= ONE_CLASS or pred_pos >= 1 - ONE_CLASS)) or \
        (is_na(pred_pos) and abs(acc - majority) < 1e-9)
    if acc >= majority + LEARN_MARGIN and not one_class:
        return "learned"
    if one_class:
        return "ranks but predicts one class" if not is_na(auc_) and auc_ >= RANKS_AUC else "predicts one class"
    if acc <= majority - LEARN_MARGIN:
        return "below the majority class"
    return "at the majority level"


LEARN_COLS = ["technique", "origin_host", "dataset", "runs", "accuracy", "majority_acc", "auc", "pred_positive_rate",
              *[v.replace(" ", "_") for v in VERDICTS], "verdict"]


def learn_table(d: SweepData) -> pd.DataFrame:
    """Stage-1 sanity per technique, origin host and dataset: mean accuracy, majority-class accuracy, AUC and
    predicted class-1 share, the count of runs under each verdict and a one-line verdict."""
    s1 = d.runs[(d.runs["stage"] == 1) & (d.runs["state"] == "done")]
    rows = []
    for (tech, origin, ds), g in s1.groupby(["technique", "origin_host", "dataset"], sort=True, dropna=False):
        v = [learn_verdict(*x) for x in zip(g["accuracy"], g["majority_acc"], g["auc"], g["pred_positive_rate"])]
        counts = {k: v.count(k) for k in VERDICTS}
        text = "; ".join((f"**{k}**" if k == "ranks but predicts one class" else k) + f" ({n}/{len(g)})"
                         for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n)
        rows.append([tech, origin, ds, len(g), g["accuracy"].mean(), g["majority_acc"].mean(), g["auc"].mean(),
                     g["pred_positive_rate"].mean(), *counts.values(), text])
    return pd.DataFrame(rows, columns=LEARN_COLS)


HOST_COLS = ["host", "model", "path", "fingerprint", "pooling", "base", "relative_weight_change",
             "mean_pooled_cosine", "linear_cka", "probe_accuracy_base", "probe_accuracy_host", "probe"]


def hosts_table(hosts: dict | None) -> pd.DataFrame:
    rows = []
    for name, h in (hosts or {}).items():
        info = h.get("build_info") if isinstance(h.get("build_info"), dict) else {}
        dist = info.get("distance") if isinstance(info.get("distance"), dict) else {}
        rows.append([name, h.get("model"), h.get("path"), h.get("fingerprint"), h.get("pooling"),
                     *[dist.get(c) for c in HOST_COLS[5:]]])
    return pd.DataFrame(rows, columns=HOST_COLS)


# --------------------------------------------------------------------------------------------------
# tracing a cell to its runs
# --------------------------------------------------------------------------------------------------
TRACE_SQL = """\
SELECT p.run_id, p.seed, r.accuracy, r.macro_f1, r.finished_at, p.origin_run
FROM read_parquet({plan}) AS p
LEFT JOIN read_parquet({results}) AS r USING (run_id)
WHERE p.stage = 2 AND p.technique = {technique} AND p.host_pair = {host_pair}
  AND p.dataset = {dataset} AND p.condition = {condition} AND p.regime = {regime}
ORDER BY p.seed;"""  # every {field} but regime is filled with sql_literal()


def sql_literal(v) -> str:
    """A SQL string literal: single quotes around, single quotes inside doubled (``bob's`` -> ``'bob''s'``)."""
    return "'" + str(v).replace("'", "''") + "'"


def trace_sql(root: Path, cell) -> str:
    """The DuckDB query listing the runs (done and missing) behind one stage-2 cell."""
    return TRACE_SQL.format(plan=sql_literal(Path(root) / "plan.parquet"),
                            results=sql_literal(Path(root) / "results.parquet"),
                            technique=sql_literal(cell["technique"]), host_pair=sql_literal(cell["host_pair"]),
                            dataset=sql_literal(cell["dataset"]), condition=sql_literal(cell["condition"]),
                            regime=int(cell["regime"]))
