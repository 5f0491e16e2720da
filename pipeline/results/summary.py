"""The results summary at the end of ``pipeline run`` and in ``pipeline summary``: mean accuracy tables.

The summary reads results.parquet through DuckDB with the path passed as a
query parameter (never pasted into SQL), so any folder name works.  Only the
results of runs in the sweep's plan count: a shard of a run planned before
(other data, another host build: another run id) stays in the folder, but is
not this plan's, and the summary says how many such results it left out.
"""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from ..conditions import NAMES as CONDITIONS


def print_summary(console, sweep, merge_result) -> None:
    import duckdb

    if not sweep.results.exists():
        console.print("no results yet")
        return
    con = duckdb.connect()
    # parameters: quotes or spaces in the folder name need no escaping; the plan's runs only (module doc)
    con.execute("CREATE TEMP TABLE res AS SELECT * FROM read_parquet(?) WHERE run_id IN "
                "(SELECT run_id FROM read_parquet(?))", [str(sweep.results), str(sweep.results.with_name("plan.parquet"))])
    other = con.execute("SELECT count(*) FROM read_parquet(?)", [str(sweep.results)]).fetchone()[0] - \
        con.execute("SELECT count(*) FROM res").fetchone()[0]
    stage1 = con.execute("""SELECT technique, count(*), avg(accuracy), avg(macro_f1) FROM res
                            WHERE stage = 1 GROUP BY technique ORDER BY technique""").fetchall()
    if stage1:
        t = Table(title="stage 1: module on its origin host (mean over origins, datasets, seeds)")
        for c in ("technique", "runs", "accuracy", "macro-F1"):
            t.add_column(c)
        for tech, n, acc, f1 in stage1:
            t.add_row(tech, str(n), f"{acc:.3f}", f"{f1:.3f}")
        console.print(t)
    cols = con.execute("SELECT * FROM res LIMIT 0").description
    if "condition" not in {c[0] for c in cols}:
        return
    rows = con.execute("""SELECT technique, condition, regime, count(*), avg(accuracy) FROM res
                          WHERE stage = 2 GROUP BY ALL ORDER BY ALL""").fetchall()
    if not rows:
        return
    from .sweepdata import OLD_NAMES  # an older sweep's head-only is the no-module control

    rows = [(t, OLD_NAMES.get(c, c), reg, n, acc) for t, c, reg, n, acc in rows]
    conds = sorted({r[1] for r in rows}, key=lambda c: (CONDITIONS.index(c) if c in CONDITIONS
                                                        else len(CONDITIONS), str(c)))
    regimes = sorted({r[2] for r in rows})
    cell = {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}
    t = Table(title="stage 2: mean accuracy on the receiving host (runs in brackets)")
    t.add_column("technique")
    for reg in regimes:
        for c in conds:
            t.add_column(f"{c}\n{'zero-shot' if reg == 0 else f'+{reg} steps'}", justify="right")
    for tech in sorted({r[0] for r in rows}):
        vals = []
        for reg in regimes:
            for c in conds:
                n_acc = cell.get((tech, c, reg))
                vals.append(f"{n_acc[1]:.3f} ({n_acc[0]})" if n_acc else "-")
        t.add_row(tech, *vals)
    console.print(t)
    n = Counter(r["stage"] for r in sweep.plan_rows.values())
    got = con.execute("SELECT stage, count(*) FROM res GROUP BY stage").fetchall()
    got = dict(got)
    missing = sum(n.values()) - sum(got.values())
    console.print(f"runs with results: stage 1 {got.get(1, 0)}/{n[1]}, stage 2 {got.get(2, 0)}/{n[2]}"
                  + (f" [yellow]({missing} missing)[/yellow]" if missing else "")
                  + (f"; {other} result(s) of runs not in this plan (other run ids: planned before) left out"
                     if other else ""))
