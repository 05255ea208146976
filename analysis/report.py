"""``lucir report <experiment folder>``: tables, figures and an index.md in one report folder.

The folder is built in a temporary sibling (``.<name>.tmp-<pid>``) and renamed into place, so a crash
never leaves a half-written report; an older report at the same place is replaced as a whole. The report
is then logged as artifacts (``report/``) of the sweep's MLflow parent run named in
``lucir_experiment.json`` (``parent_run_id``, ``mlflow_uri``), when that run can be reached.

Layout::

    <out>/index.md                        summary, links to every table and figure (with captions), missing trials
    <out>/index.html                      the same as one self-contained page (figures embedded as base64 PNG),
                                          plus the `lucir train` command and MLflow run of every trial
    <out>/tables/summary.{csv,md,tex}     per protocol x preset: mean ± std over seeds (bold: not significantly
                                          below the best, paired t-test, Holm); not in a search on a validation split
    <out>/tables/summary_numeric.csv      the same as numbers (mean and std columns)
    <out>/tables/main_{avg,last}_<p>.*    the paper-format main tables: methods x phase counts (5/10/25), CNN and
                                          NME, with the published LUCIR rows (analysis/published.json)
    <out>/tables/ablation_<protocol>.*    rows = ladder rungs (paper names, component check marks), CNN and NME
    <out>/tables/paired_<reference>.*     paired differences: t-interval, t-test p (Holm), exact sign-flip p, the
                                          smallest p it can give, seeds needed for p < 0.05
    <out>/tables/cost.*                   CPU-/GPU-hours per protocol x preset (shared base phases counted once)
    <out>/tables/search_top.*             top-k configurations by the (validation) objective
    <out>/tables/confirm_*.{csv,md,tex}   the confirm stage: candidates with the paired verdict, trials, cost;
                                          confirm_long.csv
    <out>/tables/param_importances.*      Optuna fANOVA importances (when a study journal exists)
    <out>/tables/trials.*                 every trial: status, phases done / total, objective
    <out>/tables/long.csv                 every number: trial x phase, every metric (val_* too) and config column
    <out>/tables/scoreboard.*             ours vs the published numbers (analysis/published.json)
    <out>/figures/*.{png,pdf,svg}         accuracy curves, ablation dots and intervals, forest plot, old/new
                                          accuracy, accuracy matrices, forgetting/BWT, weight-norm ratio, search
                                          history, slices, parallel coordinates, validation vs confirmed test; at
                                          their printed width (3.3 or 6.9 in), no titles (captions in index.md)

Every LaTeX table carries the label ``tab:<experiment>-<table>`` and is a ``table`` that fits a 237 pt column
or a ``table*`` by design; every caption of a protocol that is not the published one states its schedule.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from analysis import paired, plots, tables
from analysis.confirm import confirm_summary
from analysis.scoreboard import report_section as scoreboard_section
from analysis.results import Experiment, ExperimentError, read_experiment, trial_overview, utc
from lucir import record

FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("png", "pdf", "svg")  # index.md embeds the PNG
EMPTY_EXIT = 2


@dataclass
class Report:
    """What ``build_report`` wrote."""

    out: Path
    index: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    main_table: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    mlflow_logged: bool = False


class EmptyExperimentError(ExperimentError):
    """The experiment has no trial yet: there is nothing to report."""


def _md_link(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return f"[{path.name}]({rel})"


def _bullet_table_links(paths: list[Path], root: Path) -> str:
    return " · ".join(_md_link(p, root) for p in paths)


def _confirm_frame(summary: dict) -> pd.DataFrame:
    """One row per confirm candidate: its parameters, the search's validation value, n, the test numbers,
    and the paired test against the paper defaults (Holm-corrected over the candidates)."""
    from analysis.paired import _fmt_p

    rows = []
    for r in summary["rows"]:
        t = r.get("test") or {}
        rows.append({"candidate": r["label"],
                     "parameters": ", ".join(f"{k}={_fmt_param(v)}" for k, v in r["params"].items()),
                     "search (val.)": tables.DASH if r["search_value"] is None else f"{r['search_value']:.2f}",
                     "n": f"{r['n']}/{r['runs']}",
                     "test avg. inc. acc. CNN (%)": tables.fmt_mean_std(r["cnn_mean"], r["cnn_std"]),
                     "test avg. inc. acc. NME (%)": tables.fmt_mean_std(r["nme_mean"], r["nme_std"]),
                     "diff. to defaults": tables.DASH if not t else f"{t['mean_diff']:+.2f}",
                     "p (t, Holm)": tables.DASH if not t else _fmt_p(t.get("p_t_holm", math.nan)),
                     "p (sign-flip)": tables.DASH if not t else _fmt_p(t.get("p_value", math.nan))})
    return pd.DataFrame(rows)


def _confirm_lines(summary: dict, written: dict, root: Path) -> list[str]:
    """The confirm stage: every candidate's test accuracy over seeds, the winner and the paired verdict."""
    seeds = summary.get("seeds") or 1
    frame = _confirm_frame(summary)
    out = ["## Confirmation on seeds (the winner)", "",
           f"The paper defaults and the best configurations on the search's objective (`{summary.get('metric')}`, "
           f"on the held-out validation images) re-run on the full training set with seeds 0..{seeds - 1}; "
           "test average incremental accuracy at the last phase, mean ± std over seeds; each candidate against "
           "the paper defaults paired on the seeds (paired t-test, Holm-corrected over the candidates; exact "
           "sign-flip test).", "", tables.to_markdown(frame, index=False)]
    if "confirm_candidates" in written:
        out += ["Files: " + _bullet_table_links(written["confirm_candidates"], root), ""]
    w, v = summary["winner"], summary["verdict"]
    if w is None:
        return out + ["No candidate has finished a confirm run yet: no winner.", ""]
    line = f"**Best confirmed mean: {w['label']}** ({w['cnn_mean']:.2f} CNN)."
    if v is not None and v.get("text"):
        line += " Verdict: " + v["text"] + "."
    out += [line, ""]
    if w.get("config"):
        out += ["Reproduce it with:", "", "```",
                tables.best_command_line({k: x for k, x in w["config"].items() if k != "seed"}), "```", ""]
    return out


