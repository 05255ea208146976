"""MLflow as a mirror of the experiment folder: one idempotent ``sync(exp)`` (DESIGN §6).

The records (``trials/<slot>.json``) are the truth; MLflow is brought up to date from them, by the driver
only: on a throttled background thread while the sweep runs (``Syncer``), at its end, and from
``lucir resume`` and ``lucir report``.  One parent run per sweep (tag ``lucir.role=sweep``) and one child
run per slot (tags ``lucir.trial_id=<slot>``, ``mlflow.parentRunId``); each record row is logged with
``step = phase`` and ``timestamp`` = when the phase ended; the run ends FINISHED (TERMINATED), KILLED
(PRUNED) or FAILED (ERROR) as the record says, with the per-phase table and both accuracy matrices as
CSV artifacts.  The run ids and how many phases each run holds are in ``<exp>/mlflow_runs.json``, per
tracking URI (this module is its only writer), so ``--mlflow-uri`` can change at resume: the new store
is filled from the records.  A run created just before a crash (its id not yet in the file) is found
again by its tags; a metric logged twice with the same step, timestamp and value is stored once.

A tracking store that cannot be reached only delays the sync: a warning, the sweep goes on, the next
sync catches up; nothing is ever dropped, because nothing is queued: the records are read again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lucir import record
from lucir.checkpoint import atomic_write_json

log = logging.getLogger("lucir.tune")

TAG_ROLE, TAG_SWEEP, TAG_TRIAL, TAG_EXP_DIR = "lucir.role", "lucir.sweep", "lucir.trial_id", "lucir.experiment_dir"
TAG_STATUS, TAG_PARENT, TAG_BASE_CACHE, TAG_ERROR = ("lucir.status", "mlflow.parentRunId", "lucir.base_cache",
                                                    "lucir.error")
TRIAL_TAG_FIELDS = ("preset", "dataset", "base_classes", "phases", "seed")
RUN_STATUS = {"TERMINATED": "FINISHED", "PRUNED": "KILLED", "ERROR": "FAILED", "ABANDONED": "KILLED"}
HTTP_TIMEOUT_S = 5.0

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a server that is down fails in seconds
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def check_tracking_uri(uri: str) -> None:
    """Raise ``ValueError`` naming ``uri`` when it cannot be an MLflow store: an http(s) server that does not
    answer within seconds, a sqlite URI that is malformed, in memory or unwritable, a file store."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"MLflow tracking URI {uri!r} is empty: use sqlite:////abs/path/mlflow.db or http://host:5000")
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HTTP_TIMEOUT_S) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            raise ValueError(f"MLflow tracking server {uri} does not answer ({exc}); start it or give another "
                             "--mlflow-uri (or --no-mlflow)") from None
    elif scheme == "sqlite":
        rest = uri[len("sqlite:"):]
        path = rest[3:].split("?", 1)[0] if rest.startswith("///") else ""
        if not path or path == ":memory:":
            raise ValueError(f"MLflow tracking URI {uri!r} is not usable: give a database file, e.g. "
                             "sqlite:////abs/exp/mlflow.db")
        folder = Path(path).absolute().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder):
                pass
        except OSError as exc:
            raise ValueError(f"MLflow tracking URI {uri!r} is not usable: cannot write in {folder} ({exc})") from None
    elif scheme in ("", "file"):
        raise ValueError(f"MLflow tracking URI {uri!r} is a file store, which MLflow >= 3.13 refuses: use "
                         "sqlite:////<absolute folder>/mlflow.db (the default) or http://host:5000")


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def write_artifacts(rec: dict, folder: Path) -> None:
    """``phases.csv`` (one row per phase), ``acc_matrix_cnn.csv``, ``acc_matrix_nme.csv`` (phase x class
    group, group 0 = base classes; groups not yet seen empty) and ``trial.json``."""
    import pandas as pd

    pd.DataFrame(rec.get("phases") or []).to_csv(folder / "phases.csv", index=False)
    for key in ("acc_matrix_cnn", "acc_matrix_nme"):
        if rec.get(key):
            mat = pd.DataFrame(rec[key]).rename(columns=lambda g: f"group_{g}").rename_axis("phase")
            mat.to_csv(folder / f"{key}.csv")
    (folder / "trial.json").write_text(json.dumps(rec, indent=2))


