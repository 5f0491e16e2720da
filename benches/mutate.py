"""Mutation check over the modules that carry the pipeline's guarantees (``make mutate``).

``python -m benches.mutate [--module M ...] [--max-mutants N] [--timeout S] [--list] [--write]``, from the
repository root.

A *mutant* is the module with one small deliberate bug, made on the syntax tree: a comparison flipped
(``<`` ``<=`` ``>`` ``>=`` ``==`` ``!=`` ``in`` ``is`` and their opposites), ``and``/``or`` swapped, a
``not`` removed, ``True``/``False`` swapped, a small integer constant (0..16) plus one, ``+``/``-`` and
``*``/``/`` swapped (also in ``+=`` ...), or a returned value replaced by ``None``.  Each mutant is run
against the fast tests that cover its module (``TARGETS``: module -> test files, stopping at the first
failure); a mutant is *killed* when a test fails (or the run passes its time limit, or the mutant no
longer imports) and *survives* when every test passes.  Not mutated: docstrings, type annotations,
strings, messages (the arguments of ``raise``, ``print``, ``warn``, ``say`` and of f-strings), integers
above 16 (sizes, limits and timeouts, where one more is no bug) and lines marked ``# pragma: no mutate``;
where ``TARGETS`` names functions, only those (the guarantee's code, not its printing).

Mutants are applied in a temporary copy of the tree, never in the working tree, so an interrupted run
leaves no mutant behind.  Tests run one mutant at a time (``nice``), each in a process forked from one
that imported the heavy libraries (torch, transformers, pyarrow, ...) but no ``pipeline`` module, so a
mutant costs its tests, not a Python start.  Prints killed / survived per module and lists the survivors
(file:line, the mutation); ``--write`` puts the score into BENCHMARKS.md.  Survivors judged equivalent
(no test could tell them from the original) are explained in ``EQUIVALENT``.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAST = "not slow and not slurm"
MAX_INT = 16  # integer constants up to this are mutated (+1); larger ones are sizes, limits, timeouts
DEFAULT_MAX = 4  # mutants a module in `make mutate` (of ~890 in all: every one takes many hours here)
MESSAGE_CALLS = {"print", "warn", "say", "warning", "info", "debug"}  # their arguments are messages


@dataclass(frozen=True)
class Target:
    tests: tuple[str, ...]  # pytest node ids or files, in the order they run (the most telling first)
    only: tuple[str, ...] = ()  # qualified names of the functions/classes mutated (empty: the whole module)
    deselect: str = ""  # a -k expression of tests left out (slow ones that check something else)


G = "tests/test_guarantees.py"
TARGETS: dict[str, Target] = {
    # shard writing and validation: done means a valid shard
    "pipeline/results/shards.py": Target(
        (f"{G}::test_a_torn_shard_or_one_naming_another_run_is_not_done", "tests/test_shards.py",
         f"{G}::test_runs_with_bad_shards_are_pending_and_rerun", f"{G}::test_status_verify_names_the_runs_whose_shard_fails_validation",
         "tests/test_results_preds.py"),
        only=("conform", "shard_path", "write", "write_predictions", "read", "is_done"),
        deselect="concurrent or report"),
    # run ids: content-hashed, stable under key order, sensitive to what changes a result
    "pipeline/plan.py": Target(("tests/test_plan.py", "tests/test_paper_plan.py"), only=(
        "host_identities", "_canon", "run_id", "IdMaker", "Run", "Plan", "_host_key", "_check_poolings", "build")),
    # resume / pending selection
    "pipeline/launch/status.py": Target(
        (f"{G}::test_resume_submits_exactly_the_failed_timed_out_waiting_and_lost_runs", "tests/test_status.py",
         "tests/test_limits.py", f"{G}::test_status_verify_names_the_runs_whose_shard_fails_validation"),
        only=("read_jobs", "read_waiting", "task_key", "latest_tasks", "Snapshot", "read_plan", "_listing",
              "module_files_exist", "module_checksum_ok", "classify", "snapshot", "verify_done"),
        deselect="100k"),
    "pipeline/launch/queue.py": Target(
        ("tests/test_status.py", f"{G}::test_resume_submits_exactly_the_failed_timed_out_waiting_and_lost_runs"),
        only=("slurm_category", "expand_job_id", "parse_table"), deselect="100k"),
    "pipeline/launch/local.py": Target(
        (f"{G}::test_runs_with_bad_shards_are_pending_and_rerun",), only=("pending",)),
    "pipeline/run/job.py": Target(
        (f"{G}::test_runs_with_bad_shards_are_pending_and_rerun",), only=("is_complete",)),
    # porting and sampling
    "pipeline/run/port.py": Target(("tests/test_port.py", f"{G}::test_runs_with_bad_shards_are_pending_and_rerun")),
    # splits
    "pipeline/run/data.py": Target((f"{G}::test_a_local_dataset_with_its_own_validation_file_yields_disjoint_splits",
                                    "tests/test_data.py"), only=("dedupe", "stratified_take", "load", "_key", "_examples")),
    # merge
    "pipeline/results/merge.py": Target(
        (f"{G}::test_a_rewritten_predictions_file_wins_after_merge", "tests/test_shards.py", "tests/test_results_preds.py"),
        deselect="concurrent or report"),
    # statistics
    "pipeline/results/stats.py": Target(
        (f"{G}::test_bootstrap_on_correlated_pairs_is_as_narrow_as_the_paired_differences", "tests/test_stats.py"),
        deselect="is_fast"),
    # spec validation
    "pipeline/spec.py": Target((G, "tests/test_spec.py", "tests/test_bad_input.py", "tests/test_overrides.py",
                                "tests/test_plan.py::test_a_learning_rate_grid_plans_one_set_of_runs_per_value"),
                               deselect="test_runs_with or test_resume or test_status_verify or test_a_local or "
                                        "test_a_rewritten or test_bootstrap or test_a_torn"),
    # the offline check
    "pipeline/hub.py": Target(("tests/test_fetch.py", "tests/test_guarantees.py"),
                              deselect="filled_from_a_local_folder or without_weights"),
    "pipeline/run/fetch.py": Target(("tests/test_fetch.py",), only=("_first_line", "fetch"),
                                    deselect="filled_from_a_local_folder"),
}

# Why a survivor survived: equivalent (the mutant behaves as the original), or a gap named as such.  Key:
# (module, the mutated line's text, stripped, the mutation); value: why.  Rendered beside the survivor.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("pipeline/run/fetch.py", "if not hosts and not dsets:", "not removed"):
        "equivalent: the early return skips an offline check of nothing, which finds nothing missing",
    ("pipeline/hub.py", 'home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or '
     '"~/.cache", "huggingface")', "or -> and"):
        "killed since this run by tests/test_guarantees.py::test_the_named_hub_cache_follows_hf_home_and_hf_hub_cache "
        "(checked by hand, not re-measured)",
    ("pipeline/run/fetch.py", "return names", "return value -> None"):
        "not equivalent: killed by test_fetch's slow tests of `pipeline fetch` with hub names "
        "(test_a_cache_filled_from_a_local_folder_loads_offline), which the fast mapping leaves out",
    ("pipeline/results/stats.py", 'out["p"] = float(min(1.0, 2 * min(le + 1, ge + 1) / (n_boot + 1)))', "+ -> -"):
        "killed since this run by tests/test_guarantees.py::test_bootstrap_p_has_the_plus_one_correction "
        "(checked by hand, not re-measured)",
    ("pipeline/spec.py", "if not keys:", "not removed"):
        "killed since this run: spec.py's mapping now includes test_plan's learning-rate grid test, which fails "
        "on it (checked by hand, not re-measured)",
    ("pipeline/run/port.py", 'atomic_write(folder / "module.json", json.dumps(info, indent=1, sort_keys=True))',
     "True -> False"): "equivalent: the order of keys in module.json; every reader parses the JSON (the checksum covers "
                       "module.safetensors, not the sidecar)",
    ("pipeline/run/port.py", "return False", "return value -> None"):
        "equivalent: module_ok's False becomes None, which every caller tests only for truth (`if not`, `or`)",
}


# ------------------------------------------------------------------------------------------------ mutants
@dataclass(frozen=True)
class Mutant:
    module: str  # path relative to the root
    line: int
    col: int
    what: str  # e.g. "< -> <="
    start: int  # byte offsets of the replaced text in the module's source
    end: int
    text: bytes  # the replacement
    scope: str  # qualified name of the enclosing function/class ("" at module level)
    source_line: str

    @property
    def key(self) -> str:
        return hashlib.sha1(f"{self.module}:{self.line}:{self.col}:{self.what}".encode()).hexdigest()

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.text + source[self.end:]


_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult}
_SYM = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
        ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
        ast.Div: "/", ast.FloorDiv: "//", ast.And: "and", ast.Or: "or"}


def _copy(node: ast.AST) -> ast.AST:
    return ast.parse(ast.unparse(node), mode="eval").body if isinstance(node, ast.expr) else ast.parse(ast.unparse(node)).body[0]


class _Finder(ast.NodeVisitor):
    """Walks a module, collecting the nodes a mutation applies to (with their enclosing scope)."""

    def __init__(self, only: tuple[str, ...], skip_lines: set[int]):
        self.only, self.skip_lines = only, skip_lines
        self.scope: list[str] = []
        self.found: list[tuple[ast.AST, str, str]] = []  # (node, kind, scope)
        self.quiet = 0  # > 0 inside messages, annotations, f-strings, docstrings

    def _in_scope(self) -> bool:
        if not self.only:
            return True
        q = ".".join(self.scope)
        return any(q == o or q.startswith(o + ".") for o in self.only)

    def _add(self, node, kind):
        if self.quiet or not self.scope and self.only or not self._in_scope():
            return
        if getattr(node, "lineno", None) in self.skip_lines:
            return
        self.found.append((node, kind, ".".join(self.scope)))

    def _scoped(self, node):
        self.scope.append(node.name)
        for d in getattr(node, "decorator_list", []):
            self.visit(d)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._quietly(node.args)  # defaults and annotations: signatures, not behaviour
            self._quietly(node.returns)
        else:
            for b in node.bases:
                self._quietly(b)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _quietly(self, node):
        if node is None:
            return
        self.quiet += 1
        self.visit(node)
        self.quiet -= 1

    def visit_Expr(self, node):  # a bare string: a docstring
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._quietly(node.annotation)
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node):
        self._quietly_children(node)

    def _quietly_children(self, node):
        self.quiet += 1
        self.generic_visit(node)
        self.quiet -= 1

    def visit_Raise(self, node):
        self._quietly_children(node)

    def visit_Assert(self, node):
        self._quietly_children(node)

    def visit_Call(self, node):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in MESSAGE_CALLS:
            self._quietly_children(node)
            return
        self.generic_visit(node)

    def visit_If(self, node):
        t = node.test
        if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"):
            return
        self.generic_visit(node)

    def visit_Compare(self, node):
        self._add(node, "compare")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        self._add(node, "boolop")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            self._add(node, "not")
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if type(node.op) in _BIN:
            self._add(node, "binop")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in _BIN:
            self._add(node, "augassign")
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool) or (type(v) is int and 0 <= v <= MAX_INT):
            self._add(node, "constant")

    def visit_Return(self, node):
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, "return")
        self.generic_visit(node)


def _variants(node: ast.AST, kind: str) -> list[tuple[str, ast.AST | str]]:
    """(description, replacement node or text) for one node."""
    out = []
    if kind == "compare":
        for i, op in enumerate(node.ops):
            new = _copy(node)
            new.ops[i] = _CMP[type(op)]()
            out.append((f"{_SYM[type(op)]} -> {_SYM[_CMP[type(op)]]}", new))
    elif kind == "boolop":
        new = _copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((f"{_SYM[type(node.op)]} -> {_SYM[type(new.op)]}", new))
    elif kind == "not":
        out.append(("not removed", node.operand))
    elif kind in ("binop", "augassign"):
        new = _copy(node)
        new.op = _BIN[type(node.op)]()
        out.append((f"{_SYM[type(node.op)]} -> {_SYM[type(new.op)]}", new))
    elif kind == "constant":
        v = node.value
        if isinstance(v, bool):
            out.append((f"{v} -> {not v}", ast.Constant(not v)))
        else:
            out.append((f"{v} -> {v + 1}", ast.Constant(v + 1)))
    elif kind == "return":
        out.append(("return value -> None", "return None"))
    return out


def _offsets(source: bytes) -> list[int]:
    starts, pos = [0], 0
    for line in source.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def mutants(module: str, target: Target, root: Path = ROOT) -> list[Mutant]:
    source = (root / module).read_bytes()
    text = source.decode()
    lines = text.splitlines()
    skip = {i + 1 for i, ln in enumerate(lines) if "pragma: no mutate" in ln}
    finder = _Finder(target.only, skip)
    finder.visit(ast.parse(text))
    starts = _offsets(source)
    out, seen = [], set()
    for node, kind, scope in finder.found:
        a = starts[node.lineno - 1] + node.col_offset  # col offsets count UTF-8 bytes
        b = starts[node.end_lineno - 1] + node.end_col_offset
        for what, new in _variants(node, kind):
            if isinstance(new, str):
                rep = new
            else:
                rep = ast.unparse(new)
                rep = rep if kind == "augassign" else f"({rep})"
            m = Mutant(module, node.lineno, node.col_offset, what, a, b, rep.encode(), scope, lines[node.lineno - 1].strip())
            try:
                compile(m.apply(source), module, "exec")
            except SyntaxError:
                continue
            if (a, b, rep) not in seen:
                seen.add((a, b, rep))
                out.append(m)
    return sorted(out, key=lambda m: (m.line, m.col, m.what))


def sample(ms: list[Mutant], n: int | None) -> list[Mutant]:
    """At most n mutants, chosen by a hash of (module, line, column, mutation): deterministic, spread over the file."""
    if n is None or len(ms) <= n:
        return ms
    keep = {m.key for m in sorted(ms, key=lambda m: m.key)[:n]}
    return [m for m in ms if m.key in keep]


# ------------------------------------------------------------------------------------------------ running
PRELOAD = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "pyarrow.compute", "pyarrow.dataset", "yaml",
           "pydantic", "rich", "rich.console", "rich.table", "submitit", "scipy.stats", "duckdb", "torch",
           "transformers", "peft", "datasets", "safetensors.torch", "matplotlib", "pytest", "hypothesis")


def preload() -> None:
    """Import the heavy libraries once, here, so every forked test run starts with them (never ``pipeline``)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional one missing: the tests import what they need
            pass
    assert not any(m == "pipeline" or m.startswith(("pipeline.", "tests.")) for m in sys.modules)


