"""Reproduction scoreboard: finished trials against the published LUCIR numbers (``published.json``).

``scoreboard(df, meta)`` groups the finished trials of the long frame (``analysis.results``) by preset and
every field that decides a result except the seeds (``seed``, ``class_order_seed``: a group's trials are
its seeds and class orders). A group whose dataset, base classes and phases are those of a published entry
is compared with it only when every other protocol field is the published one: the exemplar budget, the
backbone, the full reference schedule (``lucir.config.DATASET_DEFAULTS``: 160 epochs per phase for
CIFAR-100, lr, milestones, ...), the method's switches and hyperparameters (the entry's preset), all
training images (``val_fraction = 0``) and, for NME numbers, the class-mean flip the reference used.
Otherwise the group is not compared and a note names every difference. The class order is not part of the
match: it is shown beside the numbers (ours: the class order seeds of the group's trials).

The table gives, per compared group x published entry: ours (mean, sample std, n over finished trials,
the average incremental accuracy at the last phase), the published value (± std, n), the difference
(ours − published, percentage points) and that difference in units of the published std (when given).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from analysis import tables
from analysis.results import CONFIG_FIELDS, RUNTIME_FIELDS, last_phase

PUBLISHED_FILE = Path(__file__).with_name("published.json")
METRICS = ("avg_inc_acc_cnn", "avg_inc_acc_nme")
#: table columns (numbers; the Markdown/LaTeX display formats them)
COLUMNS = ("protocol", "preset", "metric", "n", "ours_mean", "ours_std", "class_orders", "published",
           "published_std", "published_n", "published_orders", "diff", "diff_in_std", "caveats", "source", "entry")
_KEY = ("dataset", "base_classes", "phases")
#: never compared: the group's seeds, what follows from the dataset, how it ran
_SKIP = {"seed", "class_order_seed", "num_classes", "preset", "data_root", *RUNTIME_FIELDS, *_KEY}
#: fields that matter only when the switch is on in the published method
_ONLY_WITH = {"kd_T": "kd", "kd_beta": "kd", "ms_weight": "mimic_scores", "cbf_epochs": "cbf",
              "cbf_lr": "cbf", "cbf_milestones": "cbf", "cbf_weight_decay": "cbf"}
_SWITCHES = ("cosine", "imprint", "less_forget", "adaptive_lambda", "margin_ranking", "kd", "mimic_scores",
             "cbf", "joint")
_FLIP_WHAT = {"channels": "the channel reversal", "mirror": "mirror images", "none": "no flip"}


class PublishedError(ValueError):
    """``published.json`` is malformed (an entry without a source, a metric or a value)."""


# --------------------------------------------------------------------------- published numbers
def load_published(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The published entries, each with ``source_label`` / ``source_text`` resolved from ``sources``."""
    return [dict(e) for e in _load(str(path or PUBLISHED_FILE))]


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[dict[str, Any], ...]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    sources = doc.get("sources") or {}
    out = []
    for i, e in enumerate(doc.get("entries") or []):
        name = e.get("id") or f"entry {i}"
        src = sources.get(e.get("source"))
        if not isinstance(src, dict) or not src.get("label") or not src.get("text"):
            raise PublishedError(f"{path}: {name} has no source (source={e.get('source')!r} is not in 'sources')")
        if e.get("metric") not in METRICS:
            raise PublishedError(f"{path}: {name} metric={e.get('metric')!r}: allowed one of {list(METRICS)}")
        if not isinstance(e.get("value"), (int, float)):
            raise PublishedError(f"{path}: {name} has no numeric value")
        proto = e.get("protocol") or {}
        missing = [k for k in (*_KEY, "exemplars_per_class", "epochs", "backbone", "class_order") if k not in proto]
        if missing or not (e.get("method") or {}).get("preset"):
            raise PublishedError(f"{path}: {name} lacks protocol field(s) {missing or ['method.preset']}")
        out.append({**e, "source_label": src["label"], "source_text": src["text"]})
    return tuple(out)


def reference_config(entry: dict[str, Any]) -> dict[str, Any]:
    """The flat config an entry was measured under: the dataset's reference schedule, the entry's preset."""
    from lucir.config import Config

    p = entry["protocol"]
    flat = {k: p[k] for k in (*_KEY, "exemplars_per_class", "memory_total", "backbone", "epochs") if k in p}
    flat["preset"] = entry["method"]["preset"]
    if isinstance(p.get("class_order"), int):
        flat["class_order_seed"] = p["class_order"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in Config.from_flat(flat).to_flat().items()}


