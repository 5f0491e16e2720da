"""Per-run metrics of an eval set: macro-F1 and ROC AUC (torch-free; numpy only).

Used by the run side (each run's shard) and by the results side (the report), so both compute
AUC the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def macro_f1(preds: Sequence[int], gold: Sequence[int], n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = sum(1 for p, y in zip(preds, gold) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, gold) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, gold) if p != c and y == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / n_classes


def auc(labels, scores, pos_label=1) -> float:
    """ROC AUC of ``scores`` for ``labels == pos_label`` (rank-based, ties count one half).

    Equals the probability that a random positive scores above a random
    negative (Mann-Whitney U / (n_pos * n_neg)), with average ranks for ties.
    Entries whose score or label is None/NaN are left out.  NaN when either
    class is absent.  Accepts lists or arrays; numpy only.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels, dtype=float).ravel()
    if len(s) != len(y):
        raise ValueError(f"auc: {len(y)} labels but {len(s)} scores")
    keep = np.isfinite(s) & np.isfinite(y)
    s, pos = s[keep], y[keep] == pos_label
    n_pos = int(pos.sum())
    n_neg = len(s) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(cnt)
    avg_rank = (ends - cnt + 1 + ends) / 2.0  # 1-based average rank of each distinct score
    r_pos = float(avg_rank[inv][pos].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
