"""tune.mlflow_logger against real components: a real Tune sweep of the real trainer (digits, 2 trials),
logged at once to a SQLite store and to a real `mlflow server` over HTTP; the driver is interrupted
(a real SIGINT to this process, which Tune handles) after the first phase result and the sweep is
finished by a real ``Tuner.restore``.  Then: one parent run, exactly one child run per trial, each
phase logged once with step = phase, params = the trial config, no run left RUNNING, artifacts present.

The sweep tests are marked slow (one module-scoped sweep: about 1 min on 2 idle cores, 3-4 min on a loaded
machine); the callback's restore logic, failure path and URI checks have fast tests of their own.

Services: the `mlflow server` subprocess listens on 127.0.0.1 and is stopped by its pid (its own
process group); Ray is a private local instance (``address="local"``) shut down at the end.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lucir.record import read_trials

from tune.mlflow_logger import METRICS, MLflowCallback, check_tracking_uri, default_tracking_uri

MLFLOW_BIN = str(Path(sys.executable).with_name("mlflow"))
SWEEP = "mlflow_sweep"
MLFLOW_EXPERIMENT = "lucir-test"
BASE = {"dataset": "digits", "epochs": 2, "phases": 2, "base_classes": 4, "threads": 1, "device": "cpu"}
SEEDS = [0, 1]
N_PHASES = BASE["phases"] + 1  # base phase included


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend, in its own session, stopped by its pid."""

    def __init__(self, folder: Path, port: int | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [MLFLOW_BIN, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                 "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)

    def wait(self, timeout: float = 150.0) -> str:
        deadline = time.monotonic() + timeout
        while not _healthy(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"mlflow server did not come up: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self.url

    def stop(self) -> None:
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


def _migrated_db(folder: Path) -> Path:
    """An empty MLflow SQLite store with its schema created (copied per use: creating one takes ~10 s)."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


def _template(tmp_path_factory) -> Path:
    """One migrated empty store per test session, copied by every test that needs a store."""
    path = tmp_path_factory.getbasetemp() / "mlflow_template" / "mlflow.db"
    return path if path.exists() else _migrated_db(path.parent)


# --------------------------------------------------------------------------------- the trainable
def make_trainable(exp_dir: str):
    """A function trainable: lucir.run, trials/<id>.json before each report, resume from checkpoint."""

    def trainable(config):
        import tempfile as _tempfile
        from pathlib import Path as _Path

        from ray import tune as _tune

        import lucir
        from lucir.checkpoint import atomic_write_json, load_state, save_state

        cfg = lucir.Config.from_flat(dict(config))
        ctx = _tune.get_context()
        tid = ctx.get_trial_id()
        state = None
        ckpt = _tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = load_state(_Path(d) / "state.pt")
            if state["phase"] >= cfg.protocol.phases:
                return  # every phase was reported before the interruption
        for res, st in lucir.run(cfg, state):
            doc = {"trial_id": tid, "trial_name": ctx.get_trial_name(), "sweep": ctx.get_experiment_name(),
                   "config": cfg.to_flat(), "phases": [dict(r) for r in st["results"]],
                   "num_phases": cfg.protocol.phases, "acc_matrix_cnn": st["acc_cnn"],
                   "acc_matrix_nme": st["acc_nme"], "status": "RUNNING", "base_cache": "off"}
            atomic_write_json(_Path(exp_dir) / "trials" / f"{tid}.json", doc)
            with _tempfile.TemporaryDirectory() as d:
                save_state(st, _Path(d) / "state.pt")
                _tune.report(res.metrics(), checkpoint=_tune.Checkpoint.from_directory(d))

    return trainable


def _interrupt_callback(marker: Path):
    from ray.tune import Callback

    class _Interrupt(Callback):
        def __init__(self, marker: str):
            self.marker = marker

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not os.path.exists(self.marker):
                Path(self.marker).write_text("interrupted")
                os.kill(os.getpid(), signal.SIGINT)

    return _Interrupt(str(marker))


# --------------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Run the interrupted-then-restored sweep once; yield what the tests need to look at."""
    import ray
    from ray import tune

    root = tmp_path_factory.mktemp("mlflow_sweep")
    server = MlflowServer(root / "server")  # starts now, comes up while Ray starts
    try:
        template = _template(tmp_path_factory)
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        url = server.wait()

        storage = root / "storage"
        exp = storage / SWEEP
        (exp / "trials").mkdir(parents=True)
        shutil.copy(template, exp / "mlflow.db")  # the default store, schema already created
        sqlite_uri = default_tracking_uri(exp)
        (exp / "lucir_experiment.json").write_text(json.dumps(
            {"name": SWEEP, "kind": "ablate", "mlflow_uri": sqlite_uri, "mlflow_experiment": MLFLOW_EXPERIMENT}))
        for uri in (sqlite_uri, url):
            check_tracking_uri(uri)
        cb_sqlite = MLflowCallback(sqlite_uri, MLFLOW_EXPERIMENT, SWEEP, str(exp), tags={"suite": "pytest"})
        cb_http = MLflowCallback(url, MLFLOW_EXPERIMENT, SWEEP, str(exp), tags={"suite": "pytest"},
                                 record_parent_run_id=False)
        trainable = tune.with_resources(make_trainable(str(exp)), {"cpu": 1})
        tuner = tune.Tuner(
            trainable,
            param_space={**BASE, "seed": tune.grid_search(SEEDS)},
            tune_config=tune.TuneConfig(max_concurrent_trials=2),
            run_config=tune.RunConfig(name=SWEEP, storage_path=str(storage), verbose=0,
                                      callbacks=[cb_sqlite, cb_http, _interrupt_callback(root / "interrupted")]),
        )
        t0 = time.monotonic()
        first = tuner.fit()
        interrupted = {"trials": len(first), "sqlite": _snapshot(sqlite_uri), "http": _snapshot(url),
                       "parent_run_id": json.loads((exp / "lucir_experiment.json").read_text()).get("parent_run_id"),
                       "seconds": time.monotonic() - t0}
        assert tune.Tuner.can_restore(str(exp))
        t1 = time.monotonic()
        restored = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
        grid = restored.fit()
        print(f"\nsweep: first fit (interrupted) {interrupted['seconds']:.0f} s, "
              f"restore {time.monotonic() - t1:.0f} s")
        yield {"exp": exp, "sqlite": sqlite_uri, "http": url, "grid": grid, "interrupted": interrupted,
               "server_artifacts": root / "server" / "artifacts", "restore_seconds": time.monotonic() - t1}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        server.stop()


def _snapshot(uri: str) -> dict:
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    e = c.get_experiment_by_name(MLFLOW_EXPERIMENT)
    runs = c.search_runs([e.experiment_id], max_results=1000) if e else []
    return {r.info.run_id: {"status": r.info.status, "role": r.data.tags.get("lucir.role"),
                            "trial": r.data.tags.get("lucir.trial_id")} for r in runs}


def _runs(uri: str):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    e = c.get_experiment_by_name(MLFLOW_EXPERIMENT)
    runs = c.search_runs([e.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("lucir.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


def _check_store(uri: str, sweep_info: dict) -> dict:
    """The assertions shared by the SQLite and the HTTP store."""
    c, parents, children = _runs(uri)
    grid = sweep_info["grid"]
    assert not grid.errors
    docs = {d["trial_id"]: d for d in read_trials(sweep_info["exp"])}
    assert len(docs) == len(SEEDS)

    assert len(parents) == 1, [p.info.run_id for p in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["lucir.sweep"] == SWEEP and parent.data.tags["suite"] == "pytest"

    assert len(children) == len(SEEDS), "exactly one child run per trial"
    assert {r.data.tags["lucir.trial_id"] for r in children} == set(docs)
    for run in children:
        rid = run.info.run_id
        doc = docs[run.data.tags["lucir.trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["lucir.status"] == "TERMINATED"
        tags = run.data.tags
        assert (tags["preset"], tags["dataset"], tags["base_classes"], tags["phases"], tags["sweep"]) == \
            ("lucir", "digits", "4", "2", SWEEP)
        assert tags["seed"] == str(doc["config"]["seed"])
        # params: the trial's flat config, completed with the resolved lucir config
        params = run.data.params
        for k, v in {**BASE, "seed": doc["config"]["seed"]}.items():
            assert params[k] == str(v), k
        for k, v in doc["config"].items():
            assert k in params, k
        # metrics: every phase exactly once, step = phase, values = the trial's own record (accuracies
        # are deterministic on the CPU, so a phase trained again after the interruption gives the same)
        for key in METRICS:
            if key.startswith("val_"):  # only a search holds out a validation split
                assert not c.get_metric_history(rid, key), key
                continue
            hist = c.get_metric_history(rid, key)
            steps = sorted(m.step for m in hist)
            assert steps == list(range(N_PHASES)), (key, steps)
            if key in ("train_seconds", "phase_seconds"):
                continue  # timings of a phase trained again after the interruption differ; the first is kept
            for m in hist:
                want = doc["phases"][m.step][key]
                if want is None or (isinstance(want, float) and math.isnan(want)):  # NaN (JSON null)
                    assert math.isnan(m.value), (key, m.step)
                else:
                    assert m.value == pytest.approx(want), (key, m.step)
        assert math.isnan(run.data.metrics["acc_old_cnn"]) is False  # last phase has old classes
        # artifacts: the per-phase table and both accuracy matrices as CSV
        names = {a.path for a in c.list_artifacts(rid)}
        assert {"phases.csv", "acc_matrix_cnn.csv", "acc_matrix_nme.csv", "trial.json"} <= names
        local = Path(c.download_artifacts(rid, "acc_matrix_cnn.csv", dst_path=str(sweep_info["exp"] / "dl" / rid)))
        rows = local.read_text().strip().splitlines()
        assert rows[0].startswith("phase,group_0") and len(rows) == 1 + N_PHASES
    runs_running = [r.info.run_id for r in (parents + children) if r.info.status == "RUNNING"]
    assert not runs_running
    return {"parent": parent, "children": children}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sqlite_store_holds_one_parent_and_one_run_per_trial(sweep):
    out = _check_store(sweep["sqlite"], sweep)
    doc = json.loads((sweep["exp"] / "lucir_experiment.json").read_text())
    assert doc["parent_run_id"] == out["parent"].info.run_id
    # artifacts of the default store sit beside the database, not in the driver's working directory
    assert any((sweep["exp"] / "mlartifacts").rglob("phases.csv"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_http_tracking_server_receives_the_sweep(sweep):
    out = _check_store(sweep["http"], sweep)
    assert out["parent"].info.run_id != json.loads((sweep["exp"] / "lucir_experiment.json").read_text())["parent_run_id"]
    # the artifacts went through the server into its --artifacts-destination
    assert len(list(sweep["server_artifacts"].rglob("acc_matrix_nme.csv"))) == len(SEEDS)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_interrupted_driver_leaves_runs_running_and_resume_reuses_them(sweep):
    snap = sweep["interrupted"]
    for store in ("sqlite", "http"):
        runs = snap[store]
        parents = [r for r in runs.values() if r["role"] == "sweep"]
        children = [r for r in runs.values() if r["role"] == "trial"]
        assert len(parents) == 1 and parents[0]["status"] == "RUNNING", runs
        assert 1 <= len(children) <= len(SEEDS)
        assert any(r["status"] == "RUNNING" for r in children), "an interrupted trial's run stays RUNNING"
        # the restored sweep reused every run: same ids, nothing added beyond one per trial
        _, parents_after, children_after = _runs(sweep[store])
        assert {p.info.run_id for p in parents_after} == {rid for rid, r in runs.items() if r["role"] == "sweep"}
        before = {r["trial"]: rid for rid, r in runs.items() if r["role"] == "trial"}
        after = {r.data.tags["lucir.trial_id"]: r.info.run_id for r in children_after}
        assert all(after[t] == rid for t, rid in before.items())
    assert snap["parent_run_id"] is not None


class StubTrial:
    """What the callback reads of a ray.tune Trial."""

    def __init__(self, trial_id: str, config: dict, status: str = "RUNNING"):
        self.trial_id, self.config, self.status = trial_id, config, status

    def __str__(self):
        return f"stub_{self.trial_id}"

    def get_error(self):
        return "RuntimeError: boom in phase 1"


def _history_counts(c, run_ids) -> dict:
    return {(rid, k): len(c.get_metric_history(rid, k)) for rid in run_ids for k in METRICS}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replaying_the_hooks_after_a_restore_duplicates_nothing(sweep):
    """A restored driver sees trials and results again: same runs, no second copy of any (metric, step)."""
    uri = sweep["sqlite"]
    c, parents, children = _runs(uri)
    before = _history_counts(c, [r.info.run_id for r in children])
    docs = read_trials(sweep["exp"])
    cb = pickle.loads(pickle.dumps(MLflowCallback(uri, MLFLOW_EXPERIMENT, SWEEP, str(sweep["exp"]))))
    cb.setup()
    assert cb.parent_run_id == parents[0].info.run_id
    trials = [StubTrial(d["trial_id"], {**BASE, "seed": d["config"]["seed"]}) for d in docs]
    for t, d in zip(trials, docs):
        cb.on_trial_start(0, trials, t)
        for ph in d["phases"]:
            cb.on_trial_result(0, trials, t, {**ph, "training_iteration": ph["phase"] + 1})
        t.status = "TERMINATED"
        cb.on_trial_complete(0, trials, t)
    cb.on_experiment_end(trials)
    c, parents2, children2 = _runs(uri)
    assert [p.info.run_id for p in parents2] == [p.info.run_id for p in parents]
    assert sorted(r.info.run_id for r in children2) == sorted(r.info.run_id for r in children)
    assert _history_counts(c, [r.info.run_id for r in children2]) == before
    assert all(r.info.status == "FINISHED" for r in parents2 + children2)


def test_failed_trial_ends_its_run_failed_and_nan_is_logged(tmp_path, tmp_path_factory):
    exp = tmp_path / "exp"
    (exp / "trials").mkdir(parents=True)
    shutil.copy(_template(tmp_path_factory), exp / "mlflow.db")
    uri = default_tracking_uri(exp)
    cb = MLflowCallback(uri, "failing", "failing_sweep", str(exp))
    cb.setup()
    t = StubTrial("abc_00000", {**BASE, "seed": 3})
    cb.on_trial_start(0, [t], t)
    phase0 = {"phase": 0, "classes_seen": 4, "acc_cnn": 90.0, "acc_old_cnn": float("nan"), "eta": 1.5,
              "lambda": 0.0, "exemplars": 20, "not_a_metric": 7, "config": {"x": 1}}
    cb.on_trial_result(0, [t], t, phase0)
    t.status = "ERROR"
    cb.on_trial_error(0, [t], t)
    cb.on_experiment_end([t])
    c, parents, children = _runs_named(uri, "failing")
    assert len(children) == 1 and children[0].info.status == "FAILED"
    run = children[0]
    assert run.data.tags["lucir.status"] == "ERROR" and "boom" in run.data.tags["lucir.error"]
    assert run.data.tags["seed"] == "3" and run.data.params["seed"] == "3"
    assert math.isnan(c.get_metric_history(run.info.run_id, "acc_old_cnn")[0].value)
    assert "not_a_metric" not in run.data.metrics
    assert parents[0].info.status == "FINISHED"


def test_runs_of_trials_a_killed_driver_started_after_its_snapshot_are_ended_on_resume(tmp_path, tmp_path_factory):
    """Driver 1 starts a, b and c and is killed; Tune's snapshot knew only a.  b had finished every phase (the
    resumed search keeps it), c was cut and its config runs again as d.  After driver 2's sweep no run is left
    RUNNING: b's ends FINISHED (TERMINATED), c's KILLED (ABANDONED), a's and d's FINISHED."""
    from tune.experiment import TrialStatusCallback

    exp = tmp_path / "exp"
    (exp / "trials").mkdir(parents=True)
    shutil.copy(_template(tmp_path_factory), exp / "mlflow.db")
    uri = default_tracking_uri(exp)
    cfg = {t: {**BASE, "seed": i} for i, t in enumerate("abc")}

    def rec(tid, config, n):
        (exp / "trials" / f"{tid}.json").write_text(json.dumps({
            "trial_id": tid, "config": config, "num_phases": 2, "status": "RUNNING",
            "phases": [{"phase": i, "avg_inc_acc_cnn": 90.0 - i} for i in range(n)]}))

    cb = MLflowCallback(uri, MLFLOW_EXPERIMENT, SWEEP, str(exp))
    cb.setup()
    first = [StubTrial(t, cfg[t]) for t in "abc"]
    for t in first:
        cb.on_trial_start(0, first, t)
    cb.flush()
    for t, n in zip("abc", (3, 3, 1)):
        rec(t, cfg[t], n)
    # driver 2: a restored, d runs c's config again
    trials = [StubTrial("a", cfg["a"], "TERMINATED"), StubTrial("d", cfg["c"], "TERMINATED")]
    rec("d", cfg["c"], 3)
    cb2 = pickle.loads(pickle.dumps(cb))
    cb2.setup()
    status = TrialStatusCallback(str(exp))
    for t in trials:
        cb2.on_trial_start(0, trials, t)
        status.on_trial_complete(0, trials, t)
        cb2.on_trial_complete(0, trials, t)
    status.on_experiment_end(trials)
    cb2.on_experiment_end(trials)
    c, parents, children = _runs_named(uri, MLFLOW_EXPERIMENT)
    got = {r.data.tags["lucir.trial_id"]: (r.info.status, r.data.tags.get("lucir.status")) for r in children}
    assert got == {"a": ("FINISHED", "TERMINATED"), "b": ("FINISHED", "TERMINATED"),
                   "c": ("KILLED", "ABANDONED"), "d": ("FINISHED", "TERMINATED")}
    assert [p.info.status for p in parents] == ["FINISHED"]


def _runs_named(uri, name):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    e = c.get_experiment_by_name(name)
    runs = c.search_runs([e.experiment_id])
    return (c, [r for r in runs if r.data.tags.get("lucir.role") == "sweep"],
            [r for r in runs if "mlflow.parentRunId" in r.data.tags])


# --------------------------------------------------------------------------------- check_tracking_uri
def test_check_tracking_uri_fails_fast_on_a_closed_port():
    port = _free_port()  # nothing listens there
    uri = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(ValueError) as e:
        check_tracking_uri(uri)
    assert time.monotonic() - t0 < 8
    assert uri in str(e.value) and "not reachable" in str(e.value)


def test_check_tracking_uri_refuses_unusable_stores(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    bad = f"sqlite:///{blocker}/sub/mlflow.db"  # its folder cannot be created under a file
    with pytest.raises(ValueError, match="cannot be created") as e:
        check_tracking_uri(bad)
    assert bad in str(e.value)
    with pytest.raises(ValueError, match="file store"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    with pytest.raises(ValueError, match="file store"):
        check_tracking_uri(f"file://{tmp_path}/mlruns")
    with pytest.raises(ValueError, match="empty"):
        check_tracking_uri("")
    good = f"sqlite:///{tmp_path}/new/folder/mlflow.db"
    check_tracking_uri(good)
    assert (tmp_path / "new" / "folder").is_dir()


def test_parent_run_is_found_again_for_the_same_folder_only(tmp_path, tmp_path_factory):
    """Restore finds the sweep's parent (by lucir_experiment.json, else by tag + folder); a sweep of the
    same name in another folder gets its own parent."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_template(tmp_path_factory), db)
    uri = f"sqlite:///{db}"
    a, b = tmp_path / "a" / "sweep", tmp_path / "b" / "sweep"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "lucir_experiment.json").write_text(json.dumps({"name": "sweep", "parent_run_id": None}))
    cb_a = MLflowCallback(uri, "shared", "sweep", str(a))
    cb_a.setup()
    assert json.loads((a / "lucir_experiment.json").read_text())["parent_run_id"] == cb_a.parent_run_id
    cb_b = MLflowCallback(uri, "shared", "sweep", str(b))  # no lucir_experiment.json there
    cb_b.setup()
    assert cb_b.parent_run_id != cb_a.parent_run_id
    again = pickle.loads(pickle.dumps(MLflowCallback(uri, "shared", "sweep", str(b))))
    again.setup()  # found by tag and folder
    assert again.parent_run_id == cb_b.parent_run_id
    moved = tmp_path / "moved" / "sweep"
    shutil.copytree(a, moved)
    cb_moved = MLflowCallback(uri, "shared", "sweep", str(moved))
    cb_moved.setup()  # found through parent_run_id of the moved lucir_experiment.json
    assert cb_moved.parent_run_id == cb_a.parent_run_id
    _, parents, _ = _runs_named(uri, "shared")
    assert len(parents) == 2


_RESTART: dict = {}  # the servers of the restart test (module state: Tune pickles its callbacks)


def _restart_server_soon() -> None:
    servers = _RESTART["servers"]
    servers[0].stop()  # down now, before the MLflow callback sees this result
    import threading as _threading

    def back():
        time.sleep(2)
        servers.append(MlflowServer(_RESTART["folder"], port=servers[0].port))
        _RESTART["restarted"].set()

    _threading.Thread(target=back, daemon=True).start()


try:
    from ray.tune import Callback as _TuneCallback
except ImportError:  # pragma: no cover
    _TuneCallback = object


class _RestartServer(_TuneCallback):
    """Stops the tracking server at the sweep's first result and starts it again 2 s later."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        servers = _RESTART.get("servers")
        if servers and len(servers) == 1 and servers[0].proc.poll() is None:
            _restart_server_soon()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_restarting_tracking_server_neither_stops_the_sweep_nor_loses_a_metric(tmp_path):
    """The `mlflow server` is stopped right after the first result and starts again 2 s later on the same
    port: the sweep finishes (no hook waits for MLflow), and once the server is back every phase of every
    trial is in its run and every run ended."""
    import threading as _threading

    import ray
    from ray import tune

    folder = tmp_path / "server"
    servers = _RESTART["servers"] = [MlflowServer(folder)]
    restarted = _RESTART["restarted"] = _threading.Event()
    _RESTART["folder"] = folder
    try:
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        url = servers[0].wait()
        exp = tmp_path / "storage" / "restart"
        (exp / "trials").mkdir(parents=True)
        cb = MLflowCallback(url, "restart", "restart", str(exp), record_parent_run_id=False)
        t0 = time.monotonic()
        grid = tune.Tuner(tune.with_resources(make_trainable(str(exp)), {"cpu": 1}),
                          param_space={**BASE, "seed": tune.grid_search(SEEDS)},
                          tune_config=tune.TuneConfig(max_concurrent_trials=2),
                          run_config=tune.RunConfig(name="restart", storage_path=str(tmp_path / "storage"),
                                                    verbose=0, callbacks=[_RestartServer(), cb])).fit()
        assert not grid.errors and restarted.wait(60)
        servers[-1].wait()
        print(f"\nsweep with a restarting server: {time.monotonic() - t0:.0f} s")
        c, parents, children = _runs_named(url, "restart")
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == len(SEEDS)
        for run in children:
            assert run.info.status == "FINISHED"
            steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "acc_cnn"))
            assert steps == list(range(N_PHASES)), (run.info.run_name, steps)  # no phase lost, none twice
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for srv in servers:
            srv.stop()
