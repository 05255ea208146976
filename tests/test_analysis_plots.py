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


def _no_titles(fig):
    assert not fig.get_suptitle()
    assert all(not ax.get_title(loc=w) for ax in fig.axes for w in ("left", "center", "right"))


SHORT = {"finetune": "Finetune", "baseline": "Baseline", "cn": "CN", "lucir": "LUCIR"}


def test_accuracy_curves_one_figure_per_protocol_cnn_and_nme_panels(ablation, tmp_path):
    figs = dict(plots.accuracy_figures(ablation))
    assert set(figs) == {"acc_digits_b4_2_phases_5_class", "acc_digits_b4_3_phases_5_class"}
    fig = figs["acc_digits_b4_3_phases_5_class"]
    cnn, nme = fig.axes[:2]
    assert "(CNN)" in cnn.get_ylabel() and "(NME)" in nme.get_ylabel()       # panels named by their axis label
    _no_titles(fig)                                                          # the caption's job
    assert fig.get_figwidth() == pytest.approx(style.COLUMN)
    for ax, acc in ((cnn, 59.0), (nme, 58.0)):
        lines = ax.get_lines()
        assert [ln.get_label().split(" (n=")[0] for ln in lines] == ["Finetune", "Baseline", "CN", "LUCIR"]
        assert list(ax.get_xticks()) == [4, 6, 8, 10]            # exactly the class counts of the data
        lucir = lines[3]
        assert list(lucir.get_xdata()) == [4, 6, 8, 10]
        assert np.allclose(lucir.get_ydata(), acc)                # mean over seeds 0, 1, 2
        assert len(ax.collections) == 3                           # ± std bands; none for the single-seed preset
        band = ax.collections[-1].get_paths()[0].vertices[:, 1]
        assert np.isclose(band.max(), acc + 2.0) and np.isclose(band.min(), acc - 2.0)
    assert not cnn.get_legend() and len(fig.legends) == 1        # one legend, outside the axes
    _fonts_at_least(fig)
    assert "igits (scikit-learn 8x8 images, not a published benchmark): 2 epochs per phase" in \
        plots.caption("acc_digits_b4_3_phases_5_class")          # the schedule of a non-published protocol
    only_cnn = dict(plots.accuracy_figures(ablation, nme=False))["acc_digits_b4_3_phases_5_class"]
    assert len(only_cnn.axes) == 1 and len(only_cnn.axes[0].get_lines()) == 4
    paths = plots.accuracy_curves(ablation, tmp_path / "fig")
    assert len(paths) == 2 * 3
    by = _written(paths, "acc_digits_b4_3_phases_5_class")
    assert _png_width(by[".png"]) == round(style.COLUMN * style.DPI)  # saved at exactly its printed width
    assert not list((tmp_path / "fig").glob(".*"))            # written atomically, no temporary left
    plt.close("all")


def _png_width(path) -> int:
    import struct

    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def test_ablation_is_a_dot_and_interval_plot_with_a_readable_range(ablation, tmp_path):
    from matplotlib.container import ErrorbarContainer
    from scipy import stats

    (name, fig), = plots.ablation_figures(ablation)
    ax = fig.axes[0]
    assert not ax.patches                                     # no bars from 0
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3 * 2                                 # 3 rungs x 2 phase counts with 3 seeds
    half = stats.t.ppf(0.975, 2) * 2.0 / np.sqrt(3)           # 95% t-interval of std 2 over 3 seeds
    lucir3 = [c for c in bars if c.get_label() == "LUCIR" or np.isclose(c.lines[0].get_ydata()[0], 57.0)]
    ys = sorted(float(c.lines[0].get_ydata()[0]) for c in bars)
    assert ys == sorted([50.0, 49.0, 55.0, 54.0, 60.0, 59.0])  # 50 + 5 rung - phases + 2
    seg = bars[0].lines[2][0].get_segments()[0]
    assert np.isclose(seg[1][1] - seg[0][1], 2 * half)
    lo, hi = ax.get_ylim()
    assert 25.0 < lo < 30.0 and hi < 70.0                     # the data's range (finetune at 30), not from 0
    single = [ln for ln in ax.get_lines() if ln.get_markerfacecolor() == "white"]
    assert len(single) == 1 and single[0].get_ydata()[0] == 30.0   # one seed: the mean alone, open marker
    assert "too few for an interval" in plots.caption(name)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2 phases", "3 phases"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Finetune", "Baseline", "CN", "LUCIR"]
    _no_titles(fig)
    fig.canvas.draw()                                         # the legend lies outside the axes: hides no point
    leg, box = fig.legends[0].get_window_extent(), ax.get_window_extent()
    assert leg.y1 <= box.y0 or leg.y0 >= box.y1
    _fonts_at_least(fig)
    paths = plots.ablation_bars(ablation, tmp_path)
    _written(paths, name)
    assert lucir3
    plt.close("all")


