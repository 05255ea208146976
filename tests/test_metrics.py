"""lucir.metrics on a known accuracy matrix (DESIGN §4), all values computed by hand."""

from __future__ import annotations

import math

import pytest

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.metrics import METRIC_NAMES, average_incremental_accuracy, forgetting, weighted_old_new

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
