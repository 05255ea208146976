"""``lucir search``: Optuna TPE with journal storage in the experiment folder, paper defaults first,
early-stopped trials told to Optuna as PRUNED, the best config only among finished trials."""

from __future__ import annotations

import json

import pytest

from tune_fixtures import run_lucir, trial_docs
from tune.experiment import PrunedAwareOptunaSearch, best_trial, make_searcher


def _searcher(tmp_path):
    from ray import tune

    s = make_searcher(tmp_path, "study", 0, [{"margin": 0.5, "K": 2}])
    assert s.set_search_properties("avg_inc_acc_cnn", "max",
                                   {"margin": tune.uniform(0.0, 1.0), "K": tune.randint(1, 3)})
    return s


def test_unfinished_trials_are_pruned_not_complete(tmp_path):
    from optuna.trial import TrialState

    s = _searcher(tmp_path)
    assert s.suggest("a") == {"margin": 0.5, "K": 2}  # paper defaults first
    s.suggest("b")
    s.suggest("c")
    for tid in "abc":
        s.on_trial_result(tid, {"avg_inc_acc_cnn": 99.0, "training_iteration": 1, "phase": 0, "num_phases": 3})
    # a: finished every phase; b: stopped early by ASHA with a *better-looking* partial metric; c: crashed
    s.on_trial_complete("a", {"avg_inc_acc_cnn": 80.0, "phase": 3, "num_phases": 3})
    s.on_trial_complete("b", {"avg_inc_acc_cnn": 95.0, "phase": 1, "num_phases": 3})
    s.on_trial_complete("c", {"avg_inc_acc_cnn": 97.0, "phase": 2, "num_phases": 3}, error=True)
    states = {t.number: t.state for t in s._ot_study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.FAIL}
    assert s._ot_study.best_value == 80.0  # the early-stopped 95 never becomes the best


def test_restore_hands_out_orphaned_optuna_trials_again(tmp_path):
    from optuna.trial import TrialState

    s = _searcher(tmp_path)
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    lost = s.suggest("b")  # asked after the last save: the driver died before Tune recorded it
    s2 = PrunedAwareOptunaSearch(metric="avg_inc_acc_cnn", mode="max")
    s2.restore(str(tmp_path / "searcher.pkl"))
    assert s2.suggest("b2") == lost  # the orphan is the next trial, not a new ask
    s2.on_trial_complete("a", {"avg_inc_acc_cnn": 80.0, "phase": 3, "num_phases": 3})
    s2.on_trial_complete("b2", {"avg_inc_acc_cnn": 81.0, "phase": 3, "num_phases": 3})
    assert [t.state for t in s2._ot_study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    s2.suggest("c")
    assert len(s2._ot_study.trials) == 3  # new asks resume after the orphans are used


def test_best_trial_only_among_finished(tmp_path):
    (tmp_path / "trials").mkdir()

    def doc(tid, values, n=3, status="TERMINATED"):
        return {"trial_id": tid, "config": {"dataset": "digits", "preset": "lucir"}, "num_phases": n,
                "status": status, "phases": [{"phase": i, "avg_inc_acc_cnn": v} for i, v in enumerate(values)]}

    for d in (doc("full", [99, 90, 85, 80]), doc("pruned", [99, 97], status="PRUNED"),
              doc("nan", [99, 90, 85, None])):
        (tmp_path / "trials" / f"{d['trial_id']}.json").write_text(json.dumps(d))
    assert best_trial(tmp_path)["trial_id"] == "full"


@pytest.mark.slow
def test_search_digits_end_to_end_with_asha(tmp_path):
    exp = tmp_path / "exp"
    r = run_lucir(["search", "--trials", "3", "--epochs", "2", "--asha", "--out", "exp", "--num-cpus", "2",
                   "--no-mlflow"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    journal = exp / "optuna_journal.log"
    assert journal.exists()
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 3
    assert study.trials[0].params == {"eta_init": 1.0, "margin": 0.5, "K": 2, "lambda_base": 5.0}
    docs = trial_docs(exp)
    assert len(docs) == 3
    keys = ("eta_init", "margin", "K", "lambda_base")
    for t in study.trials:  # Optuna's view agrees with the trial files: stopped early <=> PRUNED
        (d,) = [d for d in docs if all(d["config"][k] == pytest.approx(t.params[k]) for k in keys)]
        finished = len(d["phases"]) == d["num_phases"] + 1
        assert d["status"] == ("TERMINATED" if finished else "PRUNED")
        assert t.state.name == ("COMPLETE" if finished else "PRUNED")
        if finished:
            assert t.value == pytest.approx(d["phases"][-1]["avg_inc_acc_cnn"])
    done = [d for d in docs if d["status"] == "TERMINATED"]
    best = max(done, key=lambda d: d["phases"][-1]["avg_inc_acc_cnn"])
    assert study.best_value == pytest.approx(best["phases"][-1]["avg_inc_acc_cnn"])
    assert f"trial {best['trial_id']}" in r.stdout and "lucir train --dataset digits --preset lucir" in r.stdout
    doc = json.loads((exp / "lucir_experiment.json").read_text())
    assert doc["kind"] == "search" and doc["asha"] and doc["points_to_evaluate"][0]["margin"] == 0.5
