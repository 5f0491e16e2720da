"""Command line: ``python -m pipeline COMMAND`` (or the ``pipeline`` console script).

Thin on purpose: each command parses arguments and calls one stage module.
Bad input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from .shapes import check_pairs

console = Console(width=None if sys.stdout.isatty() else 150)
USER_ERRORS: tuple[type[BaseException], ...] = ()


def calm_threads() -> None:
    """OpenMP threads that spin while waiting waste a shared CPU (5x slower sweeps when cores are busy).
    Set before torch is imported; worker processes inherit it."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _sweep_of(target: str):
    """A sweep folder from a spec file or a sweep folder."""
    from .spec import load
    from .sweep import Sweep

    p = Path(target)
    if p.is_dir():
        if not (p / "plan.parquet").exists():
            raise UsageError(f"{p}: not a sweep folder (no plan.parquet); pass a spec or run the sweep first")
        return Sweep(p)
    spec = load(p)
    return Sweep(Path(spec.output_dir))


def prepare(spec_path: str, build_hosts: bool = True):
    """What ``run``, ``sweep`` and ``plan`` open with: load and check the spec, make its hosts
    available (``build_hosts``: build embedded ones now, so run ids carry their fingerprints),
    and plan.  Returns (spec, plan, sweep)."""
    from . import plan as planmod
    from .spec import load
    from .sweep import Sweep

    spec = load(spec_path)
    check_pairs(spec, spec_path)
    if build_hosts:
        _ensure_hosts(spec)
    return spec, planmod.build(spec), Sweep.for_spec(spec)


def cmd_plan(a) -> int:
    spec, plan, sweep = prepare(a.spec, build_hosts=False)
    from .show import print_plan

    print_plan(console, spec, plan, sweep, rows=a.rows)
    if plan.unresolved:
        console.print(f"[yellow]note:[/yellow] host(s) {', '.join(plan.unresolved)} not on this machine yet "
                      "(embedded hosts are built, hub hosts fetched, by `run`/`sweep`): their run ids are "
                      "provisional", highlight=False)
    for name in PLAN_EXTRAS:  # cost estimate, Slurm array layout and sbatch scripts
        mod = _optional(name)
        if mod is not None and hasattr(mod, "print_plan_extra"):
            mod.print_plan_extra(console, spec, plan)
    return 0


# Stage modules that add their own subcommands (``add_parsers(sub)``) or dry-run sections.
COMMAND_MODULES = ("slurm_launch", "status", "report", "bench")
PLAN_EXTRAS = ("cost", "slurm_launch")


def _optional(name: str):
    import importlib

    try:
        return importlib.import_module(f"pipeline.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"pipeline.{name}":
            raise
        return None


def cmd_run(a) -> int:
    from . import launch
    from .runner import quiet

    quiet()
    spec, plan, sweep = prepare(a.spec)
    sweep.write(spec, plan)
    console.print(f"[bold]{spec.name}[/bold]: {len(plan.stage1)} stage-1 + {len(plan.stage2)} stage-2 runs "
                  f"-> {sweep.root}")
    counts = launch.run_local(sweep, workers=a.workers, debug=a.debug, console=console)
    res = _merge(sweep)
    from .show import print_summary

    print_summary(console, sweep, res)
    if counts["failed"]:
        console.print(f"[red]{counts['failed']} pack(s) had failed runs[/red]: see `pipeline status {a.spec}`; "
                      f"`pipeline run {a.spec}` again runs only what is missing")
        return 1
    return 0


def _ensure_hosts(spec) -> None:
    """Build embedded hosts the spec uses before workers start (one build, with progress)."""
    from .hosts import resolve_host

    for h in spec.hosts:
        if h.model.startswith("embedded:"):
            resolve_host(h.model, Path(spec.models_dir))


def _merge(sweep):
    from .merge import merge

    res = merge(sweep.root, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"))
    console.print(f"merged {res.shards} shards -> {res.path} ({res.rows} rows, {len(res.quarantined)} quarantined)")
    return res


def cmd_merge(a) -> int:
    _merge(_sweep_of(a.target))
    return 0


def cmd_summary(a) -> int:
    from .show import print_summary

    sweep = _sweep_of(a.target)
    if not sweep.results.exists():
        _merge(sweep)
    print_summary(console, sweep, None)
    return 0


def cmd_hosts(a) -> int:
    from .hosts import build_all

    which = a.which or ["all-minilm-l6-v2", "all-minilm-l6-v2-tweets"]  # default: the demo's MiniLM pair
    for name, path in build_all(Path(a.models_dir), which).items():
        console.print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pipeline", description="PEFT portability sweeps: plan, run, merge and report.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("plan", help="dry run: show the planned runs and where results go, run nothing")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.add_argument("--rows", type=int, default=8, help="runs to show per stage (default 8)")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("run", help="run a sweep on this machine (submitit local executor), then merge")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    s.add_argument("--debug", action="store_true", help="run in this process (submitit DebugExecutor)")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("merge", help="merge shards into results.parquet (bad shards quarantined)")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("summary", help="print mean accuracy by technique x condition x regime")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.set_defaults(fn=cmd_summary)

    s = sub.add_parser("hosts", help="build the embedded hosts (derived MiniLM, tiny test hosts)")
    s.add_argument("--models-dir", default="models", help="where built hosts go (default models/)")
    s.add_argument("--which", nargs="*", default=None, help="names to build (default: the MiniLM pair)")
    s.set_defaults(fn=cmd_hosts)
    for name in COMMAND_MODULES:
        mod = _optional(name)
        if mod is not None and hasattr(mod, "add_parsers"):
            mod.add_parsers(sub)
    return p


# Errors that mean "bad input", by module; looked up lazily so that a light command (status)
# never imports torch just to be able to catch an error it cannot raise.
USER_ERROR_TYPES = (("pipeline.spec", "SpecError"), ("pipeline.data", "DataError"),
                    ("pipeline.port", "ModuleError"), ("pipeline.hosts", "HostError"))


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, (UsageError, FileNotFoundError, PermissionError)):
        return True
    for mod, name in USER_ERROR_TYPES:
        m = sys.modules.get(mod)
        if m is not None and isinstance(e, getattr(m, name)):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    calm_threads()
    try:
        args = build_parser().parse_args(argv)
        if args.cmd in ("run",) and getattr(args, "workers", 1) < 1:
            raise UsageError("pipeline run: --workers must be at least 1")
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as e:
        if _is_user_error(e):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"error: {msg}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # disk full, read-only folder, ...
            print(f"error: {e.filename or ''}: {e.strerror}".replace(": :", ":"), file=sys.stderr)
            return 2
        raise


def main_exit() -> None:
    sys.exit(main())
