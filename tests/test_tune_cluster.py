"""ray_cluster.yaml against the schema in the ray wheel (offline), storage paths, and a real two-node
Ray cluster on this machine: trials placed on both nodes, all results in one shared storage path.

The two-node test starts its own Ray nodes (Ray listens on the machine's address, not 127.0.0.1: it
replaces a loopback --node-ip-address; the nodes run with token authentication disabled, see the fixture) with ``ray start --block`` in a new session and its own
``--temp-dir``; it stops them by the pids it started (SIGTERM to ``ray start --block``, which stops
the node's processes, then SIGKILL to the process groups it created if anything is left).  It never
runs ``ray stop``, which would kill every Ray process on the machine, other users' included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tune.cluster import ClusterConfigError, resolve_storage_path, validate_cluster_yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"


# ------------------------------------------------------------------------------ ray_cluster.yaml
def test_ray_cluster_yaml_is_valid_for_ray_up():
    cfg = validate_cluster_yaml(CLUSTER_YAML)
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types
    gpu_types = [n for n, t in types.items() if n != head and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker node type"
    # prepare_config merged the common setup commands into the workers' (they install this project)
    assert any("pip install" in c and "lucir" in c for c in cfg["worker_setup_commands"])
    # shared storage mounted on every node, and the MLflow server started on the head
    raw = CLUSTER_YAML.read_text()
    assert "/mnt/lucir" in raw and "mlflow server" in raw
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


def _broken(tmp_path, mutate) -> Path:
    cfg = yaml.safe_load(CLUSTER_YAML.read_text())
    mutate(cfg)
    p = tmp_path / "broken.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("mutate, words", [
    (lambda c: c.__setitem__("gpu_count", 3), ["gpu_count", "not allowed"]),
    (lambda c: c.__setitem__("max_workers", "eight"), ["max_workers", "integer"]),
    (lambda c: c["available_node_types"]["gpu_1x"].__setitem__("resources", {"GPU": "one"}), ["GPU"]),
    (lambda c: c.__setitem__("head_node_type", "nope"), ["head_node_type", "nope"]),
    (lambda c: [c["available_node_types"][n]["resources"].pop("GPU", None)
                for n in c["available_node_types"]], ["GPU"]),
    (lambda c: c["available_node_types"]["gpu_1x"].update(min_workers=9, max_workers=2), ["min_workers"]),
], ids=["unknown-top-level-key", "wrong-type", "wrong-nested-type", "unknown-head-type", "no-gpu-worker",
        "min-above-max"])
def test_broken_cluster_yaml_fails_with_a_message_naming_the_key(tmp_path, mutate, words):
    with pytest.raises(ClusterConfigError) as e:
        validate_cluster_yaml(_broken(tmp_path, mutate))
    for w in words:
        assert w in str(e.value)


def test_cluster_cli_checks_the_yaml(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "tune.cluster", str(CLUSTER_YAML)], capture_output=True,
                        text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "gpu_1x" in ok.stdout and "ok" in ok.stdout
    bad = _broken(tmp_path, lambda c: c.__setitem__("gpu_count", 3))
    r = subprocess.run([sys.executable, "-m", "tune.cluster", str(bad)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "gpu_count" in r.stderr


def test_resolve_storage_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_storage_path("s3://bucket/lucir") == "s3://bucket/lucir"
    assert resolve_storage_path("results") == str(tmp_path / "results")
    assert resolve_storage_path(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    with pytest.raises(ValueError, match="scheme"):
        resolve_storage_path("ftp://host/x")
    with pytest.raises(ValueError, match="empty"):
        resolve_storage_path(" ")


# ------------------------------------------------------------------------------ two-node cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as out:
        return subprocess.Popen([str(ray_bin), "start", *args, "--disable-usage-stats", "--block"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` we started, and everything in the session it leads."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes on SIGTERM
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session/process group created for this node only
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Ray 2.60 turns token authentication on for `ray start` when ~/.ray/auth_token exists (any local
    # ray.init() writes it) but a driver connecting by address does not send it unless RAY_AUTH_MODE is
    # set: these throw-away nodes and this driver run with authentication explicitly disabled.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _free_port()
    # a short private temp dir (Unix socket paths are limited to 107 bytes): `ray_current_cluster`
    # is written there, so nobody else's ray.init() on this machine connects to these nodes
    temp_dir = Path(f"/tmp/lrc_{uuid.uuid4().hex[:8]}")
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start(["--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                                 "--resources", '{"head_node": 1}', f"--temp-dir={temp_dir}",
                                 "--include-dashboard=false"], tmp_path / "head.log"))
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not start: {(tmp_path / 'head.log').read_text()[-3000:]}")
                time.sleep(0.3)
        # the second node joins with its own resources; it shares the head's temp dir (ray's default)
        procs.append(_ray_start([f"--address=127.0.0.1:{port}", "--num-cpus=1", "--num-gpus=0",
                                 "--resources", '{"worker_node": 1}'], tmp_path / "worker.log"))
        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING", log_to_driver=False)
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if procs[1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"second ray node did not join: {(tmp_path / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for p in reversed(procs):
            _stop(p)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_node_cluster_places_trials_on_both_nodes_with_one_storage_path(two_node_cluster, tmp_path):
    import json

    import ray
    from ray import tune

    from tune.cluster import verify_shared_storage

    nodes = two_node_cluster
    by_resource = {next(k for k in ("head_node", "worker_node") if k in res): nid for nid, res in nodes.items()}
    assert set(by_resource) == {"head_node", "worker_node"}

    storage = tmp_path / "shared"
    assert sorted(verify_shared_storage(str(storage))) == sorted(nodes)

    def trainable(config):
        import json as _json
        import os as _os
        import time as _time

        import ray as _ray
        from ray import tune as _tune

        node = _ray.get_runtime_context().get_node_id()
        ctx = _tune.get_context()
        folder = _os.path.join(config["exp_dir"], "trials")
        _os.makedirs(folder, exist_ok=True)
        with open(_os.path.join(folder, f"{ctx.get_trial_id()}.json"), "w") as f:
            _json.dump({"trial_id": ctx.get_trial_id(), "node_id": node, "pid": _os.getpid()}, f)
        _time.sleep(3.0)  # both trials are alive at once: 1 CPU each, 1 CPU per node
        for phase in range(2):
            _tune.report({"phase": phase, "node_id": node, "x": config["x"] * phase})

    name = "two_node"
    exp_dir = storage / name
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2]), "exp_dir": str(exp_dir)},
        tune_config=tune.TuneConfig(max_concurrent_trials=2),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    assert len(grid) == 2
    used = {r.metrics["node_id"] for r in grid}
    assert used == set(nodes), f"trials ran on {used}, cluster nodes {set(nodes)}"
    # everything sits in the one storage path: Ray's experiment state, each trial's folder, our files
    assert (exp_dir / "tuner.pkl").exists()
    assert any(exp_dir.glob("experiment_state-*.json"))
    for r in grid:
        assert Path(r.path).resolve().parent == exp_dir.resolve()
        assert (Path(r.path) / "result.json").exists()
    files = [json.loads(p.read_text()) for p in (exp_dir / "trials").glob("*.json")]
    assert {f["node_id"] for f in files} == set(nodes)
    assert ray.is_initialized()
