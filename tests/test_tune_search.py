"""``lucir search``: Optuna TPE with journal storage in the experiment folder, paper defaults first,
early-stopped trials told to Optuna as PRUNED, the objective on a held-out validation split, the best
configs confirmed on seeds on the full training set (the winner is the best confirmed mean)."""

from __future__ import annotations

import json

import pytest

from tune_fixtures import run_lucir, trial_docs
from tune.experiment import (PrunedAwareOptunaSearch, best_trial, confirm_candidates, confirm_points, make_sampler,
                             make_searcher, n_startup_trials)


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


def test_a_resumed_search_keeps_trials_finished_after_the_snapshot_and_runs_exactly_its_budget(tmp_path):
    """The driver dies after Tune's snapshot saw trial a: b then finished every phase (its record says so, Optuna
    was never told), c was cut mid-run.  The restored searcher tells Optuna b's value from its record, hands c's
    parameters to the next new trial, and says FINISHED at the budget of 3; the driver's status callback ends b
    TERMINATED and c (run again as d) ABANDONED, so reports count each Optuna trial once."""
    from optuna.trial import TrialState
    from ray import tune

    from lucir.record import is_finished, read_trials
    from tune.experiment import TrialStatusCallback

    s = make_searcher(tmp_path, "study", 0, [], metric="val_avg_inc_acc_cnn", trials=3)
    s.set_search_properties("val_avg_inc_acc_cnn", "max", {"margin": tune.uniform(0.0, 1.0)})
    fixed = {"dataset": "digits", "preset": "lucir", "phases": 1}
    ask = {tid: {**fixed, **s.suggest(tid)} for tid in "a"}
    s.on_trial_complete("a", {"val_avg_inc_acc_cnn": 70.0, "phase": 1, "num_phases": 1})
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    ask.update({tid: {**fixed, **s.suggest(tid)} for tid in "bc"})
    _write(tmp_path, [_doc("a", ask["a"], {"val_avg_inc_acc_cnn": 70.0}, n=1, status="RUNNING"),
                      _doc("b", ask["b"], {"val_avg_inc_acc_cnn": 75.0}, n=1, status="RUNNING"),
                      {**_doc("c", ask["c"], {"val_avg_inc_acc_cnn": 60.0}, n=1, status="RUNNING"),
                       "phases": [{"phase": 0, "val_avg_inc_acc_cnn": 60.0}]}])

    s2 = make_searcher(tmp_path, "study", 0, [], metric="val_avg_inc_acc_cnn", trials=3)
    s2.restore(str(tmp_path / "searcher.pkl"))
    study = s2._ot_study
    assert [(t.state, t.value) for t in study.trials[:2]] == [(TrialState.COMPLETE, 70.0), (TrialState.COMPLETE, 75.0)]
    d = s2.suggest("d")
    assert {**fixed, **d} == ask["c"]  # c's parameters, not a new ask
    assert study.trials[2].user_attrs[PrunedAwareOptunaSearch.TRIAL_ATTR] == "d"
    assert s2.suggest("e") == "FINISHED"  # a, b and c/d: the budget of 3 is spent
    assert len(study.trials) == 3

    class T:
        def __init__(self, tid):
            self.trial_id, self.config = tid, ask["a" if tid == "a" else "c"]

    TrialStatusCallback(str(tmp_path)).on_experiment_end([T("a"), T("d")])
    docs = {doc["trial_id"]: doc for doc in read_trials(tmp_path)}
    assert docs["b"]["status"] == "TERMINATED" and is_finished(docs["b"])
    assert docs["c"]["status"] == "ABANDONED" and "run again" in docs["c"]["error"] and not is_finished(docs["c"])
    assert docs["a"]["status"] == "RUNNING"  # a trial of this sweep: its status is the live callbacks' to write


