"""``lucir ablate`` end to end on digits (tiny), and bad input that fails before Ray starts."""

from __future__ import annotations

import json

import pytest

from tune_fixtures import mlflow_child_runs, run_lucir, trial_docs


@pytest.mark.slow
def test_ablate_digits_end_to_end(tmp_path):
    exp = tmp_path / "exp"
    r = run_lucir(["ablate", "--presets", "finetune,cn_lf,lucir", "--seeds", "1", "--epochs", "2", "--out", "exp",
                   "--num-cpus", "2"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # summary table: one row per preset x protocol
    out = r.stdout[r.stdout.index("ablation summary"):]
    assert "| finetune" in out and "| lucir" in out and "avg_inc_acc_cnn" in out
    doc = json.loads((exp / "lucir_experiment.json").read_text())
    assert doc["kind"] == "ablate" and doc["name"] == "exp" and doc["metric"] == "avg_inc_acc_cnn"
    assert doc["param_space"]["preset"] == {"grid_search": ["finetune", "cn_lf", "lucir"]}
    assert doc["argv"][:2] == ["lucir", "ablate"]
    docs = trial_docs(exp)
    assert len(docs) == 3 and all(d["status"] == "TERMINATED" for d in docs)
    assert sorted(d["config"]["preset"] for d in docs) == ["cn_lf", "finetune", "lucir"]
    assert all(len(d["phases"]) == d["num_phases"] + 1 for d in docs)
    # cn_lf and lucir share their base phase: it was trained once, before the trials, and both found it;
    # finetune's (a linear head: another base key) was trained by its own trial
    import lucir
    from tune.base_cache import BaseCache

    events = BaseCache(exp / "base_cache").events()
    shared = lucir.Config.from_flat(next(d for d in docs if d["config"]["preset"] == "lucir")["config"]).base_key()
    who = [(e["event"], e.get("who") or e.get("trial_id")) for e in events if e["key"] == shared]
    assert who[:2] == [("miss", "pretrain"), ("publish", "pretrain")]
    assert sorted(ev for ev, w in who[2:]) == ["hit", "hit"]
    assert {d["config"]["preset"]: d["base_cache"] for d in docs} == {"cn_lf": "hit", "lucir": "hit",
                                                                      "finetune": "miss"}
    assert "pre-training 1 shared base phase" in r.stdout
    runs = mlflow_child_runs(exp)
    if runs is not None:  # the MLflow callback (tune/mlflow_logger.py) is there: one run per trial
        assert doc["mlflow_uri"] == f"sqlite:///{exp / 'mlflow.db'}"
        assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("args, message", [
    (["--grid-set", "phases=3,4"], r"grid point \{.*phases=4.*\}: phases=4 is invalid: allowed a divisor"),
    (["--presets", "lucir,nosuch"], "allowed a comma-separated list of"),
    (["--set", "nosuch=1"], "unknown config field"),
    (["--grid-set", "K=1,5"], "K=5 is invalid: allowed 1..2"),
    (["--grid", "nosuch"], "--grid 'nosuch' is invalid: allowed one of"),
    (["--seeds", "0"], "--seeds 0 is invalid"),
    (["--dataset", "cifar100", "--data-root", "nowhere"], "(?i)cifar"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "--mlflow-uri http://127.0.0.1:9"),
])
def test_bad_input_fails_before_any_trial(tmp_path, monkeypatch, capsys, args, message):
    import re

    import ray

    from lucir.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["ablate", "--epochs", "2", "--out", "exp", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert re.search(message, err), err
    assert not ray.is_initialized()  # nothing of Ray was started
    assert not (tmp_path / "exp").exists()


def test_existing_experiment_is_not_overwritten(tmp_path, monkeypatch, capsys):
    from lucir.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "lucir_experiment.json").write_text("{}")
    assert main(["ablate", "--epochs", "2", "--out", "exp"]) == 2
    assert "lucir resume" in capsys.readouterr().err
