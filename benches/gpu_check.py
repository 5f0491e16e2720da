"""One command for a GPU node (``make gpu-check``): the pipeline at real shapes, in bf16, against HF Trainer.

For an encoder (the shipped all-MiniLM-L6-v2: BERT 6 x 384, head-free similarity task), a T5-v1.1-base shape
(random weights: d_model 768, d_ff 2048, 12 + 12 layers, 12 heads, gated-gelu, vocab 32128; text-to-text) and a
Qwen2.5-0.5B shape (random weights from ``pipeline.shapes.HUB_CONFIGS``; causal-lm), and for each paper
technique (lora, bottleneck, compacter, prefix):

* the run's model is built by the pipeline's own code (``runner.HostCache`` -> ``runner.prepare`` ->
  ``train.set_frozen_dtype``), trained in bf16 through ``train.train`` and scored by ``train.evaluate``;
* the same batches (the pipeline's batch sequence, collated by the Task) go through ``transformers.Trainer``
  (bf16, AdamW, linear schedule, the same clipping; ``compute_loss`` = the Task's loss): samples/s of both over
  the steps after a warm-up, from per-step callbacks;
* peak memory: ``torch.cuda.max_memory_allocated`` of the pipeline's training (reset before it); on CPU the
  process's peak RSS (every earlier run of the process included);
* MFU = FLOPs / time / peak FLOPs, where FLOPs over the window = (FLOPs of one training step, forward +
  backward, counted by ``torch.utils.flop_counter``, per input token) x the window's input tokens (padded,
  every row the model sees); ``mfu_6nt`` uses the planning convention 6 x N x T (N = every host parameter,
  T = input tokens, as ``pipeline.cost.run_flops``), which also counts the frozen weights' gradients a PEFT
  step never computes.  Peak bf16 FLOPs: ``--peak-tflops``, else 989 for an H100/H200 and 312 for an A100;
  no MFU on CPU;
* the trained module is saved (``port.save_module``) and ported into a second copy of the host through
  ``runner.prepare`` (stage 2, condition ported): every ported tensor must be on the run's device, fp32
  (master weights) and bit-identical to the saved one; every frozen host weight on the device in
  ``--frozen-dtype``.

Inputs: real texts (the embedded Rotten Tomatoes snippets).  Tokenizers: MiniLM's own; the random-weight hosts
use the tiny hosts' tokenizers (``tiny-t5-a``: 2,000 tokens, ``tiny-qwen2-a``: 1,000), whose ids all fall in
the real vocabularies -- text costs as many tokens as these tokenizers make of it.

``--tiny``: the same at the tiny hosts (``tiny-bert-a``, ``tiny-t5-a``, ``tiny-qwen2-a``) on CPU, in seconds
(``tests/test_gpu_check.py``).  Without CUDA and without ``--tiny`` it exits 2: CPU figures are not GPU ones.
Exit 1 with one line naming what failed when any check fails.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TECHNIQUES = ("lora", "bottleneck", "compacter", "prefix")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks (SXM)
SEED = 0
TINY_PARAMS = {"compacter": {"reduction_factor": 8}}  # a 64-wide host: the default 32 leaves 2, not a multiple of phm_dim 4


@dataclass(frozen=True)
class Host:
    name: str
    kind: str  # run kind: similarity | text-to-text | causal-lm
    template: str
    tokenizer: str  # embedded host whose tokenizer the run uses
    build: str | None = None  # None: use the tokenizer's host as it is; else a shape built with random weights


REAL = (Host("minilm-l6", "similarity", "{text}", "embedded:all-minilm-l6-v2"),
        Host("t5-v1.1-base", "text-to-text", "sentiment: {text}", "embedded:tiny-t5-a", "t5-base"),
        Host("qwen2.5-0.5b", "causal-lm", "Review: {text}\nSentiment:", "embedded:tiny-qwen2-a", "qwen2-0.5b"))
TINY = (Host("tiny-bert-a", "similarity", "{text}", "embedded:tiny-bert-a"),
        Host("tiny-t5-a", "text-to-text", "sentiment: {text}", "embedded:tiny-t5-a"),
        Host("tiny-qwen2-a", "causal-lm", "Review: {text}\nSentiment:", "embedded:tiny-qwen2-a"))


def random_host(shape: str, tokenizer_path: str, out: Path) -> str:
    """A host folder at a real shape with random (seeded) weights and the given tokenizer; nothing from the hub."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

    from pipeline.shapes import HUB_CONFIGS

    torch.manual_seed(SEED)
    if shape == "t5-base":  # google/t5-v1_1-base's config.json
        cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                       num_heads=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        model = T5ForConditionalGeneration(cfg)
    else:
        q = {k: v for k, v in HUB_CONFIGS["Qwen/Qwen2.5-0.5B"].items() if k != "model_type"}
        tok = AutoTokenizer.from_pretrained(tokenizer_path)
        model = Qwen2ForCausalLM(Qwen2Config(**q, max_position_embeddings=32768, rope_theta=1_000_000.0,
                                             rms_norm_eps=1e-6, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    folder = out / shape
    model.to(torch.bfloat16).save_pretrained(folder)  # bf16 on disk; HostCache loads every host in fp32
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------- the dtype / device check
def placement_problems(model, device, frozen_dtype, state=None) -> list[str]:
    """What is wrong with where the model's tensors are: trainable (module) parameters must be fp32 on ``device``,
    frozen floating-point host weights ``frozen_dtype`` on ``device``; with ``state`` (a saved module), every
    ported tensor must also be bit-identical to it.  [] when all is right."""
    import torch

    dev = torch.device(device)
    bad: list[str] = []
    params = dict(model.named_parameters())
    for n, p in params.items():
        want = torch.float32 if p.requires_grad else frozen_dtype
        if p.device.type != dev.type:
            bad.append(f"{n} on {p.device}, expected {dev.type}")
        elif p.is_floating_point() and p.dtype != want:
            bad.append(f"{n} is {p.dtype}, expected {want} ({'module' if p.requires_grad else 'frozen host'} weight)")
    for n, t in (state or {}).items():
        p = params.get(n)
        if p is None:
            bad.append(f"ported tensor {n} missing from the receiving model")
        elif not p.requires_grad:
            bad.append(f"ported tensor {n} is frozen in the receiving model")
        elif not torch.equal(p.detach().cpu(), t):
            bad.append(f"ported tensor {n} differs from the saved module")
    return bad


# ---------------------------------------------------------------- one host x technique
def _reset_peak(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _sequence(task, ids, cfg, steps: int) -> list[list[int]]:
    """The pipeline's batch sequence for ``steps`` steps (one process: train.batches, epoch after epoch)."""
    from pipeline.run.train import batches

    lengths = [len(x) for x in ids]
    seq, epoch = [], 0
    while len(seq) < steps:
        seq += batches(lengths, cfg.batch_size, SEED, epoch)
        epoch += 1
    return seq[:steps]


def _flops_per_token(model, task, batch, acc) -> float:
    """Forward + backward FLOPs of one training step on ``batch`` (torch's counter), per input token."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, acc.autocast():
        task.loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["input_ids"].numel()


def _trainer_rate(env, model, seq, ids, labels, lr) -> float:
    """samples/s of transformers.Trainer over the same batches, in the same order, same window."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    task, cfg, total = env["task"], env["cfg"], len(seq)
    data = [task.collate([ids[i] for i in b], [labels[i] for i in b]) for b in seq]
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    class TaskTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return task.loss(model, inputs)

        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(data)

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="trainer-", dir=env["tmp"]), per_device_train_batch_size=1,
        max_steps=total, learning_rate=lr, weight_decay=cfg.weight_decay, lr_scheduler_type="linear",
        warmup_steps=math.ceil(cfg.warmup_ratio * total), max_grad_norm=cfg.max_grad_norm or 0.0, bf16=True,
        use_cpu=not env["cuda"], seed=SEED, data_seed=SEED, logging_strategy="no", save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False, dataloader_pin_memory=env["cuda"])
    trainer = TaskTrainer(model=model, args=args, train_dataset=data, data_collator=lambda xs: xs[0],
                          callbacks=[Marks()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return _window(marks, env)


def _window(marks: list[float], env) -> float:
    w, n = env["warmup"], env["steps"]
    return n * env["cfg"].batch_size / (marks[w + n - 1] - marks[w - 1])


def check_one(env, host: Host, path: str, technique: str) -> dict:
    import torch

    from pipeline.run import port, runner
    from pipeline.run import techniques as RT
    from pipeline.run.train import DTYPES, accelerator, evaluate, peak_memory_mb, release, set_frozen_dtype, to_device, train

    task, cfg, cuda, hosts = env["task"], env["cfg"], env["cuda"], env["hosts"]
    device = "cuda" if cuda else "cpu"
    frozen = DTYPES[cfg.frozen_dtype]
    total = env["warmup"] + env["steps"]
    params: dict = env["params"].get(technique, {})
    lr = 1e-3
    tr_split, ev_split = env["train"], env["eval"]

    def fresh(stage: int = 1, folder=None):
        torch.manual_seed(SEED)
        run_cfg = {"stage": stage, "seed": SEED, "technique": technique, "params": params,
                   "condition": "ported" if stage == 2 else None}
        model, checks = runner.prepare(run_cfg, task, hosts.model(path, task), folder)
        set_frozen_dtype(model, cfg.frozen_dtype)
        return model, checks

    out: dict = {"host": host.name, "technique": technique}
    # --- the pipeline: train in bf16, count FLOPs, evaluate
    model, _ = fresh()
    acc = accelerator(env["dev"])
    model = model.to(acc.device)
    marks: list[float] = []
    _reset_peak(cuda)
    torch.manual_seed(SEED)
    got = train(model, task, tr_split.texts, tr_split.labels, steps=total, lr=lr, cfg=cfg, seed=SEED, acc=acc,
                on_step=lambda _s: marks.append(time.perf_counter()))
    out["peak_mb"] = peak_memory_mb(env["dev"])
    out["pipeline_sps"] = _window(marks, env)
    out["train_loss"] = got["train_loss"]
    model = acc.unwrap_model(model)
    seq = _sequence(task, env["ids"], cfg, total)
    window = seq[env["warmup"]:]
    tokens = sum(task.collate([env["ids"][i] for i in b], [tr_split.labels[i] for i in b])["input_ids"].numel()
                 for b in window)
    first = to_device(task.collate([env["ids"][i] for i in window[0]], [tr_split.labels[i] for i in window[0]]),
                      acc.device, task)
    fpt = _flops_per_token(model, task, first, acc)
    t_window = env["steps"] * cfg.batch_size / out["pipeline_sps"]
    n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    out["tflops"] = fpt * tokens / t_window / 1e12
    out["tflops_6nt"] = 6 * n_params * tokens / t_window / 1e12
    problems = [f"after training: {p}" for p in placement_problems(model, device, frozen)]
    ev, _ = evaluate(model, task, ev_split.texts, ev_split.labels, cfg=cfg, acc=acc)
    out["accuracy"], out["eval_sps"] = ev["accuracy"], ev["eval_samples_per_s"]
    # --- port the module into a second copy of the host, as a stage-2 run does
    state = RT.module_state(model)
    folder = Path(tempfile.mkdtemp(prefix="module-", dir=env["tmp"]))
    port.save_module(state, folder, {"run_id": f"{host.name}-{technique}", "technique": technique})
    del model, acc
    release()
    receiver, checks = fresh(2, folder)
    receiver = receiver.to(device)
    ported = {n: t for n, t in state.items() if n in dict(receiver.named_parameters())}
    problems += [f"ported: {p}" for p in placement_problems(receiver, device, frozen, ported)]
    if not checks.get("port_exact") or checks.get("ported_tensors") != len(state):
        problems.append(f"port: {checks.get('ported_tensors')} of {len(state)} tensors, exact={checks.get('port_exact')}")
    out["ported"] = len(state)
    del receiver
    release()
    # --- Trainer over the same batches
    model, _ = fresh()
    out["trainer_sps"] = _trainer_rate(env, model, seq, env["ids"], tr_split.labels, lr)
    del model
    release()
    out["problems"] = problems
    return out


# ---------------------------------------------------------------- main
def _peak(args, cuda: bool) -> float | None:
    import torch

    if args.peak_tflops:
        return args.peak_tflops
    if not cuda:
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def line(r: dict, peak: float | None) -> str:
    mfu = (f"MFU {100 * r['tflops'] / peak:.1f} % (6NT {100 * r['tflops_6nt'] / peak:.1f} %)" if peak else
           f"MFU - ({r['tflops']:.3g} TFLOP/s counted, no peak)")
    status = "ok" if not r["problems"] else f"FAILED ({r['problems'][0]}{' ...' if len(r['problems']) > 1 else ''})"
    return (f"{r['host']:14s} {r['technique']:10s} pipeline {r['pipeline_sps']:8.1f} samples/s | Trainer "
            f"{r['trainer_sps']:8.1f} samples/s | x{r['pipeline_sps'] / r['trainer_sps']:.2f} | peak "
            f"{r['peak_mb']:,.0f} MiB | {mfu} | eval acc {r['accuracy']:.3f} | ported {r['ported']} tensors: {status}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny hosts on CPU (seconds): the test suite's check")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 5; tiny 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32; tiny 4")
    p.add_argument("--max-length", type=int, default=None, help="default 128; tiny 32")
    p.add_argument("--frozen-dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak bf16 TFLOP/s (default: 989 H100/H200, 312 A100; none on CPU)")
    p.add_argument("--hosts", default=None, help="comma-separated host names to check (default all)")
    p.add_argument("--techniques", default=",".join(TECHNIQUES))
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("gpu-check is for a GPU node: no CUDA device here (use --tiny for the CPU check at tiny shapes)")
        return 2
    from pipeline.hosts import resolve_host
    from pipeline.run import data
    from pipeline.run.runner import HostCache, quiet
    from pipeline.run.tasks import Task
    from pipeline.run.train import Device
    from pipeline.spec import Dataset, Training

    quiet()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations, once per host
    tiny = args.tiny
    warmup = args.warmup or (2 if tiny else 5)
    steps = args.steps or (3 if tiny else 20)
    bs = args.batch_size or (4 if tiny else 32)
    cfg = Training(steps=warmup + steps, batch_size=bs, eval_batch_size=2 * bs, max_length=args.max_length or
                   (32 if tiny else 128), precision="bf16", frozen_dtype=args.frozen_dtype)
    dev = Device("cuda" if cuda else "cpu", "bf16")
    hosts = [h for h in (TINY if tiny else REAL) if not args.hosts or h.name in args.hosts.split(",")]
    techniques = [t for t in args.techniques.split(",") if t]
    peak = _peak(args, cuda)
    models = ROOT / "models"
    ds = Dataset(name="rt", source="embedded:rotten_tomatoes", train_size=bs * (warmup + steps),
                 eval_size=4 * bs if tiny else 256)
    tr, ev = data.load(ds)
    print(f"gpu-check on {torch.cuda.get_device_name() if cuda else 'CPU (--tiny)'}: bf16 autocast, frozen "
          f"{args.frozen_dtype}, batch {bs}, max_length {cfg.max_length}, {warmup} + {steps} steps"
          + (f", peak {peak:g} TFLOP/s" if peak else ""), flush=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cache = HostCache(models)
        for host in hosts:
            tok_path = resolve_host(host.tokenizer, models)
            path = random_host(host.build, tok_path, Path(tmp)) if host.build else tok_path
            task = Task(host.kind, cache.tokenizer(path), ds.label_words, cfg.max_length, host.template,
                        "mean" if host.kind == "similarity" else "cls")
            env = {"task": task, "cfg": cfg, "cuda": cuda, "dev": dev, "hosts": cache, "tmp": tmp, "warmup": warmup,
                   "steps": steps, "params": TINY_PARAMS if tiny else {}, "train": tr, "eval": ev, "ids": task.encode(tr.texts)}
            for t in techniques:
                try:
                    r = check_one(env, host, path, t)
                except Exception as e:  # one line per failure; the others still run
                    failures.append(f"{host.name}/{t}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                    print(f"{host.name:14s} {t:10s} FAILED: {failures[-1]}", flush=True)
                    continue
                print(line(r, peak), flush=True)
                failures += [f"{host.name}/{t}: {p}" for p in r["problems"][:1]]
            cache._models.clear()
    if failures:
        print(f"gpu-check FAILED: {len(failures)} of {len(hosts) * len(techniques)} checks; first: {failures[0]}")
        return 1
    print(f"gpu-check passed: {len(hosts)} hosts x {len(techniques)} techniques")
    return 0


if __name__ == "__main__":
    sys.exit(main())