def test_best_trial_only_among_finished(tmp_path):
    (tmp_path / "trials").mkdir()

    def doc(tid, values, n=3, status="TERMINATED"):
        return {"trial_id": tid, "config": {"dataset": "digits", "preset": "lucir"}, "num_phases": n,
                "status": status, "phases": [{"phase": i, "avg_inc_acc_cnn": v} for i, v in enumerate(values)]}

    for d in (doc("full", [99, 90, 85, 80]), doc("pruned", [99, 97], status="PRUNED"),
              doc("nan", [99, 90, 85, None])):
        (tmp_path / "trials" / f"{d['trial_id']}.json").write_text(json.dumps(d))
    assert best_trial(tmp_path)["trial_id"] == "full"


def _write(folder, docs, meta=None):
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    for d in docs:
        (folder / "trials" / f"{d['trial_id']}.json").write_text(json.dumps(d))
    if meta is not None:
        (folder / "lucir_experiment.json").write_text(json.dumps(meta))


def _doc(tid, params, last, n=3, status="TERMINATED", seed=0):
    return {"trial_id": tid, "status": status, "num_phases": n,
            "config": {"dataset": "digits", "preset": "lucir", "seed": seed, **params},
            "phases": [dict(last, phase=i) for i in range(n + 1)]}


DEFAULTS = {"eta_init": 1.0, "margin": 0.5, "K": 2, "lambda_base": 5.0}


def test_confirm_candidates_are_ranked_on_validation_never_on_test(tmp_path):
    """Trial b has the best *test* average but the worst validation one; a is the best on validation.
    The candidates are the defaults, then the top configs on the search objective (val)."""
    a = _doc("a", {**DEFAULTS, "margin": 0.1}, {"val_avg_inc_acc_cnn": 70.0, "avg_inc_acc_cnn": 60.0})
    b = _doc("b", {**DEFAULTS, "margin": 0.9}, {"val_avg_inc_acc_cnn": 50.0, "avg_inc_acc_cnn": 90.0})
    c = _doc("c", {**DEFAULTS, "margin": 0.3}, {"val_avg_inc_acc_cnn": 65.0, "avg_inc_acc_cnn": 61.0})
    d = _doc("d", DEFAULTS, {"val_avg_inc_acc_cnn": 60.0, "avg_inc_acc_cnn": 62.0})
    p = _doc("p", {**DEFAULTS, "margin": 0.7}, {"val_avg_inc_acc_cnn": 99.0}, status="PRUNED")
    p["phases"] = p["phases"][:2]
    _write(tmp_path, [a, b, c, d, p], {"metric": "val_avg_inc_acc_cnn"})
    cands = confirm_candidates(tmp_path, DEFAULTS, top_k=2)
    assert [c["label"] for c in cands] == ["paper defaults", "top-1", "top-2"]
    assert [c["search_trial"] for c in cands] == ["d", "a", "c"]  # the pruned 99 and the test-best b are out
    assert cands[1]["params"]["margin"] == 0.1 and cands[0]["search_value"] == 60.0
    pts = confirm_points({"dataset": "digits", "epochs": 2, "val_fraction": 0.1, "seed": 5}, cands, seeds=3)
    assert len(pts) == 9 and {p["seed"] for p in pts} == {0, 1, 2} and all(p["val_fraction"] == 0 for p in pts)
    assert all(p["epochs"] == 2 for p in pts)


