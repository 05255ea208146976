"""The function trainable: one report per phase with the DESIGN §4 metrics and a checkpoint, the
trials/<id>.json contract (docs/EXPERIMENT_LAYOUT.md), and the spaces/validation helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lucir
from lucir.config import ConfigError
from tune_fixtures import METRIC_KEYS, TINY, ray_local  # noqa: F401
from tune import spaces
from tune.experiment import TrialStatusCallback, train_command
from tune.trainable import STATE_FILE, make_trainable, runtime_overrides


def _direct(flat: dict) -> list[lucir.PhaseResult]:
    cfg = lucir.Config.from_flat(runtime_overrides(flat, 1, 0))
    return [r for r, _ in lucir.run(cfg)]


def test_trainable_reports_every_phase_with_checkpoint_and_trial_file(ray_local, tmp_path):  # noqa: F811
    from ray import tune

    exp = tmp_path / "exp"
    flat = {**TINY, "preset": "lucir"}
    tuner = tune.Tuner(make_trainable(str(exp), cpus=1, base_cache=False), param_space=flat,
                       run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path),
                                                 callbacks=[TrialStatusCallback(str(exp))], verbose=0))
    grid = tuner.fit()
    assert not grid.errors
    res = grid[0]
    df = res.metrics_dataframe
    P = lucir.Config.from_flat(flat).protocol.phases
    assert list(df["phase"]) == list(range(P + 1))  # one report per phase, base phase included
    for k in METRIC_KEYS:
        assert k in df.columns, k
    assert (df["num_phases"] == P).all()
    # the checkpoint holds the trainer state of the last phase
    with res.checkpoint.as_directory() as d:
        st = lucir.load_state(Path(d) / STATE_FILE)
    assert st["phase"] == P

    # trials/<id>.json (the worker's record) + trials/<id>.status.json (the driver's): the layout contract
    from lucir.record import read_status, read_trials

    assert sorted(p.name for p in (exp / "trials").glob("*.json")) == [f"{res.metrics['trial_id']}.json",
                                                                       f"{res.metrics['trial_id']}.status.json"]
    record = json.loads((exp / "trials" / f"{res.metrics['trial_id']}.json").read_text())
    assert record["status"] == "RUNNING"  # the worker never writes a final status
    assert read_status(exp, res.metrics["trial_id"])["status"] == "TERMINATED"  # the driver does, in its own file
    (doc,) = read_trials(exp)
    assert doc["trial_id"] == res.metrics["trial_id"]
    assert doc["sweep"] == "exp" and doc["status"] == "TERMINATED" and doc["base_cache"] == "off"
    assert doc["config"] == lucir.Config.from_flat(runtime_overrides(flat, 1, 0)).to_flat()
    assert doc["num_phases"] == P and len(doc["phases"]) == P + 1
    assert [p["phase"] for p in doc["phases"]] == list(range(P + 1))
    assert doc["phases"][0]["acc_old_cnn"] is None  # strict JSON: undefined (NaN) is null
    assert [len(r) for r in doc["acc_matrix_cnn"]] == list(range(1, P + 2))
    # CPU determinism: the same matrix as lucir.run outside Ray
    direct = _direct(flat)
    assert doc["acc_matrix_cnn"] == direct[-1].acc_matrix_cnn
    assert doc["acc_matrix_nme"] == direct[-1].acc_matrix_nme
    assert df["avg_inc_acc_cnn"].iloc[-1] == pytest.approx(direct[-1].avg_inc_acc_cnn)


def test_runtime_overrides_follow_resources():
    assert runtime_overrides({}, 2, 0) == {"threads": 2, "device": "cpu", "download": False}
    assert runtime_overrides({"threads": 3}, 2, 0)["threads"] == 3
    o = runtime_overrides({}, 1, 0.25)
    # 10% headroom: the CUDA context and the allocator's fragmentation are outside the cap
    assert o["gpu_memory_fraction"] == pytest.approx(0.9 * 0.25) and "device" not in o
    assert "gpu_memory_fraction" not in runtime_overrides({}, 1, 1)
    assert runtime_overrides({"gpu_memory_fraction": 0.3}, 1, 0.5)["gpu_memory_fraction"] == 0.3  # explicit wins
    cfg = lucir.Config.from_flat(runtime_overrides({}, 1, 0.5))
    assert cfg.runtime.gpu_memory_fraction == pytest.approx(0.45)
    assert runtime_overrides({"download": True}, 1, 0)["download"] is False  # a trial never downloads


def test_trial_with_missing_cifar_fails_naming_the_path_without_downloading(tmp_path, monkeypatch):
    """A trial's config (runtime_overrides) never downloads: the trainer fails at once with the loader's
    error naming the missing path, and torchvision's downloader is never called."""
    import torchvision

    from lucir.data import DatasetMissingError

    def no_download(*a, **k):
        raise AssertionError("a trial tried to download CIFAR-100")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_download)
    root = tmp_path / "no-cifar-here"
    cfg = lucir.Config.from_flat(runtime_overrides({"dataset": "cifar100", "data_root": str(root), "epochs": 1}, 1, 0))
    assert cfg.runtime.download is False
    with pytest.raises(DatasetMissingError) as info:
        next(iter(lucir.run(cfg)))
    msg = str(info.value)
    assert str(root) in msg and "download disabled" in msg and "cifar-100-python" in msg
    with pytest.raises(ConfigError, match="download"):
        lucir.Config.from_flat({"download": "maybe"})


