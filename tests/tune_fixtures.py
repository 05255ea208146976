"""Shared helpers of the tune/ tests (imported by the test modules; no conftest so nothing leaks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LUCIR = [sys.executable, "-m", "lucir.cli"]
TINY = {"epochs": 2}  # digits, default protocol (B4 + 3 phases of 2 classes), 2 epochs per phase


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (2 CPUs, no dashboard) for the module; shut down afterwards."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def run_lucir(args: list[str], cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*LUCIR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def popen_lucir(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """The driver in its own session, so the test can kill it and every process it started."""
    fh = open(log, "w")
    return subprocess.Popen([*LUCIR, *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def trial_docs(exp: Path) -> list[dict]:
    """Every trial of the experiment: the worker's record with the driver's status (lucir.record)."""
    from lucir.record import read_trials

    return read_trials(exp)


def result_rows(trial_dir: Path) -> list[dict]:
    """Ray's own per-trial result.json (one JSON line per report, across restores)."""
    p = trial_dir / "result.json"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("lucir_trainable"))


def mlflow_child_runs(exp: Path) -> list | None:
    """Child runs (one per trial) in the experiment's default sqlite store, or None without MLflow logging."""
    try:
        import tune.mlflow_logger  # noqa: F401
    except ImportError:
        return None
    db = exp / "mlflow.db"
    if not db.exists():
        return None
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{db}")
    doc = json.loads((exp / "lucir_experiment.json").read_text())
    e = client.get_experiment_by_name(doc["mlflow_experiment"])
    runs = client.search_runs([e.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


METRIC_KEYS = ("phase", "classes_seen", "acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn", "avg_inc_acc_cnn",
               "avg_inc_acc_nme", "forgetting_cnn", "train_seconds")
