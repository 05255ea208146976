"""Figures: PNG + PDF + SVG files with the series and bars the data asks for, at the values it holds, in the
report style (fixed preset colours, fonts >= 8 pt, bars from zero, log axes for log domains)."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_fixtures import make_trial, write_experiment

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from analysis import plots, style
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


def _written(paths, stem):
    """PNG, PDF and SVG of ``stem``, each a real file of its format."""
    by = {p.suffix: p for p in paths if p.stem == stem}
    assert set(by) == {".png", ".pdf", ".svg"}, paths
    assert _is_png(by[".png"]) and by[".pdf"].read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in by[".svg"].read_bytes()[:2000]
    return by


def _fonts_at_least(fig, size=style.MIN_FONT):
    fig.canvas.draw()
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert sizes and min(sizes) >= size, min(sizes)


def test_accuracy_curves_one_figure_per_protocol_cnn_and_nme_panels(ablation, tmp_path):
    figs = dict(plots.accuracy_figures(ablation))
    assert set(figs) == {"acc_digits_b4_2_phases_5_class", "acc_digits_b4_3_phases_5_class"}
    fig = figs["acc_digits_b4_3_phases_5_class"]
    cnn, nme = fig.axes[:2]
    assert cnn.get_title(loc="left").startswith("CNN") and nme.get_title(loc="left").startswith("NME")
    assert fig.get_figwidth() == pytest.approx(style.COLUMN)
    for ax, acc in ((cnn, 59.0), (nme, 58.0)):
        lines = ax.get_lines()
        assert [ln.get_label().split(" ")[0] for ln in lines] == ["finetune", "baseline", "cn", "lucir"]
        assert list(ax.get_xticks()) == [4, 6, 8, 10]            # exactly the class counts of the data
        lucir = lines[3]
        assert list(lucir.get_xdata()) == [4, 6, 8, 10]
        assert np.allclose(lucir.get_ydata(), acc)                # mean over seeds 0, 1, 2
        assert len(ax.collections) == 3                           # ± std bands; none for the single-seed preset
        band = ax.collections[-1].get_paths()[0].vertices[:, 1]
        assert np.isclose(band.max(), acc + 2.0) and np.isclose(band.min(), acc - 2.0)
    assert not cnn.get_legend() and len(fig.legends) == 1        # one legend, outside the axes
    _fonts_at_least(fig)
    only_cnn = dict(plots.accuracy_figures(ablation, nme=False))["acc_digits_b4_3_phases_5_class"]
    assert len(only_cnn.axes) == 1 and len(only_cnn.axes[0].get_lines()) == 4
    paths = plots.accuracy_curves(ablation, tmp_path / "fig")
    assert len(paths) == 2 * 3
    _written(paths, "acc_digits_b4_3_phases_5_class")
    assert not list((tmp_path / "fig").glob(".*"))            # written atomically, no temporary left
    plt.close("all")


def test_ablation_bars_start_at_zero_legend_outside(ablation, tmp_path):
    (name, fig), = plots.ablation_figures(ablation)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == 3 * 2 + 1                             # 3 rungs x 2 phase counts + finetune at 3 phases
    heights = sorted(round(b.get_height(), 6) for b in bars)
    assert heights == sorted([50.0, 49.0, 55.0, 54.0, 60.0, 59.0, 30.0])  # 50 + 5 rung - phases + 2
    assert all(b.get_y() == 0 for b in bars) and ax.get_ylim()[0] == 0   # bars from zero, not truncated
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2 phases", "3 phases"]
    assert ax.get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["finetune", "baseline", "cn", "lucir"]
    fig.canvas.draw()                                         # the legend lies outside the axes: hides no bar
    leg, box = fig.legends[0].get_window_extent(), ax.get_window_extent()
    assert leg.y1 <= box.y0 or leg.y0 >= box.y1
    _fonts_at_least(fig)
    paths = plots.ablation_bars(ablation, tmp_path)
    _written(paths, name)
    plt.close("all")


def test_a_preset_keeps_its_colour_and_marker_in_every_figure(ablation):
    (_, acc), = [kv for kv in plots.accuracy_figures(ablation) if kv[0].endswith("3_phases_5_class")]
    (_, abl), = plots.ablation_figures(ablation)
    line = {ln.get_label().split(" ")[0]: ln for ln in acc.axes[0].get_lines()}
    from matplotlib.container import BarContainer

    bars = {c.get_label(): c.patches[0] for c in abl.axes[0].containers if isinstance(c, BarContainer)}
    for preset in ("finetune", "baseline", "cn", "lucir"):
        want = to_rgba(style.preset_color(preset))
        assert to_rgba(line[preset].get_color()) == want and bars[preset].get_facecolor() == want
        assert line[preset].get_marker() == style.preset_style(preset)["marker"]
    # the ladder's colours are fixed entries, distinct; unknown presets hash to a stable fallback
    ladder = [style.preset_color(p) for p in ("finetune", "baseline", "cn", "cn_lf", "lucir", "lucir_cbf", "joint")]
    assert len(set(ladder)) == 7 and style.preset_color("lucir") == style.PRESETS["lucir"]["color"]
    assert style.preset_style("my_variant") == style.preset_style("my_variant")
    assert style.preset_color("my_variant") in style.FALLBACK_COLORS
    plt.close("all")


def test_search_history_and_parameter_slices(tmp_path):
    accs = [55.0, 63.0, 58.0, 61.0, 66.0]
    trials = [make_trial(f"s{i}", margin=0.1 + 0.2 * i, K=1 + i % 2, lambda_base=0.9053627033315537 * (i + 1),
                         acc=a) for i, a in enumerate(accs)]
    trials.append(make_trial("p", margin=0.5, acc=90.0, done=2, status="PRUNED"))
    meta = {"searched": {"margin": {"kind": "uniform", "low": 0.0, "high": 1.0, "log": False},
                         "K": {"kind": "randint", "low": 1, "high": 2, "log": False},
                         "lambda_base": {"kind": "loguniform", "low": 0.5, "high": 50.0, "log": True}}}
    exp = write_experiment(tmp_path / "exp", trials, kind="search", meta=meta)
    import os
    for i in range(len(accs)):                                # completion order = record time
        os.utime(exp / "trials" / f"s{i}.json", (1_000_000 + i, 1_000_000 + i))
    os.utime(exp / "trials" / "p.json", (1_000_010, 1_000_010))
    df = load_experiment(exp)
    fig = plots.search_history_figure(df)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1                           # the running best
    assert list(ax.get_lines()[0].get_ydata())[:5] == [55.0, 63.0, 63.0, 63.0, 66.0]
    assert list(ax.collections[0].get_offsets()[:, 0]) == [1, 2, 3, 4, 5]   # trial numbers 1..N
    assert list(ax.collections[0].get_offsets()[:, 1]) == accs
    pruned = ax.collections[1]                                # the pruned trial: its own marker, number 6
    assert list(pruned.get_offsets()[0]) == [6, 90.0] and "pruned" in pruned.get_label()
    assert "1 pruned" in ax.get_title()
    _fonts_at_least(fig)
    fig = plots.param_slices_figure(df, meta=meta)
    panels = {a.get_xlabel().split(" ")[0]: a for a in fig.axes if a.get_xlabel()}
    assert set(panels) >= {"lambda_base", "margin", "K"}
    assert panels["lambda_base"].get_xscale() == "log" and panels["margin"].get_xscale() == "linear"
    assert all(len(panels[p].collections[0].get_offsets()) == 5 for p in ("lambda_base", "margin", "K"))
    colours = panels["margin"].collections[0]
    assert list(colours.get_array()) == [1, 2, 3, 4, 5] and colours.norm.vmin == 1 and colours.norm.vmax == 6
    _fonts_at_least(fig)
    # the legacy text param_space: a loguniform domain is log too
    assert plots.is_log_param("lambda_base", {"param_space": {"lambda_base": "loguniform(0.5, 50.0)"}})
    assert not plots.is_log_param("margin", {"param_space": {"margin": "uniform(0.0, 1.0)"}})
    # 3 significant digits in legends
    (_, acc), = plots.accuracy_figures(df, nme=False)
    texts = [t.get_text() for t in acc.legends[0].get_texts()]
    assert any("lambda_base=0.905" in t for t in texts) and not any("0.9053" in t for t in texts)
    paths = plots.search_history(df, tmp_path / "f") + plots.param_slices(df, tmp_path / "f", meta=meta)
    _written(paths, "search_history")
    _written(paths, "param_slices")
    plt.close("all")


def test_optuna_plots_from_the_study_importances_only_with_enough_trials(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    d = {"margin": FloatDistribution(0.0, 1.0), "lambda_base": FloatDistribution(0.5, 50.0, log=True)}
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(params={"margin": 0.1 * i, "lambda_base": 0.5 * 2 ** i},
                                                  distributions=d, value=50.0 + i,
                                                  intermediate_values={0: 50.0, 1: 50.0 + i}))
    figs, notes = plots.optuna_figures(study)
    names = [n for n, _ in figs]
    assert names == ["optuna_intermediate", "optuna_timeline"]  # history and slices: ours (one numbering)
    assert any("importance" in n and "at least 20" in n for n in notes)
    for _, fig in figs:
        _fonts_at_least(fig)
    inter = dict(figs)["optuna_intermediate"].axes[0]
    assert inter.xaxis.get_major_formatter()(1, 0) == "0"       # Optuna's step 1 is the base phase, phase 0
    plt.close("all")


def test_many_configurations_draw_only_the_best(tmp_path):
    trials = [make_trial(f"m{i}", margin=round(0.05 * i, 2), acc=40.0 + i) for i in range(12)]
    (_, fig), = plots.accuracy_figures(load_experiment(write_experiment(tmp_path / "exp", trials)),
                                       nme=False, max_series=4)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 4
    assert sorted(ln.get_ydata()[0] for ln in ax.get_lines()) == [48.0, 49.0, 50.0, 51.0]
    assert "best 4 of 12 configurations" in ax.figure.get_suptitle()


def test_nothing_finished_draws_nothing(tmp_path):
    df = load_experiment(write_experiment(tmp_path / "exp", [make_trial("a", done=1)]))
    assert plots.accuracy_curves(df, tmp_path / "f") == []
    assert plots.ablation_bars(df, tmp_path / "f") == []
    assert plots.search_history(df, tmp_path / "f") == []
    assert plots.param_slices(df, tmp_path / "f", params=["margin"]) == []
