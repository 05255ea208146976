"""Fused arrays in the runner (issue 11, item 5): ``lucir ablate --fuse N`` runs compatible trials as one
Ray trial per array, and every member is a trial of its own (record, status, state, MLflow run)."""

from __future__ import annotations

import json

import pytest

import lucir
from lucir.fused import run_fused
from test_tune_faults import fit_killed
from tune_fixtures import mlflow_child_runs, ray_local, run_lucir, trial_docs  # noqa: F401
from tune.trainable import runtime_overrides


def _direct(flats: list[dict]):
    """The members' undisturbed fused run, with the runtime a 1-CPU trial gets."""
    cfgs = [lucir.Config.from_flat(runtime_overrides(f, 1, 0)) for f in flats]
    return list(run_fused(cfgs))[-1]


@pytest.mark.slow
def test_fused_ablate_gives_every_member_its_own_trial_record_status_and_mlflow_run(tmp_path):
    exp = tmp_path / "exp"
    r = run_lucir(["ablate", "--presets", "finetune,cn_lf,lucir", "--epochs", "2", "--fuse", "4", "--out", "exp",
                   "--num-cpus", "2"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "3 trials, fused into 2 arrays of up to 4" in r.stdout
    doc = json.loads((exp / "lucir_experiment.json").read_text())
    assert doc["fuse"] == 4 and sorted(doc["arrays"]) == [1, 2] and doc["num_trials"] == 3
    docs = trial_docs(exp)
    assert sorted(d["config"]["preset"] for d in docs) == ["cn_lf", "finetune", "lucir"]
    assert all(d["status"] == "TERMINATED" and len(d["phases"]) == d["num_phases"] + 1 for d in docs)
    by = {d["config"]["preset"]: d for d in docs}
    assert "fused" not in by["finetune"]  # the linear head is not fused: an array of one, an ordinary trial
    arr = by["lucir"]["fused"]["array"]
    assert {p: by[p]["fused"] for p in ("cn_lf", "lucir")} == {"cn_lf": {"array": arr, "index": 0, "size": 2},
                                                                "lucir": {"array": arr, "index": 1, "size": 2}}
    assert by["lucir"]["trial_id"] == f"{arr}_m1" and by["lucir"]["base_cache"] == "hit"  # pre-trained base
    # each member's record holds its own run: the members' undisturbed fused run, exactly
    direct = _direct([by["cn_lf"]["config"], by["lucir"]["config"]])
    for i, p in enumerate(("cn_lf", "lucir")):
        assert by[p]["acc_matrix_cnn"] == direct[i][0].acc_matrix_cnn
        assert by[p]["acc_matrix_nme"] == direct[i][0].acc_matrix_nme
    assert by["cn_lf"]["acc_matrix_cnn"] != by["lucir"]["acc_matrix_cnn"]
    assert "| cn_lf" in r.stdout and "| lucir" in r.stdout  # the summary reads the members as trials
    from analysis.report import build_report

    build_report(exp, tmp_path / "report", formats=("csv",), mlflow=False, echo=lambda *a: None)
    index = (tmp_path / "report" / "index.md").read_text()
    assert "fused arrays: 2 of 3 trials trained in 1 fused array of up to 2" in index
    runs = mlflow_child_runs(exp)
    if runs is not None:  # one MLflow run per member, every phase logged at its step
        import mlflow

        assert len(runs) == 3 and all(run.info.status == "FINISHED" for run in runs)
        assert sorted(run.data.params["preset"] for run in runs) == ["cn_lf", "finetune", "lucir"]
        client = mlflow.MlflowClient(doc["mlflow_uri"])
        for run in runs:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "avg_inc_acc_cnn"))
            assert steps == [0, 1, 2, 3], (run.info.run_name, steps)


@pytest.mark.slow
def test_sigkill_of_an_array_worker_resumes_every_member_from_its_last_epoch_checkpoint(ray_local, tmp_path):  # noqa: F811
    exp = tmp_path / "exp"
    flats = [{"preset": "lucir", "epochs": 8, "checkpoint_every": 1},
             {"preset": "cn_lf", "epochs": 8, "lambda_base": 2.0, "checkpoint_every": 1}]
    killer, grid = fit_killed(exp, {"members": flats})
    assert not grid.errors
    docs = sorted(trial_docs(exp), key=lambda d: d["trial_id"])
    assert [d["fused"]["index"] for d in docs] == [0, 1]
    assert all(d["status"] == "TERMINATED" and [p["phase"] for p in d["phases"]] == [0, 1, 2, 3] for d in docs)
    # the retried worker started at phase 2: the completed phases were not trained again
    after = [ph for pid, ph in killer.seen if pid != killer.killed["pid"]]
    assert after and min(after) == 2, killer.seen
    # ... and inside phase 2 from the array's epoch checkpoint before the kill, not from the phase start
    (new_pid,) = {pid for pid, _ in killer.seen if pid != killer.killed["pid"]}
    assert killer.first_epoch[(new_pid, 2)] >= killer.killed["epoch"] >= 2, (killer.killed, killer.first_epoch)
    direct = _direct(flats)
    for i, d in enumerate(docs):
        assert d["acc_matrix_cnn"] == direct[i][0].acc_matrix_cnn
        assert d["acc_matrix_nme"] == direct[i][0].acc_matrix_nme


