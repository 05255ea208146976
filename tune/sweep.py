"""The driver of a sweep: the experiment folder is the one truth, Ray Tune only executes (DESIGN §6, §7).

A sweep is a list of **slots** in ``lucir_experiment.json`` (grid points x seeds for ablate and confirm,
``0..trials-1`` for a search), written once, after every check passed.  A slot is done when its record
is final (``lucir.record.FINAL``).  Running a sweep, first time or any later time (``lucir resume``, or
the same command again), is one function, :func:`run`:

1. take ``<exp>/driver.lock`` (:class:`DriverLock`: a live driver refuses a second one, naming its host
   and pid; a dead one's lock is taken over);
2. tell the Optuna study what the records say (``tune.study.reconcile``) and drop this driver's own
   status files of the slots it runs again;
3. pre-train the shared base phases (``tune/pretrain.py``);
4. run a fresh ``Tuner`` over the slots (or fused arrays) without a final record, with ``FailureConfig``
   retries, **no Tune checkpoints and no** ``Tuner.restore``; Tune's files go to ``<exp>/ray/`` and are
   never read back (delete them at will);
5. bring MLflow up to date (``tune.mlflow_sync``: throttled while running, once more at the end);
6. a search: once every slot is final, its confirm stage (``<exp>/confirm``), run the same way.
Nothing the driver needs is pickled; a killed driver loses only the epochs its workers had not saved.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from lucir import record
from lucir.checkpoint import atomic_write_json, atomic_write_text
from lucir.config import Config, ConfigError

log = logging.getLogger("lucir.tune")

#: what a re-run of the original command must match to continue the folder's sweep
SPEC_KEYS = ("kind", "slots", "arrays", "search", "candidates")
CONNECT_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------- options
@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """How a sweep runs, validated at construction (a ConfigError names the flag); stored as ``runner`` in
    lucir_experiment.json.  ``address`` and ``num_cpus`` may change at resume."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    base_cache: bool = True
    max_failures: int = 3
    max_concurrent: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    fuse: int = 1  # members per fused array (lucir.fused); 1 everywhere until a GPU measurement shows a gain

    def __post_init__(self):
        def bad(flag, v, allowed):
            raise ConfigError(f"--{flag}={v} is invalid: allowed {allowed}")

        if not self.cpus_per_trial > 0:
            bad("cpus-per-trial", self.cpus_per_trial, "a number > 0")
        if not 0 <= self.gpus_per_trial <= 1:
            bad("gpus-per-trial", self.gpus_per_trial, "0 (CPU), a fraction in (0, 1] (0.25 packs 4 trials "
                                                        "on a GPU; a trial trains on one device)")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            bad("max-failures", self.max_failures, "an integer >= 0")
        if self.max_concurrent is not None and (not isinstance(self.max_concurrent, int) or self.max_concurrent < 1):
            bad("max-concurrent", self.max_concurrent, "an integer >= 1")
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            bad("num-cpus", self.num_cpus, "an integer >= 1")
        if not isinstance(self.fuse, int) or isinstance(self.fuse, bool) or self.fuse < 1:
            bad("fuse", repr(self.fuse), "an integer >= 1 (1: no fusion)")

    @classmethod
    def from_dict(cls, d: dict) -> "RunnerOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunnerOptions":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DriverLock:
    """``<exp>/driver.lock``: created whole with ``link(2)`` (atomic on POSIX and NFS), holding the driver's
    pid, host and a token its workers check before every write; ``driver.lock.beat`` counts heartbeats.
    A lock is stale when its pid is gone (same host) or its heartbeat stood still for ``stale_after``
    seconds of this process's clock (another host); a stale lock is taken over, a live one refused."""

    def __init__(self, exp: Path, heartbeat: float = 5.0, stale_after: float = 20.0):
        self.path, self.beat_path = exp / record.LOCK_FILE, exp / (record.LOCK_FILE + ".beat")
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _owner(self) -> dict:
        return record.read_json_dict(self.path) or {}

    def _refuse(self, owner: dict) -> None:
        raise ConfigError(f"{self.path.parent} is in use by another driver (pid {owner.get('pid')} on host "
                          f"{owner.get('host')}, since {owner.get('since')}): wait for it to end or stop it; "
                          f"a lock left by a dead driver is taken over by the next `lucir resume`")

    def _stale(self, owner: dict) -> bool:
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return not _pid_alive(owner["pid"])
        seen, t0 = None, time.monotonic()
        while time.monotonic() - t0 < self.stale_after:
            try:
                beat = self.beat_path.read_text()
            except OSError:
                beat = ""
            if seen is not None and beat != seen:
                return False
            seen = beat
            time.sleep(min(1.0, self.heartbeat / 2))
        return True

    def check(self) -> None:
        """Refuse at once when a live driver holds the folder (before this one starts Ray)."""
        owner = self._owner()
        if owner and owner.get("host") == socket.gethostname() and _pid_alive(int(owner.get("pid") or 0)):
            self._refuse(owner)

    def acquire(self) -> "DriverLock":
        for _ in range(5):
            tmp = self.path.with_name(f".{record.LOCK_FILE}.{self.token}")
            atomic_write_text(tmp, json.dumps({"token": self.token, "pid": os.getpid(), "host": socket.gethostname(),
                                               "since": _dt.datetime.now().isoformat(timespec="seconds")}))
            try:
                os.link(tmp, self.path)
                break
            except FileExistsError:
                owner = self._owner()
                if owner and not self._stale(owner):
                    self._refuse(owner)
                log.warning("taking over the lock of a driver that is gone (pid %s on %s)", owner.get("pid"),
                            owner.get("host"))
                aside = self.path.with_name(f".{record.LOCK_FILE}.stale.{self.token}")
                try:
                    os.rename(self.path, aside)
                    aside.unlink()
                except FileNotFoundError:
                    pass
            finally:
                tmp.unlink(missing_ok=True)
        else:
            self._refuse(self._owner())
        self._thread = threading.Thread(target=self._beat, name="lucir-driver-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        n = 0
        while not self._stop.wait(self.heartbeat):
            n += 1
            try:
                atomic_write_text(self.beat_path, f"{n}\n")
            except OSError as exc:
                log.warning("driver lock heartbeat failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._owner().get("token") == self.token:
            self.beat_path.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------- folder
def default_name(kind: str, dataset: str) -> str:
    return f"{kind}-{dataset}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def read_experiment(exp: str | os.PathLike) -> dict:
    doc = record.read_json_dict(Path(exp) / record.EXPERIMENT_FILE)
    if doc is None or "slots" not in doc:
        raise ConfigError(f"{Path(exp).absolute()} is not a lucir experiment folder of runner v3 (no "
                          f"{record.EXPERIMENT_FILE} with slots)")
    return doc


def make_doc(kind: str, name: str, slots: list[dict], runner: RunnerOptions, *, metric: str, argv: list[str],
             mlflow_uri: str | None, mlflow_experiment: str | None, **extra) -> dict:
    """The content of ``lucir_experiment.json``: the slots, with fused arrays when ``runner.fuse`` > 1."""
    doc = {"name": name, "kind": kind, "argv": argv, "created": _dt.datetime.now().isoformat(timespec="seconds"),
           "metric": metric, "mode": record.MODE, "mlflow_uri": mlflow_uri, "mlflow_experiment": mlflow_experiment,
           "runner": runner.to_dict(), "slots": [{"id": record.slot_id(i), "config": c} for i, c in enumerate(slots)],
           **extra}
    doc["arrays"] = arrays_of(doc, runner.fuse)
    return doc


def arrays_of(doc: dict, size: int) -> list[list[str]]:
    """The slots as fused arrays (``tune.spaces.fuse_points``); [] when nothing is fused."""
    if size <= 1:
        return []
    from tune.spaces import fuse_points

    pts = [dict(s["config"], _slot=s["id"]) for s in doc["slots"]]
    groups = fuse_points(pts, [Config.from_flat(s["config"]) for s in doc["slots"]], size)
    return [[p["_slot"] for p in g] for g in groups]


def check_out(exp: Path) -> bool:
    """``--out`` can be created and written; True when this call created it."""
    created = not exp.exists()
    try:
        exp.mkdir(parents=True, exist_ok=True)
        probe = exp / f".write-test.{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {exp} is not usable: {exc.strerror or exc}") from None
    return created


def check_new(exp: Path, doc: dict, runner: RunnerOptions, cfgs: list[Config]) -> dict | None:
    """The checks that need no Ray, before anything starts: the folder's own sweep (returned when ``exp``
    already holds this sweep: it is continued; another sweep there is refused), ``--out`` writable, the
    devices, the tracking store.  A folder this call created is removed again when a check fails."""
    old = record.read_json_dict(exp / record.EXPERIMENT_FILE)
    if old is not None:
        diff = [k for k in SPEC_KEYS if json.dumps(old.get(k), sort_keys=True, default=str) !=
                json.dumps(doc.get(k), sort_keys=True, default=str)]
        if diff:
            raise ConfigError(f"--out {exp} already holds another sweep ({', '.join(diff)} differ): finish it "
                              f"with `lucir resume {exp}` or choose another --out")
        print(f"{exp} holds this sweep already: continuing it", flush=True)
        return old
    created = check_out(exp)
    try:
        check_devices(cfgs, runner)
        if doc.get("mlflow_uri"):
            from tune.mlflow_sync import check_tracking_uri

            try:
                check_tracking_uri(doc["mlflow_uri"])
            except ValueError as exc:
                raise ConfigError(f"--mlflow-uri {doc['mlflow_uri']}: {exc}") from None
    except BaseException:
        if created:
            exp.rmdir()
        raise
    return None


def start(exp: Path, doc: dict, runner: RunnerOptions) -> None:
    """With Ray up: the cluster checks, then ``lucir_experiment.json`` (the caller removes the folder it made
    when a check fails)."""
    check_cluster(exp, doc, runner)
    atomic_write_json(exp / record.EXPERIMENT_FILE, doc)


def check_devices(cfgs: list[Config], runner: RunnerOptions) -> None:
    for c in cfgs:
        if c.runtime.device.startswith("cuda") and not runner.gpus_per_trial:
            raise ConfigError(f"device={c.runtime.device!r} needs --gpus-per-trial > 0 (Ray gives a trial a GPU "
                              "only when it asks for one)")


# ---------------------------------------------------------------------------------------- Ray
class ray_session:
    """Ray for this driver: joined (``--address``, ``$RAY_ADDRESS``) after a reachability check, or a local
    instance started here and shut down at the end; a nested use reuses the running one."""

    def __init__(self, runner: RunnerOptions):
        self.runner, self.started = runner, False

    def __enter__(self) -> bool:
        import ray

        if ray.is_initialized():
            return False
        address = self.runner.address or os.environ.get("RAY_ADDRESS") or "local"
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if address == "local":
            kw.update(address="local", num_cpus=self.runner.num_cpus)
        else:
            _reachable(address)
            kw["address"] = address
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--address {address}: cannot join Ray ({str(exc).splitlines()[0]})") from None
        self.started = True
        return True

    def __exit__(self, *exc):
        if self.started:
            import ray

            ray.shutdown()


def _reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) Ray address must accept a TCP connection within seconds."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                          "`ray start --head` or give the right address") from None