def test_a_preset_keeps_its_colour_and_marker_in_every_figure(ablation):
    from matplotlib.container import ErrorbarContainer

    (_, acc), = [kv for kv in plots.accuracy_figures(ablation) if kv[0].endswith("3_phases_5_class")]
    (_, abl), = plots.ablation_figures(ablation)
    line = {ln.get_label().split(" (n=")[0]: ln for ln in acc.axes[0].get_lines()}
    dots = {c.get_label(): c.lines[0] for c in abl.axes[0].containers if isinstance(c, ErrorbarContainer)}
    for preset in ("baseline", "cn", "lucir"):
        want = to_rgba(style.preset_color(preset))
        assert to_rgba(line[SHORT[preset]].get_color()) == want and to_rgba(dots[SHORT[preset]].get_color()) == want
        assert line[SHORT[preset]].get_marker() == style.preset_style(preset)["marker"]
    # the ladder's colours are fixed entries, distinct; unknown presets hash to a stable fallback
    ladder = [style.preset_color(p) for p in ("finetune", "baseline", "cn", "cn_lf", "lucir", "lucir_cbf", "joint")]
    assert len(set(ladder)) == 7 and style.preset_color("lucir") == style.PRESETS["lucir"]["color"]
    assert style.preset_style("my_variant") == style.preset_style("my_variant")
    assert style.preset_color("my_variant") in style.FALLBACK_COLORS
    # LUCIR+CBF is dashed and LUCIR drawn above it: neither hides the other
    assert style.line_style("lucir_cbf")["ls"] == "--" and style.line_style("lucir")["zorder"] > \
        style.line_style("lucir_cbf")["zorder"]
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
    fig = plots.search_history_figure(df, meta=meta)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 1                           # the running best (no trial ran the defaults)
    assert list(ax.get_lines()[0].get_ydata())[:5] == [55.0, 63.0, 63.0, 63.0, 66.0]
    assert list(ax.collections[0].get_offsets()[:, 0]) == [1, 2, 3, 4, 5]   # trial numbers 1..N
    assert list(ax.collections[0].get_offsets()[:, 1]) == accs
    pruned = ax.collections[1]                                # the pruned trial: its own marker, number 6
    assert list(pruned.get_offsets()[0]) == [6, 90.0] and "pruned" in pruned.get_label()
    _no_titles(fig)
    assert "1 pruned" in plots.caption("search_history") and "paper defaults were not a trial" in \
        plots.caption("search_history")
    _fonts_at_least(fig)
    fig = plots.param_slices_figure(df, meta=meta)
    _no_titles(fig)
    names = {"λ base": "lambda_base", "margin": "margin", "K": "K"}
    panels = {names[next(n for n in names if a.get_xlabel().startswith(n))]: a for a in fig.axes
              if a.get_xlabel() and a.get_xlabel() != "trial number"}
    assert set(panels) >= {"lambda_base", "margin", "K"}
    # the paper defaults (lambda_base 5, margin 0.5, K 2) as dashed vertical lines
    assert [ln.get_xdata()[0] for ln in panels["margin"].get_lines()] == [0.5]
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
    assert any("λ base=0.905" in t for t in texts) and not any("0.9053" in t for t in texts)
    paths = plots.search_history(df, tmp_path / "f") + plots.param_slices(df, tmp_path / "f", meta=meta)
    _written(paths, "search_history")
    _written(paths, "param_slices")
    plt.close("all")


def test_optuna_timeline_and_intermediate_plots_are_gone_importances_only_with_enough_trials(tmp_path):
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
    assert figs == []                                         # no timeline, no intermediate values
    assert any("importance" in n and "at least 20" in n for n in notes)
    plt.close("all")


def test_many_configurations_draw_the_best_by_validation_never_by_test(tmp_path):
    # test accuracy rises with i, validation falls: the 4 drawn must be the best on validation (i = 0..3)
    trials = [make_trial(f"m{i}", margin=round(0.05 * i, 2), acc=40.0 + i, val=80.0 - i) for i in range(12)]
    df = load_experiment(write_experiment(tmp_path / "exp", trials, kind="search"))
    (stem, fig), = plots.accuracy_figures(df, nme=False, max_series=4, metric="val_avg_inc_acc_cnn",
                                          validation=True)
    ax = fig.axes[0]
    assert stem.startswith("val_acc_") and "val." in ax.get_ylabel()
    assert sorted(ln.get_ydata()[0] for ln in ax.get_lines()) == [77.0, 78.0, 79.0, 80.0]   # validation drawn
    cap = plots.caption(stem)
    assert "best 4 of 12 configurations by val. avg. inc. acc. (CNN)" in cap and "nothing is selected on the test" in cap
    _no_titles(fig)
    plt.close("all")


def test_nothing_finished_draws_nothing(tmp_path):
    df = load_experiment(write_experiment(tmp_path / "exp", [make_trial("a", done=1)]))
    assert plots.accuracy_curves(df, tmp_path / "f") == []
    assert plots.ablation_bars(df, tmp_path / "f") == []
    assert plots.search_history(df, tmp_path / "f") == []
    assert plots.param_slices(df, tmp_path / "f", params=["margin"]) == []