def test_confirm_summary_picks_the_best_confirmed_mean_and_compares_with_the_defaults_std(tmp_path):
    from analysis.confirm import confirm_summary

    cands = [{"label": "paper defaults", "params": DEFAULTS, "search_trial": "d", "search_value": 60.0},
             {"label": "top-1", "params": {**DEFAULTS, "margin": 0.1}, "search_trial": "a", "search_value": 70.0}]
    docs = [_doc(f"d{s}", {**DEFAULTS, "val_fraction": 0.0}, {"avg_inc_acc_cnn": v, "avg_inc_acc_nme": v}, seed=s)
            for s, v in enumerate([60.0, 62.0, 64.0])]
    docs += [_doc(f"a{s}", {**DEFAULTS, "margin": 0.1}, {"avg_inc_acc_cnn": v, "avg_inc_acc_nme": v}, seed=s)
             for s, v in enumerate([63.0, 63.5, 64.5])]
    _write(tmp_path / "confirm", docs, {"candidates": cands, "seeds": 3, "search_metric": "val_avg_inc_acc_cnn"})
    for doc in docs:  # the driver's status files beside the records are not trials of their own
        (tmp_path / "confirm" / "trials" / f"{doc['trial_id']}.status.json").write_text(json.dumps(
            {"trial_id": doc["trial_id"], "status": "TERMINATED", "config": doc["config"]}))
    out = confirm_summary(tmp_path)
    d, a = out["rows"]
    assert (d["n"], d["runs"], d["cnn_mean"], d["cnn_std"]) == (3, 3, 62.0, 2.0)
    assert a["cnn_mean"] == pytest.approx(63.6666667)
    assert out["winner"]["label"] == "top-1"
    assert out["verdict"]["gap"] == pytest.approx(1.6666667)
    assert out["verdict"]["beats_by_more_than_std"] is False  # 1.67 < the defaults' std 2.0
    assert confirm_summary(tmp_path / "nothing") is None


def test_startup_trials_scale_with_the_budget():
    assert [n_startup_trials(t) for t in (1, 12, 16, 64)] == [4, 4, 4, 16]


@pytest.mark.slow
def test_search_digits_end_to_end_with_asha(tmp_path):
    exp = tmp_path / "exp"
    r = run_lucir(["search", "--trials", "3", "--epochs", "2", "--asha", "--out", "exp", "--num-cpus", "2",
                   "--no-mlflow", "--confirm-top", "1", "--confirm-seeds", "2"], tmp_path, timeout=400)
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
        if finished:  # the objective is on the held-out validation images, not the test set
            assert d["config"]["val_fraction"] == 0.1
            assert t.value == pytest.approx(d["phases"][-1]["val_avg_inc_acc_cnn"])
    done = [d for d in docs if d["status"] == "TERMINATED"]
    best = max(done, key=lambda d: d["phases"][-1]["val_avg_inc_acc_cnn"])
    assert study.best_value == pytest.approx(best["phases"][-1]["val_avg_inc_acc_cnn"])
    doc = json.loads((exp / "lucir_experiment.json").read_text())
    assert doc["kind"] == "search" and doc["asha"] and doc["points_to_evaluate"][0]["margin"] == 0.5
    assert doc["metric"] == "val_avg_inc_acc_cnn"
    assert set(doc["searched"]) == set(DEFAULTS) and doc["searched"]["lambda_base"]["kind"] == "loguniform"
    # confirm stage: the defaults and the best distinct config on validation, 2 seeds each, no split
    conf = json.loads((exp / "confirm" / "lucir_experiment.json").read_text())
    assert conf["candidates"][0]["params"] == DEFAULTS
    others = [d for d in sorted(done, key=lambda d: -d["phases"][-1]["val_avg_inc_acc_cnn"])
              if {k: d["config"][k] for k in DEFAULTS} != DEFAULTS]
    if others:
        assert conf["candidates"][1]["search_trial"] == others[0]["trial_id"]
    cdocs = trial_docs(exp / "confirm")
    assert len(cdocs) == 2 * len(conf["candidates"]) and all(d["status"] == "TERMINATED" for d in cdocs)
    assert all(d["config"]["val_fraction"] == 0 and "val_acc_cnn" not in d["phases"][-1] for d in cdocs)
    means = {}
    for c in conf["candidates"]:
        mine = [d for d in cdocs if all(d["config"][k] == v for k, v in c["params"].items())]
        assert sorted(d["config"]["seed"] for d in mine) == [0, 1]
        means[c["label"]] = sum(d["phases"][-1]["avg_inc_acc_cnn"] for d in mine) / 2
    winner = max(means, key=means.get)
    assert f"winner (best confirmed mean): {winner}" in r.stdout
    assert "lucir train --dataset digits --preset lucir" in r.stdout


