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
from tune_fixtures import free_port, lucir_in_process
import yaml

from tune.cluster import ClusterConfigError, validate_cluster_yaml

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


# ------------------------------------------------------------------------------ cluster-safe command lines
def test_cluster_address_follows_init_ray(monkeypatch):
    from tune.cluster import cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None and cluster_address("local") is None and cluster_address("") is None
    assert cluster_address("auto") == "auto" and cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # `ray job submit` sets it
    assert cluster_address(None) == "10.0.0.2:6379" and cluster_address("local") is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cmd", ["ablate", "search"])
def test_cluster_address_refuses_a_relative_or_default_out(cmd, tmp_path, monkeypatch, capsys):
    """Refused before any Ray work (the address is a closed port: nothing may connect to it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    closed = f"127.0.0.1:{free_port()}"
    for argv, env in (([], None), (["--out", "experiments/x"], None), ([], closed)):
        if env:
            monkeypatch.setenv("RAY_ADDRESS", env)
        rc, err = lucir_in_process(capsys, cmd, *(["--address", closed] if not env else []), *argv, "--no-mlflow")
        assert rc == 2, err
        assert "--out" in err and "absolute path on storage shared by every node" in err and closed in err
    assert not (tmp_path / "experiments").exists()


@pytest.mark.timeout(120)
def test_gpus_per_trial_above_one_is_refused(tmp_path, capsys):
    rc, err = lucir_in_process(capsys, "ablate", "--gpus-per-trial", "2", "--out", str(tmp_path / "x"), "--no-mlflow")
    assert rc == 2 and "--gpus-per-trial=2.0" in err and "allowed 0 (CPU), a fraction in (0, 1]" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.timeout(120)
def test_cluster_address_never_downloads_on_the_driver(tmp_path, monkeypatch, capsys):
    import torchvision

    def no_download(*a, **k):
        raise AssertionError("the driver tried to download CIFAR-100")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_download)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    missing = tmp_path / "cifar"
    rc, err = lucir_in_process(capsys, "ablate", "--address", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "x"),
                     "--dataset", "cifar100", "--data-root", str(missing), "--no-mlflow")
    assert rc == 2 and str(missing) in err and "cifar-100-binary" in err and "nothing is downloaded" in err
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ two-node cluster
def _node_env() -> dict:
    # Ray 2.60 turns token authentication on for `ray start` when ~/.ray/auth_token exists (any local
    # ray.init() writes it), but a driver joining by address sends the token only when RAY_AUTH_MODE=token
    # was set before Ray read its config: nodes and driver get it in their environment and share the
    # token of ~/.ray/auth_token (created by the head when missing).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _ray_start(args: list[str], log: Path, prefix: list[str] = ()) -> subprocess.Popen:
    ray_bin = Path(sys.executable).with_name("ray")
    with open(log, "w") as out:
        return subprocess.Popen([*prefix, str(ray_bin), "start", *args, "--disable-usage-stats", "--block"],
                                stdout=out, stderr=subprocess.STDOUT, env=_node_env(), start_new_session=True)


def _node_local_prefix(folder: Path) -> list[str] | None:
    """A command prefix that runs a node in its own mount namespace with an empty tmpfs over ``folder``:
    that node sees a different folder at the same path (a node's local disk, not the shared mount), the
    other processes see the real one.  ``unshare`` execs in place, so the pid stays the node's.  None when
    this machine allows no mount namespace (the test then uses a folder that only the driver sees)."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    prefix = ["unshare", *user, "--mount", "--propagation", "private", "sh", "-c",
              'mount -t tmpfs -o size=1m lucir-node-local "$0" && exec "$@"', str(folder)]
    if shutil.which("unshare") is None:
        return None
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if ok else None


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
    """Head (1 CPU, resource head_node) + a second node (1 CPU, resource worker_node); yields
    ``(address, node_local)``: ``node_local`` is a folder that the second node sees as an empty folder of
    its own (see ``_node_local_prefix``), or None where this machine allows no mount namespace."""
    node_local = tmp_path / "node_local"
    node_local.mkdir()
    prefix = _node_local_prefix(node_local)
    port = free_port()
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
                                 "--resources", '{"worker_node": 1}'], tmp_path / "worker.log", prefix or []))
        yield f"127.0.0.1:{port}", (node_local if prefix else None)
    finally:
        for p in reversed(procs):
            _stop(p)
        if os.environ.get("LUCIR_KEEP_RAY_TMP") != "1":
            shutil.rmtree(temp_dir, ignore_errors=True)


