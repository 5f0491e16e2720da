"""``pipeline report TARGET``: a paper-style report of a sweep (tables, figures, paired statistics).

The report folder (default ``<sweep>/report/``) holds::

    report.md  report.html        the report (the HTML is self-contained: figures inlined as base64 PNG)
    figures/*.png                 grouped bars, accuracy vs budget, ported - scratch/sampled/head-only heatmaps
    tables/*.csv                  every table of the report, long form, with the run ids behind each cell

It reads ``plan.parquet``, ``results.parquet`` (one row per run), and where
they exist ``predictions.parquet`` (one row per run and eval example; see
pipeline.merge) and ``hosts.json`` (each host's pooling and its distance from
its base).  With predictions, the paired comparisons are a hierarchical
bootstrap over run pairs and examples with per-pair McNemar tests
(pipeline.stats.hierarchical_compare); without (older sweeps), the run-level
Wilcoxon comparisons of earlier versions.

Cells are defined by the plan (plan.parquet), not by what has finished, so a
planned run without a result is counted as missing in its cell and never
silently dropped; results whose run is not in the plan are counted and left out.

Any cell traces back to its runs with one DuckDB query (missing runs show up
with NULL metrics; string literals are quoted with single quotes doubled, so a
folder named ``bob's sweep`` works)::

    SELECT p.run_id, p.seed, r.accuracy, r.macro_f1, r.finished_at, p.origin_run
    FROM read_parquet('SWEEP/plan.parquet') AS p
    LEFT JOIN read_parquet('SWEEP/results.parquet') AS r USING (run_id)
    WHERE p.stage = 2 AND p.technique = 'lora' AND p.host_pair = 'a->b'
      AND p.dataset = 'rt' AND p.condition = 'ported' AND p.regime = 0
    ORDER BY p.seed;
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats

CONDITIONS = ("ported", "scratch", "sampled", "head-only")
# head-only: the receiving host with no PEFT module and the ported classification head (how much the head carries)
CONTRASTS = (("ported", "scratch"), ("ported", "sampled"), ("ported", "head-only"))
COLORS = {"ported": "#0072B2", "scratch": "#E69F00", "sampled": "#009E73",  # Okabe-Ito, colour-blind safe
          "head-only": "#CC79A7"}
METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}  # metrics of the figures and paired statistics
TABLE_METRICS = {**METRICS, "auc": "AUC"}  # metrics of the cell tables
RUN_NUMBERS = ("accuracy", "macro_f1", "auc", "majority_acc", "train_pos_rate", "eval_pos_rate",
               "pred_positive_rate", "eval_examples")
ALPHA = stats.ALPHA
LEARN_MARGIN = 0.02  # accuracy this far above the majority class counts as learned
RANKS_AUC = 0.6  # AUC at or above this, with one class predicted: "ranks but predicts one class"
ONE_CLASS = 0.02  # a predicted class-1 share within this of 0 or 1 counts as predicting one class
FEW = "‡"  # marks an interval from fewer than stats.MIN_UNITS run pairs
DPI = 110  # figure resolution (tests lower it)
SAMPLE_TOL = 0.05  # sampled tensors' mean/std may deviate from the target by this fraction of its std
PLAN_COLS = ("run_id", "stage", "technique", "origin_host", "receiving_host", "host_pair", "dataset", "seed",
             "condition", "regime", "needs", "origin_run")

TRACE_SQL = """\
SELECT p.run_id, p.seed, r.accuracy, r.macro_f1, r.finished_at, p.origin_run
FROM read_parquet({plan}) AS p
LEFT JOIN read_parquet({results}) AS r USING (run_id)
WHERE p.stage = 2 AND p.technique = {technique} AND p.host_pair = {host_pair}
  AND p.dataset = {dataset} AND p.condition = {condition} AND p.regime = {regime}