def _fmt_param(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _flip_note(df) -> str:
    """The ``class_mean_flip`` setting(s) of the trials: NME numbers are comparable only within one."""
    if "class_mean_flip" not in df or df["class_mean_flip"].isna().all():
        return "not recorded (trials older than the class_mean_flip field: mirror images, digits none)"
    vals = sorted(str(v) for v in df["class_mean_flip"].dropna().unique())
    what = {"channels": "colour-reversed copies (RGB->BGR, the reference's CIFAR code)",
            "mirror": "mirror images", "none": "nothing"}
    return "; ".join(f"`class_mean_flip={v}` ({what.get(v, v)})" for v in vals)


def search_objective(exp: Experiment) -> str:
    """What a search ranks by: the validation objective when its trials recorded one (never select on the
    test set), else the experiment's metric."""
    df = exp.frame
    if exp.meta.get("kind") == "search" and record.VAL_OBJECTIVE in df:
        fin = df[df["finished"]]
        if len(fin) and fin[record.VAL_OBJECTIVE].notna().any():
            return record.VAL_OBJECTIVE
    return exp.metric


def build_report(exp_path: str | os.PathLike, out: str | os.PathLike | None = None,
                 formats: Iterable[str] = FORMATS, *, top_k: int = 10, mlflow: bool = True,
                 echo: Callable[[str], None] = print, reference: str = "lucir") -> Report:
    """Write the report of the experiment at ``exp_path`` to ``out`` (default ``<exp>/report``).

    Raises ``ExperimentError`` for a folder that is not an experiment and ``EmptyExperimentError`` when
    it has no trial. Unfinished and failed trials are listed in the report, never silently dropped.
    """
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--formats {','.join(formats)} is invalid: allowed a comma list of {', '.join(FORMATS)}")
    exp = read_experiment(exp_path)
    if not exp.trials:
        raise EmptyExperimentError(
            f"{exp.path} has no trials yet (trials/ is empty and MLflow holds no trial run): nothing to report. "
            f"Start the sweep, or finish an interrupted one with `lucir resume {exp.path}`.")
    out = Path(out).expanduser().absolute() if out else exp.path / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        rep = _write_report(exp, tmp, formats, top_k, reference=reference)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # paths now live under out
    rep.tables = [out / p.relative_to(tmp) for p in rep.tables]
    rep.figures = [out / p.relative_to(tmp) for p in rep.figures]
    rep.out, rep.index = out, out / "index.md"
    if rep.main_table is not None:
        echo(tables.to_markdown(rep.main_table).rstrip())
    for n in rep.notes:
        echo(f"note: {n}")
    if mlflow:
        rep.mlflow_logged, msg = log_to_mlflow(exp, out)
        echo(msg)
    else:
        echo("MLflow: not logged (--no-mlflow)")
    echo(f"report: {rep.index}")
    return rep


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to ``out``; an older report there is replaced as a whole."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_report(exp: Experiment, root: Path, formats: tuple[str, ...], top_k: int,
                  reference: str = "lucir") -> Report:
    from analysis import paper

    df = exp.frame
    tdir, fdir = root / "tables", root / "figures"
    tdir.mkdir()
    fdir.mkdir()
    rep = Report(out=root, index=root / "index.md", notes=list(exp.notes))
    written: dict[str, list[Path]] = {}
    prefix = exp.name  # LaTeX labels: tab:<experiment>-<table>, unique across the reports of one paper
    sched = paper.schedule_note(df)

    def export(name: str, table: pd.DataFrame, index: bool = False, caption: str | None = None,
               display: pd.DataFrame | None = None, note: str | None = None, sub: pd.DataFrame | None = None,
               wide: bool | None = None) -> list[Path]:
        note = paper.with_schedule(note or "", df if sub is None else sub).strip() or None
        paths = tables.export_table(table, tdir / name, formats, index=index, caption=caption, display=display,
                                    note=note, label_prefix=prefix, wide=wide)
        written[name] = paths
        rep.tables += paths
        return paths

    # tables ------------------------------------------------------------------------------------------
    search_kind = exp.meta.get("kind") == "search"  # one row per configuration: the search tables say more
    # a search selected on the validation split shows no test number before its confirm stage (DESIGN §6)
    val_search = search_kind and search_objective(exp).startswith("val_")
    summary = tables.summary_table(df)
    main_csv = tables.format_summary(summary)
    main, main_note = tables.summary_display(summary)
    main_note = "; ".join(x for x in (main_note, paper.DEFINITIONS["forgetting"]) if x)
    rep.main_table = main
    if not val_search:
        export("summary", main_csv, caption="Average incremental accuracy, last-phase accuracy and forgetting (%), "
                                            "mean ± std over seeds (finished trials only)", display=main,
               note=main_note)
        if "csv" in formats:
            p = tdir / "summary_numeric.csv"
            tables._atomic_write(p, summary.to_csv(index=False, float_format="%.4f"))
            rep.tables.append(p)

    def export_each(prefix_: str, tabs: dict, caption: str, wide: bool | None = None) -> dict:
        """Export one table per protocol label; returns label -> exported name."""
        names = {}
        for label, tab in tabs.items():
            names[label] = f"{prefix_}_{tables.slug(label)}"
            if isinstance(tab, tables.PaperTable):
                export(names[label], tab.data, caption=caption.format(label=label), display=tab.display,
                       note=tab.note, wide=wide)
            else:
                export(names[label], tab, index=True, caption=caption.format(label=label), wide=wide)
        return names

    abl = tables.ablation_tables(df) if not search_kind else {}
    abl_names = export_each("ablation", abl, "Ablation of the LUCIR components: average incremental accuracy (%) of "
                                             "the CNN and NME classifiers, mean ± std over seeds")
    mains = {k: paper.main_table(df, kind=k) for k in ("avg", "last")} if not search_kind else {}
    main_names = {k: export_each(f"main_{k}", tabs, (
        "Average incremental accuracy (%) per number of incremental phases" if k == "avg" else
        "Top-1 accuracy (%) after the last phase per number of incremental phases"), wide=True)
        for k, tabs in mains.items()}
    cost = tables.cost_table(df, exp.meta)
    if len(cost.data):
        export("cost", cost.data, caption="Compute cost per method", display=cost.display, note=cost.note)
    curves = tables.curve_tables(df) if not search_kind else {}
    curve_names = export_each("curve", curves, "Top-1 accuracy (CNN, %) on all classes seen after each phase, "
                                               "{label}, mean ± std over seeds")
    objective, mode = (search_objective(exp) if search_kind else exp.metric), exp.mode
    params = tables.searched_params(df, exp.meta)
    is_search = search_kind or bool(params)
    top = tables.search_summary(df, exp.meta, k=top_k, metric=objective, mode=mode) if is_search else None
    top_display, top_note = (tables.compact(tables.display_params(top, params)) if top is not None and len(top)
                             else (None, ""))
    if top is not None and len(top):
        top_note = "; ".join(x for x in (top_note, f"ranked by {paper.metric_name(objective)} at the last phase"
                                         + (" (validation split)" if objective.startswith("val_") else "")) if x)
        export("search_top", top, display=top_display, note=top_note,
               caption=f"The {len(top)} best configurations of the search")
    imp, imp_note = (tables.param_importances(exp.path, exp.meta.get("optuna_study") or exp.name, params)
                     if exp.path is not None else (None, "no experiment folder"))
    if imp is not None:
        export("param_importances", imp, caption="fANOVA importance of the searched parameters")
    overview = trial_overview(df)
    if val_search and record.OBJECTIVE in overview:  # the objective column on validation, not on test
        overview = overview.drop(columns=record.OBJECTIVE)
        last = df.sort_values("phase").groupby("trial_id", sort=False).tail(1).set_index("trial_id")
        overview.insert(len(overview.columns) - 1, record.VAL_OBJECTIVE,
                        overview["trial_id"].map(last[record.VAL_OBJECTIVE]).to_numpy())
    ov_display, ov_note = tables.compact(overview)
    export("trials", overview, caption="Every trial", display=ov_display, note=ov_note)
    if "csv" in formats:
        p = tdir / "long.csv"
        tables._atomic_write(p, tables.long_table(df).to_csv(index=False, float_format="%.4f"))
        rep.tables.append(p)
    if search_kind and top is not None and len(top):
        rep.main_table = top_display  # a search's headline is its best configurations, not one row per config
    # a best configuration exists only for a search (an ablation's best rung is `joint`, the upper bound)
    best = tables.best_trial(df, metric=objective, mode=mode) if is_search else None
    best_cmd = tables.best_command_line(tables.config_of(best)) if best is not None else None
    confirmed = confirm_summary(exp.path) if is_search and exp.path is not None else None
    confirm_exp = None
    if confirmed is not None:
        export("confirm_candidates", _confirm_frame(confirmed),
               caption="Confirm stage: the paper defaults and the best configurations on the validation split, "
                       "re-run on the full training set; test average incremental accuracy (%), mean ± std over "
                       "seeds, and the paired difference to the paper defaults",
               note="p (t, Holm): paired t-test on the seeds, Holm-corrected over the candidates; p (sign-flip): "
                    "exact sign-flip test, which cannot go below 2/2^n")
        try:
            confirm_exp = read_experiment(exp.path / record.CONFIRM_DIR)
        except ExperimentError as exc:
            rep.notes.append(f"confirm stage unreadable: {exc}")
        if confirm_exp is not None and confirm_exp.trials:
            cdf = confirm_exp.frame
            c_ov = trial_overview(cdf)
            c_disp, c_note = tables.compact(c_ov)
            export("confirm_trials", c_ov, caption="Every trial of the confirm stage", display=c_disp, note=c_note,
                   sub=cdf)
            c_cost = tables.cost_table(cdf, confirm_exp.meta or exp.meta)
            if len(c_cost.data):
                export("confirm_cost", c_cost.data, caption="Compute cost of the confirm stage",
                       display=c_cost.display, note=c_cost.note, sub=cdf)
            if "csv" in formats:
                p = tdir / "confirm_long.csv"
                tables._atomic_write(p, tables.long_table(cdf).to_csv(index=False, float_format="%.4f"))
                rep.tables.append(p)

    # figures -----------------------------------------------------------------------------------------
    ff = FIGURE_FORMATS
    plots.FIGURE_NOTES.clear()
    val_curves = search_kind and objective.startswith("val_")
    acc_figs = plots.accuracy_curves(df, fdir, formats=ff, metric=objective if is_search else "avg_inc_acc_cnn",
                                     validation=val_curves)
    abl_figs = plots.ablation_bars(df, fdir, formats=ff) if df["preset"].nunique() > 1 and not search_kind else []
    diag_figs = plots.diagnostics(df, fdir, exp.trials, formats=ff) if not search_kind else []
    hist_figs = (plots.search_history(df, fdir, metric=objective, mode=mode, formats=ff, meta=exp.meta)
                 if is_search else [])
    slice_figs = (plots.param_slices(df, fdir, params=params, metric=objective, meta=exp.meta, formats=ff)
                  if is_search and params else [])
    search_figs = (plots.search_figures(df, fdir, params=params, metric=objective, meta=exp.meta,
                                        confirmed=confirmed, formats=ff) if is_search and params else [])
    optuna_figs, optuna_notes = (plots.optuna_plots(exp.path, fdir, exp.meta.get("optuna_study") or exp.name,
                                                    params=params, formats=ff)
                                 if is_search else ([], []))
    rep.figures = acc_figs + abl_figs + diag_figs + hist_figs + slice_figs + search_figs + optuna_figs
    captions = dict(plots.FIGURE_NOTES)

    # index.md ----------------------------------------------------------------------------------------
    n = len(exp.trials)
    counts = overview["status"].value_counts().to_dict()
    n_fin = int(overview["finished"].sum())
    lines = [f"# Report: {exp.name}", "",
             "The same report as one self-contained page, with the command of every trial: "
             "[index.html](index.html).", ""]
    meta = exp.meta
    if meta.get("argv"):
        lines += ["Command: `" + " ".join(str(a) for a in meta["argv"]) + "`", ""]
    info = [f"kind: {meta.get('kind', '?')}", f"created: {meta.get('created', '?')}",
            f"objective: {objective} ({mode}) at the last phase",
            f"source: {exp.source}" + (f" ({exp.path})" if exp.path else ""),
            "NME class means averaged with: " + _flip_note(df)]
    if sched:
        info.append("**protocol: " + sched + "**")
    fused = [t.fused for t in exp.trials if getattr(t, "fused", None)]
    if fused:
        arrays = {f.get("array") for f in fused}
        info.append(f"fused arrays: {len(fused)} of {len(exp.trials)} trials trained in {len(arrays)} fused "
                    f"array{'s' if len(arrays) != 1 else ''} of up to {max(int(f.get('size', 1)) for f in fused)} (`--fuse`); their train and phase "
                    "seconds are each member's share of its array's")
    lines += ["- " + i for i in info] + [""]
    lines += [f"**Trials: {n}**: {n_fin} finished (counted in the tables), "
              + ", ".join(f"{counts.get(s, 0)} {s}" for s in record.STATUSES
                          if counts.get(s, 0)) + ".", ""]
    if confirm_exp is not None and confirm_exp.trials:
        lines += [f"**Confirm stage: {len(c_ov)} trials**, {int(c_ov['finished'].sum())} finished "
                  "(tables `confirm_trials`, `confirm_cost`, `confirm_long.csv`).", ""]
    if val_search:
        lines += ["## Summary", "", "The search selected on the held-out validation split: its trials are ranked "
                  "on it (section *Search*), and test numbers appear only in the confirm stage, where the candidates "
                  "are re-run on the full training set (never select on the test set).", ""]
    else:
        lines += ["## Summary (mean ± std over seeds, finished trials only)", "",
                  f"{paper.DEFINITIONS['avg_inc_acc'][0].upper()}{paper.DEFINITIONS['avg_inc_acc'][1:]}; *last acc* "
                  f"and *forgetting* are at the last phase ({paper.DEFINITIONS['forgetting']}); *excluded* counts the "
                  "group's trials that did not finish.", "",
                  tables.to_markdown(main), tables.caption_text(main_note), "",
                  "Files: " + _bullet_table_links(written["summary"], root)
                  + (" · [summary_numeric.csv](tables/summary_numeric.csv)" if "csv" in formats else ""), ""]
    for k, tabs in mains.items():
        if not tabs:
            continue
        lines += [("## Main table: average incremental accuracy (%)" if k == "avg" else
                   "## Main table: last-phase accuracy (%)"), ""]
        for label, tab in tabs.items():
            lines += [f"### {label}", "", tables.to_markdown(tab.display), tables.caption_text(tab.note), "",
                      "Files: " + _bullet_table_links(written[main_names[k][label]], root), ""]
    if abl:
        lines += ["## Ablation (average incremental accuracy, %, CNN and NME)", "",
                  "Components from each preset's switches: CN cosine normalisation, LF less-forget constraint, "
                  "MR margin ranking, CBF class-balanced finetuning; mean ± std over seeds; **bold**: not "
                  "significantly below the best of its column (paired t-test on the seeds, Holm-corrected; the "
                  "joint upper bound aside).", ""]
        for label, tab in abl.items():
            lines += [f"### {label}", "", tables.to_markdown(tab.display), tables.caption_text(tab.note), "",
                      "Files: " + _bullet_table_links(written[abl_names[label]], root), ""]
    if curves:
        lines += ["## Accuracy after each phase (CNN, %, mean ± std over seeds)", ""]
        for label, tab in curves.items():
            lines += [f"### {label}", "", tables.to_markdown(tab, index=True),
                      "Files: " + _bullet_table_links(written[curve_names[label]], root), ""]
    if len(cost.data):
        lines += ["## Cost", "", tables.to_markdown(cost.display), tables.caption_text(cost.note), "",
                  "Files: " + _bullet_table_links(written["cost"], root), ""]
    lines += paired.report_section(exp, root, formats, rep, reference=reference, written=written)
    lines += scoreboard_section(df, exp.meta, tdir, formats, rep.tables, label_prefix=prefix)
    if is_search:
        lines += ["## Search", ""]
        if top is not None and len(top):
            lines += [f"Top {len(top)} finished trials by {objective} at the last phase"
                      + (" (the validation split: test numbers appear only in the confirm stage)"
                         if objective.startswith("val_") else "") + ":", "",
                      tables.to_markdown(top_display), tables.caption_text(top_note), "",
                      "Files: " + _bullet_table_links(written["search_top"], root), ""]
        else:
            lines += ["No trial has finished every phase yet: no best configuration.", ""]
        if imp is not None:
            lines += ["Parameter importances: " + imp_note, "", tables.to_markdown(imp, floatfmt=".3f"),
                      "Files: " + _bullet_table_links(written["param_importances"], root), ""]
        else:
            lines += [f"Parameter importances: {imp_note}.", ""]
        lines += [f"- {n}." for n in optuna_notes] + ([""] if optuna_notes else [])
    if confirmed is not None:
        lines += _confirm_lines(confirmed, written, root)
    elif best is not None:
        lines += [f"## Best configuration on {objective} (not confirmed on seeds)", "",
                  f"Trial `{best['trial_id']}` ({best['preset']}, seed {best['seed']}): "
                  f"{objective} = {best[objective]:.2f} at the last phase. Reproduce it with:", "",
                  "```", best_cmd, "```", ""]
    embedded = "\n".join(lines)
    pngs = [f for f in rep.figures if f.suffix == ".png" and f"]({f.relative_to(root).as_posix()})" not in embedded]
    if pngs:  # each figure once: the forest plot is already in its section
        lines += ["## Figures", "", "Each figure also as PDF and SVG next to the PNG (see *All files*), drawn at "
                  "its printed width (3.3 in for a column, 6.9 in for the page).", ""]
        for f in pngs:
            rel = f.relative_to(root).as_posix()
            lines += [f"### {f.stem}", "", f"![{f.stem}]({rel})", ""]
            if captions.get(f.stem):
                lines += [f"*{captions[f.stem]}*", ""]
    lines += ["## Unfinished and failed trials", ""]
    missing = overview[~overview["finished"]]
    if len(missing):
        lines += [f"{len(missing)} of {n} trials did not finish every phase and are **not** counted in the tables:",
                  ""]
        show = missing[[c for c in ("trial_id", "preset", "dataset", "phases", "seed", "status", "phases_done",
                                    "phases_total", "error") if c in missing]].copy()
        show["error"] = show["error"].map(lambda e: (str(e).splitlines() or [""])[0][:120])
        lines += [tables.to_markdown(show), ""]
        if (missing["status"] == "RUNNING").any():
            lines += [f"Trials still RUNNING after the sweep ended belong to an interrupted sweep: "
                      f"`lucir resume {exp.path}` finishes them.", ""]
        rep.notes.append(f"{len(missing)} of {n} trials unfinished or failed (listed in index.md): "
                         + ", ".join(f"{k} {v}" for k, v in missing["status"].value_counts().items()))
    else:
        lines += ["None: every trial finished every phase.", ""]
    lines += ["## All files", "", "Tables: " + _bullet_table_links(rep.tables, root), ""]
    if rep.figures:
        lines += ["Figures: " + _bullet_table_links(rep.figures, root), ""]
    if exp.notes:
        lines += ["## Notes", ""] + [f"- {x}" for x in exp.notes] + [""]
    lines += [f"_Generated by `lucir report` at {utc(pd.Timestamp.now(tz='UTC').timestamp())}._", ""]
    tables._atomic_write(rep.index, "\n".join(lines))
    from analysis import html

    extra = html.reproduce_section(exp) + ([] if confirm_exp is None else html.reproduce_section(
        confirm_exp, title="Commands that reproduce every confirm trial"))
    html.write_html(rep.index, root / "index.html", extra_md=extra, captions=captions)
    return rep


