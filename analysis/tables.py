"""Tables of an experiment, as pure functions of the long DataFrame (``analysis.results``).

* ``summary_table``: per protocol (dataset, base classes, phases, exemplar budget) x preset, the average
  incremental accuracy (CNN and NME), the last-phase accuracy and the last-phase forgetting as mean and
  sample std (ddof=1) over seeds, the number of seeds, and how many trials were left out (pruned, failed,
  unfinished). Only finished trials count.
* ``ablation_tables``: the paper's layout (Fig. 7 / Table 2): rows = ladder rungs in ladder order,
  columns = phase counts, cells "mean ± std".
* ``search_summary``, ``param_importances``, ``best_command_line``: the best configurations of a search.
* ``export_table``: CSV, Markdown and LaTeX (booktabs) files of any of them.

Cells read "mean ± std"; with a single seed the std is undefined (NaN) and the cell is the mean alone.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

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
        rows.append(row)
    cols = keys + ["seeds"] + [f"{n}_{s}" for n in SUMMARY_METRICS for s in ("mean", "std")] + ["excluded"]
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out["_p"] = out["preset"].map(_sort_key_preset)
        out = out.sort_values([c for c in GROUP if c in out] + ["_p"] + vary, kind="stable").drop(columns="_p")
    return out.reset_index(drop=True)


def _isnan(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text cells: 'Avg inc. acc. CNN' = '62.00 ± 2.00', etc."""
    lead = [c for c in summary.columns if not (c.endswith("_mean") or c.endswith("_std"))
            and c not in ("seeds", "excluded")]
    out = summary[lead].copy()
    out = out.rename(columns={"base_classes": "base", "memory": "exemplars"})
    titles = {"avg_inc_acc_cnn": "avg inc acc CNN", "avg_inc_acc_nme": "avg inc acc NME",
              "last_acc_cnn": "last acc CNN", "last_acc_nme": "last acc NME", "forgetting_cnn": "forgetting CNN",
              "trial_seconds": "time/trial (s)"}
    for name, title in titles.items():
        digits = 1 if name == "trial_seconds" else 2
        out[title] = [fmt_mean_std(m, s, digits=digits)
                      for m, s in zip(summary[f"{name}_mean"], summary[f"{name}_std"])]
    out["seeds"] = summary["seeds"]
    out["excluded"] = summary["excluded"]
    return out


