"""What a paper says around the numbers: method and metric names, the training schedule of a protocol
that is not the published one, definitions of the metrics, the paper defaults of a search, and the
paper-format main table (methods x phase counts, with the published LUCIR rows).

* ``SHORT_NAMES`` / ``short_name``: the names figures use (LUCIR, CN, CN+LF, LUCIR+CBF, ...); the tables'
  longer ``tables.PAPER_NAMES`` spell out the components.
* ``METRIC_NAMES`` / ``metric_name``: "avg. inc. acc. (CNN)", "old-class acc. (NME)", ...
* ``schedule_note(df)``: '' for the published protocol, else what differs ("1 epoch per phase instead of
  the published 160"; digits: not a published benchmark); every caption of such a protocol carries it.
* ``DEFINITIONS``: forgetting, BWT, average incremental accuracy, old/new accuracy, norm ratio.
* ``paper_defaults(dataset, params)``: the paper's values of the searched parameters.
* ``main_table(df)``: the paper-format main table.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from analysis.results import last_phase

SHORT_NAMES = {"finetune": "Finetune", "baseline": "Baseline", "cn": "CN", "cn_lf": "CN+LF", "lucir": "LUCIR",
               "lucir_cbf": "LUCIR+CBF", "joint": "Joint", "custom": "custom"}
METRIC_NAMES = {
    "avg_inc_acc_cnn": "avg. inc. acc. (CNN)", "avg_inc_acc_nme": "avg. inc. acc. (NME)",
    "acc_cnn": "top-1 acc. (CNN)", "acc_nme": "top-1 acc. (NME)",
    "last_acc_cnn": "last-phase acc. (CNN)", "last_acc_nme": "last-phase acc. (NME)",
    "acc_old_cnn": "old-class acc. (CNN)", "acc_new_cnn": "new-class acc. (CNN)",
    "acc_old_nme": "old-class acc. (NME)", "acc_new_nme": "new-class acc. (NME)",
    "forgetting_cnn": "forgetting (CNN)", "forgetting_nme": "forgetting (NME)",
    "bwt_cnn": "BWT (CNN)", "bwt_nme": "BWT (NME)",
    "val_avg_inc_acc_cnn": "val. avg. inc. acc. (CNN)", "val_avg_inc_acc_nme": "val. avg. inc. acc. (NME)",
    "val_acc_cnn": "val. top-1 acc. (CNN)", "val_acc_nme": "val. top-1 acc. (NME)",
    "top5_cnn": "top-5 acc. (CNN)", "top5_nme": "top-5 acc. (NME)",
    "old_as_new_cnn": "old predicted as new (CNN)", "new_as_old_cnn": "new predicted as old (CNN)",
    "eta_init": "η init", "lambda_base": "λ base", "margin": "margin m", "K": "K",
}
PARAM_TEX = {"eta_init": r"$\eta_\mathrm{init}$", "lambda_base": r"$\lambda_\mathrm{base}$", "margin": "$m$",
             "K": "$K$"}
#: the published schedule (epochs per phase) of each benchmark; digits has none
PUBLISHED_EPOCHS = {"cifar100": 160, "imagefolder": 90}
DEFINITIONS = {
    "avg_inc_acc": "average incremental accuracy: the mean of the top-1 accuracy on all classes seen so far "
                   "over the phases, the base phase included",
    "forgetting": "forgetting at phase t: the mean over the class groups learned before t of the best "
                  "accuracy the group ever had minus its accuracy at t (higher is worse)",
    "bwt": "BWT (backward transfer, Lopez-Paz and Ranzato 2017) at phase t: the mean over the groups learned "
           "before t of the accuracy at t minus the accuracy right after the group was learned (negative is "
           "forgetting)",
    "old_new": "old-/new-class accuracy: top-1 accuracy on the test images of the classes of earlier phases / "
               "of the classes added in this phase, over all classes seen",
    "norm_ratio": "norm ratio: the mean L2 norm of the classifier weight rows of the new classes over that of the "
                  "old classes, before normalisation. With the linear head (Finetune, Baseline, Joint) the norms "
                  "enter the scores, so a ratio above 1 biases predictions towards the new classes (the paper's "
                  "Fig. 1 argument); the cosine head (CN and above) divides every row by its norm, so its raw "
                  "norms do not enter the scores at all (with LF the old rows are frozen and only the new ones "
                  "grow)",
}


def short_name(preset: Any) -> str:
    return SHORT_NAMES.get(preset, str(preset))


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


# --------------------------------------------------------------------------- schedules
def _first(df: pd.DataFrame, col: str) -> list:
    if col not in df:
        return []
    return sorted({v for v in df[col].dropna().tolist()}, key=str)


def schedule_note(df: pd.DataFrame) -> str:
    """'' when every trial ran a published benchmark at its published schedule, else a sentence per dataset:
    'CIFAR-100, reduced schedule: 1 epoch per phase (published: 160)'; 'digits (scikit-learn 8x8, not a
    published benchmark): 30 epochs per phase'."""
    parts = []
    if "dataset" not in df or not len(df):
        return ""
    for ds in _first(df, "dataset"):
        d = df[df["dataset"] == ds]
        epochs = [int(e) for e in _first(d, "epochs")]
        ep = "/".join(map(str, epochs)) or "?"
        unit = "epoch" if epochs == [1] else "epochs"
        pub = PUBLISHED_EPOCHS.get(ds)
        if ds == "digits":
            parts.append(f"digits (scikit-learn 8x8 images, not a published benchmark): {ep} {unit} per phase")
        elif pub is None:
            parts.append(f"{ds}: {ep} {unit} per phase (no published schedule)")
        elif any(e != pub for e in epochs):
            name = {"cifar100": "CIFAR-100", "imagefolder": "ImageNet-Subset"}.get(ds, ds)
            parts.append(f"{name}, reduced schedule: {ep} {unit} per phase (published: {pub}); the numbers are "
                         "not comparable with published ones")
    return "; ".join(parts)