ORDER BY p.seed;"""  # every {field} but regime is filled with sql_literal()


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
@dataclass
class SweepData:
    root: Path
    info: dict  # sweep.json
    plan: pd.DataFrame  # every planned run
    results: pd.DataFrame  # results.parquet as merged (may include runs no longer planned)
    runs: pd.DataFrame  # the plan with each run's results joined on and its state
    orphans: int = 0  # results whose run id is not in the plan
    quarantined: int = 0
    preds: stats.Predictions | None = None  # per-example correctness of done runs (predictions.parquet)
    hosts: dict | None = None  # hosts.json
    notes: list = field(default_factory=list)  # what could not be read, for the provenance section

    def stage(self, s: int, done_only: bool = False) -> pd.DataFrame:
        r = self.runs[self.runs["stage"] == s]
        return r[r["state"] == "done"] if done_only else r


def needs_merge(root: Path) -> bool:
    """True if results.parquet is missing, older than the newest shard, or holds another number of runs
    than there are shards (a shard was removed or quarantined since the last merge)."""
    import pyarrow.parquet as pq

    shard_dir = root / "shards"
    if not shard_dir.exists():
        return False
    shards = {e.name: e.stat().st_mtime for e in os.scandir(shard_dir)
              if e.name.endswith(".parquet") and not e.name.startswith(".")}
    mtimes = list(shards.values())
    if not mtimes:
        return False
    res = root / "results.parquet"
    if not res.exists() or res.stat().st_mtime < max(mtimes):
        return True
    if (root / "preds").exists():  # predictions of finished runs not merged yet
        pm = [e.stat().st_mtime for e in os.scandir(root / "preds") if e.name in shards]
        pp = root / "predictions.parquet"
        if pm and (not pp.exists() or pp.stat().st_mtime < max(pm)):
            return True
    try:
        return pq.read_metadata(res).num_rows != len(mtimes)
    except Exception:  # unreadable: merging rewrites it
        return True


def load(root: Path) -> SweepData:
    root = Path(root)
    if not (root / "plan.parquet").exists():
        raise FileNotFoundError(f"{root}: no plan.parquet (not a sweep folder; run the sweep first)")
    info = json.loads((root / "sweep.json").read_text()) if (root / "sweep.json").exists() else {}
    plan = pd.read_parquet(root / "plan.parquet")
    results = pd.read_parquet(root / "results.parquet") if (root / "results.parquet").exists() else pd.DataFrame(
        {"run_id": pd.Series([], dtype=object)})
    planned = set(plan["run_id"])
    orphans = int((~results["run_id"].isin(planned)).sum())
    extra = [c for c in results.columns if c not in PLAN_COLS and c != "config_json"]
    runs = plan[[c for c in PLAN_COLS if c in plan.columns]].merge(
        results[["run_id", *extra]], on="run_id", how="left", indicator=True)
    runs["state"] = np.where(runs["_merge"] == "both", "done", "missing")
    runs = runs.drop(columns="_merge")
    errors = root / "errors"
    if errors.exists():
        failed = {p.stem for p in errors.glob("*.txt")}
        runs.loc[(runs["state"] == "missing") & runs["run_id"].isin(failed), "state"] = "failed"
    for c in RUN_NUMBERS:  # older sweeps lack the newer columns: NaN, and the report says "not recorded"
        if c not in runs.columns:
            runs[c] = np.nan
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    runs["stage"] = runs["stage"].astype(int)
    runs["seed"] = runs["seed"].astype(int)
    runs["regime"] = pd.to_numeric(runs["regime"], errors="coerce").astype("Int64")
    quarantined = len(list((root / "quarantine").glob("*.parquet"))) if (root / "quarantine").exists() else 0
    d = SweepData(root, info, plan, results, runs, orphans, quarantined)
    d.preds = _load_preds(root, set(runs.loc[runs["state"] == "done", "run_id"]), d.notes)
    d.hosts = _load_hosts(root, d.notes)
    return d


def _load_preds(root: Path, done: set, notes: list) -> stats.Predictions | None:
    """Per-example correctness of the done runs, or None (no predictions.parquet: an older sweep)."""
    path = root / "predictions.parquet"
    if not path.exists():
        return None
    try:
        df = pd.read_parquet(path, columns=["run_id", "example_id", "correct"])
    except Exception as e:  # unreadable or lacking columns: the run-level statistics still work
        notes.append(f"`predictions.parquet` unreadable ({str(e).splitlines()[0][:100]}); run-level statistics "
                     f"used instead")
        return None
    df = df[df["run_id"].isin(done)]
    return stats.Predictions.from_frame(df) if len(df) else None


def _load_hosts(root: Path, notes: list) -> dict | None:
    path = root / "hosts.json"
    if not path.exists():
        return None
    try:
        hosts = json.loads(path.read_text())
        if not isinstance(hosts, dict):
            raise ValueError("not an object")
        return {str(k): (v if isinstance(v, dict) else {}) for k, v in hosts.items()}
    except (OSError, ValueError) as e:
        notes.append(f"`hosts.json` unreadable ({str(e)[:100]})")
        return None


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _ordered(values, order=()) -> list:
    vals = [v for v in pd.unique(pd.Series(list(values))) if not _na(v)]
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
    if done == 0 or _na(mean):
        return f"— {count}"
    ci = "" if _na(lo) else f" ± {(hi - lo) / 2:.3f}"
    return f"{mean:.3f}{ci} {count}"


def regime_label(r) -> str:
    return "zero-shot" if int(r) == 0 else f"{int(r)} steps"


def pair_label(p: str) -> str:
    return str(p).replace("->", " → ")


def pivot_stage2(cells: pd.DataFrame, metric: str, host_pair: str, dataset: str) -> tuple[list[str], list[list[str]]]:
    c = cells[(cells["host_pair"] == host_pair) & (cells["dataset"] == dataset)]
    regimes = sorted(int(r) for r in c["regime"].dropna().unique())
    conds = _ordered(c["condition"], CONDITIONS)
    header = ["technique", *[f"{regime_label(r)}: {cond}" for r in regimes for cond in conds]]
    body = []
    for tech in _ordered(c["technique"]):
        row = [tech]
        for r in regimes:
            for cond in conds:
                x = c[(c["technique"] == tech) & (c["regime"] == r) & (c["condition"] == cond)]
                row.append(_fmt_row(x.iloc[0], metric) if len(x) else "")
        body.append(row)
    return header, body


def _fmt_row(x, metric: str) -> str:
    return fmt_cell(x[f"{metric}_mean"], x[f"{metric}_ci_low"], x[f"{metric}_ci_high"], int(x["done"]),
                    int(x["planned"]))


# --------------------------------------------------------------------------------------------------
# figures (matplotlib's object API: no pyplot state, Agg canvas)
# --------------------------------------------------------------------------------------------------
def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _halfwidth(lo, hi) -> float:
    return 0.0 if _na(lo) else (hi - lo) / 2


def fig_bars(cells: pd.DataFrame, dataset: str, metric: str, path: Path) -> Path | None:
    """Grouped bars: technique on x, one bar per condition, 95% CI whiskers; rows host direction, cols budget."""
    c = cells[cells["dataset"] == dataset]
    if not c["done"].any():
        return None
    pairs, regimes = _ordered(c["host_pair"]), sorted(int(r) for r in c["regime"].dropna().unique())
    techs, conds = _ordered(c["technique"]), _ordered(c["condition"], CONDITIONS)
    fig = _figure(max(5.0, 1.2 + 0.5 * len(techs) * len(conds) * 0.55) * len(regimes) * 0.75 + 1.5,
                  1.0 + 2.9 * len(pairs))
    axes = fig.subplots(len(pairs), len(regimes), squeeze=False, sharey=True)
    width = 0.8 / len(conds)
    any_missing = False
    for i, hp in enumerate(pairs):
        for j, reg in enumerate(regimes):
            ax = axes[i][j]
            for k, cond in enumerate(conds):
                xs, ys, es, hatch_x = [], [], [], []
                for t, tech in enumerate(techs):
                    x = c[(c["host_pair"] == hp) & (c["regime"] == reg) & (c["condition"] == cond)
                          & (c["technique"] == tech)]
                    if not len(x):
                        continue
                    x = x.iloc[0]
                    pos = t - 0.4 + width * (k + 0.5)
                    if x["done"] == 0:
                        ax.text(pos, 0.02, "×", ha="center", va="bottom", color=COLORS.get(cond, "gray"), fontsize=11)
                        any_missing = True
                        continue
                    xs.append(pos)
                    ys.append(x[f"{metric}_mean"])
                    es.append(_halfwidth(x[f"{metric}_ci_low"], x[f"{metric}_ci_high"]))
                    if x["missing"]:
                        hatch_x.append(len(xs) - 1)
                        any_missing = True
                bars = ax.bar(xs, ys, width * 0.95, yerr=es, capsize=2.5, color=COLORS.get(cond), label=cond,
                              error_kw={"elinewidth": 1, "ecolor": "#333333"})
                for b in hatch_x:
                    bars[b].set_hatch("///")
                    bars[b].set_edgecolor("white")
            ax.set_xticks(range(len(techs)), techs)
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if i == 0:
                ax.set_title(regime_label(reg), fontsize=11)
            if j == 0:
                ax.set_ylabel(f"{pair_label(hp)}\n{METRICS[metric]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    by = dict(zip(labels, handles))
    note = "  (whiskers: 95% CI over seeds; hatched: some planned runs missing; ×: none finished)" if any_missing \
        else "  (whiskers: 95% CI over seeds)"
    fig.legend(by.values(), by.keys(), loc="outside lower center", ncols=len(by), title="condition" + note,
               frameon=False)
    fig.suptitle(f"{METRICS[metric].capitalize()} on the receiving host by technique and condition — dataset "
                 f"{dataset}\n(rows: host direction origin → receiving; columns: further-training budget)",
                 fontsize=12)
    fig.savefig(path)
    return path


def fig_budget(cells: pd.DataFrame, stage1: pd.DataFrame, dataset: str, metric: str, path: Path) -> Path | None:
    """Metric against training budget per condition (zero-shot at 0); rows host direction, cols technique.
    The dashed line is the module's own accuracy on its origin host (stage 1)."""
    c = cells[cells["dataset"] == dataset]
    if not c["done"].any():
        return None
    pairs, techs = _ordered(c["host_pair"]), _ordered(c["technique"])
    regimes, conds = sorted(int(r) for r in c["regime"].dropna().unique()), _ordered(c["condition"], CONDITIONS)
    fig = _figure(1.5 + 3.2 * len(techs), 1.2 + 2.8 * len(pairs))
    axes = fig.subplots(len(pairs), len(techs), squeeze=False, sharey=True, sharex=True)
    dodge = 0.06 * (np.arange(len(conds)) - (len(conds) - 1) / 2)
    drew_origin = False
    for i, hp in enumerate(pairs):
        origin = hp.split("->")[0]
        for j, tech in enumerate(techs):
            ax = axes[i][j]
            for k, cond in enumerate(conds):
                x = c[(c["host_pair"] == hp) & (c["technique"] == tech) & (c["condition"] == cond)]
                x = x.set_index(x["regime"].astype(int)).reindex(regimes)
                ok = x["done"].fillna(0).to_numpy() > 0
                pos = np.arange(len(regimes)) + dodge[k]
                y = x[f"{metric}_mean"].to_numpy(float)
                e = np.array([_halfwidth(lo, hi) for lo, hi in zip(x[f"{metric}_ci_low"], x[f"{metric}_ci_high"])])
                ax.errorbar(pos[ok], y[ok], yerr=e[ok], marker="o", ms=5, capsize=3, lw=1.8,
                            color=COLORS.get(cond), label=cond)
                partial = ok & (x["missing"].fillna(0).to_numpy() > 0)
                if partial.any():
                    ax.plot(pos[partial], y[partial], ls="none", marker="o", ms=10, mfc="none", mec="red",
                            label="some runs missing")
            s1 = stage1[(stage1["technique"] == tech) & (stage1["origin_host"] == origin)
                        & (stage1["dataset"] == dataset) & (stage1["done"] > 0)]
            if len(s1):
                ax.axhline(s1[f"{metric}_mean"].iloc[0], ls="--", color="gray", lw=1.2,
                           label="origin host (stage 1)")
                drew_origin = True
            ax.set_xticks(range(len(regimes)), [regime_label(r).replace(" steps", "") for r in regimes])
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(tech, fontsize=11)
            if j == 0:
                ax.set_ylabel(f"{pair_label(hp)}\n{METRICS[metric]}")
            if i == len(pairs) - 1:
                ax.set_xlabel("further-training steps")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False,
               title="condition (whiskers: 95% CI over seeds)")
    fig.suptitle(f"Does the ported module's head start persist? {METRICS[metric]} vs training budget — dataset "
                 f"{dataset}\n(rows: host direction; columns: technique; budget axis is categorical"
                 + (";\ndashed: the module on its origin host" if drew_origin else "") + ")", fontsize=12)
    fig.savefig(path)
    return path