def make_tree(dest: Path) -> Path:
    """A copy of the project (no .venv, models, runs, caches) to mutate in; models/ is linked."""
    def ignore(d, names):
        top = Path(d) == ROOT
        return {n for n in names if n in ("__pycache__", ".pytest_cache", ".git", ".ruff_cache")
                or (top and n in (".venv", "models", "runs", "bench-out", "mutate-out"))}

    tree = dest / "tree"
    shutil.copytree(ROOT, tree, ignore=ignore, symlinks=True)
    models = (ROOT / "models").resolve()
    if models.exists():
        (tree / "models").symlink_to(models, target_is_directory=True)
    return tree


def run_tests(tree: Path, target: Target, timeout: float, log: Path, basetemp: Path) -> tuple[str, float, float]:
    """The target's tests against the tree, in two rounds: its first test entry (the most telling; most
    mutants die there, for the price of collecting one file), then the rest.  ('pass' | 'fail' | 'timeout'
    | 'error', wall seconds, CPU seconds) of both together."""
    first, rest = target.tests[:1], target.tests[1:]
    res, dt, cpu = _run_pytest(tree, first, target.deselect, timeout, log, basetemp)
    if res != "pass" or not rest:
        return res, dt, cpu
    res, dt2, cpu2 = _run_pytest(tree, rest, target.deselect, timeout - dt, log, basetemp)
    return res, dt + dt2, cpu + cpu2


