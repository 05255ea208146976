"""Cluster helpers: offline check of ``ray_cluster.yaml``, the shared ``storage_path`` (DESIGN §6).

``validate_cluster_yaml(path)`` runs, without cloud credentials or network, the checks ``ray up``
runs before it talks to the cloud: the JSON schema that ships in the ray wheel
(``ray/autoscaler/ray-schema.json``) on the file as written (unknown keys, wrong types), then
``prepare_config`` (provider defaults merged, setup commands merged, docker checked, per-type worker
limits) and ``validate_config`` on the result; plus this project's own expectations (a GPU worker type,
a head type that exists, worker limits that fit ``max_workers``).  Command line::

    python -m tune.cluster ray_cluster.yaml

``verify_shared_storage`` makes sure a sweep's folder (``--out``) is one that every node sees (the same
folder on a shared file system, not a local folder of the same name); ``verify_dataset_on_nodes`` that every node sees a sweep's data; ``cluster_address`` tells a sweep that
joins a cluster (then ``lucir ablate``/``search`` run both checks before ``Tuner.fit``) from a local one.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any


class ClusterConfigError(ValueError):
    """``ray_cluster.yaml`` breaks Ray's schema or this project's expectations; the message names where."""


def _schema() -> dict:
    import ray.autoscaler

    with open(Path(ray.autoscaler.__file__).parent / "ray-schema.json") as f:
        return json.load(f)


def _where(err) -> str:
    path = "/".join(str(p) for p in err.absolute_path)
    return path or "<top level>"


def validate_cluster_yaml(path: str | os.PathLike, require_gpu: bool = True) -> dict[str, Any]:
    """Validate a Ray cluster launcher YAML offline; return the prepared config (defaults filled in).

    Raises ``ClusterConfigError`` (a ``ValueError``) naming the file, the key path and the problem.
    """
    import jsonschema
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClusterConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ClusterConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: a cluster config is a mapping, got {type(raw).__name__}")

    # 1. the schema on the file as written: prepare_config would merge defaults over unknown keys first
    validator = jsonschema.Draft7Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {_where(e)}: {e.message}" for e in errors[:10]]
        raise ClusterConfigError(f"{path}: does not match Ray's cluster schema (ray/autoscaler/ray-schema.json):\n"
                                 + "\n".join(lines))
    for key in ("provider", "available_node_types", "head_node_type"):
        if key not in raw:
            raise ClusterConfigError(f"{path}: {key!r} is missing (required for a multi-node-type cluster)")
    types = raw["available_node_types"]
    if raw["head_node_type"] not in types:
        raise ClusterConfigError(f"{path}: head_node_type={raw['head_node_type']!r} is not one of "
                                 f"available_node_types {sorted(types)}")

    # 2. what `ray up` does before it contacts the provider
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise ClusterConfigError(f"{path}: after Ray's defaults were filled in, {_where(exc)}: {exc.message}") from exc
    except (ValueError, KeyError, AssertionError, RuntimeError) as exc:
        raise ClusterConfigError(f"{path}: rejected by ray.autoscaler prepare/validate_config: {exc}") from exc

    # 3. this project's expectations
    total = prepared.get("max_workers", 0)
    workers = {n: t for n, t in prepared["available_node_types"].items() if n != prepared["head_node_type"]}
    for name, t in workers.items():
        if t.get("min_workers", 0) > t.get("max_workers", 0):
            raise ClusterConfigError(f"{path}: available_node_types/{name}: min_workers={t['min_workers']} > "
                                     f"max_workers={t['max_workers']}")
        if t.get("min_workers", 0) > total:
            raise ClusterConfigError(f"{path}: available_node_types/{name}: min_workers={t['min_workers']} > "
                                     f"the cluster's max_workers={total}")
    if require_gpu and not any(float(t.get("resources", {}).get("GPU", 0)) > 0 for t in workers.values()):
        raise ClusterConfigError(f"{path}: no worker node type declares GPUs (resources: {{\"GPU\": N}}); "
                                 f"worker types: {sorted(workers)}")
    commands = " ".join(str(c) for c in prepared.get("worker_setup_commands", []))
    if "pip install" not in commands:
        raise ClusterConfigError(f"{path}: setup_commands never `pip install` this project on the workers")
    return prepared


def summarize(prepared: dict) -> str:
    lines = [f"cluster {prepared.get('cluster_name')!r}: provider {prepared['provider'].get('type')}, "
             f"max_workers {prepared.get('max_workers')}"]
    for name, t in prepared["available_node_types"].items():
        role = "head" if name == prepared["head_node_type"] else "worker"
        inst = t.get("node_config", {}).get("InstanceType", "")
        lines.append(f"  {role:6s} {name:10s} {inst:14s} resources={t.get('resources', {})} "
                     f"workers {t.get('min_workers', 0)}..{t.get('max_workers', 0)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- storage
def cluster_address(address: str | None) -> str | None:
    """The Ray address a sweep joins, as ``tune.sweep.ray_session`` resolves it (``--address``, else
    ``$RAY_ADDRESS``), or None when the sweep starts its own local Ray (no address, or ``"local"``).
    With an address the trials may run on other machines: paths must be absolute and shared."""
    if address in (None, "") and os.environ.get("RAY_ADDRESS"):  # `ray submit` / Ray jobs set it
        address = os.environ["RAY_ADDRESS"]
    return None if address in (None, "", "local") else str(address)


def _nodes_see(paths: list[str], timeout_s: float, what: str) -> list[tuple[str, str, list[bool]]]:
    """Ask every alive Ray node which of ``paths`` exist there: (node id, node IP, one bool per path).

    A zero-CPU task pinned to each node (hard node affinity) runs ``os.path.exists`` there, so a node
    whose CPUs are all taken still answers, and a head with ``CPU: 0`` too.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def _exist(ps: list[str]) -> list[bool]:
        return [os.path.exists(p) for p in ps]

    nodes = [(n["NodeID"], n.get("NodeManagerAddress", "?")) for n in ray.nodes() if n.get("Alive")]
    refs = [_exist.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n, soft=False))
            .remote(list(paths)) for n, _ in nodes]
    t0 = time.monotonic()
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [f"{nodes[refs.index(r)][0][:12]} ({nodes[refs.index(r)][1]})" for r in pending]
        raise ValueError(f"{what}: node(s) {late} did not answer the shared-storage check within "
                         f"{timeout_s:.0f} s")
    results = ray.get(refs, timeout=max(1.0, timeout_s - (time.monotonic() - t0)))
    return [(n, ip, r) for (n, ip), r in zip(nodes, results)]