def fig_heatmap(comp: pd.DataFrame, a: str, b: str, metric: str, path: Path) -> Path | None:
    """Mean paired difference a - b by host direction (rows) x technique (columns), one panel per budget."""
    d = comp[(comp["a"] == a) & (comp["b"] == b)]
    d = d[(d["n"] > 0) & d["mean_diff"].notna()]
    if d.empty:
        return None
    hier = "method" in d and (d["method"] == "hierarchical bootstrap").any()
    techs, pairs = _ordered(d["technique"]), _ordered(d["host_pair"])
    regimes = sorted(int(r) for r in d["regime"].unique())
    lim = max(0.01, float(np.nanmax(np.abs(d["mean_diff"].to_numpy(float)))))
    label_w = 0.75 + 0.075 * max(len(pair_label(p)) for p in pairs)
    fig = _figure(label_w + 1.4 + (0.3 + 0.95 * len(techs)) * len(regimes), 2.3 + 0.62 * len(pairs))
    axes = fig.subplots(1, len(regimes), squeeze=False, sharey=True)[0]
    im = None
    for j, reg in enumerate(regimes):
        ax = axes[j]
        grid = np.full((len(pairs), len(techs)), np.nan)
        dr = d[d["regime"] == reg]
        for _, r in dr.iterrows():
            grid[pairs.index(r["host_pair"]), techs.index(r["technique"])] = r["mean_diff"]
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_facecolor("#dddddd")
        for _, r in dr.iterrows():
            star = "*" if r["p_holm"] < ALPHA else ""
            dark = abs(r["mean_diff"]) > 0.6 * lim
            flat = " flat" if bool(r.get("no_variation", False)) else ""
            ax.text(techs.index(r["technique"]), pairs.index(r["host_pair"]),
                    f"{r['mean_diff']:+.3f}{star}\nn={r['n']}{flat}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
        for pi in range(len(pairs)):
            for ti in range(len(techs)):
                if np.isnan(grid[pi, ti]):
                    ax.text(ti, pi, "no\npairs", ha="center", va="center", fontsize=8, color="#555555")
        ax.set_xticks(range(len(techs)), techs)
        ax.set_yticks(range(len(pairs)), [pair_label(p) for p in pairs])
        ax.set_title(regime_label(reg), fontsize=11)
        ax.set_xlabel("technique")
    axes[0].set_ylabel("host direction (origin → receiving)")
    cb = fig.colorbar(im, ax=list(axes), shrink=0.95, fraction=0.04)
    cb.set_label(f"{a} − {b}\n(blue: {a} better)")
    test = "hierarchical-bootstrap" if hier else "Wilcoxon"
    fig.suptitle(f"{a.capitalize()} − {b}: mean paired difference in {METRICS[metric]}, over seeds and datasets\n"
                 f"(n = matched run pairs; * = Holm-adjusted {test} p < {ALPHA};\nflat = no variation; "
                 f"grey = no pairs)", fontsize=12)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------------
# the document: a list of blocks rendered to Markdown and to HTML
# --------------------------------------------------------------------------------------------------
@dataclass
class Doc:
    blocks: list = field(default_factory=list)

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list], note: str = ""):
        self.blocks.append(("table", header, [[_s(v) for v in r] for r in rows], note))

    def img(self, rel: str, caption: str):
        self.blocks.append(("img", rel, caption))

    def code(self, text: str, lang: str = ""):
        self.blocks.append(("code", text, lang))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {x}" for x in b[1]))
            elif kind == "table":
                _, header, rows, note = b
                lines = ["| " + " | ".join(_md_esc(h) for h in header) + " |",
                         "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
                lines += ["| " + " | ".join(_md_esc(v) for v in r) + " |" for r in rows]
                out.append("\n".join(lines) + (f"\n\n{note}" if note else ""))
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
            elif kind == "code":
                out.append(f"```{b[2]}\n{b[1]}\n```")
        return "\n\n".join(out) + "\n"

    def html(self, base: Path, title: str) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
            elif kind == "table":
                _, header, rows, note = b
                t = ["<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead><tbody>"]
                t += ["<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in r) + "</tr>" for r in rows]
                t.append("</tbody></table>")
                if note:
                    t.append(f"<p class='note'>{_inline(note)}</p>")
                out.append("".join(t))
            elif kind == "img":
                data = base64.b64encode((base / b[1]).read_bytes()).decode()
                out.append(f"<figure><img alt='{html.escape(b[2], quote=True)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{_inline(b[2])}</figcaption></figure>")
            elif kind == "code":
                out.append(f"<pre><code>{html.escape(b[1])}</code></pre>")
        css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45;"
               "color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}"
               "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th:first-child,td:first-child"
               "{text-align:left}thead{background:#f2f2f2}code,pre{background:#f6f6f6}pre{padding:.7em;"
               "overflow-x:auto}img{max-width:100%;border:1px solid #eee}figcaption{font-style:italic;color:#555}"
               ".note{font-size:.85em;color:#555}")
        return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{css}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def _s(v) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3g}"
    return "" if v is None else str(v)


