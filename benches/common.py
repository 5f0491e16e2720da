"""Shared pieces: figures (a measurement beside its baseline), sizes, machine facts, stub Slurm."""

from __future__ import annotations

import math
import os
import platform
import stat
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- figures
@dataclass
class Figure:
    """One measured figure beside its baseline, over repeats (one value per repeat, interleaved)."""

    key: str  # "1a"
    title: str
    unit: str  # of value and baseline
    value: list[float]
    label: str = "pipeline"
    baseline_label: str = ""
    baseline: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)  # per repeat; see ratio_unit
    ratio_unit: str = "x"  # "x" or "%" (overhead)
    ratio_means: str = ""  # what the ratio divides, e.g. "pipeline ÷ Trainer samples/s (higher is better)"
    target: str = ""  # shown as is, e.g. "≥ 1.8x"; "" = no target
    ok: bool | None = None  # target met (by the median)? None: no target
    goal: tuple[str, float, str] | None = None  # (op, threshold, "ratio" | "value") as judged
    how: str = ""
    note: str = ""  # why a target is missed, caveats

    def numbers(self) -> list[float]:
        return [*self.value, *self.baseline, *self.ratio]

    def judge(self, op: str, t: float, on: str = "ratio", text: str | None = None) -> Figure:
        """Set the target (``op`` one of >=, <=, <, >, ==) on the median ratio or value."""
        x = med(self.ratio if on == "ratio" else self.value)
        self.goal = (op, t, on)
        self.ok = bool({">=": x >= t, "<=": x <= t, "<": x < t, ">": x > t, "==": x == t}[op])
        sym = {">=": "≥", "<=": "≤", "==": "="}.get(op, op)
        unit = self.ratio_unit if on == "ratio" else self.unit
        unit = {"x": "x", "%": " %"}.get(unit, f" {unit}")
        self.target = text or f"{sym} {t:g}{unit}"
        return self


def straddles(f: Figure) -> bool:
    """Do the repeats fall on both sides of the target (so the median alone decides met / missed)?"""
    if f.goal is None:
        return False
    op, t, on = f.goal
    xs = f.ratio if on == "ratio" else f.value
    if len(xs) < 2:
        return False
    return min(xs) < t < max(xs)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    a = abs(x)
    if a >= 1 and x == int(x):
        return f"{int(x):,}"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.2g}"


def fmt(xs: list[float], unit: str = "") -> str:
    """'median [min–max] unit' (the spread over repeats); one value, or all equal: just the value."""
    if not xs:
        return "-"
    u = {"x": "x", "%": " %", "": ""}.get(unit, f" {unit}")
    if len(xs) == 1 or min(xs) == max(xs):
        return f"{fmt_num(med(xs))}{u}"
    return f"{fmt_num(med(xs))}{u} [{fmt_num(min(xs))}–{fmt_num(max(xs))}]"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b if b else float("nan") for a, b in zip(num, den, strict=True)]


def overhead_pct(fast: list[float], slow: list[float]) -> list[float]:
    """Extra time in % of the faster contender's, per repeat, from throughputs (fast = bare loop, slow = pipeline)."""
    return [(f / s - 1) * 100 if s else float("nan") for f, s in zip(fast, slow, strict=True)]


# ---------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    smoke: bool
    repeats: int
    # 1. training / evaluation
    host: str
    receiving: str  # the host that receives modules (per-run overhead of a zero-shot pack)
    n_train: int
    n_eval: int
    batch: int
    eval_batch: int
    max_length: int
    warmup_steps: int
    trainer_window: int  # measured Trainer steps: a multiple of LengthGroupedSampler's mega-batch (8 batches here)
    # 2. packing
    pack_k: int
    pack_steps: int
    # 3. planning and status
    plan_seeds: int  # runs = 5 techniques x 2 origins x 5 datasets x seeds x (1 + 3 conditions x 3 regimes)
    done_fraction: float
    # 4. merge
    merge_shards: tuple[int, int]  # (small, large): memory must be flat between them
    merge_repeats: int  # the naive baseline alone takes minutes at 10,000 shards
    merge_new: int  # shards added before the incremental re-merge
    light_repeats: int  # subprocess timings of `pipeline plan` / `pipeline status` vs `import torch`
    # 7. interval coverage (synthetic sweeps, pipeline.results.coverage)
    coverage_reps: int = 2_000  # sweeps per coverage cell, the report's interval (MC SE ~0.005)
    coverage_boot_reps: int = 500  # sweeps per cell for the interval it replaces (baseline; MC SE ~0.01-0.02)
    coverage_n_boot: int = 2_000  # its resamples

    @property
    def plan_runs(self) -> int:
        return 5 * 2 * 5 * self.plan_seeds * 10


