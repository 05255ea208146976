"""lucir.losses against hand-computed values (DESIGN §3 'Losses', LUCIR_REFERENCE §3)."""

from __future__ import annotations

import math

import pytest
import torch

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.losses import knowledge_distillation, less_forget, margin_ranking, mimic_scores

# 2 old classes (0, 1) and 2 new classes (2, 3)
SCORES = [
    [0.9, 0.1, 0.5, 0.3],   # y=0 (old): gt 0.9; top-2 new 0.5, 0.3 -> relu(.5-.9+.5)=0.1, relu(.5-.9+.3)=0
    [0.2, 0.4, 0.6, -0.3],  # y=1 (old): gt 0.4; top-2 new 0.6, -0.3 -> relu(.5-.4+.6)=0.7, relu(.5-.4-.3)=0
    [0.0, 0.9, 0.1, 0.2],   # y=2 (new): ignored
    [0.8, 0.7, -0.5, 0.0],  # y=3 (new): ignored
]
Y = [0, 1, 2, 3]

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def _scores():
    return torch.tensor(SCORES, requires_grad=True)


def test_margin_ranking_by_hand():
    s, y = _scores(), torch.tensor(Y)
    # mean over (2 old samples x K=2) pairs: (0.1 + 0 + 0.7 + 0) / 4
    assert float(margin_ranking(s, y, 2, 0.5, 2)) == pytest.approx(0.2, abs=1e-6)
    # K=1: (0.1 + 0.7) / 2
    assert float(margin_ranking(s, y, 2, 0.5, 1)) == pytest.approx(0.4, abs=1e-6)
    # m=0.2, K=1: relu(.2-.9+.5)=0, relu(.2-.4+.6)=0.4 -> 0.2
    assert float(margin_ranking(s, y, 2, 0.2, 1)) == pytest.approx(0.2, abs=1e-6)


def test_margin_ranking_gradient_only_reaches_old_class_samples():
    s, y = _scores(), torch.tensor(Y)
    margin_ranking(s, y, 2, 0.5, 2).backward()
    g = s.grad
    assert torch.all(g[2:] == 0), "new-class samples must not receive a margin-ranking gradient"
    # sample 0: active pair (gt 0, neg 2); sample 1: active pair (gt 1, neg 2); each pair weighs 1/4
    expect = torch.zeros(4, 4)
    expect[0, 0], expect[0, 2] = -0.25, 0.25
    expect[1, 1], expect[1, 2] = -0.25, 0.25
    assert torch.allclose(g, expect)


def test_margin_ranking_negatives_are_new_classes_only():
    # the non-ground-truth OLD class scores highest, but only new classes are negatives (not AMR)
    s = torch.tensor([[0.6, 0.99, 0.0, -0.2]], requires_grad=True)
    loss = margin_ranking(s, torch.tensor([0]), 2, 0.5, 2)
    assert float(loss) == pytest.approx(0.0, abs=1e-7)  # relu(.5-.6+0), relu(.5-.6-.2)
    loss.backward()
    assert float(s.grad[0, 1]) == 0.0


def test_changing_new_class_samples_does_not_change_margin_ranking():
    y = torch.tensor(Y)
    a = margin_ranking(torch.tensor(SCORES), y, 2, 0.5, 2)
    changed = torch.tensor(SCORES)
    changed[2:] = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-0.7, 0.3, 0.99, -0.99]])
    b = margin_ranking(changed, y, 2, 0.5, 2)
    assert float(a) == float(b)
    # adding more new-class samples does not change it either (the mean is over old samples only)
    c = margin_ranking(torch.cat([changed, changed[2:]]), torch.cat([y, y[2:]]), 2, 0.5, 2)
    assert float(c) == pytest.approx(float(a), abs=1e-7)


def test_margin_ranking_is_zero_with_a_graph_without_old_samples():
    s = torch.tensor(SCORES[2:], requires_grad=True)
    loss = margin_ranking(s, torch.tensor(Y[2:]), 2, 0.5, 2)
    assert float(loss) == 0.0
    assert loss.requires_grad
    loss.backward()  # adding it to the total loss must not break backward
    assert torch.all(s.grad == 0)


def test_less_forget_is_mean_one_minus_cosine():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    f_ref = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], requires_grad=True)
    # cosines 1, 1/sqrt(2), -1 -> (0 + (1 - 1/sqrt 2) + 2) / 3
    expect = (0.0 + (1 - 1 / math.sqrt(2)) + 2.0) / 3
    loss = less_forget(f, f_ref)
    assert float(loss) == pytest.approx(expect, abs=1e-6)
    loss.backward()
    assert f_ref.grad is None, "the frozen model's features must be detached"
    assert f.grad is not None and float(f.grad.abs().sum()) > 0


