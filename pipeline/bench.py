"""``pipeline bench``: the benchmarks in ``benches/`` (the pipeline beside what users would use instead).

``pipeline bench`` writes BENCHMARKS.md (~10 minutes); ``pipeline bench --smoke`` runs every bench at
toy sizes in seconds.  The benches live in the repository (``benches/``), not in the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _benches():
    from .cli import UsageError

    if not (REPO / "benches" / "run.py").exists():
        raise UsageError(f"pipeline bench: no benches/ folder next to {Path(__file__).parent} "
                         "(run it from a checkout of the repository)")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benches import run

    return run


def _positive(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cmd_bench(a) -> int:
    return _benches().run(a)


def add_parsers(sub) -> None:
    s = sub.add_parser("bench", help="benchmarks vs Trainer / one process per run / pandas / sbatch per run; "
                                     "writes BENCHMARKS.md (--smoke: toy sizes, seconds)")
    s.add_argument("--smoke", action="store_true", help="toy sizes, seconds; checks only that every bench runs")
    s.add_argument("--only", nargs="+", choices=("train", "pack", "scale", "merge"), help="run only these benches")
    s.add_argument("--repeats", type=_positive, help="repeats per figure (default 3; smoke 1)")
    s.add_argument("--out", help="markdown file (default BENCHMARKS.md; smoke: bench-out/BENCHMARKS.smoke.md)")
    s.add_argument("--keep", action="store_true", help="keep the work folder for inspection")
    s.set_defaults(fn=cmd_bench)
