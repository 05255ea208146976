"""Runner v3 end to end, on real components: the `lucir` driver as a subprocess with its own local Ray,
the real trainer on digits, the Optuna journal study, a real MLflow sqlite store and a real
`mlflow server` on 127.0.0.1.  The chaos tests SIGKILL the driver (and, separately, a worker) at seeded
random moments, resume until done and compare with an uninterrupted run of the same command: every slot
has one final record, the study holds exactly the budget with the records' values, the pruned set and every
value are the uninterrupted run's (CPU runs are bit-identical, epoch checkpoints included), every MLflow
run has every phase once, and no finished phase was trained again (the records' ``starts``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest

from lucir import record
from tune_fixtures import (MlflowServer, check_mlflow, check_no_phase_trained_twice, end_group, kill_driver,
                           popen_lucir, progress_pids, records, rows_done, run_lucir, wait_for)

TINY = ["--set", "epochs=2", "--set", "checkpoint_every=1", "--num-cpus", "2"]


def _chaos(cmd: list[str], exp: Path, tmp: Path, rng: random.Random, kills: int, worker_kill_at: int,
           extra=None) -> dict:
    """Run ``cmd`` on ``exp``; SIGKILL its driver ``kills`` times (once the folder holds a seeded random
    number of new phase rows, plus a random 0-1.5 s) and a worker once (cycle ``worker_kill_at``), with
    ``lucir resume`` after each driver kill, until it ends by itself; returns what happened."""
    log = tmp / f"{exp.name}.log"
    seen = {"driver_kills": 0, "worker_kills": 0, "resumes": 0}
    proc = popen_lucir(cmd, tmp, log)
    try:
        for cycle in range(kills):
            target = rows_done(exp) + rng.randint(1, 3)
            if cycle == worker_kill_at:  # a worker dies; Tune's FailureConfig retry goes on from its state
                time.sleep(rng.uniform(0.2, 1.0))
                deadline = time.monotonic() + 240
                while not seen["worker_kills"] and proc.poll() is None and time.monotonic() < deadline:
                    for pid in progress_pids(exp)[:1]:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            seen["worker_kills"] += 1
                        except ProcessLookupError:
                            pass
                    time.sleep(0.1)
                target = rows_done(exp) + rng.randint(1, 2)
            if not wait_for(lambda: rows_done(exp) >= target, 240, f"{target} phase rows", proc):
                break  # the sweep ended before this kill
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is not None:
                break
            kill_driver(proc)
            seen["driver_kills"] += 1
            if extra is not None:
                extra(cycle)
            proc = popen_lucir(["resume", str(exp)], tmp, log)
            seen["resumes"] += 1
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        end_group(proc)
    seen["log"] = log.read_text()
    return seen


def _study_trials(exp: Path, name: str):
    import optuna

    from tune.study import storage

    return optuna.load_study(study_name=name, storage=storage(exp)).get_trials(deepcopy=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_search_with_pruning_survives_kills_of_its_driver_and_a_worker(tmp_path):
    search = ["search", "--trials", "6", "--asha", "--concurrency", "1", "--confirm-top", "1", "--confirm-seeds",
              "1", *TINY]
    base = tmp_path / "uninterrupted"
    r = run_lucir([*search, "--out", str(base)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = records(base)

    exp = tmp_path / "chaos"
    seen = _chaos([*search, "--out", str(exp)], exp, tmp_path, random.Random(1993), kills=3, worker_kill_at=1)
    assert seen["driver_kills"] == 3 and seen["worker_kills"] == 1, seen
    got = records(exp)
    assert sorted(got) == sorted(want) == [record.slot_id(i) for i in range(6)]
    metric = record.VAL_OBJECTIVE
    for sid, rec in got.items():
        assert record.is_final(rec), (sid, rec["status"])
        check_no_phase_trained_twice(rec)
        w = want[sid]
        assert rec["status"] == w["status"], sid  # the pruned set is the uninterrupted run's
        assert {k: rec["config"][k] for k in ("eta_init", "margin", "K", "lambda_base")} == \
            {k: w["config"][k] for k in ("eta_init", "margin", "K", "lambda_base")}
        assert rec["acc_matrix_cnn"] == w["acc_matrix_cnn"], sid  # bit-identical, kills and all
    assert {s for s, r in got.items() if r["status"] == "PRUNED"}, "the test must exercise pruning"
    trials = _study_trials(exp, exp.name)
    assert len(trials) == 6  # exactly the budget, whatever was killed when
    for t in trials:
        rec = got[t.user_attrs[record.SLOT_ATTR]]
        assert rec["optuna_trial"] == t.number
        if rec["status"] == "TERMINATED":
            assert t.state.name == "COMPLETE" and t.value == rec["phases"][-1][metric]
        else:
            assert t.state.name == "PRUNED"
    assert records(exp / record.CONFIRM_DIR).keys() == records(base / record.CONFIRM_DIR).keys()
    check_mlflow(f"sqlite:///{exp / 'mlflow.db'}", exp.name, exp)
    check_mlflow(f"sqlite:///{exp / 'mlflow.db'}", exp.name, exp / record.CONFIRM_DIR)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fused_ablation_survives_kills_of_its_driver_and_a_worker_and_a_deleted_ray_folder(tmp_path):
    ablate = ["ablate", "--presets", "cn,cn_lf,lucir", "--fuse", "2", *TINY]
    base = tmp_path / "uninterrupted"
    r = run_lucir([*ablate, "--out", str(base)], tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    want = records(base)
    assert [(w.get("fused") or {}).get("size") for w in want.values()].count(2) == 2  # cn + cn_lf fused, lucir alone
    from tune.base_cache import BaseCache

    counts = BaseCache(base / record.BASE_CACHE_DIR).counts()
    assert counts["publish"] == 1 and counts["miss"] == 1  # one shared base phase, trained once
    assert all(w["base_cache"] == "hit" for w in want.values())
    import lucir

    alone = next(w for w in want.values() if not w.get("fused"))  # a hit is the run from scratch, exactly
    direct = [r for r, _ in lucir.run(lucir.Config.from_flat(alone["config"]))]
    assert direct[-1].acc_matrix_cnn == alone["acc_matrix_cnn"]

    exp = tmp_path / "chaos"

    def extra(cycle: int) -> None:
        if cycle == 0:  # Tune's own files are disposable: the sweep finishes without them
            shutil.rmtree(exp / record.RAY_DIR, ignore_errors=True)

    seen = _chaos([*ablate, "--out", str(exp)], exp, tmp_path, random.Random(7), kills=3, worker_kill_at=0,
                  extra=extra)
    assert seen["driver_kills"] >= 2 and seen["worker_kills"] == 1, seen
    got = records(exp)
    assert sorted(got) == sorted(want)
    for sid, rec in got.items():
        assert rec["status"] == "TERMINATED" and rec.get("fused") == want[sid].get("fused")
        check_no_phase_trained_twice(rec)
        assert rec["acc_matrix_cnn"] == want[sid]["acc_matrix_cnn"], sid
    check_mlflow(f"sqlite:///{exp / 'mlflow.db'}", exp.name, exp)



@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_tracking_server_down_during_the_sweep_and_at_resume_blocks_nothing_and_loses_nothing(tmp_path):
    server = MlflowServer(tmp_path / "server")
    url = server.start()
    exp = tmp_path / "exp"
    try:
        proc = popen_lucir(["ablate", "--presets", "cn,lucir", "--mlflow-uri", url, "--out", str(exp), *TINY],
                           tmp_path, tmp_path / "a.log")
        try:
            wait_for(lambda: rows_done(exp) >= 1, 300, "the first phase", proc)
            server.stop()  # down for the rest of the sweep
            assert proc.wait(timeout=600) == 0, (tmp_path / "a.log").read_text()[-3000:]
        finally:
            end_group(proc)
        assert "MLflow" in (tmp_path / "a.log").read_text() and all(
            r["status"] == "TERMINATED" for r in records(exp).values())
        t0 = time.monotonic()
        r = run_lucir(["resume", str(exp)], tmp_path, timeout=300)  # still down: nothing to run, a warning
        assert r.returncode == 0 and "was not reachable" in r.stderr and time.monotonic() - t0 < 120
        server.start()
        r = run_lucir(["resume", str(exp)], tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        check_mlflow(url, exp.name, exp)
        check_report_reads(url, exp)
        # the store can change at resume: the new one is filled from the records
        other = f"sqlite:///{tmp_path / 'other.db'}"
        assert run_lucir(["resume", str(exp), "--mlflow-uri", other], tmp_path, timeout=300).returncode == 0
        check_mlflow(other, exp.name, exp)
    finally:
        server.stop()


def check_report_reads(url: str, exp) -> None:
    """The reports read what the runner wrote to the live server: ``analysis.results.load_mlflow`` gives the
    folder's long frame, and the MLflow links (``analysis.html.mlflow_runs``) open there: the UI answers, and
    each link's run exists in the link's experiment, tagged with its slot."""
    import re
    import urllib.request

    import pandas as pd

    from analysis.html import mlflow_runs
    from analysis.results import load_experiment, load_mlflow, read_experiment

    key = ["trial_id", "phase"]
    folder = load_experiment(exp).drop(columns=["updated"]).sort_values(key).reset_index(drop=True)
    store = load_mlflow(url, exp.name).drop(columns=["updated"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(store[folder.columns], folder, check_dtype=False)

    links = mlflow_runs(read_experiment(exp))
    assert set(links) == set(records(exp)), links
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        assert r.status == 200 and b"<html" in r.read().lower()
    for slot, link in links.items():
        m = re.fullmatch(re.escape(url) + r"/#/experiments/(\d+)/runs/(\w+)\)", link.split("(", 1)[1])
        assert m, link
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/runs/get?run_id={m.group(2)}", timeout=30) as r:
            run = json.loads(r.read())["run"]
        assert run["info"]["experiment_id"] == m.group(1)
        assert any(t["key"] == "lucir.trial_id" and t["value"] == slot for t in run["data"]["tags"]), slot


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_python_api_runs_a_sweep_and_returns_its_long_frame(tmp_path):
    import tune

    df = tune.ablate(out=str(tmp_path / "api"), presets=["cn", "lucir"], seeds=1, set={"epochs": 1},
                     no_mlflow=True, num_cpus=2)
    assert set(df["preset"]) == {"cn", "lucir"} and len(df) == 2 * 4  # 2 slots x (base + 3 phases)
    last = df[df.phase == df.phases]  # the README's example
    assert len(last) == 2 and last.groupby("preset").avg_inc_acc_cnn.agg(["mean", "std"]).shape == (2, 2)
    again = tune.resume(str(tmp_path / "api"))  # nothing left to run: the same frame
    assert again[["trial_id", "phase", "acc_cnn"]].equals(df[["trial_id", "phase", "acc_cnn"]])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_during_base_phase_pre_training_leaves_a_folder_the_same_command_finishes(tmp_path):
    cmd = ["ablate", "--presets", "cn,lucir", "--out", str(tmp_path / "exp"), "--no-mlflow", "--set", "epochs=1",
           "--num-cpus", "2"]
    log = tmp_path / "a.log"
    proc = popen_lucir(cmd, tmp_path, log)
    try:
        wait_for(lambda: "pre-training 1 shared base phase" in log.read_text(), 120, "pre-training", proc, poll=0.05)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
    finally:
        end_group(proc)
    exp = tmp_path / "exp"
    assert (exp / record.EXPERIMENT_FILE).exists() and not (exp / record.LOCK_FILE).exists()
    assert not any(record.is_final(r) for r in records(exp).values())
    r = run_lucir(cmd, tmp_path, timeout=300)  # the original command again: it continues the sweep
    assert r.returncode == 0 and "holds this sweep already: continuing it" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(records(exp)) == ["s0000", "s0001"] and all(x["status"] == "TERMINATED" for x in records(exp).values())
