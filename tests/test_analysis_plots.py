"""Figures: valid PNG files, with the series and bars the data asks for, at the values it holds."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_fixtures import make_trial, write_experiment

from analysis import plots
from analysis.results import load_experiment

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def ablation(tmp_path):
    trials = []
    for preset, rung in (("lucir", 2), ("baseline", 0), ("cn", 1)):
        for phases in (2, 3):
            for seed in (0, 1, 2):
                trials.append(make_trial(f"{preset}{phases}{seed}", preset=preset, phases=phases, seed=seed,
                                         acc=50.0 + 5 * rung - phases + 2 * seed))
    trials.append(make_trial("one", preset="finetune", phases=3, seed=0, acc=30.0))      # a single seed
    trials.append(make_trial("stopped", preset="finetune", phases=2, seed=0, done=1))     # never drawn
    return load_experiment(write_experiment(tmp_path / "exp", trials))


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG and path.stat().st_size > 1000


def test_accuracy_curves_one_figure_per_protocol_one_line_per_preset(ablation, tmp_path):
    figs = dict(plots.accuracy_figures(ablation))
    assert set(figs) == {"acc_digits_b4_2_phases_5_class.png", "acc_digits_b4_3_phases_5_class.png"}
    ax = figs["acc_digits_b4_3_phases_5_class.png"].axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4 * 2                                # 4 presets, CNN solid + NME dashed
    assert [ln.get_linestyle() for ln in lines[:2]] == ["-", "--"]
    assert [ln.get_label().split(" ")[0] for ln in lines[::2]] == ["finetune", "baseline", "cn", "lucir"]
    lucir = lines[6]
    assert list(lucir.get_xdata()) == [4, 6, 8, 10]           # classes seen after each phase
    assert np.allclose(lucir.get_ydata(), 50 + 10 - 3 + 2)     # mean over seeds 0, 1, 2
    assert len(ax.collections) == 3                           # ± std bands; none for the single-seed preset
    band = ax.collections[-1].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.max(), 59.0 + 2.0) and np.isclose(band.min(), 59.0 - 2.0)
    only_cnn = dict(plots.accuracy_figures(ablation, nme=False))
    assert len(only_cnn["acc_digits_b4_3_phases_5_class.png"].axes[0].get_lines()) == 4
    paths = plots.accuracy_curves(ablation, tmp_path / "fig")
    assert len(paths) == 2 and all(_is_png(p) for p in paths)
    assert not list((tmp_path / "fig").glob(".*"))            # written atomically, no temporary left


def test_ablation_bars_per_rung_and_phase_count(ablation, tmp_path):
    (name, fig), = plots.ablation_figures(ablation)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 3 * 2 + 1                             # 3 rungs x 2 phase counts + finetune at 3 phases
    heights = sorted(round(b.get_height(), 6) for b in bars)
    assert heights == sorted([50.0, 49.0, 55.0, 54.0, 60.0, 59.0, 30.0])  # 50 + 5 rung - phases + 2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2 phases", "3 phases"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["finetune", "baseline", "cn", "lucir"]
    paths = plots.ablation_bars(ablation, tmp_path)
    assert [p.name for p in paths] == [name] and _is_png(paths[0])


def test_search_history_and_parameter_slices(tmp_path):
    accs = [55.0, 63.0, 58.0, 61.0, 66.0]
    trials = [make_trial(f"s{i}", margin=0.1 + 0.2 * i, K=1 + i % 2, acc=a) for i, a in enumerate(accs)]
    trials.append(make_trial("p", margin=0.5, acc=90.0, done=2, status="PRUNED"))
    exp = write_experiment(tmp_path / "exp", trials, kind="search")
    import os
    for i in range(len(accs)):                                # completion order = record time
        os.utime(exp / "trials" / f"s{i}.json", (1_000_000 + i, 1_000_000 + i))
    df = load_experiment(exp)
    fig = plots.search_history_figure(df)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1                           # the running best
    assert list(ax.get_lines()[0].get_ydata()) == [55.0, 63.0, 63.0, 63.0, 66.0]
    assert list(ax.collections[0].get_offsets()[:, 1]) == accs  # one point per finished trial, pruned not drawn
    assert "1 not finished" in ax.get_title()
    fig = plots.param_slices_figure(df, params=["margin", "K"])
    panels = [a for a in fig.axes if a.get_xlabel() in ("margin", "K")]
    assert len(panels) == 2
    assert all(len(a.collections[0].get_offsets()) == 5 for a in panels)
    paths = plots.search_history(df, tmp_path / "f") + plots.param_slices(df, tmp_path / "f", params=["margin", "K"])
    assert [p.name for p in paths] == ["search_history.png", "param_slices.png"] and all(map(_is_png, paths))


def test_many_configurations_draw_only_the_best(tmp_path):
    trials = [make_trial(f"m{i}", margin=round(0.05 * i, 2), acc=40.0 + i) for i in range(12)]
    (_, fig), = plots.accuracy_figures(load_experiment(write_experiment(tmp_path / "exp", trials)),
                                       nme=False, max_series=4)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4
    assert sorted(ln.get_ydata()[0] for ln in ax.get_lines()) == [48.0, 49.0, 50.0, 51.0]
    assert "best 4 of 12 configurations" in ax.get_title()


def test_nothing_finished_draws_nothing(tmp_path):
    df = load_experiment(write_experiment(tmp_path / "exp", [make_trial("a", done=1)]))
    assert plots.accuracy_curves(df, tmp_path / "f") == []
    assert plots.ablation_bars(df, tmp_path / "f") == []
    assert plots.search_history(df, tmp_path / "f") == []
    assert plots.param_slices(df, tmp_path / "f", params=["margin"]) == []
