"""MLflow logging of a sweep: a driver-side Ray Tune callback (DESIGN §6).

One MLflow run per sweep (the *parent*, tagged ``lucir.role=sweep`` and ``lucir.sweep=<name>``) and one
*child* run per trial, nested under it through the ``mlflow.parentRunId`` tag and found again by its
``lucir.trial_id`` tag.  Everything happens on the driver, through an explicit
``mlflow.MlflowClient(tracking_uri)``: no global MLflow state, nothing inside the trials.

Why not Ray's ``MLflowLoggerCallback`` / ``setup_mlflow``: the former logs every result key with
Ray's iteration as the step, the latter leaves runs ``RUNNING``.  Here:

* metrics are the DESIGN §4 names plus ``eta``, ``lambda``, ``exemplars``, ``phase_seconds``, logged
  with ``step = result["phase"]`` (NaN, e.g. ``acc_old_cnn`` of the base phase, is logged as NaN:
  MLflow 3 stores it);
* params are the trial's flat config (``trial.config``), completed with the fields of the full
  ``lucir.Config`` it resolves to; tags are preset, protocol, dataset, base_classes, phases, seed, sweep;
* on completion the per-phase table and both accuracy matrices (from ``<exp>/trials/<trial_id>.json``,
  docs/EXPERIMENT_LAYOUT.md) are logged as CSV artifacts, any phase the callback missed is back-filled
  from that file, and the run ends ``FINISHED`` (``FAILED`` on a trial error);
* restore-safe: after ``Tuner.restore`` (the callback is unpickled from ``tuner.pkl``) the parent run is
  found again (``parent_run_id`` of ``lucir_experiment.json``, else by tag), each trial's run is found
  again by tag and put back to ``RUNNING``, and a (metric, step) already in a run's history is never
  logged a second time.  An interrupted driver leaves the parent and the unfinished trials' runs
  ``RUNNING``; the resumed sweep ends them.

Nothing blocks Tune's event loop: every MLflow call after ``setup`` goes through one background writer
thread with a bounded queue, in the order the hooks ran.  A call that fails (a tracking server
restarting, say) is retried with back-off until it succeeds, so a sweep keeps going through an outage
and loses no metric; MLflow's own HTTP retries are lowered (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 1,
timeout 10 s, unless set) so that each attempt fails in seconds, not minutes.  ``on_experiment_end``
waits for the queue to drain (at most ``FLUSH_TIMEOUT_S``).  A pruned trial's run ends ``KILLED``
(tag ``lucir.status=PRUNED``); ``trial.json`` is logged with ``log_dict`` and the per-phase table with
``log_table`` beside the CSVs.  The trial-file back-fill at completion covers what only a resume
needs: phases reported while no driver was running.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from ray.tune import Callback

from lucir import record

logger = logging.getLogger(__name__)

#: Metrics logged per phase: DESIGN §4 plus eta, lambda, exemplars, phase_seconds.
METRICS = ("phase", "classes_seen") + record.METRICS + record.EXTRA_METRICS + record.VAL_METRICS

TAG_ROLE = "lucir.role"            # "sweep" (parent run) or "trial" (child run)
TAG_SWEEP = "lucir.sweep"
TAG_TRIAL = "lucir.trial_id"
TAG_EXP_DIR = "lucir.experiment_dir"
TAG_STATUS = "lucir.status"        # a word of lucir.record.STATUSES, as the trial's status file says
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TRIAL_TAG_FIELDS = ("preset", "dataset", "base_classes", "phases", "seed")

EXPERIMENT_FILE = record.EXPERIMENT_FILE
HTTP_TIMEOUT_S = 5.0
FLUSH_TIMEOUT_S = 120.0   # on_experiment_end waits this long at most for the writer to drain
QUEUE_SIZE = 10_000       # pending MLflow calls; a full queue blocks the hook (back-pressure), never drops
RETRY_MAX_S = 30.0        # longest pause between two attempts of a failing call


# ----------------------------------------------------------------------------------------- URIs
def default_tracking_uri(experiment_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute experiment dir>/mlflow.db`` (the file store raises in MLflow >= 3.13)."""
    return "sqlite:///" + str(Path(experiment_dir).resolve() / "mlflow.db")


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` absolute, ``sqlite:///rel`` relative)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: a SQLite URI has the form "
                         "sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = rest[3:].split("?", 1)[0]
    if not path or path == ":memory:":
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: an in-memory SQLite database does not "
                         "outlive the driver; give a file, e.g. sqlite:////abs/exp/mlflow.db")
    return Path(path)


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before any trial starts, when ``uri`` cannot be used as an MLflow tracking store.

    * ``http(s)://host:port``: the server must answer within a few seconds (``/health``, else the REST API);
    * ``sqlite:///path``: the folder of the database is created and the file must be openable;
    * a plain path or ``file:`` URI: refused, the file store raises in MLflow >= 3.13 (use sqlite);
    * any other scheme (postgresql, mysql, databricks...): one query through ``MlflowClient``.

    Raises ``ValueError`` whose message names the URI and what to do.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"MLflow tracking URI {uri!r} is empty: use sqlite:////abs/path/mlflow.db or "
                         "http://host:5000")
    uri = uri.strip()
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise ValueError(f"MLflow tracking URI {uri!r} is a file store, which MLflow >= 3.13 refuses: use "
                         "sqlite:////<absolute folder>/mlflow.db (the default) or a tracking server "
                         "http://host:5000")
    else:
        try:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure means the URI is unusable
            raise ValueError(f"MLflow tracking URI {uri!r} is not usable: {type(exc).__name__}: {exc}") from exc


def _check_http(uri: str) -> None:
    base = uri.rstrip("/")

    def get(path: str) -> int:
        req = urllib.request.Request(base + path, headers={"User-Agent": "lucir-check"})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        status = get("/health")
        if status != 200:
            status = get("/api/2.0/mlflow/experiments/search?max_results=1")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"MLflow tracking server {uri!r} is not reachable within {HTTP_TIMEOUT_S:.0f} s "
                         f"({reason}); start it (e.g. `mlflow server --backend-store-uri "
                         "sqlite:////abs/mlflow.db --host 0.0.0.0 --port 5000`) or pass another --mlflow-uri"
                         ) from exc
    if status in (401, 403):
        logger.warning("MLflow tracking server %s answers %d (authentication required); MLflow's client "
                       "will use MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN", uri, status)
        return
    if not 200 <= status < 300:
        raise ValueError(f"MLflow tracking URI {uri!r} answers HTTP {status} on /health and on the REST API: "
                         "it is not an MLflow tracking server")


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: its folder {str(folder)!r} cannot be "
                         f"created ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: {str(path)!r} is a folder, not a "
                         "database file")
    try:
        con = sqlite3.connect(str(path), timeout=HTTP_TIMEOUT_S)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: {str(path)!r} cannot be opened as a "
                         f"SQLite database ({exc})") from exc
    if not os.access(path, os.W_OK):
        raise ValueError(f"MLflow tracking URI {uri!r} is not usable: {str(path)!r} is not writable")


