"""lucir.augment: batched crop/flip/normalise == torchvision's per-sample RandomCrop(32, padding=4) +
RandomHorizontalFlip + ToTensor + Normalize (DESIGN §3 'Schedule', §5)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.augment import ImageAugment, random_crop, random_flip
from lucir.data import CIFAR100_MEAN, CIFAR100_STD


def _images(b=32, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)  # no zeros: padding is visible


def _position_coded(b, h=6, w=6):
    """The same image b times; every pixel holds a distinct value, so every window is distinct."""
    img = (torch.arange(h * w, dtype=torch.int64) + 1).view(1, 1, h, w).to(torch.uint8)
    return img.expand(b, 1, h, w).contiguous()


def _torchvision_candidates(img: torch.Tensor, pad: int, flip: bool):
    """Every output torchvision's RandomCrop(size, padding=pad) (+ RandomHorizontalFlip) can give."""
    h, w = img.shape[-2:]
    padded = TF.pad(img, [pad, pad, pad, pad], fill=0)
    out = []
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            crop = TF.crop(padded, i, j, h, w)
            out.append(((i, j, False), crop))
            if flip:
                out.append(((i, j, True), TF.hflip(crop)))
    return out


def _match(sample: torch.Tensor, candidates):
    hits = [key for key, c in candidates if torch.equal(sample, c)]
    assert len(hits) <= 1 or all(h[:2] == hits[0][:2] for h in hits)
    return hits[0] if hits else None


def test_random_crop_keeps_shape_dtype_and_takes_a_window_of_the_zero_padded_image():
    x = _images(24)
    out = random_crop(x, 4, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = set()
    for b in range(len(x)):
        key = _match(out[b], _torchvision_candidates(x[b], 4, flip=False))
        assert key is not None, f"sample {b} is no crop of the padded input"
        offsets.add(key[:2])
    assert len(offsets) > 1  # random, not a fixed window
    # values are the input's pixels or the zero padding, nothing else
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0}


def test_random_flip_is_a_mirror_or_the_identity():
    x = _images(64)
    out = random_flip(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = [torch.equal(out[b], TF.hflip(x[b])) for b in range(len(x))]
    kept = [torch.equal(out[b], x[b]) for b in range(len(x))]
    assert all(f != k for f, k in zip(flipped, kept))  # exactly one of the two, for every sample
    assert 0 < sum(flipped) < len(x)


def test_same_generator_same_augmentation():
    x = _images(16)
    aug = ImageAugment(CIFAR100_MEAN, CIFAR100_STD, 4, True, torch.device("cpu"))
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batched_augment_matches_torchvision_per_sample_semantics():
    """Every output of ImageAugment equals Normalize(ToTensor(flip?(RandomCrop(32, padding=4)(x)))) for one
    of torchvision's possible crops and flips."""
    x = _images(16)
    aug = ImageAugment(CIFAR100_MEAN, CIFAR100_STD, 4, True, torch.device("cpu"))
    out = aug(x, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float32 and out.shape == x.shape
    for b in range(len(x)):
        found = False
        for _, cand in _torchvision_candidates(x[b], 4, flip=True):
            ref = TF.normalize(cand.float() / 255.0, list(CIFAR100_MEAN), list(CIFAR100_STD))
            if torch.allclose(out[b], ref, atol=1e-5):
                found = True
                break
        assert found, f"sample {b} is not a torchvision RandomCrop+flip output"


def test_all_offsets_and_both_flips_occur_uniformly():
    b, pad = 4000, 2
    x = _position_coded(b)
    gen = torch.Generator().manual_seed(11)
    out = random_flip(random_crop(x, pad, gen), gen)
    cands = _torchvision_candidates(x[0], pad, flip=True)
    stack = torch.stack([c for _, c in cands])  # (50, 1, 6, 6), all distinct
    eq = (out[:, None] == stack[None]).flatten(2).all(2)  # (b, 50)
    assert torch.all(eq.sum(1) == 1), "some output is no crop/flip of the padded input"
    counts = eq.sum(0).float()
    assert torch.all(counts > 0), "some window or flip never occurs"
    expected = b / len(cands)  # 80 per (offset, flip)
    assert counts.max() < 2.0 * expected and counts.min() > 0.4 * expected
    flips = sum(int(counts[k]) for k, (key, _) in enumerate(cands) if key[2])
    assert 0.45 * b < flips < 0.55 * b


def test_normalize_is_totensor_then_normalize():
    x = _images(4)
    aug = ImageAugment(CIFAR100_MEAN, CIFAR100_STD, 4, True, torch.device("cpu"))
    ref = torch.stack([TF.normalize(TF.to_tensor(img.permute(1, 2, 0).numpy()), list(CIFAR100_MEAN),
                                    list(CIFAR100_STD)) for img in x])
    assert torch.allclose(aug.normalize(x), ref, atol=1e-5)


def test_augmented_values_stay_in_the_normalised_range():
    x = torch.cat([torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.full((2, 3, 32, 32), 255, dtype=torch.uint8),
                   _images(12)])
    aug = ImageAugment(CIFAR100_MEAN, CIFAR100_STD, 4, True, torch.device("cpu"))
    out = aug(x, torch.Generator().manual_seed(5))
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)
    assert torch.isclose(out[0], lo[0].expand(3, 32, 32)).all()  # an all-black image stays black (zero padding)


def test_no_padding_and_no_flip_is_the_eval_transform():
    x = _images(8)
    aug = ImageAugment(CIFAR100_MEAN, CIFAR100_STD, 0, False, torch.device("cpu"))
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), aug.normalize(x))


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (3, 3, 16, 20)])
def test_crop_works_for_other_shapes_and_pads(shape):
    x = torch.randint(1, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = random_crop(x, 1, torch.Generator().manual_seed(4))
    assert out.shape == x.shape
    for b in range(shape[0]):
        assert _match(out[b], _torchvision_candidates(x[b], 1, flip=False)) is not None


def test_random_crop_output_has_standard_strides_whatever_the_input_strides():
    """A 1-channel batch from numpy (``x[:, None]``) can have stride 1 on its channel dim; the crop must
    still return standard (NCHW-contiguous) strides, or convolutions switch to channels_last kernels and
    the run's floating-point sums (and results) change with the memory layout of the input."""
    import numpy as np

    x = torch.from_numpy(np.random.RandomState(0).randint(0, 255, (16, 8, 8)).astype(np.uint8)[:, None])
    y = random_crop(x, 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.stride() == torch.empty(y.shape).stride()