@pytest.mark.slow
def test_fused_search_tells_optuna_each_member_s_own_value_and_confirms_in_arrays(tmp_path):
    """``lucir search --fuse 3``: 5 Optuna trials in arrays of 3 and 2; each member is its own Optuna trial
    (value = its own validation objective at the last phase, one intermediate value per phase), record and
    MLflow run; the confirm stage fuses the candidates of each seed."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    exp = tmp_path / "exp"
    r = run_lucir(["search", "--trials", "5", "--fuse", "3", "--epochs", "2", "--confirm-top", "1",
                   "--confirm-seeds", "2", "--out", "exp", "--num-cpus", "2"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    docs = trial_docs(exp)
    assert sorted(d["fused"]["size"] for d in docs) == [2, 2, 3, 3, 3]
    assert all(d["status"] == "TERMINATED" for d in docs)
    study = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(
        str(exp / "optuna_journal.log"))))
    trials = study.get_trials()
    assert len(trials) == 5 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(len(t.intermediate_values) == 4 for t in trials)
    mine = sorted(d["phases"][-1]["val_avg_inc_acc_cnn"] for d in docs)
    assert sorted(t.value for t in trials) == pytest.approx(mine)
    assert len(set(mine)) == 5  # every member told its own value, not the array's best
    params = sorted((t.params["margin"], t.params["lambda_base"]) for t in trials)
    assert params == sorted((d["config"]["margin"], d["config"]["lambda_base"]) for d in docs)
    confirm = trial_docs(exp / "confirm")
    assert len(confirm) == 4 and sorted(d["fused"]["size"] for d in confirm) == [2, 2, 2, 2]
    assert "winner (best confirmed mean)" in r.stdout
    runs = mlflow_child_runs(exp)
    if runs is not None:
        assert len(runs) == 5 + 4 and all(run.info.status == "FINISHED" for run in runs)  # search + confirm


def test_fuse_with_an_unfusable_preset_or_a_bad_size_fails_before_ray(tmp_path, monkeypatch, capsys):
    from lucir.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["search", "--trials", "4", "--fuse", "2", "--preset", "finetune", "--epochs", "2",
                 "--out", "exp"]) == 2
    assert "linear head" in capsys.readouterr().err
    assert main(["ablate", "--fuse", "0", "--epochs", "2", "--out", "exp"]) == 2
    assert "--fuse=0 is invalid" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()  # refused before the folder (and Ray) was started


@pytest.mark.slow
def test_fused_asha_search_stops_a_member_s_slice_and_the_array_goes_on(tmp_path):
    """``lucir search --fuse 3 --asha --concurrency 1``: ASHA judges each member on its own metric; a stopped
    member's record ends at the rung it was stopped at (PRUNED, and PRUNED in Optuna), while the other
    members of its array train every phase; Ray's ConcurrencyLimiter counts arrays (one at a time here)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from lucir import record

    exp = tmp_path / "exp"
    r = run_lucir(["search", "--trials", "6", "--fuse", "3", "--asha", "--epochs", "2", "--confirm-top", "0",
                   "--concurrency", "1", "--out", "exp", "--num-cpus", "2"], tmp_path)  # ConcurrencyLimiter: arrays
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    docs = {d["trial_id"]: d for d in trial_docs(exp)}
    assert len(docs) == 6
    pruned = {mid for d in docs.values() for mid in record.read_pruned(exp, d["fused"]["array"])}
    assert pruned, "ASHA stopped no member"
    assert {t for t, d in docs.items() if d["status"] == "PRUNED"} == pruned
    for mid in pruned:
        d = docs[mid]
        assert len(d["phases"]) < d["num_phases"] + 1
        mates = [o for o in docs.values() if o["fused"]["array"] == d["fused"]["array"] and o["trial_id"] != mid]
        # the array went on without it: some member of the same array trained further
        assert max(len(o["phases"]) for o in mates) > len(d["phases"]), (mid, [len(o["phases"]) for o in mates])
    assert any(d["status"] == "TERMINATED" and len(d["phases"]) == 4 for d in docs.values())
    assert len({d["fused"]["array"] for d in docs.values()}) == 2  # 6 trials in 2 arrays of 3
    study = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(
        str(exp / "optuna_journal.log"))))
    states = sorted(t.state.name for t in study.get_trials())
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 6 - len(pruned)


@pytest.mark.slow
def test_a_killed_fused_search_resumes_without_losing_or_repeating_an_optuna_trial(tmp_path):
    """``lucir search --fuse 2`` with its driver SIGKILLed after the first array ended: ``lucir resume``
    restores ``ArraySearch`` (budget, members, the Optuna searcher) and finishes; every member record has
    exactly one Optuna trial with its own value, and none is left RUNNING."""
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from test_tune_faults import _kill_session
    from tune_fixtures import popen_lucir

    exp = tmp_path / "exp"
    proc = popen_lucir(["search", "--trials", "4", "--fuse", "2", "--epochs", "1", "--concurrency", "1",
                        "--confirm-top", "0", "--no-mlflow", "--num-cpus", "2", "--no-base-cache", "--out", str(exp)],
                       tmp_path, tmp_path / "driver.log")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if len(list((exp / "trials").glob("*.status.json")) if exp.exists() else []) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)
        proc.wait(30)
    r = run_lucir(["resume", str(exp), "--num-cpus", "2"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    docs = [d for d in trial_docs(exp) if d["status"] != "ABANDONED"]  # cut members whose trial ran again
    assert all(d["status"] == "TERMINATED" for d in docs)
    study = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(
        str(exp / "optuna_journal.log"))))
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    # the budget of 4 members, each once: a member asked after Tune's last snapshot is kept or run again
    assert len(docs) == 4 and len(trials) == 4, (len(docs), len(trials))
    assert sorted(t.value for t in trials) == pytest.approx(sorted(d["phases"][-1]["val_avg_inc_acc_cnn"]
                                                                   for d in docs))