# ----------------------------------------------------------------------------------------- files
def write_trial_artifacts(trial_file: dict, folder: Path) -> list[Path]:
    """Write ``phases.csv``, ``acc_matrix_cnn.csv``, ``acc_matrix_nme.csv`` and ``trial.json``.

    The matrices are phase x class group (group 0 = base classes); entries of groups not yet seen are empty.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    phases = [p for p in trial_file.get("phases") or [] if isinstance(p, dict)]
    cols = list(METRICS) + sorted({k for p in phases for k in p} - set(METRICS))
    path = folder / "phases.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in phases:
            w.writerow([p.get(c, "") for c in cols])
    out.append(path)
    for key in ("acc_matrix_cnn", "acc_matrix_nme"):
        mat = trial_file.get(key) or []
        if not mat:
            continue
        width = max(len(r) for r in mat)
        path = folder / f"{key}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["phase"] + [f"group_{g}" for g in range(width)])
            for t, row in enumerate(mat):
                w.writerow([t] + list(row) + [""] * (width - len(row)))
        out.append(path)
    path = folder / "trial.json"
    with open(path, "w") as f:
        json.dump(trial_file, f, indent=2)
    out.append(path)
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _resolved_config(config: dict) -> dict[str, Any]:
    """The flat ``lucir.Config`` a trial's config resolves to ({} when the trainer refuses it)."""
    from tune.spaces import trial_config

    cfg = trial_config(_flatten(dict(config)))
    return {} if cfg is None else cfg.to_flat()  # a config the trainer refuses still gets its literal params


