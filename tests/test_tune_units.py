"""Runner v3 in parts, without a sweep: spaces, options, the driver lock, the slot's Optuna trial, the worker's
refusal of a folder it cannot see, the MLflow sync (a real sqlite store), and every bad input or unreachable
service failing in seconds with one line and no folder left behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tune_fixtures import free_port, lucir_in_process

import lucir
from lucir import record
from lucir.commands import command_line as train_command
from lucir.config import ConfigError
from tune import spaces
from tune.sweep import DriverLock, RunnerOptions, make_doc
from tune.worker import WorkerError, lucir_trainable, report_metrics, runtime_overrides

TINY = {"epochs": 2}


# ------------------------------------------------------------------------------ spaces and options
def test_ablation_space_and_validation():
    s = spaces.ablation_space("digits", fixed={"epochs": 2}, presets=["lucir", "cn"], seeds=3,
                              gridded=spaces.parse_grid_set(["phases=2,3"]))
    assert s["preset"] == {"grid_search": ["lucir", "cn"]} and s["seed"] == {"grid_search": [0, 1, 2]}
    assert len(spaces.grid_points(s)) == 2 * 3 * 2
    bad = spaces.ablation_space("digits", gridded=spaces.parse_grid_set(["phases=3,4"]))
    with pytest.raises(ConfigError, match=r"grid point .*phases=4.*phases=4 is invalid"):
        spaces.validate_points(spaces.grid_points(bad), ["preset", "phases"])
    with pytest.raises(ConfigError, match="unknown config field"):
        spaces.parse_grid_set(["nosuch=1,2"])
    with pytest.raises(ConfigError, match="allowed a comma-separated list"):
        spaces.parse_presets("lucir,nosuch")
    cifar = spaces.ablation_space("paper-cifar")
    assert cifar["phases"] == {"grid_search": [5, 10, 25]} and cifar["base_classes"] == 50


def test_search_space_respects_classes_per_phase():
    base = lucir.Config.from_flat({"phases": 1})  # digits: 6 classes in one phase
    assert spaces.search_domains(base, {"phases": 1})["K"] == {"kind": "randint", "low": 1, "high": 6, "log": False}
    assert spaces.paper_defaults(base, {"phases": 1}) == {"eta_init": 1.0, "margin": 0.5, "K": 2, "lambda_base": 5.0}
    assert "margin" not in spaces.paper_defaults(lucir.Config.from_flat({}), {"margin": 0.3})
    with pytest.raises(ConfigError, match="nothing left to search"):
        spaces.search_domains(base, dict.fromkeys(spaces.SEARCHED, 1))


def test_runtime_overrides_and_report_metrics():
    assert runtime_overrides({}, 2, 0) == {"threads": 2, "device": "cpu", "download": False}
    o = runtime_overrides({}, 1, 0.25)
    assert o["gpu_memory_fraction"] == pytest.approx(0.9 * 0.25) and "device" not in o
    assert runtime_overrides({"download": True}, 1, 0)["download"] is False  # a trial never downloads
    m = report_metrics({"phase": 1, "acc_cnn": 3.0, "avg_inc_acc_cnn": 2.0}, 3)
    assert list(m)[:2] == ["avg_inc_acc_cnn", "phase"] and m["num_phases"] == 3


def test_train_command_reproduces_config():
    cmd = train_command(lucir.Config.from_flat({"epochs": 3, "margin": 0.25, "K": 1, "seed": 2}).to_flat())
    assert cmd.startswith("lucir train --dataset digits --preset lucir")
    assert "--epochs 3" in cmd and "--set margin=0.25" in cmd and "--set K=1" in cmd


def test_runner_options_are_validated_and_fuse_defaults_to_one():
    r = RunnerOptions(cpus_per_trial=2, gpus_per_trial=0.25, max_concurrent=4, address="auto")
    assert r.fuse == 1 and RunnerOptions.from_dict({**r.to_dict(), "unknown_old_key": 1}) == r
    assert r.replace(num_cpus=8, address=None).num_cpus == 8 and r.replace(address=None).address == "auto"
    for bad, flag in ((dict(cpus_per_trial=0), "--cpus-per-trial"), (dict(gpus_per_trial=2), "--gpus-per-trial"),
                      (dict(max_failures=-1), "--max-failures"), (dict(max_concurrent=0), "--max-concurrent"),
                      (dict(fuse=0), "--fuse")):
        with pytest.raises(ConfigError, match=flag):
            RunnerOptions(**bad)


def test_slots_and_fused_arrays_of_an_ablation():
    pts = [{**TINY, "preset": p, "seed": s} for s in (0, 1) for p in ("cn", "cn_lf", "lucir", "baseline")]
    doc = make_doc("ablate", "x", pts, RunnerOptions(fuse=2), metric=record.OBJECTIVE, argv=[], mlflow_uri=None,
                   mlflow_experiment=None)
    assert [s["id"] for s in doc["slots"]] == [record.slot_id(i) for i in range(8)] == \
        [f"s{i:04d}" for i in range(8)]
    by_id = {s["id"]: s["config"] for s in doc["slots"]}
    for a in doc["arrays"]:  # members share the seed; the linear-head baseline runs alone
        assert len(a) <= 2 and len({by_id[m]["seed"] for m in a}) == 1
        assert len(a) == 1 or "baseline" not in {by_id[m]["preset"] for m in a}
    assert sorted(m for a in doc["arrays"] for m in a) == sorted(by_id)
    assert make_doc("ablate", "x", pts, RunnerOptions(), metric="m", argv=[], mlflow_uri=None,
                    mlflow_experiment=None)["arrays"] == []


# ------------------------------------------------------------------------------ the driver lock
def test_a_live_driver_lock_refuses_a_second_driver_and_a_dead_one_is_taken_over(tmp_path):
    first = DriverLock(tmp_path, heartbeat=0.1).acquire()
    with pytest.raises(ConfigError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
        DriverLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / record.LOCK_FILE).exists()
    # a driver killed with SIGKILL leaves its lock: its pid is gone, the next driver takes it over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / record.LOCK_FILE).write_text(json.dumps({"token": "old", "pid": dead.pid,
                                                          "host": socket.gethostname()}))
    with DriverLock(tmp_path) as lock:
        assert json.loads((tmp_path / record.LOCK_FILE).read_text())["token"] == lock.token != "old"


def test_lucir_resume_on_a_folder_in_use_is_refused_at_once_naming_the_driver(tmp_path, capsys):
    import ray

    doc = make_doc("ablate", "x", [TINY], RunnerOptions(), metric="m", argv=[], mlflow_uri=None, mlflow_experiment=None)
    (tmp_path / record.EXPERIMENT_FILE).write_text(json.dumps(doc))
    with DriverLock(tmp_path):
        t0 = time.monotonic()
        rc, err = lucir_in_process(capsys, "resume", str(tmp_path))
    assert rc == 2 and f"pid {os.getpid()} on host {socket.gethostname()}" in err and "in use by another driver" in err
    assert time.monotonic() - t0 < 10 and not ray.is_initialized()


def test_a_lock_of_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path):
    other = {"token": "x", "pid": 1, "host": "another-host"}
    (tmp_path / record.LOCK_FILE).write_text(json.dumps(other))
    (tmp_path / (record.LOCK_FILE + ".beat")).write_text("7\n")  # a driver on another host, silent
    t0 = time.monotonic()
    with DriverLock(tmp_path, heartbeat=0.2, stale_after=1.0):
        pass
    assert time.monotonic() - t0 >= 1.0
    (tmp_path / record.LOCK_FILE).write_text(json.dumps(other))
    import threading

    stop = threading.Event()

    def beat():  # that driver is alive: its counter moves
        n = 0
        while not stop.wait(0.1):
            n += 1
            (tmp_path / (record.LOCK_FILE + ".beat")).write_text(f"{n}\n")

    t = threading.Thread(target=beat)
    t.start()
    try:
        with pytest.raises(ConfigError, match="another-host"):
            DriverLock(tmp_path, heartbeat=0.2, stale_after=2.0).acquire()
    finally:
        stop.set()
        t.join()


# ------------------------------------------------------------------------------ the study
def _search_doc(tmp_path, trials=4, prune=False) -> dict:
    base = lucir.Config.from_flat(TINY)
    fixed = {**TINY, "val_fraction": 0.2}
    doc = make_doc("search", "st", [fixed] * trials, RunnerOptions(), metric=record.VAL_OBJECTIVE, argv=[],
                   mlflow_uri=None, mlflow_experiment=None,
                   search={"study": "st", "sampler": "tpe", "seed": 0, "prune": prune, "fixed": fixed,
                           "searched": spaces.search_domains(base, fixed), "defaults": spaces.paper_defaults(base, fixed),
                           "confirm": {"top": 0, "seeds": 1}})
    (tmp_path / record.TRIALS_DIR).mkdir(exist_ok=True)
    (tmp_path / record.EXPERIMENT_FILE).write_text(json.dumps(doc))
    return doc


def test_each_slot_owns_one_study_trial_and_an_untagged_orphan_is_adopted_not_duplicated(tmp_path):
    from tune import study

    doc = _search_doc(tmp_path)
    s0 = study.trial_for_slot(tmp_path, doc, "s0000")
    assert s0.params == doc["search"]["defaults"]  # slot 0: the paper defaults
    again = study.trial_for_slot(tmp_path, doc, "s0000")
    assert again.number == s0.number and again.params == s0.params  # a resumed slot gets its own trial back
    # a worker killed between ask and tag leaves an untagged RUNNING trial: the next slot adopts it
    st, _ = study.load(tmp_path, doc, 1)
    orphan = st.ask(study.distributions(doc["search"]["searched"]))
    s1 = study.trial_for_slot(tmp_path, doc, "s0001")
    assert s1.number == orphan.number and set(s1.params) == set(doc["search"]["searched"])
    s2 = study.trial_for_slot(tmp_path, doc, "s0002")
    trials = st.get_trials(deepcopy=False)
    assert len(trials) == 3 and sorted(t.user_attrs[record.SLOT_ATTR] for t in trials) == ["s0000", "s0001", "s0002"]
    # a slot killed after its record said TERMINATED but before it told the study: reconcile tells it
    rec = record.TrialRecord(trial_id="s0002", config={"phases": 0},
                             phases=[{"phase": 0, record.VAL_OBJECTIVE: 71.5}], status="TERMINATED")
    (tmp_path / record.TRIALS_DIR / "s0002.json").write_text(json.dumps(rec.to_json()))
    assert study.reconcile(tmp_path, doc) == 1
    assert st.get_trials(deepcopy=False)[s2.number].value == 71.5 and study.reconcile(tmp_path, doc) == 0


def test_the_same_slot_draws_the_same_params_in_a_fresh_study(tmp_path):
    from tune import study

    a, b = tmp_path / "a", tmp_path / "b"
    draws = []
    for d in (a, b):
        d.mkdir()
        doc = _search_doc(d, trials=6)
        draws.append([study.trial_for_slot(d, doc, record.slot_id(i)).params for i in range(6)])
    assert draws[0] == draws[1] and len({json.dumps(p, sort_keys=True) for p in draws[0]}) == 6


# ------------------------------------------------------------------------------ the worker
def test_a_worker_that_cannot_see_the_folder_refuses_and_creates_nothing(tmp_path):
    exp = tmp_path / "not-mounted-here" / "exp"
    with pytest.raises(WorkerError, match=re.escape(str(exp / record.EXPERIMENT_FILE)) + ".*not visible"):
        lucir_trainable({"unit": {"slots": ["s0000"], "array": None}}, exp_dir=str(exp), token="t")
    assert not (tmp_path / "not-mounted-here").exists()


# ------------------------------------------------------------------------------ MLflow
def _record(tmp_path: Path, slot: str, phases: int, done: int, status: str) -> dict:
    rows = [{"phase": t, "acc_cnn": 50.0 + t, "acc_old_cnn": None if t == 0 else 40.0} for t in range(done)]
    rec = record.TrialRecord(trial_id=slot, config={"preset": "lucir", "phases": phases, "seed": 0}, phases=rows,
                             status=status, ended=[1_800_000_000.0 + t for t in range(done)],
                             acc_matrix_cnn=[[1.0] * (t + 1) for t in range(done)]).to_json()
    (tmp_path / record.TRIALS_DIR).mkdir(exist_ok=True)
    (tmp_path / record.TRIALS_DIR / f"{slot}.json").write_text(json.dumps(rec))
    return rec


def test_mlflow_sync_is_idempotent_catches_up_and_survives_a_store_that_is_down(tmp_path):
    from mlflow import MlflowClient

    from tune.mlflow_sync import sync

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = {"name": "sw", "kind": "ablate", "mlflow_uri": uri, "mlflow_experiment": "sw",
           "slots": [{"id": "s0000"}, {"id": "s0001"}]}
    (tmp_path / record.EXPERIMENT_FILE).write_text(json.dumps(doc))
    _record(tmp_path, "s0000", 2, 2, "RUNNING")
    _record(tmp_path, "s0001", 2, 3, "PRUNED")
    assert not sync(tmp_path, "http://127.0.0.1:9")  # down: a warning, no exception, nothing lost
    assert sync(tmp_path) and sync(tmp_path)
    _record(tmp_path, "s0000", 2, 3, "TERMINATED")  # the slot goes on and finishes
    (tmp_path / record.MLFLOW_RUNS_FILE).unlink()  # as if the driver died before writing the run ids
    assert sync(tmp_path)
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name("sw").experiment_id])
    children = {r.data.tags["lucir.trial_id"]: r for r in runs if "lucir.trial_id" in r.data.tags}
    assert len(runs) == 3 and sorted(children) == ["s0000", "s0001"]  # found again by tag, not duplicated
    for slot, status in (("s0000", "FINISHED"), ("s0001", "KILLED")):
        r = children[slot]
        hist = c.get_metric_history(r.info.run_id, "acc_cnn")
        assert sorted(m.step for m in hist) == [0, 1, 2]  # every phase once
        assert [m.timestamp for m in sorted(hist, key=lambda m: m.step)] == [1_800_000_000_000 + 1000 * t for t in range(3)]
        assert r.info.status == status and r.data.tags["lucir.status"] in ("TERMINATED", "PRUNED")
    parent = next(r for r in runs if r.data.tags.get("lucir.role") == "sweep")
    assert parent.info.status == "FINISHED"


# ------------------------------------------------------------------------------ fail fast, never hang
@pytest.mark.parametrize("args, message", [
    (["--grid-set", "phases=3,4"], r"grid point \{.*phases=4.*\}: phases=4 is invalid: allowed a divisor"),
    (["--presets", "lucir,nosuch"], "allowed a comma-separated list of"),
    (["--set", "nosuch=1"], "unknown config field"),
    (["--grid-set", "K=1,5"], "K=5 is invalid: allowed 1..2"),
    (["--seeds", "0"], "--seeds 0 is invalid"),
    (["--dataset", "cifar100", "--data-root", "nowhere", "--set", "download=false"], "(?i)cifar"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "--mlflow-uri http://127.0.0.1:9"),
    (["--set", "device=cuda"], "device='cuda' needs --gpus-per-trial"),
    (["--fuse", "0"], "--fuse=0 is invalid"),
])
def test_bad_input_fails_before_ray_with_one_line_and_no_folder(tmp_path, monkeypatch, capsys, args, message):
    import ray

    monkeypatch.chdir(tmp_path)
    rc, err = lucir_in_process(capsys, "ablate", "--epochs", "2", "--out", "exp", *args)
    assert rc == 2 and re.search(message, err), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "exp").exists() and not (tmp_path / "nowhere").exists()


def test_an_unusable_out_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        for out in ["/proc/lucir-x"] + ([] if os.access(ro, os.W_OK) else [str(ro / "exp")]):  # root writes anyway
            rc, err = lucir_in_process(capsys, "ablate", "--epochs", "2", "--out", out, "--no-mlflow")
            assert rc == 2 and f"--out {out} is not usable" in err and len(err.strip().splitlines()) == 1, err
    finally:
        ro.chmod(0o700)


@pytest.mark.timeout(60)
def test_a_dead_ray_address_and_missing_gpus_fail_within_seconds_leaving_no_folder(tmp_path, capsys):
    t0 = time.monotonic()
    closed = f"127.0.0.1:{free_port()}"
    rc, err = lucir_in_process(capsys, "ablate", "--address", closed, "--out", str(tmp_path / "a"), "--no-mlflow")
    assert rc == 2 and f"--address {closed}: no Ray cluster answers there" in err
    rc, err = lucir_in_process(capsys, "ablate", "--gpus-per-trial", "0.5", "--num-cpus", "1", "--out", str(tmp_path / "b"),
                     "--no-mlflow", "--epochs", "1")
    assert rc == 2 and "--gpus-per-trial 0.5: the Ray cluster has 0 GPU(s)" in err, err
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # the same command works later


def test_a_folder_holding_another_sweep_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / record.EXPERIMENT_FILE).write_text("{}")
    rc, err = lucir_in_process(capsys, "ablate", "--epochs", "2", "--out", "exp")
    assert rc == 2 and "already holds another sweep" in err and "lucir resume" in err
    rc, err = lucir_in_process(capsys, "resume", str(tmp_path / "nothing"))
    assert rc == 2 and "is not a lucir experiment folder" in err