# The driver runs in its own process (as `lucir ablate --address ...` would): Ray reads its
# authentication mode once per process, and this pytest process may already hold a local Ray's.
DRIVER = r"""
import contextlib, io, json, os, sys, time
import ray
from ray import tune
from tune.cluster import verify_shared_storage

address, storage, local = sys.argv[1], sys.argv[2], sys.argv[3]
ray.init(address=address, logging_level="WARNING", log_to_driver=False)
deadline = time.monotonic() + 90
while len([n for n in ray.nodes() if n["Alive"]]) < 2:
    assert time.monotonic() < deadline, "the second node did not join"
    time.sleep(0.3)
nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
checked = verify_shared_storage(storage)


def lucir(*argv):
    from lucir.cli import main as lucir_main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = lucir_main(list(argv))
    return {"rc": rc, "stderr": err.getvalue()}


# the real runner on this cluster: two slots at once, 1 CPU each (one per node), on the shared storage path
out = {"nodes": nodes, "checked": checked,
       "real": lucir("ablate", "--address", address, "--out", os.path.join(storage, "two_node"), "--no-mlflow",
                     "--presets", "cn,lucir", "--epochs", "1", "--cpus-per-trial", "1", "--max-concurrent", "2")}

# A folder that is not shared: `local` (the second node sees its own empty folder there), else a path
# that exists only in this process (/proc/self/fd/N of an open directory).
if not local:
    d = os.path.join(storage, "driver_only")
    os.makedirs(d)
    local = f"/proc/self/fd/{os.open(d, os.O_RDONLY)}"
try:
    verify_shared_storage(os.path.join(local, "exp"))
    out["local_error"] = None
except ValueError as exc:
    out["local_error"] = str(exc)
# lucir ablate/search with this cluster's address: refused after Ray is up, before Tuner.fit
out["ablate"] = lucir("ablate", "--address", address, "--out", os.path.join(local, "ablate"), "--no-mlflow",
                      "--epochs", "1")
_left = os.path.join(local, "ablate")
out["ablate_left"] = sorted(os.listdir(_left)) if os.path.isdir(_left) else []
cifar = os.path.join(local, "data", "cifar-100-binary")
os.makedirs(cifar)
for n in ("train.bin", "test.bin", "fine_label_names.txt"):  # the driver's check looks for the files only
    open(os.path.join(cifar, n), "w").close()
out["search"] = lucir("search", "--address", address, "--out", os.path.join(storage, "search"), "--no-mlflow",
                      "--dataset", "cifar100", "--data-root", os.path.join(local, "data"), "--trials", "1")
out["data"] = os.path.join(local, "data")
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_node_cluster_places_trials_on_both_nodes_with_one_storage_path(two_node_cluster, tmp_path):
    import json

    address, node_local = two_node_cluster
    storage = tmp_path / "shared"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(script), address, str(storage), str(node_local or "")],
                          capture_output=True, text=True, timeout=200, env=_node_env(), cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    nodes = out["nodes"]
    kinds = {next(k for k in ("head_node", "worker_node") if k in res) for res in nodes.values()}
    assert kinds == {"head_node", "worker_node"}, nodes
    assert sorted(out["checked"]) == sorted(nodes), "every node sees the shared storage path"
    # `lucir ablate --address`: both slots finished, trained on both nodes, everything in the one storage path
    assert out["real"]["rc"] == 0, out["real"]["stderr"][-3000:]
    from lucir.record import read_trials

    exp_dir = storage / "two_node"
    recs = read_trials(exp_dir)
    assert len(recs) == 2 and all(r["status"] == "TERMINATED" and len(r["phases"]) == 4 for r in recs), recs
    used = {s["node"] for r in recs for s in r["starts"]}
    assert used == set(nodes), f"slots trained on {used}, cluster nodes {set(nodes)}"
    assert len(list((exp_dir / "ray").rglob("result.json"))) == 2  # Ray Tune's files: under the folder too

    # a folder that is not shared (the second node has its own folder at that path) is refused, naming the
    # node; `lucir ablate` and `lucir search` refuse it after Ray is up, before Tuner.fit
    worker = next(n for n, res in nodes.items() if "worker_node" in res)
    head = next(n for n in nodes if n != worker)
    for text in (out["local_error"], out["ablate"]["stderr"], out["search"]["stderr"]):
        assert text and worker in text, out
        if node_local is not None:  # only the second node has a view of its own
            assert head not in text, text
    assert "not shared by every node" in out["local_error"]
    ablate = out["ablate"]
    assert ablate["rc"] == 2 and "--out" in ablate["stderr"] and "shared by every node" in ablate["stderr"]
    assert "lucir_experiment.json" not in out["ablate_left"]  # the same --out works once the mount is fixed
    search = out["search"]
    assert search["rc"] == 2 and "--data-root" in search["stderr"] and "not visible on every node" in search["stderr"]
    assert "train.bin" in search["stderr"] and "never download" in search["stderr"]
    assert not list((storage / "search").glob("lucir_trainable*")), "no trial started"
