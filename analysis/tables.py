"""Tables of an experiment, as pure functions of the long DataFrame (``analysis.results``).

* ``summary_table``: per protocol (dataset, base classes, phases, exemplar budget) x preset, the average
  incremental accuracy (CNN and NME), the last-phase accuracy and the last-phase forgetting as mean and
  sample std (ddof=1) over seeds, the number of seeds, and how many trials were left out (pruned, failed,
  unfinished). Only finished trials count.
* ``ablation_tables``: the paper's layout (Table 2), one ``PaperTable`` per (dataset, base, budget): rows =
  ladder rungs under their paper names (``PAPER_NAMES``), check-mark columns CN / LF / MR / CBF from the
  presets' switches, CNN and NME average incremental accuracy "mean ± std" per phase count with n; the best
  non-upper-bound value of each column in bold.
* ``summary_display``, ``compact``: paper-ready versions of any table: columns constant over all rows are
  dropped and stated once in a note, headers are words (``header_words``), best values in bold.
* ``cost_table``: CPU-/GPU-hours per protocol x preset, a base phase shared through the base cache counted once.
* ``long_table``: every number, one row per trial x phase (the long frame; ``tables/long.csv``).
* ``search_summary``, ``param_importances``, ``best_command_line``: the best configurations of a search.
* ``export_table``: CSV, Markdown and LaTeX files of any of them (LaTeX: a ``table`` environment with
  ``\caption`` above a booktabs tabular, a ``\label``, headers as words; ``**x**`` cells become ``\textbf{x}``
  and ``✓`` ``\checkmark`` (amssymb)).

Cells read "mean ± std"; with a single seed the std is undefined (NaN) and the cell is the mean alone.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from analysis.results import (CONFIG_FIELDS, HYPERPARAMS, JOURNAL_FILE, OBJECTIVE, PROTOCOL, RUNTIME_FIELDS,
                              last_phase)

LADDER = ("finetune", "baseline", "cn", "cn_lf", "lucir", "lucir_cbf", "joint")
GROUP = ("dataset", "base_classes", "phases", "memory")
#: columns of ``summary_table`` summarised as mean/std over seeds: output name -> frame column
SUMMARY_METRICS = {"avg_inc_acc_cnn": "avg_inc_acc_cnn", "avg_inc_acc_nme": "avg_inc_acc_nme",
                   "last_acc_cnn": "acc_cnn", "last_acc_nme": "acc_nme", "forgetting_cnn": "forgetting_cnn",
                   "trial_seconds": "trial_seconds"}
DASH = "–"
# config columns that are not hyperparameters of a result: who ran it and what follows from other fields
# seeds and class orders are what a group's mean ± std runs over (LUCIR's protocol averages class orders)
_NOT_IDENTITY = set(RUNTIME_FIELDS) | {"seed", "class_order_seed", "num_classes", "preset", "cosine", "imprint",
                                       "less_forget", "adaptive_lambda", "margin_ranking", "kd", "mimic_scores", "cbf",
                                       "joint"}


#: the paper's name of each ladder preset: the one mapping every table (and figure) labels its rows with
PAPER_NAMES = {"finetune": "Finetune (replay)", "baseline": "Baseline (FC + KD)", "cn": "CN", "cn_lf": "CN + LF",
               "lucir": "LUCIR (CN + LF + MR)", "lucir_cbf": "LUCIR + CBF", "joint": "Joint (upper bound)"}
#: the upper bound (all data at once): never the "best" of a column
UPPER_BOUND = "joint"
#: the ablation's component columns: header -> the preset switch (``lucir.config.PRESETS``) that turns it on
COMPONENTS = {"CN": "cosine", "LF": "less_forget", "MR": "margin_ranking", "CBF": "cbf"}
CHECK = "✓"
#: the accuracy columns of the summary, in order: metric -> header; forgetting is better when lower
ACC_METRICS = {"avg_inc_acc_cnn": "avg. inc. acc. CNN (%)", "avg_inc_acc_nme": "avg. inc. acc. NME (%)",
               "last_acc_cnn": "last acc. CNN (%)", "last_acc_nme": "last acc. NME (%)",
               "forgetting_cnn": "forgetting CNN (%)"}
LOWER_IS_BETTER = {"forgetting_cnn"}
#: headers as words for the snake_case columns of the frames (``header_words``; others: '_' -> ' ')
HEADERS = {**ACC_METRICS, "acc_cnn": "last acc. CNN (%)", "acc_nme": "last acc. NME (%)",
           "acc_old_cnn": "old-class acc. CNN (%)", "acc_new_cnn": "new-class acc. CNN (%)",
           "trial_id": "trial", "base_classes": "base classes", "memory": "exemplars",
           "exemplars_per_class": "exemplars/class", "memory_total": "total memory", "phases_done": "phases done",
           "phases_total": "phases total", "seeds": "n", "eta_init": "eta init", "lambda_base": "lambda base",
           "trial_seconds": "time/trial (s)", "class_order_seed": "class order seed"}


def paper_name(preset: Any) -> str:
    """The paper's name of a preset ('cn_lf' -> 'CN + LF'); other names as they are."""
    return PAPER_NAMES.get(preset, str(preset))


def components(preset: Any) -> dict[str, bool | None]:
    """CN / LF / MR / CBF -> on? from the preset's switches (``lucir.config.PRESETS``); None for a custom preset."""
    from lucir.config import PRESETS

    sw = PRESETS.get(preset)
    return {h: (None if sw is None else bool(sw[k])) for h, k in COMPONENTS.items()}


def header_words(name: Any) -> str:
    """A column header as words: 'avg_inc_acc_cnn' -> 'avg. inc. acc. CNN (%)', 'phases_done' -> 'phases done'."""
    name = str(name)
    if name in HEADERS:
        return HEADERS[name]
    if name.startswith("val_") and name[4:] in HEADERS:
        return "val. " + HEADERS[name[4:]]
    return name.replace("_", " ")


