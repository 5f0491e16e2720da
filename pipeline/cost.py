"""Dry-run cost estimate: GPU-hours of a sweep from tokens x parameters, offline.

``pipeline plan SPEC`` (``make dry-run``) calls :func:`print_cost`.  Nothing
here touches the network or loads a model; it takes well under a second.

The cost model (simple on purpose; every constant is printed with the estimate):

* **FLOPs.**  Training ``6 x N x T`` (forward 2 + backward 4 per parameter and
  token), evaluation ``2 x N x T`` (forward only).  ``N`` is the host's parameter
  count.  On an encoder-decoder host each input token passes the encoder only
  and each target token the decoder only, so ``N x T`` becomes
  ``N/2 x T_in + N/2 x T_out`` (T5 splits its parameters about evenly).
* **Tokens.**  Training: ``max_length x batch_size x steps`` input tokens
  (stage 1: ``origin_training.steps``; stage 2: the regime's step budget).
  Evaluation: ``max_length x eval_size`` per run, times the number of label
  words for text-to-text and causal-lm (each class is scored by its own pass, see
  :mod:`pipeline.run.tasks`; causal-lm trains on every class's row too).  Target tokens (text-to-text): ``TARGET_TOKENS`` per
  sequence (label word + end of sequence).
* **Throughput.**  ``SUSTAINED_TFLOPS`` = ``MFU`` x ``PEAK_TFLOPS`` (40 % of an
  A100's dense bf16 peak).  GPU-seconds = FLOPs / sustained throughput.
* **Overhead.**  ``RUN_OVERHEAD_S`` GPU-seconds per run (copying the host,
  attaching the technique, data, writing results); a run holds one GPU.
* **Parameters.**  A built-in table of known hub names (``KNOWN_PARAMS``); for a
  local folder or a built ``embedded:`` host, the tensor shapes in its
  safetensors headers (exact), else a count from its ``config.json`` (T5- and
  BERT-shaped configs).  An unknown host is reported and left out.

What the model leaves out, roughly cancelling: sequences are padded only to
the longest in their (length-bucketed) batch, not to ``max_length`` (SST-2 and
Rotten Tomatoes average 25-35 T5 tokens, so real token counts are 3-5x lower);
PEFT needs no weight gradients for the frozen host (~4 x N x T rather than 6);
small batches on a big GPU rarely reach 40 % MFU.  Treat the result as a
budget to within a factor of a few, not a prediction.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .devices import gpu_count
from .memory import CAUSAL_LM, ENCODER_DECODER, run_memory  # noqa: F401 - the memory model lives in pipeline.memory
from .shapes import HUB_CONFIGS, decoder_params

PEAK_TFLOPS = 312.0  # NVIDIA A100, dense bf16 tensor-core peak
MFU = 0.40  # assumed sustained fraction of peak
SUSTAINED_TFLOPS = PEAK_TFLOPS * MFU
RUN_OVERHEAD_S = 15.0  # per run (a run holds one GPU)
TARGET_TOKENS = 2  # text-to-text target: label word + </s>
PACK_TIME_SHARE = 0.5  # a pack of runs should fit in this share of its task's time limit (launch.layout too)

# (d_model, d_ff, heads, layers) of hub hosts without a local config.json
KNOWN_SHAPES: dict[str, tuple[int, int, int, int]] = {
    **{f"google/{f}-{s}": shape for f in ("t5-v1_1", "flan-t5") for s, shape in (
        ("small", (512, 1024, 6, 8)), ("base", (768, 2048, 12, 12)), ("large", (1024, 2816, 16, 24)),
        ("xl", (2048, 5120, 32, 24)), ("xxl", (4096, 10240, 64, 24)))},
    **{f"{p}t5-{s}": shape for p in ("", "google-t5/") for s, shape in (
        ("small", (512, 2048, 8, 6)), ("base", (768, 3072, 12, 12)), ("large", (1024, 4096, 16, 24)))},
}

# Parameter counts of hosts a spec may name by hub name (checked against the published configs).
KNOWN_PARAMS: dict[str, int] = {
    "google/t5-v1_1-small": 76_961_152,
    "google/t5-v1_1-base": 247_577_856,
    "google/t5-v1_1-large": 783_150_080,
    "google/t5-v1_1-xl": 2_849_757_184,
    "google/t5-v1_1-xxl": 11_135_332_352,
    "google/flan-t5-small": 76_961_152,
    "google/flan-t5-base": 247_577_856,
    "google/flan-t5-large": 783_150_080,
    "google/flan-t5-xl": 2_849_757_184,
    "google/flan-t5-xxl": 11_135_332_352,
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "google-t5/t5-small": 60_506_624,
    "google-t5/t5-base": 222_903_552,
    "google-t5/t5-large": 737_668_096,
    "bert-base-uncased": 109_482_240,
    "google-bert/bert-base-uncased": 109_482_240,
    "bert-large-uncased": 335_141_888,
    "roberta-base": 124_645_632,
    "FacebookAI/roberta-base": 124_645_632,
    "roberta-large": 355_359_744,
    "sentence-transformers/all-MiniLM-L6-v2": 22_713_216,
    "embedded:all-minilm-l6-v2": 22_713_216,
    "embedded:all-minilm-l6-v2-tweets": 22_713_216,
    "embedded:tiny-bert-a": 232_128,
    "embedded:tiny-bert-b": 232_128,
    "embedded:tiny-t5-a": 292_736,
    "embedded:tiny-t5-b": 292_736,
}


# --------------------------------------------------------------------------- parameters


def params_from_safetensors(folder: Path) -> int | None:
    """Sum of tensor sizes in the folder's safetensors headers (reads only the headers)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def params_from_config(cfg: dict) -> int | None:
    """Parameter count of a T5-, BERT-, Llama/Qwen2- or GPT-2-shaped model from its config.json (no weights)."""
    if (n := decoder_params(cfg)) is not None:
        return n
    if "d_model" in cfg and "d_ff" in cfg:  # T5 family
        d, ff, heads = cfg["d_model"], cfg["d_ff"], cfg["num_heads"]
        inner = heads * cfg.get("d_kv", d // heads)
        attn = 4 * d * inner
        mlp = (3 if str(cfg.get("feed_forward_proj", "relu")).startswith("gated") else 2) * d * ff
        bias = heads * cfg.get("relative_attention_num_buckets", 32)
        enc_layers = cfg["num_layers"]
        dec_layers = cfg.get("num_decoder_layers") or enc_layers
        enc = enc_layers * (attn + mlp + 2 * d) + d + bias
        dec = dec_layers * (2 * attn + mlp + 3 * d) + d + bias
        emb = cfg["vocab_size"] * d * (1 if cfg.get("tie_word_embeddings", True) else 2)
        return enc + dec + emb
    if "hidden_size" in cfg and "num_hidden_layers" in cfg:  # BERT family (with pooler)
        h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        ff = cfg.get("intermediate_size", 4 * h)
        emb = (cfg["vocab_size"] + cfg.get("max_position_embeddings", 512) + cfg.get("type_vocab_size", 2)) * h + 2 * h
        layer = 4 * (h * h + h) + 2 * h * ff + ff + h + 4 * h
        return emb + layers * layer + h * h + h
    return None


def _local_folder(model: str, models_dir: Path) -> Path | None:
    """The folder of a local or already-built embedded host; never builds anything."""
    if model.startswith("embedded:"):
        name = model.removeprefix("embedded:")
        folder = Path(models_dir) / name
        if name == "all-minilm-l6-v2":
            try:
                from .hosts import minilm_dir

                folder = minilm_dir()
            except Exception:
                return None
        return folder if (folder / "config.json").exists() else None
    p = Path(model)
    return p if p.is_dir() else None


def host_params(model: str, models_dir: Path | str = "models") -> tuple[int | None, str]:
    """(parameter count, where it came from) for a spec's host name, offline."""
    folder = _local_folder(model, Path(models_dir))
    if folder is not None:
        n = params_from_safetensors(folder)
        if n:
            return n, f"safetensors headers in {folder}"
        try:
            n = params_from_config(json.loads((folder / "config.json").read_text()))
        except (OSError, ValueError, KeyError):
            n = None
        if n:
            return n, f"{folder}/config.json"
    if model in KNOWN_PARAMS:
        return KNOWN_PARAMS[model], "built-in table"
    if model in HUB_CONFIGS:
        return decoder_params(HUB_CONFIGS[model]), "declared config (pipeline/shapes.py)"
    return None, "unknown (not a local folder, not in the built-in table)"


def host_shape(model: str, models_dir: Path | str = "models") -> tuple[int, int, int, int] | None:
    """(d_model, d_ff, heads, layers) of a host from its config.json (T5- or BERT-shaped), else the table."""
    folder = _local_folder(model, Path(models_dir))
    c = HUB_CONFIGS.get(model)
    if folder is not None:
        try:
            c = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            pass
    try:
        if c and "d_model" in c:
            return c["d_model"], c["d_ff"], c["num_heads"], c["num_layers"]
        if c and "n_embd" in c:  # GPT-2
            return c["n_embd"], c.get("n_inner") or 4 * c["n_embd"], c["n_head"], c["n_layer"]
        if c:
            return c["hidden_size"], c["intermediate_size"], c["num_attention_heads"], c["num_hidden_layers"]
    except KeyError:
        pass
    return KNOWN_SHAPES.get(model)


def host_vocab(model: str, models_dir: Path | str = "models") -> int:
    folder = _local_folder(model, Path(models_dir))
    try:
        c = json.loads((folder / "config.json").read_text()) if folder else HUB_CONFIGS.get(model, {})
    except (OSError, ValueError):
        c = {}
    return int(c.get("vocab_size") or 0)


# --------------------------------------------------------------------------- estimate


@dataclass
class StageCost:
    runs: int = 0
    train_tokens: float = 0.0
    eval_tokens: float = 0.0
    flops: float = 0.0
    overhead_s: float = 0.0
    longest_run_s: float = 0.0
    skipped: int = 0  # runs on hosts of unknown size

    @property
    def compute_gpu_h(self) -> float:
        return self.flops / (SUSTAINED_TFLOPS * 1e12) / 3600

    @property
    def gpu_h(self) -> float:
        return self.compute_gpu_h + self.overhead_s / 3600


@dataclass
class Estimate:
    stages: dict[int, StageCost] = field(default_factory=lambda: {1: StageCost(), 2: StageCost()})
    hosts: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    by_host: dict[str, float] = field(default_factory=dict)  # GPU-hours per host model

    @property
    def gpu_h(self) -> float:
        return sum(s.gpu_h for s in self.stages.values())


def run_flops(n_params: int, task: str, training: dict, steps: int, eval_examples: int, n_classes: int):
    """(train FLOPs, eval FLOPs, train input tokens, eval input tokens) of one run."""
    L = training["max_length"]
    rows = n_classes if task == CAUSAL_LM else 1  # causal-lm: every class its own row, in training too
    t_train = L * training.get("batch_size", 0) * steps * rows  # zero-shot keys carry only the eval fields
    t_eval = L * eval_examples * (n_classes if task in (ENCODER_DECODER, CAUSAL_LM) else 1)
    if task == ENCODER_DECODER:  # encoder half sees the inputs, decoder half the targets
        per_train = n_params / 2 * t_train + n_params / 2 * TARGET_TOKENS * training.get("batch_size", 0) * steps
        per_eval = n_params / 2 * t_eval + n_params / 2 * TARGET_TOKENS * t_eval / L
    else:
        per_train, per_eval = n_params * t_train, n_params * t_eval
    return 6 * per_train, 2 * per_eval, t_train, t_eval


def estimate(spec, plan) -> Estimate:
    from .spec import Training

    est = Estimate()
    defaults = Training().model_dump()
    for r in plan.runs:
        k = r.key
        model = k["host"]["model"]
        if model not in est.hosts:
            est.hosts[model] = host_params(model, spec.models_dir)
        n, _ = est.hosts[model]
        st = est.stages[r.stage]
        st.runs += 1
        if n is None:
            st.skipped += 1
            continue
        training = k["training"] or defaults  # a zero-shot run evaluates with Training() defaults, as runner does
        steps = training["steps"] if r.stage == 1 else k["regime"]
        ds = k["dataset"]
        n_classes = len(ds.get("label_words") or ("negative", "positive"))
        tf, ef, tt, et = run_flops(n, k["task"], training, steps, ds.get("eval_size", 500), n_classes)
        st.train_tokens += tt
        st.eval_tokens += et
        st.flops += tf + ef
        st.overhead_s += RUN_OVERHEAD_S
        run_s = (tf + ef) / (SUSTAINED_TFLOPS * 1e12) + RUN_OVERHEAD_S
        st.longest_run_s = max(st.longest_run_s, run_s)
        est.by_host[model] = est.by_host.get(model, 0.0) + ((tf + ef) / (SUSTAINED_TFLOPS * 1e12)
                                                            + RUN_OVERHEAD_S) / 3600
    return est


def host_memory(spec, h) -> list[tuple[dict, object, str]] | None:
    """Per stage (1, 2): (``run_memory`` of a run on host ``h``, its training settings, precision); None when
    the host's size or shape is not known here."""
    n, shape = host_params(h.model, spec.models_dir)[0], host_shape(h.model, spec.models_dir)
    if not (n and shape):
        return None
    vocab = host_vocab(h.model, spec.models_dir) if h.task == CAUSAL_LM else 0
    classes = max(len(d.label_words) for d in spec.datasets)
    out = []
    for tr, res in ((spec.origin_training, spec.resources.stage1), (spec.further_training, spec.resources.stage2)):
        p = "bf16" if tr.precision == "bf16" or (tr.precision == "auto" and gpu_count(res)) else "fp32"
        out.append((run_memory(n, shape, {**tr.model_dump(), "precision": p}, task=h.task, classes=classes,
                               vocab=vocab), tr, p))
    return out


def _si(x: float) -> str:
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g} {unit}"
    return f"{x:.3g}"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 1 else f"{h:.3g}"


