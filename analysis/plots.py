"""Figures of an experiment: pure functions of the long DataFrame, drawn in ``analysis.style``.

Every figure is drawn at exactly the width it is printed at (``style.COLUMN`` = 3.3 in, ``style.PAGE`` =
6.9 in; saved without ``bbox_inches="tight"``), carries no title (that is the caption's job:
``caption(stem, ...)`` gives it), names methods and metrics as a paper does (``analysis.paper``: LUCIR,
CN+LF, "avg. inc. acc. (CNN)"), keeps one colour, marker and line style per method, and puts legends
outside the data.

* ``accuracy_figures``: top-1 accuracy against the classes seen, CNN and NME panels, one line per method
  (mean over seeds, ± std band). In a search, the validation accuracy, and configurations beyond
  ``max_series`` chosen by the validation objective (never by test accuracy).
* ``ablation_figures``: dot-and-interval plot of the average incremental accuracy per rung and phase count:
  mean and 95% t-interval over seeds (no interval below 3 seeds: an open marker, said in the caption).
* ``search_history_figure``, ``param_slices_figure``, ``parallel_figure``, ``val_test_figure``: a search;
  the paper defaults are marked in each (dashed line / black marker), log axes for log domains and eta_init.
* ``old_new_figures``, ``matrix_figures``, ``forgetting_figures``, ``norm_ratio_figures``: the analyses LUCIR
  papers show, from the per-phase diagnostics and the accuracy matrices.

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
from analysis.style import fmt_value  # noqa: E402
from analysis.tables import (GROUP, _sort_key_preset, protocol_label, searched_params, slug,  # noqa: E402
                             summary_table, varying_fields, with_memory)
from analysis.paper import DEFINITIONS, metric_name, paper_defaults, short_name, with_schedule  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402

METRIC_LABELS = {m: metric_name(m) for m in ("avg_inc_acc_cnn", "avg_inc_acc_nme", "last_acc_cnn", "last_acc_nme",
                                               "forgetting_cnn", "val_avg_inc_acc_cnn", "val_avg_inc_acc_nme")}
#: parameters drawn on a log axis whatever their domain says (eta_init in {1, 2, 8, 16}: ratios matter)
LOG_ALWAYS = ("eta_init",)
#: Optuna's parameter importance plot needs this many complete trials to mean anything
MIN_IMPORTANCE_TRIALS = 20
_LOG_TEXT = ("loguniform", "qloguniform", "lograndint", "qlograndint")


def _series_label(preset: Any, row: pd.Series, vary: list[str]) -> str:
    if not vary:
        return short_name(preset)
    return f"{short_name(preset)} ({', '.join(f'{metric_name(k)}={fmt_value(row[k])}' for k in vary)})"


def save_figure(fig: Figure, path: str | os.PathLike, formats: Iterable[str] = style.FORMATS) -> list[Path]:
    """``style.save``: ``<path without extension>.<fmt>`` for each format, atomically; closes the figure."""
    return style.save(fig, path, formats)


def _save_all(figs: list[tuple[str, Figure]], out_dir: str | os.PathLike,
              formats: Iterable[str] = style.FORMATS) -> list[Path]:
    return [p for name, fig in figs for p in save_figure(fig, Path(out_dir) / name, formats)]


def is_log_param(name: str, meta: dict[str, Any] | None) -> bool:
    """Whether ``name`` is drawn on a log axis: ``LOG_ALWAYS`` (eta_init), a log-scaled search domain
    (``searched[name]["log"]`` of ``lucir_experiment.json``), or a log domain in the legacy text
    ``param_space`` ("loguniform(...)")."""
    if name in LOG_ALWAYS:
        return True
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
def _series_styles(presets: list[Any]) -> list[dict[str, Any]]:
    """Per series its preset's fixed colour, marker and line style; when several series share a preset (the
    configurations of a grid or a search), distinct colours instead, one per series."""
    if len(set(map(str, presets))) == len(presets):
        return [style.line_style(p) for p in presets]
    markers = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">")
    return [{"color": c, "marker": markers[i % len(markers)], "ls": "-", "zorder": 3}
            for i, c in enumerate(style.series_colors(len(presets)))]


def _final(s: pd.DataFrame, metric: str) -> float:
    return float(s[s["phase"] == s["phase"].max()][metric].mean())


def accuracy_figures(df: pd.DataFrame, nme: bool = True, max_series: int = 10, metric: str = "avg_inc_acc_cnn",
                     validation: bool = False) -> list[tuple[str, Figure]]:
    """One figure per protocol at column width: a CNN panel and (``nme``) an NME panel below it, one line per
    method (mean over seeds) with a ± std band, the legend below the panels.

    ``validation``: draw the validation accuracy (``val_acc_cnn`` / ``val_acc_nme``), what a search may look at.
    When a grid or a search varied hyperparameters, each configuration is a series; beyond ``max_series``
    only the best ones by ``metric`` at the last phase (the search's objective: the validation one in a
    search) are drawn; ``figure_notes[stem]`` says so for the caption.
    """
    d = with_memory(df[df["finished"] & df["phase"].notna()])
    if not len(d):
        return []
    cols = ("val_acc_cnn", "val_acc_nme") if validation else ("acc_cnn", "acc_nme")
    if validation and (cols[0] not in d or d[cols[0]].isna().all()):
        return []
    vary = varying_fields(d)
    figs = []
    for key, g in d.groupby(list(GROUP), sort=True, dropna=False):
        series = list(g.groupby(["preset", *vary], sort=False, dropna=False))
        n_all = len(series)
        if n_all > max_series:
            series = sorted(series, key=lambda kv: _final(kv[1], metric), reverse=True)[:max_series]
        series.sort(key=lambda kv: _sort_key_preset(kv[0][0]))
        which = "val. " if validation else ""
        panels = [(cols[0], f"{which}top-1 acc. (CNN) (%)")]
        if nme and cols[1] in g and g[cols[1]].notna().any():
            panels.append((cols[1], f"{which}top-1 acc. (NME) (%)"))
        seeds = [s["trial_id"].nunique() for _, s in series]
        same_n = len(set(seeds)) == 1
        labels = [_series_label(s.iloc[0]["preset"], s.iloc[0], vary) + ("" if same_n else f" (n={n})")
                  for (_, s), n in zip(series, seeds)]
        styles = _series_styles([s.iloc[0]["preset"] for _, s in series])
        ds, base, phases, mem = key
        defaults = paper_defaults(ds, vary) if vary else {}
        for i, (_, s) in enumerate(series):  # the paper defaults among the configurations: black, marked
            if defaults and s.iloc[0]["preset"] == "lucir" and bool(_is_defaults(s.iloc[:1], defaults).iloc[0]):
                labels[i] += " = paper defaults"
                styles[i] = {**styles[i], "color": "black", "ls": "--", "zorder": 6}
        with style.context():
            fig, axes = style.figure(style.COLUMN, 0.35 + 1.6 * len(panels) + 0.17 * math.ceil(len(series) / 2),
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
                    ax.plot(x, y, marker=st["marker"], ms=3.5, color=st["color"], ls=st["ls"], zorder=st["zorder"],
                            label=label, clip_on=False, mfc="white" if st["ls"] == "--" else st["color"])
                    if n > 1:
                        ax.fill_between(x, y - sd, y + sd, color=st["color"], alpha=0.12, linewidth=0)
            for ax, (_, name) in zip(axes, panels):
                ax.set_ylabel(name)
                ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
                class_ticks(ax, counts)
                ax.tick_params(labelbottom=True)
            axes[-1].set_xlabel("number of classes seen")
            outside_legend(fig, *axes[0].get_legend_handles_labels())
        stem = f"{'val_' if validation else ''}acc_{slug(protocol_label(ds, base, phases, mem))}"
        what = "Validation top-1" if validation else "Top-1"
        cap = (f"{what} accuracy (%) on all classes seen against the number of classes seen, "
               f"{protocol_label(ds, base, phases, mem)}; CNN (top) and NME (bottom) classifier")
        cap += (f"; mean ± std (band) over {seeds[0]} seeds" if same_n and seeds[0] > 1 else
                "; one seed" if same_n else "; mean ± std (band) over n seeds")
        if n_all > len(series):
            cap += (f"; the best {len(series)} of {n_all} configurations by {metric_name(metric)} at the last phase"
                    + (" (validation split: nothing is selected on the test set)" if metric.startswith("val_")
                       else ""))
        FIGURE_NOTES[stem] = with_schedule(cap, g)
        figs.append((stem, fig))
    return figs


#: stem -> caption of the figures drawn last (the report writes them beside each figure)
FIGURE_NOTES: dict[str, str] = {}


def caption(stem: str) -> str:
    """The caption of the figure saved as ``stem`` (drawn by this module in this process), '' if unknown."""
    return FIGURE_NOTES.get(stem, "")


def accuracy_curves(df: pd.DataFrame, out_dir: str | os.PathLike, nme: bool = True,
                    formats: Iterable[str] = style.FORMATS, metric: str = "avg_inc_acc_cnn",
                    validation: bool = False) -> list[Path]:
    """Save ``accuracy_figures`` under ``out_dir``; returns the paths (one per protocol and format)."""
    return _save_all(accuracy_figures(df, nme=nme, metric=metric, validation=validation), out_dir, formats)


# --------------------------------------------------------------------------- ablation (dot and interval)
def _t_half(std: float, n: int, confidence: float = 0.95) -> float:
    from scipy import stats

    if n < 3 or std is None or math.isnan(std):
        return math.nan
    return float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)


def ablation_figures(df: pd.DataFrame, metric: str = "avg_inc_acc_cnn") -> list[tuple[str, Figure]]:
    """Dot-and-interval plot of ``metric`` (mean over seeds, 95% t-interval) per rung, grouped by phase
    count; the y range is the data's (not from 0), so differences of a point can be read. Fewer than 3 seeds:
    the mean alone as an open marker (no interval pretends to be one), and the caption says so."""
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
        n_pts = len(rungs) * len(phases)
        fig_w = style.COLUMN if n_pts <= 24 else style.PAGE
        lows, highs, few = [], [], set()
        with style.context():
            fig, ax = style.figure(fig_w, 2.1 + 0.17 * math.ceil(len(rungs) / 3))
            for i, rung in enumerate(rungs):
                r = g[g["rung"] == rung].set_index("phases")
                xs = [j for j, p in enumerate(phases) if p in r.index]
                if not xs:
                    continue
                st = styles[rung]
                for j in xs:
                    mean = float(r.loc[phases[j], f"{metric}_mean"])
                    n = int(r.loc[phases[j], "seeds"])
                    half = _t_half(float(r.loc[phases[j], f"{metric}_std"]), n)
                    x = j + (i - (len(rungs) - 1) / 2) * width
                    if math.isnan(half):
                        few.add(n)
                        ax.plot([x], [mean], marker=st["marker"], ls="none", color=st["color"], mfc="white",
                                label=rung if j == xs[0] else None)
                        lows.append(mean)
                        highs.append(mean)
                    else:
                        ax.errorbar([x], [mean], yerr=[half], fmt=st["marker"], color=st["color"], capsize=2,
                                    elinewidth=0.9, ms=4, label=rung if j == xs[0] else None)
                        lows.append(mean - half)
                        highs.append(mean + half)
            ax.set_xticks(range(len(phases)), [f"{p} phase" + ("s" if p != 1 else "") for p in phases])
            ax.set_xlim(-0.5, len(phases) - 0.5)
            ax.grid(False, axis="x")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric_name(metric)) + " (%)")
            lo, hi = min(lows), max(highs)
            pad = max(0.5, 0.08 * (hi - lo))
            ax.set_ylim(lo - pad, hi + pad)
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
            handles, labels = ax.get_legend_handles_labels()
            outside_legend(fig, handles, labels)
        stem = f"ablation_{slug(protocol_label(ds, base, None, mem))}"
        n_text = "/".join(str(int(v)) for v in sorted(g["seeds"].unique()))
        cap = (f"Ablation, {protocol_label(ds, base, None, mem)}: {metric_name(metric)} (%) at the last phase per "
               f"method and number of phases; dot: mean over {n_text} seeds, bar: 95% t-interval")
        if few:
            cap += (f"; open markers: n = {'/'.join(map(str, sorted(few)))} seeds, too few for an interval "
                    "(shown without one)")
        sub = df[(df["dataset"] == ds) & (df["base_classes"] == base)] if "dataset" in df else df
        FIGURE_NOTES[stem] = with_schedule(cap, sub)
        figs.append((stem, fig))
    return figs


def ablation_bars(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = "avg_inc_acc_cnn",
                  formats: Iterable[str] = style.FORMATS) -> list[Path]:
    """Save ``ablation_figures`` (a dot-and-interval plot; the name is kept for callers)."""
    return _save_all(ablation_figures(df, metric=metric), out_dir, formats)


# --------------------------------------------------------------------------- search
def trial_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (its last reported phase, finished or not) in completion order, with ``number``
    1..N: the trial number every search figure uses (history x axis, slice colour bar)."""
    last = last_phase(df, finished_only=False)
    last = last.sort_values(["updated", "trial_name", "trial_id"], na_position="last", kind="stable")
    last = last.reset_index(drop=True)
    last.insert(0, "number", np.arange(1, len(last) + 1))
    return last


