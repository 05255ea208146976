"""Synthetic experiment folders and MLflow stores for the analysis tests (docs/EXPERIMENT_LAYOUT.md).

``make_trial`` builds a trial record with known values: every phase's CNN accuracy is ``acc`` (so the
average incremental accuracy at every phase is ``acc`` too), NME is ``acc - 1``, forgetting at phase t
is ``forgetting * t / phases``. ``write_experiment`` writes ``lucir_experiment.json`` and
``trials/<id>.json`` exactly as the runner does (strict JSON, NaN as null); ``write_mlflow`` logs the same trials as child runs of
a sweep parent run, the way ``tune``'s MLflow callback does.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from lucir.config import Config


def make_trial(trial_id: str, *, preset: str = "lucir", seed: int = 0, acc: float = 60.0,
               forgetting: float = 10.0, phases: int = 3, done: int | None = None, status: str | None = None,
               dataset: str = "digits", base: int = 4, error: str = "", sweep: str = "exp", **config: Any) -> dict:
    """A ``trials/<id>.json`` document. ``done`` = phases reported (default: all ``phases + 1``)."""
    cfg = Config.from_flat(dataset=dataset, preset=preset, phases=phases, base_classes=base, seed=seed,
                           epochs=2, **config).to_flat()
    n = cfg["num_classes"]
    per = (n - base) // phases
    done = phases + 1 if done is None else done
    rows, mat_c, mat_n = [], [], []
    for t in range(done):
        mat_c.append([acc] * (t + 1))
        mat_n.append([acc - 1.0] * (t + 1))
        rows.append({"phase": t, "classes_seen": base + t * per, "acc_cnn": acc, "acc_nme": acc - 1.0,
                     "acc_old_cnn": math.nan if t == 0 else acc, "acc_new_cnn": acc, "avg_inc_acc_cnn": acc,
                     "avg_inc_acc_nme": acc - 1.0, "forgetting_cnn": forgetting * t / phases,
                     "train_seconds": 1.0 + t, "phase_seconds": 1.5 + t, "eta": 1.0 + 0.5 * t,
                     "lambda": 0.0 if t == 0 else 5.0, "exemplars": 20 * (base + t * per)})
    if status is None:
        status = "TERMINATED" if done == phases + 1 else "RUNNING"
    doc = {"trial_id": trial_id, "trial_name": f"lucir_trainable_{trial_id}", "sweep": sweep, "config": cfg,
           "phases": rows, "num_phases": phases, "acc_matrix_cnn": mat_c, "acc_matrix_nme": mat_n,
           "status": status, "base_cache": "miss"}
    if error:
        doc["error"] = error
    return doc


def strict_json(obj: Any) -> str:
    """Strict JSON as the runner writes it (EXPERIMENT_LAYOUT): NaN becomes null."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), allow_nan=False)


def write_experiment(root: Path, trials: list[dict], *, name: str = "exp", kind: str = "ablate",
                     meta: dict | None = None) -> Path:
    """An experiment folder at ``root`` with ``lucir_experiment.json`` and one JSON file per trial."""
    root.mkdir(parents=True, exist_ok=True)
    m = {"name": name, "kind": kind, "argv": ["lucir", kind, "--dataset", "digits"],
         "created": "2026-11-28T08:30:00", "metric": "avg_inc_acc_cnn", "mode": "max",
         "mlflow_uri": f"sqlite:///{root.absolute()}/mlflow.db", "mlflow_experiment": name,
         "param_space": {}}
    m.update(meta or {})
    (root / "lucir_experiment.json").write_text(strict_json(m))
    (root / "trials").mkdir(exist_ok=True)
    for t in trials:
        (root / "trials" / f"{t['trial_id']}.json").write_text(strict_json(t))
    return root


def ablation_trials(seeds=(0, 1, 2), presets=("baseline", "cn", "lucir"), phase_counts=(2, 3)) -> list[dict]:
    """An ablation grid with known values: acc = 50 + 5 * rung + 2 * seed - phases (std over 3 seeds = 2)."""
    out = []
    for i, preset in enumerate(presets):
        for p in phase_counts:
            for s in seeds:
                out.append(make_trial(f"{preset}_p{p}_s{s}", preset=preset, seed=s, phases=p,
                                      acc=50.0 + 5 * i + 2 * s - p, forgetting=20.0 - 5 * i))
    return out


def empty_mlflow_db(template_dir: Path) -> Path:
    """A migrated, empty MLflow sqlite store (created once; migrations take seconds)."""
    db = template_dir / "template.db"
    if not db.exists():
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def write_mlflow(uri: str, experiment: str, trials: list[dict], artifact_root: Path,
                 sweep: str | None = None) -> str:
    """Log ``trials`` as child runs (params = flat config, metrics with step = phase, lucir.* tags)
    under one parent run of the sweep; returns the parent run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(experiment, artifact_location=str(artifact_root))
    parent = c.create_run(exp_id, run_name=sweep or experiment, tags={"lucir.sweep": sweep or experiment,
                                                                      "lucir.kind": "ablate"})
    pid = parent.info.run_id
    status_map = {"TERMINATED": "FINISHED", "PRUNED": "KILLED", "ERROR": "FAILED"}
    for t in trials:
        tags = {"mlflow.parentRunId": pid, "lucir.trial_id": t["trial_id"], "lucir.trial_name": t["trial_name"],
                "lucir.preset": t["config"]["preset"], "lucir.sweep": t["sweep"], "lucir.status": t["status"],
                "lucir.seed": str(t["config"]["seed"]), "lucir.base_cache": t.get("base_cache", "")}
        if t.get("error"):
            tags["lucir.error"] = t["error"]
        run = c.create_run(exp_id, run_name=t["trial_name"], tags=tags)
        rid = run.info.run_id
        params = [Param(k, str(v)) for k, v in t["config"].items()]
        for i in range(0, len(params), 100):
            c.log_batch(rid, params=params[i:i + 100])
        metrics = [Metric(k, float(v), 1_700_000_000_000 + p["phase"], p["phase"])
                   for p in t["phases"] for k, v in p.items() if k != "phase"]
        for i in range(0, len(metrics), 500):
            c.log_batch(rid, metrics=metrics[i:i + 500])
        if t["status"] in status_map:
            c.set_terminated(rid, status_map[t["status"]])
    c.set_terminated(pid, "FINISHED")
    return pid


def fresh_mlflow(template: Path, dest_dir: Path) -> str:
    """Copy the template store into ``dest_dir/mlflow.db``; return its sqlite URI."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    db = dest_dir / "mlflow.db"
    shutil.copyfile(template, db)
    return f"sqlite:///{os.path.abspath(db)}"