def print_cost(console, spec, plan) -> None:
    """The dry run's cost table (``pipeline plan``)."""
    from rich.table import Table

    est = estimate(spec, plan)
    t = Table(title="cost estimate (dry run, offline): 6·N·tokens to train, 2·N·tokens to evaluate")
    for c in ("stage", "runs", "train tokens", "eval tokens", "FLOPs", "GPU-h compute", "GPU-h overhead",
              "GPU-h total", "longest run"):
        t.add_column(c, justify="right")
    for stage, st in est.stages.items():
        t.add_row(str(stage), f"{st.runs}" + (f" ({st.skipped} unknown)" if st.skipped else ""),
                  _si(st.train_tokens), _si(st.eval_tokens), _si(st.flops), _hours(st.compute_gpu_h),
                  _hours(st.overhead_s / 3600), _hours(st.gpu_h), f"{st.longest_run_s / 60:.1f} min")
    t.add_row("all", str(sum(s.runs for s in est.stages.values())), "", "", _si(sum(s.flops for s in est.stages.values())),
              "", "", f"[bold]{_hours(est.gpu_h)}[/bold]", "")
    console.print(t)
    names = {h.model: h.name for h in spec.hosts}
    for model, (n, src) in est.hosts.items():
        share = est.by_host.get(model)
        console.print(f"  host {names.get(model, model)} = {model}: "
                      + (f"{n / 1e6:,.1f} M parameters ({src}); {_hours(share or 0)} GPU-h" if n else src))
    for h in spec.hosts:  # the larger of the two stages' training settings
        got = host_memory(spec, h)
        if got is None:
            continue
        m, tr, p = max(got, key=lambda x: x[0]["total"])
        console.print(f"  host {h.name}: ~{m['total']:.1f} GB peak GPU memory a run at batch {tr.batch_size} x "
                      f"{tr.max_length} tokens, {p} (weights {m['weights']:.1f} + bf16 copies {m['bf16_copies']:.1f} "
                      f"+ activations {m['activations']:.1f} GB + CUDA context)", highlight=False)
    console.print(f"  assumed sustained throughput {SUSTAINED_TFLOPS:.0f} TFLOP/s = {MFU:.0%} of an A100's "
                  f"{PEAK_TFLOPS:.0f} TFLOP/s bf16 peak; + {RUN_OVERHEAD_S:.0f} GPU-s overhead per run; "
                  "tokens = max_length x batch x steps (an upper bound: batches are padded to their longest). "
                  "See pipeline/cost.py.")
    for stage, st in est.stages.items():
        res = spec.resources.stage1 if stage == 1 else spec.resources.stage2
        if gpu_count(res) == 0:
            console.print(f"  [yellow]stage {stage} asks for no GPU: these figures assume one; on CPUs the compute "
                          "part takes ~100x longer[/yellow]")
        if res.pack_size and st.longest_run_s * res.pack_size > res.time_min * 60 * PACK_TIME_SHARE:
            console.print(f"  [yellow]stage {stage}: a pack of {res.pack_size} of the longest runs "
                          f"(~{st.longest_run_s * res.pack_size / 60:.0f} min) exceeds half its time limit "
                          f"({res.time_min} min); checkpoints and requeues will carry it, but consider a smaller "
                          f"pack_size or more time_min[/yellow]")
