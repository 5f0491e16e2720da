"""GPU memory of one training run, offline (``pipeline plan`` prints it per host, ``checks.check_memory`` refuses a
spec over ``resources.gpu_mem_gb``).  The constants are counts of what autograd really keeps, by host family, and
``benches/memory_count.py`` repeats the count for any host folder.  Torch-free.
"""

from __future__ import annotations

ENCODER_DECODER = "text-to-text"
CAUSAL_LM = "causal-lm"

# GPU memory of one run (``run_memory``): what autograd keeps for the backward pass, counted on CPU with
# ``saved_tensors_hooks`` (unique storages, parameters excluded; ``benches/memory_count.py``), per input token and
# layer, by host family -- the attention each family runs decides whether a (heads x sequence length) term exists:
# * text-to-text (T5: eager attention with a position bias, so probabilities are kept): fitted on a LoRA-wrapped
#   T5 v1.1 under bf16 autocast, 36.7 B x d_model + 14.2 B x d_ff + 12.2 B x heads x L
#   (tests/test_gpu_ready.py::test_memory_model_matches_a_measured_count, on shapes not fitted); in fp32 1.2x that
#   (the tiny T5 counts 1.12x; 1.3 was assumed before and made its fp32 estimate 32 % high);
# * encoders (BERT: attention dropout in training keeps probabilities and their mask): 31.2 B x d + 4.1 B x d_ff +
#   12 B x heads x L in fp32, fitted on the tiny BERT and all-MiniLM-L6-v2 (exact on both, two lengths each);
# * decoders (Llama/Qwen2 through SDPA, no dropout: nothing quadratic in L is kept): 17.0 B x d + 14.2 B x d_ff
#   per layer, + 6.1 B x d per token outside the layers, read off a 2- and a 30-layer SmolLM2-135M; 0.99 GB
#   measured / 1.00 estimated at 8 x 64 on the real SmolLM2 (2 rows an example), 7.9 / 7.9 GB at 32 x 128; the
#   word's logits: fp32 logits and their log-softmax at two positions a row, and with frozen bf16 weights the fp32
#   copy of the LM head the fp32 scoring multiplies by (vocab x d x 4 B: 113 MB on SmolLM2).
# Under bf16 autocast the count falls to the share in ACT_BF16 (norms, softmax and losses stay fp32); with frozen
# bf16 weights a little further.  Autocast's bf16 copy of every frozen matmul weight lives until the backward
# pass (~2 B a parameter); trainable parameters cost 16 B (fp32 weight, grad, two Adam moments).  T5-large at
# 32 x 128 tokens: 3.1 GB fp32 weights + 1.6 GB bf16 copies + 32 x 0.32 GB activations + 0.5 GB CUDA context ~ 15 GB.
ACT_BYTES = (36.7, 14.2, 12.2)  # T5, bf16: per token and layer: per d_model, per d_ff, per head x token of the sequence
ACT_FP32 = 1.2
FAMILY_BYTES = {  # fp32, per token and layer: (per d_model, per d_ff, per head x token, per d_model outside layers)
    "encoder": (31.2, 4.1, 12.0, 0.0),
    "decoder": (17.0, 14.2, 0.0, 6.1),
}
ACT_BF16 = {"encoder": (0.82, 0.79), "decoder": (0.66, 0.61)}  # (autocast over fp32 weights, frozen bf16 weights)
CUDA_CONTEXT_GB = 0.5  # CUDA context, cuBLAS workspace, allocator slack (not measurable on CPU; typical)

def family_of(task: str | None) -> str:
    """The memory model's host family of a run kind: text-to-text -> t5, causal-lm -> decoder, else encoder."""
    return {ENCODER_DECODER: "t5", CAUSAL_LM: "decoder"}.get(task or "", "encoder")


def run_memory(n_params: int, shape: tuple[int, int, int, int], training: dict, trainable: int = 5_000_000,
               task: str | None = None, classes: int = 2, vocab: int = 0) -> dict[str, float]:
    """Peak GPU memory of one training run in GB, by part (see the constants above): frozen weights, autocast's
    bf16 copies, trainable state, activations, CUDA context; ``total``.  Rows a step runs: a causal-lm run scores
    every class in its own row (batch x classes rows of max_length + the word's token) and keeps fp32 logits, their
    log-softmax and its gradient at the word positions only (``logits``); a head-free encoder run pools the label
    texts in the same pass (batch + classes rows)."""
    d, ff, heads, layers = shape
    L, batch = training["max_length"], training.get("batch_size", 0)
    family = family_of(task)
    bf16 = training.get("precision") in ("bf16", "auto")
    frozen_bf16 = training.get("frozen_dtype") == "bf16"
    logits = 0.0
    if family == "t5":
        per_token = (ACT_BYTES[0] * d + ACT_BYTES[1] * ff + ACT_BYTES[2] * heads * L) * (1 if bf16 else ACT_FP32)
        activations = batch * L * layers * per_token
    else:
        if family == "decoder":
            batch, L = batch * classes, L + 1
            logits = batch * vocab * 4 * 4  # fp32 logits and log-softmax at two positions a row (prompt end, word)
        else:
            batch += classes
        a, b, g, e = FAMILY_BYTES[family]
        share = 1.0 if not bf16 else ACT_BF16[family][1 if frozen_bf16 else 0]
        activations = batch * L * (layers * (a * d + b * ff + g * heads * L) + e * d) * share
    # the words are scored in fp32: with frozen bf16 weights an fp32 copy of the LM head is kept for the backward
    head = vocab * d * 4 / 1e9 if family == "decoder" and frozen_bf16 else 0.0
    parts = {"weights": n_params * (2 if frozen_bf16 else 4) / 1e9,
             "bf16_copies": n_params * 2 / 1e9 if bf16 and not frozen_bf16 else 0.0,
             "fp32_head": head,
             "trainable": trainable * 16 / 1e9,
             "activations": (activations + logits) / 1e9,
             "cuda_context": CUDA_CONTEXT_GB}
    return {**parts, "total": sum(parts.values())}
