"""Per-phase metrics from the accuracy matrix (DESIGN §4).

``acc[t][g]`` is the top-1 accuracy (%) after phase t on the test images of class group g
(group 0 = base classes, group g = classes of phase g), for g <= t.
"""

from __future__ import annotations

import math

METRIC_NAMES = ("phase", "classes_seen", "acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn",
                "avg_inc_acc_cnn", "avg_inc_acc_nme", "forgetting_cnn", "train_seconds")


def average_incremental_accuracy(accs: list[float]) -> float:
    """Mean of the per-phase accuracies over phases 0..t, base phase included (the paper's metric)."""
    return sum(accs) / len(accs)


def forgetting(acc: list[list[float]], t: int) -> float:
    """Mean over earlier groups g < t of (best accuracy on g in phases g..t-1 minus accuracy at t)."""
    if t == 0:
        return 0.0
    vals = [max(acc[s][g] for s in range(g, t)) - acc[t][g] for g in range(t)]
    return sum(vals) / len(vals)


def weighted_old_new(acc_row: list[float], group_sizes: list[int]) -> tuple[float, float]:
    """Accuracy on the old groups (size-weighted) and on the newest group of one matrix row."""
    new = acc_row[-1]
    if len(acc_row) == 1:
        return math.nan, new
    old_sizes = group_sizes[: len(acc_row) - 1]
    old = sum(a * n for a, n in zip(acc_row[:-1], old_sizes)) / sum(old_sizes)
    return old, new
