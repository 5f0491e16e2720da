"""How a sweep is laid out on Slurm, computed without asking Slurm: packs, arrays, throttles, sbatch options.

Pure functions of the spec and the runs (tested without a cluster); ``pipeline.launch.slurm``
submits what they lay out, and ``pipeline plan`` prints it (:func:`print_layout`).

* runs are **packed** several to an array task (one Python start, one host load
  per task): ``pack_size`` from the spec's resources, or estimated so that a
  task runs a few minutes (never more than ``PACK_TIME_SHARE`` of its time
  limit).  A pack holds runs of one host only; stage-2 packs are sorted by the
  module they load.
* each stage's tasks are split into arrays of at most the cluster's
  ``MaxArraySize``, and the stage's ``array_parallelism`` is shared out between
  its arrays, so no more than that many tasks of a stage run at once.
* stage-2 arrays that need a stage-1 module being produced wait for that
  stage-1 array (``afterany``).
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cost import PACK_TIME_SHARE
from ..devices import gpu_count

TARGET_TASK_S = 600  # an estimated pack runs about this long ...
MIN_TASK_S = 120  # ... and at least this long when there are runs enough (start-up costs 5-30 s)
# the job's setup lines besides the hub's offline mode: PyTorch's caching allocator grows segments instead of
# fragmenting on length-bucketed batches (whose shapes change every step); a value the user exported wins
JOB_SETUP = ["export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"]


# ---------------------------------------------------------------- packing
def resources(spec, stage: int):
    return spec.resources.stage1 if stage == 1 else spec.resources.stage2


def estimate_run_s(spec, stage: int) -> float:
    """A rough wall time of one run (MiniLM-size host): load + steps + evaluation.

    CPU: ~0.4 ms per token-step (MiniLM, measured), GPUs ~20x less; evaluation ~0.1 ms per token on CPU.
    Only used to choose a pack size when the spec sets none.
    """
    r = resources(spec, stage)
    tr = spec.origin_training if stage == 1 else spec.further_training
    steps = tr.steps if stage == 1 else sum(spec.regimes) / len(spec.regimes)
    gpu = gpu_count(r) > 0  # gpus, or a GPU asked for through extra (gres)
    step_s = tr.batch_size * tr.max_length * (2e-5 if gpu else 4e-4)
    eval_n = sum(d.eval_size for d in spec.datasets) / len(spec.datasets)
    eval_s = eval_n * tr.max_length * (5e-6 if gpu else 1e-4)
    return 5.0 + steps * step_s + eval_s


def pack_size(spec, stage: int, n_runs: int) -> tuple[int, str]:
    """Runs per array task, and where the number comes from."""
    r = resources(spec, stage)
    if r.pack_size:
        return r.pack_size, "spec"
    est = estimate_run_s(spec, stage)
    by_time = max(1, int(TARGET_TASK_S // est))  # a task of about TARGET_TASK_S
    fill = max(1, math.ceil(n_runs / r.array_parallelism))  # enough tasks to use every parallel slot ...
    floor = max(1, math.ceil(MIN_TASK_S / est))  # ... but each task worth its start-up
    size = min(by_time, max(fill, floor))
    fits = max(1, int(r.time_min * 60 * PACK_TIME_SHARE // est))  # at most that share of the time limit
    return max(1, min(size, fits)), f"estimated, ~{est:.0f} s a run"


def make_packs(runs: list[tuple[str, str, str | None]], size: int) -> list[list[str]]:
    """(run id, host, needs) -> packs of at most ``size`` runs, one host per pack, sorted by module needed."""
    by_host: dict[str, list[tuple[str, str | None]]] = {}
    for rid, host, needs in runs:
        by_host.setdefault(host or "", []).append((rid, needs))
    packs = []
    for items in by_host.values():
        items = sorted(items, key=lambda x: x[1] or "")  # stable: plan order within one module
        packs += [[rid for rid, _ in items[i:i + size]] for i in range(0, len(items), size)]
    return packs


def split_arrays(tasks: list, max_size: int) -> list[list]:
    """Tasks -> arrays of at most ``max_size`` tasks (indices 0..MaxArraySize-1)."""
    max_size = max(1, max_size)
    return [tasks[i:i + max_size] for i in range(0, len(tasks), max_size)]


def share_parallelism(parallelism: int, sizes: list[int]) -> list[int]:
    """Split a stage's task cap between its arrays in proportion to their tasks (each >= 1, sum <= cap
    whenever the cap is at least the number of arrays)."""
    total = sum(sizes)
    if not total:
        return []
    out = [max(1, min(n, parallelism * n // total)) for n in sizes]
    spare = parallelism - sum(out)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):  # hand out what flooring left over
        if spare <= 0:
            break
        add = min(spare, sizes[i] - out[i])
        out[i] += add
        spare -= add
    return out


def signal_delay(time_min: int) -> int:
    """Seconds before the time limit that Slurm sends USR2: enough for a step and a checkpoint, a tenth of
    the limit, between 20 s and 120 s (Slurm may send it up to 60 s earlier still)."""
    return int(min(120, max(20, time_min * 60 // 10)))


def job_name(spec, stage: int) -> str:
    return f"{spec.name}.s{stage}"


def sbatch_params(spec, stage: int, throttle: int | None = None, dependency: str | None = None) -> dict:
    """submitit SlurmExecutor parameters (sbatch-level names) of one stage's arrays.  The script's setup
    lines (before ``srun``) put the jobs in the hub's offline mode (``OFFLINE_ENV``): compute nodes often
    have no internet, and everything a run loads from the hub was fetched into the HF cache on the login
    node (``pipeline fetch``; ``pipeline sweep`` checks it before it submits); and set ``JOB_SETUP``.  The
    ``srun`` line asks for the task's CPUs itself (``--cpus-per-task``): from Slurm 22.05 to 23.02 a step
    does not inherit them from the job, so it would get one CPU (bound to it where the site binds tasks)
    while torch runs ``cpus`` threads.  ``constraint``: :func:`gpu_constraint`."""
    from submitit.slurm.slurm import _convert_mem

    from ..hub import OFFLINE_ENV

    r = resources(spec, stage)
    p = {"job_name": job_name(spec, stage), "time": r.time_min, "cpus_per_task": r.cpus, "mem": _convert_mem(r.mem_gb),
         "signal_delay_s": signal_delay(r.time_min), "array_parallelism": throttle or r.array_parallelism,
         "setup": [f"export {k}={v}" for k, v in OFFLINE_ENV.items()] + JOB_SETUP,
         # the job step gets the task's CPUs: Slurm 22.05-23.02's srun does not inherit --cpus-per-task
         "srun_args": ["--cpus-per-task", str(r.cpus)]}
    if r.gpus and r.gpu_request == "gres":  # sites on select/cons_res know only --gres
        p["gres"] = f"gpu:{r.gpus}"
    elif r.gpus:
        p["gpus_per_node"] = r.gpus
    for k in ("partition", "account", "qos"):
        if getattr(r, k):
            p[k] = getattr(r, k)
    if constraint := gpu_constraint(r):
        p["constraint"] = constraint
    if dependency:
        p["dependency"] = dependency
    if r.extra:
        p["additional_parameters"] = {str(k).replace("-", "_"): v for k, v in r.extra.items()}
    return p


def gpu_constraint(r) -> str | None:
    """The stage's ``--constraint``: its own ``constraint``, and -- when it asks for a GPU and names the site's
    GPU node features (``gpu_features``: feature -> GPU memory in GB) -- any of the features whose GPU holds
    ``gpu_mem_gb`` (the largest run's need; every feature when it is unset), so a run never lands on a GPU
    too small for it.  None when there is nothing to constrain.  Slurm 22.05 takes ``a|b`` and ``c&(a|b)`` and
    refuses ("Invalid feature specification") a constraint naming a feature no node of the partition has."""
    big = None
    if r.gpus and r.gpu_features:
        need = r.gpu_mem_gb or 0
        big = [f for f, gb in sorted(r.gpu_features.items(), key=lambda x: (x[1], x[0])) if gb >= need]
    if not big:
        return r.constraint
    either = "|".join(big)
    if not r.constraint:
        return either
    return f"{r.constraint}&({either})" if len(big) > 1 else f"{r.constraint}&{either}"


def render_sbatch(sweep_root: Path, params: dict, n_tasks: int) -> str:
    """The sbatch script submitit writes for an array of n_tasks tasks (works without Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(sweep_root / "submitit"))])
    return _make_sbatch_string(command=command, folder=sweep_root / "submitit",
                               map_count=n_tasks if n_tasks > 1 else None, **params)



