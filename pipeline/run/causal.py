"""Decoder-only hosts (``task: causal-lm``): label words scored as the continuation of the input.

The head-free design of text-to-text (``pipeline.run.tasks``) on an ``AutoModelForCausalLM``:

* the input is rendered through the dataset's ``template`` (``"Review: {text}\\nSentiment:"``) and,
  only when the host sets ``chat_template: true``, wrapped as one user turn by the tokenizer's chat
  template with the generation prompt added; by default no chat template, so both hosts of a
  base <-> instruct pair see the same text;
* label word ``c`` is tokenised as the continuation ``" " + word`` (no special tokens, no eos): the
  leading space makes it the word-start token a byte-level BPE (Llama 3, Qwen2, GPT-2, SmolLM2) uses
  after a prompt; under ``chat_template: true`` it is ``word`` itself, the first token of an assistant
  answer (the generation prompt ends in a header and a newline, after which no space comes);
* chat templates are rendered with a fixed date (``CHAT_DATE``, as ``date_string`` and behind
  ``strftime_now``): Llama 3.x's template writes today's date into its system header, which would change
  the prompts from one day to the next under one run id;
* the score of class ``c`` is ``sum_t log p(w_c[t] | x, w_c[<t])`` over **all** tokens of the word,
  summed and **un-normalised by length** (as on text-to-text); a word of several tokens is therefore
  penalised by its extra factors -- choose label words of similar token length, or accept the prior
  this puts in the zero-shot scores (training absorbs it).  Two words that tokenise alike are refused;
* training minimises the cross-entropy of the gold class over these class scores (not the token-level
  loss of the gold word), so the receiving host is trained and scored on the same quantity;
* every class is scored in one forward pass: row ``i * k + c`` is input ``i`` followed by word ``c``;
  rows are padded on the tokenizer's side (``padding_side`` left or right: each row's word positions
  are computed from its own length) and a tokenizer without a pad token pads with eos (masked out);
* an input longer than ``max_length`` loses tokens from the start of its *text* (the ``{text}`` of the
  template), never from the template or the chat wrapping: the system header, the template's words and
  its end -- the question the label word answers -- always survive;
* positions: ``Positions`` (a child of the inner decoder, installed by ``Task.load_model``) gives every
  forward explicit ``position_ids`` -- real tokens ``0..n-1`` counted over the attention mask, whatever
  the padding side and whatever virtual tokens peft adds: prompt tuning's prepended embeddings get
  position 0 (peft drops ``position_ids`` for prompt tuning, which would shift the real tokens on an
  absolute-position host such as GPT-2), and prefix tuning's key/values shift nothing (without this,
  GPT-2 places the real tokens after the prefix's cache length).  ``tests/test_causal_lm.py`` reads the
  positions the GPT-2 embeddings see.

Scoring is fp32 whatever the host's precision: the LM head's input (the final hidden state) is taken
before the head runs (a pre-hook hands the head an empty slice, so it computes nothing), and the logits
of the positions that predict a label-word token -- those only -- are computed from it in fp32 against
the head's weight cast to fp32, outside autocast.  With bf16 frozen weights the head's own bf16 logits
would be rounded to 8 bits of mantissa (steps of 0.125 near 20) before any softmax.  The cost is
``(word tokens) x vocab`` per row, not ``length x vocab``.  No KV cache is built (``use_cache`` off).
"""

from __future__ import annotations

