"""BENCHMARKS.md cannot silently describe old code (issue 29): the commit on its ``git`` line must contain the
last change to every path a benchmark exercises (the lists and what they mean: ``benches/exercises.py``).

Checked with git itself (``git log -1 --format=%H -- <paths>``, ``git merge-base --is-ancestor``); skipped
where there is no history to check (not a git checkout, a shallow clone).  No benchmark runs here.
"""

import re
import subprocess
from pathlib import Path

import pytest

from benches.exercises import EXERCISES, REFRESH

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def measured_line(text: str) -> str:
    m = re.search(r"^\| git \| ([^|]*?) \|$", text, re.M)
    assert m, "BENCHMARKS.md has no '| git | <commit> |' line in its machine table"
    return m.group(1).strip()


def stale(root: Path, line: str) -> list[str]:
    """Why BENCHMARKS.md (measured at ``line``) is out of date in the repository at ``root``; [] if it is not."""
    if "uncommitted" in line:
        return [f"it was measured with uncommitted changes ({line!r}): its figures describe no commit"]
    commit = git("rev-parse", "--verify", "--quiet", f"{line}^{{commit}}", cwd=root).stdout.strip()
    if not commit:
        return [f"its git line {line!r} names no commit of this repository"]
    out = []
    for bench, paths in EXERCISES.items():
        last = git("log", "-1", "--format=%H %s", "--", *paths, cwd=root).stdout.strip()
        if not last:
            continue
        sha, subject = last.split(" ", 1)
        if git("merge-base", "--is-ancestor", sha, commit, cwd=root).returncode != 0:
            touched = git("diff", "--name-only", commit, sha, "--", *paths, cwd=root).stdout.split()
            out.append(f"bench {bench}: {', '.join(touched) or 'its paths'} changed after {line} "
                       f"(last in {sha[:12]} {subject[:70]!r})")
    return out


def test_every_listed_path_exists():
    """A renamed or removed module would drop out of the check silently."""
    missing = [f"{b}: {p}" for b, ps in EXERCISES.items() for p in ps if not (ROOT / p).exists()]
    assert not missing, f"benches/exercises.py lists paths that do not exist: {missing}"


def test_benchmarks_md_measured_the_code_its_benchmarks_exercise():
    if git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: no history to check BENCHMARKS.md against")
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true":
        pytest.skip("shallow clone: the commits BENCHMARKS.md is checked against may be missing")
    why = stale(ROOT, measured_line((ROOT / "BENCHMARKS.md").read_text()))
    assert not why, ("BENCHMARKS.md is out of date -- " + "; ".join(why) +
                     f". Refresh the figures from the committed code with `{REFRESH}` and commit BENCHMARKS.md.")


@pytest.fixture
def repo(tmp_path):
    """A small git repository with one exercised file and one that no benchmark runs."""
    def run(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    run("init", "-q")
    run("config", "user.email", "t@example.org")
    run("config", "user.name", "t")
    for p in (*{p for ps in EXERCISES.values() for p in ps}, "pipeline/run/causal.py"):
        f = tmp_path / p / "x.py" if p.endswith("/") else tmp_path / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("# v1\n")
    run("add", "-A")
    run("commit", "-qm", "v1")

    def commit(path: str, msg: str) -> str:
        (tmp_path / path).write_text(f"# {msg}\n")
        run("commit", "-qam", msg)
        return git("rev-parse", "--short=12", "HEAD", cwd=tmp_path).stdout.strip()

    return tmp_path, commit


def test_a_change_a_benchmark_exercises_makes_it_stale(repo):
    root, commit = repo
    measured = git("rev-parse", "--short=12", "HEAD", cwd=root).stdout.strip()
    assert stale(root, measured) == []
    commit("pipeline/run/causal.py", "decoder scoring")  # imported, but no benchmark runs it
    assert stale(root, measured) == []
    commit("pipeline/run/train.py", "the loop")
    why = stale(root, measured)
    assert {w.split(":")[0] for w in why} == {"bench train", "bench pack", "bench overhead"}
    assert all("pipeline/run/train.py" in w for w in why)
    fresh = git("rev-parse", "--short=12", "HEAD", cwd=root).stdout.strip()
    assert stale(root, fresh) == []  # measured again at the new commit
    assert stale(root, f"{fresh} + uncommitted changes")  # ... but not with edits on top
    assert stale(root, "0123456789ab")  # a commit that is not in the history
