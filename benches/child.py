"""Work that a benchmark measures in a fresh process (real start-up, its own peak memory).

    python benches/child.py pack SWEEP_DIR RUN_ID[,RUN_ID...]   RunPack over the runs (one process)
    python benches/child.py merge SWEEP_DIR                      pipeline.results.merge.merge from scratch
    python benches/child.py remerge SWEEP_DIR EXTRA_DIR          link EXTRA_DIR's shards in, merge again (timed),
                                                                 unlink them
    python benches/child.py pandas SWEEP_DIR OUT                 naive: pandas.read_parquet per shard + concat
    python benches/child.py floor SWEEP_DIR                      the floor: pyarrow reads every shard whole (merge's
                                                                 THREADS in flight), nothing else

Prints one JSON line: seconds of the work itself, peak RSS before and after it.

Peak RSS is VmHWM from /proc/self/status (this process's own address space).  ``ru_maxrss`` is not
used: Linux carries the parent's high-water mark across fork/exec into the child's ru_maxrss, so a
child started by a 500 MB benchmark process reports >= 500 MB whatever it does.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) -- see the note above
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def main(argv: list[str]) -> None:
    what, root = argv[0], Path(argv[1])
    out: dict = {}
    if what == "pack":
        from pipeline.run.job import RunPack

        before = rss_mb()
        t0 = time.perf_counter()
        res = RunPack(str(root), argv[2].split(","))()
        out["done"] = len(res["done"])
    elif what == "merge":
        import shutil

        from pipeline.results.merge import STORE, merge

        shutil.rmtree(root / STORE, ignore_errors=True)  # from scratch: no manifest, no dataset
        (root / "results.parquet").unlink(missing_ok=True)
        before = rss_mb()
        t0 = time.perf_counter()
        res = merge(root, warn=lambda m: None)
        out.update(rows=res.rows, read=res.read)
    elif what == "remerge":
        from pipeline.results.merge import merge

        extra = sorted(Path(argv[2]).glob("*.parquet"))
        for f in extra:
            os.link(f, root / "shards" / f.name)
        before = rss_mb()
        t0 = time.perf_counter()
        res = merge(root, warn=lambda m: None)
        out.update(rows=res.rows, read=res.read, seconds=time.perf_counter() - t0)
        for f in extra:
            (root / "shards" / f.name).unlink()
    elif what == "floor":
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow.parquet as pq

        from pipeline.results.merge import THREADS

        before = rss_mb()
        t0 = time.perf_counter()
        files = sorted((root / "shards").glob("*.parquet"))
        def read(f):  # the cheapest whole-file read in pyarrow (read_table adds a dataset start-up per file)
            with open(f, "rb") as fh:
                return pq.ParquetFile(fh).read()

        with ThreadPoolExecutor(THREADS) as pool:  # as merge reads them: THREADS files in flight
            out["rows"] = sum(t.num_rows for t in pool.map(read, files))
    elif what == "pandas":
        import pandas as pd

        before = rss_mb()
        t0 = time.perf_counter()
        files = sorted((root / "shards").glob("*.parquet"))
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        df.to_parquet(argv[2])
        out["rows"] = len(df)
    else:
        raise SystemExit(f"unknown child task {what!r}")
    out.setdefault("seconds", time.perf_counter() - t0)
    out.update(rss_before_mb=before, rss_peak_mb=rss_mb())
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
