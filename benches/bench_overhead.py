"""2c/2d. Per-run overhead inside a packed task: what a run costs beyond its training steps and its evaluation.

A packed task (``pipeline.run.job.RunPack``) calls ``runner.execute`` once per run with one host cache;
here the same calls run in this process, with the host already loaded (as for runs 2..K of a pack) and
the sweep's default TensorBoard tracking on:

* 2c: an origin (stage-1) LoRA run's training samples/s, counted over everything but its evaluation
  (host copy, technique attach, tokenisation, the steps, module + adapter export, tracker, shard),
  against a bare torch loop over the same batches (same seeded init, same batch order);
* 2d: a zero-shot pack (ported, scratch, sampled on the receiving host) in runs per minute, against the
  runs per minute its evaluations alone would allow (the sum of their ``eval_time_s``).
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import ROOT, Figure, Sizes, med, overhead_pct, plural


def spec_dict(sizes: Sizes, out: Path, steps: int) -> dict:
    return {
        "name": "bench-overhead", "output_dir": str(out), "models_dir": str(ROOT / "models"),
        "hosts": [{"name": "a", "model": sizes.host}, {"name": "b", "model": sizes.receiving}],
        "host_pairs": [["a", "b"]], "both_directions": False,
        "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes", "train_size": sizes.n_train,
                      "eval_size": sizes.n_eval}],
        "techniques": ["lora"], "technique_params": {"lora": {"lr": 3e-3}},
        "conditions": ["ported", "scratch", "sampled"], "regimes": ["zero-shot"], "seeds": [0],
        "origin_training": {"steps": steps, "batch_size": sizes.batch, "eval_batch_size": sizes.eval_batch,
                            "max_length": sizes.max_length},
        "further_training": {"batch_size": sizes.batch, "eval_batch_size": sizes.eval_batch,
                             "max_length": sizes.max_length},
    }


def bare_steps(env, steps: int, row: dict | None = None) -> float:
    """Samples/s of bench 1's bare torch loop over all ``steps`` of the run's batches (seed 0, as the run).

    With the run's planned ``row``: the run's own initialised model (``runner.prepare``, seeded as the run),
    so the loop computes what the run computes -- head-free, the label texts' rows too."""
    import json

    import torch

    from pipeline.run import runner

    from .bench_train import bare_loop

    model = None
    if row is not None:
        cfg = json.loads(row["config_json"])
        torch.manual_seed(cfg["seed"])
        model, _ = runner.prepare(cfg, env.task, env.hosts.model(cfg["host"]["model"], env.task))
    t0, marks = bare_loop(env, steps, model)
    return steps * env.sizes.batch / (marks[-1] - t0)


def run_split(row: dict):
    import json

    from pipeline.run import data, runner

    return data.splits(runner.dataset_of(row, json.loads(row["config_json"])))[0]


def run_task(env, row: dict):
    """The origin run's own Task (its formulation, pooling, class bias), as runner.execute makes it."""
    import json

    from pipeline.run import runner

    cfg = json.loads(row["config_json"])
    host = cfg["host"]["model"]
    return runner.make_task(cfg, runner.dataset_of(row, cfg), env.hosts.tokenizer(host), env.cfg, env.hosts.path(host))