def _md_esc(v: str) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Minimal inline Markdown for the HTML: `code` and **bold**, everything else escaped."""
    parts = re.split(r"(`[^`]+`)", str(text))
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def _na(v) -> bool:
    try:
        return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def _p_eq(p) -> str:
    """'= 0.012' or '< 0.001' (for prose)."""
    s = _p(p)
    return s.replace("<", "< ") if s.startswith("<") else f"= {s}"


def _p(p) -> str:
    if _na(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# --------------------------------------------------------------------------------------------------
# the plain-language summary (every clause computed from the numbers)
# --------------------------------------------------------------------------------------------------
def _is_hier(comp: pd.DataFrame) -> bool:
    return "method" in comp and bool((comp["method"] == "hierarchical bootstrap").any())


def summary_paragraph(d: SweepData, pooled: pd.DataFrame, metric: str, learned: pd.DataFrame | None = None) -> str:
    s2 = d.stage(2)
    done2, planned2 = int((s2["state"] == "done").sum()), len(s2)
    done1, planned1 = int((d.stage(1)["state"] == "done").sum()), len(d.stage(1))
    out = [f"{done2} of {planned2} planned receiving-host runs and {done1} of {planned1} origin-host runs have "
           f"results" + ("" if done2 == planned2 and done1 == planned1
                         else "; the missing ones may change every number below") + "."]
    if learned is not None and len(learned):
        out.append(learn_sentence(learned))
    usable = pooled[(pooled["n"] > 0) & pooled["mean_diff"].notna()] if len(pooled) else pooled
    if usable.empty:
        out.append("No paired comparison can be made yet (no seed has results for two conditions of the same "
                   "technique, host direction, dataset and budget"
                   + (", with per-example predictions for both" if len(pooled) else "") + ").")
        return " ".join(out)
    m = METRICS[metric]
    hier = _is_hier(pooled)
    family = int(pooled["p"].notna().sum())
    flat = int(pooled["no_variation"].sum())
    fam = f"all {family} comparisons" + (f" with variation ({flat} without)" if flat else "")
    for (a, b), g in usable.groupby(["a", "b"], sort=False):
        k = len(g)
        up, down = int((g["mean_diff"] > 0).sum()), int((g["mean_diff"] < 0).sum())
        eq = k - up - down
        lo, hi = g.loc[g["mean_diff"].idxmin()], g.loc[g["mean_diff"].idxmax()]
        sent = (f"Matched on seed, dataset and host direction{' (and example by example)' if hier else ''}, {a} "
                f"modules had a higher mean {m} than {b} ones in {up} of {k} technique × budget comparisons, a lower "
                f"one in {down or 'none'}" + (f" and the same in {eq}" if eq else "") + f"; the mean difference ranged "
                f"from {lo['mean_diff']:+.3f} ({lo['technique']}, {regime_label(lo['regime'])}) to "
                f"{hi['mean_diff']:+.3f} ({hi['technique']}, {regime_label(hi['regime'])}).")
        out.append(sent)
        sig = g[g["p_holm"] < ALPHA]
        if len(sig):
            all_few = bool(sig["few_units"].all())
            items = ", ".join(f"{r['technique']} at {regime_label(r['regime'])} ({r['mean_diff']:+.3f}, "
                              f"95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p_Holm {_p_eq(r['p_holm'])}"
                              + (f" {FEW}" if r["few_units"] and not all_few else "") + ")"
                              for _, r in sig.iterrows())
            out.append(f"After Holm correction across {fam}, {len(sig)} of these {k} are significant at "
                       f"α = {ALPHA}: {items}"
                       + (f" — {'each' if all_few else f'those marked {FEW}'} from fewer than {stats.MIN_UNITS} run "
                          f"pairs, so read the intervals as rough" if sig["few_units"].any() else "") + ".")
        else:
            tail = ""
            if g["no_variation"].all():
                tail = " (no comparison shows any variation: the two conditions made the same predictions)"
            elif hier:
                if g["few_units"].all():
                    tail = (f" (each rests on fewer than {stats.MIN_UNITS} run pairs; more seeds or host pairs are "
                            f"needed to narrow the intervals)")
            else:
                nz = int((g["n"] - g["ties"]).max())
                floor = stats.min_wilcoxon_p(nz) if nz > 0 else math.nan
                if nz == 0:
                    tail = " (every pair is tied)"
                elif floor * max(family, 1) >= ALPHA:
                    tail = (f" (with at most {nz} non-tied pairs per comparison the smallest possible Wilcoxon p is "
                            f"{floor:.3g}, too large to survive Holm correction over {family} comparisons; "
                            f"more seeds are needed to detect a difference)")
            out.append(f"None of these {k} differences is significant at α = {ALPHA} after Holm correction across "
                       f"{fam}{tail}.")
        regs = sorted(int(r) for r in g["regime"].unique())
        if a == "ported" and b == "scratch" and len(regs) > 1:
            first = g[g["regime"] == regs[0]]["mean_diff"].mean()
            last = g[g["regime"] == regs[-1]]["mean_diff"].mean()
            out.append(f"Averaged over techniques, the {a} − {b} difference is {first:+.3f} at "
                       f"{regime_label(regs[0])} and {last:+.3f} after {regs[-1]} steps.")
    return " ".join(out)


# --------------------------------------------------------------------------------------------------
# derived tables: retention, class balance, did it learn, hosts
# --------------------------------------------------------------------------------------------------
RETENTION_COLS = ["technique", "host_pair", "condition", "n", "origin_accuracy", "accuracy", "retention_mean",
                  "retention_min", "retention_max", "run_ids"]


def retention_table(d: SweepData) -> pd.DataFrame:
    """Zero-shot accuracy on the receiving host / accuracy of the same stage-1 module on its origin host
    (matched on ``origin_run``), for ported and head-only runs, per technique and host direction."""
    runs = d.runs
    if "origin_run" not in runs:
        return pd.DataFrame(columns=RETENTION_COLS)
    s1 = runs[(runs["stage"] == 1) & (runs["state"] == "done")].set_index("run_id")["accuracy"]
    s2 = runs[(runs["stage"] == 2) & (runs["state"] == "done") & (runs["regime"] == 0)
              & runs["condition"].isin(["ported", "head-only"])]
    s2 = s2.assign(origin_accuracy=s2["origin_run"].map(s1)).dropna(subset=["origin_accuracy", "accuracy"])
    s2 = s2[s2["origin_accuracy"] > 0]
    rows = []
    for (tech, hp, cond), g in s2.groupby(["technique", "host_pair", "condition"], sort=True):
        ratio = g["accuracy"] / g["origin_accuracy"]
        rows.append([tech, hp, cond, len(g), g["origin_accuracy"].mean(), g["accuracy"].mean(), ratio.mean(),
                     ratio.min(), ratio.max(), ";".join(sorted(g["run_id"]))])
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
    if _na(acc) or _na(majority):
        return "majority not recorded"
    one_class = (not _na(pred_pos) and (pred_pos <= ONE_CLASS or pred_pos >= 1 - ONE_CLASS)) or \
        (_na(pred_pos) and abs(acc - majority) < 1e-9)
    if acc >= majority + LEARN_MARGIN and not one_class:
        return "learned"
    if one_class:
        return "ranks but predicts one class" if not _na(auc_) and auc_ >= RANKS_AUC else "predicts one class"
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


def learn_sentence(learned: pd.DataFrame) -> str:
    k = len(learned)
    if learned["majority_not_recorded"].sum() == learned["runs"].sum():
        return ("The origin runs do not record the majority-class accuracy (an older sweep), so whether the modules "
                "learned is judged from the tables alone.")
    full = int((learned["learned"] == learned["runs"]).sum())
    none = int((learned["learned"] == 0).sum())
    ranks = int((learned["ranks_but_predicts_one_class"] > 0).sum())
    return (f"Origin modules: in {full} of {k} technique × origin-host × dataset cells every run beats the "
            f"majority class by at least {LEARN_MARGIN}, in {none} none does"
            + (f", and in {ranks} some runs rank the classes (AUC ≥ {RANKS_AUC}) but predict one class" if ranks
               else "") + " (see “Did the origin modules learn?”).")


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


def glance_stage2(cells: pd.DataFrame, host_pair: str, dataset: str) -> tuple[list[str], list[list[str]]]:
    """Accuracy, macro-F1 and AUC side by side (means over seeds), rows technique × condition."""
    c = cells[(cells["host_pair"] == host_pair) & (cells["dataset"] == dataset)]
    regimes = sorted(int(r) for r in c["regime"].dropna().unique())
    conds = _ordered(c["condition"], CONDITIONS)
    header = ["technique", "condition", *[f"{regime_label(r)}: accuracy / macro-F1 / AUC" for r in regimes]]
    body = []
    for tech in _ordered(c["technique"]):
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
                vals = " / ".join("—" if _na(x[f"{m}_mean"]) else f"{x[f'{m}_mean']:.3f}" for m in TABLE_METRICS)
                row.append(f"{vals} {count}" if done else f"— {count}")
            body.append(row)
    return header, body


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
@dataclass
class ReportResult:
    out: Path
    markdown: Path
    html: Path
    figures: list[Path]
    tables: list[Path]
    done: int
    planned: int
    merged: bool


def contrasts_of(d: SweepData) -> list[tuple[str, str]]:
    """The contrasts whose two conditions are both planned (ported - head-only only with head-only runs)."""
    conds = set(d.stage(2)["condition"].dropna()) if len(d.stage(2)) else set()
    return [(a, b) for a, b in CONTRASTS if a in conds and b in conds] or list(CONTRASTS[:2])


def compare(d: SweepData, done2: pd.DataFrame, by: list[str], metric: str, n_boot: int, seed: int) -> pd.DataFrame:
    """The comparison table: hierarchical bootstrap on predictions when the sweep has them (accuracy),
    else the run-level Wilcoxon comparisons."""
    contrasts = contrasts_of(d)
    if metric == "accuracy" and d.preds is not None:
        return stats.hierarchical_compare(done2, d.preds, contrasts, by, n_boot, seed)
    return stats.paired_compare(done2, contrasts, by, metric, n_boot, seed)


def pairs_table(d: SweepData, done2: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every matched run pair with both run ids and its difference; with predictions also the paired
    example count, the discordant counts and the pair's exact McNemar p."""
    keys = list(stats.PAIR_KEYS)
    frames = []
    for a, b in contrasts_of(d):
        p = stats.paired_differences(done2, a, b, metric)
        if p.empty:
            continue
        p = p.assign(contrast=f"{a} - {b}")
        if d.preds is not None:
            pp = stats.prediction_pairs(done2, d.preds, a, b)
            p = p.merge(pp[[*keys, "n_examples", "mcnemar_b", "mcnemar_c", "p_mcnemar"]], on=keys, how="left")
        frames.append(p)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*keys, "contrast", "diff"])


