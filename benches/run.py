"""Run the benchmarks: ``python -m benches.run [--smoke] [--only ...] [--out FILE]`` from the repository root.

Full run (``make bench``, ~10 minutes on 2 cores): MiniLM training/evaluation throughput, packing,
planning/status at 100,000 runs, merging 10,000 shards, Slurm call counts, the coverage of the report's
95 % interval on synthetic sweeps (statistics, not speed); prints a table and writes
BENCHMARKS.md at the repository root.  ``--smoke`` (``make bench-smoke``) runs the same code at toy
sizes in well under a minute and checks only that every figure is a finite positive number and that
the table and the markdown render; it never judges speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: the 2 cores are shared

from benches import report  # noqa: E402
from benches.common import FULL, ROOT, SMOKE, fmt, load_avg, machine, straddles  # noqa: E402
from benches.mutate import carry_section  # noqa: E402

BENCHES = ("train", "pack", "overhead", "scale", "merge", "coverage")  # scale = planning + status (3) and scheduler
# load (5); coverage = the report's 95 % interval on synthetic sweeps with a known difference (7)


def _module(name: str):
    import importlib

    return importlib.import_module(f"benches.bench_{name}")


def gpu_text() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return (f"A CUDA device is visible ({torch.cuda.get_device_name(0)}): `make gpu-check` "
                    "(`benches/gpu_check.py`) measures it -- run it and put its lines here.")
    except ImportError:  # pragma: no cover
        pass
    return ("Not measured. This machine has no GPU (CPU only), and this task was not lent a GPU machine: the device "
            "tool's status reported `can_start_another: false` (\"this task was not drawn for a device machine\"). "
            "`make gpu-check` (`benches/gpu_check.py`: MiniLM, a T5-v1.1-base shape and a Qwen2.5-0.5B shape, one "
            "bf16 run per paper technique; samples/s vs Trainer on the same batches, peak memory, MFU, the ported "
            "tensors' device and dtype) exists but has not been run on a GPU; only its `--tiny` CPU form runs "
            "(`tests/test_gpu_check.py`). Nothing in this file is extrapolated to a GPU.")


def noise_text(start: str, end: str, figs) -> str:
    from benches.common import med

    spreads = []
    for f in figs:
        for xs in (f.value, f.baseline):
            if len(xs) > 1 and med(xs) > 0:
                spreads.append(((max(xs) - min(xs)) / med(xs) * 100, f.key))
    worst = ""
    if spreads:
        pct, key = max(spreads)
        worst = f"; the widest spread of a measurement is {pct:.0f} % of its median ({key})"
    return (f"The machine has 2 cores shared with other engineers' jobs (tests, sweeps, probes); load average "
            f"(1/5/15 min) was {start} at the start and {end} at the end of this run{worst}. OpenMP threads wait "
            f"passively (OMP_WAIT_POLICY=PASSIVE), so a busy core slows a contender rather than stalls it, but "
            f"absolute numbers (samples/s, seconds) move with the load and are lower than on an idle machine. Ratios "
            f"are more stable than absolute figures because contenders are interleaved and each ratio is taken "
            f"within one repeat; read a ratio whose [min–max] straddles its target as 'not shown either way'.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_arguments(p) -> None:
    p.add_argument("--smoke", action="store_true", help="toy sizes, seconds; checks only that every bench runs")
    p.add_argument("--only", nargs="+", choices=BENCHES, help="run only these benches")
    p.add_argument("--repeats", type=positive_int, help="repeats per figure (default 3; smoke 1)")
    p.add_argument("--out", help="markdown file to write (default BENCHMARKS.md at the repo root; "
                                 "bench-out/BENCHMARKS.smoke.md with --smoke, bench-out/BENCHMARKS.partial.md with --only)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (shards, sweeps) for inspection")


def run(a) -> int:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    sizes = SMOKE if a.smoke else FULL
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation chatter
    if a.repeats:
        sizes = dataclasses.replace(sizes, repeats=a.repeats)
    out = Path(a.out) if a.out else ROOT / ("bench-out/BENCHMARKS.smoke.md" if a.smoke else
                                            "bench-out/BENCHMARKS.partial.md" if a.only else "BENCHMARKS.md")
    which = a.only or BENCHES
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    start_load = load_avg()
    console.print(f"[bold]benchmarks[/bold] ({'smoke' if a.smoke else 'full'}; {sizes.repeats} repeat(s)); "
                  f"work folder {work}; load average {start_load}", highlight=False)
    figs, errors, timings = [], {}, {}
    try:
        for name in which:
            console.print(f"[bold]{name}[/bold]")
            t0 = time.perf_counter()
            sub = work / name
            sub.mkdir()
            try:
                figs += _module(name).run(sizes, sub, log=lambda m: console.print(m, highlight=False))
            except Exception as e:  # record, go on with the other benches, fail at the end
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                console.print(f"[red]{name} failed:[/red]\n{traceback.format_exc()}", highlight=False, markup=False)
            timings[name] = time.perf_counter() - t0
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    figs.sort(key=lambda f: f.key)  # 1a 1b 1c 1ea .. 2a .. 5b, whatever order the benches ran in
    for f in figs:
        if straddles(f):
            f.note = (f.note + " " if f.note else "") + (
                f"The repeats fall on both sides of the target ({fmt(f.ratio if f.goal[2] == 'ratio' else f.value, '')}"
                f" against {f.target}): the median {'meets' if f.ok else 'misses'} it, but at this load the run does "
                f"not settle the question either way.")
    end_load = load_avg()
    info = machine()
    info["load average (1/5/15 min)"] = f"{start_load} at start, {end_load} at end"
    md = report.markdown(figs, info, errors=errors, timings=timings, repeats=sizes.repeats, smoke=a.smoke,
                         gpu=gpu_text(), noise=noise_text(start_load, end_load, figs))
    report.print_table(console, figs, f"benchmarks, {sizes.repeats} repeat(s): median [min–max]")
    # the renderings must work (smoke checks them): a table to a string, markdown with every figure
    buf = Console(file=io.StringIO(), width=200)
    report.print_table(buf, figs, "check")
    problems = report.check_finite(figs)
    missing = [f.key for f in figs if f"**{f.key} " not in md]
    if missing:
        problems.append(f"markdown lacks figures {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(carry_section(out, md))  # the mutation check's score (make mutate) stays
    total = sum(timings.values())
    console.print(f"wrote {out} ({len(figs)} figures, {total:.0f} s)", highlight=False)
    for prob in problems:
        console.print(f"[red]problem:[/red] {prob}", highlight=False)
    if errors or problems:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
