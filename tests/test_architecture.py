"""The architecture, as tests: which package may import which, what stays torch-free, how big a module gets.

    pipeline/cli.py         every command; imports stage modules lazily; imported by nothing but __main__
    pipeline/*.py, techniques/   the core: spec, plan, sweep, cost, hosts, errors, files, declarations (no torch)
    pipeline/launch/        getting runs executed: local, Slurm layout / submission / queue / status (no torch)
    pipeline/run/           executing runs: the only package that imports torch
    pipeline/results/       shards, merge, statistics, report (no torch)

Arrows point down or sideways as listed in ALLOWED; the core never imports a side package.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pipeline"
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "safetensors.torch", "tokenizers")
MAX_LINES = 400
# modules allowed over MAX_LINES without a reason in their docstring: none
TOO_LONG_OK: set[str] = set()


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in module ``name`` (TYPE_CHECKING blocks left out);
    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module of the pipeline."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool]] = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module
                for a in child.names:
                    sub = f"{mod}.{a.name}"
                    out.append((sub if sub in MODULES else mod, top))
            visit(child, nested)

    visit(ast.parse(path.read_text()), True)
    return out


def side(mod: str) -> str:
    """core, launch, run, results, cli -- or 'external'."""
    if not (mod == "pipeline" or mod.startswith("pipeline.")):
        return "external"
    parts = mod.split(".")
    if len(parts) > 1 and parts[1] in ("launch", "run", "results"):
        return parts[1]
    if mod in ("pipeline.cli", "pipeline.__main__"):
        return "cli"
    return "core"


# which side may import which: sideways only through the named modules
ALLOWED = {
    "core": {"core"},
    "results": {"core", "results", "pipeline.run.data"},  # results.examples: the runs' own eval split (no torch)
    "run": {"core", "run", "pipeline.results.shards"},  # a run writes its result shard
    "launch": {"core", "launch", "pipeline.run.job", "pipeline.results.shards"},  # submits RunPack, checks shards
    "cli": {"core", "launch", "run", "results", "cli"},
}


def _allowed(src: str, dst: str) -> bool:
    ok = ALLOWED[side(src)]
    return side(dst) in ok or dst in ok


def test_nothing_imports_the_cli():
    bad = [(m, d) for m in MODULES for d, _ in imports(m) if d == "pipeline.cli" and m != "pipeline.__main__"]
    assert not bad, bad


def test_no_upward_or_sideways_arrow():
    bad = [(m, d) for m in MODULES for d, _ in imports(m)
           if side(d) != "external" and d != m and not _allowed(m, d)]
    assert not bad, "imports against the layering:\n" + "\n".join(f"  {m} -> {d}" for m, d in bad)


def test_module_level_imports_have_no_cycle():
    graph = {m: {d for d, top in imports(m) if top and d in MODULES and d != m} for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                dfs(d)
        path.pop()
        state[m] = 2

    for m in MODULES:
        if m not in state:
            dfs(m)


def test_only_the_run_side_imports_torch_at_module_level():
    bad = [(m, d) for m in MODULES if side(m) != "run" for d, top in imports(m)
           if top and any(d == h or d.startswith(h + ".") for h in HEAVY)]
    assert not bad, bad


def test_no_module_is_long_without_a_reason():
    long = []
    for m, p in MODULES.items():
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > MAX_LINES and m not in TOO_LONG_OK and "on purpose" not in doc:
            long.append(f"{m}: {n} lines")
    assert not long, long


def test_no_sys_path_edits_in_the_package():
    hits = [m for m, p in MODULES.items() if "sys.path" in p.read_text()]
    assert not hits, hits


def test_plan_runs_without_torch():
    """`pipeline plan` on a login node pays for no torch (nor transformers, peft, datasets)."""
    code = ("import sys\nfrom pipeline.cli import main\n"
            "rc = main(['plan', 'sweeps/demo.yaml', '--rows', '1'])\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print('RC', rc, 'HEAVY', heavy)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = p.stdout.strip().splitlines()[-1]
    assert last == "RC 0 HEAVY []", (last, p.stderr[-2000:])


@pytest.mark.parametrize("technique", ["lora", "prefix", "prompt", "ia3", "bottleneck", "compacter"])
def test_declarations_match_the_torch_side(technique):
    """The torch-free declaration says what the torch code does: same defaults, only real hyperparameters."""
    import dataclasses

    import peft
    from transformers.activations import ACT2FN

    from pipeline import techniques as T
    from pipeline.run import techniques as RT
    from pipeline.techniques.catalog import ACTIVATIONS

    assert set(ACTIVATIONS) <= set(ACT2FN)
    t = T.get(technique)
    impl = RT.implementation(t)
    config = {"bottleneck": getattr(impl, "BottleneckConfig", None), "compacter": getattr(impl, "CompacterConfig", None),
              "lora": peft.LoraConfig, "prefix": peft.PrefixTuningConfig, "prompt": peft.PromptTuningConfig,
              "ia3": peft.IA3Config}[technique]
    fields = {f.name: f for f in dataclasses.fields(config)}
    own = getattr(impl, "OWN_PARAMS", set())  # the project's own additions to a peft technique
    assert set(t.params) - own <= set(fields), set(t.params) - own - set(fields)
    if technique in ("bottleneck", "compacter"):  # the project's own: every field declared, same defaults
        assert set(t.params) == set(fields)
        assert {k: v for k, v in t.defaults.items() if k != "lr"} == dataclasses.asdict(config())


@pytest.mark.parametrize("command", ["status", "merge"])
def test_light_commands_import_no_torch(command, tmp_path):
    """`pipeline status` and `pipeline merge` on a login node pay for no torch either."""
    sweep = tmp_path / "sweep"
    code = ("import sys\nfrom pipeline.results import shards\nfrom pipeline.cli import main\n"
            f"shards.write(__import__('pathlib').Path({str(sweep / 'shards' / 'r1.parquet')!r}), "
            "{'run_id': 'r1', 'stage': 2, 'technique': 'lora', 'seed': 0, 'accuracy': 0.5, 'macro_f1': 0.4})\n"
            f"rc = main([{command!r}, {str(sweep)!r}])\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "print('RC', rc, 'HEAVY', heavy)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:]
    assert last.startswith("RC ") and last.endswith("HEAVY []"), (last, p.stderr[-2000:])