def _defaults(df: pd.DataFrame, params: list[str], meta: dict[str, Any] | None) -> dict[str, Any]:
    ds = df["dataset"].dropna().iloc[0] if "dataset" in df and df["dataset"].notna().any() else None
    return paper_defaults(ds, params)


def _is_defaults(rows: pd.DataFrame, defaults: dict[str, Any]) -> pd.Series:
    if not defaults:
        return pd.Series(False, index=rows.index)
    ok = pd.Series(True, index=rows.index)
    for k, v in defaults.items():
        if k not in rows:
            return pd.Series(False, index=rows.index)
        ok &= rows[k].map(lambda x: x == v or (isinstance(x, float) and isinstance(v, (int, float))
                                               and math.isclose(x, v)))
    return ok


DEFAULTS_STYLE = {"color": "black", "marker": "*", "ms": 8, "ls": "--", "lw": 0.9}


def search_history_figure(df: pd.DataFrame, metric: str = OBJECTIVE, mode: str = "max",
                          meta: dict[str, Any] | None = None) -> Figure | None:
    """The objective of every trial against its number (1..N, completion order): complete trials as dots
    with the running best (a step line), pruned ones as crosses at the value of the phase they stopped at,
    the paper defaults' trial as a black star with a dashed line at its value."""
    num = trial_numbers(df)
    done = num[num["finished"]]
    if not len(done):
        return None
    pruned = num[(num["status"] == "PRUNED") & num[metric].notna() & ~num["finished"]]
    n_other = len(num) - len(done) - len(pruned)
    x, y = done["number"].to_numpy(), done[metric].to_numpy(dtype=float)
    best = np.fmax.accumulate(y) if mode == "max" else np.fmin.accumulate(y)
    params = searched_params(df, meta)
    defaults = _defaults(df, params, meta)
    dflt = done[_is_defaults(done, defaults)]
    with style.context():
        fig, ax = style.figure(style.COLUMN, 3.0)
        ax.scatter(x, y, s=14, color=style.ROLE["complete"], label=f"complete ({len(done)})", zorder=3)
        if len(pruned):
            ax.scatter(pruned["number"].to_numpy(), pruned[metric].to_numpy(dtype=float), s=16, marker="x",
                       linewidths=0.9, color=style.ROLE["pruned"], label=f"pruned ({len(pruned)}; when stopped)",
                       zorder=2)
        ax.step(np.r_[x, num["number"].max()], np.r_[best, best[-1]], where="post", color=style.ROLE["best"],
                label="best so far", zorder=4)
        if len(dflt):
            v = float(dflt[metric].iloc[0])
            ax.axhline(v, color="black", ls="--", lw=0.8, zorder=1)
            ax.plot(dflt["number"], dflt[metric], ls="none", marker="*", ms=8, color="black", zorder=5,
                    label="paper defaults")
        ax.set_xlim(0.5, num["number"].max() + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.set_xlabel(f"trial number (1..{len(num)}, completion order)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric_name(metric)) + " (%)")
        outside_legend(fig, *ax.get_legend_handles_labels())
    cap = (f"Search history: {metric_name(metric)} (%) at the last phase of each trial, in completion order; "
           f"{len(done)} complete, {len(pruned)} pruned (value when stopped; never a winner)")
    if n_other:
        cap += f", {n_other} failed or running (not drawn)"
    cap += "; paper defaults: black star and dashed line" if len(dflt) else "; the paper defaults were not a trial"
    FIGURE_NOTES["search_history"] = with_schedule(cap, df)
    return fig


def _log_axis(ax, axis: str, choices: list) -> None:
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    a = ax.xaxis if axis == "x" else ax.yaxis
    set_scale("log")
    a.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(float(v))))
    a.set_minor_formatter(NullFormatter())
    if choices and all(v > 0 for v in choices):
        (ax.set_xticks if axis == "x" else ax.set_yticks)(sorted(choices), [fmt_value(float(v)) for v in sorted(choices)])
        (ax.set_xticks if axis == "x" else ax.set_yticks)([], minor=True)


