"""Per-phase metrics (DESIGN §4) and the imbalance diagnostics LUCIR is about (paper Fig. 1-3).

``acc[t][g]`` is the top-1 accuracy (%) after phase t on the test images of class group g
(group 0 = base classes, group g = classes of phase g), for g <= t.  "Old" classes after phase t are
those of groups 0..t-1, "new" ones those of group t (this phase's classes).  All values are computed
after the phase (after CBF, when on) on the test images of the seen classes, from the one evaluation
pass of the run; CNN = argmax of the head's logits, NME = nearest normalised exemplar mean.

Headline metrics (``lucir.record.METRICS``):

* ``acc_cnn`` / ``acc_nme``: top-1 accuracy (%) on all seen classes.
* ``acc_old_cnn`` / ``acc_new_cnn``: top-1 CNN accuracy (%) on the old / new classes' test images (the
  old groups weighted by their test-image counts).  NaN (JSON null) in phase 0 for the old one.
* ``avg_inc_acc_cnn`` / ``avg_inc_acc_nme``: mean of ``acc`` over phases 0..t, base included.
* ``forgetting_cnn`` (``forgetting``): mean over earlier groups g < t of (best accuracy on g in any
  phase s in g..t-1) - (accuracy on g now), in points; 0.0 in phase 0 (no earlier group).

Diagnostics (``lucir.record.DIAGNOSTIC_METRICS``); NaN (JSON null) in phase 0 where they need old classes:

* ``acc_old_nme`` / ``acc_new_nme``: as ``acc_old_cnn`` / ``acc_new_cnn`` for the NME classifier.
* ``top5_cnn`` / ``top5_nme``: top-5 accuracy (%) on all seen classes (top-k with k = min(5, seen
  classes): 100 when at most 5 classes are seen).  NME ranks classes by cosine to the class means.
* ``old_as_new_cnn`` / ``old_as_new_nme``: % of the old classes' test images predicted as one of the new
  classes (right or wrong); ``new_as_old_cnn`` / ``new_as_old_nme``: % of the new classes' test images
  predicted as an old class.  The ambiguity of the paper's Fig. 2: a biased classifier has a large
  ``old_as_new`` and a tiny ``new_as_old``.  NaN in phase 0.
* ``weight_norm_old`` / ``weight_norm_new``: mean L2 norm of the classifier's weight rows (before any
  normalisation: the cosine head's raw rows, the FC head's weight rows, bias excluded) of the old / new
  classes (the magnitude of Fig. 1/3: with a plain FC head new rows grow larger than old ones).
  ``weight_norm_old`` NaN in phase 0.
* ``feature_norm_old`` / ``feature_norm_new``: mean L2 norm of the backbone features (before
  normalisation) of the old / new classes' test images.  ``feature_norm_old`` NaN in phase 0.
* ``forgetting_nme``: ``forgetting`` of the NME accuracy matrix (0.0 in phase 0).
* ``bwt_cnn`` / ``bwt_nme`` (``backward_transfer``; Lopez-Paz & Ranzato 2017): mean over earlier groups
  g < t of acc[t][g] - acc[g][g], in points (negative: forgotten; unlike forgetting it compares with
  the accuracy just after learning g, not the best one).  NaN in phase 0 (no earlier group).
"""

from __future__ import annotations

import math

import torch

from lucir.record import METRICS

#: the columns of ``lucir train``'s per-phase table
METRIC_NAMES = ("phase", "classes_seen", *METRICS)


def average_incremental_accuracy(accs: list[float]) -> float:
    """Mean of the per-phase accuracies over phases 0..t, base phase included (the paper's metric)."""
    return sum(accs) / len(accs)


def forgetting(acc: list[list[float]], t: int) -> float:
    """Mean over earlier groups g < t of (best accuracy on g in phases g..t-1 minus accuracy at t)."""
    if t == 0:
        return 0.0
    vals = [max(acc[s][g] for s in range(g, t)) - acc[t][g] for g in range(t)]
    return sum(vals) / len(vals)


def backward_transfer(acc: list[list[float]], t: int) -> float:
    """BWT after phase t: mean over earlier groups g < t of acc[t][g] - acc[g][g] (NaN when t == 0)."""
    if t == 0:
        return math.nan
    vals = [acc[t][g] - acc[g][g] for g in range(t)]
    return sum(vals) / len(vals)


def weighted_old_new(acc_row: list[float], group_sizes: list[int]) -> tuple[float, float]:
    """Accuracy on the old groups (size-weighted) and on the newest group of one matrix row."""
    new = acc_row[-1]
    if len(acc_row) == 1:
        return math.nan, new
    old_sizes = group_sizes[: len(acc_row) - 1]
    old = sum(a * n for a, n in zip(acc_row[:-1], old_sizes)) / sum(old_sizes)
    return old, new


def pct(hit: torch.Tensor) -> float:
    return 100.0 * float(hit.float().mean()) if hit.numel() else math.nan


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """% of rows whose label is among the ``k`` highest scores (k capped at the number of columns)."""
    k = min(k, scores.shape[1]) if scores.dim() == 2 else 0
    if k == 0 or labels.numel() == 0:
        return math.nan
    top = scores.topk(k, dim=1).indices
    return pct((top == labels[:, None]).any(1))


def cross_group_shares(pred: torch.Tensor, labels: torch.Tensor, n_old: int, n_seen: int) -> tuple[float, float]:
    """(old_as_new, new_as_old): % of old-class images (label < n_old) predicted as a new class
    (n_old <= pred < n_seen), and % of new-class images predicted as an old class (pred < n_old)."""
    if n_old == 0:
        return math.nan, math.nan
    old = labels < n_old
    new = (labels >= n_old) & (labels < n_seen)
    p_old, p_new = pred[old], pred[new]
    return pct((p_old >= n_old) & (p_old < n_seen)), pct(p_new < n_old)


def mean_norm(rows: torch.Tensor) -> float:
    """Mean L2 norm of the rows of a 2-D tensor (NaN when it has none)."""
    return float(rows.float().norm(dim=1).mean()) if rows.shape[0] else math.nan


def old_new_norms(x: torch.Tensor, labels: torch.Tensor, n_old: int) -> tuple[float, float]:
    """Mean L2 norm of the rows of ``x`` whose label is old (< n_old) and of the others."""
    old = labels < n_old
    return mean_norm(x[old]), mean_norm(x[~old])
