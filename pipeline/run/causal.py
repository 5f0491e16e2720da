"""Decoder-only hosts (``task: causal-lm``): label words scored as the continuation of the input.

The head-free design of text-to-text (``pipeline.run.tasks``) on an ``AutoModelForCausalLM``:

* the input is rendered through the dataset's ``template`` (``"Review: {text}\\nSentiment:"``) and,
  only when the host sets ``chat_template: true``, wrapped as one user turn by the tokenizer's chat
  template with the generation prompt added; by default no chat template, so both hosts of a
  base <-> instruct pair see the same text;
* label word ``c`` is tokenised as the continuation ``" " + word`` (no special tokens, no eos): the
  leading space makes it the word-start token a byte-level BPE (Llama 3, Qwen2, GPT-2, SmolLM2) uses
  after a prompt;
* the score of class ``c`` is ``sum_t log p(w_c[t] | x, w_c[<t])`` over **all** tokens of the word,
  summed and **un-normalised by length** (as on text-to-text); a word of several tokens is therefore
  penalised by its extra factors -- choose label words of similar token length, or accept the prior
  this puts in the zero-shot scores (training absorbs it).  Two words that tokenise alike are refused;
* training minimises the cross-entropy of the gold class over these class scores (not the token-level
  loss of the gold word), so the receiving host is trained and scored on the same quantity;
* every class is scored in one forward pass: row ``i * k + c`` is input ``i`` followed by word ``c``;
  rows are padded on the tokenizer's side (``padding_side`` left or right: each row's word positions
  are computed from its own length) and a tokenizer without a pad token pads with eos (masked out);
* an input longer than ``max_length`` loses tokens from its *start* (after a BOS, which is kept), so the
  end of the template -- the question the label word answers -- always survives;
* positions: ``Positions`` (a child of the inner decoder, installed by ``Task.load_model``) gives every
  forward explicit ``position_ids`` -- real tokens ``0..n-1`` counted over the attention mask, whatever
  the padding side and whatever virtual tokens peft adds: prompt tuning's prepended embeddings get
  position 0 (peft drops ``position_ids`` for prompt tuning, which would shift the real tokens on an
  absolute-position host such as GPT-2), and prefix tuning's key/values shift nothing (without this,
  GPT-2 places the real tokens after the prefix's cache length).  ``tests/test_causal_lm.py`` reads the
  positions the GPT-2 embeddings see.

Only the logits from the first word position on are computed (``logits_to_keep``), so a 150k-token
vocabulary costs ``rows x (word span) x vocab``, not ``rows x length x vocab``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100
POSITIONS_ATTR = "pipeline_positions"


class Positions(nn.Module):
    """Forward pre-hook on the inner decoder: explicit real-token positions (see the module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.virtual_front = 0  # prompt tuning's prepended virtual tokens (set by the prompt technique)
        self.last: torch.Tensor | None = None  # the position ids of the last forward (tests read them)

    def fix(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            return None
        n = ref.shape[1]
        mask = kwargs.get("attention_mask")
        real = mask[:, -n:].long() if mask is not None else torch.ones(ref.shape[:2], dtype=torch.long)
        v = min(self.virtual_front, n) if ids is None else 0  # virtual tokens come as embeddings
        pos = (real[:, v:].cumsum(-1) - 1).clamp_min(0)
        pos = torch.cat([torch.zeros_like(real[:, :v]), pos], dim=1).to(ref.device)
        kwargs["position_ids"] = pos
        self.last = pos.detach()
        return args, kwargs


def inner(model: nn.Module) -> nn.Module:
    """The decoder stack under a ``*ForCausalLM`` (``model.model``, ``model.transformer``)."""
    prefix = getattr(model, "base_model_prefix", None)
    sub = getattr(model, prefix, None) if prefix else None
    if sub is None:
        raise ValueError(f"{type(model).__name__}: no inner decoder (base_model_prefix {prefix!r})")
    return sub


def install(model: nn.Module) -> Positions:
    """Give a causal-LM host fixed real-token positions (idempotent)."""
    dec = inner(model)
    existing = getattr(dec, POSITIONS_ATTR, None)
    if existing is not None:
        return existing
    pos = Positions()
    dec.add_module(POSITIONS_ATTR, pos)
    dec.register_forward_pre_hook(pos.fix, with_kwargs=True)
    return pos


def find(model: nn.Module) -> Positions | None:
    return next((m for m in model.modules() if isinstance(m, Positions)), None)


# ---------------------------------------------------------------- text and batches


def prepare_tokenizer(tokenizer) -> None:
    """A tokenizer without a pad token pads with eos (padding is masked out; the scores never read it)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def encode(tokenizer, texts: list[str], max_length: int, chat: bool) -> list[list[int]]:
    """Prompt token ids; over ``max_length`` the start is cut (a leading BOS kept)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template: true, but the host's tokenizer has no chat template")
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                               tokenize=False) for t in texts]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(texts)["input_ids"]
    bos = tokenizer.bos_token_id
    out = []
    for row in ids:
        if len(row) > max_length:
            keep = 1 if bos is not None and row[0] == bos else 0
            row = row[:keep] + row[len(row) - (max_length - keep):]
        out.append(row)
    return out


def word_ids(tokenizer, words) -> list[list[int]]:
    """Each label word's continuation tokens (``" " + word``, no special tokens)."""
    out = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    if any(not w for w in out):
        raise ValueError(f"a label word tokenises to nothing: {dict(zip(words, out, strict=True))}")
    if len({tuple(w) for w in out}) < len(out):
        raise ValueError(f"two label words tokenise alike: {dict(zip(words, out, strict=True))}")
    return out


def collate(tokenizer, prompts: list[list[int]], words: list[list[int]], labels: list[int]) -> dict:
    """Rows ``i * k + c`` = prompt i + word c, padded on the tokenizer's side; ``targets`` holds each word
    token at its own position (-100 elsewhere)."""
    rows = [p + w for p in prompts for w in words]
    width = max(len(r) for r in rows)
    left = tokenizer.padding_side == "left"
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, row in enumerate(rows):
        start = width - len(row) if left else 0
        ids[r, start : start + len(row)] = torch.tensor(row)
        mask[r, start : start + len(row)] = 1
        w = words[r % len(words)]
        targets[r, start + len(row) - len(w) : start + len(row)] = torch.tensor(w)
    return {"input_ids": ids, "attention_mask": mask, "targets": targets, "class_ids": torch.tensor(labels)}


def scores(model: nn.Module, batch: dict, classes: int) -> torch.Tensor:
    """Class scores [batch, classes] in fp32: summed log-likelihood of each label word's tokens."""
    targets = batch["targets"]
    width = targets.shape[1]
    first = int((targets != IGNORE).float().argmax(-1).min())  # the earliest word token over all rows
    if first < 1:
        raise ValueError("an empty prompt: a label word needs at least one input token before it")
    keep = width - first + 1  # logits at positions first-1 .. width-1 predict tokens first .. width
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits = logits[:, -keep:-1].float()  # position j predicts token j + 1
    tgt = targets[:, first:]
    hit = tgt != IGNORE
    logp = F.log_softmax(logits, dim=-1).gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    per_row = torch.where(hit, logp, torch.zeros_like(logp)).sum(-1)
    return per_row.view(-1, classes)
