"""The mutation check's own machinery (benches/mutate.py): which mutants it makes, where, and what it skips."""

from __future__ import annotations

import ast
from pathlib import Path

from benches import mutate as M

SRC = '''"""Doc 1 < 2."""
LIMIT = 3
BIG = 100


def f(a, b: int = 1) -> bool:
    """Docstring with 0."""
    if a < b and not a:
        raise ValueError(f"a {a} < {b} + 1")
    print("x", 1 + 2)
    a += 1
    return a == b * 2  # pragma: no mutate


def g(xs):
    return [x for x in xs if x in (True, 0)]


def h():
    return None
'''


def _mutants(tmp_path: Path, only=()) -> list[M.Mutant]:
    (tmp_path / "mod.py").write_text(SRC)
    return M.mutants("mod.py", M.Target(("t",), only=only), tmp_path)


def test_mutants_cover_the_operators_and_skip_messages_docs_and_pragmas(tmp_path):
    ms = _mutants(tmp_path)
    got = {(m.line, m.what) for m in ms}
    assert got == {(2, "3 -> 4"), (8, "< -> <="), (8, "and -> or"), (8, "not removed"), (11, "+ -> -"),
                   (11, "1 -> 2"), (16, "return value -> None"), (16, "in -> not in"), (16, "True -> False"),
                   (16, "0 -> 1")}
    src = SRC.encode()
    for m in ms:  # every mutant compiles and differs from the original only in its own line
        new = m.apply(src).decode()
        compile(new, "mod.py", "exec")
        changed = [i + 1 for i, (x, y) in enumerate(zip(SRC.splitlines(), new.splitlines())) if x != y]
        assert changed == [m.line], (m.what, changed)
    cmp = next(m for m in ms if m.what == "< -> <=")
    assert "if (a <= b) and not a:" in cmp.apply(src).decode()
    assert ast.dump(ast.parse(next(m for m in ms if m.what == "and -> or").apply(src))) != ast.dump(ast.parse(SRC))


def test_only_named_functions_are_mutated(tmp_path):
    ms = _mutants(tmp_path, only=("g",))
    assert {m.scope for m in ms} == {"g"} and len(ms) == 4


def test_sampling_is_deterministic_and_a_subset(tmp_path):
    ms = _mutants(tmp_path)
    a, b = M.sample(ms, 4), M.sample(list(reversed(ms)), 4)
    assert len(a) == 4 and {m.key for m in a} == {m.key for m in b} and set(a) <= set(ms)
    assert M.sample(ms, None) == ms


def test_every_target_names_existing_modules_tests_and_functions():
    for module, t in M.TARGETS.items():
        path = M.ROOT / module
        assert path.exists(), module
        names = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert set(t.only) <= names, (module, set(t.only) - names)
        for test in t.tests:
            f, _, name = test.partition("::")
            assert (M.ROOT / f).exists(), test
            assert not name or f"def {name}(" in (M.ROOT / f).read_text(), test
        assert M.mutants(module, t), module


def test_the_score_section_survives_a_new_benchmarks_file(tmp_path):
    p = tmp_path / "BENCHMARKS.md"
    p.write_text("# Benchmarks\n\nold figures\n")
    M.write_benchmarks("## Mutation check\n\n90 %", p)
    M.write_benchmarks("## Mutation check\n\n95 %", p)  # replaced, not appended twice
    text = p.read_text()
    assert text.count(M.BEGIN) == 1 and "95 %" in text and "90 %" not in text and "old figures" in text
    new = M.carry_section(p, "# Benchmarks\n\nnew figures\n")
    assert "new figures" in new and "95 %" in new and "old figures" not in new
    assert M.carry_section(tmp_path / "none.md", "x") == "x"
