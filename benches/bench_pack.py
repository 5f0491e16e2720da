"""2. Packing: K runs in one process (one interpreter start, one torch import, one host load) vs one
process per run, through real process starts (``benches/child.py pack``, the RunPack a Slurm array
task runs).

The work of a run, r, is the median ``total_time_s`` the shards record for runs 2..K of the pack
(host already loaded); a process's start-up is what its wall time adds on top of its runs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pyarrow.parquet as pq

from .common import ROOT, Figure, Sizes, med, plural, run_child


def spec_dict(sizes: Sizes, seeds: int, out: Path) -> dict:
    return {
        "name": "bench-pack", "output_dir": str(out), "models_dir": str(ROOT / "models"),
        "hosts": [{"name": "tiny-a", "model": "embedded:tiny-bert-a"}, {"name": "tiny-b", "model": "embedded:tiny-bert-b"}],
        "host_pairs": [["tiny-a", "tiny-b"]], "both_directions": False,
        "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes", "train_size": 256, "eval_size": 64}],
        "techniques": ["lora"], "conditions": ["scratch"], "regimes": ["zero-shot"], "seeds": list(range(seeds)),
        "origin_training": {"steps": sizes.pack_steps, "batch_size": 16, "max_length": 32},
        "further_training": {"batch_size": 16, "max_length": 32},
    }


def run(sizes: Sizes, tmp: Path, log=print) -> list[Figure]:
    import yaml

    from pipeline import plan as planmod
    from pipeline.hosts import resolve_host
    from pipeline.spec import load
    from pipeline.sweep import Sweep

    k, reps = sizes.pack_k, sizes.repeats
    path = tmp / "pack.yaml"
    path.write_text(yaml.safe_dump(spec_dict(sizes, (k + 1) * reps, tmp / "pack-sweep")))
    spec = load(path)
    plan = planmod.build(spec)
    for h in spec.hosts:  # built before timing (a no-op when models/ has them)
        resolve_host(h.model, spec.models_dir)
    ids = [r.run_id for r in plan.stage1]  # stage-1 runs need nothing; all alike but the seed
    per_run_pack, per_run_single, work, startup_pack, startup_single = [], [], [], [], []
    for rep in range(reps):
        root = tmp / f"pack-sweep-{rep}"
        sweep = Sweep(root)
        sweep.write(spec, plan)
        mine = ids[rep * (k + 1): (rep + 1) * (k + 1)]
        packed, single = mine[:k], mine[k]
        walls = {}
        for what in (("pack", "single") if rep % 2 == 0 else ("single", "pack")):
            runs = packed if what == "pack" else [single]
            wall, out = run_child(["pack", str(root), ",".join(runs)])
            if json.loads(out.strip().splitlines()[-1])["done"] != len(runs):
                raise RuntimeError(f"packing bench: {what} did not finish its runs")
            walls[what] = wall
        times = [pq.read_table(sweep.shard(r), columns=["total_time_s"]).column(0)[0].as_py() for r in packed]
        r = statistics.median(times[1:]) if len(times) > 1 else times[0]
        work.append(r)
        per_run_pack.append(walls["pack"] / k)
        per_run_single.append(walls["single"])
        startup_pack.append((walls["pack"] / k - r) / r * 100)
        startup_single.append((walls["single"] - r) / r * 100)
        log(f"  repeat {rep + 1}: pack of {k} {walls['pack']:.1f} s, one run alone {walls['single']:.1f} s, "
            f"a run's work {r:.2f} s")
    s_proc = med(per_run_single) - med(work)  # start-up of one process (imports, host and data load)
    need = s_proc / (0.05 * med(work))
    try:
        from pipeline.launch.layout import MIN_TASK_S, TARGET_TASK_S

        launcher = (f"; the Slurm launcher packs tasks of {MIN_TASK_S}–{TARGET_TASK_S} s of work, where this start-up "
                    f"is {s_proc / TARGET_TASK_S * 100:.0f}–{s_proc / MIN_TASK_S * 100:.0f} % of a task")
    except ImportError:  # pragma: no cover
        launcher = ""
    how = (f"{k} tiny runs (tiny-bert-a + LoRA, {sizes.pack_steps} steps of batch 16, 64 eval examples, shard and "
           f"module written) in one `python benches/child.py pack` process vs one run in its own process; wall time "
           f"of each process from the parent; a run's work r = median total_time_s of runs 2..{k} of the pack; "
           f"{plural(reps, 'repeat')}, pack/single order alternated")
    f1 = Figure("2a", f"wall time per run, {k} runs packed vs one process per run", "s/run", per_run_pack,
                f"RunPack of {k}", "one process per run", per_run_single,
                [b / a for a, b in zip(per_run_pack, per_run_single, strict=True)], "x",
                "one process per run ÷ packed, seconds per run, higher is better", how=how)
    f2 = Figure("2b", "amortised start-up per run, % of a run's work", "%", startup_pack, f"RunPack of {k}",
                "one process per run", startup_single,
                [b / a if a > 0 else float("nan") for a, b in zip(startup_pack, startup_single, strict=True)], "x",
                "one process per run ÷ packed start-up share, higher is better", how=how).judge("<", 5, on="value")
    if not f2.ok:
        f2.note = (f"missed: {med(startup_pack):.0f} % vs < 5 %. A process starts in ~{s_proc:.0f} s here (torch, "
                   f"transformers, peft imports, host and data load on a loaded 2-core machine) and a tiny run works "
                   f"~{med(work):.2f} s, so < 5 % needs ≥ {need:.0f} such runs (≥ {s_proc * 20:.0f} s of work) per "
                   f"process{launcher}. Packing divides the start-up by K; it cannot make it vanish for runs this short.")
    return [f1, f2]