def param_slices_figure(df: pd.DataFrame, params: list[str] | None = None, metric: str = OBJECTIVE,
                        meta: dict[str, Any] | None = None) -> Figure | None:
    """One panel per searched parameter (2 per row, column width): the objective of the complete trials
    against the value, a log axis for a log-scaled domain (and eta_init), coloured by trial number 1..N (as
    the history); the paper default of each parameter as a dashed vertical line."""
    num = trial_numbers(df)
    last = num[num["finished"]]
    params = params if params is not None else searched_params(df, meta)
    params = [p for p in params if p in last]
    if not len(last) or not params:
        return None
    defaults = _defaults(df, params, meta)
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
                _log_axis(ax, "x", choices or sorted({float(v) for v in xv if np.isfinite(v)})
                          if p in LOG_ALWAYS and len(set(xv)) <= 6 else choices)
            elif choices:
                ax.set_xticks(sorted(choices), [fmt_value(float(v)) for v in sorted(choices)])
            elif numeric and np.all(np.isfinite(xv)) and np.all(xv == np.round(xv)):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            elif numeric:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(float(v))))
            if numeric and p in defaults and isinstance(defaults[p], (int, float)):
                ax.axvline(float(defaults[p]), color="black", ls="--", lw=0.8, zorder=1)
            ax.set_xlabel(metric_name(p) + (" (log)" if ax.get_xscale() == "log" else ""))
        for ax in flat[len(params):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel(METRIC_LABELS.get(metric, metric_name(metric)) + " (%)")
        cb = fig.colorbar(sc, ax=flat, label="trial number", shrink=0.9, aspect=30, pad=0.02)
        cb.locator = MaxNLocator(integer=True, nbins=6)
        cb.update_ticks()
    FIGURE_NOTES["param_slices"] = with_schedule(
        f"{metric_name(metric)} (%) of the {len(last)} complete trials against each searched parameter, coloured by "
        "trial number; dashed line: the paper default", df)
    return fig


def parallel_figure(df: pd.DataFrame, params: list[str] | None = None, metric: str = OBJECTIVE,
                    meta: dict[str, Any] | None = None) -> Figure | None:
    """Parallel coordinates of the searched parameters (page width): one axis per parameter (log-scaled
    where the domain is, and eta_init) and a last one for the objective; each complete trial a line coloured
    by its objective; the paper defaults a dashed black line."""
    last = last_phase(df)
    params = params if params is not None else searched_params(df, meta)
    params = [p for p in params if p in last and pd.api.types.is_numeric_dtype(last[p])
              and not pd.api.types.is_bool_dtype(last[p])]
    if len(last) < 2 or not params:
        return None
    defaults = _defaults(df, params, meta)
    axes_names = params + [metric]
    cols = []
    for p in axes_names:
        v = last[p].to_numpy(dtype=float)
        logp = p != metric and is_log_param(p, meta) and np.all(v > 0)
        lo_v = min([*v, float(defaults[p])] if p in defaults else v)
        hi_v = max([*v, float(defaults[p])] if p in defaults else v)
        tr = (np.log10 if logp else (lambda a: np.asarray(a, dtype=float)))
        lo, hi = float(tr(lo_v)), float(tr(hi_v))
        span = (hi - lo) or 1.0
        cols.append((p, logp, lo, span, tr, lo_v, hi_v))

    def pos(p_idx: int, value: float) -> float:
        _, _, lo, span, tr, _, _ = cols[p_idx]
        return (float(tr(value)) - lo) / span

    y = last[metric].to_numpy(dtype=float)
    cmap = plt.get_cmap(style.SEQUENTIAL)
    norm = plt.Normalize(np.nanmin(y), np.nanmax(y) if np.nanmax(y) > np.nanmin(y) else np.nanmin(y) + 1)
    with style.context():
        fig, ax = style.figure(style.PAGE, 2.6)
        xs = np.arange(len(axes_names))
        for (_, r), val in zip(last.iterrows(), y):
            ys = [pos(i, float(r[p])) for i, p in enumerate(axes_names)]
            ax.plot(xs, ys, color=cmap(norm(val)), lw=1.0, alpha=0.85)
        if defaults and all(p in defaults for p in params):
            dflt = last[_is_defaults(last, defaults)]
            ys = [pos(i, float(defaults[p])) for i, p in enumerate(params)]
            if len(dflt):
                ys.append(pos(len(params), float(dflt[metric].iloc[0])))
                ax.plot(xs, ys, **{k: v for k, v in DEFAULTS_STYLE.items() if k != "ms"}, label="paper defaults")
            else:
                ax.plot(xs[:-1], ys, **{k: v for k, v in DEFAULTS_STYLE.items() if k != "ms"},
                        label="paper defaults")
        for i, (p, logp, lo, span, tr, lo_v, hi_v) in enumerate(cols):
            ax.axvline(i, color="0.3", lw=0.7)
            ax.annotate(fmt_value(hi_v), (i, 1.0), xytext=(2, 2), textcoords="offset points", fontsize=style.MIN_FONT)
            ax.annotate(fmt_value(lo_v), (i, 0.0), xytext=(2, -9), textcoords="offset points", fontsize=style.MIN_FONT)
        ax.set_xticks(xs, [metric_name(p) + (" (log)" if c[1] else "") for p, c in zip(axes_names, cols)])
        ax.set_yticks([])
        ax.set_ylim(-0.08, 1.08)
        ax.set_xlim(-0.2, len(axes_names) - 0.6)
        ax.grid(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_visible(False)
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, label=metric_name(metric) + " (%)", pad=0.01, aspect=25)
        if ax.get_legend_handles_labels()[0]:
            outside_legend(fig, *ax.get_legend_handles_labels())
    FIGURE_NOTES["parallel"] = with_schedule(
        f"Parallel coordinates of the {len(last)} complete trials: each line one trial, through its value of each "
        f"searched parameter (axis ends: the smallest and largest value tried) to its {metric_name(metric)}; colour: "
        f"{metric_name(metric)}; dashed black: the paper defaults", df)
    return fig


def val_test_figure(confirmed: dict | None, df: pd.DataFrame | None = None) -> Figure | None:
    """Validation vs confirmed test per confirm candidate (column width): x = the search's validation
    objective of the candidate's search trial, y = its test average incremental accuracy over the confirm
    seeds (mean, 95% t-interval for >= 3 seeds, else the mean alone); the paper defaults as a black star."""
    if not confirmed:
        return None
    rows = [r for r in confirmed["rows"] if r.get("search_value") is not None and r.get("cnn_mean") is not None]
    if not rows:
        return None
    with style.context():
        fig, ax = style.figure(style.COLUMN, 2.5)
        for r in rows:
            n, std = int(r["n"]), r.get("cnn_std")
            half = _t_half(float(std) if std is not None else math.nan, n)
            is_d = r["label"] == "paper defaults"
            st = dict(color="black", marker="*", ms=8) if is_d else dict(color=style.ROLE["complete"], marker="o", ms=4)
            if math.isnan(half):
                ax.plot([r["search_value"]], [r["cnn_mean"]], ls="none", mfc="white", **st)
            else:
                ax.errorbar([r["search_value"]], [r["cnn_mean"]], yerr=[half], fmt=st["marker"], color=st["color"],
                            ms=st["ms"], capsize=2)
            ax.annotate(r["label"], (r["search_value"], r["cnn_mean"]), xytext=(4, 3), textcoords="offset points",
                        fontsize=style.MIN_FONT)
        ax.set_xlabel(metric_name(str(confirmed.get("metric") or "val_avg_inc_acc_cnn")) + " (%), search")
        ax.set_ylabel("test avg. inc. acc. (CNN) (%), confirmed")
        ax.margins(x=0.25, y=0.2)
    seeds = confirmed.get("seeds")
    cap = (f"Validation vs confirmed test for each confirm candidate: x, the search's validation objective of its "
           f"search trial (one seed); y, test average incremental accuracy re-run on the full training set over "
           f"{seeds} seeds (mean; bar: 95% t-interval where n >= 3); black star: the paper defaults")
    FIGURE_NOTES["val_vs_test"] = with_schedule(cap, df) if df is not None else cap
    return fig


def search_history(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = OBJECTIVE,
                   mode: str = "max", formats: Iterable[str] = style.FORMATS,
                   meta: dict[str, Any] | None = None) -> list[Path]:
    fig = search_history_figure(df, metric=metric, mode=mode, meta=meta)
    return save_figure(fig, Path(out_dir) / "search_history", formats) if fig is not None else []


def param_slices(df: pd.DataFrame, out_dir: str | os.PathLike, params: list[str] | None = None,
                 metric: str = OBJECTIVE, meta: dict[str, Any] | None = None,
                 formats: Iterable[str] = style.FORMATS) -> list[Path]:
    fig = param_slices_figure(df, params=params, metric=metric, meta=meta)
    return save_figure(fig, Path(out_dir) / "param_slices", formats) if fig is not None else []


def search_figures(df: pd.DataFrame, out_dir: str | os.PathLike, params: list[str] | None = None,
                   metric: str = OBJECTIVE, meta: dict[str, Any] | None = None, confirmed: dict | None = None,
                   formats: Iterable[str] = style.FORMATS) -> list[Path]:
    """The parallel-coordinates and validation-vs-test figures of a search, saved."""
    out = []
    fig = parallel_figure(df, params=params, metric=metric, meta=meta)
    if fig is not None:
        out += save_figure(fig, Path(out_dir) / "parallel", formats)
    fig = val_test_figure(confirmed, df)
    if fig is not None:
        out += save_figure(fig, Path(out_dir) / "val_vs_test", formats)
    return out


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
    for ax in fig.axes:  # no titles in a figure: the caption says what it is
        ax.set_title("")
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_text("")
    for t in fig.findobj(lambda a: hasattr(a, "set_fontsize") and hasattr(a, "get_text")):
        t.set_fontsize(style.MIN_FONT)
    style.enforce_min_font(fig)
    return fig


def optuna_figures(study, params: list[str] | None = None,
                   min_importance_trials: int = MIN_IMPORTANCE_TRIALS) -> tuple[list[tuple[str, Figure]], list[str]]:
    """Optuna's parameter-importance plot of ``study`` (with at least ``min_importance_trials`` complete
    trials), restyled without a title. Returns ([(stem, Figure)], notes saying what was skipped and why)."""
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

        # Optuna's history, slice, intermediate-value and timeline plots are not drawn: ours show the trials under
        # one numbering, and the questions a reader asks are answered by the parallel-coordinates and the
        # validation-vs-test figures (search_figures)
        n_p = len(params or present)
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
    for stem, _ in figs:
        FIGURE_NOTES[stem] = ("fANOVA importance of each searched parameter for the objective, over the complete "
                              "trials of the Optuna study (evaluator seed 0)")
    return _save_all(figs, out_dir, formats), notes


# --------------------------------------------------------------------------- the analyses LUCIR papers show
def _protocol_groups(df: pd.DataFrame):
    d = with_memory(df[df["finished"] & df["phase"].notna()])
    if not len(d):
        return []
    return list(d.groupby(list(GROUP), sort=True, dropna=False))


def _has(d: pd.DataFrame, col: str) -> bool:
    return col in d and d[col].notna().any()


def _phase_lines(ax, g: pd.DataFrame, col: str, presets: list, labels: bool = True, first: int = 1) -> None:
    for p in presets:
        s = g[(g["preset"] == p) & (g["phase"] >= first)]
        if not len(s) or s[col].isna().all():
            continue
        agg = s.groupby("phase")[col].agg(["mean", "std"]).sort_index()
        st = style.line_style(p)
        x = agg.index.to_numpy(dtype=float)
        ax.plot(x, agg["mean"], color=st["color"], marker=st["marker"], ls=st["ls"], zorder=st["zorder"], ms=3.5,
                mfc="white" if st["ls"] == "--" else st["color"], label=short_name(p) if labels else None)
        if s["trial_id"].nunique() > 1:
            ax.fill_between(x, agg["mean"] - agg["std"], agg["mean"] + agg["std"], color=st["color"], alpha=0.12,
                            linewidth=0)


def _phase_axis(ax, phases: int, first: int = 1) -> None:
    ticks = list(range(first, int(phases) + 1))
    step = max(1, math.ceil(len(ticks) / 8))
    ax.set_xticks(ticks[::step])
    ax.set_xlim(first - 0.3, int(phases) + 0.3)


def old_new_figures(df: pd.DataFrame) -> list[tuple[str, Figure]]:
    """Per protocol: old-class and new-class accuracy after each incremental phase (columns), one line per
    method (mean over seeds, ± std band); CNN in the first row, NME in the second when recorded."""
    figs = []
    for key, g in _protocol_groups(df):
        rows = [(c, k) for c, k in (("cnn", "CNN"), ("nme", "NME")) if _has(g, f"acc_old_{c}") and _has(g, f"acc_new_{c}")]
        if not rows:
            continue
        presets = sorted(g["preset"].dropna().unique(), key=_sort_key_preset)
        ds, base, phases, mem = key
        with style.context():
            fig, axes = style.figure(style.COLUMN, 0.55 + 1.45 * len(rows) + 0.17 * math.ceil(len(presets) / 3),
                                     nrows=len(rows), ncols=2, sharex=True, sharey="row", squeeze=False)
            for r, (c, k) in enumerate(rows):
                for j, which in enumerate(("old", "new")):
                    ax = axes[r][j]
                    _phase_lines(ax, g, f"acc_{which}_{c}", presets, labels=(r == 0 and j == 0))
                    _phase_axis(ax, phases)
                    ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
                    ax.set_ylabel(f"{which}-class acc. ({k}) (%)")
                    if j == 1:
                        ax.tick_params(labelleft=True)
                    ax.set_xlabel("phase" if r == len(rows) - 1 else "")
            outside_legend(fig, *axes[0][0].get_legend_handles_labels())
        stem = f"old_new_{slug(protocol_label(ds, base, phases, mem))}"
        FIGURE_NOTES[stem] = with_schedule(
            f"Old- vs new-class accuracy after each incremental phase, {protocol_label(ds, base, phases, mem)}: "
            "left, the classes of earlier phases; right, the classes added in the phase (top-1 over all classes "
            "seen, %); mean ± std over seeds", g)
        figs.append((stem, fig))
    return figs


def _mean_matrix(trials: list, kind: str = "cnn") -> np.ndarray | None:
    """The mean over ``trials`` of their accuracy matrices (``results.accuracy_matrix``); None when there are
    none, or their shapes differ."""
    import warnings

    from analysis.results import accuracy_matrix

    mats = [accuracy_matrix(t, kind).to_numpy(dtype=float) for t in trials
            if (t.acc_matrix_cnn if kind == "cnn" else t.acc_matrix_nme)]
    if not mats or len({m.shape for m in mats}) != 1:
        return None
    with warnings.catch_warnings():  # an entry NaN in every trial: NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(mats), axis=0)


def matrix_figures(df: pd.DataFrame, trials: list, kind: str = "cnn") -> list[tuple[str, Figure]]:
    """Per protocol: the accuracy matrix (row = phase, column = class group, % top-1 on that group's test
    images; group g = the classes added in phase g) as a heatmap, one panel per method, mean over its
    finished seeds. ``trials``: the experiment's records (``Experiment.trials``), which hold the matrices."""
    by_id = {t.trial_id: t for t in trials}
    figs = []
    for key, g in _protocol_groups(df):
        presets = sorted(g["preset"].dropna().unique(), key=_sort_key_preset)
        mats = []
        for p in presets:
            ids = g[g["preset"] == p]["trial_id"].unique()
            m = _mean_matrix([by_id[i] for i in ids if i in by_id], kind)
            if m is not None:
                mats.append((p, m, len(ids)))
        if not mats:
            continue
        ds, base, phases, mem = key
        ncols = min(len(mats), 4)
        nrows = math.ceil(len(mats) / ncols)
        width = style.COLUMN if ncols <= 2 else style.PAGE
        annotate = mats[0][1].shape[0] <= 6
        with style.context():
            fig, axes = style.figure(width, 0.6 + (width / ncols) * 0.85 * nrows, nrows=nrows, ncols=ncols,
                                     squeeze=False)
            im = None
            for ax, (p, m, n) in zip(axes.ravel(), mats):
                im = ax.imshow(m, vmin=0, vmax=100, cmap=style.SEQUENTIAL, aspect="auto")
                ax.set_xlabel(f"class group ({short_name(p)})")
                ax.set_ylabel("phase")
                ax.grid(False)
                ax.set_xticks(range(m.shape[1]))
                ax.set_yticks(range(m.shape[0]))
                if m.shape[0] > 8:
                    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
                    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
                if annotate:
                    for (i, j), v in np.ndenumerate(m):
                        if not np.isnan(v):
                            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=style.MIN_FONT,
                                    color="white" if v < 60 else "black")
            for ax in axes.ravel()[len(mats):]:
                ax.set_visible(False)
            fig.colorbar(im, ax=list(axes.ravel()[:len(mats)]), label=f"top-1 acc. ({kind.upper()}) (%)",
                         shrink=0.9, aspect=25)
        stem = f"matrix_{kind}_{slug(protocol_label(ds, base, phases, mem))}"
        FIGURE_NOTES[stem] = with_schedule(
            f"Accuracy matrix ({kind.upper()} classifier), {protocol_label(ds, base, phases, mem)}: row t, column g "
            "= top-1 accuracy (%) after phase t on the test images of the classes added in phase g (0 = base), "
            "mean over the finished seeds of each method; the drop down a column is forgetting", g)
        figs.append((stem, fig))
    return figs