def build(root: Path, out: Path | None = None, metric: str = "accuracy", n_boot: int = 10_000, seed: int = 0,
          merge: bool = True, figures: bool = True, warn=print) -> ReportResult:
    """Write the report of the sweep at ``root`` into ``out`` (default ``root/report``).

    Merges first when results.parquet is missing or older than the newest shard
    (``merge=False`` skips that); ``figures=False`` leaves the figures out (fast).
    """
    root = Path(root)
    if not (root / "plan.parquet").exists():
        raise FileNotFoundError(f"{root}: no plan.parquet (not a sweep folder; run the sweep first)")
    merged = False
    if merge and needs_merge(root):
        from .merge import merge as do_merge

        do_merge(root, warn=warn)
        merged = True
    d = load(root)
    out = Path(out) if out else root / "report"
    figdir, tabdir = out / "figures", out / "tables"
    for folder, pattern in ((figdir, "*.png"), (tabdir, "*.csv")):  # stale files of an earlier report
        folder.mkdir(parents=True, exist_ok=True)
        for f in folder.glob(pattern):
            f.unlink()

    s1, s2 = d.stage(1), d.stage(2)
    cells2 = cell_table(s2, ["host_pair", "dataset", "technique", "condition", "regime"]) if len(s2) else \
        pd.DataFrame()
    cells1 = cell_table(s1, ["technique", "origin_host", "dataset"]) if len(s1) else pd.DataFrame()
    done2 = s2[s2["state"] == "done"]
    pooled = compare(d, done2, ["technique", "regime"], metric, n_boot, seed)
    by_dir = compare(d, done2, ["technique", "host_pair", "regime"], metric, n_boot, seed)
    extra = {"retention": retention_table(d), "class_balance": class_balance_table(d), "did_it_learn": learn_table(d),
             "hosts": hosts_table(d.hosts)}

    tables = []
    for name, df in (("stage2_cells", cells2), ("stage1_cells", cells1), ("stats_pooled", pooled),
                     ("stats_by_direction", by_dir), ("pairs", pairs_table(d, done2, metric)), *extra.items(),
                     ("missing_runs", d.runs.loc[d.runs["state"] != "done", [*PLAN_COLS[:10], "state"]])):
        p = tabdir / f"{name}.csv"
        df.to_csv(p, index=False)
        tables.append(p)

    draw, figures = figures, []
    datasets = _ordered(s2["dataset"]) if len(s2) and draw else []
    for ds in datasets:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds)
        for fn, name in ((lambda p, ds=ds: fig_bars(cells2, ds, metric, p), f"bars_{slug}.png"),
                         (lambda p, ds=ds: fig_budget(cells2, cells1, ds, metric, p), f"budget_{slug}.png")):
            f = fn(figdir / name)
            if f:
                figures.append(f)
    for a, b in contrasts_of(d) if draw else ():
        f = fig_heatmap(by_dir, a, b, metric, figdir / f"heatmap_{a}_minus_{b}.png")
        if f:
            figures.append(f)

    doc = _document(d, out, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed, extra)
    md, ht = out / "report.md", out / "report.html"
    title = f"PEFT portability report: {d.info.get('name', root.name)}"
    _atomic(md, doc.markdown())
    _atomic(ht, doc.html(out, title))
    return ReportResult(out, md, ht, figures, tables, int((d.runs["state"] == "done").sum()), len(d.runs), merged)


