"""Classifier heads (DESIGN §3 'Cosine classifier'; LUCIR_REFERENCE §2.2-§2.4).

``CosineHead``: logits = eta * cos(f, w_c) with one learnable scalar eta (the code's ``sigma``),
initialised to ``eta_init`` and carried from phase to phase.  Rows are split as the reference
``SplitCosineLinear``: ``old`` holds every class of earlier phases (fc1), ``new`` the classes of
the current phase (fc2), so old rows can be frozen as one parameter group.

``LinearHead``: a plain FC layer for the ``finetune``/``baseline`` rungs (new rows appended, old
weights and bias kept).
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def _uniform_rows(n: int, d: int, gen: torch.Generator | None) -> torch.Tensor:
    bound = 1.0 / math.sqrt(d)
    return (torch.rand(n, d, generator=gen) * 2 - 1) * bound


class CosineHead(nn.Module):
    def __init__(self, dim: int, n_old: int, n_new: int, eta_init: float = 1.0,
                 gen: torch.Generator | None = None):
        super().__init__()
        self.dim = dim
        self.old = nn.Parameter(_uniform_rows(n_old, dim, gen))
        self.new = nn.Parameter(_uniform_rows(n_new, dim, gen))
        self.eta = nn.Parameter(torch.tensor(float(eta_init)))

    @property
    def num_classes(self) -> int:
        return self.old.shape[0] + self.new.shape[0]

    def weight(self) -> torch.Tensor:
        return torch.cat([self.old, self.new], 0)

    def forward(self, f: torch.Tensor):
        scores = F.linear(F.normalize(f, dim=1), F.normalize(self.weight(), dim=1))
        return scores, self.eta * scores

    @torch.no_grad()
    def expand(self, n_new: int, rows: torch.Tensor | None = None, gen: torch.Generator | None = None) -> None:
        """Start a phase: every current row becomes old (fc1), ``n_new`` fresh rows (fc2); eta is kept."""
        dev = self.new.device
        self.old = nn.Parameter(self.weight().detach().clone())
        new = rows if rows is not None else _uniform_rows(n_new, self.dim, gen)
        self.new = nn.Parameter(new.to(dev, torch.float32).clone())


class LinearHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, gen: torch.Generator | None = None):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(_uniform_rows(n_classes, dim, gen))
        self.bias = nn.Parameter((torch.rand(n_classes, generator=gen) * 2 - 1) / math.sqrt(dim))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, f: torch.Tensor):
        z = F.linear(f, self.weight, self.bias)
        return z, z

    @torch.no_grad()
    def expand(self, n_new: int, rows: torch.Tensor | None = None, gen: torch.Generator | None = None) -> None:
        dev = self.weight.device
        w_new = _uniform_rows(n_new, self.dim, gen).to(dev)
        b_new = ((torch.rand(n_new, generator=gen) * 2 - 1) / math.sqrt(self.dim)).to(dev)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), w_new], 0))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), b_new], 0))


@torch.no_grad()
def imprint_rows(class_features: list[torch.Tensor], old_rows: torch.Tensor) -> torch.Tensor:
    """Imprinted weights for new classes (reference ``--imprint_weights``, LUCIR_REFERENCE §2.4).

    Row c = normalise(mean_i normalise(f_i)) * mean_j ||old row j||, where f_i are the (eval
    transform) features of all training images of class c.
    """
    avg_norm = old_rows.norm(dim=1).mean()
    rows = [F.normalize(F.normalize(f.float(), dim=1).mean(0), dim=0) * avg_norm for f in class_features]
    return torch.stack(rows)