def _run_pytest(tree: Path, tests: tuple[str, ...], deselect: str, timeout: float, log: Path, basetemp: Path
                ) -> tuple[str, float, float]:
    """Run pytest on ``tests`` in a forked child with ``tree`` first on the path."""
    args = ["-q", "-x", "-p", "no:cacheprovider", "-m", FAST, "--basetemp", str(basetemp), "-o", "addopts=", *tests]
    if deselect:
        args += ["-k", f"not ({deselect})"]
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.setsid()  # its own process group: a timeout kills the tests' children too
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            os.environ["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])
            sys.dont_write_bytecode = True
            import pytest

            code = int(pytest.main(args))
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = t0 + timeout
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                os.killpg(pid, signal.SIGKILL)
                _, _, usage = os.wait4(pid, 0)
                return "timeout", time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
            time.sleep(0.05)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the tests go too, then the tree
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        raise
    code = os.waitstatus_to_exitcode(status)
    dt, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime  # (the child's own CPU, not its children's)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the tests left running
    except (ProcessLookupError, PermissionError):
        pass
    if code == 0:
        return "pass", dt, cpu
    if code == 1:
        return "fail", dt, cpu
    return ("error" if code in (3, 4, 5) else "fail"), dt, cpu  # 2 (interrupted: a collection error) kills too


@dataclass
class Score:
    module: str
    killed: int = 0
    timeout: int = 0
    survived: list[Mutant] = field(default_factory=list)
    errors: list[tuple[Mutant, str]] = field(default_factory=list)
    total: int = 0  # mutants of the module before sampling
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the mutants' test processes
    baseline_s: float = 0.0

    @property
    def run(self) -> int:
        return self.killed + self.timeout + len(self.survived)

    @property
    def pct(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.run if self.run else float("nan")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # so the temporary tree is removed


def check(modules: list[str], max_mutants: int | None, timeout: float | None, say=print, keep: bool = False
          ) -> list[Score]:
    signal.signal(signal.SIGTERM, _terminate)
    preload()
    scores = []
    work = Path(tempfile.mkdtemp(prefix="pipeline-mutate-"))
    try:
        tree = make_tree(work)
        for module in modules:
            target = TARGETS[module]
            all_ms = mutants(module, target, tree)
            ms = sample(all_ms, max_mutants)
            sc = Score(module, total=len(all_ms))
            scores.append(sc)
            path = tree / module
            original = path.read_bytes()
            base, dt, cpu = run_tests(tree, target, 1800, work / "baseline.log", work / "bt")
            sc.baseline_s = dt
            if base != "pass":
                say(f"{module}: the unmutated tests do not pass ({base}); skipped. Log:\n"
                    + (work / "baseline.log").read_text()[-3000:])
                sc.errors.append((None, f"baseline {base}"))
                continue
            limit = timeout or max(300.0, 8 * dt)  # generous: on a shared machine a niced run waits a lot
            say(f"{module}: {len(ms)} of {len(all_ms)} mutants; tests pass unmutated in {dt:.1f} s ({cpu:.1f} s CPU); "
                f"limit {limit:.0f} s a mutant")
            t0 = time.perf_counter()
            try:
                for i, m in enumerate(ms, 1):
                    path.write_bytes(m.apply(original))
                    res, dt, cpu = run_tests(tree, target, limit, work / "mutant.log", work / "bt")
                    sc.cpu += cpu
                    path.write_bytes(original)
                    if res == "fail":
                        sc.killed += 1
                    elif res == "timeout":
                        sc.timeout += 1
                    elif res == "pass":
                        sc.survived.append(m)
                    else:
                        sc.errors.append((m, (work / "mutant.log").read_text()[-400:]))
                    mark = {"fail": "killed", "timeout": "killed (time limit)", "pass": "SURVIVED", "error": "error"}[res]
                    say(f"  [{i}/{len(ms)}] {module}:{m.line} {m.what}: {mark} ({dt:.1f} s, {cpu:.1f} s CPU)")
            finally:
                path.write_bytes(original)
            sc.seconds = time.perf_counter() - t0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return scores


# ------------------------------------------------------------------------------------------------ report
def explain(m: Mutant) -> str | None:
    return EQUIVALENT.get((m.module, m.source_line, m.what))


def summary(scores: list[Score], total_s: float, max_mutants: int | None) -> str:
    lines = ["| module | mutants (of all) | killed | survived | score | time (CPU) |", "|---|---|---|---|---|---|"]
    k = s = n = 0
    for sc in scores:
        lines.append(f"| `{sc.module}` | {sc.run} ({sc.total}) | {sc.killed + sc.timeout} | {len(sc.survived)} | "
                     f"{sc.pct:.0f} % | {sc.seconds:.0f} s ({sc.cpu:.0f} s) |")
        k, s, n = k + sc.killed + sc.timeout, s + len(sc.survived), n + sc.run
    lines.append(f"| **all** | {n} | {k} | {s} | **{100.0 * k / n if n else float('nan'):.1f} %** | "
                 f"{total_s / 60:.1f} min |")
    surv = [m for sc in scores for m in sc.survived]
    if surv:
        lines += ["", "Survivors:", ""]
        for m in surv:
            why = explain(m)
            lines.append(f"- `{m.module}:{m.line}` ({m.scope or 'module'}) `{m.what}` in `{m.source_line}`"
                         + (f" — {why}" if why else " — **not explained**"))
    errs = [(m, e) for sc in scores for m, e in sc.errors]
    if errs:
        lines += ["", f"Errors (mutants whose tests could not run, not counted): {len(errs)}"]
    return "\n".join(lines)


BEGIN, END = "<!-- mutate: begin -->", "<!-- mutate: end -->"


def write_benchmarks(section: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Put ``section`` between the mutate markers of BENCHMARKS.md (appended when there are none)."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def scores_from_log(text: str, modules: list[str]) -> tuple[list[Score], float]:
    """The scores a run printed (its log), rebuilt: explanations added to EQUIVALENT after a long run then
    apply without running it again (``--from-log``)."""
    import re

    scores, by_pos, sc = [], {}, None
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"(pipeline/\S+\.py): (\d+) of (\d+) mutants", line)
        if m:
            sc = Score(m.group(1), total=int(m.group(3)))
            scores.append(sc)
            by_pos = {(x.line, x.what): x for x in mutants(sc.module, TARGETS[sc.module])}
            continue
        m = re.match(r"  \[\d+/\d+\] (pipeline/\S+\.py):(\d+) (.+): (killed \(time limit\)|killed|SURVIVED|error) "
                     r"\(([\d.]+) s, ([\d.]+) s CPU\)", line)
        if m and sc is not None:
            res, dt, cpu = m.group(4), float(m.group(5)), float(m.group(6))
            sc.seconds += dt
            sc.cpu += cpu
            total += dt
            if res == "killed":
                sc.killed += 1
            elif res.startswith("killed"):
                sc.timeout += 1
            elif res == "SURVIVED":
                sc.survived.append(by_pos[(int(m.group(2)), m.group(3))])
        m = re.match(r"\| \*\*all\*\* .* \| ([\d.]+) min \|$", line)
        if m:
            total = float(m.group(1)) * 60
    return [x for x in scores if x.module in modules], total


def carry_section(path: Path, md: str) -> str:
    """``md`` (a new BENCHMARKS.md from ``make bench``) with the mutation section of the file at ``path`` kept."""
    try:
        old = path.read_text()
    except OSError:
        return md
    if BEGIN not in old or END not in old:
        return md
    return md.rstrip() + "\n\n" + old[old.index(BEGIN):old.index(END) + len(END)] + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.mutate", description=__doc__.split("\n\n")[0])
    p.add_argument("--module", nargs="+", metavar="M", help="only these modules (a path under pipeline/, or a "
                   "unique part of one: shards, plan, status, ...)")
    p.add_argument("--max-mutants", type=int, metavar="N", default=DEFAULT_MAX,
                   help=f"at most N mutants a module, sampled by a hash of each mutant (deterministic; default "
                        f"{DEFAULT_MAX}, sized for about 40 minutes on 2 shared cores; 0: every mutant)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds a mutant's tests may take "
                   "(default: 8x the unmutated tests' time, at least 300)")
    p.add_argument("--list", action="store_true", help="list the mutants (and counts) and run nothing")
    p.add_argument("--write", action="store_true", help="write the score into BENCHMARKS.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary tree and logs")
    p.add_argument("--from-log", metavar="FILE", help="run nothing: rebuild the scores from the printed output of "
                   "an earlier run (e.g. to --write them with explanations added since)")
    a = p.parse_args(argv)
    a.max_mutants = a.max_mutants or None
    modules = list(TARGETS)
    if a.module:
        modules = []
        for want in a.module:
            hit = [m for m in TARGETS if m == want or Path(m).stem == want or want in m]
            if len(hit) != 1:
                p.error(f"--module {want}: matches {hit or 'nothing'} (known: {', '.join(TARGETS)})")
            modules += hit
    if a.list:
        n = 0
        for module in modules:
            all_ms = mutants(module, TARGETS[module])
            ms = sample(all_ms, a.max_mutants)
            n += len(ms)
            print(f"{module}: {len(ms)} of {len(all_ms)} mutants")
            for m in ms:
                print(f"  {m.line}:{m.col} [{m.scope}] {m.what}: {m.source_line}")
        print(f"total {n}")
        return 0
    if a.from_log:
        scores, total_s = scores_from_log(Path(a.from_log).read_text(), modules)
    else:
        t0 = time.perf_counter()
        scores = check(modules, a.max_mutants, a.timeout, keep=a.keep, say=lambda s: print(s, flush=True))
        total_s = time.perf_counter() - t0
    text = summary(scores, total_s, a.max_mutants)
    print()
    print(text)
    if a.write and a.module:
        print("a partial run (--module): BENCHMARKS.md left as it is")
    elif a.write:
        section = render_section(scores, total_s, a.max_mutants, modules)
        write_benchmarks(section)
        print("wrote the score into BENCHMARKS.md")
    unexplained = [m for sc in scores for m in sc.survived if not explain(m)]
    return 1 if unexplained or any(sc.errors for sc in scores) else 0


def render_section(scores: list[Score], total_s: float, max_mutants: int | None, modules: list[str]) -> str:
    import platform
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    head = [
        "## Mutation check (`make mutate`)", "",
        f"Written by `python -m benches.mutate --write` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"git {rev}, {platform.system()} {os.cpu_count()} logical CPUs, load average {load} at the end; "
        f"{'every mutant' if max_mutants is None else f'at most {max_mutants} mutants a module (sampled by hash)'}"
        f", one at a time. Code and mutation operators: `benches/mutate.py`. Not in CI: it is slow.", "",
        "The modules are this branch's versions; where other work changes a module (its interval method, its "
        "checks), its score is that of the version measured here. A sample of a few mutants a module gives a rough "
        "score, not a census: `python -m benches.mutate --max-mutants 0` runs all of them (hours on 2 shared "
        "cores). The deliberate bugs of the issue that asked for this check (a shard counted done without "
        "validation, an eval text left in training on the eval-split path, the oldest predictions kept, resume "
        "skipping failed or resubmitting done runs, an unpaired bootstrap) were each put in by hand and each "
        "fails `tests/test_guarantees.py`.", ""]
    return "\n".join(head) + "\n" + summary(scores, total_s, max_mutants) + "\n"


if __name__ == "__main__":
    sys.exit(main())