def _document(d: SweepData, out: Path, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed,
              extra: dict) -> Doc:
    doc = Doc()
    name = d.info.get("name", d.root.name)
    m = METRICS[metric]
    doc.h(1, f"PEFT portability report: {name}")
    n_missing = int((d.runs["state"] != "done").sum())
    doc.p(f"Sweep `{d.root}` — spec `{name}` (hash `{d.info.get('spec_hash', '?')}`), generated "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}. "
          + (f"**Partial sweep: {n_missing} of {len(d.runs)} planned runs have no result** (listed in "
             f"`tables/missing_runs.csv`; cells with missing runs are marked †)." if n_missing else
             f"All {len(d.runs)} planned runs have results."))

    doc.h(2, "Summary")
    doc.p(summary_paragraph(d, pooled, metric, extra["did_it_learn"]))

    _learned(doc, extra["did_it_learn"])
    _comparisons(doc, d, pooled, by_dir, metric, n_boot, seed)
    _retention(doc, extra["retention"])

    doc.h(2, "Figures")
    captions = {"bars": "Grouped bars: mean {m} per technique and condition, 95% t-CI over seeds, per host direction "
                        "(rows) and budget (columns)",
                "budget": "{m} against the further-training budget per condition (zero-shot at 0); dashed: the module "
                          "on its origin host",
                "heatmap": "Mean paired difference by technique and host direction, one panel per budget"}
    for f in figures:
        kind = f.stem.split("_")[0]
        cap = captions[kind].format(m=m)
        if kind != "heatmap":
            cap += f" — dataset {f.stem.split('_', 1)[1]}"
        else:
            cap = f"{f.stem.split('_', 1)[1].replace('_minus_', ' − ')}: " + cap
        doc.img(f"figures/{f.name}", cap)
    if not figures:
        doc.p("No figures (no stage-2 results yet, or figures were switched off).")

    doc.h(2, "Receiving host at a glance (stage 2)")
    if cells2.empty:
        doc.p("No stage-2 runs planned.")
    else:
        doc.p("Accuracy, macro-F1 and ROC AUC side by side, each the mean over seeds (runs behind the cell); AUC "
              "ranks the eval examples by the class-1 score and is — where a run did not record it. The tables "
              "after this one give 95% intervals.")
        for hp in _ordered(cells2["host_pair"]):
            for ds in _ordered(cells2["dataset"]):
                doc.h(3, f"{pair_label(hp)}, dataset {ds}")
                doc.table(*glance_stage2(cells2, hp, ds))

    legend = ("Cells: mean ± half-width of the 95% t-interval over seeds, (runs behind the cell); "
              "(k/n)† = only k of n planned runs have results; — = none finished (or, for AUC, not recorded). "
              "Tables with run ids: `tables/stage2_cells.csv`.")
    for metric_key in TABLE_METRICS:
        doc.h(2, f"Receiving-host {TABLE_METRICS[metric_key]} (stage 2)")
        if cells2.empty:
            doc.p("No stage-2 runs planned.")
            continue
        for hp in _ordered(cells2["host_pair"]):
            for ds in _ordered(cells2["dataset"]):
                doc.h(3, f"{pair_label(hp)}, dataset {ds}")
                doc.table(*pivot_stage2(cells2, metric_key, hp, ds), note=legend)

    doc.h(2, "Origin-host results (stage 1)")
    if cells1.empty:
        doc.p("No stage-1 runs planned.")
    else:
        doc.p("The module on the host it was trained on, before porting: mean ± 95% t-CI half-width over seeds "
              "(runs).")
        rows = [[r["technique"], r["origin_host"], r["dataset"], _fmt_row(r, "accuracy"), _fmt_row(r, "macro_f1"),
                 _fmt_row(r, "auc")] for _, r in cells1.iterrows()]
        doc.table(["technique", "origin host", "dataset", "accuracy", "macro-F1", "AUC"], rows)

    _balance(doc, extra["class_balance"])
    _hosts(doc, d, extra["hosts"])
    _provenance(doc, d)
    _sanity(doc, d, cells2)
    doc.h(2, "Files")
    doc.ul([f"`tables/{p}` — {what}" for p, what in (
        ("stage2_cells.csv", "every stage-2 cell: planned/done/missing, means, CIs (accuracy, macro-F1, AUC), run ids"),
        ("stage1_cells.csv", "every stage-1 cell"),
        ("stats_pooled.csv", "the paired comparisons above"),
        ("stats_by_direction.csv", "paired comparisons per host direction (the heatmaps)"),
        ("pairs.csv", "every matched pair with both run ids and its difference (with predictions: paired examples, "
                      "discordant counts, McNemar p)"),
        ("retention.csv", "zero-shot retention of ported and head-only runs, with run ids"),
        ("did_it_learn.csv", "stage-1 accuracy vs the majority class, AUC, verdict counts"),
        ("class_balance.csv", "class-1 share of train and eval, majority-class accuracy, per dataset"),
        ("hosts.csv", "each host's pooling and its distance from its base (from hosts.json)"),
        ("missing_runs.csv", "planned runs without a result (state missing or failed)"))])
    return doc


def _comparisons(doc: Doc, d: SweepData, pooled: pd.DataFrame, by_dir: pd.DataFrame, metric: str, n_boot: int,
                 seed: int) -> None:
    m = METRICS[metric]
    doc.h(2, "Paired comparisons")
    family = int(pooled["p"].notna().sum()) if len(pooled) else 0
    if _is_hier(pooled):
        lacking = int(pooled["pairs_without_preds"].sum())
        doc.p(f"Each run pair is two runs that differ only in condition: same technique, host direction, dataset, "
              f"budget and seed; within a pair the two runs are compared example by example on the same eval "
              f"examples. Each row pools, for one technique at one budget, its run pairs **over host directions, "
              f"datasets and seeds**. a − b: the mean over run pairs of the difference in {m}. 95% CI: percentile "
              f"interval of a two-level bootstrap ({n_boot} resamples, seed {seed}): run pairs drawn with replacement, "
              f"then examples within each drawn pair (the same examples for a and b). p: two-sided bootstrap p-value "
              f"(twice the smaller share of resampled differences at or beyond 0, +1-corrected, so never 0). p_Holm: "
              f"Holm's step-down correction across the {family} comparisons of this table. McNemar: in how many of "
              f"the run pairs a is better at p < {ALPHA} (exact McNemar test on the examples only one of the two runs "
              f"got right; per pair, uncorrected); after the semicolon, how many favour b."
              + (f" {lacking} run pair(s) lack per-example predictions for one of their runs (older or failed "
                 f"prediction files) and are left out." if lacking else ""))
    else:
        why = ("this sweep has no per-example predictions (`predictions.parquet`: made by an earlier version)"
               if d.preds is None else f"{m} has no per-example decomposition")
        doc.p(f"Run-level comparisons, because {why}: each pair is two runs that differ only in condition (same "
              f"technique, host direction, dataset, budget and seed), one number per run; rows pool the pairs over "
              f"host directions, datasets and seeds. Differences are a − b in {m}. CI: percentile bootstrap over "
              f"pairs ({n_boot} resamples, seed {seed}); p: two-sided Wilcoxon signed-rank test (zero differences "
              f"dropped); p_Holm: Holm's step-down correction across the {family} comparisons of this table. W/L/T: "
              f"pairs where a is better / worse / tied.")
    doc.table(*_stats_rows(pooled, ["technique", "regime"]))
    doc.p(f"Per host direction (pooled over datasets and seeds; Holm across these {len(by_dir)} comparisons, a "
          f"separate family): see `tables/stats_by_direction.csv` and the heatmaps below.")