import contextlib
import datetime
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
        self.enabled = True  # off only while prefix tuning computes the host's own key/values (techniques/prefix.py)

    def fix(self, _module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        if not self.enabled:
            return None
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


CHAT_DATE = datetime.datetime(2024, 7, 26)  # the date every chat template sees (Llama 3.x's own default)


def render_chat(tokenizer, text: str) -> str:
    """``text`` as one user turn with the generation prompt, rendered with the fixed ``CHAT_DATE``."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False, date_string=CHAT_DATE.strftime("%d %b %Y"),
                                         strftime_now=CHAT_DATE.strftime)


def encode(tokenizer, template: str, texts: list[str], max_length: int, chat: bool) -> list[list[int]]:
    """Prompt token ids of each text rendered through ``template`` (and the chat template when ``chat``);
    over ``max_length`` the start of the *text* is cut, never the template or the chat wrapping."""
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template: true, but the host's tokenizer has no chat template")

    def ids_of(text: str) -> list[int]:
        rendered = template.replace("{text}", text)
        if chat:
            return tokenizer(render_chat(tokenizer, rendered), add_special_tokens=False)["input_ids"]
        return tokenizer(rendered)["input_ids"]

    out = []
    for text in texts:
        row = ids_of(text)
        if len(row) > max_length:
            words = tokenizer(text, add_special_tokens=False)["input_ids"]
            cut = len(row) - max_length  # text tokens to drop; retokenising may merge differently: retry
            while len(row) > max_length:
                if cut >= len(words):
                    row = ids_of("")
                    if len(row) > max_length:
                        raise ValueError(f"max_length {max_length} is shorter than the template alone "
                                         f"({len(row)} tokens): raise max_length")
                    break
                row = ids_of(tokenizer.decode(words[cut:]).lstrip())
                cut += max(1, len(row) - max_length)
        out.append(row)
    return out


def word_ids(tokenizer, words, chat: bool = False) -> list[list[int]]:
    """Each label word's continuation tokens (``" " + word``; ``word`` after a chat template's generation
    prompt), no special tokens."""
    lead = "" if chat else " "
    out = [tokenizer(lead + w, add_special_tokens=False)["input_ids"] for w in words]
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


@contextlib.contextmanager
def _head_input(model: nn.Module):
    """Within: the LM head's input of each forward is kept in ``got["h"]`` and the head is handed an empty
    slice of it (its own -- in bf16, rounded -- logits are never computed)."""
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"causal-lm scoring needs a plain linear LM head, got {type(head).__name__} "
                         "(a module on the LM head is not supported)")
    got: dict[str, torch.Tensor] = {}

    def grab(_module, args):
        got["h"] = args[0]
        return (args[0][..., :0, :],)

    handle = head.register_forward_pre_hook(grab)
    try:
        yield head, got
    finally:
        handle.remove()


def _check_plain_logits(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        raise ValueError(f"{type(model).__name__}: logits are soft-capped or scaled after the LM head; causal-lm "
                         "scoring computes them from the head's weight and does not support that")


def scores(model: nn.Module, batch: dict, classes: int) -> torch.Tensor:
    """Class scores [batch, classes] in fp32: summed log-likelihood of each label word's tokens."""
    targets = batch["targets"]
    width = targets.shape[1]
    first = int((targets != IGNORE).float().argmax(-1).min())  # the earliest word token over all rows
    if first < 1:
        raise ValueError("an empty prompt: a label word needs at least one input token before it")
    keep = width - first + 1  # hidden states at positions first-1 .. width-1 predict tokens first .. width
    _check_plain_logits(model)
    with _head_input(model) as (head, got):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
              use_cache=False)
    hidden = got["h"][:, -keep:-1]  # position j predicts token j + 1 (virtual tokens, if any, come first)
    tgt = targets[:, first:]
    hit = tgt != IGNORE
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden[hit].float()  # [word tokens, hidden]: only the positions a label-word token is read at
        logits = h @ head.weight.float().T
        if head.bias is not None:
            logits = logits + head.bias.float()
        logp = F.log_softmax(logits, dim=-1).gather(-1, tgt[hit].unsqueeze(-1)).squeeze(-1)
    rows = hit.nonzero()[:, 0]
    per_row = torch.zeros(targets.shape[0], dtype=torch.float32, device=logp.device).index_add(0, rows, logp)
    return per_row.view(-1, classes)
