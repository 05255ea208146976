"""The loader: an experiment folder and an MLflow store give one long frame (trial x phase), no trial dropped."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_fixtures import (empty_mlflow_db, fresh_mlflow, make_trial, strict_json, write_experiment,
                               write_mlflow)

from analysis.results import (METRICS, ExperimentError, accuracy_matrix, describe_unfinished, last_phase, load_experiment,
                              load_mlflow, read_experiment)


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "mlflow_template"  # one migrated store per test session
    base.mkdir(exist_ok=True)
    return empty_mlflow_db(base)


def mixed_trials():
    return [make_trial("t_done", preset="lucir", seed=0, acc=60.0),
            make_trial("t_cn", preset="cn", seed=1, acc=55.0, phases=2, margin=0.25),
            make_trial("t_pruned", preset="lucir", seed=2, acc=70.0, done=2, status="PRUNED"),
            make_trial("t_running", preset="baseline", seed=0, acc=50.0, done=1),
            make_trial("t_failed", preset="lucir", seed=4, done=0, status="ERROR",
                       error="TrainingDivergedError: NaN loss in phase 1, epoch 3")]


def test_folder_frame_has_one_row_per_trial_and_phase(tmp_path):
    df = load_experiment(write_experiment(tmp_path / "exp", mixed_trials()))
    assert len(df) == 4 + 3 + 2 + 1 + 1                      # phases reported; the failed trial keeps one row
    assert df["trial_id"].nunique() == 5
    for col in ("trial_id", "trial_name", "preset", "dataset", "base_classes", "phases", "exemplars_per_class",
                "memory_total", "seed", "eta_init", "lambda_base", "margin", "K", "epochs", "phase",
                "classes_seen", *METRICS, "status", "finished"):
        assert col in df.columns, col
    failed = df[df["trial_id"] == "t_failed"]
    assert len(failed) == 1 and pd.isna(failed["phase"].iloc[0]) and failed["status"].iloc[0] == "ERROR"
    assert "NaN loss" in failed["error"].iloc[0]
    fin = df.groupby("trial_id")["finished"].first().to_dict()
    assert fin == {"t_done": True, "t_cn": True, "t_pruned": False, "t_running": False, "t_failed": False}
    done = df[df["trial_id"] == "t_done"]
    assert list(done["phase"]) == [0, 1, 2, 3] and list(done["classes_seen"]) == [4, 6, 8, 10]
    assert math.isnan(done["acc_old_cnn"].iloc[0]) and done["acc_old_cnn"].iloc[1] == 60.0
    assert df.loc[df["trial_id"] == "t_cn", "margin"].iloc[0] == 0.25
    assert str(df["phase"].dtype) == "Int64" and str(df["seed"].dtype) == "Int64"
    assert df["acc_cnn"].dtype == float and df["finished"].dtype == bool
    last = last_phase(df)
    assert set(last["trial_id"]) == {"t_done", "t_cn"} and list(last["phase"]) == [2, 3]


def test_accuracy_matrix_of_a_trial(tmp_path):
    e = read_experiment(write_experiment(tmp_path / "exp", mixed_trials()))
    m = accuracy_matrix(e.trial("t_pruned"))
    assert m.shape == (2, 2) and m.loc[1, "group_1"] == 70.0 and math.isnan(m.loc[0, "group_1"])
    assert accuracy_matrix(e.trial("t_pruned"), "nme").loc[1, "group_0"] == 69.0
    e.trial("t_pruned").acc_matrix_cnn[1][0] = None                # strict JSON: an undefined entry is null
    assert math.isnan(accuracy_matrix(e.trial("t_pruned")).loc[1, "group_0"])


def test_unfinished_and_unreadable_trials_are_listed_not_dropped(tmp_path):
    exp = write_experiment(tmp_path / "exp", mixed_trials())
    (exp / "trials" / "t_torn.json").write_text('{"trial_id": "t_torn", "phases": [')
    df = load_experiment(exp)
    missing = describe_unfinished(df)
    assert set(missing["trial_id"]) == {"t_pruned", "t_running", "t_failed", "t_torn"}
    row = missing.set_index("trial_id").loc["t_torn"]
    assert row["status"] == "ERROR" and "unreadable trials/t_torn.json" in row["error"]
    run = missing.set_index("trial_id").loc["t_running"]
    assert run["phases_done"] == 1 and run["phases_total"] == 4


def test_empty_and_missing_experiments(tmp_path):
    with pytest.raises(ExperimentError, match="not an experiment folder"):
        read_experiment(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ExperimentError, match="no lucir_experiment.json"):
        read_experiment(tmp_path / "plain")
    exp = write_experiment(tmp_path / "empty", [])
    e = read_experiment(exp)
    assert e.trials == [] and len(e.frame) == 0 and "phase" in e.frame.columns
    assert not (exp / "mlflow.db").exists()                  # reading never creates an MLflow store


def test_mlflow_store_gives_the_same_frame(tmp_path, mlflow_template):
    trials = mixed_trials()
    exp = write_experiment(tmp_path / "exp", trials)
    uri = fresh_mlflow(mlflow_template, tmp_path / "exp")
    write_mlflow(uri, "exp", trials, tmp_path / "artifacts")
    from_folder = load_experiment(exp).drop(columns=["updated"])
    from_mlflow = load_mlflow(uri, "exp").drop(columns=["updated"])
    pd.testing.assert_frame_equal(from_mlflow, from_folder)
    # the folder without trial files falls back to the MLflow store named in lucir_experiment.json
    for f in (exp / "trials").glob("*.json"):
        f.unlink()
    e = read_experiment(exp)
    assert e.source == "mlflow" and e.meta["parent_run_id"]
    pd.testing.assert_frame_equal(e.frame.drop(columns=["updated"]), from_folder)
    with pytest.raises(ExperimentError, match="no MLflow experiment named"):
        load_mlflow(uri, "other")


def test_ray_trial_folders_are_read_when_there_are_no_trial_files(tmp_path):
    """Ray Tune's own trial folders (params.json + one result.json line per report) as a fallback."""

    exp = write_experiment(tmp_path / "exp", [], meta={"mlflow_uri": None})
    (exp / "trials").rmdir()
    docs = mixed_trials()[:4]
    for n, doc in enumerate(docs):
        d = exp / f"lucir_trainable_{doc['trial_id']}_{n}_preset={doc['config']['preset']}_2026-11-28_08-49-38"
        d.mkdir()
        cfg = doc["config"]
        (d / "params.json").write_text(strict_json({k: cfg[k] for k in ("dataset", "preset", "phases", "seed",
                                                                        "epochs", "margin")}))
        lines = [strict_json({**p, "trial_id": doc["trial_id"], "done": False, "hostname": "vm",
                              "config": {"preset": cfg["preset"]}}) for p in doc["phases"]]
        (d / "result.json").write_text("\n".join(lines) + "\n")
    (next(exp.glob("*t_running*")) / "error.txt").write_text("Failure # 1\nRuntimeError: worker died")
    e = read_experiment(exp)
    assert e.source == "ray" and "Ray's trial folders" in e.notes[0]
    df = e.frame
    by_id = df.groupby("trial_id").first()
    assert by_id.loc["t_done", "status"] == "TERMINATED" and by_id.loc["t_done", "trial_name"] == \
        "lucir_trainable_t_done"
    assert by_id.loc["t_running", "status"] == "ERROR" and "worker died" in by_id.loc["t_running", "error"]
    assert by_id.loc["t_pruned", "status"] == "RUNNING"          # Ray's folders cannot tell PRUNED apart
    assert "hostname" not in df.columns and "done" not in df.columns
    folder = load_experiment(write_experiment(tmp_path / "ref", docs))
    cols = ["trial_id", "phase", "classes_seen", *METRICS, "preset", "seed", "margin", "epochs", "milestones"]
    pd.testing.assert_frame_equal(df[cols], folder[cols])


@pytest.mark.slow
def test_real_trainer_trial_loads(tmp_path):
    """A trial file written from the trainer's own results (2 epochs, 1 incremental phase) loads unchanged."""
    import lucir

    cfg = lucir.Config.from_flat(dataset="digits", epochs=1, phases=1, base_classes=5, threads=1)
    phases, res = [], None
    for res, _ in lucir.run(cfg):
        phases.append(res.metrics())
    doc = {"trial_id": "real", "trial_name": "lucir_trainable_real", "sweep": "exp", "config": cfg.to_flat(),
           "phases": phases, "num_phases": 1, "acc_matrix_cnn": res.acc_matrix_cnn,
           "acc_matrix_nme": res.acc_matrix_nme, "status": "TERMINATED", "base_cache": "off"}
    df = load_experiment(write_experiment(tmp_path / "exp", [doc]))
    assert len(df) == 2 and bool(df["finished"].all())
    assert df["avg_inc_acc_cnn"].iloc[1] == pytest.approx((phases[0]["acc_cnn"] + phases[1]["acc_cnn"]) / 2)
    assert list(df["classes_seen"]) == [5, 10]
    assert not df[list(METRICS)].drop(columns=["acc_old_cnn"]).isna().any().any()