# --------------------------------------------------------------------------- issue 18: what LUCIR papers show
def test_diagnostic_figures_old_new_matrix_forgetting_norm_ratio(tmp_path):
    from analysis.results import read_experiment

    trials = [make_trial(f"{p}{s}", preset=p, seed=s, acc=50.0 + 5 * i + s, forgetting=20.0 - 5 * i)
              for i, p in enumerate(("baseline", "cn", "lucir")) for s in range(3)]
    exp = read_experiment(write_experiment(tmp_path / "exp", trials))
    figs = dict(plots.diagnostic_figures(exp.frame, exp.trials))
    stem = "digits_b4_3_phases_5_class"
    assert set(figs) == {f"old_new_{stem}", f"matrix_cnn_{stem}", f"forgetting_{stem}", f"norm_ratio_{stem}"}
    for name, fig in figs.items():
        assert fig.get_figwidth() in (pytest.approx(style.COLUMN), pytest.approx(style.PAGE)), name
        _no_titles(fig)
        _fonts_at_least(fig)
        assert plots.caption(name)
    on = figs[f"old_new_{stem}"]
    ylabels = [a.get_ylabel() for a in on.axes]
    assert "old-class acc. (CNN) (%)" in ylabels and "new-class acc. (NME) (%)" in ylabels
    lucir = next(ln for ln in on.axes[0].get_lines() if ln.get_label() == "LUCIR")
    assert list(lucir.get_xdata()) == [1, 2, 3] and np.allclose(lucir.get_ydata(), 61.0)   # phases 1..3, no NaN 0
    ratio = {ln.get_label(): ln.get_ydata() for ln in figs[f"norm_ratio_{stem}"].axes[0].get_lines()
             if ln.get_label() in ("Baseline", "LUCIR")}
    assert np.allclose(ratio["Baseline"], 1.5) and np.allclose(ratio["LUCIR"], 1.05)  # FC vs cosine (fixture)
    assert "before normalisation" in plots.caption(f"norm_ratio_{stem}")
    fg = figs[f"forgetting_{stem}"]
    assert [a.get_ylabel() for a in fg.axes] == ["forgetting (CNN) (points)", "BWT (CNN) (points)"]
    cap = plots.caption(f"forgetting_{stem}")
    assert "best accuracy the group ever had minus" in cap and "Lopez-Paz" in cap   # defined where reported
    mat = figs[f"matrix_cnn_{stem}"]
    im = mat.axes[0].get_images()[0].get_array()
    assert im.shape == (4, 4) and np.isclose(im[3, 0], 51.0) and np.ma.is_masked(im[0, 3])
    assert plots.bwt_from_matrix([[80.0], [60.0, 90.0], [50.0, 70.0, 85.0]])[1:] == [-20.0, -25.0]
    plt.close("all")


def test_search_figures_mark_the_paper_defaults_and_use_a_log_axis_for_eta_init(tmp_path):
    from analysis_fixtures import search_with_confirm

    from analysis.confirm import confirm_summary
    from analysis.results import read_experiment

    exp = read_experiment(search_with_confirm(tmp_path / "s"))
    meta = exp.meta
    hist = plots.search_history_figure(exp.frame, metric="val_avg_inc_acc_cnn", meta=meta)
    stars = [ln for ln in hist.axes[0].get_lines() if ln.get_label() == "paper defaults"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] == 60.0              # s0000 ran the defaults
    par = plots.parallel_figure(exp.frame, metric="val_avg_inc_acc_cnn", meta=meta)
    assert par.get_figwidth() == pytest.approx(style.PAGE)
    labels = [t.get_text() for t in par.axes[0].get_xticklabels()]
    assert labels == ["margin m", "K", "val. avg. inc. acc. (CNN)"]
    assert any(ln.get_label() == "paper defaults" and ln.get_linestyle() == "--" for ln in par.axes[0].get_lines())
    assert len([ln for ln in par.axes[0].get_lines() if ln.get_label().startswith("_")]) >= 8   # one per complete trial
    (_, acc), = plots.accuracy_figures(exp.frame, metric="val_avg_inc_acc_cnn", validation=True)
    marked = [t.get_text() for t in acc.legends[0].get_texts() if t.get_text().endswith("= paper defaults")]
    assert marked == ["LUCIR (margin m=0.5, K=2) = paper defaults"]
    vt = plots.val_test_figure(confirm_summary(exp.path), exp.frame)
    ax = vt.axes[0]
    assert "search" in ax.get_xlabel() and "confirmed" in ax.get_ylabel()
    assert {t.get_text() for t in ax.texts} == {"paper defaults", "top-1", "top-2"}
    _no_titles(vt)
    # eta_init on a log axis whatever its domain says
    trials = [make_trial(f"e{i}", eta_init=e, acc=50.0 + i) for i, e in enumerate((1.0, 2.0, 8.0, 16.0))]
    df = load_experiment(write_experiment(tmp_path / "e", trials, kind="search",
                                          meta={"searched": {"eta_init": {"kind": "choice", "values": [1, 2, 8, 16]}}}))
    sl = plots.param_slices_figure(df, meta={"searched": {"eta_init": {"kind": "choice", "values": [1, 2, 8, 16]}}})
    ax = next(a for a in sl.axes if a.get_xlabel().startswith("η init"))
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "8", "16"]
    plt.close("all")