def _stats_rows(comp: pd.DataFrame, by: list[str]):
    hier = _is_hier(comp)
    header = ["comparison", *["budget" if b == "regime" else b.replace("_", " ") for b in by], "run pairs",
              *(["examples"] if hier else []), "mean a", "mean b", "a − b", "95% CI", "p", "p_Holm",
              "McNemar: pairs favouring a" if hier else "W/L/T", "flag"]
    rows = []
    for _, r in comp.iterrows():
        keys = [regime_label(r[b]) if b == "regime" else pair_label(r[b]) for b in by]
        if r["n"] == 0 or _na(r["mean_diff"]):
            rows.append([r["contrast"], *keys, 0, *(["—"] if hier else []), "—", "—", "—", "—", "—", "—", "—",
                         "no pairs with predictions"])
            continue
        ci = "no variation" if r["no_variation"] else "—" if _na(r["ci_low"]) else \
            f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        sig = " *" if r["p_holm"] < ALPHA else ""
        if hier:
            tail = f"; {r['mcnemar_favour_b']} favour {r['b']}" if r["mcnemar_favour_b"] else ""
            last = f"{r['mcnemar_favour_a']} of {r['mcnemar_n']}{tail}"
        else:
            last = f"{r['wins']}/{r['losses']}/{r['ties']}"
        rows.append([r["contrast"], *keys, int(r["n"]), *([f"{int(r['n_examples']):,}"] if hier else []),
                     f"{r['mean_a']:.3f}", f"{r['mean_b']:.3f}", f"{r['mean_diff']:+.3f}", ci,
                     "—" if r["no_variation"] else _p(r["p"]), _p(r["p_holm"]) + sig, last,
                     FEW if r["few_units"] else ""])
    notes = []
    if len(comp):
        notes.append(f"A star (*) after p_Holm marks p_Holm < {ALPHA}.")
        if comp["few_units"].any():
            notes.append(f"{FEW} fewer than {stats.MIN_UNITS} run pairs behind the interval: resampling so few units "
                         f"gives an interval that is likely too narrow; read it as rough.")
        if comp["no_variation"].any():
            notes.append("no variation: every resample gave the same difference (e.g. both conditions predict the "
                         "same class on every example); such a comparison is no finding, gets no p-value and is not "
                         "in the Holm family.")
    return header, rows, " ".join(notes) if notes else "No pairs yet."


def _learned(doc: Doc, learned: pd.DataFrame) -> None:
    doc.h(2, "Did the origin modules learn? (stage 1)")
    if learned.empty:
        doc.p("No stage-1 results yet.")
        return
    doc.p(f"Each stage-1 run against the accuracy of always predicting the eval set's majority class: **learned** = "
          f"at least {LEARN_MARGIN} above it without predicting one class; **ranks but predicts one class** = (almost) "
          f"every prediction is one class (predicted class-1 share within {ONE_CLASS} of 0 or 1) although the scores "
          f"rank the classes (AUC ≥ {RANKS_AUC}): the module learned something its decision threshold hides; "
          f"**predicts one class** = the same with AUC below {RANKS_AUC}. A ported module whose origin did not learn "
          f"has nothing to port.")
    rows = [[r["technique"], r["origin_host"], r["dataset"], r["runs"], _f3(r["accuracy"]), _f3(r["majority_acc"]),
             _f3(r["auc"]), _f3(r["pred_positive_rate"]), r["verdict"]] for _, r in learned.iterrows()]
    doc.table(["technique", "origin host", "dataset", "runs", "accuracy", "majority class", "AUC",
               "predicted class-1 share", "verdict (runs)"], rows,
              note="Means over seeds; — = not recorded by these runs (older sweeps).")


def _retention(doc: Doc, ret: pd.DataFrame) -> None:
    doc.h(2, "Retention (zero-shot)")
    if ret.empty:
        doc.p("No ported zero-shot run with a finished stage-1 module yet.")
        return
    head = (ret["condition"] == "head-only").any()
    doc.p("Zero-shot accuracy of the ported module on the receiving host divided by the accuracy of the same stage-1 "
          "module (matched on `origin_run`) on its origin host: mean [min–max] (runs), per technique and host "
          "direction. 1 = everything kept; with a balanced eval set a module at chance keeps about 0.5 / its origin "
          "accuracy, so compare with the majority-class accuracy under “Class balance”."
          + (" Head-only: the receiving host with no PEFT module and only the ported classification head — how much "
             "of the ported accuracy the head alone carries." if head else ""))
    rows = []
    for (tech, hp), g in ret.groupby(["technique", "host_pair"], sort=True):
        row = [tech, pair_label(hp)]
        for cond in ("ported", "head-only") if head else ("ported",):
            x = g[g["condition"] == cond]
            if not len(x):
                row += ["—", "—"] if cond == "head-only" else ["—", "—", "—"]
                continue
            x = x.iloc[0]
            if cond == "ported":
                row.append(_f3(x["origin_accuracy"]))
            row += [_f3(x["accuracy"]), f"{x['retention_mean']:.3f} [{x['retention_min']:.3f}–{x['retention_max']:.3f}] "
                                        f"({int(x['n'])})"]
        rows.append(row)
    header = ["technique", "host direction", "origin accuracy (stage 1)", "ported zero-shot", "retention (ported)",
              *(["head-only zero-shot", "retention (head only)"] if head else [])]
    doc.table(header, rows)


def _balance(doc: Doc, bal: pd.DataFrame) -> None:
    doc.h(2, "Class balance")
    if bal.empty:
        doc.p("No results yet.")
        return
    if not (bal[["train_pos_rate_n", "eval_pos_rate_n", "majority_acc_n"]].to_numpy() > 0).any():
        doc.p("The runs of this sweep do not record class balance (made by an earlier version).")
        return
    doc.p("Class-1 share of the train and eval splits, and the accuracy of always predicting the eval set's majority "
          "class — what chance is for every accuracy in this report. From the finished runs' shards; a range means "
          "runs disagree (they should not: the splits are fixed).")

    def val(r, c):
        if not r[f"{c}_n"]:
            return "not recorded"
        lo, hi = r[f"{c}_min"], r[f"{c}_max"]
        return f"{r[f'{c}_mean']:.3f}" if hi - lo < 1e-9 else f"{r[f'{c}_mean']:.3f} ({lo:.3f}–{hi:.3f})"

    doc.table(["dataset", "runs", "train class-1 share", "eval class-1 share", "majority-class accuracy (chance)"],
              [[r["dataset"], int(r["runs"]), val(r, "train_pos_rate"), val(r, "eval_pos_rate"), val(r, "majority_acc")]
               for _, r in bal.iterrows()])


def _hosts(doc: Doc, d: SweepData, ht: pd.DataFrame) -> None:
    doc.h(2, "Hosts")
    if d.hosts is None:
        doc.p("No `hosts.json` in this sweep (made by an earlier version): pooling and host distances not recorded.")
        return
    if ht.empty:
        doc.p("`hosts.json` lists no hosts.")
        return
    pools = set(ht["pooling"].dropna())
    doc.p("How each host turns token vectors into the vector the classification head reads, and where the model came "
          "from." + (f" **The hosts pool differently ({', '.join(sorted(pools))})**: a ported head reads a different "
                     f"kind of vector on the receiving host." if len(pools) > 1 else ""))
    doc.table(["host", "model", "pooling", "fingerprint"],
              [[r["host"], f"`{r['model']}`" if not _na(r["model"]) else "—", _s(r["pooling"]) or "—",
                f"`{str(r['fingerprint'])[:16]}`" if not _na(r["fingerprint"]) else "—"] for _, r in ht.iterrows()])
    dist = ht[ht[HOST_COLS[5:11]].notna().any(axis=1)]
    if len(dist):
        doc.p("Distance of a derived host from its base (recorded when the host was built): relative weight change "
              "(‖host − base‖ / ‖base‖ over the weights), mean cosine between the two hosts' mean-pooled vectors of "
              "the same sentences, linear CKA between those vector sets, and the accuracy of a linear probe on each "
              "host's frozen features.")
        doc.table(["host", "base", "relative weight change", "mean-pooled cosine", "linear CKA", "probe accuracy (base)",
                   "probe accuracy (host)", "probe"],
                  [[r["host"], _s(r["base"]) or "—", _f3(r["relative_weight_change"]), _f3(r["mean_pooled_cosine"]),
                    _f3(r["linear_cka"]), _f3(r["probe_accuracy_base"]), _f3(r["probe_accuracy_host"]),
                    _s(r["probe"]) or "—"] for _, r in dist.iterrows()])