# ---------------------------------------------------------------- layout
@dataclass
class ArrayPlan:
    stage: int
    tasks: list[list[str]]
    depends: list[str] = field(default_factory=list)  # array job ids this array waits for (afterany)
    throttle: int = 1
    pack: int = 1
    pack_source: str = ""

    @property
    def runs(self) -> int:
        return sum(len(t) for t in self.tasks)

    def run_ids(self, first_task: int = 0) -> list[str]:
        """The run ids of the tasks from ``first_task`` on, in order."""
        return [rid for t in self.tasks[first_task:] for rid in t]

    def dependency(self) -> str | None:
        return f"afterany:{':'.join(self.depends)}" if self.depends else None


def layout(spec, stage: int, groups: list[tuple[list[tuple[str, str, str | None]], list[str]]],
           max_size: int) -> list[ArrayPlan]:
    """Groups of (runs, dependencies) of one stage -> arrays (packed, split, throttled)."""
    n = sum(len(g) for g, _ in groups)
    if not n:
        return []
    size, source = pack_size(spec, stage, n)
    arrays = []
    for runs, deps in groups:
        for tasks in split_arrays(make_packs(runs, size), max_size):
            arrays.append(ArrayPlan(stage, tasks, sorted(set(deps), key=str), pack=size, pack_source=source))
    for a, t in zip(arrays, share_parallelism(resources(spec, stage).array_parallelism,
                                              [len(a.tasks) for a in arrays]), strict=True):
        a.throttle = t
    return arrays


