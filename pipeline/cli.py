"""Command line: ``python -m pipeline COMMAND`` (or the ``pipeline`` console script).

Every command is declared here, and only here; each imports the stage modules it needs inside
its function, so ``plan`` or ``status`` on a login node never pays for torch.  Stage modules
never import this module.

    plan     spec -> plan -> dry run (pipeline.plan, pipeline.cost, pipeline.launch.layout)
    run      spec -> plan -> hub names checked offline -> local workers -> merge -> summary
             (pipeline.run.fetch, pipeline.launch.local, pipeline.results)
    sweep    spec -> plan -> hub names checked offline -> Slurm job arrays, within the user's submit limit
             (pipeline.run.fetch, pipeline.launch.slurm; --follow: pipeline.launch.follow; --dry-run: sbatch --test-only)
    fetch    spec -> hub hosts and datasets into the HF cache, checked offline (pipeline.run.fetch)
    resume   sweep folder -> hub names checked offline -> the waiting, failed and missing runs, (re)submitted
             (pipeline.run.fetch, pipeline.launch.slurm; --follow: pipeline.launch.follow)
    status   sweep folder -> every run's state (pipeline.launch.status)
    merge    shards -> results.parquet (pipeline.results.merge)
    summary  results -> mean-accuracy tables (pipeline.results.summary)
    report   results -> report/ (pipeline.results.report)
    hosts    build the embedded hosts (pipeline.hosts)

Bad input ends with one line on stderr and exit code 2, never a traceback: every error a user
can cause derives from :class:`pipeline.errors.UserError`, and ``main`` catches that one type
(plus the operating system's own errors, e.g. a full disk).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SlurmError, UsageError, UserError

MINILM_PAIR = ["all-minilm-l6-v2", "all-minilm-l6-v2-tweets-30"]  # `pipeline hosts` by default: the demo's pair


def calm_threads() -> None:
    """OpenMP threads that spin while waiting waste a shared CPU (5x slower sweeps when cores are busy).
    Set before torch is imported; worker processes inherit it."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 150)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _source(spec_path: str, overrides=()) -> str:
    """How messages name the spec: its file, plus the command line's overrides."""
    return spec_path + "".join(f" --set {o}" for o in overrides or ())


def check(spec_path: str, overrides=()):
    """Load the spec (with ``--set`` overrides applied) and check everything that can be checked
    before any host is built (``pipeline.checks``): every field (technique hyperparameters included),
    that each host pair has one shape, and that each dataset exists and has the examples asked for."""
    from .checks import check_spec
    from .spec import load

    spec = load(spec_path, overrides or ())
    check_spec(spec, _source(spec_path, overrides))
    return spec


def prepare(spec_path: str, build_hosts: bool = True, overrides=(), spec=None):
    """What ``run``, ``sweep`` and ``plan`` open with: load and check the spec (``overrides``: the
    ``--set KEY=VALUE`` of the command line; ``spec``: one ``check`` already gave), make its hosts
    available (``build_hosts``: build embedded ones now, so run ids carry their fingerprints), and plan.
    Returns (spec, plan, sweep)."""
    from . import plan as planmod
    from .sweep import Sweep

    spec = spec or check(spec_path, overrides)
    if build_hosts:
        planmod.ensure_hosts(spec)
    return spec, planmod.build(spec, source=_source(spec_path, overrides)), Sweep.for_spec(spec)


# ---------------------------------------------------------------- commands
def cmd_plan(a, console) -> int:
    from .cost import print_cost
    from .launch.layout import print_layout
    from .launch.queue import max_array_size
    from .plan import print_plan

    spec, plan, sweep = prepare(a.spec, build_hosts=False, overrides=a.set)
    print_plan(console, spec, plan, sweep, rows=a.rows)
    for what, names in (("host(s)", plan.unresolved), ("dataset(s)", plan.unresolved_data)):
        if names:
            console.print(f"[yellow]note:[/yellow] {what} {', '.join(names)} not on this machine yet (embedded hosts "
                          "are built, hub names fetched, by `run`/`sweep`): their run ids are provisional", highlight=False)
    print_cost(console, spec, plan)
    print_layout(console, spec, plan, max_array_size())
    return 0


