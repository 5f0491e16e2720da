"""The documentation keeps its promises: the README is a front page that links every page of docs/, the spec
reference is generated from the models and current, and every command a code block in README.md or docs/ shows is
run -- here (the cheap, offline ones), by a named test (the same command on a tiny spec, as the documented
``sweeps/paper.yaml`` needs the model hub and a cluster) or by CI (``.ci/run``)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from pipeline import spec, specdoc
from pipeline.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# pages another branch writes: a link to one may dangle until it lands (then it is checked like any other)
PENDING = {"docs/contributing.md"}

# Every command shown, and what runs it:
#   "here"                 -- test_cheap_commands_run_as_shown runs it (offline, seconds)
#   "slow"                 -- test_slow_commands_run_as_shown runs it (make test, not make test-fast)
#   "ci"                   -- .ci/run runs exactly this line
#   ("make", sub, tests)   -- a make target whose recipe is `python -m pipeline SUB ...` (checked with make -n), and
#                             the tests that run `pipeline SUB` for real (on a tiny spec, on the local Slurm)
SLURM_SWEEP = "tests/test_slurm.py::test_sweep_through_arrays_with_dependency_to_merged_results"
COMMANDS: dict[str, object] = {
    "make demo": "ci",
    "make test": "ci",
    "make fetch SPEC=sweeps/paper.yaml": ("make", "fetch", [
        "tests/test_fetch.py::test_a_cache_filled_from_a_local_folder_loads_offline",
        "tests/test_fetch.py::test_nothing_to_fetch_for_embedded_hosts_and_data"]),
    "make dry-run SPEC=sweeps/paper.yaml": "slow",
    "make sweep SPEC=sweeps/paper.yaml": ("make", "sweep", [SLURM_SWEEP]),
    "make sweep SPEC=sweeps/paper.yaml SET='seeds=[0,1] origin_training.steps=50'": ("make", "sweep", [
        "tests/test_overrides.py::test_make_passes_set_words_as_set_options", SLURM_SWEEP]),
    "make status SWEEP=sweeps/paper.yaml": ("make", "status", [
        "tests/test_slurm.py::test_status_and_resume_from_fresh_processes_while_in_flight"]),
    "make resume SWEEP=sweeps/paper.yaml": ("make", "resume", [
        "tests/test_slurm.py::test_failed_run_shows_its_error_and_resume_finishes_it",
        "tests/test_slurm.py::test_status_and_resume_from_fresh_processes_while_in_flight"]),
    "make merge SWEEP=sweeps/paper.yaml": ("make", "merge", [
        "tests/test_end_to_end.py::test_sweep_folder_with_a_quote_and_a_space_through_run_merge_report"]),
    "make report SWEEP=sweeps/paper.yaml": ("make", "report", [
        "tests/test_end_to_end.py::test_sweep_folder_with_a_quote_and_a_space_through_run_merge_report"]),
    "python -m pipeline plan sweeps/demo.yaml": "here",
    "python -m pipeline plan sweeps/demo.yaml --set seeds=[0,1] --set techniques=[lora]": "here",
    "python -m pipeline plan sweeps/demo.yaml --set origin_training.steps=50 --set technique_params.lora.lr=0.001":
        "here",
    "python -m pipeline plan sweeps/x.yaml": "here",  # the bad spec of docs/spec.md, whose error the page shows
}


def commands(text: str) -> list[str]:
    """The commands of a Markdown page: each line of a bash/sh/shell block, and each ``$ `` line of a console or
    plain block; comments stripped, whitespace collapsed."""
    out = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = m.group(1), m.group(2)
        if lang in ("bash", "sh", "shell"):
            lines = body.splitlines()
        elif lang in ("", "console"):
            lines = [ln[2:] for ln in body.splitlines() if ln.startswith("$ ")]
        else:
            continue
        for ln in lines:
            ln = re.sub(r"\s+#.*$", "", ln).strip()
            if ln and not ln.startswith("#"):
                out.append(" ".join(ln.split()))
    return out


def shown() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for page in PAGES:
        for c in commands(page.read_text(encoding="utf-8")):
            found.setdefault(c, []).append(str(page.relative_to(ROOT)))
    return found


def test_the_extractor_finds_commands_in_bash_and_console_blocks_only():
    text = ("```bash\nmake demo    # comment\n# a comment line\n\nmake  test\n```\n```yaml\nname: x\n```\n"
            "```\n$ python -m pipeline plan x.yaml\nerror: no\n```\n```python\nimport os\n```\n")
    assert commands(text) == ["make demo", "make test", "python -m pipeline plan x.yaml"]


def test_every_command_shown_is_known_to_be_run():
    unknown = {c: where for c, where in shown().items() if c not in COMMANDS}
    assert not unknown, ("commands shown in the docs that no test or CI runs (add them to COMMANDS with what runs "
                         f"them, or run them here): {unknown}")
    stale = set(COMMANDS) - set(shown())
    assert not stale, f"COMMANDS lists commands no page shows any more: {stale}"


def _test_exists(node: str) -> bool:
    path, _, name = node.partition("::")
    f = ROOT / path
    return f.exists() and re.search(rf"^def {re.escape(name)}\(", f.read_text(encoding="utf-8"), re.M) is not None


def _test_source(node: str) -> str:
    path, _, name = node.partition("::")
    text = (ROOT / path).read_text(encoding="utf-8")
    start = re.search(rf"^def {re.escape(name)}\(", text, re.M).start()
    end = re.search(r"^(def |@|class )", text[start + 1:], re.M)
    return text[start:start + 1 + end.start()] if end else text[start:]


def test_ci_and_make_commands_are_what_ci_and_the_named_tests_run():
    ci = [" ".join(ln.split()) for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    for cmd, how in COMMANDS.items():
        if how == "ci":
            assert cmd in ci, f"{cmd!r}: .ci/run does not run it"
        if not isinstance(how, tuple):
            continue
        _, sub, tests = how
        for node in tests:
            assert _test_exists(node), f"{cmd!r}: no test {node}"
            assert re.search(rf"""["']{sub}["']""", _test_source(node)), f"{cmd!r}: {node} never runs `{sub}`"
        args = shlex.split(cmd)  # the recipe make would run (-n: print only; STAMP=: skip the venv check)
        out = subprocess.run([*args[:2], "-n", "-s", "STAMP=", *args[2:]], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        path = next(a.split("=", 1)[1] for a in args if a.startswith(("SPEC=", "SWEEP=")))
        assert re.search(rf"-m pipeline {sub} {re.escape(path)}( |$)", out, re.M), f"{cmd!r} runs:\n{out}"


def _run(cmd: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    args = shlex.split(cmd)
    if args[0] == "python":
        args[0] = sys.executable
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cheap_commands_run_as_shown(tmp_path):
    """Each "here" command exits 0 (plan writes nothing), except the bad spec, which prints the page's error."""
    page = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    for cmd in (c for c, how in COMMANDS.items() if how == "here"):
        if cmd.endswith("sweeps/x.yaml"):
            shown_error = re.search(r"^\$ " + re.escape(cmd) + r"\n(error: .*)$", page, re.M).group(1)
            (tmp_path / "sweeps").mkdir()
            demo = (ROOT / "sweeps" / "demo.yaml").read_text()
            bad = re.sub(r"^techniques: \[(\w+), (\w+), (\w+)", r"techniques: [\1, \2, lora2", demo, flags=re.M)
            assert bad != demo
            (tmp_path / "sweeps" / "x.yaml").write_text(bad)
            p = _run(cmd, cwd=tmp_path)
            assert p.returncode == 2 and p.stderr.strip() == shown_error, (p.returncode, p.stderr)
            continue
        p = _run(cmd)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stderr[-2000:]}"


@pytest.mark.slow
def test_slow_commands_run_as_shown():
    for cmd in (c for c, how in COMMANDS.items() if how == "slow"):
        p = _run(cmd, timeout=600)
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"
        assert "160 stage-1 runs (origin training) + 1440 stage-2 runs" in p.stdout, p.stdout[-2000:]  # the grid shown


# ------------------------------------------------------------------------------------------ front page, links
def test_the_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            path = (page.parent / target).resolve()
            rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            if not path.exists() and rel not in PENDING:
                bad.append(f"{page.relative_to(ROOT)}: {target}")
    assert not bad, bad


# ------------------------------------------------------------------------------------------ the spec reference
def test_the_spec_reference_is_generated_and_current():
    assert specdoc.undocumented() == []
    page = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    assert specdoc.render(page) == page, "docs/spec.md is stale: run `python -m pipeline.specdoc` (make spec-doc)"
    for m in specdoc.MODELS:  # every field is in it, with its description
        for name, f in m.model_fields.items():
            assert f"| `{name}` |" in page and specdoc._cell(f.description) in page, (m.__name__, name)


def test_a_field_without_a_description_fails(monkeypatch):
    class Extra(spec._Strict):
        """A model with one undocumented field."""

        documented: int = 1
        """Documented."""
        bare: int = Field(default=0, ge=0)

    monkeypatch.setattr(specdoc, "MODELS", (*specdoc.MODELS, Extra))
    assert specdoc.undocumented() == ["Extra.bare"]
    with pytest.raises(UsageError, match="no description for Extra.bare"):
        specdoc.reference()


def test_check_names_a_stale_page_and_generating_fixes_it(tmp_path, capsys):
    page = tmp_path / "spec.md"
    page.write_text((ROOT / "docs" / "spec.md").read_text(encoding="utf-8").replace("| `seeds` |", "| `seed` |"))
    assert specdoc.main(["--check", "--page", str(page)]) == 1
    assert "stale" in capsys.readouterr().err
    assert specdoc.main(["--page", str(page)]) == 0 and specdoc.main(["--check", "--page", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")


def test_every_file_and_test_the_docs_name_exists():
    """`pipeline/...`, `tests/...::test_...`, `sweeps/...` in backticks: the file (and the test function) exist."""
    bad = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for ref in set(re.findall(r"`((?:pipeline|tests|benches|sweeps|slurm)/[A-Za-z0-9_./-]+(?:::[A-Za-z0-9_]+)?)`",
                                  text)):
            path, _, name = ref.partition("::")
            if not (ROOT / path).exists() or name and not _test_exists(ref):
                bad.append(f"{page.relative_to(ROOT)}: {ref}")
    assert not bad, bad
