"""Hyperparameter protocols side by side (``lucir report --compare S1 S2 ...`` on searches; issue 19).

For each search: where it tuned and where it evaluated (``tune/protocols.py``), and the tuned config's gain
over the paper defaults twice: in the tuning scenario (the search's own objective: its best finished slot
minus the defaults' slot 0, on the validation split it selected on; a selected maximum, so optimistic by
construction) and in the evaluation scenarios (the confirm stage: the top-1 candidate minus the defaults,
paired per scenario and seed, on the test set: mean, 95 % t-interval and ``scipy.stats.ttest_rel`` p).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis.confirm import holds
from analysis.paired import t_interval, t_test_p
from lucir import record


def _scenarios(protocol: str, evaluate: list[dict]) -> str:
    same = "the whole stream (same class order)" if protocol == "first-task" else "the tuning scenario (new seeds)"
    return "; ".join(", ".join(f"{k}={v}" for k, v in e.items()) or same for e in evaluate)


def protocol_row(search: str | Path) -> dict:
    """One search's row of the comparison (see the module docstring)."""
    exp = Path(search)
    doc = record.read_json_dict(exp / record.EXPERIMENT_FILE) or {}
    s = doc.get("search") or {}
    pl = s.get("protocol") or {"protocol": "stream", "tune": {}, "last_phase": None, "evaluate": [{}]}
    metric = doc.get("metric", record.OBJECTIVE)
    recs = {r["trial_id"]: r for r in record.read_trials(exp)}
    fin = [r for r in recs.values() if record.is_finished(r)]
    best = max(fin, key=lambda r: record.last_value(r, metric) or -math.inf, default=None)
    d0 = recs.get(record.slot_id(0))
    tune_gain = (record.last_value(best, metric) - record.last_value(d0, metric)) if best and d0 and record.is_finished(d0) else None
    row = {"search": exp.name, "protocol": pl["protocol"],
           "tuned on": ", ".join(f"{k}={v}" for k, v in pl["tune"].items()) or
                       f"class_order_seed={(s.get('fixed') or {}).get('class_order_seed', 1993)}",
           "phases seen by tuning": "all" if pl.get("last_phase") is None else f"0..{pl['last_phase']}",
           "evaluated on": _scenarios(pl["protocol"], pl["evaluate"]), "trials": len(recs),
           "chosen": "", "tuning gain (val)": tune_gain, "eval gain (test)": None, "eval 95% CI": "", "eval p (t)": None,
           "eval pairs": 0}
    conf = exp / record.CONFIRM_DIR
    cdoc = record.read_json_dict(conf / record.EXPERIMENT_FILE)
    if not cdoc:
        return row
    cands = {c["label"]: c["params"] for c in cdoc.get("candidates") or []}
    chosen = next((label for label, params in cands.items() if best and holds(best["config"], params)), "top-1")
    row["chosen"] = chosen if chosen == "paper defaults" else ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in cands.get(chosen, {}).items())
    if "paper defaults" not in cands or chosen not in cands:
        return row

    finished = [r for r in record.read_trials(conf) if record.is_finished(r)]

    def by_pair(params: dict) -> dict:
        return {(c.get("dataset"), c.get("class_order_seed"), c.get("base_classes"), c.get("phases"), c.get("seed")):
                record.last_value(r, record.OBJECTIVE) for r in finished if holds(c := r["config"], params)}

    a, b = by_pair(cands["paper defaults"]), by_pair(cands[chosen])
    keys = sorted(set(a) & set(b), key=str)
    diffs = [b[k] - a[k] for k in keys]
    row["eval pairs"] = len(diffs)
    if diffs:
        row["eval gain (test)"] = sum(diffs) / len(diffs)
    if len(diffs) >= 2:
        _, sd, lo, hi = t_interval(diffs)
        row["eval 95% CI"] = f"[{lo:.2f}, {hi:.2f}]"
        if sd > 0:
            row["eval p (t)"] = t_test_p(diffs)
    return row


def protocol_table(searches: list[str | Path]) -> pd.DataFrame:
    return pd.DataFrame([protocol_row(s) for s in searches])


NOTE = ("Tuning gain: the best finished search trial minus the paper defaults (slot 0) on the search's own "
        "validation objective, in the tuning scenario (a selected maximum: optimistic by construction). "
        "Eval gain: the chosen configuration (the search's best on its objective; 0 when that is the paper "
        "defaults) minus the paper defaults in the confirm stage, average incremental "
        "accuracy (CNN, test set, full training set), paired per evaluation scenario and seed; 95 % t-interval "
        "and the paired t-test p (scipy.stats.ttest_rel). A gain whose interval includes 0 is not "
        "distinguishable from the defaults at that number of pairs.")


def write_protocol_table(searches: list[str | Path], out: str | Path) -> list[Path]:
    """``protocols.csv`` and ``protocols.md`` in ``out``."""
    from lucir.checkpoint import atomic_write_text

    df = protocol_table(searches)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fmt = df.copy()
    for c in ("tuning gain (val)", "eval gain (test)"):
        fmt[c] = fmt[c].map(lambda v: "–" if v is None or pd.isna(v) else f"{v:+.2f}")
    fmt["eval p (t)"] = fmt["eval p (t)"].map(lambda v: "–" if v is None or pd.isna(v) else f"{v:.3g}")
    atomic_write_text(out / "protocols.csv", df.to_csv(index=False))
    atomic_write_text(out / "protocols.md", fmt.to_markdown(index=False, disable_numparse=True) + "\n\n" + NOTE + "\n")
    return [out / "protocols.csv", out / "protocols.md"]