def cmd_run(a, console) -> int:
    from .launch.local import run_local
    from .results.summary import print_summary

    if a.workers < 1:
        raise UsageError("pipeline run: --workers must be at least 1")
    spec = check(a.spec, a.set)
    _fetch(spec, _source(a.spec, a.set), console, command="run")  # every hub name loads before anything is written
    spec, plan, sweep = prepare(a.spec, overrides=a.set, spec=spec)
    sweep.write(spec, plan, overrides=a.set)
    console.print(f"[bold]{spec.name}[/bold]: {len(plan.stage1)} stage-1 + {len(plan.stage2)} stage-2 runs "
                  f"-> {sweep.root}")
    counts = run_local(sweep, workers=a.workers, debug=a.debug, console=console)
    res = _merge(sweep, console)
    print_summary(console, sweep, res)
    if counts["failed"]:
        console.print(f"[red]{counts['failed']} pack(s) had failed runs[/red]: see `pipeline status {sweep.root}`; "
                      f"`pipeline run {_source(a.spec, a.set)}` again runs only what is missing")
        return 1
    return 0


def _submit(a, sweep, console, target: str, spec=None) -> int:
    """Submit what fits (``--follow``/``--until-done``: and stay, submitting more as slots free)."""
    from .launch.slurm import submit_pending

    if a.follow or a.until_done:
        from .launch.follow import follow

        return follow(sweep, console, target, spec, interval=a.interval, until_done=a.until_done)
    submit_pending(sweep, console, target, spec)
    return 0


def cmd_sweep(a, console) -> int:
    from .launch.queue import have_slurm

    spec = check(a.spec, a.set)  # a bad spec is a bad spec, with or without Slurm
    if a.dry_run:
        from .launch.slurm import dry_run

        _fetch(spec, _source(a.spec, a.set), console, download=False, command="sweep --dry-run")
        spec, plan, sweep = prepare(a.spec, build_hosts=False, overrides=a.set, spec=spec)
        console.print(f"[bold]{spec.name}[/bold]: {len(plan.stage1)} stage-1 + {len(plan.stage2)} stage-2 runs "
                      f"-> {sweep.root} (dry run: nothing is written or submitted)", highlight=False)
        dry_run(console, spec, plan)
        return 0
    if not have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): `pipeline run "
                         f"{a.spec}` runs the sweep on this machine; `pipeline plan {a.spec}` shows the arrays")
    _fetch(spec, _source(a.spec, a.set), console)  # jobs run offline: every hub name must be in the HF cache
    spec, plan, sweep = prepare(a.spec, overrides=a.set, spec=spec)  # hosts built, planned: nothing submitted yet
    sweep.write(spec, plan, overrides=a.set)
    console.print(f"[bold]{spec.name}[/bold]: {len(plan.stage1)} stage-1 + {len(plan.stage2)} stage-2 runs "
                  f"-> {sweep.root}", highlight=False)
    return _submit(a, sweep, console, str(sweep.root) if a.set else a.spec, spec)


def _fetch(spec, source: str, console, download: bool = True, command: str = "sweep") -> dict:
    """The one offline check (pipeline.run.fetch): every hub host and dataset loads from the HF cache, fetched
    first where the hub is reachable (not with ``download=False``); else one line saying what to do."""
    from .run.fetch import fetch

    return fetch(spec, source, download=download, say=lambda m: console.print(m, highlight=False), command=command)