FULL = Sizes(smoke=False, repeats=3, host="embedded:all-minilm-l6-v2",
             receiving="embedded:all-minilm-l6-v2-tweets-30", n_train=1024, n_eval=512, batch=32,
             eval_batch=64, max_length=64, warmup_steps=2, trainer_window=16, pack_k=8, pack_steps=16, plan_seeds=200,
             done_fraction=0.9, merge_shards=(2000, 10000), merge_repeats=2, merge_new=100,
             light_repeats=5)
SMOKE = Sizes(smoke=True, repeats=1, host="embedded:tiny-bert-a",
              receiving="embedded:tiny-bert-b", n_train=32, n_eval=32, batch=16, eval_batch=16,
              max_length=32, warmup_steps=1, trainer_window=2, pack_k=2, pack_steps=2, plan_seeds=2, done_fraction=0.9,
              merge_shards=(50, 100), merge_repeats=1, merge_new=10,
              light_repeats=1, coverage_reps=60, coverage_boot_reps=20, coverage_n_boot=200)


# ---------------------------------------------------------------- environment
def child_env(**extra: str) -> dict[str, str]:
    """Environment for benchmark subprocesses: the repo importable, quiet, passive OpenMP waits."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.update(extra)
    return env


def run_child(args: list[str], timeout: float = 600, **env: str) -> tuple[float, str]:
    """Run ``python -m benches.child ARGS`` in a fresh process; (wall seconds, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benches.child", *args], cwd=ROOT, env=child_env(**env),
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark child {' '.join(args[:1])} failed ({p.returncode}):\n{tail}")
    return wall, p.stdout


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine() -> dict[str, str]:
    import importlib.metadata as md

    vers = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "submitit", "duckdb", "pandas", "pyarrow"):
        try:
            vers[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            vers[pkg] = "-"
    mem = _mem_gib()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.system()} {platform.release()}, {_cpu_model()}, {os.cpu_count()} logical CPUs"
                   + (f", {mem:.0f} GiB RAM" if mem else ""),
        "os": _os_name(),
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in vers.items()),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
    }
    try:
        import torch

        out["torch threads"] = str(torch.get_num_threads())
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only (no CUDA device)"
    except ImportError:  # pragma: no cover
        pass
    out["git"] = git_line()
    return out


def git_line() -> str:
    """The commit measured (12 hex digits), marked when the measured code had uncommitted changes (the
    figures then describe no commit: tests/test_bench_fresh.py refuses such a line)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline", "benches"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return f"{head} + uncommitted changes" if head and dirty else head or "-"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "-"


# ---------------------------------------------------------------- stub Slurm
STUB = r"""#!/bin/sh
# benchmark stub of a Slurm command: records the call, answers from prepared files, never talks to Slurm
name=$(basename "$0")
d="$BENCH_STUB_DIR"
printf '%s' "$name" >> "$d/calls.log"
for a in "$@"; do printf ' %s' "$a" >> "$d/calls.log"; done
printf '\n' >> "$d/calls.log"
case "$name" in
  sbatch)
    n=$(cat "$d/next_id" 2>/dev/null || echo 1000)
    echo $((n + 1)) > "$d/next_id"
    echo "Submitted batch job $n" ;;
  scontrol)
    echo "MaxArraySize            = 1001" ;;
  squeue|sacct)
    [ -f "$d/$name.out" ] && cat "$d/$name.out" ;;
esac
exit 0
"""


@dataclass
class StubSlurm:
    """Fake sbatch/squeue/sacct/scontrol/srun first on PATH: they record each call and never reach Slurm."""

    folder: Path

    def calls(self, name: str | None = None) -> list[str]:
        log = self.folder / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [x for x in lines if name is None or x.split(" ", 1)[0] == name]

    def reset(self) -> None:
        (self.folder / "calls.log").unlink(missing_ok=True)

    def answer(self, name: str, text: str) -> None:
        (self.folder / f"{name}.out").write_text(text)


@contextmanager
def stub_slurm(folder: Path):
    folder = Path(folder)
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("sbatch", "squeue", "sacct", "scontrol", "srun", "scancel"):
        p = bin_dir / name
        p.write_text(STUB)
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    old_path, old_dir = os.environ.get("PATH", ""), os.environ.get("BENCH_STUB_DIR")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{old_path}"
    os.environ["BENCH_STUB_DIR"] = str(folder)
    try:
        from pipeline.launch import queue

        queue.max_array_size.cache_clear()
    except (ImportError, AttributeError):
        pass
    try:
        yield StubSlurm(folder)
    finally:
        os.environ["PATH"] = old_path
        if old_dir is None:
            os.environ.pop("BENCH_STUB_DIR", None)
        else:
            os.environ["BENCH_STUB_DIR"] = old_dir
        try:
            from pipeline.launch import queue

            queue.max_array_size.cache_clear()
        except (ImportError, AttributeError):
            pass