# --------------------------------------------------------------------------- differences
def _py(v: Any) -> Any:
    """A plain Python value (numpy/pandas scalars unwrapped, lists as tuples, NA as None)."""
    if isinstance(v, list):
        v = tuple(v)
    if isinstance(v, tuple):
        return tuple(_py(x) for x in v)
    if _missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        try:
            return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
        except TypeError:
            return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def differences(config: dict[str, Any], entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(differences that rule out any comparison with ``entry``, those that rule out its NME only).

    ``config``: a group's flat config (its values of every config column).
    """
    ref = reference_config(entry)
    general: list[str] = []
    nme: list[str] = []
    if any(not _same(config.get(s), ref[s]) for s in _SWITCHES if not _missing(config.get(s))):
        on = [s for s in _SWITCHES if ref[s]]
        general.append(f"preset {config.get('preset')} instead of {ref['preset']} ("
                       + ", ".join(f"{s}={config.get(s)} instead of {ref[s]}" for s in _SWITCHES
                                   if not _missing(config.get(s)) and not _same(config.get(s), ref[s]))
                       + f"; the published method is {ref['preset']}: {' + '.join(on)})")
    for k, rv in ref.items():
        if k in _SKIP or k in _SWITCHES or k == "class_mean_flip":
            continue
        if k in _ONLY_WITH and not ref[_ONLY_WITH[k]]:
            continue
        v = config.get(k)
        if _missing(v):
            continue  # not recorded by an older trainer: nothing to say it differs
        if k == "backbone" and v == "auto":
            continue  # resolves to the dataset's backbone
        if k in ("mean", "std") and not v:
            continue  # () = the dataset's normalisation
        if _same(v, rv):
            continue
        if k == "epochs":
            general.append(f"{v} epoch{'' if v == 1 else 's'} per phase instead of {rv}: not comparable")
        elif k == "exemplars_per_class":
            if not config.get("memory_total"):
                general.append(f"{v} exemplars per class instead of {rv}")
        elif k == "memory_total":
            general.append(f"a fixed memory of {v} exemplars in total instead of "
                           f"{ref['exemplars_per_class']} per class")
        elif k == "val_fraction":
            general.append(f"val_fraction={_fmt(v)}: trained on {100 * (1 - float(v)):.0f}% of the training images")
        elif k == "backbone":
            general.append(f"backbone {v} instead of {rv}")
        else:
            general.append(f"{k}={_fmt(v)} instead of {_fmt(rv)}")
    flip, rflip = config.get("class_mean_flip"), ref["class_mean_flip"]
    if _missing(flip):
        nme.append(f"class_mean_flip not recorded (trials older than the field averaged with mirror images; "
                   f"the published NME used {_FLIP_WHAT.get(rflip, rflip)})")
    elif flip != rflip:
        nme.append(f"class_mean_flip={flip} instead of {rflip} (the published NME used "
                   f"{_FLIP_WHAT.get(rflip, rflip)})")
    return general, nme


def caveats(config: dict[str, Any], entry: dict[str, Any], orders: str) -> list[str]:
    """What differs from ``entry`` without ruling the comparison out (shown beside the numbers)."""
    out = []
    po = entry["protocol"].get("class_order")
    if isinstance(po, int) and orders != f"seed {po}":
        out.append(f"class order {orders} instead of seed {po}")
    flip = config.get("class_mean_flip")
    ref_flip = reference_config(entry)["class_mean_flip"]
    if entry["metric"] == "avg_inc_acc_cnn" and not _missing(flip) and flip != ref_flip:
        out.append(f"class_mean_flip={flip} (NME not compared)")
    return out


# --------------------------------------------------------------------------- the scoreboard
def _orders_text(orders: Iterable[Any]) -> str:
    vals = sorted({int(o) for o in orders if not _missing(o)})
    if not vals:
        return "not recorded"
    return ("seed " if len(vals) == 1 else f"{len(vals)} orders: seeds ") + ", ".join(map(str, vals))


def _published_orders(entry: dict[str, Any]) -> str:
    o = entry["protocol"].get("class_order")
    return f"seed {o}" if isinstance(o, int) else str(o)


def scoreboard(df: pd.DataFrame, meta: dict[str, Any] | None = None,
               published: list[dict[str, Any]] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(table, notes): ours vs published for every finished group that ran a published protocol.

    ``meta``: the experiment's ``lucir_experiment.json`` (its kind is named when nothing matches);
    ``published``: the entries (default ``published.json``). ``notes`` state every protocol difference of
    the groups that were not compared, and why one was compared with caveats.
    """
    meta = meta or {}
    entries = load_published() if published is None else published
    notes: list[str] = []
    cfg_cols = [c for c in df.columns if c in CONFIG_FIELDS and c not in ("seed", "class_order_seed")]
    fin = last_phase(df) if len(df) else df
    fin = fin[fin["preset"].notna()] if len(fin) else fin
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for e in entries:
        by_key.setdefault(tuple(e["protocol"][k] for k in _KEY), []).append(e)
    rows: list[dict[str, Any]] = []
    matched_any = False
    if len(fin):
        keys = [fin[c].map(lambda v: tuple(v) if isinstance(v, list) else v) for c in cfg_cols]
        groups = fin.groupby(keys, dropna=False, sort=False) if cfg_cols else []
    else:
        groups = []
    for _, g in groups:
        first = g.iloc[0]
        config = {c: _py(first[c]) for c in cfg_cols}
        try:
            key = (str(config.get("dataset")), int(config.get("base_classes")), int(config.get("phases")))
        except (TypeError, ValueError):
            continue
        ents = by_key.get(key, [])
        if not ents:
            continue
        matched_any = True
        label = tables.protocol_label(key[0], key[1], key[2], tables.memory_label(
            config.get("exemplars_per_class"), config.get("memory_total")))
        ids = sorted(map(str, g["trial_id"]))
        who = (f"{label}, preset {config.get('preset')} ({len(g)} finished trial{'s' * (len(g) != 1)}: "
               + ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "") + ")")
        orders = _orders_text(g["class_order_seed"] if "class_order_seed" in g else [])
        told_general, told_nme = False, False
        for e in ents:
            general, nme = differences(config, e)
            if general:
                if not told_general:
                    notes.append(f"{who}: not compared with the published numbers: " + "; ".join(general) + ".")
                    told_general = True
                continue
            if e["metric"] == "avg_inc_acc_nme" and nme:
                if not told_nme:
                    notes.append(f"{who}: NME not compared: " + "; ".join(nme) + ".")
                    told_nme = True
                continue
            vals = g[e["metric"]].astype(float).dropna()
            if not len(vals):
                continue
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 else math.nan
            pstd = e.get("std")
            pstd = float(pstd) if isinstance(pstd, (int, float)) else math.nan
            diff = mean - float(e["value"])
            rows.append({"protocol": label, "preset": config.get("preset"), "metric": e["metric"],
                         "n": int(len(vals)), "ours_mean": mean, "ours_std": std, "class_orders": orders,
                         "published": float(e["value"]), "published_std": pstd,
                         "published_n": e.get("n") if isinstance(e.get("n"), int) else pd.NA,
                         "published_orders": _published_orders(e), "diff": diff,
                         "diff_in_std": diff / pstd if pstd > 0 else math.nan,
                         "caveats": "; ".join(caveats(config, e, orders)),
                         "source": f"{e['source_label']}: {e.get('where', '')}".rstrip(": "), "entry": e["id"]})
            po = e["protocol"].get("class_order")
            if isinstance(po, int) and orders != f"seed {po}":
                n = f"{who}: compared with {e['source_label']} although its class order is seed {po} (ours: {orders})."
                if n not in notes:
                    notes.append(n)
    # unfinished trials of a published protocol are not compared: say so
    if len(df) and "preset" in df:
        started = df.groupby("trial_id", sort=False).head(1)
        unfinished: dict[tuple, int] = {}
        for _, r in started[~started["finished"].astype(bool)].iterrows():
            try:
                k = (str(r["dataset"]), int(r["base_classes"]), int(r["phases"]))
            except (TypeError, ValueError):
                continue
            if k in by_key:
                unfinished[k] = unfinished.get(k, 0) + 1
        for k, n in unfinished.items():
            notes.append(f"{n} trial{'s' * (n != 1)} of {tables.protocol_label(*k)} did not finish: not counted.")
    if not matched_any:
        ran = sorted({tables.protocol_label(r["dataset"], r["base_classes"], r["phases"])
                      for _, r in fin.iterrows()}) if len(fin) else []
        kind = meta.get("kind")
        pub = sorted({(k[0], k[1]) for k in by_key})
        pub_text = "; ".join(f"{d} B{b} with " + ", ".join(str(k[2]) for k in sorted(by_key) if k[:2] == (d, b))
                             + " phases" for d, b in pub)
        notes.insert(0, (f"This {kind} experiment" if kind else "This experiment")
                     + (" ran " + ", ".join(ran) if ran else " has no finished trial")
                     + f"; the published numbers are for {pub_text}: nothing to compare.")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table, notes


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The scoreboard as text cells: 'ours' = 'mean ± std (n=3)', 'published' = 'value ± std (n=3)'."""
    def num(v: Any, fmt: str = "+.2f") -> str:
        return tables.DASH if _missing(v) else format(float(v), fmt)

    out = pd.DataFrame({
        "protocol": table["protocol"], "preset": table["preset"],
        "metric": table["metric"].map(lambda m: "CNN" if m.endswith("cnn") else "NME"),
        "ours": [f"{tables.fmt_mean_std(m, s)} (n={n})" for m, s, n in
                 zip(table["ours_mean"], table["ours_std"], table["n"])],
        "class orders": table["class_orders"],
        "published": [tables.fmt_mean_std(v, s) + ("" if _missing(n) else f" (n={n})") for v, s, n in
                      zip(table["published"], table["published_std"], table["published_n"])],
        "published orders": table["published_orders"],
        "diff": [num(v) for v in table["diff"]],
        "diff / published std": [num(v) for v in table["diff_in_std"]],
        "caveats": table["caveats"].replace("", tables.DASH), "source": table["source"],
    })
    return out


def paper_display(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The scoreboard for a paper: protocol, method, classifier, ours (mean ± std), n, published (± std), the
    difference and that in published stds, the source in short; class orders and caveats go to the note."""
    from analysis.paper import short_name

    def num(v: Any, fmt: str = "+.2f") -> str:
        return tables.DASH if _missing(v) else format(float(v), fmt)

    src = {"hou2019": "Hou et al. 2019", "podnet2020_rerun": "PODNet re-run"}
    entry_src = {e["id"]: src.get(e["source"], e["source_label"]) for e in load_published()}
    out = pd.DataFrame({
        "protocol": table["protocol"], "method": table["preset"].map(short_name),
        "classifier": table["metric"].map(lambda m: "CNN" if m.endswith("cnn") else "NME"),
        "ours": [tables.fmt_mean_std(m, s) for m, s in zip(table["ours_mean"], table["ours_std"])],
        "n": table["n"],
        "published": [tables.fmt_mean_std(v, s) for v, s in zip(table["published"], table["published_std"])],
        "diff": [num(v) for v in table["diff"]],
        "diff / std": [num(v) for v in table["diff_in_std"]],
        "source": table["entry"].map(lambda e: entry_src.get(e, e)),
    })
    out, consts = tables.drop_constant(out, ["protocol", "method", "n"])
    notes = [f"{k}: {v}" if k != "n" else f"n = {v} finished seeds" for k, v in consts.items()]
    orders = sorted(set(table["class_orders"]))
    notes.append("ours over class orders " + "; ".join(orders) + ", published over "
                 + "; ".join(sorted(set(table["published_orders"].astype(str)))))
    cav = sorted({c for c in table["caveats"] if c})
    if cav:
        notes.append("caveats: " + "; ".join(cav))
    notes.append("diff = ours - published (points), diff / std in units of the published std over class orders; "
                 "Hou et al. 2019 as copied in PODNet Table 1; PODNet re-run: the official code over 3 class "
                 "orders (Douillard et al., ECCV 2020, Table 1)")
    return out, "; ".join(notes)


