"""What each benchmark exercises: the paths whose changes can move its figures in BENCHMARKS.md.

A *change a benchmark exercises* is a commit that touches one of the paths listed for it here:

* the ``pipeline/run/`` modules whose code runs inside the benchmark's measured work -- not those it only
  imports (``causal.py`` is imported by ``tasks.py`` but runs only for decoder hosts; no benchmark here
  measures one), nor host building (``models/`` is built before timing);
* the merge code the merge figures time (``pipeline/results/merge.py``, ``shards.py``);
* the benchmark's own code (its ``bench_*.py``, the shared ``common.py`` and the ``child.py`` it starts).

``tests/test_bench_fresh.py`` fails when the commit BENCHMARKS.md names on its ``git`` line is older than the
last change to any of these paths (``git log -1 -- <paths>``, then an ancestry check), and prints the command
that refreshes the figures (``make bench``).  Planning, status and statistics (benches ``scale``, ``coverage``)
are timed outside ``pipeline/run/`` and are not tracked here.  When a benchmark starts to run another module
of ``pipeline/run/``, add it to its list.
"""

from __future__ import annotations

# the origin run's path: host copy, technique attach, data, the loop, evaluation, tracking
_LOOP = ("pipeline/run/train.py", "pipeline/run/memory.py", "pipeline/run/tasks.py", "pipeline/run/pooling.py", "pipeline/run/techniques/",
         "pipeline/run/data.py", "pipeline/run/tracking.py")
# a whole run as runner.execute does it: + the runner itself, module export and porting, the shard
_RUN = (*_LOOP, "pipeline/run/runner.py", "pipeline/run/port.py", "pipeline/run/export.py",
        "pipeline/results/shards.py")
_OWN = ("benches/common.py",)

EXERCISES: dict[str, tuple[str, ...]] = {
    "train": (*_LOOP, "pipeline/run/runner.py", *_OWN, "benches/bench_train.py"),  # runner: HostCache
    "pack": (*_RUN, "pipeline/run/job.py", *_OWN, "benches/bench_pack.py", "benches/child.py"),
    "overhead": (*_RUN, *_OWN, "benches/bench_overhead.py", "benches/bench_train.py"),
    "merge": ("pipeline/results/merge.py", "pipeline/results/shards.py", *_OWN, "benches/bench_merge.py",
              "benches/child.py"),
}

REFRESH = "make bench"  # rewrites BENCHMARKS.md from the checked-out code (~10 min on 2 cores); commit it