def check_cluster(exp: Path, doc: dict, runner: RunnerOptions) -> None:
    """After Ray is up: the cluster has the GPUs ``--gpus-per-trial`` needs; on a remote cluster every node
    sees ``--out`` and the data."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if runner.gpus_per_trial and gpus < runner.gpus_per_trial:
        raise ConfigError(f"--gpus-per-trial {runner.gpus_per_trial}: the Ray cluster has {gpus:g} GPU(s); "
                          "start GPU nodes first or use --gpus-per-trial 0")
    from tune.cluster import cluster_address, verify_dataset_on_nodes, verify_shared_storage

    if cluster_address(runner.address) is None:
        return
    what = "--out"
    try:
        verify_shared_storage(str(exp))
        for c in {(s["config"].get("dataset"), s["config"].get("data_root")) for s in doc["slots"]}:
            if c[0] not in (None, "digits"):
                what = f"--data-root ({c[0]})"
                verify_dataset_on_nodes(c[0], c[1])
    except ValueError as exc:
        raise ConfigError(f"{what} is refused: {exc}") from None


# ---------------------------------------------------------------------------------------- running
class _SlotCallback:
    """Driver-side Tune callback: pokes the MLflow syncer, and writes the driver's ERROR status of the slots
    of a trial that failed for good (the worker could not: it was killed or never started)."""

    def __new__(cls, exp: Path, configs: dict[str, dict], syncer):
        from ray.tune import Callback

        class SlotCallback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                syncer.poke()

            def on_trial_complete(self, iteration, trials, trial, **info):
                syncer.poke()

            def on_trial_error(self, iteration, trials, trial, **info):
                err = ""
                if trial.error_file and os.path.exists(trial.error_file):
                    err = Path(trial.error_file).read_text()
                for slot in trial.config["unit"]["slots"]:
                    if not record.is_final(record.read_trial(exp, slot)):
                        atomic_write_json(record.status_path(exp, slot),
                                          {"trial_id": slot, "status": "ERROR", "error": err.strip()[-4000:] or
                                           "trial failed", "config": configs[slot],
                                           "updated": _dt.datetime.now().isoformat(timespec="seconds")})
                syncer.poke()

            def __reduce__(self):  # never needed again: Tune's files are not read back
                return (object, ())

        return SlotCallback()


def todo_units(exp: Path, doc: dict) -> list[dict]:
    """What is left to run: each slot without a final record, fused arrays kept together."""
    done = {s["id"] for s in doc["slots"] if record.is_final(record.read_trial(exp, s["id"]))}
    units, in_array = [], set()
    for i, members in enumerate(doc.get("arrays") or []):
        in_array.update(members)
        left = [m for m in members if m not in done]
        if len(members) > 1 and left:
            units.append({"slots": members, "array": record.array_id(i)})
        elif left:
            units.append({"slots": left, "array": None})
    units += [{"slots": [s["id"]], "array": None} for s in doc["slots"] if s["id"] not in done | in_array]
    return units


def _pretrain(exp: Path, doc: dict, runner: RunnerOptions) -> None:
    from tune.base_cache import pretrain

    if doc["kind"] == "search":
        pretrain(exp, [Config.from_flat(c) for c in doc["search"].get("pretrain") or []], runner, min_share=1)
    else:
        pretrain(exp, [Config.from_flat(s["config"]) for s in doc["slots"]], runner)


def run(exp: str | os.PathLike, runner: RunnerOptions | None = None, *, mlflow_uri: str | None = None,
        syncs: bool = True, checked: bool = False) -> int:
    """Run (or continue) the sweep in ``exp`` until every slot is final or failed for good; then a search's
    confirm stage.  Returns the exit code (0: every slot final).  ``checked``: ``start`` ran the cluster
    checks in this Ray session already."""
    from ray import tune

    from tune import study
    from tune.mlflow_sync import Syncer
    from tune.worker import lucir_trainable

    exp = Path(exp).absolute()
    doc = read_experiment(exp)
    runner = RunnerOptions.from_dict(doc["runner"]).replace(**({} if runner is None else
                                                              {"address": runner.address, "num_cpus": runner.num_cpus}))
    with DriverLock(exp) as lock:
        if doc["kind"] == "search":
            study.reconcile(exp, doc)
        units = todo_units(exp, doc)
        for u in units:
            for s in u["slots"]:
                record.status_path(exp, s).unlink(missing_ok=True)
        uri = mlflow_uri or doc.get("mlflow_uri")
        syncer = Syncer(exp, uri if syncs else None)
        try:
            if units:
                print(f"lucir {doc['kind']}: {sum(len(u['slots']) for u in units)} of {len(doc['slots'])} slot(s) "
                      f"to run -> {exp}", flush=True)
                with ray_session(runner):
                    if not checked:
                        check_cluster(exp, doc, runner)
                    _pretrain(exp, doc, runner)
                    fn = tune.with_parameters(lucir_trainable, exp_dir=str(exp), token=lock.token,
                                              cpus=runner.cpus_per_trial, gpus=runner.gpus_per_trial,
                                              base_cache=runner.base_cache)
                    res = {"cpu": runner.cpus_per_trial, **({"gpu": runner.gpus_per_trial} if runner.gpus_per_trial else {})}
                    name = lambda t: t.config["unit"]["array"] or t.config["unit"]["slots"][0]  # noqa: E731
                    tuner = tune.Tuner(
                        tune.with_resources(fn, res), param_space={"unit": tune.grid_search(units)},
                        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=runner.max_concurrent,
                                                    trial_name_creator=name, trial_dirname_creator=name),
                        run_config=tune.RunConfig(
                            name=f"run-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{lock.token[:6]}",
                            storage_path=str(exp / record.RAY_DIR), callbacks=[_SlotCallback(exp, {s["id"]: s["config"] for s in doc["slots"]}, syncer)],
                            failure_config=tune.FailureConfig(max_failures=runner.max_failures), verbose=1))
                    tuner.fit()
                if doc["kind"] == "search":
                    study.reconcile(exp, doc)
        finally:
            if not syncer.close() and syncs:
                print(f"warning: MLflow ({uri}) was not reachable; `lucir resume {exp}` or "
                      f"`lucir report {exp}` logs what is missing", file=sys.stderr)
    code = 0 if all(record.is_final(record.read_trial(exp, s["id"])) for s in doc["slots"]) else 1
    if doc["kind"] == "search" and code == 0:
        code = run_confirm(exp, runner, mlflow_uri)
    return code


def sync_idle(exp: str | os.PathLike) -> bool:
    """MLflow sync of a folder no driver is running (``lucir report``); False when one is (it syncs itself)."""
    from tune.mlflow_sync import sync

    exp = Path(exp).absolute()
    doc = record.read_json_dict(exp / record.EXPERIMENT_FILE) or {}
    uri = str(doc.get("mlflow_uri") or "")
    if "slots" not in doc or not uri or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()):
        return False  # not a runner v3 folder, no MLflow, or a store the runner never created: nothing to mirror
    owner = record.read_json_dict(exp / record.LOCK_FILE)
    if owner and not (owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid") or 0))):
        return False  # a driver holds the folder (one on another host cannot be told dead at once): it syncs
    try:
        with DriverLock(exp):
            done = [sync(d) for d in (exp, exp / record.CONFIRM_DIR) if (d / record.EXPERIMENT_FILE).exists()]
    except ConfigError:  # a driver started meanwhile
        return False
    return all(done)


# ---------------------------------------------------------------------------------------- confirm stage
def confirm_candidates(exp: Path, doc: dict) -> list[dict]:
    """The paper defaults and the ``top`` best distinct searched configurations on the search's objective
    (validation when held out), among slots that finished every phase: fixed once the search is done."""
    metric, s = doc["metric"], doc["search"]
    defaults = dict(s["defaults"])
    recs = {r["trial_id"]: r for r in ranked(exp, metric)}
    out = [{"label": "paper defaults", "params": defaults, "search_trial": None, "search_value": None}]
    for sid, r in recs.items():
        if {k: r["config"].get(k) for k in defaults} == defaults:
            out[0].update(search_trial=sid, search_value=r["phases"][-1].get(metric))
            break
    seen = [defaults]
    for sid, r in recs.items():
        params = {k: r["config"][k] for k in defaults}
        if params in seen:
            continue
        if len(out) > int(s["confirm"]["top"]):
            break
        seen.append(params)
        out.append({"label": f"top-{len(out)}", "params": params, "search_trial": sid,
                    "search_value": r["phases"][-1][metric]})
    return out


def run_confirm(exp: Path, runner: RunnerOptions, mlflow_uri: str | None = None) -> int:
    doc = read_experiment(exp)
    c = doc["search"]["confirm"]
    if not c.get("top"):
        return 0
    folder = exp / record.CONFIRM_DIR
    if not (folder / record.EXPERIMENT_FILE).exists():
        cands = confirm_candidates(exp, doc)
        fixed = {k: v for k, v in doc["search"]["fixed"].items() if k not in ("val_fraction", "seed")}
        scenarios = (doc["search"].get("protocol") or {}).get("evaluate") or [{}]
        slots = [{**fixed, **cd["params"], **sc, "val_fraction": 0.0, "seed": s}
                 for cd in cands for sc in scenarios for s in range(c["seeds"])]
        print(f"lucir search: confirm stage, {len(cands)} configs x {len(scenarios)} scenario(s) x {c['seeds']} seeds "
              f"on the full training set -> {folder}", flush=True)
        folder.mkdir(exist_ok=True)
        cdoc = make_doc("confirm", f"{doc['name']}-confirm", slots, RunnerOptions.from_dict(doc["runner"]),
                        metric=record.OBJECTIVE, argv=doc["argv"], mlflow_uri=doc.get("mlflow_uri"),
                        mlflow_experiment=doc.get("mlflow_experiment"), candidates=cands, seeds=c["seeds"], scenarios=scenarios,
                        search_metric=doc["metric"], search=str(exp))
        atomic_write_json(folder / record.EXPERIMENT_FILE, cdoc)
    return run(folder, runner, mlflow_uri=mlflow_uri)


# ---------------------------------------------------------------------------------------- summaries
def ranked(exp: Path, metric: str) -> list[dict]:
    """Slots that finished every phase (never a pruned or partial one), best ``metric`` first."""
    docs = [d for d in record.read_trials(exp) if record.is_finished(d) and record.last_value(d, metric) is not None]
    return sorted(docs, key=lambda d: -record.last_value(d, metric))


def print_summary(exp: Path, file=None) -> None:
    """The end of a sweep, read from its records: mean ± std over seeds of the last phase per preset and
    protocol (ablate) or per candidate (confirm); a search's slots on its objective and its best slot on it
    (selection only).  The paired statistics are ``lucir report``'s."""
    import pandas as pd

    from lucir.commands import command_line
    from tune.spaces import PROTOCOL_KEYS, SEARCHED

    doc, recs = read_experiment(exp), record.read_trials(exp)
    rows = [{**d["config"], **(d["phases"] or [{}])[-1], "slot": d["trial_id"], "status": d["status"],
             "phases done": f"{len(d['phases']) - 1} of {d.get('num_phases')}", "finished": record.is_finished(d)}
            for d in recs]
    df = pd.DataFrame(rows)
    if doc["kind"] == "search":
        cols = ["slot", "status", "phases done", *[k for k in SEARCHED if k in df], doc["metric"]]
        print(f"\nsearch slots ({exp}; {doc['metric']} at the last phase reached):", file=file)
        print(df.reindex(columns=cols).to_markdown(index=False, floatfmt=".4g"), file=file)
        best = ranked(exp, doc["metric"])
        if best:
            print(f"\nbest on {doc['metric']} (selection only; test accuracy comes from the confirm stage): "
                  f"{best[0]['trial_id']}\n  {command_line(best[0]['config'])}", file=file)
        if (exp / record.CONFIRM_DIR / record.EXPERIMENT_FILE).exists():
            print_summary(exp / record.CONFIRM_DIR, file=file)
    elif len(df):
        if doc["kind"] == "confirm":
            from analysis.confirm import holds

            df["candidate"] = [next((c["label"] for c in doc["candidates"] if holds(d["config"], c["params"])), "?")
                               for d in recs]
            keys = ["candidate"]
        else:
            keys = ["preset", *PROTOCOL_KEYS]
        fin = df[df.finished]
        stats = fin.groupby(keys, sort=False)[["avg_inc_acc_cnn", "avg_inc_acc_nme", "acc_cnn", "acc_nme"]]
        table = stats.agg(lambda x: "-" if x.count() == 0 else f"{x.mean():.2f}" if x.count() == 1
                          else f"{x.mean():.2f} ± {x.std():.2f}")
        table.insert(0, "finished", fin.groupby(keys, sort=False).size().astype(str) + "/" +
                     df.groupby(keys, sort=False).size().reindex(table.index).astype(str))
        print(f"\n{doc['kind']} summary ({exp}; mean ± std over seeds, last phase, %):", file=file)
        print(table.reset_index().to_markdown(index=False), file=file)
        if doc["kind"] == "confirm":
            from analysis.confirm import confirm_summary

            verdict = (confirm_summary(exp.parent) or {}).get("verdict")
            if verdict:
                print(f"verdict: {verdict['text']}", file=file)
    bad = [d["trial_id"] for d in recs if not record.is_final(d)]
    if bad:
        print(f"{len(bad)} slot(s) not finished ({', '.join(bad[:8])}{'…' if len(bad) > 8 else ''}): "
              f"`lucir resume {exp}` runs them again", file=sys.stderr)