class _Store:
    """The experiment's runs in one tracking store (``mlflow_runs.json`` entry of that URI)."""

    def __init__(self, exp: Path, doc: dict, uri: str):
        from mlflow import MlflowClient

        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db is not None and not db.exists():  # the schema takes seconds to create: a kill then breaks the store
            tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
            os.replace(tmp, db)
        self.exp, self.doc, self.uri = exp, doc, uri
        self.c = MlflowClient(tracking_uri=uri)
        self.path = exp / record.MLFLOW_RUNS_FILE
        self.all = record.read_json_dict(self.path) or {}
        self.mine = self.all.setdefault(uri, {"parent": None, "slots": {}})
        self.exp_id = self.mine["experiment_id"] = self._experiment()  # the reports' links need it
        self.parent = self.mine["parent"] or self._find_or_create(None)
        self.mine["parent"] = self.parent
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.all)

    def _experiment(self) -> str:
        name = self.doc.get("mlflow_experiment") or self.doc["name"]
        e = self.c.get_experiment_by_name(name)
        if e is not None:
            if e.lifecycle_stage == "deleted":
                self.c.restore_experiment(e.experiment_id)
            return e.experiment_id
        loc = None
        if self.uri.startswith("sqlite:"):  # artifacts beside the database, not in the driver's cwd
            loc = (Path(self.uri[len("sqlite:///"):]).absolute().parent / "mlartifacts").as_uri()
        return self.c.create_experiment(name, artifact_location=loc)

    def _find_or_create(self, slot: str | None, cfg: dict | None = None) -> str:
        """The run of ``slot`` (None: the sweep's parent; ``cfg``: the slot's config) found by its tags, or
        created."""
        if slot is None:
            where = f"tags.`{TAG_ROLE}` = 'sweep' and tags.`{TAG_EXP_DIR}` = {_quote(str(self.exp))}"
        else:
            where = f"tags.`{TAG_TRIAL}` = {_quote(slot)} and tags.`{TAG_PARENT}` = {_quote(self.parent)}"
        found = self.c.search_runs([self.exp_id], filter_string=where, order_by=["attributes.start_time ASC"],
                                   max_results=5)
        if found:
            return found[0].info.run_id
        tags = {TAG_SWEEP: self.doc["name"], "sweep": self.doc["name"], TAG_EXP_DIR: str(self.exp),
                "kind": self.doc.get("kind", "")}
        if slot is None:
            return self.c.create_run(self.exp_id, tags={**tags, TAG_ROLE: "sweep"}, run_name=self.doc["name"]).info.run_id
        cfg = cfg or {}
        tags.update({TAG_ROLE: "trial", TAG_TRIAL: slot, "lucir.trial_name": slot, TAG_PARENT: self.parent,
                     **{k: str(cfg[k]) for k in TRIAL_TAG_FIELDS if k in cfg}})
        if cfg.get("preset"):
            tags["lucir.preset"] = str(cfg["preset"])
        if all(k in cfg for k in ("dataset", "base_classes", "phases")):
            tags["protocol"] = f"{cfg['dataset']}-B{cfg['base_classes']}-P{cfg['phases']}"
        return self.c.create_run(self.exp_id, tags=tags, run_name=slot).info.run_id

    def slot(self, rec: dict) -> None:
        from mlflow.entities import Metric, Param

        sid = rec["trial_id"]
        e = self.mine["slots"].get(sid)
        if e is None:
            e = {"run": self._find_or_create(sid, rec.get("config")), "logged": 0, "params": False, "status": None}
            self.mine["slots"][sid] = e
            self.save()
        rid, before = e["run"], dict(e)
        if not e["params"]:
            params = [Param(k, _param_str(v)) for k, v in sorted((rec.get("config") or {}).items())]
            for i in range(0, len(params), 100):
                self.c.log_batch(rid, params=params[i:i + 100])
            e["params"] = True
        rows, ended = rec.get("phases") or [], rec.get("ended") or []
        if len(rows) > e["logged"]:
            ms = []
            for i in range(e["logged"], len(rows)):
                ts = int(1000 * (ended[i] if i < len(ended) else time.time()))
                for k, v in rows[i].items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
                        ms.append(Metric(k, math.nan if v is None else float(v), ts, int(rows[i]["phase"])))
            for i in range(0, len(ms), 1000):
                self.c.log_batch(rid, metrics=ms[i:i + 1000])
            e["logged"] = len(rows)
        status = rec.get("status", "RUNNING")
        if status != e["status"]:
            self.c.set_tag(rid, TAG_STATUS, status)
            if rec.get("base_cache"):  # "hit" / "miss": known from the slot's first phase on
                self.c.set_tag(rid, TAG_BASE_CACHE, rec["base_cache"])
            if rec.get("error") or before["status"] == "ERROR":  # a failed slot's error, cleared when it reruns
                self.c.set_tag(rid, TAG_ERROR, (rec.get("error") or "")[-4000:])
            if status in RUN_STATUS:
                with tempfile.TemporaryDirectory() as d:
                    write_artifacts(rec, Path(d))
                    self.c.log_artifacts(rid, d)
                end = int(1000 * ended[-1]) if ended else None
                self.c.set_terminated(rid, status=RUN_STATUS[status], end_time=end)
            elif e["status"] is not None:
                self.c.update_run(rid, status="RUNNING")
            e["status"] = status
        if e != before:
            self.save()

    def finish(self, done: bool) -> None:
        if done and self.mine.get("parent_status") != "FINISHED":
            self.c.set_terminated(self.parent, status="FINISHED")
            self.mine["parent_status"] = "FINISHED"
            self.save()