def _f3(v) -> str:
    try:
        return "—" if _na(v) else f"{float(v):.3f}"
    except (TypeError, ValueError):
        return str(v)


def _counts(series: pd.Series) -> str:
    vc = series.dropna().astype(str).value_counts()
    if vc.empty:
        return "—"
    return ", ".join(f"`{k}` ({v})" for k, v in vc.items()) + (" **(mixed)**" if len(vc) > 1 else "")


def _provenance(doc: Doc, d: SweepData) -> None:
    doc.h(2, "Provenance")
    done = d.runs[d.runs["state"] == "done"]
    fin = done["finished_at"].dropna() if "finished_at" in done else pd.Series([], dtype=object)
    items = [f"spec: `{d.info.get('name', '?')}`, hash `{d.info.get('spec_hash', '?')}` (`{d.root / 'spec.yaml'}`); "
             f"planned {d.info.get('created', '?')} by code `{d.info.get('code_version', '?')}`",
             f"code version of the runs: {_counts(done.get('git_commit', pd.Series(dtype=object)))}",
             f"finished between {fin.min() if len(fin) else '—'} and {fin.max() if len(fin) else '—'}",
             f"devices: {_counts(done.get('device', pd.Series(dtype=object)))}",
             f"hosts: {_counts(done.get('hostname', pd.Series(dtype=object)))}"]
    libs = [c for c in d.runs.columns if c.startswith("v_")] + (["python"] if "python" in d.runs else [])
    if libs:
        items.append("library versions: " + "; ".join(f"{c.removeprefix('v_')} {_counts(done[c])}" for c in libs))
    n2 = int((done["stage"] == 2).sum())
    with_preds = sum(1 for r in done.loc[done["stage"] == 2, "run_id"] if d.preds is not None and r in d.preds)
    items.append(f"per-example predictions (`predictions.parquet`): {with_preds} of {n2} finished stage-2 runs"
                 + (" — none: run-level statistics" if not with_preds else ""))
    if d.orphans:
        items.append(f"{d.orphans} result rows belong to runs that are not in the current plan (left out)")
    if d.quarantined:
        items.append(f"{d.quarantined} shard(s) in `quarantine/` (unreadable or inconsistent; left out)")
    qp = d.root / "quarantine" / "preds"
    n_qp = len(list(qp.glob("*.parquet"))) if qp.exists() else 0
    if n_qp:
        items.append(f"{n_qp} prediction file(s) in `quarantine/preds/` (unreadable or inconsistent; left out)")
    items += d.notes
    doc.ul(items)
    rows = []
    for st in (1, 2):
        g = d.runs[d.runs["stage"] == st]
        n_done, n_failed = int((g["state"] == "done").sum()), int((g["state"] == "failed").sum())
        rows.append([f"stage {st}", len(g), n_done, len(g) - n_done - n_failed, n_failed])
    doc.table(["runs", "planned", "done", "missing (not run)", "missing (failed)"], rows,
              note="failed = an error file in `errors/`; see `pipeline status` for details.")


def _sanity(doc: Doc, d: SweepData, cells2: pd.DataFrame) -> None:
    doc.h(2, "Sanity checks")
    done = d.runs[(d.runs["state"] == "done") & (d.runs["stage"] == 2)]
    items = []
    for cond, what in (("ported", "ported tensors bit-equal to the origin module"),
                       ("sampled", "sampled tensors loaded bit-exactly"),
                       ("head-only", "ported head bit-equal to the origin module's head")):
        g = done[done["condition"] == cond]
        if not len(g):
            continue
        pe = g["port_exact"] if "port_exact" in g else pd.Series([None] * len(g))
        n_true = int((pe == True).sum())  # noqa: E712 - object column with None
        n_false = int((pe == False).sum())  # noqa: E712
        verdict = "**OK**" if n_true == len(g) else "**FAILED**" if n_false else "**not recorded for all runs**"
        items.append(f"{what}: {verdict} — `port_exact` true in {n_true} of {len(g)} {cond} runs"
                     + (f", false in {n_false}" if n_false else ""))
    s1 = d.runs[(d.runs["stage"] == 1) & (d.runs["state"] == "done")]
    if "origin_module_sha256" in done and "module_sha256" in s1:
        sha = dict(zip(s1["run_id"], s1["module_sha256"]))
        g = done[done["condition"].isin(["ported", "sampled", "head-only"])]
        ok = sum(1 for n, s in zip(g["needs"], g["origin_module_sha256"]) if n in sha and sha[n] == s)
        bad = sum(1 for n, s in zip(g["needs"], g["origin_module_sha256"]) if n in sha and not _na(s) and sha[n] != s)
        items.append(f"loaded module = the stage-1 module it names (sha256): {ok} match, {bad} differ, "
                     f"{len(g) - ok - bad} not checkable" + (" **FAILED**" if bad else ""))
    g = done[done["condition"] == "sampled"]
    if len(g) and "sample_mean_err" in g:
        me, se = g["sample_mean_err"].max(), g["sample_std_err"].max()
        ok = (me <= SAMPLE_TOL) and (se <= SAMPLE_TOL)
        items.append(f"sampled modules match the ported tensors' statistics: max |mean error| {me:.4f}, "
                     f"max |std error| {se:.4f} (relative to the tensor's std, tensors ≥ 1000 elements; "
                     f"tolerance {SAMPLE_TOL}) — " + ("**OK**" if ok else "**OUT OF TOLERANCE**"))
    if not items:
        items.append("no ported or sampled runs have finished yet")
    doc.ul(items)
    doc.p("Trace any cell to its runs (done runs carry metrics, missing ones NULL) with one DuckDB query; e.g. "
          "the first cell of the stage-2 tables:")
    if cells2.empty:
        ex = {"technique": "lora", "host_pair": "a->b", "dataset": "rt", "condition": "ported", "regime": 0}
    else:
        ported = cells2[cells2["condition"] == "ported"]
        ex = (ported if len(ported) else cells2).iloc[0]
    doc.code(trace_sql(d.root, ex), "sql")


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


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------
def cmd_report(a) -> int:
    from .cli import _sweep_of, console

    sweep = _sweep_of(a.target)
    if not sweep.root.exists():
        raise FileNotFoundError(f"{sweep.root}: no sweep there yet; run `pipeline run {a.target}` first")

    def warn(msg):
        console.print(f"[yellow]{msg}[/yellow]")

    r = build(sweep.root, a.out, metric=a.metric, n_boot=a.bootstrap, seed=a.seed, warn=warn)
    if r.merged:
        console.print(f"merged shards -> {sweep.results}")
    missing = r.planned - r.done
    console.print(f"report: {r.markdown}\n        {r.html} ({len(r.figures)} figures, {len(r.tables)} tables)")
    console.print(f"{r.done} of {r.planned} planned runs have results"
                  + (f" [yellow]({missing} missing: partial report)[/yellow]" if missing else ""))
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("report", help="write a report (tables, figures, paired statistics) of a sweep; "
                                      "merges first if needed")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.add_argument("--out", type=Path, default=None, help="report folder (default <sweep>/report)")
    s.add_argument("--metric", choices=list(METRICS), default="accuracy",
                   help="metric of the figures and paired statistics (default accuracy; tables show both)")
    s.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    s.set_defaults(fn=cmd_report)
