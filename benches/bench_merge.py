"""4. Merge: N one-row shards -> one table.  ``pipeline.results.merge.merge`` (incremental: footer and data
read by pyarrow in threads, chunk by chunk, into a dataset; atomic results.parquet) from scratch vs the naive
script (``pandas.read_parquet`` per file, ``concat``, ``to_parquet``),
each in a fresh process (``benches/child.py``) so its peak RSS (VmHWM) is its own.

Shards look like real ones: a planned run's row plus metrics and provenance (~45 columns, stage-1 and
stage-2 schemas differ, so both tools must union columns by name).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .bench_scale import big_spec
from .common import Figure, Sizes, fmt, med, plural, run_child


def _rows(n: int, tmp: Path, sizes: Sizes) -> list[dict]:
    """n realistic result rows: 10 % stage 1, 90 % stage 2, from a real plan."""
    import yaml

    from pipeline import plan as planmod
    from pipeline.results.shards import provenance
    from pipeline.spec import load

    seeds = max(2, -(-n // 500))  # the big spec's plan has 50 stage-1 and 450 stage-2 runs per seed
    path = tmp / "merge.yaml"
    path.write_text(yaml.safe_dump({**big_spec(sizes, tmp / "merge-sweep"), "seeds": list(range(seeds))}))
    plan = planmod.build(load(path))
    n1 = n // 10
    runs = plan.stage1[:n1] + plan.stage2[: n - n1]
    prov = provenance()
    out = []
    for i, r in enumerate(runs):
        row = r.row()
        row.update({"train_steps": 100, "train_time_s": 30.0 + i % 7, "train_samples_per_s": 100.0,
                    "train_loss": 0.5, "accuracy": 0.8, "macro_f1": 0.79, "eval_loss": 0.45, "eval_time_s": 3.0,
                    "eval_samples_per_s": 160.0, "eval_examples": 500, "pred_positive_rate": 0.52, "lr": 3e-3,
                    "train_examples": 1000, "load_time_s": 1.0, "total_time_s": 35.0, "peak_mem_mb": 1350.0,
                    "trainable_parameters": 150_000})
        if r.stage == 1:
            row.update({"module_sha256": "ab" * 32, "module_tensors": 26, "module_parameters": 150_000})
        elif r.key.get("condition") != "scratch":
            row.update({"origin_module_sha256": "ab" * 32, "port_exact": True})
        row.update(prov)
        out.append(row)
    return out


def make_shards(root: Path, rows: list[dict], like: Path | None = None) -> None:
    """One Parquet file per run, as shards.write makes them (less the fsync: this is set-up); with ``like``,
    hard links to the shards already written there (the small set is a prefix of the large one)."""
    d = root / "shards"
    d.mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = f"{row['run_id']}.parquet"
        if like is not None:
            try:
                os.link(like / "shards" / name, d / name)
                continue
            except OSError:
                pass
        pq.write_table(pa.Table.from_pylist([row]), d / name)


def _threads() -> str:
    from pipeline.results.merge import THREADS

    return plural(THREADS, "read")


def run(sizes: Sizes, tmp: Path, log=print) -> list[Figure]:
    small, large = sizes.merge_shards
    t0 = time.perf_counter()
    new = sizes.merge_new
    rows = _rows(large + new, tmp, sizes)
    rows, extra = rows[:large], rows[large:]
    roots = {small: tmp / f"merge-{small}", large: tmp / f"merge-{large}"}
    make_shards(roots[large], rows)
    make_shards(roots[small], rows[:small], like=roots[large])
    make_shards(tmp / "merge-new", extra)
    log(f"  {small:,} + {large:,} shards written in {time.perf_counter() - t0:.1f} s")
    res: dict[tuple[str, int], list[dict]] = {}
    jobs = [("merge", large), ("remerge", large), ("pandas", large), ("floor", large), ("merge", small)]
    reps = sizes.merge_repeats
    for rep in range(reps):
        for tool, n in (jobs if rep % 2 == 0 else jobs[2:][::-1] + jobs[:2]):  # remerge follows its merge
            args = [tool, str(roots[n])] + ([str(tmp / f"pandas-{n}.parquet")] if tool == "pandas" else []) + (
                [str(tmp / "merge-new" / "shards")] if tool == "remerge" else [])
            _, out = run_child(args)
            r = json.loads(out.strip().splitlines()[-1])
            if tool == "remerge" and (r["rows"] != n + new or r["read"] != new):
                raise RuntimeError(f"merge bench: re-merge read {r['read']} shards for {r['rows']} rows, "
                                   f"expected {new} and {n + new}")
            if tool != "remerge" and r["rows"] != n:
                raise RuntimeError(f"merge bench: {tool} gave {r['rows']} rows from {n} shards")
            res.setdefault((tool, n), []).append(r)
            log(f"  {tool:6s} {n:6,} shards, repeat {rep + 1}: {r['seconds']:.2f} s, peak RSS {r['rss_peak_mb']:.0f} MB")

    def col(tool, n, k):
        return [r[k] for r in res[(tool, n)]]

    how = (f"{large:,} one-row shards (~{len(rows[0])} columns, 10 % stage-1 schema) in a sweep folder; each tool in a "
           f"fresh process (benches/child.py), seconds of the work itself (imports excluded), "
           f"{plural(reps, 'repeat')} interleaved (the naive baseline alone takes minutes a repeat);"
           f" merge = pipeline.results.merge.merge from scratch (no manifest: footer check and read of every "
           f"shard by pyarrow in threads, {1000:,} a chunk cast to the fixed result schema and appended to the "
           f"dataset, then results.parquet written atomically); naive = pandas.read_parquet per file, concat, to_parquet")
    m_t, p_t = col("merge", large, "seconds"), col("pandas", large, "seconds")
    f1 = Figure("4a", f"merge {large:,} shards: time", "s", m_t, "pipeline merge", "pandas read + concat", p_t,
                [b / a for a, b in zip(m_t, p_t, strict=True)], "x", "pandas ÷ merge seconds, higher is better",
                how=how)
    f_t = col("floor", large, "seconds")
    f5 = Figure("4e", f"merge {large:,} shards vs the floor: reading them", "s", m_t, "pipeline merge",
                "pyarrow reads every shard, nothing else", f_t, [a / b for a, b in zip(m_t, f_t, strict=True)],
                "x", "merge ÷ floor seconds, lower is better; 1x = merge costs no more than reading the files",
                how=(f"the same {large:,} shards; floor = pyarrow.parquet.ParquetFile(f).read() of every file with "
                     f"{_threads()} in flight (merge's own read concurrency) in a fresh process, no schema cast, "
                     f"no concatenation, nothing written: the least any tool that reads separate Parquet files "
                     f"does here; {plural(reps, 'repeat')}, interleaved with the merge and pandas processes"))
    m_big, m_small = col("merge", large, "rss_peak_mb"), col("merge", small, "rss_peak_mb")
    p_big = col("pandas", large, "rss_peak_mb")
    how2 = (f"peak RSS (VmHWM, see benches/child.py) of the merge process at {large:,} vs {small:,} shards (the "
            f"same shards, a prefix), {plural(reps, 'repeat')}; ratio = growth from {small:,} to {large:,}; after imports alone merge "
            f"{med(col('merge', large, 'rss_before_mb')):.0f} MB, pandas {med(col('pandas', large, 'rss_before_mb')):.0f} MB; "
            f"the largest shard set is the same in both tools")
    f2 = Figure("4b", f"merge peak memory, {small:,} -> {large:,} shards", "MB", m_big, f"merge, {large:,} shards",
                f"merge, {small:,} shards", m_small, [a / b for a, b in zip(m_big, m_small, strict=True)], "x",
                f"peak at {large:,} ÷ peak at {small:,} shards, lower is better",
                how=how2).judge("<=", 1.25, text=f"flat: ≤ 1.25x for {large // small}x the shards")
    f3 = Figure("4c", f"peak memory at {large:,} shards: merge vs pandas", "MB", m_big, "pipeline merge",
                "pandas read + concat", p_big, [b / a for a, b in zip(m_big, p_big, strict=True)], "x",
                "pandas ÷ merge MB, higher is better", how=how2)
    r_t = col("remerge", large, "seconds")
    how4 = (f"the {large:,}-shard sweep just merged (manifest and dataset in place), {new} new shards linked into "
            f"shards/, merge again in a fresh process: it lists shards/ (names, sizes, mtimes), reads only the "
            f"{new} new ones, appends one part and rewrites results.parquet ({large + new:,} rows) from the dataset; "
            f"ratio = re-merge seconds ÷ the full merge's seconds in the same repeat; {plural(reps, 'repeat')}")
    f4 = Figure("4d", f"re-merge after {new} new shards among {large:,}", "s", r_t, "incremental merge",
                f"full merge of {large:,}", m_t, [a / b * 100 for a, b in zip(r_t, m_t, strict=True)], "%",
                "re-merge ÷ full merge seconds, lower is better", how=how4).judge("<", 5)
    ceiling = [p / f for p, f in zip(p_t, f_t, strict=True)]
    per_file = (f"both sides open and parse every one of the {large:,} files; the naive script pays "
                f"~{med(p_t) / large * 1000:.1f} ms a file, merge ~{med(m_t) / large * 1000:.1f} ms, and merely reading "
                f"each file with pyarrow (figure 4e, the floor) ~{med(f_t) / large * 1000:.1f} ms here")
    if med(ceiling) < 5:  # no reader of separate files could reach 5x pandas here: the target is retired
        f1.note = (f"Target ≥ 5x retired (issue 29): {per_file}. No tool that reads the shards can beat pandas by "
                   f"more than pandas ÷ floor = {fmt(ceiling, 'x')} on this machine, so a 5x target measures the "
                   f"naive loop's speed, not merge's; merge answers to its distance from the floor (4e).")
    else:
        f1.judge(">=", 5)
        f1.note = (f"{'met' if f1.ok else 'missed'}: {med(f1.ratio):.1f}x vs ≥ 5x. {per_file}: the floor allows up "
                   f"to pandas ÷ floor = {fmt(ceiling, 'x')}, so the target stays; what separates merge from the floor "
                   f"(4e) is merge's own per-file work, not reading.")
    f5.note = (f"merge does the floor's reads plus the schema cast, the dataset append and results.parquet: "
               f"{med(f5.ratio):.2f}x the floor's time ({fmt(f5.ratio, 'x')} over the repeats).")
    if not f2.ok:
        f2.note = f"missed: peak memory grows {med(f2.ratio):.2f}x for {large // small}x the shards."
    return [f1, f2, f3, f4, f5]
