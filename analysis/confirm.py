"""The confirm stage of a search: the paper defaults and the top-k configurations (chosen on the
validation split) re-run on the full training set over several seeds; their test accuracy decides
the winner (DESIGN §6: winners are confirmed on seeds before anything is reported).

Reads ``<search>/confirm/`` (an experiment folder of its own: ``lucir_experiment.json`` with the
candidates, ``trials/*.json``); used by the reports and by the runner's end-of-search summary.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

from lucir.record import CONFIRM_DIR, EXPERIMENT_FILE, OBJECTIVE, is_finished, number, read_trials

from analysis.paired import ALPHA  # noqa: E402

METRIC = OBJECTIVE


def _per_seed(docs: list[dict], key: str) -> dict:
    """seed -> the last-phase ``key`` of finished confirm runs (a repeated seed: the mean)."""
    by: dict = {}
    for d in docs:
        v = number(d["phases"][-1].get(key)) if d.get("phases") else None
        if v is not None:
            by.setdefault(d["config"].get("seed"), []).append(v)
    return {s: statistics.mean(v) for s, v in by.items()}


def holds(config: dict, params: dict) -> bool:
    """The run's ``config`` is the candidate of ``params`` (every searched value equal)."""
    return all(config.get(k) == v for k, v in params.items())


def verdict_text(test: dict, winner: str, other: str = "the paper defaults") -> str:
    """'not distinguishable at n = 3 (...)' / 'better than the paper defaults at n = 6 (...)': the paired
    test of ``winner`` against ``other`` in words, with the numbers that decide it."""
    n = test["n"]
    if n < 2:
        return (f"{winner} vs {other}: not testable ({n} shared seed{'s' * (n != 1)}; a paired test needs "
                f"at least 2, an exact sign-flip test {test['seeds_sign_flip']} to reach p < {ALPHA:g})")
    fmt = lambda p: "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3g}"  # noqa: E731
    sig = not math.isnan(test["p_t_holm"]) and test["p_t_holm"] < ALPHA
    word = ("better than" if test["mean_diff"] > 0 else "worse than") if sig else "not distinguishable from"
    return (f"{winner} is {word} {other} at n = {n} seeds: paired difference {test['mean_diff']:+.2f} points "
            f"(95% CI {fmt(test['ci_low'])} to {fmt(test['ci_high'])}), paired t-test p = {fmt(test['p_t'])} "
            f"(Holm-corrected over {test['m']} comparison{'s' * (test['m'] != 1)}: {fmt(test['p_t_holm'])}), "
            f"exact sign-flip p = {fmt(test['p_value'])} (the smallest attainable at n = {n} is "
            f"{fmt(test['p_min'])}); an exact sign-flip test needs {test['seeds_sign_flip']} seeds to reach "
            f"p < {ALPHA:g} after the correction")


def confirm_summary(exp: str | os.PathLike) -> dict | None:
    """Test-set average incremental accuracy (CNN, NME) of every candidate over the confirm seeds: mean,
    std, n; the winner (best confirmed mean) and the verdict: a paired test (on the confirm seeds) of each
    candidate against the paper defaults, Holm-corrected over those comparisons, spelled out for the winner
    (or, when the defaults win, for the best other candidate). None when the search has no confirm stage.

    ``verdict`` keeps ``gap``, ``defaults_std``, ``beats_by_more_than_std`` (the old rule) and
    ``winner_is_defaults``, and adds ``test`` (the paired statistics) and ``text`` (the words to print)."""
    from analysis.paired import paired_stats, seeds_for_sign_flip, seeds_for_t, holm, t_test_p

    folder = Path(exp) / CONFIRM_DIR
    if not (folder / EXPERIMENT_FILE).is_file():
        return None
    meta = json.loads((folder / EXPERIMENT_FILE).read_text())
    docs = read_trials(folder)  # the worker's records with the driver's status on top
    rows = []
    for c in meta.get("candidates", []):
        mine = [d for d in docs if holds(d["config"], c["params"])]
        fin = [d for d in mine if is_finished(d)]
        cnn_by, nme_by = _per_seed(fin, METRIC), _per_seed(fin, "avg_inc_acc_nme")
        cnn, nme = list(cnn_by.values()), list(nme_by.values())
        rows.append({**c, "n": len(cnn), "runs": len(mine), "config": fin[0]["config"] if fin else None,
                     "cnn_by_seed": cnn_by, "nme_by_seed": nme_by,
                     "cnn_mean": statistics.mean(cnn) if cnn else None,
                     "cnn_std": statistics.stdev(cnn) if len(cnn) > 1 else None,
                     "nme_mean": statistics.mean(nme) if nme else None,
                     "nme_std": statistics.stdev(nme) if len(nme) > 1 else None})
    done = [r for r in rows if r["cnn_mean"] is not None]
    winner = max(done, key=lambda r: r["cnn_mean"]) if done else None
    ref = rows[0] if rows and rows[0]["label"] == "paper defaults" else None
    verdict = None
    if ref is not None and ref["cnn_mean"] is not None:
        tests = {}
        for r in rows[1:]:
            common = sorted(set(r["cnn_by_seed"]) & set(ref["cnn_by_seed"]), key=str)
            d = [r["cnn_by_seed"][s] - ref["cnn_by_seed"][s] for s in common]
            st = paired_stats(d)
            if len(d) == 2:  # paired_stats refuses n < 3 for intervals; the t-test p still exists
                st["p_t"] = t_test_p(d)
            tests[r["label"]] = st
        adj = holm([t["p_t"] for t in tests.values()])
        m = len(tests)
        for t, a in zip(tests.values(), adj):
            t.update(p_t_holm=a, m=m, seeds_sign_flip=seeds_for_sign_flip(m),
                     seeds_t=seeds_for_t(t["mean_diff"], t["sd_diff"], m))
        for r in rows:
            r["test"] = tests.get(r["label"])
    if winner is not None and ref is not None and ref["cnn_mean"] is not None:
        gap = winner["cnn_mean"] - ref["cnn_mean"]
        std = ref["cnn_std"]
        verdict = {"gap": gap, "defaults_std": std,
                   "beats_by_more_than_std": bool(std is not None and gap > std),
                   "winner_is_defaults": winner is ref}
        others = [r for r in done if r is not ref and r.get("test")]
        if winner is not ref and winner.get("test"):
            verdict["test"] = winner["test"]
            verdict["text"] = verdict_text(winner["test"], winner["label"])
            verdict["significant"] = bool(winner["test"]["p_t_holm"] < ALPHA)
        elif others:
            runner = max(others, key=lambda r: r["cnn_mean"])
            verdict["test"] = runner["test"]
            verdict["text"] = ("the paper defaults have the best confirmed mean; "
                               + verdict_text(runner["test"], runner["label"]))
            verdict["significant"] = bool(runner["test"]["p_t_holm"] < ALPHA)
        else:
            verdict["test"], verdict["significant"] = None, False
            verdict["text"] = "only the paper defaults were confirmed: nothing to compare them with"
    return {"rows": rows, "winner": winner, "verdict": verdict, "seeds": meta.get("seeds"),
            "metric": meta.get("search_metric")}
