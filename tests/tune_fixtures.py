"""Shared helpers of the tune/ tests (imported by the test modules; no conftest so nothing leaks)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lucir import record

LUCIR = [sys.executable, "-m", "lucir.cli"]
MLFLOW_BIN = str(Path(sys.executable).with_name("mlflow"))


def run_lucir(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*LUCIR, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def popen_lucir(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """The driver in its own session: the test kills the driver's pid alone (SIGKILL) and then its
    process group, so nothing it started outlives the test."""
    fh = open(log, "a")
    return subprocess.Popen([*LUCIR, *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL the driver process (Ray's reaper then ends its local cluster), then whatever of its session
    is left after a moment (Ray's agents may linger)."""
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    time.sleep(1.0)
    end_group(proc)


def end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def records(exp: Path) -> dict[str, dict]:
    return {d["trial_id"]: d for d in record.read_trials(exp)}


def rows_done(exp: Path) -> int:
    return sum(len(d.get("phases") or []) for d in records(exp).values())


def check_no_phase_trained_twice(rec: dict) -> None:
    """No training of a phase started after that phase's row was written (a finished phase was never
    trained again), and the starts never go back (phase, epoch)."""
    starts = [(s["phase"], s["epoch"]) for s in rec["starts"]]
    assert starts == sorted(starts), (rec["trial_id"], starts)
    ended = rec["ended"]
    assert len(ended) == len(rec["phases"])
    for s in rec["starts"]:
        assert s["phase"] <= len(ended), (rec["trial_id"], s)
        if s["phase"] < len(ended):
            assert s["time"] <= ended[s["phase"]], (rec["trial_id"], "phase trained after it was recorded", s)


def mlflow_runs(uri: str, experiment: str) -> tuple[object, list, list]:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    e = c.get_experiment_by_name(experiment)
    runs = c.search_runs([e.experiment_id], max_results=1000) if e else []
    return (c, [r for r in runs if r.data.tags.get("lucir.role") == "sweep"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


def check_mlflow(uri: str, experiment: str, exp: Path) -> None:
    """One finished parent, one run per slot, every recorded phase once (step = phase), ended as recorded."""
    c, parents, children = mlflow_runs(uri, experiment)
    parents = [r for r in parents if r.data.tags.get("lucir.experiment_dir") == str(exp)]
    recs = records(exp)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in children if r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id]
    assert sorted(r.data.tags["lucir.trial_id"] for r in children) == sorted(recs)
    for run in children:
        rec = recs[run.data.tags["lucir.trial_id"]]
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "acc_cnn"))
        assert steps == list(range(len(rec["phases"]))), (rec["trial_id"], steps)
        assert run.info.status == {"TERMINATED": "FINISHED", "PRUNED": "KILLED"}[rec["status"]]
        assert run.data.tags["lucir.status"] == rec["status"]


def lucir_in_process(capsys, *argv) -> tuple[int, str]:
    """``lucir ARGV`` in this process: its exit code and what it wrote to stderr."""
    from lucir.cli import main

    rc = main(list(argv))
    return rc, capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend, in its own session, stopped by its pid."""

    def __init__(self, folder: Path, port: int | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 150.0) -> str:
        with open(self.folder / "server.log", "a") as out:
            self.proc = subprocess.Popen(
                [MLFLOW_BIN, "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while not healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not come up: {(self.folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        return self.url

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server's own session: its workers, nothing else
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)
    return True


def progress_pids(exp: Path, within: float = 3.0) -> list[int]:
    """The pids of workers training now: a progress file written in the last ``within`` seconds by a live
    process (files of slots that ended, or of a killed driver's workers, are left behind)."""
    out = []
    for p in (exp / record.TRIALS_DIR).glob("*.progress"):
        try:
            doc = json.loads(p.read_text())
            pid = int(doc["pid"])
            if time.time() - float(doc["time"]) < within:
                os.kill(pid, 0)
                out.append(pid)
        except (OSError, ValueError, KeyError):
            pass
    return out