def with_schedule(text: str, df: pd.DataFrame) -> str:
    """``text`` followed by the schedule note of ``df`` (when not the published protocol)."""
    note = schedule_note(df)
    if not note:
        return text
    text = text.rstrip()
    return f"{text}{'' if not text or text[-1] in '.!?' else '.'} {note[0].upper()}{note[1:]}."


# --------------------------------------------------------------------------- paper defaults
def paper_defaults(dataset: str | None, params: Iterable[str]) -> dict[str, Any]:
    """The paper's values (``lucir.config`` defaults of the ``lucir`` preset for ``dataset``) of ``params``."""
    try:
        from lucir.config import Config

        flat = Config.from_flat(dataset=dataset or "digits", preset="lucir").to_flat()
    except Exception:  # noqa: BLE001 - an unknown dataset: no defaults to mark
        return {}
    return {p: flat[p] for p in params if p in flat}


# --------------------------------------------------------------------------- main table
#: the two main tables (a page-wide table holds 6 "mean ± std" columns, not 12): average incremental accuracy and
#: last-phase accuracy, CNN and NME, per phase count
MAIN_KINDS = {"avg": (("avg_inc_acc_cnn", "CNN"), ("avg_inc_acc_nme", "NME")),
              "last": (("acc_cnn", "CNN"), ("acc_nme", "NME"))}
STANDARD_PHASES = {"cifar100": (5, 10, 25), "imagefolder": (5, 10, 25)}


def _cell(vals: pd.Series) -> str:
    from analysis.tables import fmt_mean_std

    vals = vals.astype(float).dropna()
    if not len(vals):
        return "–"
    return fmt_mean_std(float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else math.nan)


#: the rows of the published numbers in the main table (the note names the sources in full)
PUBLISHED_LABELS = {"hou2019": "LUCIR [Hou 2019]", "podnet2020_rerun": "LUCIR [PODNet re-run]"}


def published_rows(dataset: str, base: Any, entries: list[dict] | None = None) -> dict[str, dict]:
    """label -> {(phases, metric): 'value ± std'} of the published entries for (dataset, base classes)."""
    from analysis.scoreboard import load_published

    out: dict[str, dict] = {}
    for e in entries if entries is not None else load_published():
        p = e["protocol"]
        if p["dataset"] != dataset or int(p["base_classes"]) != int(base):
            continue
        label = PUBLISHED_LABELS.get(e["source"], e["source_label"])
        std = e.get("std")
        out.setdefault(label, {})[(int(p["phases"]), e["metric"])] = (
            f"{e['value']:.2f}" + (f" ± {std:.2f}" if isinstance(std, (int, float)) else ""))
    return out


