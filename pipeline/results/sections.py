"""The report, section by section: what each section says and which table or figure it shows (a Doc)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from .comparisons import comparisons
from .document import Doc, cell_text
from .drift import drift_section
from .figures import SEED_POINTS
from .prose import findings, headlines, status_line
from .sweepdata import SweepData
from .tables import (
    HOST_COLS,
    LEARN_MARGIN,
    METRICS,
    ONE_CLASS,
    RANKS_AUC,
    TABLE_METRICS,
    fmt_row,
    glance_stage2,
    is_na,
    ordered,
    pair_label,
    pivot_stage2,
    trace_sql,
)

FOREST = "forest"  # the forest plot's file stem (figures/forest.png): shown first, under "What was found"
FOREST_CAPTION = ("Every paired comparison (rows: technique and budget; panels: the control), pooled over host "
                  "directions, datasets and seeds: the mean difference in {m} and its 95% interval, as in the table "
                  "under “Paired comparisons”")
SAMPLE_TOL = 0.05  # sampled tensors' mean/std may deviate from the target by this fraction of its std


def document(d: SweepData, out: Path, cells1, cells2, pooled, by_dir, metric, figures, n_boot, seed,
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

    # the first screen: what was found, in plain words, then every comparison with its interval
    doc.h(2, "What was found")
    found = findings(pooled, extra["did_it_learn"], extra["retention"], metric)
    if found:
        doc.ul(found)
    forest = next((f for f in figures if f.stem == FOREST), None)
    if forest is not None:
        doc.img(f"figures/{forest.name}", FOREST_CAPTION.format(m=m))
    if not found and forest is None:
        doc.p("Nothing to report yet: no origin run and no paired comparison has results.")

    doc.h(2, "Summary of the contrasts")
    doc.p(status_line(d, extra["did_it_learn"]))
    lines, note = headlines(pooled, metric)
    if lines:
        doc.ul(lines)
    doc.p(note)

    _learned(doc, extra["did_it_learn"])
    comparisons(doc, d, pooled, by_dir, metric, n_boot, seed)
    _retention(doc, extra["retention"])
    drift_section(doc, extra["drift"], extra["drift_tests"], d.hosts)

    doc.h(2, "Figures")
    captions = {"bars": "Grouped bars: mean {m} per technique and condition over seeds, per host direction (rows) and "
                        "budget (columns); each seed's run as a point where a cell has fewer than "
                        f"{SEED_POINTS} seeds, else whiskers of the 95% t-CI over seeds",
                "budget": "{m} against the further-training budget per condition (zero-shot at 0); dashed: the module "
                          "on its origin host",
                "heatmap": "Mean paired difference by technique and host direction, one panel per budget",
                "drift": "Zero-shot retention (accuracy on the receiving host / the module's accuracy on its origin "
                         "host; mean and range over seeds) against the receiving host's distance, per host family; "
                         "circles: ported, crosses: the no-module floor. Bottom row: retention above the floor, "
                         "(ported − floor) / (origin − floor), with its 95% Fieller interval (0: the module carries "
                         "nothing over the bare host)"}
    rest = [f for f in figures if f.stem != FOREST]
    for f in rest:
        kind = f.stem.split("_")[0]
        cap = captions[kind].format(m=m)
        if kind == "drift":
            pass
        elif kind != "heatmap":
            cap += f" — dataset {f.stem.split('_', 1)[1]}"
        else:
            cap = f"{f.stem.split('_', 1)[1].replace('_minus_', ' − ')}: " + cap
        doc.img(f"figures/{f.name}", cap)
    if not rest:
        doc.p("No figures (no stage-2 results yet, or figures were switched off)" + (
            "; every comparison is in the figure under “What was found”." if forest is not None else "."))

    doc.h(2, "Receiving host at a glance (stage 2)")
    if cells2.empty:
        doc.p("No stage-2 runs planned.")
    else:
        doc.p("Accuracy, macro-F1 and ROC AUC side by side, each the mean over seeds (runs behind the cell); AUC "
              "ranks the eval examples by the class-1 score and is — where a run did not record it. The tables "
              "after this one give 95% intervals.")
        for hp in ordered(cells2["host_pair"]):
            for ds in ordered(cells2["dataset"]):
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
        for hp in ordered(cells2["host_pair"]):
            for ds in ordered(cells2["dataset"]):
                doc.h(3, f"{pair_label(hp)}, dataset {ds}")
                doc.table(*pivot_stage2(cells2, metric_key, hp, ds), note=legend)

    doc.h(2, "Origin-host results (stage 1)")
    if cells1.empty:
        doc.p("No stage-1 runs planned.")
    else:
        doc.p("The module on the host it was trained on, before porting: mean ± 95% t-CI half-width over seeds "
              "(runs).")
        rows = [[r["technique"], r["origin_host"], r["dataset"], fmt_row(r, "accuracy"), fmt_row(r, "macro_f1"),
                 fmt_row(r, "auc")] for _, r in cells1.iterrows()]
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
        ("retention.csv", "zero-shot retention of ported and no-module runs, with run ids"),
        ("did_it_learn.csv", "stage-1 accuracy vs the majority class, AUC, verdict counts"),
        ("class_balance.csv", "class-1 share of train and eval, majority-class accuracy, per dataset"),
        ("hosts.csv", "each host's pooling and its distance from its base (from hosts.json)"),
        ("missing_runs.csv", "planned runs without a result (state missing or failed)"))])
    return doc


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
    failed = learned[learned["learned"] < learned["runs"]] if "learned" in learned else learned.iloc[:0]
    if len(failed):
        from .intervals import collapse_coverage

        seeds = int(learned["runs"].max())
        cov = collapse_coverage(len(learned[["origin_host", "dataset"]].drop_duplicates()), seeds)
        doc.p(f"{len(failed)} row(s) above include a seed whose module did not learn. A collapsed seed is a heavy "
              f"tail of the seed distribution: in the coverage simulation where one seed in three learns nothing "
              f"(BENCHMARKS.md, figures 7), the report's 95 % interval at {seeds} seeds covers "
              + (f"{100 * cov:.0f} %" if cov == cov else "an unmeasured share")
              + " of the time; read the intervals of those techniques as rough.")


def _retention(doc: Doc, ret: pd.DataFrame) -> None:
    doc.h(2, "Retention (zero-shot)")
    if ret.empty:
        doc.p("No ported zero-shot run with a finished stage-1 module yet.")
        return
    head = (ret["condition"] == "no-module").any()
    doc.p("Zero-shot accuracy of the ported module on the receiving host divided by the accuracy of the same stage-1 "
          "module (matched on `origin_run`) on its origin host: mean [min–max] (runs), per technique and host "
          "direction. 1 = everything kept; with a balanced eval set a module at chance keeps about 0.5 / its origin "
          "accuracy, so compare with the majority-class accuracy under “Class balance”."
          + (" No-module: the bare receiving host (with the ported head under `head: trained`) — how much of the "
             "ported accuracy is there without the module. **Above the bare host**: (ported − no-module) / (origin − "
             "no-module), the share of what the module adds over the bare receiving host that porting keeps (1 = all, "
             "0 = none, < 0 = harm) — a raw ratio near 1 says little when the bare host alone keeps most of the "
             "accuracy. Ratio of the means over seeds with a 95% Fieller interval (the values R at which the report's "
             "two-level interval of mean((ported − no-module) − R (origin − no-module)) holds 0: seeds and, with "
             "per-example predictions, the shared eval examples count); — where the origin's margin over the bare "
             "host is not distinguishable from 0 (an unbounded set) or there is one seed; none where the origin is "
             "not above the bare host." if head else ""))
    rows = []
    for (tech, hp), g in ret.groupby(["technique", "host_pair"], sort=True):
        row = [tech, pair_label(hp)]
        for cond in ("ported", "no-module") if head else ("ported",):
            x = g[g["condition"] == cond]
            if not len(x):
                row += ["—", "—"] if cond == "no-module" else ["—", "—", "—"]
                continue
            x = x.iloc[0]
            if cond == "ported":
                row.append(_f3(x["origin_accuracy"]))
            row += [_f3(x["accuracy"]), f"{x['retention_mean']:.3f} [{x['retention_min']:.3f}–{x['retention_max']:.3f}] "
                                        f"({int(x['n'])})"]
        if head:
            p = g[g["condition"] == "ported"]
            row.append(_above(p.iloc[0]) if len(p) else "—")
        rows.append(row)
    header = ["technique", "host direction", "origin accuracy (stage 1)", "ported zero-shot", "retention (ported)",
              *(["no-module zero-shot", "retention (no module)", "above the bare host [95% CI]"] if head else [])]
    doc.table(header, rows)


def _above(x) -> str:
    """Retention above the bare host with its interval: 'R [lo, hi]', 'R [—]' without one, 'none' without R."""
    if is_na(x.get("above_floor")):
        return "none" if isinstance(x.get("above_floor_why"), str) and x["above_floor_why"] else "—"
    if is_na(x.get("above_floor_low")):
        return f"{x['above_floor']:.3f} [—]"
    return f"{x['above_floor']:.3f} [{x['above_floor_low']:.3f}, {x['above_floor_high']:.3f}]"


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
              [[r["host"], f"`{r['model']}`" if not is_na(r["model"]) else "—", cell_text(r["pooling"]) or "—",
                f"`{str(r['fingerprint'])[:16]}`" if not is_na(r["fingerprint"]) else "—"] for _, r in ht.iterrows()])
    dist = ht[ht[HOST_COLS[5:11]].notna().any(axis=1)]
    if len(dist):
        doc.p("Distance of a derived host from its base (recorded when the host was built): relative weight change "
              "(‖host − base‖ / ‖base‖ over the weights), mean cosine between the two hosts' mean-pooled vectors of "
              "the same sentences, linear CKA between those vector sets, and the accuracy of a linear probe on each "
              "host's frozen features.")
        doc.table(["host", "base", "relative weight change", "mean-pooled cosine", "linear CKA", "probe accuracy (base)",
                   "probe accuracy (host)", "probe"],
                  [[r["host"], cell_text(r["base"]) or "—", _f3(r["relative_weight_change"]), _f3(r["mean_pooled_cosine"]),
                    _f3(r["linear_cka"]), _f3(r["probe_accuracy_base"]), _f3(r["probe_accuracy_host"]),
                    cell_text(r["probe"]) or "—"] for _, r in dist.iterrows()])


def _f3(v) -> str:
    try:
        return "—" if is_na(v) else f"{float(v):.3f}"
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
                       ("no-module", "ported head bit-equal to the origin module's head (head: trained)")):
        g = done[done["condition"] == cond]
        pe = g["port_exact"] if "port_exact" in g else pd.Series([None] * len(g))
        if not len(g) or (cond == "no-module" and not pe.notna().any()):  # head-free: no head, nothing ported
            continue
        n_true = int((pe == True).sum())  # noqa: E712 - object column with None
        n_false = int((pe == False).sum())  # noqa: E712
        verdict = "**OK**" if n_true == len(g) else "**FAILED**" if n_false else "**not recorded for all runs**"
        items.append(f"{what}: {verdict} — `port_exact` true in {n_true} of {len(g)} {cond} runs"
                     + (f", false in {n_false}" if n_false else ""))
    s1 = d.runs[(d.runs["stage"] == 1) & (d.runs["state"] == "done")]
    if "origin_module_sha256" in done and "module_sha256" in s1:
        sha = dict(zip(s1["run_id"], s1["module_sha256"]))
        g = done[done["condition"].isin(["ported", "sampled", "no-module"]) & done["needs"].notna()]
        ok = sum(1 for n, s in zip(g["needs"], g["origin_module_sha256"]) if n in sha and sha[n] == s)
        bad = sum(1 for n, s in zip(g["needs"], g["origin_module_sha256"]) if n in sha and not is_na(s) and sha[n] != s)
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
