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
* step times are taken after ``torch.cuda.synchronize()`` at the end of every timed step (pipeline and
  Trainer alike): without it a mark records when the step was *queued*, not when it ran;
* MFU = FLOPs / time / peak FLOPs, where the FLOPs of the window are counted (``torch.utils.flop_counter``,
  forward + backward) on every timed batch, not extrapolated from one; ``mfu_6nt`` uses the planning
  convention 6 x N x T (N = every host parameter, T = input tokens, as ``pipeline.cost.run_flops``), which
  also counts the frozen weights' gradients a PEFT step never computes.  Peak dense bf16 FLOPs: ``--peak-tflops``,
  else the GPU model's known figure (:data:`PEAKS`: H100 SXM 989, H100 NVL 835, H100 PCIe 756, H200 989, A100
  312, ...; the model is matched whole, never by a substring that makes a PCIe card an SXM one), printed with
  its source; an unknown model gets no MFU; no MFU on CPU;
* both precision paths of the study: ``sweeps/paper.yaml``'s fp32 host weights under bf16 autocast (and fp32
  scoring) for the encoder and T5 hosts, frozen bf16 host weights for the decoder (``sweeps/llm.yaml``);
  ``--frozen-dtype`` sets one for every host;
* one pack of several runs (stage 1, then ported and scratch stage-2 runs) on the first host goes through the
  pipeline's job (``job.RunPack`` -> ``runner.execute``: device resolution, a zero-shot run, a module loaded
  from stage 1), and each run's peak (allocated and reserved) is printed from its shard;
* the trained module is saved (``port.save_module``) and ported into a second copy of the host through
  ``runner.prepare`` (stage 2, condition ported): every ported tensor must be on the run's device, fp32
  (master weights) and bit-identical to the saved one; every frozen host weight on the device in
  ``--frozen-dtype``.

Inputs: real texts (the embedded Rotten Tomatoes snippets).  Tokenizers: MiniLM's own; the random-weight hosts
use the tiny hosts' tokenizers (``tiny-t5-a``: 2,000 tokens, ``tiny-qwen2-a``: 1,000), whose ids all fall in
the real vocabularies -- text costs as many tokens as these tokenizers make of it.

First, one line on the node (:func:`node_check`): the driver and the CUDA it supports, the torch build and the
CUDA it was made for, whether CUDA is usable, whether torch has kernels for the GPU's architecture, whether bf16
is native -- "fits" or what to change (``make setup TORCH_CUDA=...``).  ``--node`` prints only that line (exit 0
when the node fits, 1 when not): run it through ``srun`` on a GPU node before ``make sweep``.

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
# Dense bf16 tensor-core peaks (TFLOP/s, NVIDIA data sheets) by GPU model, matched against the device name in order
# (the first match wins: the PCIe and NVL variants before the SXM one).  Names as torch reports them, e.g.
# "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA A100-SXM4-80GB".
PEAKS: tuple[tuple[str, float, str], ...] = (
    (r"\bGH200\b", 989.0, "GH200"),
    (r"\bH200\b.*\bNVL\b", 835.0, "H200 NVL"),
    (r"\bH200\b", 989.0, "H200 SXM"),
    (r"\bH100\b.*\bNVL\b", 835.0, "H100 NVL"),
    (r"\bH100\b.*\bPCIe\b", 756.0, "H100 PCIe"),
    (r"\bH100\b.*\b(HBM3|SXM\d?)\b", 989.0, "H100 SXM"),
    (r"\bH800\b.*\bPCIe\b", 756.0, "H800 PCIe"),
    (r"\bA100\b", 312.0, "A100"),
    (r"\bA800\b", 312.0, "A800"),
    (r"\bL40S\b", 362.0, "L40S"),
    (r"\bA40\b", 150.0, "A40"),
    (r"\bA30\b", 165.0, "A30"),
    (r"\bA10\b", 125.0, "A10"),
    (r"\bL4\b", 121.0, "L4"),
)


def known_peak(device_name: str) -> tuple[float, str] | None:
    """(dense bf16 TFLOP/s, model) of a GPU by its name, or None when the model is not known (a bare "H100"
    without its form factor included: SXM and PCIe differ by 30 %)."""
    import re

    for pattern, tflops, model in PEAKS:
        if re.search(pattern, device_name, re.I):
            return tflops, model
    return None
SEED = 0
TINY_PARAMS = {"compacter": {"reduction_factor": 8}}  # a 64-wide host: the default 32 leaves 2, not a multiple of phm_dim 4


