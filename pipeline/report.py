"""``pipeline report TARGET``: a paper-style report of a sweep (tables, figures, paired statistics).

The report folder (default ``<sweep>/report/``) holds::

    report.md  report.html        the report (the HTML is self-contained: figures inlined as base64 PNG)
    figures/*.png                 grouped bars, accuracy vs budget, ported - scratch/sampled heatmaps
    tables/*.csv                  every table of the report, long form, with the run ids behind each cell

Cells are defined by the plan (plan.parquet), not by what has finished, so a
planned run without a result is counted as missing in its cell and never
silently dropped; results whose run is not in the plan are counted and left out.

Any cell traces back to its runs with one DuckDB query (missing runs show up
with NULL metrics)::

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

CONDITIONS = ("ported", "scratch", "sampled")
CONTRASTS = (("ported", "scratch"), ("ported", "sampled"))
COLORS = {"ported": "#0072B2", "scratch": "#E69F00", "sampled": "#009E73"}  # Okabe-Ito, colour-blind safe
METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1"}
ALPHA = 0.05
DPI = 110  # figure resolution (tests lower it)
SAMPLE_TOL = 0.05  # sampled tensors' mean/std may deviate from the target by this fraction of its std
PLAN_COLS = ("run_id", "stage", "technique", "origin_host", "receiving_host", "host_pair", "dataset", "seed",
             "condition", "regime", "needs", "origin_run")

TRACE_SQL = """\
SELECT p.run_id, p.seed, r.accuracy, r.macro_f1, r.finished_at, p.origin_run
FROM read_parquet('{plan}') AS p
LEFT JOIN read_parquet('{results}') AS r USING (run_id)
WHERE p.stage = 2 AND p.technique = '{technique}' AND p.host_pair = '{host_pair}'
  AND p.dataset = '{dataset}' AND p.condition = '{condition}' AND p.regime = {regime}
ORDER BY p.seed;"""


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
    mtimes = [e.stat().st_mtime for e in os.scandir(shard_dir)
              if e.name.endswith(".parquet") and not e.name.startswith(".")]
    if not mtimes:
        return False
    res = root / "results.parquet"
    if not res.exists() or res.stat().st_mtime < max(mtimes):
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
    for c in ("accuracy", "macro_f1"):
        if c not in runs.columns:
            runs[c] = np.nan
        runs[c] = pd.to_numeric(runs[c], errors="coerce")
    runs["stage"] = runs["stage"].astype(int)
    runs["seed"] = runs["seed"].astype(int)
    runs["regime"] = pd.to_numeric(runs["regime"], errors="coerce").astype("Int64")
    quarantined = len(list((root / "quarantine").glob("*.parquet"))) if (root / "quarantine").exists() else 0
    return SweepData(root, info, plan, results, runs, orphans, quarantined)


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _ordered(values, order=()) -> list:
    vals = [v for v in pd.unique(pd.Series(list(values))) if not _na(v)]
    known = [v for v in order if v in vals]
    return known + sorted(v for v in vals if v not in order)


def cell_table(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per cell (group of ``keys``): planned/done/missing counts, mean and 95% t-CI of
    accuracy and macro-F1 over the done runs, and the run ids behind the cell."""
    rows = []
    for key, g in runs.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = g[g["state"] == "done"]
        row = {**dict(zip(keys, key)), "planned": len(g), "done": len(done), "missing": len(g) - len(done)}
        for m in METRICS:
            mean, lo, hi, n = stats.t_interval(done[m].tolist())
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
                 + ("; dashed: the module on its origin host" if drew_origin else "") + ")", fontsize=12)
    fig.savefig(path)
    return path


