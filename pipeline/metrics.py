"""Per-run metrics of an eval set: accuracy's companions that see past the majority class.

Pure Python/numpy, so the run side and the results side compute them alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC of ``scores`` for class 1 vs 0 (Mann-Whitney, ties count half); None if one class is absent."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[y == 1].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def macro_f1(preds: Sequence[int], gold: Sequence[int], n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = sum(1 for p, y in zip(preds, gold) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, gold) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, gold) if p != c and y == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / n_classes