def report_section(df: pd.DataFrame, meta: dict[str, Any] | None, tdir: Path, formats: Iterable[str],
                   written: list[Path], label_prefix: str | None = None) -> list[str]:
    """The '## Reproduction scoreboard' lines of index.md; writes ``tables/scoreboard.*`` (appended to
    ``written``) when something is compared, else the section lists the protocol differences."""
    table, notes = scoreboard(df, meta)
    lines = ["## Reproduction scoreboard", ""]
    if len(table):
        shown, note = paper_display(table)
        paths = tables.export_table(table, tdir / "scoreboard", tuple(formats), display=shown, note=note,
                                    caption="Reproduction: ours vs the published average incremental "
                                            "accuracy (%)", label_prefix=label_prefix)
        written += paths
        lines += ["Finished trials of a published protocol (dataset, base classes, phases, exemplars, the full "
                  "schedule and the published method's switches) against the published average incremental "
                  "accuracy (%, base phase included); *diff* = ours − published, *diff / published std* in units "
                  "of the published std over class orders.", "",
                  tables.to_markdown(display(table)),
                  "Files: " + " · ".join(f"[{p.name}]({p.parent.name}/{p.name})" for p in paths), ""]
        if notes:
            lines += ["Not compared, and caveats:", ""] + [f"- {n}" for n in notes] + [""]
    else:
        lines += ["Nothing is comparable with the published numbers:", ""] + [f"- {n}" for n in notes] + [""]
    return lines
