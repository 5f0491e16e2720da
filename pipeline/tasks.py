"""Two task formulations behind one interface.

``classification``: an encoder with a classification head; predictions are the
head's argmax.  ``text-to-text``: an encoder-decoder; each label is verbalised
as a word ("negative", "positive") and the prediction is the label word with
the highest log-likelihood, so accuracy never depends on free generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .techniques.base import CLASSIFICATION, is_head_param


@dataclass
class Task:
    kind: str
    tokenizer: Any
    label_words: tuple[str, ...]
    max_length: int = 64
    template: str = "{text}"

    # -- model -------------------------------------------------------------------
    def load_model(self, path: str):
        import transformers

        if self.kind == CLASSIFICATION:
            return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(self.label_words))
        return transformers.AutoModelForSeq2SeqLM.from_pretrained(path)

    @staticmethod
    def reset_head(model, seed: int) -> None:
        """Initialise the classification head from ``seed`` (as transformers does), so a run's
        head does not depend on what else its process loaded before."""
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
        texts = [self.template.format(text=t) for t in texts]
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def collate(self, ids: list[list[int]], labels: list[int]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        batch["class_ids"] = torch.tensor(labels)
        return batch

    def _word_ids(self, device) -> list[torch.Tensor]:
        if not hasattr(self, "_words"):
            self._words = [self.tokenizer(w, add_special_tokens=True)["input_ids"] for w in self.label_words]
        return [torch.tensor(w, device=device) for w in self._words]

    # -- loss and prediction -----------------------------------------------------
    def loss(self, model, batch) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.kind == CLASSIFICATION:
            return model(**inputs, labels=batch["class_ids"]).loss
        words = self._word_ids(batch["input_ids"].device)
        targets = torch.nn.utils.rnn.pad_sequence([words[c] for c in batch["class_ids"].tolist()],
                                                  batch_first=True, padding_value=-100)
        return model(**inputs, labels=targets).loss

    @torch.no_grad()
    def scores(self, model, batch) -> torch.Tensor:
        """Per-class scores [batch, classes]: logits, or label-word log-likelihoods."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.kind == CLASSIFICATION:
            return model(**inputs).logits.float()
        n = batch["input_ids"].shape[0]
        cols = []
        for w in self._word_ids(batch["input_ids"].device):
            labels = w.unsqueeze(0).expand(n, -1)
            logits = model(**inputs, labels=labels).logits.float()
            logp = F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            cols.append(logp.sum(-1))
        return torch.stack(cols, dim=-1)
