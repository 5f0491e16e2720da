"""Same-machine comparison of two commits: ``make bench-compare REF=<commit>`` (``python -m benches.compare``).

    python -m benches.compare REF [--against HEAD] [--only train pack overhead] [--rounds 3] [--repeats 1]

Each commit is checked out (detached) into a temporary git worktree that shares this checkout's built
hosts (``models/``) and runs under this checkout's Python environment.  For every round and every chosen
benchmark one fresh process per commit runs ``benches/bench_<name>.py`` *of that commit* (one repeat by
default: ``--repeats``) against *that commit's* ``pipeline`` (the child checks which ``pipeline`` it
imported); the two processes alternate, and which goes first alternates by round, so both commits see the same load.  A benchmark
whose file differs between the two commits is flagged: its figures may not measure the same thing.

Printed per figure: each commit's headline (the figure's ratio to its baseline, or its value where it has
no baseline) as median [min–max] over the rounds; the change per round (NEW ÷ REF for ratios and values,
NEW − REF in points for a figure in %), median [min–max]; the pipeline's own measurement (samples/s,
s/run, ...) NEW ÷ REF per round; and NEW's target.  Absolute numbers move with the load of a shared
machine; read the paired changes, and a range that straddles 1 (or 0) as "no difference shown".
``--against .`` measures the working tree as it is (uncommitted edits included) instead of a commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import ROOT, child_env, fmt, load_avg

BENCHES = ("train", "pack", "overhead", "scale", "merge", "coverage")
DEFAULT = ("train", "pack", "overhead")

# Runs in a fresh process, cwd and PYTHONPATH = the commit's tree: argv = tree, bench, out.json, smoke.
CHILD = r"""
import dataclasses, importlib, json, os, sys, tempfile, warnings
from pathlib import Path
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore")
tree, name, out, smoke, reps = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
import pipeline, benches.common as C
for m in (pipeline, C):
    if not Path(m.__file__).resolve().is_relative_to(tree):
        raise SystemExit(f"compare: imported {m.__name__} from {m.__file__}, not from {tree}")
sizes = dataclasses.replace(C.SMOKE if smoke else C.FULL, repeats=reps)
bench = importlib.import_module(f"benches.bench_{name}")
with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
    figs = bench.run(sizes, Path(tmp), log=lambda m: print(m, file=sys.stderr, flush=True))
Path(out).write_text(json.dumps([dataclasses.asdict(f) for f in figs]))
"""


class CompareError(Exception):
    """Bad input to the comparison (an unknown commit, not a git checkout): one line, no traceback."""


def git(*args: str, cwd: Path = ROOT) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {(p.stderr or p.stdout).strip().splitlines()[-1:] or ['failed']}")
    return p.stdout.strip()


def resolve(rev: str) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CompareError:
        raise CompareError(f"{rev!r} is not a commit of this repository (try a hash from `git log --oneline`)") from None


class Tree:
    """One side of the comparison: a commit in a temporary worktree, or this working tree as it is."""

    def __init__(self, label: str, rev: str, work: Path):
        self.label = label
        if rev == ".":
            self.commit, self.path, self.owned = git("rev-parse", "HEAD") + "+worktree", ROOT, False
            return
        self.commit = resolve(rev)
        self.path, self.owned = work / label, True
        git("worktree", "add", "--detach", "--quiet", str(self.path), self.commit)
        models = ROOT / "models"
        if models.is_dir() and not (self.path / "models").exists():
            (self.path / "models").symlink_to(models)  # built hosts: gitignored, shared, read-only here

    @property
    def short(self) -> str:
        return self.commit[:12] + ("+worktree" if self.commit.endswith("+worktree") else "")

    def run(self, bench: str, out: Path, smoke: bool, repeats: int, log) -> list[dict]:
        env = child_env()
        env["PYTHONPATH"] = os.pathsep.join([str(self.path), *([os.environ["PYTHONPATH"]]
                                                               if os.environ.get("PYTHONPATH") else [])])
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(self.path), bench, str(out), "1" if smoke else "0",
                              str(repeats)], cwd=self.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        try:
            stdout, stderr = p.communicate()
        finally:  # interrupted (Ctrl-C, SIGTERM): the benchmark process goes too
            if p.poll() is None:
                p.kill()
                p.wait()
        if p.returncode != 0:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-12:])
            raise CompareError(f"bench {bench} at {self.short} failed ({p.returncode}):\n{tail}")
        log(f"  {bench:9s} {self.label} {self.short}: {time.perf_counter() - t0:.0f} s")
        return json.loads(out.read_text())

    def close(self) -> None:
        if self.owned:
            subprocess.run(["git", "worktree", "remove", "--force", str(self.path)], cwd=ROOT, capture_output=True)


def headline(f: dict) -> tuple[float, str]:
    """The figure's headline number and its unit: its ratio to the baseline, else its own value."""
    if f.get("ratio"):
        return statistics.median(f["ratio"]), f.get("ratio_unit", "x")
    return statistics.median(f["value"]), f.get("unit", "")


def met(f: dict, new: list[dict]) -> str:
    """NEW's target, judged as the figure judges it (on its ratio or its value), on the median over rounds."""
    goal = f.get("goal")
    if not goal:
        return "-"
    op, t, on = goal
    x = statistics.median(statistics.median(g["ratio"] if on == "ratio" else g["value"]) for g in new)
    ok = {">=": x >= t, "<=": x <= t, "<": x < t, ">": x > t, "==": x == t}[op]
    return "yes" if ok else "NO"