def run(sizes: Sizes, tmp: Path, log=print) -> list[Figure]:
    import yaml

    from pipeline import plan as planmod
    from pipeline.run import runner
    from pipeline.spec import load
    from pipeline.sweep import Sweep

    from .bench_train import setup

    steps = sizes.n_train // sizes.batch  # one epoch of the run's batches
    path = tmp / "overhead.yaml"
    path.write_text(yaml.safe_dump(spec_dict(sizes, tmp / "sweep", steps)))
    spec = load(path)
    plan = planmod.build(spec)
    sweep = Sweep(Path(spec.output_dir))
    sweep.write(spec, plan)
    origin, = plan.stage1
    zero = list(plan.stage2)
    rows = sweep.plan_rows
    env = setup(sizes, tmp)  # the bare loop's host cache and data (bench 1's) ...
    env.task = run_task(env, rows[origin.run_id])  # ... and the origin run's task: head-free by default
    env.train = run_split(rows[origin.run_id])  # and its training split (the same batches)
    hosts = runner.HostCache(ROOT / "models")
    runner.quiet()

    def shard(rid: str) -> dict:
        import pyarrow.parquet as pq

        return pq.read_table(sweep.shard(rid)).to_pylist()[0]

    # warm-up (not timed): each host loaded once, as the first run of a pack does
    runner.execute(rows[origin.run_id], sweep, hosts)
    runner.execute(rows[zero[0].run_id], sweep, hosts)
    bare_steps(env, 2, rows[origin.run_id])
    pack_sps, bare_sps, zs_rpm, eval_rpm, parts = [], [], [], [], []
    for r in range(sizes.repeats):
        for what in (("pack", "bare") if r % 2 == 0 else ("bare", "pack")):
            if what == "bare":
                bare_sps.append(bare_steps(env, steps, rows[origin.run_id]))
                continue
            runner.execute(rows[origin.run_id], sweep, hosts)
            s = shard(origin.run_id)
            outside_eval = s["total_time_s"] - s["eval_time_s"]
            pack_sps.append(s["train_steps"] * sizes.batch / outside_eval)
            parts.append((s["load_time_s"], s["train_time_s"], outside_eval - s["load_time_s"] - s["train_time_s"]))
        t0 = time.perf_counter()
        for z in zero:
            runner.execute(rows[z.run_id], sweep, hosts)
        wall = time.perf_counter() - t0
        evals = sum(shard(z.run_id)["eval_time_s"] for z in zero)
        zs_rpm.append(len(zero) * 60 / wall)
        eval_rpm.append(len(zero) * 60 / evals)
        log(f"  repeat {r + 1}: origin run {pack_sps[-1]:.1f} samples/s outside evaluation (host copy + attach "
            f"{parts[-1][0]:.2f} s, steps {parts[-1][1]:.2f} s, the rest {parts[-1][2]:.2f} s), bare loop "
            f"{bare_sps[-1]:.1f}; zero-shot pack {zs_rpm[-1]:.1f} runs/min, evaluation alone {eval_rpm[-1]:.1f}")
    load_s, train_s, rest_s = (med([p[i] for p in parts]) for i in range(3))
    what = (f"{sizes.host.removeprefix('embedded:')} + LoRA, {sizes.n_train:,} training snippets, batch {sizes.batch}, "
            f"max_length {sizes.max_length}, {steps} steps (one epoch); runner.execute as a packed task calls it, "
            f"host already loaded, TensorBoard tracking on (the default)")
    f1 = Figure("2c", "per-run overhead of an origin run in a pack vs a bare loop, same batches", "samples/s",
                pack_sps, "packed run: steps ÷ (total − evaluation time)", "bare torch loop over the same batches",
                bare_sps, overhead_pct(bare_sps, pack_sps), "%",
                "bare ÷ packed samples/s − 1: extra time a sample, lower is better",
                how=(f"{what}; the packed run's time is everything but its evaluation (median: host copy + attach "
                     f"{load_s:.2f} s, training steps {train_s:.2f} s, module export + tracker + shard {rest_s:.2f} s); "
                     f"bare loop: AdamW, no scheduler, no clipping, over the run's own initialised model and the task's "
                     f"own forward and loss ({env.task.kind}"
                     f"{': the label texts encoded as extra rows of every batch, as in the run' if env.task.kind == 'similarity' else ''}"
                     f"); {plural(sizes.repeats, 'repeat')}, order alternated")).judge("<=", 10)
    f2 = Figure("2d", f"zero-shot pack of {len(zero)} runs vs its evaluations alone", "runs/min", zs_rpm,
                "zero-shot pack (ported, scratch, sampled)", "the same evaluations alone (Σ eval_time_s)", eval_rpm,
                overhead_pct(eval_rpm, zs_rpm), "%", "evaluation-only ÷ pack runs/min − 1: extra time a run, lower is "
                "better",
                how=(f"{sizes.receiving.removeprefix('embedded:')} receiving the origin run's LoRA: {len(zero)} zero-shot "
                     f"runs ({sizes.n_eval:,} eval examples each) executed back to back with one host cache, wall time "
                     f"from this process; a run's evaluation is its recorded eval_time_s (tokenisation, forward passes, "
                     f"metrics); the rest is host copy, module load and checksum, port/sample, predictions and shard; "
                     f"{plural(sizes.repeats, 'repeat')}")).judge("<=", 10)
    fixed = (load_s + rest_s) / train_s * 100 if train_s else float("nan")
    f1.note = (f"Measured directly from the run's own timers, what a packed run adds to its training steps is "
               f"{load_s + rest_s:.2f} s ({fixed:.1f} % of the steps' {train_s:.1f} s); the samples/s ratio also carries "
               f"the load of a shared machine between the two contenders.")
    for f in (f1, f2):
        if f.ok is False:
            f.note = (f"missed: {med(f.ratio):.1f} % vs {f.target}; per repeat "
                      f"{', '.join(f'{x:.1f}' for x in f.ratio)} %. " + f.note).strip()
    return [f1, f2]