def cmd_fetch(a, console) -> int:
    from .hub import cache_dir

    spec = check(a.spec, a.set)
    names = _fetch(spec, _source(a.spec, a.set), console, command="fetch")
    if not names["hosts"] and not names["datasets"]:
        console.print("nothing to fetch: the spec names no hub host or dataset (embedded or local only)")
        return 0
    for kind in ("hosts", "datasets"):
        for name in names[kind]:
            console.print(f"{kind[:-1]} {name}: in the HF cache, loads offline", highlight=False)
    console.print(f"cache: {cache_dir()} (jobs run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1)", highlight=False)
    return 0


def cmd_resume(a, console) -> int:
    from .launch.queue import have_slurm
    from .sweep import Sweep

    sweep = Sweep.of(a.target)
    if not (sweep.root / "plan.parquet").exists():
        raise UsageError(f"{sweep.root}: no sweep there yet; start it with `pipeline sweep {a.target}`")
    if not have_slurm():
        raise SlurmError("Slurm is not available here (no sbatch/squeue): `pipeline run SPEC` runs what is "
                         f"missing on this machine; `pipeline status {a.target}` shows where the runs stand")
    spec = sweep.spec
    _fetch(spec, a.target, console, command="resume")  # as sweep does: jobs run offline, every hub name must be in the HF cache
    sweep.refuse_changed_data()
    return _submit(a, sweep, console, a.target, spec)


def cmd_status(a, console) -> int:
    from .launch.status import print_status, snapshot, verify_done
    from .sweep import Sweep

    sweep = Sweep.of(a.target)
    snap = snapshot(sweep)
    print_status(console, snap, lines=a.lines, max_errors=a.max_errors, target=a.target)
    if note := sweep.changed_data_note():
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if a.verify:
        bad = verify_done(snap)
        console.print(f"verify: {len(bad)} done run(s) fail validation" + (f": {', '.join(bad[:10])}" if bad else ""))
        return 1 if bad else 0
    return 0


def _merge(sweep, console):
    from .results.merge import merge

    res = merge(sweep.root, warn=lambda m: console.print(f"[yellow]{m}[/yellow]"))
    console.print(f"merged {res.shards} shards -> {res.path} ({res.rows} rows, {len(res.quarantined)} quarantined)")
    return res


def cmd_merge(a, console) -> int:
    from .sweep import Sweep

    _merge(Sweep.of(a.target), console)
    return 0


def cmd_summary(a, console) -> int:
    from .results.summary import print_summary
    from .sweep import Sweep

    sweep = Sweep.of(a.target)
    if not sweep.results.exists():
        _merge(sweep, console)
    print_summary(console, sweep, None)
    return 0


def cmd_report(a, console) -> int:
    from .results.report import build
    from .results.tables import METRICS
    from .sweep import Sweep

    if a.metric not in METRICS:
        raise UsageError(f"pipeline report: --metric must be one of {', '.join(METRICS)}, got {a.metric!r}")
    sweep = Sweep.of(a.target)
    if not sweep.root.exists():
        raise UsageError(f"{sweep.root}: no sweep there yet; run `pipeline run {a.target}` first")
    r = build(sweep.root, a.out, metric=a.metric, n_boot=a.bootstrap, seed=a.seed,
              warn=lambda m: console.print(f"[yellow]{m}[/yellow]"))
    if r.merged:
        console.print(f"merged shards -> {sweep.results}")
    missing = r.planned - r.done
    console.print(f"report: {r.markdown}\n        {r.html} ({len(r.figures)} figures, {len(r.tables)} tables)")
    console.print(f"{r.done} of {r.planned} planned runs have results"
                  + (f" [yellow]({missing} missing: partial report)[/yellow]" if missing else ""))
    return 0


def cmd_hosts(a, console) -> int:
    from .hosts import build_all

    for name, path in build_all(Path(a.models_dir), a.which or MINILM_PAIR).items():
        console.print(f"{name}: {path}")
    return 0


