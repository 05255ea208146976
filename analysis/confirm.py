"""The confirm stage of a search: the paper defaults and the top-k configurations (chosen on the
validation split) re-run on the full training set over several seeds; their test accuracy decides
the winner (DESIGN §6: winners are confirmed on seeds before anything is reported).

Reads ``<search>/confirm/`` (an experiment folder of its own: ``lucir_experiment.json`` with the
candidates, ``trials/*.json``); used by the reports and by the runner's end-of-search summary.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from lucir.record import CONFIRM_DIR, EXPERIMENT_FILE, OBJECTIVE, is_finished, number, read_trials

METRIC = OBJECTIVE


def confirm_summary(exp: str | os.PathLike) -> dict | None:
    """Test-set average incremental accuracy (CNN, NME) of every candidate over the confirm seeds: mean,
    std, n; the winner (best confirmed mean) and whether it beats the paper defaults by more than the
    defaults' seed std.  None when the search has no confirm stage."""
    folder = Path(exp) / CONFIRM_DIR
    if not (folder / EXPERIMENT_FILE).is_file():
        return None
    meta = json.loads((folder / EXPERIMENT_FILE).read_text())
    docs = read_trials(folder)  # the worker's records with the driver's status on top
    rows = []
    for c in meta.get("candidates", []):
        mine = [d for d in docs if all(d["config"].get(k) == v for k, v in c["params"].items())]
        fin = [d for d in mine if is_finished(d)]
        cnn = [number(d["phases"][-1].get(METRIC)) for d in fin]
        nme = [number(d["phases"][-1].get("avg_inc_acc_nme")) for d in fin]
        cnn, nme = [x for x in cnn if x is not None], [x for x in nme if x is not None]
        rows.append({**c, "n": len(cnn), "runs": len(mine), "config": fin[0]["config"] if fin else None,
                     "cnn_mean": statistics.mean(cnn) if cnn else None,
                     "cnn_std": statistics.stdev(cnn) if len(cnn) > 1 else None,
                     "nme_mean": statistics.mean(nme) if nme else None,
                     "nme_std": statistics.stdev(nme) if len(nme) > 1 else None})
    done = [r for r in rows if r["cnn_mean"] is not None]
    winner = max(done, key=lambda r: r["cnn_mean"]) if done else None
    ref = rows[0] if rows and rows[0]["label"] == "paper defaults" else None
    verdict = None
    if winner is not None and ref is not None and ref["cnn_mean"] is not None:
        gap = winner["cnn_mean"] - ref["cnn_mean"]
        std = ref["cnn_std"]
        verdict = {"gap": gap, "defaults_std": std,
                   "beats_by_more_than_std": bool(std is not None and gap > std),
                   "winner_is_defaults": winner is ref}
    return {"rows": rows, "winner": winner, "verdict": verdict, "seeds": meta.get("seeds"),
            "metric": meta.get("search_metric")}