# --------------------------------------------------------------------------- MLflow
def log_to_mlflow(exp: Experiment, out: Path, artifact_path: str = "report") -> tuple[bool, str]:
    """Log ``out`` as artifacts of the sweep's parent run; (logged?, a line saying what happened)."""
    uri, run_id = exp.meta.get("mlflow_uri"), exp.meta.get("parent_run_id")
    if not uri or not run_id:
        return False, ("MLflow: not logged (lucir_experiment.json names no "
                       + " and no ".join(k for k, v in (("mlflow_uri", uri), ("parent_run_id", run_id)) if not v)
                       + ")")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return False, f"MLflow: not logged (store {uri} does not exist)"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # an unreachable server fails fast
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)
        client.log_artifacts(run_id, str(out), artifact_path=artifact_path)
    except Exception as exc:  # noqa: BLE001 - the report on disk is what matters; say why MLflow failed
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return False, f"MLflow: not logged ({uri}, run {run_id} unreachable: {type(exc).__name__}: {msg})"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return True, f"MLflow: report logged as artifacts '{artifact_path}/' of parent run {run_id} ({uri})"


def run_report(exp_path: str, out: str | None, formats: Iterable[str], mlflow: bool, top_k: int = 10,
               reference: str = "lucir") -> int:
    """The ``lucir report`` command: 0 on success, 2 for no experiment / no trials / bad options."""
    try:
        build_report(exp_path, out, formats, top_k=top_k, mlflow=mlflow, reference=reference)
    except EmptyExperimentError as exc:
        print(f"lucir report: {exc}", file=sys.stderr)
        return EMPTY_EXIT
    except (ExperimentError, ValueError) as exc:
        print(f"lucir report: error: {exc}", file=sys.stderr)
        return 2
    return 0