@dataclass(frozen=True)
class Host:
    name: str
    kind: str  # run kind: similarity | text-to-text | causal-lm
    template: str
    tokenizer: str  # embedded host whose tokenizer the run uses
    build: str | None = None  # None: use the tokenizer's host as it is; else a shape built with random weights
    # the study's precision path for this kind of host: fp32 weights under bf16 autocast (sweeps/paper.yaml) or
    # frozen bf16 weights (sweeps/llm.yaml's decoders)
    frozen: str = "fp32"


REAL = (Host("minilm-l6", "similarity", "{text}", "embedded:all-minilm-l6-v2"),
        Host("t5-v1.1-base", "text-to-text", "sentiment: {text}", "embedded:tiny-t5-a", "t5-base"),
        Host("qwen2.5-0.5b", "causal-lm", "Review: {text}\nSentiment:", "embedded:tiny-qwen2-a", "qwen2-0.5b", "bf16"))
TINY = (Host("tiny-bert-a", "similarity", "{text}", "embedded:tiny-bert-a"),
        Host("tiny-t5-a", "text-to-text", "sentiment: {text}", "embedded:tiny-t5-a"),
        Host("tiny-qwen2-a", "causal-lm", "Review: {text}\nSentiment:", "embedded:tiny-qwen2-a", frozen="bf16"))


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


# ---------------------------------------------------------------- the node: driver, torch build, bf16
def driver_cuda() -> tuple[int, int] | None:
    """The CUDA version the installed NVIDIA driver supports (``cuDriverGetVersion`` of libcuda, read without
    torch: it answers where torch's own CUDA does not), or None when there is no driver."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(v)) != 0 or not v.value:
        return None
    return v.value // 1000, v.value % 1000 // 10


def _ver(v: tuple[int, int] | None) -> str:
    return f"{v[0]}.{v[1]}" if v else "none"


def node_check(driver=driver_cuda) -> tuple[bool, str]:
    """(fits, one line): does this node's driver run this torch build, has the build kernels for the GPU, is bf16
    native?  What to change when not (``make setup TORCH_CUDA=...``: the build; a constraint: the GPU)."""
    import torch

    build = tuple(int(x) for x in torch.version.cuda.split(".")[:2]) if torch.version.cuda else None
    drv = driver()
    head = f"node check: driver CUDA {_ver(drv)}, torch {torch.__version__} (CUDA {_ver(build)})"
    if build is None:
        return False, f"{head}: a CPU build of torch: run `make setup TORCH_CUDA=cu{drv[0]}{drv[1]}` (or the newest " \
                      "build your driver supports)" if drv else f"{head}: a CPU build of torch and no NVIDIA driver"
    if drv is None:
        return False, f"{head}: no NVIDIA driver here (libcuda not found): run this on a GPU node (srun --gpus=1 ...)"
    if not torch.cuda.is_available():
        why = ("the driver is older than the build's CUDA major version" if drv[0] < build[0] else
               "no GPU visible (CUDA_VISIBLE_DEVICES, or the job asked for none)")
        return False, (f"{head}: CUDA not usable ({why}): pick a build the driver supports with "
                       f"`make setup TORCH_CUDA=cu{min(drv, build)[0]}{min(drv, build)[1]}`" if drv < build else
                       f"{head}: CUDA not usable ({why})")
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    archs = torch.cuda.get_arch_list()
    kernels = f"sm_{major}{minor}" in archs or any(a.startswith(f"sm_{major}") and int(a[3 + len(str(major)):] or 0)
                                                   <= minor for a in archs if a.startswith("sm_"))
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    gpu = f"{name} (sm_{major}{minor})"
    if not kernels:
        return False, (f"{head}, {gpu}: this torch build has no kernels for sm_{major}{minor} (it has "
                       f"{', '.join(archs)}): pick a newer build (`make setup TORCH_CUDA=...`)")
    if not bf16:
        return False, (f"{head}, {gpu}: no native bf16 (needs sm_80+): plan its runs with precision: fp32, or ask "
                       "for an Ampere or newer GPU (resources gpu_features / constraint)")
    return True, f"{head}, {gpu}, native bf16: fits"


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


def _mark(marks: list[float], cuda: bool) -> None:
    """The end of a timed step: wait for the GPU to finish what was queued, then take the time."""
    if cuda:
        import torch

        torch.cuda.synchronize()
    marks.append(time.perf_counter())


def _step_flops(model, task, batch, acc) -> float:
    """Forward + backward FLOPs of one training step on ``batch`` (torch's counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, acc.autocast():
        task.loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _trainer_rate(env, model, seq, ids, labels, lr) -> float:
    """samples/s of transformers.Trainer over the same batches, in the same order, same window."""
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    task, cfg, total = env["task"], env["cfg"], len(seq)
    data = [task.collate([ids[i] for i in b], [labels[i] for i in b]) for b in seq]
    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            _mark(marks, env["cuda"])

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
                on_step=lambda _s: _mark(marks, cuda))
    out["peak_mb"] = peak_memory_mb(env["dev"])
    out["pipeline_sps"] = _window(marks, env)
    out["train_loss"] = got["train_loss"]
    model = acc.unwrap_model(model)
    seq = _sequence(task, env["ids"], cfg, total)
    window = seq[env["warmup"]:]
    batches = [task.collate([env["ids"][i] for i in b], [tr_split.labels[i] for i in b]) for b in window]
    tokens = sum(b["input_ids"].numel() for b in batches)
    flops = sum(_step_flops(model, task, to_device(b, acc.device, task), acc) for b in batches)  # every timed batch
    t_window = env["steps"] * cfg.batch_size / out["pipeline_sps"]
    n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    out["tflops"] = flops / t_window / 1e12
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
def _peak(args, cuda: bool) -> tuple[float | None, str]:
    """(peak dense bf16 TFLOP/s or None, where it comes from) for the MFU column."""
    import torch

    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if not cuda:
        return None, "CPU: no MFU"
    name = torch.cuda.get_device_name()
    got = known_peak(name)
    if got is None:
        return None, f"{name} is not a GPU model with a known peak: no MFU (pass --peak-tflops)"
    return got[0], f"the {got[1]}'s data-sheet figure"


