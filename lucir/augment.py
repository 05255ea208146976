"""Batched augmentation on the training device (DESIGN §5, after airbench).

Equivalent to torchvision's ``RandomCrop(32, padding=4)`` (zero padding) +
``RandomHorizontalFlip(0.5)`` + ``ToTensor`` + ``Normalize(mean, std)`` applied to each sample,
but done for a whole uint8 batch at once with one gather, so no PIL image or DataLoader worker
is involved.

The other training augmentations of ``Protocol.augment`` (``AUGMENTS`` in ``lucir.config``) work the
same way: ``crop`` is the pad-crop without the flip (digits), ``none`` only normalises, and
``imagenet`` is a batched ``RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3))`` + flip, the
reference's ImageNet train transform (``class_incremental_cosine_imagenet.py``), as one
``torchvision.ops.roi_align`` call.  Pad-crops pad by ``crop_padding(image_size)`` pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lucir.config import check_field


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and take one random HxW window per sample (shape and dtype kept)."""
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    # A strided view of every window, (b, oy, ox, c, h, w), indexed by (sample, oy, ox): one copy of
    # whole rows instead of a per-pixel gather (4.4x faster on a CPU batch of 128, same output).
    sb, sc, sh, sw = xp.stride()
    windows = xp.as_strided((b, 2 * pad + 1, 2 * pad + 1, c, h, w), (sb, sh, sw, sc, sh, sw))
    # standard strides: indexing keeps the input's stride of a size-1 channel dim (digits: N x 1 x 8 x 8
    # from numpy has stride 1 there), which makes convolutions take their channels_last kernels
    return windows[torch.arange(b, device=x.device), oy, ox].clone(memory_format=torch.contiguous_format)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each sample left-right with probability 0.5."""
    mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def crop_padding(image_size: int) -> int:
    """Zero padding of the pad-crop: max(1, round(image_size / 8)), the reference's 4 pixels at 32
    (``RandomCrop(32, padding=4)``) and 1 pixel for 8x8 digits."""
    return max(1, round(image_size / 8))


def augment_settings(mode: str, image_size: int) -> dict:
    """``ImageAugment`` keyword arguments (``pad``, ``flip``, ``resized_crop``) of one ``Protocol.augment``
    mode: imagenet = RandomResizedCrop + flip, cifar = pad-crop + flip, crop = pad-crop, none = nothing."""
    check_field("augment", mode)
    return dict(pad=crop_padding(image_size) if mode in ("cifar", "crop") else 0, flip=mode in ("imagenet", "cifar"),
                resized_crop=mode == "imagenet")


def resized_crop_boxes(b: int, height: int, width: int, gen: torch.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0), tries: int = 10) -> torch.Tensor:
    """``b`` crop windows drawn as ``torchvision.transforms.RandomResizedCrop.get_params`` does, for a batch.

    Per sample: up to ``tries`` draws of an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; the first window (rounded to whole pixels) that fits is taken at a uniform position; if
    none fits, the central crop with the ratio clamped to ``ratio``.  All draws come from ``gen`` (CPU).
    Returns (b, 4) float boxes ``x1, y1, x2, y2`` in pixel-edge coordinates (x2 - x1 = crop width).
    """
    area = float(height * width)
    u = torch.rand(b, tries, generator=gen, dtype=torch.float64)
    v = torch.rand(b, tries, generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * v)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(1)
    rows = torch.arange(b)
    w, h, found = w[rows, first], h[rows, first], ok.any(1)
    # fallback: the central crop, aspect ratio clamped (torchvision's rule)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = float(width), float(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = float(round(height * max(ratio))), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    pos = torch.rand(b, 2, generator=gen, dtype=torch.float64)
    y1 = torch.where(found, torch.floor(pos[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    x1 = torch.where(found, torch.floor(pos[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([x1, y1, x1 + w, y1 + h], 1).float()


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, size: int | tuple[int, int] | None = None,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)) -> torch.Tensor:
    """Batched ``RandomResizedCrop(size, scale, ratio)``: one window per sample (``resized_crop_boxes``),
    resized bilinearly to ``size`` (default: the input's H x W) in one ``roi_align`` call; returns float32
    in the input's value range.  Inside the window this is ``F.interpolate(bilinear, align_corners=False)``
    of the crop; when shrinking, each output pixel averages ceil(crop/size)^2 bilinear samples (an
    antialiasing filter, as torchvision's antialiased resize); at the window's border the neighbouring
    pixels of the image are read instead of clamping to the crop."""
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    out_hw = (h, w) if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    boxes = resized_crop_boxes(b, h, w, gen, scale, ratio)
    boxes = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1).to(x.device)
    return roi_align(x.float(), boxes, out_hw, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


class ImageAugment:
    """uint8 batch -> augmented, normalised float32 batch on the same device.

    ``pad`` > 0: zero-pad ``pad`` pixels and take a random window (``random_crop``); ``flip``: mirror half
    the samples (``random_flip``); ``resized_crop``: ``random_resized_crop`` instead of the pad-crop
    (``augment_settings`` maps ``Protocol.augment`` to these).  The eval transform is ``normalize`` alone.
    """

    def __init__(self, mean, std, pad: int, flip: bool, device: torch.device, resized_crop: bool = False):
        self.pad, self.flip, self.resized_crop = pad, flip, resized_crop
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel; a batch of k members stacked on the channel axis (k x C channels,
        ``lucir.fused``) is normalised member by member."""
        mean, std = self.mean, self.std
        if x.shape[1] != mean.shape[1]:
            k = x.shape[1] // mean.shape[1]
            mean, std = mean.repeat(1, k, 1, 1), std.repeat(1, k, 1, 1)
        return (x.float() - mean) / std

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(x, gen) if self.resized_crop else random_crop(x, self.pad, gen)
        if self.flip:
            x = random_flip(x, gen)
        return self.normalize(x)