def test_asha_rungs_rebuilt_from_trial_records_equal_the_live_rungs(tmp_path):
    """A resumed search's ASHA starts with the rungs an uninterrupted one would hold: feeding trials' phase
    results live and rebuilding from their records (trials/<id>.json) give the same rungs, hence the same
    cutoffs and the same pruning decisions for the trials after the interruption."""
    import pickle

    from ray.tune.schedulers import ASHAScheduler

    from tune.asha import RecordedASHA

    class T:
        def __init__(self, tid):
            self.trial_id = tid

    # 6 trials of max_t = 4 phases, some stopped early (their records end at the phase they were stopped)
    curves = {"a": [90, 80, 75, 70, 60], "b": [91, 70, 60], "c": [92, 85, 80, 78, 77], "d": [89, 60],
              "e": [93, 88, 84, 80, 79], "f": [95, 65]}
    kw = dict(time_attr="phase", metric="val_avg_inc_acc_cnn", mode="max", max_t=4, grace_period=1,
              reduction_factor=2)
    live = ASHAScheduler(**kw)
    for tid, curve in curves.items():
        live.on_trial_add(None, T(tid))
        for phase, v in enumerate(curve):
            live.on_trial_result(None, T(tid), {"phase": phase, "val_avg_inc_acc_cnn": v})
    _write(tmp_path, [{"trial_id": tid, "num_phases": 4, "status": "TERMINATED", "config": {},
                       "phases": [{"phase": i, "val_avg_inc_acc_cnn": v} for i, v in enumerate(curve)]}
                      for tid, curve in curves.items()])
    resumed = pickle.loads(pickle.dumps(RecordedASHA(str(tmp_path), **kw)))  # as Tuner.restore unpickles it
    resumed.on_trial_add(None, T("g"))  # the first trial after the resume triggers the rebuild
    assert [(m, dict(r)) for m, r in resumed._brackets[0]._rungs] == \
        [(m, dict(r)) for m, r in live._brackets[0]._rungs]
    assert any(r for _, r in resumed._brackets[0]._rungs)
    fresh = RecordedASHA(str(tmp_path / "empty"), **kw)  # an uninterrupted search has no records yet
    fresh.on_trial_add(None, T("a"))
    assert not any(r for _, r in fresh._brackets[0]._rungs)


def test_asha_counts_a_trial_run_again_after_a_resume_once(tmp_path):
    """A rebuilt trial that had not ended (x, asked after Tune's last snapshot) is in the rungs until a new trial
    with its config (y, its Optuna trial handed out again) is added; a restored trial (z, same id) stays."""
    from tune.asha import RecordedASHA

    class T:
        def __init__(self, tid, margin):
            self.trial_id, self.config = tid, {"dataset": "digits", "preset": "lucir", "margin": margin}

    _write(tmp_path, [{"trial_id": tid, "num_phases": 4, "status": "RUNNING", "config": T(tid, m).config,
                       "phases": [{"phase": i, "val_avg_inc_acc_cnn": 90.0 - i} for i in range(3)]}
                      for tid, m in (("x", 0.3), ("z", 0.4))])
    asha = RecordedASHA(str(tmp_path), time_attr="phase", metric="val_avg_inc_acc_cnn", mode="max", max_t=4,
                        grace_period=1, reduction_factor=2)

    def rungs():
        return {tid for _, r in asha._brackets[0]._rungs for tid in r}

    asha.on_trial_add(None, T("z", 0.4))
    assert rungs() == {"x", "z"}
    asha.on_trial_add(None, T("y", 0.3))
    assert rungs() == {"z"}


