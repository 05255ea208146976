"""lucir.metrics on a known accuracy matrix (DESIGN §4), all values computed by hand."""

from __future__ import annotations

import math

import pytest

import lucir_fixtures  # noqa: F401  (one torch thread)
import torch

from lucir.metrics import (METRIC_NAMES, average_incremental_accuracy, backward_transfer, cross_group_shares,
                           forgetting, mean_norm, old_new_norms, topk_accuracy, weighted_old_new)

# acc[t][g]: accuracy after phase t on class group g (g = 0 base group)
ACC = [
    [80.0],
    [60.0, 90.0],
    [70.0, 50.0, 85.0],
    [40.0, 65.0, 75.0, 95.0],
]
GROUP_SIZES = [40, 10, 10, 10]


def test_average_incremental_accuracy_includes_the_base_phase():
    # the paper's metric: mean of the per-phase accuracies 0..t
    assert average_incremental_accuracy([76.86, 69.62, 64.64, 59.26, 55.92, 54.41]) == pytest.approx(63.45, abs=0.005)
    assert average_incremental_accuracy([80.0]) == 80.0
    assert average_incremental_accuracy([80.0, 60.0, 70.0]) == pytest.approx(70.0)


def test_forgetting_on_a_known_matrix():
    assert forgetting(ACC, 0) == 0.0
    # t=1: group 0: best 80 - now 60 = 20
    assert forgetting(ACC, 1) == pytest.approx(20.0)
    # t=2: group 0: max(80, 60) - 70 = 10; group 1: 90 - 50 = 40 -> 25
    assert forgetting(ACC, 2) == pytest.approx(25.0)
    # t=3: g0: max(80,60,70) - 40 = 40; g1: max(90, 50) - 65 = 25; g2: 85 - 75 = 10 -> 25
    assert forgetting(ACC, 3) == pytest.approx(25.0)


def test_forgetting_can_be_negative_when_accuracy_improves():
    assert forgetting([[50.0], [70.0, 90.0]], 1) == pytest.approx(-20.0)


def test_old_new_split_on_a_known_row():
    # row 3: old groups 0..2 weighted by size: (40*40 + 65*10 + 75*10) / 60 = 3000/60 = 50; new = 95
    old, new = weighted_old_new(ACC[3], GROUP_SIZES)
    assert old == pytest.approx(50.0) and new == 95.0
    old, new = weighted_old_new(ACC[1], GROUP_SIZES)
    assert old == pytest.approx(60.0) and new == 90.0
    old, new = weighted_old_new(ACC[0], GROUP_SIZES)
    assert math.isnan(old) and new == 80.0


def test_metric_names_are_the_shared_ones():
    assert set(METRIC_NAMES) == {"phase", "classes_seen", "acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn",
                                 "avg_inc_acc_cnn", "avg_inc_acc_nme", "forgetting_cnn", "train_seconds"}


def test_backward_transfer_on_a_known_3x3_matrix():
    acc = [[90.0], [70.0, 80.0], [60.0, 85.0, 75.0]]
    assert math.isnan(backward_transfer(acc, 0))
    assert backward_transfer(acc, 1) == pytest.approx(70.0 - 90.0)
    # t=2: g0: 60 - 90 = -30; g1: 85 - 80 = +5 -> -12.5
    assert backward_transfer(acc, 2) == pytest.approx(-12.5)
    # forgetting of the same matrix compares with the best earlier accuracy: g0: 90 - 60, g1: 80 - 85
    assert forgetting(acc, 2) == pytest.approx(12.5)
    # on ACC: t=3: g0 40-80, g1 65-90, g2 75-85 -> -25 (here equal to -forgetting, the diagonals being the best)
    assert backward_transfer(ACC, 3) == pytest.approx(-25.0)


# 6 test images, 7 classes: 0..3 old, 4..5 new (6 never seen: ignored by the caller's slice)
LOGITS = torch.tensor([
    # label 0: top-1 right; ranks 0>4>1>2>3>5
    [9.0, 7.0, 6.0, 5.0, 8.0, 1.0],
    # label 1: top-1 is 4 (new): wrong, old predicted as new; 1 ranks 2nd
    [1.0, 8.0, 2.0, 3.0, 9.0, 0.0],
    # label 2: top-1 3 (old, wrong); 2 ranks 6th of 6 -> outside top-5
    [5.0, 4.0, 0.0, 9.0, 3.0, 2.0],
    # label 3: top-1 5 (new): old as new; 3 ranks 5th -> inside top-5
    [6.0, 7.0, 8.0, 2.0, 1.0, 9.0],
    # label 4: right
    [0.0, 1.0, 2.0, 3.0, 9.0, 4.0],
    # label 5: top-1 0 (old): new as old; 5 ranks 2nd
    [9.0, 1.0, 2.0, 3.0, 4.0, 8.0],
])
LABELS = torch.tensor([0, 1, 2, 3, 4, 5])