def line(r: dict, peak: float | None) -> str:
    mfu = (f"MFU {100 * r['tflops'] / peak:.1f} % (6NT {100 * r['tflops_6nt'] / peak:.1f} %)" if peak else
           f"MFU - ({r['tflops']:.3g} TFLOP/s counted, no peak)")
    status = "ok" if not r["problems"] else f"FAILED ({r['problems'][0]}{' ...' if len(r['problems']) > 1 else ''})"
    return (f"{r['host']:14s} {r['technique']:10s} pipeline {r['pipeline_sps']:8.1f} samples/s | Trainer "
            f"{r['trainer_sps']:8.1f} samples/s | x{r['pipeline_sps'] / r['trainer_sps']:.2f} | peak "
            f"{r['peak_mb']:,.0f} MiB | {mfu} | eval acc {r['accuracy']:.3f} | ported {r['ported']} tensors: {status}")


# ---------------------------------------------------------------- one pack through the pipeline's job
def pack_check(host: Host, path: str, frozen: str, cuda: bool, bs: int, max_length: int, steps: int,
               tmp: str) -> tuple[list[str], list[str]]:
    """One pack of five runs on ``host`` through ``job.RunPack`` -> ``runner.execute``, as an array task runs
    them: stage-1 LoRA, then on the same host ported and scratch, each at zero-shot and trained further.
    Returns (one line per run from its shard: precision, device, peak allocated / reserved, time; problems)."""
    import pyarrow.parquet as pq
    import yaml

    from pipeline import plan as planmod
    from pipeline.run import job
    from pipeline.spec import load
    from pipeline.sweep import Sweep

    kind = {"similarity": "classification"}.get(host.kind, host.kind)
    training = {"steps": steps, "batch_size": bs, "max_length": max_length, "precision": "bf16",
                "frozen_dtype": frozen}
    gpu = {"gpus": 1} if cuda else {"gpus": 0}
    d = {"name": "gpu-check-pack", "output_dir": f"{tmp}/pack-{host.name}", "models_dir": str(ROOT / "models"),
         "hosts": [{"name": "a", "model": path, "task": kind}, {"name": "b", "model": path, "task": kind}],
         "host_pairs": [["a", "b"]], "both_directions": False,
         "datasets": [{"name": "rt", "source": "embedded:rotten_tomatoes", "template": host.template,
                       "train_size": bs * steps, "eval_size": 2 * bs}],
         "techniques": ["lora"], "conditions": ["ported", "scratch"], "regimes": ["zero-shot", max(2, steps // 2)],
         "seeds": [SEED], "origin_training": training, "further_training": {k: v for k, v in training.items()
                                                                          if k != "steps"},
         "resources": {"stage1": gpu, "stage2": gpu}, "tracking": []}
    spec_path = Path(tmp) / f"pack-{host.name}.yaml"
    spec_path.write_text(yaml.safe_dump(d))
    spec = load(spec_path)
    plan = planmod.build(spec)
    sweep = Sweep.for_spec(spec)
    sweep.write(spec, plan)
    ids = [r.run_id for r in plan.stage1] + [r.run_id for r in plan.stage2]
    problems: list[str] = []
    try:
        job.RunPack(str(sweep.root), ids)()
    except Exception as e:  # noqa: BLE001 - the pack failed some run: its error file says which
        problems.append(f"pack: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    lines = []
    for r in plan.stage1 + plan.stage2:
        shard = sweep.shard(r.run_id)
        regime = r.key.get("regime")
        what = (f"stage 1 {r.key['technique']} origin" if r.stage == 1 else
                f"stage 2 {r.key.get('condition')} {'zero-shot' if not regime else f'+{regime} steps'}")
        if not shard.exists():
            err = sweep.error(r.run_id)
            problems.append(f"pack run {what}: " + (err.read_text().splitlines()[0] if err.exists() else "no shard"))
            lines.append(f"  pack {host.name:14s} {what:28s} FAILED")
            continue
        row = pq.read_table(shard).to_pylist()[0]
        want = "cuda" if cuda else "cpu"
        if row["device_kind"] != want or row["precision"] != "bf16":
            problems.append(f"pack run {what}: ran on {row['device_kind']} in {row['precision']}, planned {want} bf16")
        reserved = row.get("peak_reserved_mb")
        lines.append(f"  pack {host.name:14s} {what:28s} {row['precision']} on {row['device_kind']}, peak "
                     f"{row['peak_mem_mb']:,.0f} MiB allocated"
                     + (f" / {reserved:,.0f} MiB reserved" if reserved is not None else " (process RSS: CPU)")
                     + f", acc {row['accuracy']:.3f}, {row['total_time_s']:.1f} s")
    return lines, problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny hosts on CPU (seconds): the test suite's check")
    p.add_argument("--node", action="store_true", help="only the node line: driver, torch build, bf16 (exit 1: no fit)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 20; tiny 3)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 5; tiny 2)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32; tiny 4")
    p.add_argument("--max-length", type=int, default=None, help="default 128; tiny 32")
    p.add_argument("--frozen-dtype", choices=("bf16", "fp32"), default=None,
                   help="frozen host weights of every host (default: each host's study path: fp32 weights + "
                        "autocast for the encoder and T5, bf16 for the decoder)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's peak dense bf16 TFLOP/s (default: the GPU model's known figure; none on CPU)")
    p.add_argument("--hosts", default=None, help="comma-separated host names to check (default all)")
    p.add_argument("--techniques", default=",".join(TECHNIQUES))
    p.add_argument("--no-pack", action="store_true", help="skip the pack through runner.execute")
    args = p.parse_args(argv)

    import torch

    fits, node = node_check()
    print(node, flush=True)
    if args.node:
        return 0 if fits else 1
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
    max_length = args.max_length or (32 if tiny else 128)
    dev = Device("cuda" if cuda else "cpu", "bf16")
    hosts = [h for h in (TINY if tiny else REAL) if not args.hosts or h.name in args.hosts.split(",")]
    techniques = [t for t in args.techniques.split(",") if t]
    peak, peak_source = _peak(args, cuda)
    models = ROOT / "models"
    ds = Dataset(name="rt", source="embedded:rotten_tomatoes", train_size=bs * (warmup + steps),
                 eval_size=4 * bs if tiny else 256)
    tr, ev = data.load(ds)
    print(f"gpu-check on {torch.cuda.get_device_name() if cuda else 'CPU (--tiny)'}: bf16 autocast, batch {bs}, "
          f"max_length {max_length}, {warmup} + {steps} steps (synchronized), FLOPs counted on every timed batch; "
          + (f"peak {peak:g} TFLOP/s ({peak_source})" if peak else peak_source), flush=True)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cache = HostCache(models)
        for n, host in enumerate(hosts):
            frozen = args.frozen_dtype or host.frozen
            cfg = Training(steps=warmup + steps, batch_size=bs, eval_batch_size=2 * bs, max_length=max_length,
                           precision="bf16", frozen_dtype=frozen)
            path_ = "frozen bf16 host weights" if frozen == "bf16" else "fp32 host weights under bf16 autocast, fp32 scoring"
            print(f"{host.name}: {path_}", flush=True)
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
            if n == 0 and not args.no_pack:
                lines, problems = pack_check(host, path, frozen, cuda, bs, max_length, warmup + steps, tmp)
                print(f"one pack of {len(lines)} runs on {host.name} through job.RunPack -> runner.execute:", flush=True)
                print("\n".join(lines), flush=True)
                failures += [f"{host.name}/pack: {p}" for p in problems[:1]]
    if failures:
        print(f"gpu-check FAILED: {len(failures)} of {len(hosts) * len(techniques)} checks; first: {failures[0]}")
        return 1
    print(f"gpu-check passed: {len(hosts)} hosts x {len(techniques)} techniques" + ("" if args.no_pack else " + a pack"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
