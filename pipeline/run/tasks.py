"""Four task formulations behind one interface.

``similarity`` (a classification host with ``head: free``, the default): the
bare encoder, no head.  The label texts (the dataset's ``label_words``) are
appended to every batch and encoded in the *same* forward pass by the same
adapted host; the score of class ``c`` is
``temperature * (cos(pool(x), pool(label_c)) + bias_c)`` where ``pool`` is the
host's own pooling (``pipeline.run.pooling``) and ``bias`` is the module's
per-class bias (zero and frozen for a bare host).  All task knowledge is in the
module, as on a text-to-text host.

``classification`` (``head: trained``): an encoder with a classification head;
predictions are the head's argmax.

``text-to-text``: an encoder-decoder (T5 v1.1, Flan-T5, ...); each label is
verbalised as a word ("negative", "positive") and the prediction is the label
word with the highest log-likelihood, so accuracy never depends on free
generation:

* a label word's target is its tokenisation *with* the end-of-sequence token
  (``"positive"`` -> ``▁positive </s>``), so a class is scored as the whole
  answer "positive, then stop", not as a prefix of some longer answer;
* the score of class ``c`` for input ``x`` is ``sum_t log p(y_c[t] | x, y_c[<t])``
  over all target tokens ``t`` (eos included), un-normalised by length;
* the decoder inputs are never built here: the model gets ``labels`` and builds
  its decoder inputs itself (T5: ``_shift_right``, i.e. decoder start token +
  labels[:-1], -100 replaced by pad).  peft's wrappers pass ``labels`` through
  unchanged for LoRA/IA3 and for prompt learning (prompt tuning prepends its
  soft prompt to the *encoder* input only; prefix tuning hands its key/values
  to the decoder as a cache), so the logits line up with the labels for every
  technique -- ``tests/test_text_to_text.py`` checks this against explicit
  decoder inputs;
* every class is scored in one forward pass (inputs repeated per class, label
  words padded with -100 to a common length and masked out of the sum), so
  label words of different token lengths are handled exactly.

Training minimises the usual token-level cross-entropy of the gold label word
(eos included), i.e. teacher forcing on the same targets that are scored.

``causal-lm``: a decoder-only LM scores each label word as the continuation of
the input -- the same head-free design; scoring, padding and positions are in
``pipeline.run.causal``.

Inputs pass through ``template`` first (``"{text}"`` unless the dataset spec
gives one, e.g. ``"sentiment: {text}"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..techniques.base import CAUSAL_LM, CLASSIFICATION, ENCODER_KINDS, RUN_KINDS, SIMILARITY, is_head_param
from . import causal

IGNORE = -100  # label positions the loss and the scores leave out


@dataclass
class Task:
    kind: str
    tokenizer: Any
    label_words: tuple[str, ...]
    max_length: int = 64
    template: str = "{text}"
    pooling: str = "cls"  # encoder hosts: mean | cls | pooler (see run/pooling.py)
    temperature: float = 20.0  # similarity: the fixed scale of the cosine scores
    class_bias: bool = True  # similarity: a per-class bias in the module
    chat: bool = False  # causal-lm: wrap the rendered input in the tokenizer's chat template

    def __post_init__(self) -> None:
        if self.kind not in RUN_KINDS:
            raise ValueError(f"unknown task {self.kind!r} (known: {', '.join(RUN_KINDS)})")
        if "{text}" not in self.template:
            raise ValueError(f"template must contain '{{text}}', got {self.template!r}")
        self._words: list[list[int]] | None = None
        self._label_ids: list[list[int]] | None = None
        if self.kind == CAUSAL_LM:
            causal.prepare_tokenizer(self.tokenizer)

    # -- model -------------------------------------------------------------------
    def load_model(self, path: str):
        import transformers

        if self.kind in ENCODER_KINDS:
            from .pooling import add_class_bias, install

            if self.kind == CLASSIFICATION:
                model = transformers.AutoModelForSequenceClassification.from_pretrained(
                    path, num_labels=len(self.label_words))
            else:
                model = transformers.AutoModel.from_pretrained(path)
            pool = install(model, self.pooling)
            if self.kind == SIMILARITY and self.class_bias:
                add_class_bias(pool, len(self.label_words))
            return model
        if self.kind == CAUSAL_LM:
            model = transformers.AutoModelForCausalLM.from_pretrained(path)
            model.config.use_cache = False  # scoring and training never reuse a KV cache: build none
            causal.install(model)
            return model
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(path)

    @staticmethod
    def reset_head(model, seed: int) -> None:
        """Initialise the classification head from ``seed`` (as transformers does), so a run's
        head does not depend on what else its process loaded before.  No-op for head-free hosts."""
        g = torch.Generator().manual_seed(seed)
        std = getattr(model.config, "initializer_range", 0.02)
        for name, p in model.named_parameters():
            if is_head_param(name):
                with torch.no_grad():
                    if p.dim() > 1:
                        p.copy_(torch.randn(p.shape, generator=g) * std)
                    else:
                        p.zero_()

    # -- data --------------------------------------------------------------------
    def encode(self, texts) -> list[list[int]]:
        if self.kind == CAUSAL_LM:  # cuts the text, not the template, when too long
            return causal.encode(self.tokenizer, self.template, list(texts), self.max_length, self.chat)
        texts = [self.template.replace("{text}", t) for t in texts]
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def label_ids(self) -> list[list[int]]:
        """The label texts' token ids (no template: a label text is encoded as itself)."""
        if self._label_ids is None:
            self._label_ids = self.tokenizer(list(self.label_words), truncation=True,
                                             max_length=self.max_length)["input_ids"]
        return self._label_ids

    def collate(self, ids: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
        """Padded inputs (similarity: the label texts appended as the last rows) and the gold classes."""
        if self.kind == CAUSAL_LM:
            return causal.collate(self.tokenizer, list(ids), self.word_ids(), labels)
        if self.kind == SIMILARITY:
            ids = list(ids) + self.label_ids()
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        batch["class_ids"] = torch.tensor(labels)
        return batch

    def word_ids(self) -> list[list[int]]:
        """Each label word's target token ids, end-of-sequence token included (causal-lm: its continuation
        tokens, see ``pipeline.run.causal``)."""
        if self._words is None and self.kind == CAUSAL_LM:
            self._words = causal.word_ids(self.tokenizer, self.label_words, self.chat)
        if self._words is None:
            words = [self.tokenizer(w, add_special_tokens=True)["input_ids"] for w in self.label_words]
            eos = getattr(self.tokenizer, "eos_token_id", None)
            for w, ids in zip(self.label_words, words, strict=True):
                if not ids or (eos is not None and ids[-1] != eos):
                    raise ValueError(f"label word {w!r} does not tokenise to '... eos' ({ids}); "
                                     "a text-to-text host needs a tokenizer that appends its eos token")
            if len({tuple(w) for w in words}) < len(words):
                raise ValueError(f"two label words tokenise alike: {dict(zip(self.label_words, words, strict=True))}")
            self._words = words
        return self._words

    def _targets(self, classes: list[int], device) -> torch.Tensor:
        """Label-word token ids for ``classes``, right-padded with -100 -> [n, longest word]."""
        words = self.word_ids()
        width = max(len(words[c]) for c in classes)
        out = torch.full((len(classes), width), IGNORE, dtype=torch.long)
        for i, c in enumerate(classes):
            out[i, : len(words[c])] = torch.tensor(words[c])
        return out.to(device)

    # -- loss and prediction -----------------------------------------------------
    def similarity(self, model, batch) -> torch.Tensor:
        """Head-free class scores [batch, classes] (see module doc), in fp32."""
        from .pooling import find

        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        pool = find(model)
        z, pool.last = pool.last, None  # consumed at once: a pooled tensor never outlives its forward
        z = F.normalize(z.float(), dim=-1)
        n = batch["class_ids"].shape[0]
        cos = z[:n] @ z[n:].T
        if pool.class_bias is not None:
            cos = cos + pool.class_bias.float()
        return self.temperature * cos

    def loss(self, model, batch) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.kind == SIMILARITY:
            scores = self.similarity(model, batch)
            return F.cross_entropy(scores, batch["class_ids"].to(scores.device))  # targets stay on the CPU (train.to_device)
        if self.kind == CLASSIFICATION:
            return model(**inputs, labels=batch["class_ids"]).loss
        if self.kind == CAUSAL_LM:
            s = causal.scores(model, batch, len(self.label_words))
            return F.cross_entropy(s, batch["class_ids"].to(s.device))
        targets = self._targets(batch["class_ids"].tolist(), batch["input_ids"].device)
        return model(**inputs, labels=targets).loss

    @torch.no_grad()
    def scores(self, model, batch) -> torch.Tensor:
        """Per-class scores [batch, classes]: logits, or label-word log-likelihoods (see module doc)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.kind == SIMILARITY:
            return self.similarity(model, batch)
        if self.kind == CLASSIFICATION:
            return model(**inputs).logits.float()
        if self.kind == CAUSAL_LM:
            return causal.scores(model, batch, len(self.label_words))
        n, k = batch["input_ids"].shape[0], len(self.label_words)
        # row i * k + c = example i scored against class c
        rep = {name: t.repeat_interleave(k, dim=0) for name, t in inputs.items()}
        targets = self._targets(list(range(k)) * n, batch["input_ids"].device)
        logits = model(**rep, labels=targets).logits.float()
        return self.token_logprobs(logits, targets).sum(-1).view(n, k)

    @staticmethod
    def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p of each target token [n, len]; 0 where the target is -100."""
        keep = targets != IGNORE
        logp = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return torch.where(keep, logp, torch.zeros_like(logp))