def _outcomes(exp) -> dict[tuple, str]:
    """A trial's searched parameters (the same sequence in both runs: seeded TPE) -> its final status (a record a
    killed driver left, whose parameters the resumed search ran again, is ABANDONED and not counted)."""
    return {tuple(round(float(d["config"][k]), 9) for k in sorted(DEFAULTS)): d["status"] for d in trial_docs(exp)
            if d["status"] != "ABANDONED"}


@pytest.mark.slow
def test_a_resumed_asha_search_prunes_exactly_the_trials_an_uninterrupted_one_prunes(tmp_path):
    """Seeded TPE, one trial at a time, ASHA on phase: the driver is SIGKILLed once 3 trials have ended,
    then `lucir resume` finishes the search. Its pruned trials are those of the same search run without
    interruption (before RecordedASHA, the resumed ASHA started with empty rungs and pruned fewer)."""
    import time

    from test_tune_faults import _kill_session
    from tune_fixtures import popen_lucir

    args = ["search", "--trials", "8", "--epochs", "1", "--asha", "--concurrency", "1", "--confirm-top", "0",
            "--no-mlflow", "--num-cpus", "2", "--no-base-cache"]
    r = run_lucir(args + ["--out", "full"], tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    full = _outcomes(tmp_path / "full")
    assert len(full) == 8 and "PRUNED" in full.values() and "TERMINATED" in full.values(), full

    cut = tmp_path / "cut"
    proc = popen_lucir(args + ["--out", "cut"], tmp_path, tmp_path / "cut.log")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if len(list((cut / "trials").glob("*.status.json"))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "cut.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)
        proc.wait(30)
    ended_before = {n for n, s in _outcomes(cut).items() if s in ("PRUNED", "TERMINATED")}
    assert 3 <= len(ended_before) < 8
    r = run_lucir(["resume", str(cut), "--num-cpus", "2"], tmp_path, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    resumed = _outcomes(cut)
    # every trial of the uninterrupted search is there with the same outcome (pruned or not), and no other:
    # trials the killed driver asked after Tune's last snapshot are kept or run again, never run twice
    assert resumed == full


@pytest.mark.slow
def test_a_resume_from_a_tune_snapshot_older_than_the_study_runs_exactly_the_budget(tmp_path):
    """Tune's experiment state is copied while the first trials run; the search then finishes, and its Tune state
    is put back to that copy, as if the driver had been killed right after the last trial ended but before Tune
    saved again.  `lucir resume` must neither ask Optuna for the trials Tune forgot (they are in the study) nor
    die on a restored trial reporting to an Optuna trial that was already told: exactly 5 trials, each once."""
    import shutil
    import time

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tune_fixtures import popen_lucir

    exp, old = tmp_path / "exp", tmp_path / "snapshot"
    mine = ("lucir_experiment", "optuna_", "trials", "base_cache")  # lucir's files, not Tune's
    proc = popen_lucir(["search", "--trials", "5", "--epochs", "4", "--concurrency", "1", "--confirm-top", "0",
                        "--no-mlflow", "--num-cpus", "2", "--no-base-cache", "--out", str(exp)], tmp_path,
                       tmp_path / "driver.log")
    deadline = time.time() + 240
    while time.time() < deadline and not list(exp.glob("trials/*.status.json")):  # the first trial ended
        time.sleep(0.05)
    time.sleep(0.5)
    old.mkdir()
    for f in exp.iterdir():
        if not f.name.startswith(mine):
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, old / f.name)
    assert proc.wait(300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(trial_docs(exp)) == 5
    for f in exp.iterdir():
        if not f.name.startswith(mine):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    for f in old.iterdir():
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, exp / f.name)
    r = run_lucir(["resume", str(exp), "--num-cpus", "2"], tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    docs = trial_docs(exp)
    assert len(docs) == 5 and all(d["status"] == "TERMINATED" for d in docs), [(d["trial_id"], d["status"]) for d in docs]
    trials = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(
        str(exp / "optuna_journal.log")))).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert sorted(t.value for t in trials) == pytest.approx(sorted(d["phases"][-1]["val_avg_inc_acc_cnn"] for d in docs))


def test_trial_record_round_trips_through_json():
    from lucir.record import TrialRecord, is_finished

    rec = TrialRecord(trial_id="t1", config={"phases": 2, "dataset": "digits"}, status="RUNNING",
                      phases=[{"phase": i, "avg_inc_acc_cnn": 90.0 - i} for i in range(3)], base_cache="hit",
                      acc_matrix_cnn=[[99.0], [98.0, 97.0], [97.0, 96.0, 95.0]])
    d = rec.to_json()
    assert d["num_phases"] == 2 and rec.finished and is_finished(d)
    assert not is_finished({**d, "status": "ABANDONED"}) and not is_finished({**d, "status": "ERROR"})
    assert TrialRecord.from_json(json.loads(json.dumps(d))) == rec
    assert TrialRecord.from_json({"trial_id": "old", "extra_key": 1}).phases == []  # older files still load


@pytest.mark.parametrize("kind", ["tpe", "gp", "random"])
def test_samplers_draw_the_same_trials_after_a_restore_from_an_older_snapshot(kind):
    """A resumed driver restores the sampler from Tune's last snapshot, which may be several asks old; the
    per-trial reseeding makes trial n's draws depend only on n and the study's history."""
    import pickle
    import warnings

    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"margin": FloatDistribution(0.0, 1.0), "K": IntDistribution(1, 3)}

    def draws(restore_at=None):
        study = optuna.create_study(sampler=make_sampler(kind, 0, 12), direction="maximize")
        stale = pickle.dumps(study.sampler)  # a snapshot taken before any ask
        out = []
        for i in range(9):
            if i == restore_at:
                study.sampler = pickle.loads(stale)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = study.ask(space)
            study.tell(t, t.params["margin"] + 0.1 * t.params["K"])
            out.append((t.params["margin"], t.params["K"]))
        return out

    assert draws() == draws(restore_at=5)