def main_table(df: pd.DataFrame, entries: list[dict] | None = None, kind: str = "avg") -> dict[str, Any]:
    """The paper-format main table, one per (dataset, base classes, exemplar budget): rows = methods (ours:
    mean ± std over finished seeds, paper short names; then the published LUCIR rows), a column group per
    phase count (the benchmark's standard 5/10/25 and any phase count we ran) with the CNN and NME average
    incremental accuracy (``kind="avg"``) or last-phase accuracy (``kind="last"``). Returns {label:
    tables.PaperTable}."""
    MAIN_COLS = MAIN_KINDS[kind]
    from analysis import tables

    fin = tables.with_memory(last_phase(df)) if len(df) else df
    out: dict[str, Any] = {}
    if not len(fin):
        return out
    fin = fin[fin["preset"].notna()]
    for (ds, base, mem), g in fin.groupby(["dataset", "base_classes", "memory"], sort=True, dropna=False):
        pub = published_rows(ds, base, entries)
        pub_phases = {ph for rows in pub.values() for ph, _ in rows}
        phases = sorted(set(int(p) for p in g["phases"].unique()) | set(STANDARD_PHASES.get(ds, ()))
                        | (pub_phases & set(STANDARD_PHASES.get(ds, ()))))
        presets = sorted(g["preset"].unique(), key=tables._sort_key_preset)
        data, rows = [], []
        for p in presets:
            row = {"method": short_name(p), "source": "ours"}
            for ph in phases:
                s = g[(g["preset"] == p) & (g["phases"] == ph)]
                for col, head in MAIN_COLS:
                    row[f"{ph} phases: {head}"] = _cell(s[col]) if len(s) else "–"
                row[f"{ph} phases: n"] = int(len(s))
            rows.append(row)
        for label, vals in pub.items():
            row = {"method": label, "source": "published"}
            for ph in phases:
                for col, head in MAIN_COLS:
                    row[f"{ph} phases: {head}"] = vals.get((ph, col), "–")
                row[f"{ph} phases: n"] = 3 if any(k[0] == ph for k in vals) else 0
            rows.append(row)
        data = pd.DataFrame(rows)
        keep = [c for c in data.columns if not c.endswith(": n")]
        disp = data[keep].drop(columns="source")
        # a phase count with nothing in it (no run, nothing published) is dropped
        for ph in phases:
            cols = [f"{ph} phases: {h}" for _, h in MAIN_COLS]
            if all(v == "–" for c in cols for v in disp[c]):
                disp = disp.drop(columns=cols)
        ours_n = sorted({int(n) for r in rows if r["source"] == "ours" for k, n in r.items()
                         if k.endswith(": n") and n})
        note = (f"{tables.protocol_label(ds, base, None, mem)}; ours: mean ± std over "
                f"{'/'.join(map(str, ours_n)) or 0} finished seeds; "
                + ("average incremental accuracy (%, base phase included)" if kind == "avg" else
                   "top-1 accuracy on all classes after the last phase (%)")
                + "; published rows: [Hou 2019] the paper (CVPR 2019; averages as copied in PODNet Table 1, no "
                "std given), [PODNet re-run] the official code re-run over 3 class orders by Douillard et al. "
                "(PODNet, ECCV 2020, Table 1), mean ± std; – = not run / not published")
        hidden = sorted(pub_phases - set(phases))
        for ph in hidden:  # published for a phase count no run can match (e.g. 50 phases of one class)
            vals = "; ".join(f"{label}: " + ", ".join(f"{k} {v[(ph, c)]}" for c, k in MAIN_COLS if (ph, c) in v)
                             for label, v in pub.items() if any(key[0] == ph for key in v))
            if vals:
                note += f"; also published for {ph} phases: {vals}"
        out[tables.protocol_label(ds, base, None, mem)] = tables.PaperTable(
            data=data, display=disp, note=with_schedule(note, g))
    return out