def trial_params(config: dict) -> dict[str, Any]:
    """MLflow params of a trial: its flat config as given, completed with the fields it resolves to."""
    return {**_resolved_config(config), **_flatten(dict(config))}


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _transient(exc: Exception) -> bool:
    """Worth retrying: no answer, a server error, throttling, a locked database; not a refused request."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover
        return True
    if isinstance(exc, MlflowException):
        try:
            code = int(exc.get_http_status_code())
        except Exception:  # noqa: BLE001
            return True
        return code >= 500 or code == 429
    return True


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------- callback
class _Member:
    """A member of a fused array as the callback sees a trial (``lucir.record.trial_members``): its own
    trial id, flat config and name, the array's status."""

    def __init__(self, trial, index: int, trial_id: str, config: dict, size: int):
        self.trial_id, self.config, self.index, self.status = trial_id, config, index, trial.status
        self._name = str(trial) if size == 1 else f"{trial}_m{index}"

    def __str__(self) -> str:
        return self._name


class _Orphan:
    """A trial no Tune trial of the sweep owns any more, as ``_finish`` reads it: its id and config."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.status = trial_id, config, "TERMINATED"

    def __str__(self) -> str:
        return self.trial_id


def _views(trial) -> list:
    """The trials a Tune trial stands for: itself, or each member of a fused array (one MLflow run each)."""
    if record.ARRAY_KEY not in (trial.config or {}):
        return [trial]
    members = record.trial_members(trial.trial_id, dict(trial.config))
    return [_Member(trial, i, tid, cfg, len(members)) for i, (tid, cfg) in enumerate(members)]


def _member_result(view, result: dict) -> dict:
    """The metrics of ``view`` in a Tune result (a fused array's report holds each member's under
    ``members/<i>``)."""
    if isinstance(view, _Member) and isinstance(result.get(record.ARRAY_KEY), dict):
        return dict(result[record.ARRAY_KEY].get(str(view.index)) or {})
    return result


class MLflowCallback(Callback):
    """Log a sweep to MLflow from the Tune driver: a parent run per sweep, a child run per trial.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:////abs/exp/mlflow.db``, ``http://head:5000``).
        experiment_name: MLflow experiment that holds the sweep (created when missing).
        sweep_name: the sweep's name (Ray's experiment name); tag of the parent and of every child run.
        experiment_dir: absolute experiment folder (docs/EXPERIMENT_LAYOUT.md): ``lucir_experiment.json``
            receives ``parent_run_id``; ``trials/<trial_id>.json`` are logged as artifacts.
        tags: extra tags for the parent and every child run.
        metrics: the result keys logged per phase (default :data:`METRICS`).
        record_parent_run_id: write ``parent_run_id`` into ``lucir_experiment.json`` (turn off for a
            second callback logging the same sweep to another store).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_name: str, experiment_dir: str,
                 tags: dict | None = None, metrics: Iterable[str] = METRICS, record_parent_run_id: bool = True):
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.sweep_name = sweep_name
        self.experiment_dir = str(Path(experiment_dir).absolute())
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.metrics = tuple(metrics)
        self.record_parent_run_id = record_parent_run_id
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._init_caches()

    def _init_caches(self) -> None:
        self._client_obj = None
        self._runs: dict[str, str] = {}                   # trial_id -> run_id
        self._steps: dict[str, dict[str, set[int]]] = {}  # run_id -> metric -> steps logged
        self._ended: set[str] = set()                     # trial ids whose run this driver ended
        self._started: set[str] = set()                   # trial ids this driver started (or resumed)
        self._done: set[str] = set()                      # trial ids Ray completed or failed in this driver
        self._queue: queue.Queue | None = None            # the background writer's calls, in hook order
        self._writer: threading.Thread | None = None

    # pickling: Tuner pickles the RunConfig (callbacks included) into tuner.pkl and restores it from there
    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_client_obj", "_runs", "_steps", "_ended", "_started", "_done", "_queue", "_writer"):
            state.pop(k, None)
        return state

    # ------------------------------------------------------------------ background writer
    def _submit(self, what: str, fn, *args) -> None:
        """Run ``fn(*args)`` on the writer thread (in submission order), retried until it succeeds."""
        if self._writer is None or not self._writer.is_alive():
            self._queue = queue.Queue(maxsize=QUEUE_SIZE)
            self._writer = threading.Thread(target=self._write_loop, name="lucir-mlflow-writer", daemon=True)
            self._writer.start()
        self._queue.put((what, fn, args))

    def _write_loop(self) -> None:
        q = self._queue
        while True:
            what, fn, args = q.get()
            pause, failing_since = 1.0, None
            while True:
                try:
                    fn(*args)
                    break
                except Exception as exc:  # noqa: BLE001 - retried: a logging failure must not lose a metric
                    if not _transient(exc):
                        logger.warning("MLflow refused a call (%s) at %s: %s: %s; not retried", what,
                                       self.tracking_uri, type(exc).__name__, exc)
                        break
                    if failing_since is None:
                        failing_since = time.monotonic()
                        logger.warning("MLflow logging failed (%s) at %s: %s: %s; retrying until it succeeds",
                                       what, self.tracking_uri, type(exc).__name__, exc)
                    time.sleep(pause)
                    pause = min(RETRY_MAX_S, pause * 2)
            if failing_since is not None:
                logger.warning("MLflow logging (%s) succeeded after %.0f s of retries", what,
                               time.monotonic() - failing_since)
            q.task_done()

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every submitted call is done (True) or ``timeout`` seconds passed (False)."""
        q = self._queue
        if q is None:
            return True
        deadline = time.monotonic() + timeout
        while q.unfinished_tasks:
            if time.monotonic() > deadline:
                logger.warning("MLflow: %d call(s) still pending after %.0f s; the trial records keep every "
                               "phase (a later `lucir resume` or `lucir report` has them)", q.unfinished_tasks,
                               timeout)
                return False
            time.sleep(0.05)
        return True

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_caches()

    @property
    def client(self):
        if self._client_obj is None:
            from mlflow import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client_obj

    # ------------------------------------------------------------------ parent run
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # each attempt fails in seconds; the writer thread retries (MLflow's default: 7 retries, minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.experiment_id = self._get_or_create_experiment()
        run = self._find_parent()
        if run is None:
            tags = {**self.tags, TAG_ROLE: "sweep", TAG_SWEEP: self.sweep_name, "sweep": self.sweep_name,
                    TAG_EXP_DIR: self.experiment_dir}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep_name)
            logger.info("MLflow: sweep %s -> parent run %s (%s)", self.sweep_name, run.info.run_id,
                        self.tracking_uri)
        else:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            if run.data.tags.get(TAG_EXP_DIR) != self.experiment_dir:  # the folder was moved
                self.client.set_tag(run.info.run_id, TAG_EXP_DIR, self.experiment_dir)
            logger.info("MLflow: sweep %s resumes parent run %s", self.sweep_name, run.info.run_id)
        self.parent_run_id = run.info.run_id
        if self.record_parent_run_id:
            self._store_parent_id()

    def _get_or_create_experiment(self) -> str:
        c = self.client
        exp = c.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                c.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return c.create_experiment(self.experiment_name, artifact_location=self._artifact_location())
        except Exception:  # noqa: BLE001 - created concurrently by another driver: use it
            exp = c.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

    def _artifact_location(self) -> str | None:
        """Artifacts beside a SQLite database (MLflow's default is ``./mlruns`` of the driver's cwd)."""
        scheme = urllib.parse.urlparse(self.tracking_uri).scheme.lower()
        if scheme in ("http", "https", "databricks"):
            return None  # the server decides (mlflow server --artifacts-destination)
        sq = _sqlite_path(self.tracking_uri) if scheme == "sqlite" else None
        folder = (sq.resolve().parent if sq is not None else Path(self.experiment_dir)) / "mlartifacts"
        return folder.as_uri()

    def _find_parent(self):
        c = self.client
        info = record.read_json_dict(Path(self.experiment_dir) / EXPERIMENT_FILE) or {}
        rid = info.get("parent_run_id") if self.record_parent_run_id else None
        if rid:
            try:
                run = c.get_run(rid)
                if run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id:
                    return run
            except Exception:  # noqa: BLE001 - id from another store: search by tag instead
                pass
        runs = c.search_runs([self.experiment_id],
                             filter_string=f"tags.`{TAG_ROLE}` = 'sweep' and "
                                           f"tags.`{TAG_SWEEP}` = {_quote(self.sweep_name)}",
                             order_by=["attributes.start_time ASC"], max_results=100)
        # the same experiment folder: a sweep of the same name elsewhere (another --out) is another sweep;
        # a moved folder finds its parent through lucir_experiment.json above
        runs = [r for r in runs if r.data.tags.get(TAG_EXP_DIR) == self.experiment_dir]
        return runs[0] if runs else None

    def _store_parent_id(self) -> None:
        path = Path(self.experiment_dir) / EXPERIMENT_FILE
        info = record.read_json_dict(path)
        if info is None or info.get("parent_run_id") == self.parent_run_id:
            return
        info["parent_run_id"] = self.parent_run_id
        try:
            from lucir.checkpoint import atomic_write_json  # temporary name + fsync + rename, strict JSON

            atomic_write_json(path, info)
        except OSError as exc:
            logger.warning("MLflow: could not record parent_run_id in %s: %s", path, exc)

    # ------------------------------------------------------------------ child runs
    def _run_for(self, trial, reopen: bool = True) -> str:
        """The trial's run id: cached, found again by tag (after a restore), or created."""
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        if self.parent_run_id is None:
            raise RuntimeError("MLflowCallback.setup() has not run")
        c = self.client
        found = c.search_runs([self.experiment_id],
                              filter_string=f"tags.`{TAG_TRIAL}` = {_quote(tid)} and "
                                            f"tags.`{TAG_PARENT}` = {_quote(self.parent_run_id)}",
                              order_by=["attributes.start_time ASC"], max_results=10)
        if found:
            run = found[0]
            rid = run.info.run_id
            if len(found) > 1:
                logger.warning("MLflow: trial %s has %d runs; using the oldest, %s", tid, len(found), rid)
            if reopen and run.info.status != "RUNNING":
                c.update_run(rid, status="RUNNING")
            self._steps[rid] = {k: {m.step for m in c.get_metric_history(rid, k)} for k in run.data.metrics}
            self._add_missing_params(rid, trial, run.data.params)
        else:
            full = {**_flatten(dict(trial.config)), **_resolved_config(trial.config)}
            tags = {**self.tags, TAG_ROLE: "trial", TAG_SWEEP: self.sweep_name, "sweep": self.sweep_name,
                    TAG_TRIAL: tid, TAG_PARENT: self.parent_run_id, TAG_EXP_DIR: self.experiment_dir}
            for k in TRIAL_TAG_FIELDS:
                if k in full:
                    tags[k] = str(full[k])
            if all(k in full for k in ("dataset", "base_classes", "phases")):
                tags["protocol"] = f"{full['dataset']}-B{full['base_classes']}-P{full['phases']}"
            run = c.create_run(self.experiment_id, tags=tags, run_name=str(trial))
            rid = run.info.run_id
            self._steps[rid] = {}
            self._add_missing_params(rid, trial, {})
        self._runs[tid] = rid
        return rid

    def _add_missing_params(self, run_id: str, trial, logged: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, _param_str(v)) for k, v in trial_params(trial.config).items() if k not in logged]
        for i in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _log_phase(self, run_id: str, values: dict, step: int, none_is_nan: bool = False) -> int:
        from mlflow.entities import Metric

        steps = self._steps.setdefault(run_id, {})
        ts = int(time.time() * 1000)
        batch = []
        for k in self.metrics:
            v = values.get(k)
            if v is None and none_is_nan and k in values:  # strict JSON trial files write NaN as null
                v = float("nan")
            if not _is_number(v) or step in steps.get(k, ()):
                continue
            batch.append(Metric(k, float(v), ts, step))
        if batch:
            self.client.log_batch(run_id, metrics=batch)
            for m in batch:
                steps.setdefault(m.key, set()).add(step)
        return len(batch)

    def _trial_file(self, trial) -> dict | None:
        return record.read_json_dict(record.record_path(self.experiment_dir, trial.trial_id))

    def _finish(self, trial, status: str, error: str | None = None) -> None:
        rid = self._run_for(trial, reopen=False)
        c = self.client
        tf = self._trial_file(trial)
        if tf is not None:
            for p in tf.get("phases") or []:  # back-fill phases the driver did not see (e.g. while down)
                if isinstance(p, dict) and _is_number(p.get("phase")):
                    self._log_phase(rid, p, int(p["phase"]), none_is_nan=True)
            with tempfile.TemporaryDirectory(prefix="lucir-mlflow-") as tmp:
                write_trial_artifacts(tf, Path(tmp))
                (Path(tmp) / "trial.json").unlink()  # logged as a dict below
                c.log_artifacts(rid, tmp)
            c.log_dict(rid, tf, "trial.json")
            phases = [p for p in tf.get("phases") or [] if isinstance(p, dict)]
            if phases:
                c.log_table(rid, data={k: [p.get(k) for p in phases] for k in dict.fromkeys(
                    k for p in phases for k in p)}, artifact_file="phases_table.json")
        else:
            logger.warning("MLflow: %s has no trial file under %s/trials; no artifacts logged", trial,
                           self.experiment_dir)
        if status == "FAILED":
            c.set_tag(rid, TAG_STATUS, "ERROR")
            if error:
                c.set_tag(rid, "lucir.error", error[-4000:])
        else:
            done = len(self._steps.get(rid, {}).get("phase", ()))
            phases = trial_params(trial.config).get("phases")
            if tf is not None:
                done = max(done, len(tf.get("phases") or []))
                phases = tf.get("num_phases", phases)
            complete = _is_number(phases) and done >= int(phases) + 1
            c.set_tag(rid, TAG_STATUS, "TERMINATED" if complete else "PRUNED")
            if not complete:
                status = "KILLED"  # stopped early by a scheduler: not a finished run
        c.set_terminated(rid, status=status)
        self._ended.add(trial.trial_id)

    def _safely(self, what: str, fn, *args) -> None:
        """Hand a call to the writer thread: Tune's event loop never waits for MLflow."""
        self._submit(what, fn, *args)

    # ------------------------------------------------------------------ Tune hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._started.add(trial.trial_id)
        self._done.discard(trial.trial_id)

        def start(view):
            rid = self._run_for(view)
            if view.trial_id in self._ended:  # started again in this driver after it ended: reopen
                self.client.update_run(rid, status="RUNNING")
                self._ended.discard(view.trial_id)

        for view in _views(trial):
            self._safely(f"start of {view}", start, view)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def log(view, values):
            rid = self._run_for(view)
            step = values.get("phase")
            if not _is_number(step):
                step = int(result.get("training_iteration", 1)) - 1
            self._log_phase(rid, values, int(step))

        for view in _views(trial):
            self._safely(f"result of {view}", log, view, _member_result(view, result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._done.add(trial.trial_id)
        for view in _views(trial):
            self._safely(f"completion of {view}", self._finish, view, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._done.add(trial.trial_id)
        error = None
        try:
            error = trial.get_error()
            error = None if error is None else str(error)
        except Exception:  # noqa: BLE001
            pass
        for view in _views(trial):
            self._safely(f"error of {view}", self._finish, view, "FAILED", error)

    def on_experiment_end(self, trials, **info):
        """End the parent run, unless the sweep was interrupted (then resume reuses it, still RUNNING).

        Interrupted (Ctrl+C, SIGTERM, an exception in the driver): a trial is still pending or paused, or
        a trial started by this driver never completed nor failed here.  Ray's clean-up marks the trials
        it stops TERMINATED without calling ``on_trial_complete``, so the status alone does not tell.
        """
        unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")
                      or (t.trial_id in self._started and t.trial_id not in self._done)]
        if unfinished:
            self.flush()
            logger.info("MLflow: sweep %s interrupted with %d unfinished trial(s); parent run %s stays "
                        "RUNNING until `lucir resume`", self.sweep_name, len(unfinished), self.parent_run_id)
            return

        def end():
            for t in (v for trial in trials for v in _views(trial)):
                # a finished trial whose end this driver never logged (callback error, restore)
                if t.trial_id not in self._ended:
                    run = self._existing_run(t)
                    if run is not None and run.info.status == "RUNNING":
                        self._finish(t, "FINISHED" if t.status == "TERMINATED" else "FAILED")
            if self.parent_run_id is not None:
                self._end_unowned({v.trial_id for trial in trials for v in _views(trial)})
                c = self.client
                c.set_tag(self.parent_run_id, "lucir.trials", str(len(trials)))
                c.set_tag(self.parent_run_id, "lucir.trials_error",
                          str(sum(t.status == "ERROR" for t in trials)))
                c.set_terminated(self.parent_run_id, status="FINISHED")

        self._safely(f"end of sweep {self.sweep_name}", end)
        self.flush()

    def _end_unowned(self, owned: set[str]) -> None:
        """End the runs left RUNNING by trials a killed driver started after Tune's last snapshot (no trial of
        this sweep owns them): with the final status the driver's status callback gave their records
        (``tune.experiment.TrialStatusCallback.on_experiment_end``), FINISHED or KILLED (ABANDONED)."""
        c = self.client
        runs = c.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = {_quote(self.parent_run_id)}"
                                                               " and attributes.status = 'RUNNING'", max_results=1000)
        for run in runs:
            tid = run.data.tags.get(TAG_TRIAL)
            if not tid or tid in owned:
                continue
            doc = record.read_trial(self.experiment_dir, tid) or {}
            if doc.get("status") == "TERMINATED":
                self._finish(_Orphan(tid, doc.get("config") or {}), "FINISHED")
            else:
                c.set_tag(run.info.run_id, TAG_STATUS, doc.get("status", "ABANDONED"))
                c.set_terminated(run.info.run_id, status="KILLED")

    def _existing_run(self, trial):
        rid = self._runs.get(trial.trial_id)
        if rid is not None:
            return self.client.get_run(rid)
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{TAG_TRIAL}` = {_quote(trial.trial_id)} and "
                                                f"tags.`{TAG_PARENT}` = {_quote(self.parent_run_id)}",
            max_results=1)
        return found[0] if found else None


__all__ = ["MLflowCallback", "check_tracking_uri", "default_tracking_uri", "write_trial_artifacts", "METRICS"]