# --------------------------------------------------------------------------- ablation
def ablation_tables(df: pd.DataFrame, metric: str = "avg_inc_acc_cnn") -> dict[str, pd.DataFrame]:
    """The paper's ablation layout, one table per (dataset, base classes, exemplar budget).

    Rows: presets in ladder order (finetune, baseline, cn, cn_lf, lucir, lucir_cbf, joint; only those
    present; other presets after them); a varied hyperparameter is appended to the row label.
    Columns: phase counts ('5 phases'). Cells: 'mean ± std' over finished seeds of ``metric``
    (a summary metric name: avg_inc_acc_cnn, avg_inc_acc_nme, last_acc_cnn, ...); '–' when no seed finished.
    """
    s = summary_table(df)
    if not len(s):
        return {}
    vary = [c for c in s.columns if c not in GROUP and c not in ("preset", "seeds", "excluded")
            and not c.endswith("_mean") and not c.endswith("_std")]
    s = s.copy()
    s["rung"] = [p if not vary else f"{p} ({', '.join(f'{k}={r[k]}' for k in vary)})"
                 for p, (_, r) in zip(s["preset"], s.iterrows())]
    out: dict[str, pd.DataFrame] = {}
    for (ds, b, mem), g in s.groupby(["dataset", "base_classes", "memory"], sort=False, dropna=False):
        phases = sorted(g["phases"].unique())
        rungs = list(dict.fromkeys(g.sort_values("preset", key=lambda c: c.map(_sort_key_preset),
                                                 kind="stable")["rung"]))
        tab = pd.DataFrame(DASH, index=pd.Index(rungs, name="preset"),
                           columns=[f"{p} phases" for p in phases], dtype=object)
        for _, r in g.iterrows():
            tab.loc[r["rung"], f"{r['phases']} phases"] = fmt_mean_std(r[f"{metric}_mean"], r[f"{metric}_std"])
        out[protocol_label(ds, b, None, mem)] = tab
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
            label = skey[0] if not vary else f"{skey[0]} ({', '.join(f'{k}={v}' for k, v in zip(vary, skey[1:]))})"
            agg = s.groupby("classes_seen")[metric].agg(["mean", "std"]).sort_index()
            rows[label] = {f"{int(c)} classes": fmt_mean_std(m, sd) for c, m, sd in
                           zip(agg.index, agg["mean"], agg["std"])}
        tab = pd.DataFrame.from_dict(rows, orient="index").fillna(DASH)
        tab.index.name = "preset"
        out[protocol_label(*key)] = tab
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

    Columns: rank, trial_id, preset, seed, the searched parameters, the objective, last-phase CNN and NME
    accuracy, avg_inc_acc_nme.
    """
    last = last_phase(df)
    if not len(last):
        return pd.DataFrame(columns=["rank", "trial_id", "preset", "seed", metric])
    params = searched_params(df, meta)
    last = last.sort_values([metric, "trial_id"], ascending=[mode == "min", True], kind="stable").head(k)
    proto = [c for c in PROTOCOL if c in last and last[c].map(_hashable).nunique() > 1]
    cols = ["trial_id", "preset", *proto, "seed", *params, metric]
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


def param_importances(exp_path: str | os.PathLike, study_name: str | None = None,
                      params: list[str] | None = None) -> tuple[pd.DataFrame | None, str]:
    """Optuna parameter importances (fANOVA, seeded) of the search's study in ``<exp>/optuna_journal.log``.

    Returns (table of parameter / importance, sorted) or (None, a note saying why there is none).
    """
    journal = Path(exp_path) / JOURNAL_FILE
    if not journal.exists():
        return None, f"no Optuna study ({JOURNAL_FILE} not in the experiment folder)"
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        names = optuna.get_all_study_names(storage)
        if not names:
            return None, f"{JOURNAL_FILE} holds no study"
        name = study_name if study_name in names else None
        studies = [optuna.load_study(study_name=n, storage=storage) for n in ([name] if name else names)]
        study = max(studies, key=lambda s: len(s.trials))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 2:
            return None, (f"parameter importances skipped: study {study.study_name!r} has {len(complete)} "
                          "complete trial(s); at least 2 are needed")
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        names_used = [p for p in (params or []) if all(p in t.params for t in complete)] or None
        imp = optuna.importance.get_param_importances(study, evaluator=evaluator, params=names_used)
    except Exception as exc:  # noqa: BLE001 - importances are a nice-to-have; say why they are missing
        return None, f"parameter importances unavailable: {type(exc).__name__}: {exc}"
    tab = pd.DataFrame({"parameter": list(imp), "importance": [float(v) for v in imp.values()]})
    return tab, (f"fANOVA importances over {len(complete)} complete trials of Optuna study "
                 f"{study.study_name!r} (pruned trials are not counted)")


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
        align.append("right" if numeric else "left")
        t[c] = [DASH if _isnan(v) else (format(v, floatfmt) if isinstance(v, float) else str(v))
                for v in t[c].astype(object)]
    return t.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


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


def _tex_escape(s: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    s = "".join(rep.get(c, c) for c in s)
    return s.replace("±", r"$\pm$").replace(DASH, "--")


def _tex_cell(v: Any, floatfmt: str) -> str:
    if _isnan(v):
        return "--"
    if isinstance(v, float):
        return format(v, floatfmt)
    return _tex_escape(str(v))


def to_latex(table: pd.DataFrame, index: bool = False, floatfmt: str = ".2f", caption: str | None = None,
             label: str | None = None) -> str:
    """A booktabs tabular (``\\toprule``/``\\midrule``/``\\bottomrule``); text columns left, numbers right."""
    t = table.reset_index() if index else table
    align = "".join("r" if pd.api.types.is_numeric_dtype(t[c]) and not pd.api.types.is_bool_dtype(t[c])
                    else "l" for c in t.columns)
    lines = []
    if caption or label:
        lines += [r"\begin{table}[t]", r"\centering"]
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(_tex_escape(str(c)) for c in t.columns) + r" \\", r"\midrule"]
    for row in t.itertuples(index=False):
        lines.append(" & ".join(_tex_cell(v, floatfmt) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption or label:
        if caption:
            lines.append(rf"\caption{{{_tex_escape(caption)}}}")
        if label:
            lines.append(rf"\label{{{label}}}")
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def display_params(table: pd.DataFrame, params: Iterable[str]) -> pd.DataFrame:
    """A copy with the float columns ``params`` as short text (4 significant digits: 0.3141, 12.5, 0.0005)."""
    out = table.copy()
    for p in params:
        if p in out and pd.api.types.is_float_dtype(out[p]):
            out[p] = [DASH if _isnan(v) else f"{v:.4g}" for v in out[p]]
    return out


def export_table(table: pd.DataFrame, out_stem: str | os.PathLike, formats: Iterable[str] = ("csv", "md", "tex"),
                 index: bool = False, caption: str | None = None, display: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<stem>.csv``, ``<stem>.md`` and/or ``<stem>.tex`` (each atomically); return the paths written.

    ``display``: a formatted version of ``table`` for Markdown and LaTeX (the CSV keeps the numbers).
    """
    stem = Path(out_stem)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "csv":
            t = table.reset_index() if index else table
            text = t.to_csv(index=False, float_format="%.4f")
        elif fmt == "md":
            text = to_markdown(table if display is None else display, index=index)
        elif fmt == "tex":
            text = to_latex(table if display is None else display, index=index, caption=caption)
        else:
            raise ValueError(f"format {fmt!r} is invalid: allowed csv, md, tex")
        _atomic_write(path, text)
        written.append(path)
    return written