def test_less_forget_is_scale_invariant():
    f = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    r = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    assert float(less_forget(f * 3.0, r * 0.1)) == pytest.approx(float(less_forget(f, r)), abs=1e-6)
    assert float(less_forget(f, f)) == pytest.approx(0.0, abs=1e-6)


def test_knowledge_distillation_by_hand():
    # sample 1, old classes [0, 1] (class 2 is new and ignored):
    #   z/T = [1, 0], z*/T = [0, 1] -> p = softmax([1, 0]), q = softmax([0, 1]) = reversed p
    #   KL(q || p) = q0 log(q0/p0) + q1 log(q1/p1) = -q0 + q1 (the log-ratios are exactly -1, +1)
    #              = (e - 1) / (e + 1) = tanh(1/2)
    # sample 2: identical old logits -> 0. Batch mean, times T^2 = 4, times beta = 0.25.
    z = torch.tensor([[2.0, 0.0, 5.0], [1.0, 3.0, -2.0]])
    z_ref = torch.tensor([[0.0, 2.0, 9.0], [1.0, 3.0, 7.0]])
    expect = (math.tanh(0.5) + 0.0) / 2 * 4 * 0.25
    assert float(knowledge_distillation(z, z_ref, 2, T=2.0, beta=0.25)) == pytest.approx(expect, abs=1e-6)
    # beta scales linearly; a shift of all logits changes nothing
    assert float(knowledge_distillation(z, z_ref, 2, 2.0, 1.0)) == pytest.approx(4 * expect, abs=1e-6)
    assert float(knowledge_distillation(z + 3.0, z_ref, 2, 2.0, 0.25)) == pytest.approx(expect, abs=1e-6)


def test_mimic_scores_by_hand():
    s = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.1, 0.1]])
    s_ref = torch.tensor([[0.3, 0.2, -0.4], [0.1, 0.1, 0.6]])
    # old classes 0, 1: squared differences 0.04, 0, 0, 0 -> MSE 0.01, times N_old = 2
    assert float(mimic_scores(s, s_ref, 2)) == pytest.approx(0.02, abs=1e-7)


# ----------------------------------------------------------------------------- the phase objective (learner.phase_loss)
def _batch(n_old=4, n_seen=6, b=10, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    f, f_ref = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    s = torch.rand(b, n_seen, generator=g) * 2 - 1
    s_ref = torch.rand(b, n_old, generator=g) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 5, 4, 5, 0, 5])[:b]
    return (f, s, 3.0 * s), (f_ref, s_ref, 3.0 * s_ref), y


def _ctx(cfg, phase):
    from lucir.learner import PhaseContext

    p = cfg.protocol
    return PhaseContext(phase, p.seen_classes(phase - 1) if phase else 0, p.seen_classes(phase),
                        cfg.lambda_at(phase) if phase else 0.0)


@pytest.mark.parametrize("preset", ["finetune", "baseline", "cn", "cn_lf", "lucir", "joint"])
def test_phase_loss_is_the_sum_of_the_terms_each_rung_switches_on(preset):
    import torch.nn.functional as F

    from lucir.config import Config
    from lucir.learner import phase_loss

    cfg = Config.from_flat(dataset="digits", preset=preset, mr_weight=2.0, lambda_base=3.0)
    out, ref, y = _batch()
    ce = F.cross_entropy(out[2], y)
    lam = 3.0 * math.sqrt(4 / 2)
    assert cfg.lambda_at(1) == pytest.approx(lam if cfg.method.adaptive_lambda else 3.0)
    expect = {
        "finetune": ce,
        "baseline": ce + knowledge_distillation(out[2], ref[2], 4, 2.0, 0.25),
        "cn": ce + mimic_scores(out[1], ref[1], 4),
        "cn_lf": ce + lam * less_forget(out[0], ref[0]),
        "lucir": ce + lam * less_forget(out[0], ref[0]) + 2.0 * margin_ranking(out[1], y, 4, 0.5, 2),
        "joint": ce,
    }[preset]
    got = phase_loss(cfg, _ctx(cfg, 1), out, ref, y)
    assert float(got) == pytest.approx(float(expect), rel=1e-6)
    # the base phase is cross-entropy alone, whatever the rung
    assert float(phase_loss(cfg, _ctx(cfg, 0), out, None, y)) == pytest.approx(float(ce), rel=1e-6)
