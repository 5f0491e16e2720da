"""Benchmarks: the pipeline against what a user would write instead, side by side in one invocation.

``python -m benches.run`` (``make bench``, from the repository root) runs every bench, prints a table and writes
BENCHMARKS.md; ``--smoke`` runs the same code paths at toy sizes in seconds (the test
suite runs it so the benches cannot rot).  See ``benches/run.py``.
"""