def _names(nodes: list[tuple[str, str, list[bool]]]) -> str:
    return ", ".join(f"{n} ({ip})" for n, ip, _ in nodes)


def verify_shared_storage(storage_path: str, timeout_s: float = 60.0) -> list[str]:
    """Check that every alive Ray node sees the *same* folder at ``storage_path``.

    The driver writes a marker file with a fresh random name into the folder; a zero-CPU task pinned to
    each node checks that it exists there.  A node with its own local folder at that path (not the
    shared mount) does not see the marker.  Returns the node ids checked; raises ``ValueError`` naming
    the nodes that do not see it.  Call after ``ray.init``.  Nodes that join later (autoscaling) are not
    checked: they come from the same node config.
    """
    s = str(Path(storage_path).absolute())
    Path(s).mkdir(parents=True, exist_ok=True)
    marker = Path(s) / f".lucir-shared-{uuid.uuid4().hex}"
    marker.write_text("lucir")
    try:
        results = _nodes_see([str(marker)], timeout_s, f"storage {s!r}")
    finally:
        try:
            marker.unlink()
        except OSError:
            pass
    blind = [r for r in results if not r[2][0]]
    if blind:
        raise ValueError(f"{s} is not shared by every node: node(s) {_names(blind)} of {len(results)} do not "
                         "see the folder the driver writes (a marker file written there is missing on them). Use "
                         "an absolute path on storage shared by every node, mounted at the same path on each "
                         "(NFS/EFS, e.g. /mnt/lucir/experiments/<name>)")
    return [n for n, _, _ in results]


def dataset_files(dataset: str, root: str | os.PathLike) -> list[str]:
    """The files or folders of ``dataset`` under ``root`` as the driver sees them (what a node must see
    too); ``[]`` for digits (built in).  Raises ``DatasetMissingError`` when the driver lacks them."""
    from lucir.data import CIFAR_HELP, DatasetMissingError, cifar100_paths, count_imagefolder_classes

    root = Path(root).absolute()
    if dataset == "cifar100":
        found = cifar100_paths(root)
        if found is None:
            raise DatasetMissingError(CIFAR_HELP.format(root=root, why="not on the driver either"))
        d, kind = found
        names = ("train", "test", "meta") if kind == "python" else ("train.bin", "test.bin", "fine_label_names.txt")
        return [str(d / n) for n in names]
    if dataset == "imagefolder":
        count_imagefolder_classes(root)
        return [str(root / "train"), str(root / "val")]
    return []


def verify_dataset_on_nodes(dataset: str, root: str | os.PathLike, timeout_s: float = 60.0) -> list[str]:
    """Check that every alive Ray node sees the dataset's files under ``root`` (the paths the driver found:
    trials read them, and never download).  Read-only: a dataset may sit on a read-only mount, and a node
    may hold its own copy at the same path.  Returns the node ids checked; raises ``ValueError`` naming the
    nodes and the missing path.  Call after ``ray.init``."""
    files = dataset_files(dataset, root)
    if not files:
        return []
    results = _nodes_see(files, timeout_s, f"data_root {root!r}")
    blind = [r for r in results if not all(r[2])]
    if blind:
        missing = next(f for f, ok in zip(files, blind[0][2]) if not ok)
        raise ValueError(f"{Path(root).absolute()} is not visible on every node: node(s) {_names(blind)} of "
                         f"{len(results)} do not see {missing}. Trials never download: put the {dataset} data at "
                         "this path on storage shared by every node (or a copy at the same path on each)")
    return [n for n, _, _ in results]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m tune.cluster ray_cluster.yaml   (offline check against Ray's schema)")
        return 2
    try:
        prepared = validate_cluster_yaml(argv[0])
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summarize(prepared))
    print("ok: valid for ray up (offline check)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