def bwt_from_matrix(matrix: list) -> list[float]:
    """BWT at each phase t from an accuracy matrix: mean over g < t of A[t][g] - A[g][g] (NaN at t = 0)."""
    out = []
    for t, row in enumerate(matrix):
        vals = [float(row[g]) - float(matrix[g][g]) for g in range(t)
                if g < len(row) and row[g] is not None and matrix[g][g] is not None]
        out.append(float(np.mean(vals)) if vals else math.nan)
    return out


def forgetting_figures(df: pd.DataFrame, trials: list | None = None) -> list[tuple[str, Figure]]:
    """Per protocol: forgetting (CNN) and BWT (CNN) against the phase, one line per method (mean ± std over
    seeds). BWT from the records' ``bwt_cnn`` when present, else computed from the accuracy matrices."""
    d = df.copy()
    if not _has(d, "bwt_cnn") and trials:
        bwt = {t.trial_id: bwt_from_matrix(t.acc_matrix_cnn) for t in trials if t.acc_matrix_cnn}
        d["bwt_cnn"] = [bwt.get(i, [])[int(p)] if i in bwt and pd.notna(p) and int(p) < len(bwt[i]) else math.nan
                        for i, p in zip(d["trial_id"], d["phase"])]
    figs = []
    for key, g in _protocol_groups(d):
        panels = [(c, metric_name(c)) for c in ("forgetting_cnn", "bwt_cnn") if _has(g, c)]
        if not panels:
            continue
        presets = sorted(g["preset"].dropna().unique(), key=_sort_key_preset)
        ds, base, phases, mem = key
        with style.context():
            fig, axes = style.figure(style.COLUMN, 0.55 + 1.4 * len(panels) + 0.17 * math.ceil(len(presets) / 3),
                                     nrows=len(panels), sharex=True, squeeze=False)
            for ax, (c, name) in zip(axes[:, 0], panels):
                _phase_lines(ax, g, c, presets, labels=ax is axes[0][0])
                _phase_axis(ax, phases)
                ax.set_ylabel(f"{name} (points)")
                if c.startswith("bwt"):
                    ax.axhline(0.0, color="0.3", lw=0.7, ls="--")
            axes[-1][0].set_xlabel("phase")
            outside_legend(fig, *axes[0][0].get_legend_handles_labels())
        stem = f"forgetting_{slug(protocol_label(ds, base, phases, mem))}"
        FIGURE_NOTES[stem] = with_schedule(
            f"Forgetting and backward transfer against the phase, {protocol_label(ds, base, phases, mem)}, mean ± "
            f"std over seeds. {DEFINITIONS['forgetting'][0].upper()}{DEFINITIONS['forgetting'][1:]}; "
            f"{DEFINITIONS['bwt']}", g)
        figs.append((stem, fig))
    return figs