def host_of(stage: int, origin: str, receiving: str | None) -> str:
    return origin if stage == 1 else (receiving or "")


def fit(arrays: list[ArrayPlan], free: int | None) -> tuple[list[ArrayPlan], list[str]]:
    """The arrays that fit into ``free`` job slots (each array task is one job towards the user's submit
    limit), in order, the last one cut short; and the run ids of the tasks held back.  ``free`` None: no
    limit, everything fits."""
    if free is None:
        return list(arrays), []
    out, held = [], []
    for a in arrays:
        n = max(0, min(free, len(a.tasks)))
        if n:
            out.append(ArrayPlan(a.stage, a.tasks[:n], list(a.depends), min(a.throttle, n), a.pack, a.pack_source))
        held += a.run_ids(n)
        free -= n
    return out, held


def stage2_groups(runs: list[tuple[str, str, str | None]], held: set[str], job_of_need
                  ) -> tuple[dict[str, list], list[str]]:
    """Stage-2 (run id, host, needs) -> ({dependency job id or "": runs}, run ids held back).

    A run whose stage-1 run is held back (not submitted) is held back too: it must not be submitted with
    a dependency on a job that does not exist.  ``job_of_need(rid)``: the array job that produces that
    module (submitted now, or still pending/running), or None (done already: no dependency)."""
    groups: dict[str, list] = {}
    out: list[str] = []
    for rid, host, need in runs:
        if need and need in held:
            out.append(rid)
            continue
        dep = (job_of_need(need) or "") if need else ""
        groups.setdefault(dep, []).append((rid, host, need))
    return groups, out



# ---------------------------------------------------------------- dry run
def fresh_layout(spec, plan, max_size: int) -> list[ArrayPlan]:
    """The arrays a first `pipeline sweep` would submit (stage-1 job ids as placeholders)."""
    s1 = [(r.run_id, r.labels["origin_host"], None) for r in plan.stage1]
    arrays = layout(spec, 1, [(s1, [])], max_size)
    job = {rid: f"<stage-1 job {i + 1}>" for i, a in enumerate(arrays) for rid in a.run_ids()}
    groups: dict[str, list] = {}
    for r in plan.stage2:
        dep = job[r.needs] if r.needs else ""
        groups.setdefault(dep, []).append((r.run_id, r.labels["receiving_host"], r.needs))
    arrays += layout(spec, 2, [(groups[d], [d] if d else []) for d in sorted(groups)], max_size)
    return arrays


def _at_once(throttles: list[int]) -> str:
    if len(throttles) == 1:
        return str(throttles[0])
    lo, hi = min(throttles), max(throttles)
    return f"{sum(throttles)} ({lo if lo == hi else f'{lo}-{hi}'} per array)"


def print_layout(console, spec, plan, max_size: int, scripts: bool = True) -> None:
    """The dry run's Slurm section (``pipeline plan``): arrays per stage and (``scripts``) the sbatch script
    of each stage; ``max_size`` is the cluster's MaxArraySize (``queue.max_array_size()``)."""
    from rich.table import Table

    arrays = fresh_layout(spec, plan, max_size)
    t = Table(title=f"Slurm layout of `pipeline sweep` (MaxArraySize {max_size})")
    for c in ("stage", "runs", "pack size", "tasks", "arrays", "at once", "starts"):
        t.add_column(c)
    for stage in (1, 2):
        mine = [a for a in arrays if a.stage == stage]
        for dep in sorted({a.dependency() or "" for a in mine}):
            grp = [a for a in mine if (a.dependency() or "") == dep]
            if not grp:
                continue
            t.add_row(str(stage), str(sum(a.runs for a in grp)), f"{grp[0].pack} ({grp[0].pack_source})",
                      str(sum(len(a.tasks) for a in grp)), str(len(grp)),
                      _at_once([a.throttle for a in grp]), dep or "at once")
    console.print(t)
    for stage in (1, 2):
        r = resources(spec, stage)
        if gpu_count(r) and r.gpu_mem_gb and not r.gpu_features:
            console.print(f"[yellow]stage {stage}: gpu_mem_gb {r.gpu_mem_gb:g} is only checked against the estimate: "
                          "nothing asks Slurm for a GPU that large; name the site's GPU node features in "
                          "resources.gpu_features (feature: GB) to get a --constraint[/yellow]", highlight=False)
    if not scripts:
        return
    sweep_root = Path(spec.output_dir).resolve()
    for stage in (1, 2):
        mine = [a for a in arrays if a.stage == stage]
        if not mine:
            continue
        a = mine[-1]  # for stage 2 the one with a dependency, when there is one
        script = render_sbatch(sweep_root, sbatch_params(spec, stage, a.throttle, a.dependency()), len(a.tasks))
        console.print(f"[bold]sbatch script of a stage-{stage} array[/bold] ({len(a.tasks)} tasks):")
        console.print(script, markup=False, highlight=False, soft_wrap=True)
