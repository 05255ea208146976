"""Figures of an experiment (PNG, headless matplotlib): pure functions of the long DataFrame.

* ``accuracy_curves``: top-1 accuracy against the number of classes seen, one line per preset (mean over
  seeds, ± std band), CNN solid and NME dashed; one figure per protocol (the paper's Fig. 4 / 5).
* ``ablation_bars``: average incremental accuracy per ladder rung with std error bars, grouped by phase
  count (Fig. 7); one figure per (dataset, base classes, exemplar budget).
* ``search_history``: the objective of each finished trial in completion order, with the running best.
* ``param_slices``: the objective against each searched parameter.

Each ``*_figures`` function returns ``[(file name, Figure)]`` so tests can count the drawn series;
each plain function saves them (atomically) and returns the paths written. Only finished trials are drawn.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.results import OBJECTIVE, last_phase  # noqa: E402
from analysis.tables import (GROUP, _sort_key_preset, protocol_label, searched_params, slug,  # noqa: E402
                             summary_table, varying_fields, with_memory)


METRIC_LABELS = {"avg_inc_acc_cnn": "average incremental accuracy, CNN",
                 "avg_inc_acc_nme": "average incremental accuracy, NME",
                 "last_acc_cnn": "last-phase accuracy, CNN", "last_acc_nme": "last-phase accuracy, NME",
                 "forgetting_cnn": "forgetting, CNN"}


def _color(i: int):
    return plt.get_cmap("tab10")(i % 10)


def _series_label(preset: Any, row: pd.Series, vary: list[str]) -> str:
    if not vary:
        return str(preset)
    return f"{preset} ({', '.join(f'{k}={row[k]}' for k in vary)})"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to a temporary name, then rename it into place; close the figure."""
    from lucir.checkpoint import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _save_all(figs: list[tuple[str, Figure]], out_dir: str | os.PathLike) -> list[Path]:
    return [save_figure(fig, Path(out_dir) / name) for name, fig in figs]


# --------------------------------------------------------------------------- accuracy curves
def accuracy_figures(df: pd.DataFrame, nme: bool = True, max_series: int = 10) -> list[tuple[str, Figure]]:
    """One figure per protocol; per preset a CNN line (mean over seeds) with a ± std band, NME dashed.

    When a grid or a search varied hyperparameters, each configuration is a series; beyond ``max_series``
    only the best ones (by final average incremental accuracy) are drawn, and the title says so.
    """
    d = with_memory(df[df["finished"] & df["phase"].notna()])
    if not len(d):
        return []
    vary = varying_fields(d)
    figs = []
    for key, g in d.groupby(list(GROUP), sort=True, dropna=False):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        series = list(g.groupby(["preset", *vary], sort=False, dropna=False))
        n_all = len(series)
        if n_all > max_series:
            def final(kv):
                s = kv[1]
                return s[s["phase"] == s["phase"].max()]["avg_inc_acc_cnn"].mean()
            series = sorted(series, key=final, reverse=True)[:max_series]
        series.sort(key=lambda kv: _sort_key_preset(kv[0][0]))
        for i, (_, s) in enumerate(series):
            row = s.iloc[0]
            label = _series_label(row["preset"], row, vary)
            n_seeds = s["trial_id"].nunique()
            agg = s.groupby("classes_seen").agg(cnn=("acc_cnn", "mean"), cnn_sd=("acc_cnn", "std"),
                                                nme=("acc_nme", "mean")).sort_index()
            x = agg.index.to_numpy(dtype=float)
            y = agg["cnn"].to_numpy(dtype=float)
            sd = agg["cnn_sd"].to_numpy(dtype=float)
            ax.plot(x, y, marker="o", ms=3.5, color=_color(i), label=f"{label} (n={n_seeds})")
            if n_seeds > 1:
                ax.fill_between(x, y - sd, y + sd, color=_color(i), alpha=0.18, linewidth=0)
            if nme:
                ax.plot(x, agg["nme"].to_numpy(dtype=float), ls="--", color=_color(i), alpha=0.8)
        ds, base, phases, mem = key
        title = f"{protocol_label(ds, base, phases, mem)}: top-1 accuracy" + (" (CNN solid, NME dashed)"
                                                                             if nme else " (CNN)")
        if n_all > len(series):
            title += f"\nbest {len(series)} of {n_all} configurations by final avg. inc. accuracy"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("number of classes seen")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        figs.append((f"acc_{slug(protocol_label(ds, base, phases, mem))}.png", fig))
    return figs


def accuracy_curves(df: pd.DataFrame, out_dir: str | os.PathLike, nme: bool = True) -> list[Path]:
    """Save ``accuracy_figures`` under ``out_dir``; returns the PNG paths (one per protocol)."""
    return _save_all(accuracy_figures(df, nme=nme), out_dir)