# ---------------------------------------------------------------- the parser
def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _add_set(s) -> None:
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field (repeatable; VALUE is YAML, KEY dotted for nested fields): "
                        "--set seeds=[0,1] --set origin_training.steps=50 --set technique_params.lora.lr=0.001")


def _interval(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return x


def _add_follow(s) -> None:
    s.add_argument("--follow", action="store_true",
                   help="stay in the foreground and submit waiting runs as slots under your submit limit free, "
                        "until every run is submitted (Ctrl-C stops; resume goes on later)")
    s.add_argument("--until-done", action="store_true", help="with --follow: stay until every run has finished")
    s.add_argument("--interval", type=_interval, default=60.0, metavar="SECONDS",
                   help="seconds between two polls of --follow (default 60)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pipeline", description="PEFT portability sweeps: plan, run, merge and report.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("plan", help="dry run: the planned runs, cost estimate and Slurm layout; runs nothing")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.add_argument("--rows", type=int, default=8, help="runs to show per stage (default 8)")
    _add_set(s)
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("run", help="run a sweep on this machine (submitit local executor), then merge")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    s.add_argument("--debug", action="store_true", help="run in this process (submitit DebugExecutor)")
    _add_set(s)
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="submit a sweep to Slurm as job arrays (stage 2 after stage 1) and return; "
                                     "runs past your submit limit wait for `resume` or --follow")
    s.add_argument("spec", help="sweep spec (YAML)")
    s.add_argument("--dry-run", action="store_true",
                   help="write and submit nothing: the arrays, and sbatch --test-only's estimated start of each")
    _add_follow(s)
    _add_set(s)
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("fetch", help="download the spec's hub hosts and datasets into the HF cache and check "
                                     "they load offline (compute nodes run offline)")
    s.add_argument("spec", help="sweep spec (YAML)")
    _add_set(s)
    s.set_defaults(fn=cmd_fetch)

    s = sub.add_parser("resume", help="submit exactly the waiting, failed and missing runs of a sweep (Slurm)")
    s.add_argument("target", help="sweep spec or sweep folder")
    _add_follow(s)
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("status", help="runs by stage x state (done/pending/running/failed/timeout/cancelled/missing)")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.add_argument("--lines", type=int, default=3, help="error lines shown per failed run (default 3)")
    s.add_argument("--max-errors", type=int, default=10, help="failed runs listed (default 10; 0 = all)")
    s.add_argument("--verify", action="store_true",
                   help="also read every done shard and checksum every module (slow on big sweeps)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("merge", help="merge shards into results.parquet (bad shards quarantined)")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.set_defaults(fn=cmd_merge)

    s = sub.add_parser("summary", help="print mean accuracy by technique x condition x regime")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.set_defaults(fn=cmd_summary)

    s = sub.add_parser("report", help="write a report (tables, figures, paired statistics) of a sweep; "
                                      "merges first if needed")
    s.add_argument("target", help="sweep spec or sweep folder")
    s.add_argument("--out", type=Path, default=None, help="report folder (default <sweep>/report)")
    s.add_argument("--metric", default="accuracy",
                   help="metric of the figures and paired statistics: accuracy (default) or macro_f1; tables show all")
    s.add_argument("--bootstrap", type=_positive, default=10_000, help="bootstrap resamples (default 10000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("hosts", help="build the embedded hosts (default: the demo's MiniLM pair)")
    s.add_argument("--models-dir", default="models", help="where built hosts go (default models/)")
    s.add_argument("--which", nargs="*", default=None,
                   help="names to build, or 'all' / 'tiny' (default: " + " ".join(MINILM_PAIR) + ")")
    s.set_defaults(fn=cmd_hosts)
    return p


def main(argv: list[str] | None = None) -> int:
    calm_threads()
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args, make_console())
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to continue", file=sys.stderr)
        return 130
    except UserError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the operating system's own: disk full, read-only folder, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def main_exit() -> None:
    sys.exit(main())