def constant_note(consts: dict[str, Any]) -> str:
    """What the dropped constant columns held, once: 'digits, B4, 3 phases, 5 exemplars/class; n = 3'."""
    proto, rest = [], []
    for k, v in consts.items():
        if k == "dataset":
            proto.append(str(v))
        elif k in ("base_classes", "base"):
            proto.append(f"B{v}")
        elif k == "phases":
            proto.append(f"{v} phases")
        elif k in ("memory", "exemplars"):
            proto.append(str(v).replace("/class", " exemplars/class").replace(" total", " exemplars in total"))
        elif k == "exemplars_per_class":
            proto.append(f"{v} exemplars/class")
        elif k == "memory_total":
            if v:
                proto.append(f"{v} exemplars in total")
        elif k in ("seeds", "n"):
            rest.append(f"n = {v} finished trials (seeds) per row")
        elif k == "excluded":
            rest.append("no unfinished trial" if v == 0 else f"{v} unfinished trial(s) per row not counted")
        else:
            rest.append(f"{header_words(k)}: {DASH if _isnan(v) else v}")
    return "; ".join(p for p in (", ".join(proto), "; ".join(rest)) if p)


def drop_constant(table: pd.DataFrame, candidates: Iterable[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``table`` without the ``candidates`` columns that hold one value in every row, and those values."""
    consts: dict[str, Any] = {}
    if len(table):
        for c in candidates:
            if c in table.columns and c not in consts and table[c].map(_hashable).nunique(dropna=False) == 1:
                consts[c] = table[c].iloc[0]
    return table.drop(columns=list(consts)), consts


def compact(table: pd.DataFrame, candidates: Iterable[str] = PROTOCOL + ("memory", "preset", "seed")
            ) -> tuple[pd.DataFrame, str]:
    """A table for a reader: constant ``candidates`` columns dropped (returned as a note), headers as words,
    presets under their paper names."""
    out, consts = drop_constant(table, candidates)
    if "preset" in out:
        out = out.assign(preset=out["preset"].map(paper_name)).rename(columns={"preset": "method"})
    if "preset" in consts:
        consts["preset"] = paper_name(consts.pop("preset"))
    return out.rename(columns=header_words), constant_note(consts)


def _best_mask(means: pd.Series, eligible: pd.Series, groups: list[pd.Series] | None = None,
               lower: bool = False) -> pd.Series:
    """Rows holding the best mean of their group among ``eligible`` rows (ties all best; at least 2 rivals)."""
    m = means.astype(float).where(eligible.astype(bool))
    keys = groups if groups else [pd.Series(0, index=m.index)]
    best = m.groupby(keys, dropna=False).transform("min" if lower else "max")
    rivals = m.groupby(keys, dropna=False).transform("count")
    return (m == best) & (rivals >= 2) & m.notna()


def bold(cell: str) -> str:
    return cell if cell == DASH else f"**{cell}**"


@dataclass
class PaperTable:
    """A table in two forms: ``data`` every column in plain text (the CSV) and ``display`` for a reader
    (Markdown / LaTeX: constant columns dropped and stated in ``note``, headers as words, best in bold)."""

    data: pd.DataFrame
    display: pd.DataFrame
    note: str = ""


# --------------------------------------------------------------------------- helpers
def memory_label(exemplars_per_class: Any, memory_total: Any) -> str:
    """The exemplar budget of a protocol: '20/class' or '2000 total' (fixed total memory)."""
    try:
        if memory_total and int(memory_total) > 0:
            return f"{int(memory_total)} total"
        return f"{int(exemplars_per_class)}/class"
    except (TypeError, ValueError):
        return "?"


def with_memory(df: pd.DataFrame) -> pd.DataFrame:
    d = df.copy()
    if "memory" not in d:
        epc = d["exemplars_per_class"] if "exemplars_per_class" in d else pd.Series([None] * len(d), index=d.index)
        mt = d["memory_total"] if "memory_total" in d else pd.Series([0] * len(d), index=d.index)
        d["memory"] = [memory_label(a, b) for a, b in zip(epc, mt)]
    return d


def protocol_label(dataset: Any, base_classes: Any, phases: Any = None, memory: Any = None) -> str:
    """'digits B4 3 phases 20/class' (parts that are None are left out)."""
    parts = [str(dataset), f"B{base_classes}"]
    if phases is not None:
        parts.append(f"{phases} phases")
    if memory is not None:
        parts.append(str(memory))
    return " ".join(parts)


def slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in text.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def varying_fields(df: pd.DataFrame, within: Iterable[str] = GROUP + ("preset",)) -> list[str]:
    """Config fields (other than seed, runtime and preset switches) that differ inside a protocol x preset group.

    These are hyperparameters a grid or a search varied; trials that differ in them are not seeds of
    one configuration, so they are kept apart in the tables.
    """
    d = with_memory(df)
    within = [c for c in within if c in d]
    cand = [c for c in d.columns if c in CONFIG_FIELDS and c not in _NOT_IDENTITY and c not in within
            and c not in PROTOCOL]
    out = []
    for c in cand:
        vals = d[c].map(_hashable)
        if within:
            n = vals.groupby([d[w].map(_hashable) for w in within], dropna=False).nunique(dropna=True).max()
        else:
            n = vals.nunique(dropna=True)
        if n > 1:
            out.append(c)
    return out


def fmt_mean_std(mean: float, std: float, n: int | None = None, digits: int = 2) -> str:
    """'62.00 ± 2.00'; the mean alone when the std is undefined (one seed); '–' when there is no value."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return DASH
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _sort_key_preset(p: Any) -> tuple[int, str]:
    return (LADDER.index(p) if p in LADDER else len(LADDER), str(p))


# --------------------------------------------------------------------------- summary
def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary, one row per protocol x preset (x varied hyperparameters).

    Columns: dataset, base_classes, phases, memory, preset, [varied fields], seeds (finished trials),
    ``<metric>_mean`` / ``<metric>_std`` for ``SUMMARY_METRICS`` (std with ddof=1, NaN for one seed;
    ``trial_seconds`` is a trial's summed ``phase_seconds``, its wall time),
    excluded (trials of the group that did not finish: pruned, failed or still running).
    """
    d = with_memory(df)
    vary = varying_fields(d)
    keys = [c for c in GROUP if c in d] + ["preset"] + vary
    all_trials = d.groupby("trial_id", sort=False).head(1)
    all_trials = all_trials[all_trials["preset"].notna()].copy()  # unreadable trial files have no config
    for k in vary:
        all_trials[k] = all_trials[k].map(_hashable)
    fin = last_phase(d)
    if len(fin):  # wall time of a trial: its phases' seconds summed (train_seconds when not reported)
        per_phase = d["phase_seconds"].fillna(d["train_seconds"]) if "phase_seconds" in d else d["train_seconds"]
        total = per_phase.groupby(d["trial_id"]).sum(min_count=1)
        fin = fin.assign(trial_seconds=fin["trial_id"].map(total).astype(float))
    else:
        fin = fin.assign(trial_seconds=pd.Series(dtype=float))
    rows = []
    pairs: dict[int, dict[str, pd.Series]] = {}
    for key, g in all_trials.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        f = fin[fin["trial_id"].isin(set(g["trial_id"]))]
        row["seeds"] = int(len(f))
        for name, col in SUMMARY_METRICS.items():
            vals = f[col].astype(float) if len(f) else pd.Series(dtype=float)
            row[f"{name}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{name}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
        row["excluded"] = int(len(g) - len(f))
        pairs[len(rows)] = {name: pair_values(f, col) for name, col in SUMMARY_METRICS.items()
                            if name != "trial_seconds"}
        rows.append(row)
    cols = keys + ["seeds"] + [f"{n}_{s}" for n in SUMMARY_METRICS for s in ("mean", "std")] + ["excluded"]
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out["_p"] = out["preset"].map(_sort_key_preset)
        out = out.sort_values([c for c in GROUP if c in out] + ["_p"] + vary, kind="stable").drop(columns="_p")
    order = list(out.index)
    out = out.reset_index(drop=True)
    # per row and metric, the value of every finished (seed, class order): what bold-by-significance pairs on
    out.attrs["pairs"] = {i: pairs[j] for i, j in enumerate(order)}
    return out


from analysis.paired import ALPHA, PAIR_KEYS  # noqa: E402  (one home: the paired statistics)


def pair_values(last: pd.DataFrame, col: str) -> pd.Series:
    """One value of ``col`` per (seed, class order) of last-phase rows (repeats averaged)."""
    if not len(last) or col not in last:
        return pd.Series(dtype=float)
    keys = [last[k].map(_hashable) if k in last else pd.Series(0, index=last.index) for k in PAIR_KEYS]
    return last[col].astype(float).groupby(keys, dropna=False).mean().dropna()


def not_below_best(values: list[pd.Series | None], lower: bool = False, alpha: float = ALPHA) -> list[bool]:
    """Which rows are *not significantly below the best* (the rows to bold): the best is the highest mean
    (``lower``: the lowest) among the rows with values (None: not eligible, e.g. the upper bound); every
    other row is compared with it by a two-sided paired t-test (``scipy.stats.ttest_rel``) on the (seed,
    class order) pairs both have, the p values Holm-corrected over those comparisons; a row is below the best
    when its corrected p < ``alpha`` and its mean is worse. A row with fewer than 2 pairs cannot be shown
    worse: it stays bold. Nothing is bold with fewer than 2 eligible rows."""
    from analysis.paired import holm, t_test_p

    means = [float(v.mean()) if v is not None and len(v) else math.nan for v in values]
    ok = [i for i, m in enumerate(means) if not math.isnan(m)]
    out = [False] * len(values)
    if len(ok) < 2:
        return out
    best = (min if lower else max)(ok, key=lambda i: means[i])
    others, ps = [], []
    for i in ok:
        if i == best:
            continue
        common = values[i].index.intersection(values[best].index)
        d = (values[i].loc[common] - values[best].loc[common]).to_numpy(dtype=float)
        worse = (d.mean() > 0) if lower else (d.mean() < 0) if len(d) else False
        others.append((i, worse))
        ps.append(t_test_p(d) if len(d) >= 2 else math.nan)
    adj = holm(ps)
    out[best] = True
    for (i, worse), p in zip(others, adj):
        out[i] = not (worse and not math.isnan(p) and p < alpha)
    return out


def bold_note(alpha: float = ALPHA) -> str:
    return (f"bold: not significantly below the best of its column (two-sided paired t-test on (seed, class "
            f"order), Holm-corrected, alpha = {alpha:g}); the upper bound is never bold")


def _isnan(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text cells with word headers, every column (the CSV): protocol, preset (its id),
    method (its paper name), 'avg. inc. acc. CNN (%)' = '62.00 ± 2.00', ..., n, excluded. No time column:
    time is a cost (``cost_table``), not a result."""
    lead = [c for c in summary.columns if not (c.endswith("_mean") or c.endswith("_std"))
            and c not in ("seeds", "excluded")]
    out = summary[lead].copy()
    out.insert(lead.index("preset") + 1, "method", out["preset"].map(paper_name))
    for name in ACC_METRICS:
        out[name] = [fmt_mean_std(m, s) for m, s in zip(summary[f"{name}_mean"], summary[f"{name}_std"])]
    out["seeds"] = summary["seeds"]
    out["excluded"] = summary["excluded"]
    return out.rename(columns=header_words)


def summary_display(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The summary for a reader and its note: columns constant over all rows dropped (named in the note),
    rows named by method, the best non-upper-bound value of each accuracy column in bold (per protocol;
    forgetting: the lowest)."""
    lead = [c for c in summary.columns if not (c.endswith("_mean") or c.endswith("_std"))
            and c not in ("seeds", "excluded")]
    out = summary[lead].copy()
    proto = [summary[c].map(_hashable) for c in GROUP if c in summary]
    eligible = summary["preset"] != UPPER_BOUND
    pairs = summary.attrs.get("pairs") or {}
    groups = (summary.groupby(proto, dropna=False, sort=False).groups.values() if proto and len(summary)
              else [summary.index])
    for name in ACC_METRICS:
        cells = [fmt_mean_std(m, s) for m, s in zip(summary[f"{name}_mean"], summary[f"{name}_std"])]
        if pairs:
            best = pd.Series(False, index=summary.index)
            for idx in groups:
                idx = list(idx)
                vals = [pairs.get(i, {}).get(name) if eligible.loc[i] else None for i in idx]
                best.loc[idx] = not_below_best(vals, lower=name in LOWER_IS_BETTER)
        else:  # a summary without its per-seed values (built by hand): the best mean
            best = _best_mask(summary[f"{name}_mean"], eligible, proto, lower=name in LOWER_IS_BETTER)
        out[name] = [bold(c) if b else c for c, b in zip(cells, best)]
    out["seeds"] = summary["seeds"]
    out["excluded"] = summary["excluded"]
    vary = [c for c in lead if c not in GROUP and c != "preset"]
    disp, note = compact(out, candidates=[c for c in GROUP if c in out] + vary + ["seeds", "excluded"])
    return disp, "; ".join(x for x in (note, bold_note() if pairs else "") if x)


# --------------------------------------------------------------------------- ablation
def ablation_tables(df: pd.DataFrame) -> dict[str, PaperTable]:
    """The paper's ablation (Table 2), one table per (dataset, base classes, exemplar budget).

    Rows: presets in ladder order under their paper names (finetune, baseline, cn, cn_lf, lucir, lucir_cbf,
    joint; only those present; other presets after them); a varied hyperparameter is appended to the name.
    Columns: the components CN, LF, MR, CBF (✓ from the preset's switches, ``lucir.config.PRESETS``), then
    per phase count the CNN and NME average incremental accuracy 'mean ± std' over the finished seeds and
    their number n ('–' and 0 when none finished). ``display`` bolds each accuracy column's best value over
    the rows other than the upper bound (``joint``, named as such) and states constant columns in ``note``.
    """
    s = summary_table(df)
    if not len(s):
        return {}
    vary = [c for c in s.columns if c not in GROUP and c not in ("preset", "seeds", "excluded")
            and not c.endswith("_mean") and not c.endswith("_std")]
    pairs = s.attrs.get("pairs") or {}
    s = s.copy()
    s["_row"] = list(s.index)
    s["rung"] = [paper_name(p) if not vary else f"{paper_name(p)} ({', '.join(f'{k}={r[k]}' for k in vary)})"
                 for p, (_, r) in zip(s["preset"], s.iterrows())]
    metrics = {"avg_inc_acc_cnn": "CNN", "avg_inc_acc_nme": "NME"}
    out: dict[str, PaperTable] = {}
    for (ds, b, mem), g in s.groupby(["dataset", "base_classes", "memory"], sort=False, dropna=False):
        phases = sorted(g["phases"].unique())
        g = g.sort_values("preset", key=lambda c: c.map(_sort_key_preset), kind="stable")
        rungs = list(dict.fromkeys(g["rung"]))
        preset_of = dict(zip(g["rung"], g["preset"]))
        one = len(phases) == 1

        def head(m: str, p: Any) -> str:
            if m == "n":
                return "n" if one else f"n ({p} phases)"
            return f"avg. inc. acc. {m} (%)" if one else f"{m}, {p} phases (%)"

        data = pd.DataFrame({"preset": [preset_of[r] for r in rungs], "method": rungs})
        for h in COMPONENTS:
            data[h] = [components(preset_of[r])[h] for r in rungs]
        disp = pd.DataFrame({"method": rungs})
        for h in COMPONENTS:
            disp[h] = ["?" if v is None else (CHECK if v else "") for v in data[h]]
        for p in phases:
            rows = g[g["phases"] == p].set_index("rung")
            eligible = pd.Series([preset_of[r] != UPPER_BOUND and r in rows.index for r in rungs])
            for m, short in metrics.items():
                mean = pd.Series([rows.at[r, f"{m}_mean"] if r in rows.index else math.nan for r in rungs])
                std = [rows.at[r, f"{m}_std"] if r in rows.index else math.nan for r in rungs]
                cells = [fmt_mean_std(a, b_) for a, b_ in zip(mean, std)]
                if pairs:
                    best = not_below_best([pairs[rows.at[r, "_row"]][m] if ok else None
                                           for r, ok in zip(rungs, eligible)])
                else:
                    best = _best_mask(mean, eligible)
                data[head(short, p)] = cells
                disp[head(short, p)] = [bold(c) if x else c for c, x in zip(cells, best)]
            n = [int(rows.at[r, "seeds"]) if r in rows.index else 0 for r in rungs]
            data[head("n", p)] = n
            disp[head("n", p)] = n
        disp, consts = drop_constant(disp, [head("n", p) for p in phases])
        consts = {("seeds" if k.startswith("n") else k): v for k, v in consts.items()}
        note = constant_note({"dataset": ds, "base_classes": b, **({"phases": phases[0]} if one else {}),
                              "memory": mem, **consts})
        if pairs:
            note = f"{note}; {bold_note()}"
        out[protocol_label(ds, b, None, mem)] = PaperTable(data=data, display=disp, note=note)
    return out


# --------------------------------------------------------------------------- accuracy per phase
def curve_tables(df: pd.DataFrame, metric: str = "acc_cnn") -> dict[str, pd.DataFrame]:
    """Top-1 accuracy after each phase, one table per protocol: rows = presets (ladder order), columns =
    classes seen, cells 'mean ± std' over the finished seeds (the numbers behind the accuracy curves)."""
    d = with_memory(df[df["finished"] & df["phase"].notna()])
    out: dict[str, pd.DataFrame] = {}
    if not len(d):
        return out
    vary = varying_fields(d)
    for key, g in d.groupby(list(GROUP), sort=True, dropna=False):
        rows = {}
        series = list(g.groupby(["preset", *vary], sort=False, dropna=False))
        series.sort(key=lambda kv: _sort_key_preset(kv[0][0]))
        for skey, s in series:
            label = skey[0] if not vary else (f"{paper_name(skey[0])} "
                                              f"({', '.join(f'{k}={v}' for k, v in zip(vary, skey[1:]))})")
            agg = s.groupby("classes_seen")[metric].agg(["mean", "std"]).sort_index()
            rows[label] = {f"{int(c)} classes": fmt_mean_std(m, sd) for c, m, sd in
                           zip(agg.index, agg["mean"], agg["std"])}
        tab = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
        tab.index = [paper_name(r) if r in PAPER_NAMES else r for r in tab.index]
        tab.index.name = "method"
        if tab.shape[1] > 6:  # many phases: one row per phase (a table grows down a page, not across it)
            tab = tab.T
            tab.index.name = "classes seen"
        out[protocol_label(*key)] = tab
    return out


# --------------------------------------------------------------------------- cost
def _base_key(row: pd.Series) -> str:
    """The trial's base-phase key (``Config.base_key``: trials with equal keys share phase 0); its id when
    the config cannot be rebuilt (then its phase 0 is its own)."""
    try:
        from lucir.config import Config

        return Config.from_flat(config_of(row)).base_key()
    except Exception:  # noqa: BLE001 - an odd or partial config: nothing shared
        return f"trial:{row['trial_id']}"


def _hours(v: Any) -> str:
    return DASH if _isnan(v) else (f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}")


def cost_table(df: pd.DataFrame, meta: dict[str, Any] | None = None) -> PaperTable:
    """Compute cost per protocol x preset: trials, base phases paid, wall, CPU- and GPU-hours.

    A trial's seconds are its phases' ``phase_seconds`` (``train_seconds`` where not reported), times the
    resources of a trial (``runner.cpus_per_trial`` / ``gpus_per_trial`` of lucir_experiment.json; 1 CPU and
    no GPU when not recorded). A trial whose record says ``base_cache == "hit"`` did not train its phase 0:
    the trial of the same base key that did (a miss) paid it; when every trial of a key hit (the pre-training
    trained it), that phase 0 is counted once, on the first of them. Every trial that reported a phase
    counts, finished or not (it spent the time).
    """
    runner = (meta or {}).get("runner") or {}
    recorded = isinstance(runner, dict) and "cpus_per_trial" in runner
    cpus = float(runner.get("cpus_per_trial") or 1.0) if recorded else 1.0
    gpus = float(runner.get("gpus_per_trial") or 0.0) if recorded else 0.0
    d = with_memory(df[df["phase"].notna()])
    keys = [c for c in GROUP if c in d] + ["preset"]
    cols = keys + ["trials", "base phases paid", "wall hours", "CPU-hours", "GPU-hours", "min/trial"]
    if not len(d):
        empty = pd.DataFrame(columns=cols)
        return PaperTable(empty, empty.copy(), "no trial reported a phase: no cost")
    secs = (d["phase_seconds"].fillna(d["train_seconds"]) if "phase_seconds" in d else d["train_seconds"])
    d = d.assign(_s=secs.fillna(0.0).astype(float))
    first = d.sort_values(["trial_id", "phase"], kind="stable").groupby("trial_id", sort=False).head(1)
    trials = first.assign(_key=[_base_key(r) for _, r in first.iterrows()],
                          _hit=(first["base_cache"].astype(str).str.lower() == "hit").to_numpy(),
                          _o=first["preset"].map(_sort_key_preset))
    base0 = d[d["phase"] == 0].set_index("trial_id")["_s"]
    later = d[d["phase"] > 0].groupby("trial_id")["_s"].sum()
    trials["_base"] = trials["trial_id"].map(base0).fillna(0.0)
    trials["_pays_base"] = ~trials["_hit"] & trials["trial_id"].isin(base0.index)
    # keys only hit (trained by the pre-training, or by a trial not in the frame): one phase 0 each
    paid_keys = set(trials.loc[trials["_pays_base"], "_key"])
    orphans = trials[trials["_hit"] & ~trials["_key"].isin(paid_keys) & trials["trial_id"].isin(base0.index)]
    once = orphans.sort_values(["_o", "trial_id"], kind="stable").groupby("_key").head(1)["trial_id"]
    trials.loc[trials["trial_id"].isin(set(once)), "_pays_base"] = True
    trials["_paid"] = trials["trial_id"].map(later).fillna(0.0) + trials["_base"].where(trials["_pays_base"], 0.0)
    rows = []
    for key, g in trials.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        wall = float(g["_paid"].sum()) / 3600.0
        rows.append({**dict(zip(keys, key)), "trials": int(len(g)), "base phases paid": int(g["_pays_base"].sum()),
                     "wall hours": wall, "CPU-hours": wall * cpus, "GPU-hours": wall * gpus,
                     "min/trial": wall * 60.0 / len(g)})
    data = pd.DataFrame(rows, columns=cols)
    data["_p"] = data["preset"].map(_sort_key_preset)
    data = data.sort_values([c for c in GROUP if c in data] + ["_p"], kind="stable").drop(columns="_p")
    data = data.reset_index(drop=True)
    disp = data.copy()
    for c in ("wall hours", "CPU-hours", "GPU-hours"):
        disp[c] = [_hours(v) for v in data[c]]
    disp["min/trial"] = [f"{v:.1f}" for v in data["min/trial"]]
    if not gpus:
        disp = disp.drop(columns="GPU-hours")
    disp, note = compact(disp, candidates=[c for c in GROUP if c in disp])
    hits = int(trials["_hit"].sum())
    res = (f"{cpus:g} CPU(s) and {gpus:g} GPU(s) per trial" if recorded
           else "resources per trial not recorded: 1 CPU and no GPU per trial assumed")
    total = (f"total {float(data['CPU-hours'].sum()):.2f} CPU-hours"
             + (f", {float(data['GPU-hours'].sum()):.2f} GPU-hours" if gpus else ""))
    parts = [note, res, f"hours: wall-clock time of the trials' phases times the resources per trial; a base phase "
             f"shared by several trials ({hits} loaded it from the cache) is counted once", total]
    return PaperTable(data=data, display=disp, note="; ".join(p for p in parts if p))


def long_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every number for one's own plots: one row per trial x phase, every config column, every metric (the
    validation ``val_*`` ones too, empty without a validation split), status and base-cache use."""
    from analysis.results import VAL_METRICS

    out = df.copy()
    from analysis.results import EXTRA_METRICS, METRICS

    missing = [m for m in VAL_METRICS if m not in out]
    present = [i for i, c in enumerate(out.columns) if c in METRICS or c in EXTRA_METRICS]
    at = max(present) + 1 if present else len(out.columns)
    for m in reversed(missing):
        out.insert(at, m, math.nan)
    return out


# --------------------------------------------------------------------------- search
_DOMAIN = re.compile(r"^\s*(choice|uniform|quniform|loguniform|qloguniform|randint|qrandint|lograndint|"
                     r"qlograndint|randn|qrandn|sample_from|grid_search)\b", re.I)
_NOT_SEARCHED = set(PROTOCOL) | set(RUNTIME_FIELDS) | {"seed", "class_order_seed", "preset", "num_classes"}


def searched_params(df: pd.DataFrame, meta: dict[str, Any] | None = None) -> list[str]:
    """Hyperparameters a search (or a grid) varied, protocol, preset and seed aside.

    From ``searched`` of ``lucir_experiment.json`` (the domains as data, written by ``lucir search``); for
    older experiments, from ``param_space``: search domains written as text ("uniform(0.0, 1.0)",
    "choice[0.5, 1.0]") and grids of more than one value; else the config fields that vary across trials.
    """
    searched = (meta or {}).get("searched")
    if isinstance(searched, dict) and searched:
        out = [k for k in searched if k in df.columns]
        return [c for c in HYPERPARAMS if c in out] + [c for c in out if c not in HYPERPARAMS]
    space = (meta or {}).get("param_space") or {}
    out = [k for k, v in space.items() if k in df.columns and k not in _NOT_SEARCHED and not _is_constant_space(v)]
    if not out:
        out = [c for c in varying_fields(df, within=()) if c in df.columns and c not in _NOT_SEARCHED]
    return [c for c in HYPERPARAMS if c in out] + [c for c in out if c not in HYPERPARAMS]


def _is_constant_space(v: Any) -> bool:
    if isinstance(v, dict):
        if "grid_search" in v:
            return len(v["grid_search"]) <= 1
        return False
    if isinstance(v, str):
        return not _DOMAIN.match(v)
    return True


def search_summary(df: pd.DataFrame, meta: dict[str, Any] | None = None, k: int = 10,
                   metric: str = OBJECTIVE, mode: str = "max") -> pd.DataFrame:
    """Top-k finished trials by ``metric`` at the last phase (the search objective, DESIGN §4).

    Columns: rank, trial_id, preset, seed, the searched parameters, the objective, and beside it the
    validation NME and last-phase numbers for a validation objective (never test numbers: those are the
    confirm stage's), else the last-phase CNN accuracy, avg_inc_acc_nme and forgetting.
    """
    last = last_phase(df)
    if not len(last):
        return pd.DataFrame(columns=["rank", "trial_id", "preset", "seed", metric])
    params = searched_params(df, meta)
    last = last.sort_values([metric, "trial_id"], ascending=[mode == "min", True], kind="stable").head(k)
    proto = [c for c in PROTOCOL if c in last and last[c].map(_hashable).nunique() > 1]
    cols = ["trial_id", "preset", *proto, "seed", *params, metric]
    if metric.startswith("val_"):  # selected on the validation split: no test number beside it (DESIGN §6)
        cols += [c for c in ("val_avg_inc_acc_nme", "val_acc_cnn") if c != metric]
    else:
        cols += [c for c in ("acc_cnn", "avg_inc_acc_nme", "forgetting_cnn") if c != metric]
    out = last[[c for c in dict.fromkeys(cols) if c in last]].reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def best_trial(df: pd.DataFrame, metric: str = OBJECTIVE, mode: str = "max") -> pd.Series | None:
    """The finished trial with the best ``metric`` at its last phase (None when none finished)."""
    last = last_phase(df)
    if not len(last) or last[metric].isna().all():
        return None
    last = last.sort_values([metric, "trial_id"], ascending=[mode == "min", True], kind="stable")
    return last.iloc[0]


def config_of(row: pd.Series | dict[str, Any]) -> dict[str, Any]:
    """The flat config of a frame row (config columns only, in Config order)."""
    r = dict(row)
    return {k: _py(r[k]) for k in CONFIG_FIELDS if k in r and not _isnan(r[k])}


def _py(v: Any) -> Any:
    """A plain Python value (numpy / pandas scalars -> int, float, bool; tuples -> lists)."""
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def best_command_line(config: dict[str, Any], command: str = "lucir train") -> str:
    """A ``lucir train`` command line that reproduces ``config``: the trainer's own
    ``lucir.commands.command_line``, the one implementation the runner's search summary uses too."""
    from lucir.commands import command_line

    return command_line(config, command)


#: fANOVA importances are shown only from this many complete trials on (issue 10), as the mean and std over
#: this many evaluator seeds
MIN_IMPORTANCE_TRIALS = 20
IMPORTANCE_SEEDS = 5


def param_importances(exp_path: str | os.PathLike, study_name: str | None = None,
                      params: list[str] | None = None) -> tuple[pd.DataFrame | None, str]:
    """Optuna parameter importances (fANOVA, seeded) of the search's study in ``<exp>/optuna_journal.log``.

    Returns (table of parameter / importance, sorted) or (None, a note saying why there is none).
    """
    from analysis.results import load_study

    study, why = load_study(exp_path, study_name)
    if study is None:
        return None, why
    try:
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < MIN_IMPORTANCE_TRIALS:
            return None, (f"not shown: study {study.study_name!r} has {len(complete)} complete trial(s); fANOVA "
                          f"importances of fewer than {MIN_IMPORTANCE_TRIALS} move with the evaluator's seed and "
                          "say little")
        names_used = [p for p in (params or []) if all(p in t.params for t in complete)] or None
        runs = [optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), params=names_used)
            for seed in range(IMPORTANCE_SEEDS)]
    except Exception as exc:  # noqa: BLE001 - importances are a nice-to-have; say why they are missing
        return None, f"parameter importances unavailable: {type(exc).__name__}: {exc}"
    names = list(runs[0])
    vals = np.array([[float(r.get(n, math.nan)) for n in names] for r in runs])
    tab = pd.DataFrame({"parameter": names, "importance": vals.mean(0), "std": vals.std(0, ddof=1)})
    tab = tab.sort_values("importance", ascending=False, ignore_index=True)
    return tab, (f"fANOVA importances over {len(complete)} complete trials of Optuna study "
                 f"{study.study_name!r} (pruned trials are not counted): mean and std over "
                 f"{IMPORTANCE_SEEDS} evaluator seeds (the spread of the forest's randomness)")


# --------------------------------------------------------------------------- export
def _atomic_write(path: Path, text: str) -> None:
    from lucir.checkpoint import atomic_write_text

    atomic_write_text(path, text)


def to_markdown(table: pd.DataFrame, index: bool = False, floatfmt: str = ".2f") -> str:
    t = (table.reset_index() if index else table).copy()
    align = []
    for c in t.columns:  # cells formatted here (text stays text: '0.8' is not re-read as 0.80); NA as '–'
        numeric = pd.api.types.is_numeric_dtype(t[c]) and not pd.api.types.is_bool_dtype(t[c])
        numeric = numeric or (len(t) > 0 and all(_is_number_text(v) for v in t[c]))
        align.append("center" if _is_check_column(t[c]) else ("right" if numeric else "left"))
        t[c] = [DASH if _isnan(v) else (format(v, floatfmt) if isinstance(v, float) else str(v))
                for v in t[c].astype(object)]
    return t.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def _is_check_column(col: pd.Series) -> bool:
    vals = set(col.astype(object))
    return len(col) > 0 and vals <= {CHECK, "", "?"} and (CHECK in vals or col.name in COMPONENTS)


def _is_number_text(v: Any) -> bool:
    if _isnan(v) or v == DASH:
        return True
    if not isinstance(v, str):
        return False
    try:
        float(v)
        return True
    except ValueError:
        return False


#: what a column of a two-column paper holds (CVPR: 3.25 in + 0.3125 in gap + 3.25 in) and the text width
COLUMN_PT = 237.0
TEXT_PT = 496.0
_TEX_CHARS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
              "±": r"$\pm$", DASH: "--", "—": "---", "−": "$-$", "×": r"$\times$", "≤": r"$\leq$",
              "≥": r"$\geq$", "<": "$<$", ">": "$>$", "→": r"$\rightarrow$", "·": r"$\cdot$", "≈": r"$\approx$",
              "α": r"$\alpha$", "η": r"$\eta$", "λ": r"$\lambda$", "…": r"\dots{}", "’": "'", "‘": "`",
              "“": "``", "”": "''", CHECK: r"\checkmark", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}
#: symbols of the hyperparameters in LaTeX headers (the paper's notation)
TEX_HEADERS = {"eta init": r"$\eta_{\mathrm{init}}$", "lambda base": r"$\lambda_{\mathrm{base}}$",
               "margin": "$m$", "K": "$K$"}
_PM = re.compile(r"^(\*\*)?([+\-−]?\d+(?:\.\d+)?)(?: ± (\d+(?:\.\d+)?))?(\*\*)?$")
_CI = re.compile(r"^\[[+\-−]?[\d.]+, [+\-−]?[\d.]+\]$")


def _tex_escape(s: str) -> str:
    """Text for LaTeX under any font encoding: specials escaped, unicode as commands (± $\\pm$, < $<$,
    − $-$, ...), a hyphen before a digit as a math minus; anything else outside ASCII becomes '?'."""
    s = re.sub(r"(?<![\w.)\]])-(?=\d)", "−", str(s))  # a sign, not a hyphen: math minus
    out = "".join(_TEX_CHARS.get(c, c) for c in s)
    return "".join(c if ord(c) < 128 else "?" for c in out)


def _tex_num(text: str) -> str:
    """A number cell in math mode (a real minus sign): '-1.23' -> '$-1.23$'."""
    return "$" + text.replace("−", "-") + "$"


def _col_kind(col: pd.Series) -> str:
    vals = [v for v in col.astype(object) if not _isnan(v) and v != DASH]
    if _is_check_column(col):
        return "check"
    if vals and all(isinstance(v, str) and _PM.match(v) for v in vals) and any(" ± " in v for v in vals):
        return "pm"
    if (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)) or \
            (len(col) > 0 and all(_is_number_text(v) for v in col)):
        return "num"
    if vals and all(isinstance(v, str) and _CI.match(v) for v in vals):
        return "ci"
    return "text"


def _tex_cell(v: Any, floatfmt: str, kind: str = "text") -> str:
    if _isnan(v) or v == DASH:
        return "--" if kind != "pm" else "-- &"
    if isinstance(v, float):
        text = format(v, floatfmt)
    else:
        text = str(v)
    strong = len(text) > 4 and text.startswith("**") and text.endswith("**")
    if strong:
        text = text[2:-2]
    if kind == "pm":
        m = _PM.match(text)
        mean, std = m.group(2), m.group(3)
        a = _tex_num(mean)
        b = (r"${}\pm " + std + "$") if std else ""
        if strong:
            a, b = rf"$\mathbf{{{a[1:-1]}}}$", (r"${}\pm\mathbf{" + std + "}$") if std else ""
        return f"{a} & {b}"
    if kind in ("num", "ci") and (_is_number_text(text) or _CI.match(text)):
        cell = _tex_num(text)
        return rf"$\mathbf{{{cell[1:-1]}}}$" if strong else cell
    if text == CHECK:
        return r"\checkmark"
    cell = _tex_escape(text)
    return rf"\textbf{{{cell}}}" if strong else cell


def _header_lines(h: str, width: int) -> list[str]:
    """A header broken at spaces into lines no longer than ``width`` characters (at least one word a line)."""
    words, lines = h.split(" "), [""]
    for w in words:
        if lines[-1] and len(lines[-1]) + 1 + len(w) > width:
            lines.append(w)
        else:
            lines[-1] = f"{lines[-1]} {w}".strip()
    return lines


def _tex_header(h: str, width: int) -> str:
    word = TEX_HEADERS.get(h)
    if word:
        return word
    lines = _header_lines(h, max(width, 6))
    if len(lines) == 1:
        return _tex_escape(h)
    return r"\begin{tabular}[b]{@{}c@{}}" + r" \\ ".join(_tex_escape(x) for x in lines) + r"\end{tabular}"


def _cell_len(v: Any, floatfmt: str) -> int:
    if _isnan(v):
        return 2
    text = format(v, floatfmt) if isinstance(v, float) else str(v)
    return len(text.strip("*"))


def to_latex(table: pd.DataFrame, index: bool = False, floatfmt: str = ".2f", caption: str | None = None,
             label: str | None = None, note: str | None = None, wide: bool | None = None) -> str:
    """A booktabs tabular that pastes into a two-column paper: text columns left, numbers right in math mode
    (a real minus), "mean ± std" cells split into two aligned columns (``r@{}l``: the ± signs line up), check
    marks centred, headers as words broken over lines (hyperparameters as the paper's symbols). The font size
    and the environment follow the estimated width: ``table`` when it fits ``\\columnwidth`` (237 pt) at
    ``\\small`` or ``\\footnotesize``, else ``table*`` (page width); ``wide`` forces one. With a caption or a
    label: the caption (and ``note``) above the tabular, then the label."""
    t = table.reset_index() if index else table
    kinds = [_col_kind(t[c]) for c in t.columns]
    widths = []
    for c, k in zip(t.columns, kinds):
        cells = max((_cell_len(v, floatfmt) for v in t[c]), default=1)
        widths.append(cells)
    words = [header_words(c) for c in t.columns]
    # "group: sub" headers (e.g. "10 phases: CNN") get a spanning group row with \cmidrule under it
    grouped = sum(": " in w for w in words) >= 2
    group = [w.split(": ", 1)[0] if grouped and ": " in w else None for w in words]
    subs = [w.split(": ", 1)[1] if grouped and ": " in w else w for w in words]
    heads = [_tex_header(h, max(w, 12)) for h, w in zip(subs, widths)]
    head_len = [max(len(x) for x in _header_lines(h, max(w, 12))) for h, w in zip(subs, widths)]
    text_cols = [i for i, k in enumerate(kinds) if k == "text" and widths[i] > 28]

    def estimate(pt_per_char: float, para: float) -> float:
        total = 0.0
        for i, (k, w, hl) in enumerate(zip(kinds, widths, head_len)):
            chars = max(w, hl) if i not in text_cols else min(max(w, hl), para)
            total += chars * pt_per_char + 2 * 4.0 + (2.0 if k == "pm" else 0.0)
        return total

    sizes = ((r"\small", 5.2), (r"\footnotesize", 4.7), (r"\scriptsize", 4.0))  # pt per character
    choice = None
    for env, limit in (("table", COLUMN_PT), ("table*", TEXT_PT)):
        if (wide is True and env == "table") or (wide is False and env == "table*"):
            continue
        for size, w in sizes[:2] if env == "table" else sizes:
            para = 22 if env == "table" else 34
            if estimate(w, para) <= limit:
                choice = (env, size, w, para, limit)
                break
        if choice:
            break
    if choice is None:
        choice = ("table*", r"\scriptsize", 4.0, 34, TEXT_PT)
    env, size, ptc, para, limit = choice
    spec = []
    for i, k in enumerate(kinds):
        if k == "check":
            spec.append("c")
        elif k == "pm":
            spec.append("r@{}l")
        elif k in ("num", "ci"):
            spec.append("r")
        elif i in text_cols:
            spec.append(rf">{{\raggedright\arraybackslash}}p{{{para * ptc:.0f}pt}}")
        else:
            spec.append("l")
    lines = []
    wrap = bool(caption or label) or env == "table*"
    if wrap:
        lines += [r"% needs \usepackage{booktabs} (rules), \usepackage{array} (column types), "
                  r"\usepackage{amssymb} (\checkmark) and \usepackage{graphicx}",
                  rf"\begin{{{env}}}[t]", r"\centering", size]
        text = caption_text(caption, note)
        if text:
            lines.append(rf"\caption{{{_tex_escape(text)}}}")
        if label:
            lines.append(rf"\label{{{label}}}")
    else:
        lines.append("{" + size)
    lines.append(r"\setlength{\tabcolsep}{4pt}")
    # a safety net for an estimate that fell short: shrink to the line width, never enlarge
    lines.append(r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%")
    lines += [rf"\begin{{tabular}}{{{''.join(spec)}}}", r"\toprule"]
    if grouped:
        cells, rules, pos, i = [], [], 1, 0
        while i < len(group):
            j = i
            while j + 1 < len(group) and group[j + 1] == group[i] and group[i] is not None:
                j += 1
            span = sum(2 if kinds[x] == "pm" else 1 for x in range(i, j + 1))
            if group[i] is None:
                cells += [""] * span
            else:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex_escape(group[i])}}}")
                rules.append(rf"\cmidrule(lr){{{pos}-{pos + span - 1}}}")
            pos += span
            i = j + 1
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines += [" & ".join((rf"\multicolumn{{2}}{{c}}{{{h}}}" if k == "pm" else h) for h, k in zip(heads, kinds))
              + r" \\", r"\midrule"]
    for row in t.itertuples(index=False):
        lines.append(" & ".join(_tex_cell(v, floatfmt, k) for v, k in zip(row, kinds)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    lines.append(rf"\end{{{env}}}" if wrap else "}")
    return "\n".join(lines) + "\n"


def display_params(table: pd.DataFrame, params: Iterable[str]) -> pd.DataFrame:
    """A copy with the float columns ``params`` as short text (4 significant digits: 0.3141, 12.5, 0.0005)."""
    out = table.copy()
    for p in params:
        if p in out and pd.api.types.is_float_dtype(out[p]):
            out[p] = [DASH if _isnan(v) else f"{v:.4g}" for v in out[p]]
    return out


def caption_text(caption: str | None, note: str | None = None) -> str:
    """'Caption. Note.': the caption, then what the table leaves out, each ending in a full stop."""
    parts = [x.strip() for x in (caption or "", note or "") if x and x.strip()]
    return " ".join(x if x[-1] in ".!?" else x + "." for x in parts)


def tex_label(name: str) -> str:
    """``tab:<name>`` with hyphens (``ablation_digits_b4`` -> ``tab:ablation-digits-b4``)."""
    return "tab:" + slug(name).replace("_", "-")


def export_table(table: pd.DataFrame, out_stem: str | os.PathLike, formats: Iterable[str] = ("csv", "md", "tex"),
                 index: bool = False, caption: str | None = None, display: pd.DataFrame | None = None,
                 note: str | None = None, label: str | None = None, label_prefix: str | None = None,
                 wide: bool | None = None) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.md`` and/or ``<stem>.tex`` (each atomically); return the paths written.

    ``display``: a formatted version of ``table`` for Markdown and LaTeX (the CSV keeps the numbers).
    ``note``: what the display leaves out (its constant columns), after the caption in both. LaTeX: a
    ``table`` environment, caption above the tabular, ``\\label{label}`` (default ``tab:<stem>``).
    """
    stem = Path(out_stem)
    written = []
    caption = caption or header_words(stem.name)
    label = label or tex_label(f"{label_prefix}_{stem.name}" if label_prefix else stem.name)
    shown = table if display is None else display
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "csv":
            t = table.reset_index() if index else table
            text = t.to_csv(index=False, float_format="%.4f")
        elif fmt == "md":
            text = f"{caption_text(caption, note)}\n\n" + to_markdown(shown, index=index)
        elif fmt == "tex":
            text = to_latex(shown, index=index, caption=caption, label=label, note=note, wide=wide)
        else:
            raise ValueError(f"format {fmt!r} is invalid: allowed csv, md, tex")
        _atomic_write(path, text)
        written.append(path)
    return written