def fig_heatmap(comp: pd.DataFrame, a: str, b: str, metric: str, path: Path) -> Path | None:
    """Mean paired difference a - b by host direction (rows) x technique (columns), one panel per budget."""
    d = comp[(comp["a"] == a) & (comp["b"] == b)]
    if d.empty:
        return None
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
            ax.text(techs.index(r["technique"]), pairs.index(r["host_pair"]), f"{r['mean_diff']:+.3f}{star}\nn={r['n']}",
                    ha="center", va="center", fontsize=9, color="white" if dark else "black")
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
    fig.suptitle(f"{a.capitalize()} − {b}: mean paired difference in {METRICS[metric]}, over seeds and datasets\n"
                 f"(n = matched pairs; * = Holm-adjusted Wilcoxon p < {ALPHA}; grey = no pairs)", fontsize=12)
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
def summary_paragraph(d: SweepData, pooled: pd.DataFrame, metric: str) -> str:
    s2 = d.stage(2)
    done2, planned2 = int((s2["state"] == "done").sum()), len(s2)
    done1, planned1 = int((d.stage(1)["state"] == "done").sum()), len(d.stage(1))
    out = [f"{done2} of {planned2} planned receiving-host runs and {done1} of {planned1} origin-host runs have "
           f"results" + ("" if done2 == planned2 and done1 == planned1
                         else "; the missing ones may change every number below") + "."]
    if pooled.empty:
        out.append("No paired comparison can be made yet (no seed has results for two conditions of the same "
                   "technique, host direction, dataset and budget).")
        return " ".join(out)
    m = METRICS[metric]
    for (a, b), g in pooled.groupby(["a", "b"], sort=False):
        k = len(g)
        up, down = int((g["mean_diff"] > 0).sum()), int((g["mean_diff"] < 0).sum())
        eq = k - up - down
        lo, hi = g.loc[g["mean_diff"].idxmin()], g.loc[g["mean_diff"].idxmax()]
        sent = (f"Matched on seed, dataset and host direction, {a} modules had a higher mean {m} than {b} ones in "
                f"{up} of {k} technique × budget comparisons, a lower one in {down or 'none'}"
                + (f" and the same in {eq}" if eq else "") + f"; the mean difference ranged from "
                f"{lo['mean_diff']:+.3f} ({lo['technique']}, {regime_label(lo['regime'])}) to "
                f"{hi['mean_diff']:+.3f} ({hi['technique']}, {regime_label(hi['regime'])}).")
        out.append(sent)
        sig = g[g["p_holm"] < ALPHA]
        if len(sig):
            items = ", ".join(f"{r['technique']} at {regime_label(r['regime'])} ({r['mean_diff']:+.3f}, "
                              f"95% CI [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], p_Holm {_p_eq(r['p_holm'])})"
                              for _, r in sig.iterrows())
            out.append(f"After Holm correction across all {len(pooled)} comparisons, {len(sig)} of these {k} are "
                       f"significant at α = {ALPHA}: {items}.")
        else:
            nz = int((g["n"] - g["ties"]).max())
            floor = stats.min_wilcoxon_p(nz) if nz > 0 else math.nan
            tail = ""
            if nz == 0:
                tail = " (every pair is tied)"
            elif floor * len(pooled) >= ALPHA:
                tail = (f" (with at most {nz} non-tied pairs per comparison the smallest possible Wilcoxon p is "
                        f"{floor:.3g}, too large to survive Holm correction over {len(pooled)} comparisons; "
                        f"more seeds are needed to detect a difference)")
            out.append(f"None of these {k} differences is significant at α = {ALPHA} after Holm correction across "
                       f"all {len(pooled)} comparisons{tail}.")
        regs = sorted(int(r) for r in g["regime"].unique())
        if a == "ported" and b == "scratch" and len(regs) > 1:
            first = g[g["regime"] == regs[0]]["mean_diff"].mean()
            last = g[g["regime"] == regs[-1]]["mean_diff"].mean()
            out.append(f"Averaged over techniques, the {a} − {b} difference is {first:+.3f} at "
                       f"{regime_label(regs[0])} and {last:+.3f} after {regs[-1]} steps.")
    return " ".join(out)


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
    pooled = stats.paired_compare(done2, CONTRASTS, ["technique", "regime"], metric, n_boot, seed)
    by_dir = stats.paired_compare(done2, CONTRASTS, ["technique", "host_pair", "regime"], metric, n_boot, seed)
    pairs = pd.concat([stats.paired_differences(done2, a, b, metric).assign(contrast=f"{a} - {b}")
                       for a, b in CONTRASTS], ignore_index=True) if len(done2) else pd.DataFrame()

    tables = []
    for name, df in (("stage2_cells", cells2), ("stage1_cells", cells1), ("stats_pooled", pooled),
                     ("stats_by_direction", by_dir), ("pairs", pairs),
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
    for a, b in CONTRASTS if draw else ():
        f = fig_heatmap(by_dir, a, b, metric, figdir / f"heatmap_{a}_minus_{b}.png")
        if f:
            figures.append(f)

    doc = _document(d, out, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed)
    md, ht = out / "report.md", out / "report.html"
    title = f"PEFT portability report: {d.info.get('name', root.name)}"
    _atomic(md, doc.markdown())
    _atomic(ht, doc.html(out, title))
    return ReportResult(out, md, ht, figures, tables, int((d.runs["state"] == "done").sum()), len(d.runs), merged)


def _document(d: SweepData, out: Path, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed) -> Doc:
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
    doc.p(summary_paragraph(d, pooled, metric))

    doc.h(2, "Paired comparisons")
    doc.p(f"Each pair is two runs that differ only in condition: same technique, host direction, dataset, budget "
          f"and seed. Differences are a − b in {m}. CI: percentile bootstrap over pairs "
          f"({n_boot} resamples, seed {seed}); p: two-sided Wilcoxon signed-rank test (zero differences dropped); "
          f"p_Holm: Holm's step-down correction across the {len(pooled)} comparisons of this table. W/L/T: pairs where "
          f"a is better / worse / tied.")
    doc.table(*_stats_rows(pooled, ["technique", "regime"]))
    doc.p(f"Per host direction (pooled over datasets; Holm across these {len(by_dir)} comparisons, a separate "
          f"family): see `tables/stats_by_direction.csv` and the heatmaps below.")

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

    legend = ("Cells: mean ± half-width of the 95% t-interval over seeds, (runs behind the cell); "
              "(k/n)† = only k of n planned runs have results; — = none finished. Tables with run ids: "
              "`tables/stage2_cells.csv`.")
    for metric_key in METRICS:
        doc.h(2, f"Receiving-host {METRICS[metric_key]} (stage 2)")
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
        rows = [[r["technique"], r["origin_host"], r["dataset"], _fmt_row(r, "accuracy"), _fmt_row(r, "macro_f1")]
                for _, r in cells1.iterrows()]
        doc.table(["technique", "origin host", "dataset", "accuracy", "macro-F1"], rows)

    _provenance(doc, d)
    _sanity(doc, d, cells2)
    doc.h(2, "Files")
    doc.ul([f"`tables/{p}` — {what}" for p, what in (
        ("stage2_cells.csv", "every stage-2 cell: planned/done/missing, means, CIs, run ids"),
        ("stage1_cells.csv", "every stage-1 cell"),
        ("stats_pooled.csv", "the paired comparisons above"),
        ("stats_by_direction.csv", "paired comparisons per host direction (the heatmaps)"),
        ("pairs.csv", "every matched pair with both run ids and its difference"),
        ("missing_runs.csv", "planned runs without a result (state missing or failed)"))])
    return doc


def _stats_rows(comp: pd.DataFrame, by: list[str]):
    header = ["comparison", *["budget" if b == "regime" else b.replace("_", " ") for b in by], "n pairs",
              "mean a", "mean b", "a − b [95% CI]", "W/L/T", "p", "p_Holm"]
    rows = []
    for _, r in comp.iterrows():
        ci = "" if _na(r["ci_low"]) else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        sig = " *" if r["p_holm"] < ALPHA else ""
        rows.append([r["contrast"], *[regime_label(r[b]) if b == "regime" else pair_label(r[b]) for b in by],
                     int(r["n"]), f"{r['mean_a']:.3f}", f"{r['mean_b']:.3f}", f"{r['mean_diff']:+.3f}{ci}",
                     f"{r['wins']}/{r['losses']}/{r['ties']}", _p(r["p_wilcoxon"]), _p(r["p_holm"]) + sig])
    note = f"A star (*) after p_Holm marks p_Holm < {ALPHA}." if len(comp) else "No pairs yet."
    return header, rows, note


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
    if d.orphans:
        items.append(f"{d.orphans} result rows belong to runs that are not in the current plan (left out)")
    if d.quarantined:
        items.append(f"{d.quarantined} shard(s) in `quarantine/` (unreadable or inconsistent; left out)")
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
                       ("sampled", "sampled tensors loaded bit-exactly")):
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
        g = done[done["condition"].isin(["ported", "sampled"])]
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
        ex = cells2.iloc[0]
    doc.code(trace_sql(d.root, ex), "sql")


def trace_sql(root: Path, cell) -> str:
    """The DuckDB query listing the runs (done and missing) behind one stage-2 cell."""
    return TRACE_SQL.format(plan=Path(root) / "plan.parquet", results=Path(root) / "results.parquet",
                            technique=cell["technique"], host_pair=cell["host_pair"], dataset=cell["dataset"],
                            condition=cell["condition"], regime=int(cell["regime"]))


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