def sync(exp: str | os.PathLike, uri: str | None = None) -> bool:
    """Bring the tracking store up to date with the folder's records; False (and a warning) when the store
    cannot be reached or refuses: the next sync catches up.  Idempotent; the driver is the only caller."""
    exp = Path(exp).absolute()
    doc = record.read_json_dict(exp / record.EXPERIMENT_FILE) or {}
    uri = uri or doc.get("mlflow_uri")
    if not uri:
        return True
    try:
        check_tracking_uri(uri)
        store = _Store(exp, doc, uri)
        recs = record.read_trials(exp)
        for rec in recs:
            store.slot(rec)
        ids = {s["id"] for s in doc.get("slots") or []}
        store.finish(bool(ids) and all(record.is_final(r) for r in recs if r["trial_id"] in ids)
                     and ids <= {r["trial_id"] for r in recs})
        return True
    except Exception as exc:  # noqa: BLE001 - a store that is down must never stop the sweep
        log.warning("MLflow sync of %s to %s postponed: %s: %s", exp.name, uri, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "")
        return False


class Syncer:
    """``sync`` on a background thread of the driver: at most every ``interval`` seconds while poked, never
    blocking the caller; ``close`` runs one last sync and waits for it."""

    def __init__(self, exp: Path, uri: str | None, interval: float = 10.0):
        self.exp, self.uri, self.interval = exp, uri, interval
        self._poked, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lucir-mlflow-sync", daemon=True)
        if uri:
            self._thread.start()

    def poke(self) -> None:
        self._poked.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._poked.wait(0.5):
                self._poked.clear()
                sync(self.exp, self.uri)
                self._stop.wait(self.interval)

    def close(self) -> bool:
        if not self.uri:
            return True
        self._stop.set()
        self._thread.join()
        return sync(self.exp, self.uri)
