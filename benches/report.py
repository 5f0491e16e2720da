"""Render the figures: a rich table on the terminal and BENCHMARKS.md."""

from __future__ import annotations

from .common import Figure, fmt, med

SECTIONS = {
    "1": "1. Training throughput",
    "1e": "1. Evaluation throughput",
    "2": "2. Packing",
    "3": "3. Planning and status at scale",
    "4": "4. Merge",
    "5": "5. Scheduler load",
    "7": "7. Interval coverage (statistics: the report's 95 % interval on synthetic sweeps with a known difference)",
}
GPU_SECTION = 6  # written between the figure sections before it and those after it


def _section(f: Figure) -> str:
    return "1e" if f.key.startswith("1e") else f.key[0]


def _met(f: Figure) -> str:
    return {True: "yes", False: "NO", None: "-"}[f.ok]


def rows(figs: list[Figure]) -> list[list[str]]:
    return [[f.key, f.title, f"{fmt(f.value, f.unit)}", f.baseline_label or "-", fmt(f.baseline, f.unit),
             fmt(f.ratio, f.ratio_unit), f.target or "-", _met(f)] for f in figs]


HEADER = ["#", "figure", "pipeline (median [min–max])", "baseline", "baseline (median [min–max])", "ratio", "target",
          "met"]


def print_table(console, figs: list[Figure], title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title), show_lines=False)
    for h in HEADER:
        t.add_column(escape(h), overflow="fold")
    for r, f in zip(rows(figs), figs, strict=True):
        t.add_row(*[escape(c) for c in r], style={False: "red", True: None, None: None}[f.ok])
    console.print(t)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(figs: list[Figure], info: dict[str, str], *, errors: dict[str, str], timings: dict[str, float],
             repeats: int, smoke: bool, gpu: str, noise: str) -> str:
    out = ["# Benchmarks", ""]
    if smoke:
        out += ["**Smoke run** (toy sizes; the numbers mean nothing, only that every bench still runs).", ""]
    out += [
        "Written by `make bench` (`python -m benches.run`; code in `benches/`). Every figure is measured beside its "
        "baseline in the same invocation, on this machine; contenders are interleaved and each figure is the "
        f"**median [min–max] over {repeats} repeat{'s' if repeats != 1 else ''}** unless a figure says otherwise "
        "(ratios are taken per repeat, then the median). Each figure's details say what its ratio divides and which "
        "way is better. `make bench-smoke` runs the same code at toy sizes (the test suite does too); its numbers mean "
        "nothing.", "",
        "## Machine", "", "| | |", "|---|---|",
    ]
    out += [f"| {k} | {_md_cell(v)} |" for k, v in info.items()]
    total = sum(timings.values())
    out += [f"| bench wall time | {total / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ") |", ""]
    out += ["## Summary", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows(figs)]
    missed = [f for f in figs if f.ok is False]
    out += ["", f"Targets met: {sum(f.ok is True for f in figs)} of {sum(f.ok is not None for f in figs)}"
            + (f"; missed: {', '.join(f.key for f in missed)} (see the notes below)." if missed else ".")]
    if errors:
        out += ["", "Benches that failed in this invocation: "
                + "; ".join(f"{k}: {_md_cell(v)}" for k, v in errors.items())]
    out += ["", "## How each figure was measured", ""]
    last, shown, gpu_done = None, set(), False
    for f in figs:
        sec = _section(f)
        if sec != last:
            if not gpu_done and sec[0].isdigit() and int(sec[0]) > GPU_SECTION:
                out += [f"### {GPU_SECTION}. GPU", "", gpu, ""]
                gpu_done = True
            out += [f"### {SECTIONS.get(sec, sec)}", ""]
            last = sec
        line = f"- **{f.key} {f.title}**: {f.label} {fmt(f.value, f.unit)}"
        if f.baseline:
            line += f" vs {f.baseline_label} {fmt(f.baseline, f.unit)}"
        extra = [f.ratio_means] if f.ratio and f.ratio_means else []
        if f.target:
            extra.append(f"target {f.target}: {'met' if f.ok else 'missed'}")
        if f.ratio:
            line += f" → {fmt(f.ratio, f.ratio_unit)}"
        if extra:
            line += f" ({'; '.join(extra)})"
        out.append(line + ".")
        if f.how and f.how not in shown:
            out.append(f"  - How: {f.how}.")
            shown.add(f.how)
        if f.note:
            out.append(f"  - Note: {f.note}")
        out.append("")
    if not gpu_done:
        out += [f"### {GPU_SECTION}. GPU", "", gpu, ""]
    out += ["## Noise", "", noise, ""]
    return "\n".join(out)


def check_finite(figs: list[Figure]) -> list[str]:
    """Problems that make a figure meaningless: non-finite numbers, non-positive values or baselines."""
    import math

    bad = []
    for f in figs:
        if not f.value:
            bad.append(f"{f.key}: no value")
        for x in f.numbers():
            if not math.isfinite(x):
                bad.append(f"{f.key}: non-finite number {x}")
        for x in [*f.value, *f.baseline]:
            if not x > 0:
                bad.append(f"{f.key}: non-positive measurement {x}")
        if f.ratio_unit == "x" and f.ratio and not med(f.ratio) > 0:
            bad.append(f"{f.key}: non-positive ratio")
    return bad
