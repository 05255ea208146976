"""Exemplar memory: herding selection, budgets and NME class means (DESIGN §3 'Exemplars';
LUCIR_REFERENCE §5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def herding(features: torch.Tensor, m: int, max_iter: int = 1000) -> torch.Tensor:
    """Rank up to ``m`` samples of one class by the iCaRL herding rule, as the reference code does.

    ``features`` (n x d) are L2-normalised.  mu = mean feature; w <- mu; repeat: i* = argmax <w, phi_i>;
    if i* is not ranked yet it gets the next rank; w <- w + mu - phi_{i*}; stop when ``m`` distinct
    samples are ranked or after ``max_iter`` iterations.  This greedily picks the sample that brings
    the running mean of the chosen set closest to the class mean.  Returns positions in ``features``
    in the order they were picked.
    """
    n = features.shape[0]
    m = min(m, n)
    feats = features.float()
    mu = feats.mean(0)
    w = mu.clone()
    picked: list[int] = []
    seen = torch.zeros(n, dtype=torch.bool)
    it = 0
    while len(picked) < m and it < max_iter:
        i = int(torch.argmax(feats @ w))
        if not seen[i]:
            seen[i] = True
            picked.append(i)
        w = w + mu - feats[i]
        it += 1
    return torch.tensor(picked, dtype=torch.int64)


class Memory:
    """Herding ranks per class (global train indices, best first), kept for ever once chosen.

    The budget is either a fixed number per class or a fixed total shared equally among the seen
    classes; a smaller quota keeps each class's herding prefix (reference ``--fix_budget``).
    """

    def __init__(self, ranks: dict[int, list[int]] | None = None):
        self.ranks: dict[int, list[int]] = {int(k): list(v) for k, v in (ranks or {}).items()}

    def add(self, cls: int, ranked_indices: torch.Tensor) -> None:
        self.ranks[int(cls)] = [int(i) for i in ranked_indices]

    def indices(self, quota: int, classes=None) -> torch.Tensor:
        classes = sorted(self.ranks) if classes is None else classes
        out = [i for c in classes for i in self.ranks[c][:quota]]
        return torch.tensor(out, dtype=torch.int64)

    def per_class(self, quota: int) -> dict[int, torch.Tensor]:
        return {c: torch.tensor(r[:quota], dtype=torch.int64) for c, r in sorted(self.ranks.items())}

    def to_dict(self) -> dict[int, list[int]]:
        return {c: list(r) for c, r in self.ranks.items()}


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                flipped: torch.Tensor | None = None) -> torch.Tensor:
    """NME class means: mean of the L2-normalised exemplar features (averaged with the mean of the
    flipped exemplars' features when given, as the reference does), then L2-normalised.

    ``Method.class_mean_flip`` decides what ``flipped`` holds: "channels" (the default for CIFAR-100)
    is the reference's CIFAR "flip", ``[:, :, :, ::-1]`` on NHWC uint8 arrays in
    ``class_incremental_cosine_cifar100.py``, which reverses the colour channels (RGB -> BGR) before
    normalising; the published NME numbers (63.12 / 60.12) come from it.  "mirror" is a true
    horizontal flip (as PODNet does); "none" (digits, ImageFolder: the reference's ImageNet driver
    uses no flip) passes nothing."""
    f = F.normalize(features.float(), dim=1)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(f.device)
    means = _class_sums(f, labels, num_classes) / counts[:, None]
    if flipped is not None:
        g = F.normalize(flipped.float(), dim=1)
        means2 = _class_sums(g, labels, num_classes) / counts[:, None]
        means = (means + means2) / 2  # reference: (D.alph + D2.alph) / 2, then normalised
    return F.normalize(means, dim=1)


def _class_sums(f: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class sums of the rows of ``f``: ``index_add_`` (CUDA's uses atomics, so with
    ``Runtime.deterministic`` on a GPU a one-hot matrix product, which has a deterministic kernel)."""
    if f.is_cuda and torch.are_deterministic_algorithms_enabled():
        return F.one_hot(labels, num_classes).to(f.dtype).T @ f
    return torch.zeros(num_classes, f.shape[1], device=f.device).index_add_(0, labels, f)


def nme_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """cos(f, mu_c) for every image and class mean (N x classes): NME ranks classes by it."""
    return F.normalize(features.float(), dim=1) @ means.T


def nme_predict(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Nearest mean of normalised features: argmax cos(f, mu_c) (= argmin ||f/|f| - mu_c||)."""
    return nme_scores(features, means).argmax(1)