def test_live_table_shows_avg_inc_acc_cnn_first():
    """Ray 2.60's live table (the default output engine; RunConfig(progress_reporter=...) is ignored by it)
    shows the first 4 keys of a trial's last result: report_metrics puts avg_inc_acc_cnn first."""
    from types import SimpleNamespace

    from ray.tune.experimental.output import _infer_user_metrics

    from tune.trainable import report_metrics

    r = _direct({**TINY, "phases": 1, "val_fraction": 0.2})[-1]
    m = report_metrics(r.metrics(), 1)
    assert list(m)[:4] == ["avg_inc_acc_cnn", "val_avg_inc_acc_cnn", "phase", "avg_inc_acc_nme"]
    assert m == {**r.metrics(), "num_phases": 1}  # the same metrics, only in another order
    assert _infer_user_metrics([SimpleNamespace(last_result=m)])[0] == "avg_inc_acc_cnn"


def test_ablation_space_and_validation():
    s = spaces.ablation_space("digits", fixed={"epochs": 2}, presets=["lucir", "cn"], seeds=3,
                              gridded=spaces.parse_grid_set(["phases=2,3"]))
    assert s["preset"] == {"grid_search": ["lucir", "cn"]}
    assert s["seed"] == {"grid_search": [0, 1, 2]}
    assert s["phases"] == {"grid_search": [2, 3]}
    pts = spaces.grid_points(s)
    assert len(pts) == 2 * 3 * 2
    # digits B4 leaves 6 classes: 4 phases is an uneven split -> named with its grid values
    bad = spaces.ablation_space("digits", gridded=spaces.parse_grid_set(["phases=3,4"]))
    with pytest.raises(ConfigError, match=r"grid point .*phases=4.*phases=4 is invalid"):
        spaces.validate_points(spaces.grid_points(bad), ["preset", "phases"])
    with pytest.raises(ConfigError, match="unknown config field"):
        spaces.parse_grid_set(["nosuch=1,2"])
    with pytest.raises(ConfigError, match="allowed a comma-separated list"):
        spaces.parse_presets("lucir,nosuch")
    with pytest.raises(ConfigError, match="--grid 'nosuch' is invalid"):
        spaces.ablation_space("nosuch")
    cifar = spaces.ablation_space("paper-cifar")
    assert cifar["phases"] == {"grid_search": [5, 10, 25]} and cifar["base_classes"] == 50


def test_search_space_respects_classes_per_phase():
    base = lucir.Config.from_flat({"phases": 1})  # digits: 6 classes in one phase
    space, text, points = spaces.search_space(base, {"phases": 1})
    assert space["K"].upper == 7 and points == [{"eta_init": 1.0, "margin": 0.5, "K": 2, "lambda_base": 5.0}]
    base3 = lucir.Config.from_flat({})  # 3 phases of 2 classes: K in 1..2
    space, _, _ = spaces.search_space(base3, {})
    assert space["K"].upper == 3
    _, _, points = spaces.search_space(base3, {"margin": 0.3})
    assert "margin" not in points[0]


def test_train_command_reproduces_config():
    flat = lucir.Config.from_flat({"epochs": 3, "margin": 0.25, "K": 1, "seed": 2}).to_flat()
    cmd = train_command(flat)
    assert cmd.startswith("lucir train --dataset digits --preset lucir")
    assert "--epochs 3" in cmd and "--seed 2" in cmd and "--set margin=0.25" in cmd and "--set K=1" in cmd
    assert "milestones" not in cmd  # scaled with --epochs


def test_runner_options_are_validated_and_round_trip_through_the_experiment_file():
    from lucir.config import ConfigError
    from tune.experiment import RunnerOptions

    r = RunnerOptions(cpus_per_trial=2, gpus_per_trial=0.25, max_concurrent=4, address="auto")
    assert RunnerOptions.from_dict({**r.to_dict(), "unknown_old_key": 1}) == r  # older files may hold more
    assert r.replace(num_cpus=8).num_cpus == 8 and r.cache_options == {"stale_after": 60.0}
    for bad, flag in ((dict(cpus_per_trial=0), "--cpus-per-trial"), (dict(gpus_per_trial=2), "--gpus-per-trial"),
                      (dict(max_failures=-1), "--max-failures"), (dict(max_concurrent=0), "--max-concurrent"),
                      (dict(cache_stale_after=0), "--cache-stale-after")):
        with pytest.raises(ConfigError, match=flag):
            RunnerOptions(**bad)