def test_a_resumed_fused_search_counts_members_finished_after_the_snapshot(tmp_path):
    """ArraySearch (--fuse 2, --trials 4): array B was asked after Tune's last snapshot; member 0 finished
    (its record holds every phase), member 1 was cut.  After restore the next array is member 1's parameters
    alone, and then the budget is spent."""
    from ray import tune

    s = make_searcher(tmp_path, "study", 0, [], metric="val_avg_inc_acc_cnn", trials=4, fuse=2,
                      domains={"margin": tune.uniform(0.0, 1.0)})
    fixed = {"dataset": "digits", "preset": "lucir", "phases": 1}
    s.set_search_properties("val_avg_inc_acc_cnn", "max", fixed)
    s.suggest("A")
    s.on_trial_complete("A", {"members": {str(i): {"val_avg_inc_acc_cnn": 70.0 + i, "phase": 1, "num_phases": 1}
                                          for i in range(2)}})
    s.save(str(tmp_path / "searcher.pkl"))
    b = s.suggest("B")["members"]
    _write(tmp_path, [_doc("B_m0", b[0], {"val_avg_inc_acc_cnn": 75.0}, n=1, status="RUNNING"),
                      {**_doc("B_m1", b[1], {"val_avg_inc_acc_cnn": 60.0}, n=1, status="RUNNING"), "phases": []}])
    s2 = make_searcher(tmp_path, "study", 0, [], metric="val_avg_inc_acc_cnn", trials=4, fuse=2,
                       domains={"margin": tune.uniform(0.0, 1.0)})
    s2.restore(str(tmp_path / "searcher.pkl"))
    assert s2.suggest("C") == {"members": [b[1]]}
    assert s2.suggest("D") == "FINISHED"
    assert sorted(t.value for t in s2.inner._ot_study.trials if t.value is not None) == [70.0, 71.0, 75.0]
