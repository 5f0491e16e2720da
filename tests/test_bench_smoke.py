"""`make bench-smoke` inside the test suite: every bench runs at toy sizes and renders, so the benches cannot rot.

Nothing here judges speed: the smoke run itself only checks that each figure is a finite positive number and
that the table and the markdown render (``python -m benches.run``); BENCHMARKS.md at the repo root is left alone.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("1a", "1b", "1c", "1ea", "1eb", "1ec", "2a", "2b", "3a", "3b", "4a", "4b", "4c", "4e", "5a", "5b", "7a", "7b", "7c", "7d",
           "7e", "7f")


def test_bench_smoke(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    real = ROOT / "BENCHMARKS.md"
    before = real.read_bytes() if real.exists() else None
    p = subprocess.run([sys.executable, "-m", "benches.run", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, f"bench --smoke failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    md = out.read_text()
    assert md.startswith("# Benchmarks") and "Smoke run" in md and "## Summary" in md and "### 6. GPU" in md
    for key in FIGURES:
        assert f"**{key} " in md, key  # each figure is in the details ...
        assert f"| {key} |" in md, key  # ... and in the summary table
    assert "problem:" not in p.stdout
    assert (real.read_bytes() if real.exists() else None) == before  # the smoke run never overwrites the real one


def test_bench_rejects_bad_repeats():
    p = subprocess.run([sys.executable, "-m", "benches.run", "--smoke", "--repeats", "0"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "repeats" in p.stderr
