"""lucir.heads: cosine head (logits = eta * cos), old/new row split, imprinting (LUCIR_REFERENCE §2.2-§2.4),
plain linear head for the lower rungs."""

from __future__ import annotations

import math

import pytest
import torch

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.heads import CosineHead, LinearHead, imprint_rows

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def test_cosine_head_scores_and_logits_by_hand():
    head = CosineHead(2, 1, 1, eta_init=2.0)
    with torch.no_grad():
        head.old.copy_(torch.tensor([[1.0, 0.0]]))
        head.new.copy_(torch.tensor([[0.0, 2.0]]))  # the row's norm does not matter
    scores, logits = head(torch.tensor([[3.0, 4.0], [-1.0, 0.0]]))
    assert torch.allclose(scores, torch.tensor([[0.6, 0.8], [-1.0, 0.0]]))
    assert torch.allclose(logits, torch.tensor([[1.2, 1.6], [-2.0, 0.0]]))
    assert head.num_classes == 2


def test_eta_is_one_learnable_scalar_initialised_to_eta_init():
    head = CosineHead(8, 3, 2, eta_init=1.0)
    assert head.eta.shape == () and head.eta.requires_grad and float(head.eta) == 1.0
    f = torch.randn(4, 8)
    _, z = head(f)
    z.sum().backward()
    assert head.eta.grad is not None and float(head.eta.grad) != 0.0


def test_expand_makes_every_row_old_adds_new_rows_and_keeps_eta():
    g = torch.Generator().manual_seed(0)
    head = CosineHead(4, 2, 3, eta_init=1.0, gen=g)
    with torch.no_grad():
        head.eta.fill_(7.5)
    before = head.weight().detach().clone()
    rows = torch.randn(2, 4)
    head.expand(2, rows)
    assert torch.equal(head.old.detach(), before)  # fc1 = all earlier classes, in order
    assert torch.equal(head.new.detach(), rows)
    assert head.num_classes == 7 and float(head.eta) == 7.5
    assert head.old.requires_grad and head.new.requires_grad
    head.expand(3, None, torch.Generator().manual_seed(1))  # no imprint: random rows U(-1/sqrt(d), 1/sqrt(d))
    assert head.old.shape == (7, 4) and head.new.shape == (3, 4)
    assert torch.equal(head.old.detach()[:5], before) and torch.equal(head.old.detach()[5:], rows)
    assert float(head.new.detach().abs().max()) <= 1 / math.sqrt(4)


def test_imprint_rows_by_hand():
    # class A: features (3, 4) and (0, 2) -> normalised (0.6, 0.8), (0, 1) -> mean (0.3, 0.9), |.| = sqrt(0.9)
    # class B: one feature (-5, 0) -> (-1, 0)
    # old rows (3, 4) and (0, 1): norms 5 and 1 -> mean norm 3
    feats = [torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([[-5.0, 0.0]])]
    old = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    rows = imprint_rows(feats, old)
    expect_a = 3.0 * torch.tensor([0.3, 0.9]) / math.sqrt(0.9)
    expect_b = torch.tensor([-3.0, 0.0])
    assert torch.allclose(rows, torch.stack([expect_a, expect_b]), atol=1e-6)


def test_imprint_uses_the_mean_of_normalised_features_not_the_normalised_mean():
    # a feature's length must not weigh in: scaling one feature leaves the row unchanged
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    old = torch.ones(3, 2)
    a = imprint_rows([f], old)
    b = imprint_rows([f * torch.tensor([[100.0], [1.0]])], old)
    assert torch.allclose(a, b)
    assert torch.allclose(a.norm(dim=1), old.norm(dim=1).mean().expand(1))


def test_imprinted_rows_have_the_mean_old_norm_and_the_class_mean_direction_random():
    g = torch.Generator().manual_seed(3)
    old = torch.randn(6, 16, generator=g) * torch.rand(6, 1, generator=g) * 4
    feats = [torch.randn(n, 16, generator=g) + 2.0 for n in (5, 9, 1)]
    rows = imprint_rows(feats, old)
    assert torch.allclose(rows.norm(dim=1), old.norm(dim=1).mean().expand(3), atol=1e-5)
    for r, f in zip(rows, feats):
        mean_dir = torch.nn.functional.normalize(f / f.norm(dim=1, keepdim=True), dim=1).mean(0)
        assert torch.allclose(r / r.norm(), mean_dir / mean_dir.norm(), atol=1e-5)


def test_linear_head_expand_appends_rows_and_keeps_old_weights_and_bias():
    g = torch.Generator().manual_seed(0)
    head = LinearHead(5, 3, g)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    f = torch.randn(2, 5)
    s, z = head(f)
    assert torch.equal(s, z) and torch.allclose(z, f @ w.T + b)
    head.expand(2, None, g)
    assert head.num_classes == 5
    assert torch.equal(head.weight.detach()[:3], w) and torch.equal(head.bias.detach()[:3], b)
    _, z2 = head(f)
    assert torch.allclose(z2[:, :3], z, atol=1e-6)


@pytest.mark.parametrize("n_old, n_new", [(0, 4), (4, 2)])
def test_cosine_scores_are_bounded(n_old, n_new):
    head = CosineHead(8, n_old, n_new, eta_init=3.0)
    s, z = head(torch.randn(10, 8) * 50)
    assert s.shape == (10, n_old + n_new)
    assert (s.abs() <= 1 + 1e-5).all() and torch.allclose(z, 3.0 * s)