def test_top5_and_cross_group_shares_on_hand_made_logits():
    assert topk_accuracy(LOGITS, LABELS, 1) == pytest.approx(100 * 2 / 6)
    assert topk_accuracy(LOGITS, LABELS, 5) == pytest.approx(100 * 5 / 6)  # only image 2 misses
    assert topk_accuracy(LOGITS[:, :3], torch.tensor([0, 1, 2, 0, 1, 2]), 5) == 100.0  # k capped at 3 classes
    pred = LOGITS.argmax(1)
    old_as_new, new_as_old = cross_group_shares(pred, LABELS, n_old=4, n_seen=6)
    assert old_as_new == pytest.approx(100 * 2 / 4)  # images 1 and 3 of the 4 old ones
    assert new_as_old == pytest.approx(100 * 1 / 2)  # image 5 of the 2 new ones
    assert all(math.isnan(v) for v in cross_group_shares(pred, LABELS, n_old=0, n_seen=6))


def test_norms_of_old_and_new_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])  # norms 5, 1, 10
    assert mean_norm(w[:2]) == pytest.approx(3.0) and mean_norm(w[2:]) == pytest.approx(10.0)
    assert math.isnan(mean_norm(w[:0]))
    old, new = old_new_norms(w, torch.tensor([0, 1, 2]), n_old=2)
    assert (old, new) == (pytest.approx(3.0), pytest.approx(10.0))
    old, new = old_new_norms(w, torch.tensor([0, 1, 2]), n_old=0)
    assert math.isnan(old) and new == pytest.approx(16 / 3)


def test_score_phase_reports_the_diagnostics_of_a_hand_made_phase():
    """score_phase on fixed features/logits: phase 1 of 4 base + 2 new classes, one image per class."""
    from lucir.config import Config
    from lucir.run import score_phase

    cfg = Config.from_flat(dataset="digits", base_classes=4, phases=3)
    groups = [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    feats = torch.tensor([[3.0, 4.0]] * 4 + [[6.0, 8.0]] * 2)  # old norms 5, new norms 10
    means = torch.nn.functional.normalize(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    head = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 2.0]] * 2)
    acc_cnn, acc_nme = [[100.0]], [[100.0]]
    results = [{"acc_cnn": 100.0, "acc_nme": 100.0}]
    res = score_phase(cfg, 1, groups, [4, 2, 2, 2], results, acc_cnn, acc_nme, (feats, LOGITS, LABELS), None,
                      means, train_seconds=1.0, lambda_t=2.0, eta=1.0, exemplars=6, head_weight=head)
    assert res.acc_cnn == pytest.approx(100 * 2 / 6) and res.acc_old_cnn == 25.0 and res.acc_new_cnn == 50.0
    assert res.top5_cnn == pytest.approx(100 * 5 / 6)
    assert res.old_as_new_cnn == 50.0 and res.new_as_old_cnn == 50.0
    assert res.weight_norm_old == 1.0 and res.weight_norm_new == 2.0
    assert res.feature_norm_old == 5.0 and res.feature_norm_new == 10.0
    assert res.bwt_cnn == pytest.approx(25.0 - 100.0) and res.forgetting_cnn == pytest.approx(75.0)
    # NME: every image has the same direction (0.6, 0.8): all predicted as the one nearest mean
    nearest = int((means @ torch.tensor([0.6, 0.8])).argmax())
    assert res.acc_nme == pytest.approx(100 / 6) and res.top5_nme == pytest.approx(100 * 5 / 6)
    assert res.old_as_new_nme == (100.0 if nearest >= 4 else 0.0)
    assert res.new_as_old_nme == (100.0 if nearest < 4 else 0.0)
    assert res.acc_old_nme == (25.0 if nearest < 4 else 0.0) and res.acc_new_nme == (50.0 if nearest >= 4 else 0.0)
    assert res.bwt_nme == pytest.approx(res.acc_matrix_nme[1][0] - 100.0)
    assert res.forgetting_nme == pytest.approx(100.0 - res.acc_matrix_nme[1][0])
    m = res.metrics()
    assert m["lambda_t"] == 2.0 and "lambda" not in m and "lambda_" not in m


def test_diagnostic_names_are_reported_and_defined_once():
    from lucir import metrics
    from lucir.record import DIAGNOSTIC_METRICS, EXTRA_METRICS, METRICS
    from lucir.run import PhaseResult

    fields = set(PhaseResult.__dataclass_fields__)
    assert set(DIAGNOSTIC_METRICS) <= fields and not set(DIAGNOSTIC_METRICS) & set(METRICS + EXTRA_METRICS)
    assert "lambda_t" in EXTRA_METRICS and "lambda" not in EXTRA_METRICS
    for name in DIAGNOSTIC_METRICS + ("forgetting_cnn",):  # each one documented in lucir.metrics
        assert f"``{name}``" in metrics.__doc__, name
