"""ray_cluster.yaml against the schema in the ray wheel (offline), storage paths, and a real two-node
Ray cluster on this machine: trials placed on both nodes, all results in one shared storage path.

The two-node test starts its own Ray nodes (Ray listens on the machine's address, not 127.0.0.1: it
replaces a loopback --node-ip-address; nodes and driver use Ray's token authentication, see the fixture) with ``ray start --block`` in a new session and its own
``--temp-dir``; it stops them by the pids it started (SIGTERM to ``ray start --block``, which stops
the node's processes, then SIGKILL to the process groups it created if anything is left).  It never
runs ``ray stop``, which would kill every Ray process on the machine, other users' included.
"""

from __future__ import annotations

import os
import shutil
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


def _node_env() -> dict:
    # Ray 2.60 turns token authentication on for `ray start` when ~/.ray/auth_token exists (any local
    # ray.init() writes it), but a driver joining by address sends the token only when RAY_AUTH_MODE=token
    # was set before Ray read its config: nodes and driver get it in their environment and share the
    # token of ~/.ray/auth_token (created by the head when missing).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    with open(log, "w") as out:
        return subprocess.Popen([str(ray_bin), "start", *args, "--disable-usage-stats", "--block"],
                                stdout=out, stderr=subprocess.STDOUT, env=_node_env(), start_new_session=True)


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
def two_node_cluster(tmp_path):
    """Head (1 CPU, resource head_node) + a second node (1 CPU, resource worker_node); yields the address."""
    port = _free_port()
    # a short private temp dir (Unix socket paths are limited to 107 bytes): `ray_current_cluster`
    # is written there, so nobody else's ray.init() on this machine connects to these nodes
    temp_dir = Path(f"/tmp/lrc_{uuid.uuid4().hex[:8]}")
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_ray_start(["--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                                 "--resources", '{"head_node": 1}', f"--temp-dir={temp_dir}",
                                 "--include-dashboard=false"], tmp_path / "head.log"))
        deadline = time.monotonic() + 90
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
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):
            _stop(p)
        if os.environ.get("LUCIR_KEEP_RAY_TMP") != "1":
            shutil.rmtree(temp_dir, ignore_errors=True)


# The driver runs in its own process (as `lucir ablate --address ...` would): Ray reads its
# authentication mode once per process, and this pytest process may already hold a local Ray's.
DRIVER = r"""
import json, os, sys, time
import ray
from ray import tune
from tune.cluster import verify_shared_storage

address, storage = sys.argv[1], sys.argv[2]
ray.init(address=address, logging_level="WARNING", log_to_driver=False)
deadline = time.monotonic() + 90
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    assert time.monotonic() < deadline, "the second node did not join"
    time.sleep(0.3)
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
checked = verify_shared_storage(storage)


def trainable(config):
    import json as _json, os as _os, time as _time
    import ray as _ray
    from ray import tune as _tune

    node = _ray.get_runtime_context().get_node_id()
    tid = _tune.get_context().get_trial_id()
    folder = _os.path.join(config["exp_dir"], "trials")
    _os.makedirs(folder, exist_ok=True)
    with open(_os.path.join(folder, f"{tid}.json"), "w") as f:
        _json.dump({"trial_id": tid, "node_id": node, "pid": _os.getpid()}, f)
    _time.sleep(3.0)  # both trials alive at once: 1 CPU each, 1 CPU per node
    for phase in range(2):
        _tune.report({"phase": phase, "node_id": node, "x": config["x"] * phase})


name = "two_node"
tuner = tune.Tuner(
    tune.with_resources(trainable, {"cpu": 1}),
    param_space={"x": tune.grid_search([1, 2]), "exp_dir": os.path.join(storage, name)},
    tune_config=tune.TuneConfig(max_concurrent_trials=2),
    run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
)
grid = tuner.fit()
out = {"nodes": nodes, "checked": checked, "errors": [str(e) for e in grid.errors],
       "results": [{"node_id": r.metrics.get("node_id"), "path": r.path} for r in grid]}
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_node_cluster_places_trials_on_both_nodes_with_one_storage_path(two_node_cluster, tmp_path):
    import json

    storage = tmp_path / "shared"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(script), two_node_cluster, str(storage)], capture_output=True,
                          text=True, timeout=200, env=_node_env(), cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    nodes = out["nodes"]
    kinds = {next(k for k in ("head_node", "worker_node") if k in res) for res in nodes.values()}
    assert kinds == {"head_node", "worker_node"}, nodes
    assert sorted(out["checked"]) == sorted(nodes), "every node sees the shared storage path"
    assert not out["errors"]
    assert len(out["results"]) == 2
    used = {r["node_id"] for r in out["results"]}
    assert used == set(nodes), f"trials ran on {used}, cluster nodes {set(nodes)}"
    # everything sits in the one storage path: Ray's experiment state, each trial's folder, our files
    exp_dir = storage / "two_node"
    assert (exp_dir / "tuner.pkl").exists()
    assert any(exp_dir.glob("experiment_state-*.json"))
    for r in out["results"]:
        assert Path(r["path"]).resolve().parent == exp_dir.resolve()
        assert (Path(r["path"]) / "result.json").exists()
    files = [json.loads(p.read_text()) for p in (exp_dir / "trials").glob("*.json")]
    assert {f["node_id"] for f in files} == set(nodes)