def summarise(rounds: list[dict[str, dict[str, dict]]], ref: str, new: str) -> list[dict]:
    """Per figure: both sides' headlines over the rounds, the paired change, the measured value's ratio."""
    keys = sorted({k for r in rounds for side in r.values() for k in side})
    out = []
    for k in keys:
        pairs = [(r[ref][k], r[new][k]) for r in rounds if k in r.get(ref, {}) and k in r.get(new, {})]
        if not pairs:
            continue
        a = [headline(x)[0] for x, _ in pairs]
        b = [headline(y)[0] for _, y in pairs]
        unit = headline(pairs[0][1])[1]
        pct = unit == "%"
        change = [y - x if pct else (y / x if x else float("nan")) for x, y in zip(a, b, strict=True)]
        va = [statistics.median(x["value"]) for x, _ in pairs]
        vb = [statistics.median(y["value"]) for _, y in pairs]
        f = pairs[-1][1]
        out.append({"key": k, "title": f["title"], "unit": unit, "ref": a, "new": b, "change": change,
                    "change_unit": "points" if pct else "x", "value_unit": f.get("unit", ""),
                    "value_ratio": [y / x if x else float("nan") for x, y in zip(va, vb, strict=True)],
                    "target": f.get("target") or "-", "met": met(f, [y for _, y in pairs])})
    return out


def table(rows: list[dict], ref: str, new: str) -> str:
    head = ["#", "figure", f"REF {ref}", f"NEW {new}", "NEW vs REF", "measured value NEW ÷ REF", "target",
            "NEW met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ch = fmt(r["change"], "") + (" points" if r["change_unit"] == "points" else "x")
        lines.append("| " + " | ".join([
            r["key"], r["title"], fmt(r["ref"], r["unit"]), fmt(r["new"], r["unit"]), ch,
            f"{fmt(r['value_ratio'], '')}x ({r['value_unit']})", r["target"], r["met"]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-compare", description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the commit to compare against (REF)")
    p.add_argument("--against", default="HEAD", help="the commit measured as NEW (default HEAD; '.' = this working "
                                                     "tree with its uncommitted edits)")
    p.add_argument("--only", nargs="+", choices=BENCHES, default=list(DEFAULT), help="benchmarks to run "
                   f"(default: {' '.join(DEFAULT)})")
    p.add_argument("--rounds", type=int, default=3, help="processes per commit and benchmark (default 3)")
    p.add_argument("--repeats", type=int, default=1, help="the benchmark's own repeats inside each process (default "
                   "1: its first contender order only, the same for both commits)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks that the comparison runs; judges nothing")
    p.add_argument("--json", help="also write the per-round figures and the summary to this file")
    a = p.parse_args(argv)
    try:
        return compare(a)
    except CompareError as e:
        print(f"bench-compare: {e}", file=sys.stderr)
        return 2


def compare(a) -> int:
    if a.rounds < 1 or a.repeats < 1:
        raise CompareError(f"--rounds and --repeats must be at least 1, got {a.rounds} and {a.repeats}")
    git("rev-parse", "--git-dir")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM cleans up like Ctrl-C (worktrees removed)
    ref_rev, new_rev = resolve(a.ref), a.against if a.against == "." else resolve(a.against)
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    log = lambda m: print(m, flush=True)  # noqa: E731
    trees: dict[str, Tree] = {}
    start = load_avg()
    try:
        trees["ref"] = Tree("ref", ref_rev, work)
        trees["new"] = Tree("new", new_rev, work)
        ref, new = trees["ref"].short, trees["new"].short
        changed = [b for b in a.only if new_rev != "." and git("diff", "--name-only", ref_rev, new_rev, "--",
                                                               f"benches/bench_{b}.py")]
        log(f"bench-compare: REF {ref} vs NEW {new}; {', '.join(a.only)}; {a.rounds} round(s); load average {start}")
        for b in changed:
            log(f"  note: benches/bench_{b}.py differs between the commits: each runs its own, so its figures may "
                f"not measure the same thing")
        rounds = []
        for r in range(a.rounds):
            got: dict[str, dict] = {"ref": {}, "new": {}}
            for b in a.only:
                for side in (("ref", "new") if r % 2 == 0 else ("new", "ref")):
                    figs = trees[side].run(b, work / f"{side}-{b}-{r}.json", a.smoke, a.repeats, log)
                    got[side].update({f["key"]: f for f in figs})
            rounds.append(got)
            if a.json:  # after every round: an interrupted comparison keeps what it measured
                Path(a.json).write_text(json.dumps({"ref": trees["ref"].commit, "new": trees["new"].commit,
                                                    "load": [start, load_avg()], "rounds": rounds}, indent=1))
        end = load_avg()
        rows = summarise(rounds, "ref", "new")
        print()
        print(table(rows, ref, new))
        print(f"\n{a.rounds} round(s), one process per commit, benchmark and round, alternating; load average "
              f"(1/5/15 min) {start} at start, {end} at end.  NEW vs REF: ratio NEW ÷ REF per round, or NEW − REF "
              f"in points for a figure in %, median [min–max] over rounds.")
        if a.json:
            Path(a.json).write_text(json.dumps({"ref": trees["ref"].commit, "new": trees["new"].commit,
                                                "load": [start, end], "rounds": rounds, "summary": rows}, indent=1))
        return 0
    finally:
        for t in trees.values():
            t.close()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