def norm_ratio_figures(df: pd.DataFrame) -> list[tuple[str, Figure]]:
    """Per protocol: the new/old ratio of the mean classifier weight-row norms (before normalisation) after
    each incremental phase, one line per method; a dashed line at 1 (no magnitude bias). The paper's Fig. 3
    argument: a plain FC layer's new-class weights grow larger than the old ones, cosine normalisation
    removes the gap."""
    d = df.copy()
    if not (_has(d, "weight_norm_old") and _has(d, "weight_norm_new")):
        return []
    d["norm_ratio"] = d["weight_norm_new"] / d["weight_norm_old"]
    figs = []
    for key, g in _protocol_groups(d):
        if not _has(g, "norm_ratio"):
            continue
        presets = sorted(g["preset"].dropna().unique(), key=_sort_key_preset)
        ds, base, phases, mem = key
        with style.context():
            fig, ax = style.figure(style.COLUMN, 2.2 + 0.17 * math.ceil(len(presets) / 3))
            _phase_lines(ax, g, "norm_ratio", presets)
            ax.axhline(1.0, color="0.3", lw=0.7, ls="--")
            _phase_axis(ax, phases)
            ax.set_xlabel("phase")
            ax.set_ylabel("weight norm, new / old")
            outside_legend(fig, *ax.get_legend_handles_labels())
        stem = f"norm_ratio_{slug(protocol_label(ds, base, phases, mem))}"
        FIGURE_NOTES[stem] = with_schedule(
            f"Classifier weight norms, {protocol_label(ds, base, phases, mem)}: {DEFINITIONS['norm_ratio']}; mean ± "
            "std over seeds", g)
        figs.append((stem, fig))
    return figs


def diagnostic_figures(df: pd.DataFrame, trials: list | None = None) -> list[tuple[str, Figure]]:
    """Every figure of the section above that the data allow."""
    out = old_new_figures(df)
    if trials:
        out += matrix_figures(df, trials, "cnn")
    out += forgetting_figures(df, trials)
    out += norm_ratio_figures(df)
    return out


def diagnostics(df: pd.DataFrame, out_dir: str | os.PathLike, trials: list | None = None,
                formats: Iterable[str] = style.FORMATS) -> list[Path]:
    return _save_all(diagnostic_figures(df, trials), out_dir, formats)