# --------------------------------------------------------------------------- ablation bars
def ablation_figures(df: pd.DataFrame, metric: str = "avg_inc_acc_cnn") -> list[tuple[str, Figure]]:
    """Bars of ``metric`` (a summary metric: mean over seeds, std error bars) per rung, grouped by phases."""
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
        rungs = list(dict.fromkeys(g.sort_values("preset", key=lambda c: c.map(_sort_key_preset),
                                                 kind="stable")["rung"]))
        width = 0.8 / len(rungs)
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * len(rungs) * len(phases)), 4.2))
        for i, rung in enumerate(rungs):
            r = g[g["rung"] == rung].set_index("phases")
            xs = [j for j, p in enumerate(phases) if p in r.index]
            if not xs:
                continue
            means = [float(r.loc[phases[j], f"{metric}_mean"]) for j in xs]
            stds = [float(r.loc[phases[j], f"{metric}_std"]) for j in xs]
            stds = [0.0 if np.isnan(v) else v for v in stds]
            ax.bar(np.array(xs) + (i - (len(rungs) - 1) / 2) * width, means, width * 0.95, yerr=stds,
                   capsize=3, color=_color(i), label=rung)
        ax.set_xticks(range(len(phases)), [f"{p} phases" for p in phases])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric.replace("_", " ")) + " (%)")
        ax.set_title(f"{protocol_label(ds, base, None, mem)}: ablation (mean ± std over seeds)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        lo = float(np.nanmin(g[f"{metric}_mean"] - g[f"{metric}_std"].fillna(0)))
        ax.set_ylim(bottom=max(0.0, lo - 10.0))
        figs.append((f"ablation_{slug(protocol_label(ds, base, None, mem))}.png", fig))
    return figs


def ablation_bars(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = "avg_inc_acc_cnn") -> list[Path]:
    return _save_all(ablation_figures(df, metric=metric), out_dir)


# --------------------------------------------------------------------------- search
def completion_order(df: pd.DataFrame) -> pd.DataFrame:
    """Last-phase rows of the finished trials in completion order (record time, then trial name)."""
    last = last_phase(df)
    return last.sort_values(["updated", "trial_name", "trial_id"], na_position="last", kind="stable")


def search_history_figure(df: pd.DataFrame, metric: str = OBJECTIVE, mode: str = "max") -> Figure | None:
    """Objective per finished trial (points, completion order) with the running best (step line)."""
    last = completion_order(df)
    if not len(last):
        return None
    y = last[metric].to_numpy(dtype=float)
    x = np.arange(1, len(y) + 1)
    best = np.fmax.accumulate(y) if mode == "max" else np.fmin.accumulate(y)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.scatter(x, y, s=18, color=_color(0), label="trial", zorder=3)
    ax.step(x, best, where="post", color=_color(3), label=f"best so far ({mode})")
    n_out = int(df.groupby("trial_id")["finished"].first().eq(False).sum())
    ax.set_title(f"search history: {metric} at the last phase ({len(y)} finished"
                 + (f", {n_out} not finished" if n_out else "") + ")", fontsize=9)
    ax.set_xlabel("finished trial (completion order)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + " (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def param_slices_figure(df: pd.DataFrame, params: list[str] | None = None, metric: str = OBJECTIVE,
                        meta: dict[str, Any] | None = None) -> Figure | None:
    """One panel per searched parameter: objective (last phase, finished trials) against its value."""
    last = completion_order(df)
    params = params if params is not None else searched_params(df, meta)
    params = [p for p in params if p in last]
    if not len(last) or not params:
        return None
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3.4), sharey=True, squeeze=False)
    order = np.arange(len(last))
    for ax, p in zip(axes[0], params):
        vals = last[p]
        numeric = pd.api.types.is_numeric_dtype(vals) and not pd.api.types.is_bool_dtype(vals)
        if numeric:
            xv = vals.to_numpy(dtype=float)
        else:  # categorical parameter: one column per value
            cats = sorted(vals.astype(str).unique())
            xv = vals.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(dtype=float)
            ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=7)
        sc = ax.scatter(xv, last[metric].to_numpy(dtype=float), c=order, cmap="viridis", s=18)
        if numeric and np.all(np.isfinite(xv)) and np.all(xv == np.round(xv)):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(p)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (%)")
    fig.colorbar(sc, ax=list(axes[0]), label="completion order", shrink=0.85)
    fig.suptitle("parameter slices (finished trials)", fontsize=9)
    return fig


def search_history(df: pd.DataFrame, out_dir: str | os.PathLike, metric: str = OBJECTIVE,
                   mode: str = "max") -> list[Path]:
    fig = search_history_figure(df, metric=metric, mode=mode)
    return [save_figure(fig, Path(out_dir) / "search_history.png")] if fig is not None else []


def param_slices(df: pd.DataFrame, out_dir: str | os.PathLike, params: list[str] | None = None,
                 metric: str = OBJECTIVE, meta: dict[str, Any] | None = None) -> list[Path]:
    fig = param_slices_figure(df, params=params, metric=metric, meta=meta)
    return [save_figure(fig, Path(out_dir) / "param_slices.png")] if fig is not None else []
