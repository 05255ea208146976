"""Figures of an experiment: pure functions of the long DataFrame, drawn in ``analysis.style``.

Every figure is drawn at the width it is printed at (``style.COLUMN`` = 3.3 in, ``style.PAGE`` = 6.9 in)
in ``style.context()`` (fonts >= 8 pt), presets keep one colour and marker everywhere
(``style.preset_style``), legends sit outside the data, and ``save`` writes PNG (300 dpi), PDF and SVG.

* ``accuracy_curves``: top-1 accuracy against the number of classes seen, one panel per classifier
  (CNN, NME), one line per preset (mean over seeds, ± std band); x ticks exactly at the class counts of the
  data; one figure per protocol (the paper's Fig. 4 / 5).
* ``ablation_bars``: average incremental accuracy per ladder rung, bars from 0 with std error bars,
  grouped by phase count (Fig. 7); one figure per (dataset, base classes, exemplar budget).
* ``search_history``: the objective of every trial, numbered 1..N in completion order: complete trials
  as dots with the running best, pruned trials as crosses (their value at the phase they were pruned at).
* ``param_slices``: the objective against each searched parameter (log axis for log-scaled domains),
  coloured by the same trial number 1..N.
* ``optuna_plots``: Optuna's own matplotlib plots of the study in the journal (history, intermediate
  values per phase, slices, importances with >= ``MIN_IMPORTANCE_TRIALS`` complete trials), restyled.

Each ``*_figures`` function returns ``[(file stem, Figure)]`` so tests can inspect the drawn artists;
each plain function saves them (atomically, every format) and returns the paths written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from analysis import style  # noqa: E402  (selects the headless backend)
from analysis.results import JOURNAL_FILE, OBJECTIVE, last_phase  # noqa: E402
from analysis.style import fmt_value, preset_style  # noqa: E402
from analysis.tables import (GROUP, _sort_key_preset, protocol_label, searched_params, slug,  # noqa: E402
                             summary_table, varying_fields, with_memory)

import matplotlib.pyplot as plt  # noqa: E402

METRIC_LABELS = {"avg_inc_acc_cnn": "avg. inc. acc., CNN",
                 "avg_inc_acc_nme": "avg. inc. acc., NME",
                 "last_acc_cnn": "last-phase accuracy, CNN", "last_acc_nme": "last-phase accuracy, NME",
                 "forgetting_cnn": "forgetting, CNN"}
#: Optuna's parameter importance plot needs this many complete trials to mean anything
MIN_IMPORTANCE_TRIALS = 20
_LOG_TEXT = ("loguniform", "qloguniform", "lograndint", "qlograndint")


def _series_label(preset: Any, row: pd.Series, vary: list[str]) -> str:
    if not vary:
        return str(preset)
    return f"{preset} ({', '.join(f'{k}={fmt_value(row[k])}' for k in vary)})"


def save_figure(fig: Figure, path: str | os.PathLike, formats: Iterable[str] = style.FORMATS) -> list[Path]:
    """``style.save``: ``<path without extension>.<fmt>`` for each format, atomically; closes the figure."""
    return style.save(fig, path, formats)


def _save_all(figs: list[tuple[str, Figure]], out_dir: str | os.PathLike,
              formats: Iterable[str] = style.FORMATS) -> list[Path]:
    return [p for name, fig in figs for p in save_figure(fig, Path(out_dir) / name, formats)]


def is_log_param(name: str, meta: dict[str, Any] | None) -> bool:
    """Whether the search domain of ``name`` is log-scaled: ``searched[name]["log"]`` of
    ``lucir_experiment.json``, or a log domain in the legacy text ``param_space`` ("loguniform(...)")."""
    meta = meta or {}
    dom = (meta.get("searched") or {}).get(name)
    if isinstance(dom, dict):
        return bool(dom.get("log")) or str(dom.get("kind", "")).lower() in _LOG_TEXT
    text = (meta.get("param_space") or {}).get(name)
    return isinstance(text, str) and text.strip().lower().startswith(_LOG_TEXT)


def class_ticks(ax, counts: Iterable[Any], max_labels: int = 8) -> list[int]:
    """Major x ticks exactly at the class counts that exist; with more than ``max_labels`` of them only
    every k-th is labelled (the first and the last always), so labels never overlap at column width."""
    counts = sorted({int(c) for c in counts if pd.notna(c)})
    if not counts:
        return counts
    n = len(counts)
    step = 1
    if n > max_labels:
        step = next((s for s in range(math.ceil(n / max_labels), n) if (n - 1) % s == 0), n - 1)
    ax.set_xticks(counts, [str(c) if i % step == 0 else "" for i, c in enumerate(counts)])
    span = (counts[-1] - counts[0]) or 1
    ax.set_xlim(counts[0] - 0.04 * span, counts[-1] + 0.04 * span)
    return counts


def _legend_cols(labels: list[str], width: float) -> int:
    est = max(len(s) for s in labels) * 0.062 + 0.45  # inches per entry at 8 pt: text + handle + gap
    most = max(1, min(len(labels), int(width // est)))
    return math.ceil(len(labels) / math.ceil(len(labels) / most))  # balanced rows


def outside_legend(fig: Figure, handles: list, labels: list[str], where: str = "lower", **kw: Any):
    """A figure legend outside every axes (below or above them); constrained layout makes room for it."""
    ncol = _legend_cols(labels, fig.get_figwidth())
    return fig.legend(handles, labels, loc=f"outside {where} center", ncol=ncol, **kw)


# --------------------------------------------------------------------------- accuracy curves
def _series_styles(presets: list[Any]) -> list[dict[str, str]]:
    """Per series its preset's fixed colour and marker; when several series share a preset (the
    configurations of a grid or a search), distinct colours instead, one per series."""
    if len(set(map(str, presets))) == len(presets):
        return [preset_style(p) for p in presets]
    markers = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
    return [{"color": c, "marker": markers[i % len(markers)]}
            for i, c in enumerate(style.series_colors(len(presets)))]


def accuracy_figures(df: pd.DataFrame, nme: bool = True, max_series: int = 10) -> list[tuple[str, Figure]]:
    """One figure per protocol at column width: a CNN panel and (``nme``) an NME panel below it, one line per
    preset (mean over seeds) with a ± std band, the legend below the panels.

    When a grid or a search varied hyperparameters, each configuration is a series; beyond ``max_series``
    only the best ones (by final average incremental accuracy) are drawn, and the title says so.
    """
    d = with_memory(df[df["finished"] & df["phase"].notna()])
    if not len(d):
        return []
    vary = varying_fields(d)
    figs = []
    for key, g in d.groupby(list(GROUP), sort=True, dropna=False):
        series = list(g.groupby(["preset", *vary], sort=False, dropna=False))
        n_all = len(series)
        if n_all > max_series:
            def final(kv):
                s = kv[1]
                return s[s["phase"] == s["phase"].max()]["avg_inc_acc_cnn"].mean()
            series = sorted(series, key=final, reverse=True)[:max_series]
        series.sort(key=lambda kv: _sort_key_preset(kv[0][0]))
        panels = [("acc_cnn", "CNN classifier")]
        if nme and "acc_nme" in g and g["acc_nme"].notna().any():
            panels.append(("acc_nme", "NME classifier"))
        seeds = [s["trial_id"].nunique() for _, s in series]
        same_n = len(set(seeds)) == 1
        labels = [_series_label(s.iloc[0]["preset"], s.iloc[0], vary) + ("" if same_n else f" (n={n})")
                  for (_, s), n in zip(series, seeds)]
        styles = _series_styles([s.iloc[0]["preset"] for _, s in series])
        ds, base, phases, mem = key
        with style.context():
            fig, axes = style.figure(style.COLUMN, 0.35 + 1.75 * len(panels) + 0.16 * len(series),
                                     nrows=len(panels), sharex=True, squeeze=False)
            axes = list(axes[:, 0])
            counts = set()
            for (_, s), label, st, n in zip(series, labels, styles, seeds):
                for ax, (col, _) in zip(axes, panels):
                    agg = s.groupby("classes_seen")[col].agg(["mean", "std"]).sort_index()
                    x = agg.index.to_numpy(dtype=float)
                    y = agg["mean"].to_numpy(dtype=float)
                    sd = agg["std"].to_numpy(dtype=float)
                    counts |= set(agg.index)
                    ax.plot(x, y, marker=st["marker"], ms=3.5, color=st["color"], label=label, clip_on=False)
                    if n > 1:
                        ax.fill_between(x, y - sd, y + sd, color=st["color"], alpha=0.15, linewidth=0)
            for ax, (_, name) in zip(axes, panels):
                ax.set_ylabel("top-1 accuracy (%)")
                ax.set_title(name, loc="left")
                ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
                class_ticks(ax, counts)
                ax.tick_params(labelbottom=True)
            axes[-1].set_xlabel("number of classes seen")
            title = protocol_label(ds, base, phases, mem)
            title += f"; mean ± std over {seeds[0]} seeds" if same_n and seeds[0] > 1 else ""
            if n_all > len(series):
                title += f"\nbest {len(series)} of {n_all} configurations by final avg. inc. accuracy"
            fig.suptitle(title)
            outside_legend(fig, *axes[0].get_legend_handles_labels())
        figs.append((f"acc_{slug(protocol_label(ds, base, phases, mem))}", fig))
    return figs


def accuracy_curves(df: pd.DataFrame, out_dir: str | os.PathLike, nme: bool = True,
                    formats: Iterable[str] = style.FORMATS) -> list[Path]:
    """Save ``accuracy_figures`` under ``out_dir``; returns the paths (one per protocol and format)."""
    return _save_all(accuracy_figures(df, nme=nme), out_dir, formats)


# --------------------------------------------------------------------------- ablation bars
def ablation_figures(df: pd.DataFrame, metric: str = "avg_inc_acc_cnn") -> list[tuple[str, Figure]]:
    """Bars of ``metric`` (a summary metric: mean over seeds, std error bars) per rung, grouped by phases;
    the bars start at 0 and the legend sits above the axes, so no bar is hidden or exaggerated."""
    s = summary_table(df)
    s = s[s["seeds"] > 0]
    if not len(s):
        return []
    vary = [c for c in s.columns if c not in GROUP and c not in ("preset", "seeds", "excluded")
            and not c.endswith("_mean") and not c.endswith("_std")]
    s = s.copy()
    s["rung"] = [_series_label(p, r, vary) for p, (_, r) in zip(s["preset"], s.iterrows())]
    figs = []
    for (ds, base, mem), g in s.groupby(["dataset", "base_classes", "memory"], sort=True, dropna=False):
        phases = sorted(g["phases"].unique())
        order = g.sort_values("preset", key=lambda c: c.map(_sort_key_preset), kind="stable")
        rungs = list(dict.fromkeys(order["rung"]))
        rung_preset = dict(zip(order["rung"], order["preset"]))
        styles = dict(zip(rungs, _series_styles([rung_preset[r] for r in rungs])))
        width = 0.8 / len(rungs)
        n_bars = len(rungs) * len(phases)
        fig_w = style.COLUMN if n_bars <= 16 else style.PAGE
        with style.context():
            fig, ax = style.figure(fig_w, 2.2 + 0.16 * math.ceil(len(rungs) / 3))
            for i, rung in enumerate(rungs):
                r = g[g["rung"] == rung].set_index("phases")
                xs = [j for j, p in enumerate(phases) if p in r.index]
                if not xs:
                    continue
                means = [float(r.loc[phases[j], f"{metric}_mean"]) for j in xs]
                stds = [float(r.loc[phases[j], f"{metric}_std"]) for j in xs]
                stds = [0.0 if np.isnan(v) else v for v in stds]
                ax.bar(np.array(xs) + (i - (len(rungs) - 1) / 2) * width, means, width * 0.92, yerr=stds,
                       color=styles[rung]["color"], edgecolor="white", linewidth=0.4, label=rung,
                       error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#222222"})
            ax.set_xticks(range(len(phases)), [f"{p} phase" + ("s" if p != 1 else "") for p in phases])
            ax.grid(False, axis="x")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")) + " (%)")
            hi = float(np.nanmax(g[f"{metric}_mean"] + g[f"{metric}_std"].fillna(0)))
            ax.set_ylim(0.0, min(100.0, hi * 1.06) if hi <= 100 else hi * 1.06)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
            fig.suptitle(f"{protocol_label(ds, base, None, mem)}: mean ± std over seeds")
            outside_legend(fig, *ax.get_legend_handles_labels())
        figs.append((f"ablation_{slug(protocol_label(ds, base, None, mem))}", fig))
    return figs


def ablation_bars(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = "avg_inc_acc_cnn",
                  formats: Iterable[str] = style.FORMATS) -> list[Path]:
    return _save_all(ablation_figures(df, metric=metric), out_dir, formats)


# --------------------------------------------------------------------------- search
def completion_order(df: pd.DataFrame) -> pd.DataFrame:
    """Last-phase rows of the finished trials in completion order (record time, then trial name)."""
    last = last_phase(df)
    return last.sort_values(["updated", "trial_name", "trial_id"], na_position="last", kind="stable")


def trial_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (its last reported phase, finished or not) in completion order, with ``number``
    1..N: the trial number every search figure uses (history x axis, slice colour bar)."""
    last = last_phase(df, finished_only=False)
    last = last.sort_values(["updated", "trial_name", "trial_id"], na_position="last", kind="stable")
    last = last.reset_index(drop=True)
    last.insert(0, "number", np.arange(1, len(last) + 1))
    return last


