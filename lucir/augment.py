"""Batched augmentation on the training device (DESIGN §5, after airbench).

Equivalent to torchvision's ``RandomCrop(32, padding=4)`` (zero padding) +
``RandomHorizontalFlip(0.5)`` + ``ToTensor`` + ``Normalize(mean, std)`` applied to each sample,
but done for a whole uint8 batch at once with one gather, so no PIL image or DataLoader worker
is involved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and take one random HxW window per sample (shape and dtype kept)."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[bi, ci, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability 0.5."""
    mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


class ImageAugment:
    """uint8 batch -> augmented, normalised float32 batch on the same device."""

    def __init__(self, mean, std, pad: int, flip: bool, device: torch.device):
        self.pad, self.flip = pad, flip
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_crop(x, self.pad, gen)
        if self.flip:
            x = random_flip(x, gen)
        return self.normalize(x)
