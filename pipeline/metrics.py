"""Per-run metrics of an eval set beside accuracy (AUC lives in ``stats.auc``, shared with the report)."""

from __future__ import annotations

from collections.abc import Sequence


def macro_f1(preds: Sequence[int], gold: Sequence[int], n_classes: int) -> float:
    f1s = []
    for c in range(n_classes):
        tp = sum(1 for p, y in zip(preds, gold) if p == c and y == c)
        fp = sum(1 for p, y in zip(preds, gold) if p == c and y != c)
        fn = sum(1 for p, y in zip(preds, gold) if p != c and y == c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / n_classes