def search_history_figure(df: pd.DataFrame, metric: str = OBJECTIVE, mode: str = "max") -> Figure | None:
    """The objective of every trial against its number (1..N, completion order): complete trials as dots
    with the running best (a step line), pruned ones as crosses at the value of the phase they stopped at."""
    num = trial_numbers(df)
    done = num[num["finished"]]
    if not len(done):
        return None
    pruned = num[(num["status"] == "PRUNED") & num[metric].notna() & ~num["finished"]]
    n_other = len(num) - len(done) - len(pruned)
    x, y = done["number"].to_numpy(), done[metric].to_numpy(dtype=float)
    best = np.fmax.accumulate(y) if mode == "max" else np.fmin.accumulate(y)
    with style.context():
        fig, ax = style.figure(style.COLUMN, 2.5)
        ax.scatter(x, y, s=14, color=style.ROLE["complete"], label=f"complete ({len(done)})", zorder=3)
        if len(pruned):
            ax.scatter(pruned["number"].to_numpy(), pruned[metric].to_numpy(dtype=float), s=16, marker="x",
                       linewidths=0.9, color=style.ROLE["pruned"], label=f"pruned ({len(pruned)}; value when stopped)", zorder=2)
        ax.step(np.r_[x, num["number"].max()], np.r_[best, best[-1]], where="post", color=style.ROLE["best"],
                label=f"best so far ({mode})", zorder=4)
        ax.set_xlim(0.5, num["number"].max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.set_xlabel(f"trial number (1..{len(num)}, completion order)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (%)")
        title = f"search history: {len(done)} complete, {len(pruned)} pruned"
        if n_other:
            title += f", {n_other} failed / running (not drawn)"
        ax.set_title(title)
        outside_legend(fig, *ax.get_legend_handles_labels())
    return fig


def param_slices_figure(df: pd.DataFrame, params: list[str] | None = None, metric: str = OBJECTIVE,
                        meta: dict[str, Any] | None = None) -> Figure | None:
    """One panel per searched parameter (2 per row, column width): the objective of the complete trials
    against the value, a log axis for a log-scaled domain, coloured by trial number 1..N (as the history)."""
    num = trial_numbers(df)
    last = num[num["finished"]]
    params = params if params is not None else searched_params(df, meta)
    params = [p for p in params if p in last]
    if not len(last) or not params:
        return None
    ncols = 1 if len(params) == 1 else 2
    nrows = math.ceil(len(params) / ncols)
    n_total = int(num["number"].max())
    with style.context():
        fig, axes = style.figure(style.COLUMN, 0.5 + 1.55 * nrows, nrows=nrows, ncols=ncols, sharey=True,
                                 squeeze=False)
        flat = list(axes.ravel())
        sc = None
        for ax, p in zip(flat, params):
            vals = last[p]
            numeric = pd.api.types.is_numeric_dtype(vals) and not pd.api.types.is_bool_dtype(vals)
            if numeric:
                xv = vals.to_numpy(dtype=float)
            else:  # categorical parameter: one column per value
                cats = sorted(vals.astype(str).unique())
                xv = vals.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
                ax.set_xticks(range(len(cats)), cats)
                ax.set_xlim(-0.5, len(cats) - 0.5)
            sc = ax.scatter(xv, last[metric].to_numpy(dtype=float), c=last["number"].to_numpy(),
                            cmap=style.SEQUENTIAL, vmin=1, vmax=max(2, n_total), s=14, edgecolors="none")
            dom = ((meta or {}).get("searched") or {}).get(p) or {}
            choices = [v for v in dom.get("values", []) if isinstance(v, (int, float))] if numeric else []
            if numeric and is_log_param(p, meta) and np.all(xv[np.isfinite(xv)] > 0):
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(float(v))))
                ax.xaxis.set_minor_formatter(NullFormatter())
                if choices and all(v > 0 for v in choices):  # a choice: ticks at its values
                    ax.set_xticks(sorted(choices), [fmt_value(float(v)) for v in sorted(choices)])
                    ax.set_xticks([], minor=True)
            elif choices:
                ax.set_xticks(sorted(choices), [fmt_value(float(v)) for v in sorted(choices)])
            elif numeric and np.all(np.isfinite(xv)) and np.all(xv == np.round(xv)):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            elif numeric:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(float(v))))
            ax.set_xlabel(p + (" (log)" if ax.get_xscale() == "log" else ""))
        for ax in flat[len(params):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(METRIC_LABELS.get(metric, metric) + " (%)")
        cb = fig.colorbar(sc, ax=flat, label="trial number", shrink=0.9, aspect=30, pad=0.02)
        cb.locator = MaxNLocator(integer=True, nbins=6)
        cb.update_ticks()
        fig.suptitle(f"parameter slices ({len(last)} complete trials)")
    return fig


def search_history(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = OBJECTIVE,
                   mode: str = "max", formats: Iterable[str] = style.FORMATS) -> list[Path]:
    fig = search_history_figure(df, metric=metric, mode=mode)
    return save_figure(fig, Path(out_dir) / "search_history", formats) if fig is not None else []


def param_slices(df: pd.DataFrame, out_dir: str | os.PathLike, params: list[str] | None = None,
                 metric: str = OBJECTIVE, meta: dict[str, Any] | None = None,
                 formats: Iterable[str] = style.FORMATS) -> list[Path]:
    fig = param_slices_figure(df, params=params, metric=metric, meta=meta)
    return save_figure(fig, Path(out_dir) / "param_slices", formats) if fig is not None else []


# --------------------------------------------------------------------------- Optuna's own plots
from analysis.results import load_study  # noqa: E402,F401  (the study behind a search; re-exported)


def _restyle_optuna(fig: Figure, width: float, height: float, renumber: bool = True) -> Figure:
    """Optuna draws in ggplot style with its own sizes and 0-based trial numbers: give its figure the report's
    size, fonts (8 pt), white axes, and trial numbers 1..N (Optuna's number + 1)."""
    fig.set_size_inches(width, height)
    fig.set_layout_engine("constrained")
    plus_one = FuncFormatter(lambda v, _: f"{v + 1:g}")
    for ax in fig.axes:
        ax.set_facecolor("white")
        ax.grid(True, color="#dddddd", linewidth=0.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(True)
            ax.spines[side].set_color("black")
            ax.spines[side].set_linewidth(0.6)
        ax.tick_params(colors="black", labelcolor="black")
        if renumber and ax.get_xlabel().strip().lower() == "trial":
            ax.xaxis.set_major_formatter(plus_one)
            ax.set_xlabel("trial number (Optuna's, from 1)")
        if renumber and ax.get_ylabel().strip().lower() == "trial":  # the colour bar of the slice plot
            ax.yaxis.set_major_formatter(plus_one)
            ax.set_ylabel("trial number (Optuna's, from 1)")
        if ax.get_xlabel() == "Step":  # intermediate values: one per phase; a legend of N trials says nothing
            ax.set_xlabel("phase (0 = base)")  # Optuna's step is Ray's training_iteration: phase + 1
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(round(v)) - 1}"))
            ax.set_ylabel("objective so far")
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        leg = ax.get_legend()
        if leg is not None and len(leg.get_texts()) <= 1:  # "Objective Value" alone: no information
            leg.remove()
        elif leg is not None:
            leg.set_frame_on(False)
    for t in fig.findobj(lambda a: hasattr(a, "set_fontsize") and hasattr(a, "get_text")):
        t.set_fontsize(style.MIN_FONT)
    style.enforce_min_font(fig)
    return fig


def optuna_figures(study, params: list[str] | None = None,
                   min_importance_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[list[tuple[str, Figure]], list[str]]:
    """Optuna's matplotlib plots of ``study`` that ours do not draw: intermediate values (the objective
    reported after each phase; when any trial reported one), the timeline (when each trial ran; when the
    trials carry their start and end times) and (with at least ``min_importance_trials`` complete trials)
    parameter importances. Returns ([(stem, Figure)], notes
    saying what was skipped and why)."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm

    figs: list[tuple[str, Figure]] = []
    notes: list[str] = []
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return [], [f"Optuna plots skipped: study {study.study_name!r} has no complete trial"]
    present = set().union(*(t.params for t in complete))
    params = [p for p in (params or sorted(present)) if p in present] or None
    with warnings.catch_warnings(), style.context():
        warnings.simplefilter("ignore")  # ExperimentalWarning of optuna.visualization.matplotlib

        def add(stem: str, make, width: float, height: float, renumber: bool = True) -> None:
            try:
                out = make()
            except Exception as exc:  # noqa: BLE001 - one failing plot does not cost the others
                notes.append(f"Optuna {stem} plot failed: {type(exc).__name__}: {exc}")
                return
            ax0 = out.ravel()[0] if isinstance(out, np.ndarray) else out
            figs.append((stem, _restyle_optuna(ax0.figure, width, height, renumber)))

        # Optuna's history and slice plots are not drawn: ours (search_history with the pruned trials,
        # param_slices with log axes) show the same trials under one numbering
        if any(t.intermediate_values for t in study.trials):
            add("optuna_intermediate", lambda: ovm.plot_intermediate_values(study), style.COLUMN, 2.5)
        else:
            notes.append("Optuna intermediate-value plot skipped: no trial reported a value per phase")
        n_p = len(params or present)
        if all(t.datetime_start and t.datetime_complete for t in complete):  # when each trial ran, and how long
            add("optuna_timeline", lambda: ovm.plot_timeline(study), style.PAGE, 0.9 + 0.12 * len(study.trials))
        if len(complete) >= min_importance_trials:
            add("optuna_importances", lambda: ovm.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=params),
                style.COLUMN, 0.9 + 0.3 * n_p, renumber=False)
        else:
            notes.append(f"Optuna parameter-importance plot skipped: {len(complete)} complete trial(s), at "
                         f"least {min_importance_trials} are needed for importances worth plotting")
    return figs, notes


def optuna_plots(exp_path: str | os.PathLike | None, out_dir: str | os.PathLike, study_name: str | None = None,
                 params: list[str] | None = None, formats: Iterable[str] = style.FORMATS,
                 min_importance_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[list[Path], list[str]]:
    """Save ``optuna_figures`` of the experiment's study under ``out_dir``: (paths, notes)."""
    study, why = load_study(exp_path, study_name)
    if study is None:
        return [], [f"Optuna plots skipped: {why}"]
    figs, notes = optuna_figures(study, params=params, min_importance_trials=min_importance_trials)
    return _save_all(figs, out_dir, formats), notes
