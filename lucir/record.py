"""The facts a trial record and an experiment folder are made of, each defined once (DESIGN §4, §6).

The trainer, the runner (``tune/``) and the reports (``analysis/``) import these names instead of
spelling them again: the experiment folder's file names, the per-phase metric names, the search
objectives, and what "finished" means for a trial.  Plain constants and functions, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------ experiment folder
EXPERIMENT_FILE = "lucir_experiment.json"  # the sweep: its slots and options, written once by the driver
TRIALS_DIR = "trials"                      # trials/<slot>.json: one record per slot, written by its worker
JOURNAL_FILE = "optuna_journal.log"        # Optuna's journal storage of a search (the study, in the folder)
BASE_CACHE_DIR = "base_cache"              # the shared base-phase cache
CONFIRM_DIR = "confirm"                    # a search's confirm stage: an experiment folder of its own
LOCK_FILE = "driver.lock"                  # the driver's exclusive lock on the folder (pid, host, token)
MLFLOW_RUNS_FILE = "mlflow_runs.json"      # MLflow run ids per tracking URI and slot, written only by the driver
RAY_DIR = "ray"                            # Ray Tune's own files: disposable, never read back
#: the Optuna user attribute naming the slot a study trial belongs to
SLOT_ATTR = "lucir.slot"


def slot_id(i: int) -> str:
    """The id of slot ``i`` of a sweep: names its record, state file, Optuna trial and MLflow run."""
    return f"s{int(i):04d}"


def array_id(i: int) -> str:
    """The id of fused array ``i`` of a sweep (its members are slots)."""
    return f"a{int(i):03d}"


# ------------------------------------------------------------------------------ metrics (DESIGN §4)
#: per phase, in this order
METRICS = ("acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn", "avg_inc_acc_cnn", "avg_inc_acc_nme",
           "forgetting_cnn", "train_seconds")
#: other per-phase values the trainer reports (``lambda_t``: the phase's less-forget weight, 0 when off)
EXTRA_METRICS = ("phase_seconds", "eta", "lambda_t", "exemplars")
#: per-phase imbalance diagnostics the trainer reports (old/new, top-5, ambiguity, magnitudes, BWT), defined
#: in ``lucir.metrics``; NaN (JSON null) in phase 0 where they need old classes
DIAGNOSTIC_METRICS = ("acc_old_nme", "acc_new_nme", "top5_cnn", "top5_nme", "old_as_new_cnn", "new_as_old_cnn",
                      "old_as_new_nme", "new_as_old_nme", "weight_norm_old", "weight_norm_new",
                      "feature_norm_old", "feature_norm_new", "forgetting_nme", "bwt_cnn", "bwt_nme")
#: on the held-out validation split (``Protocol.val_fraction`` > 0 only)
VAL_METRICS = ("val_acc_cnn", "val_acc_nme", "val_avg_inc_acc_cnn", "val_avg_inc_acc_nme")
#: the paper's headline metric, at the last phase; a search's objective without a validation split
OBJECTIVE = "avg_inc_acc_cnn"
#: a search's objective with a validation split (never select on the test set)
VAL_OBJECTIVE = "val_avg_inc_acc_cnn"
MODE = "max"

#: RUNNING: written by the worker after every phase; TERMINATED (every phase) and PRUNED (stopped by the
#: search's pruner) are final and written by the worker; ERROR: the driver's word on a slot whose worker failed
#: for good in this driver's run (``lucir resume`` runs it again); ABANDONED: only in folders of runner v2
STATUSES = ("TERMINATED", "RUNNING", "PRUNED", "ERROR", "ABANDONED")
#: statuses whose records never count, whatever phases they hold
DISCARDED = ("ERROR", "ABANDONED")
#: a slot whose record holds one of these is done: no driver runs it again
FINAL = ("TERMINATED", "PRUNED")


def is_final(record: dict[str, Any] | None) -> bool:
    """The slot is done (finished every phase, or pruned); anything else is run (again) by the next driver."""
    return bool(record) and record.get("status") in FINAL


def objective(val_fraction: float | None) -> str:
    """The search objective: validation average incremental accuracy when a split is held out."""
    return VAL_OBJECTIVE if val_fraction and float(val_fraction) > 0 else OBJECTIVE


def number(v: Any) -> float | None:
    """A metric read back from strict JSON: null (undefined) and NaN are None."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    return float(v)


def last_value(record: dict[str, Any] | None, metric: str) -> float | None:
    """``metric`` at the record's last phase (None: no phase, or undefined)."""
    phases = (record or {}).get("phases") or []
    return number(phases[-1].get(metric)) if phases else None


def phases_done(record: dict[str, Any]) -> int:
    return len(record.get("phases") or [])


def is_finished(record: dict[str, Any]) -> bool:
    """A trial record is finished when it holds every phase (the base phase included: ``num_phases + 1``
    rows) and was neither failed nor abandoned; only finished trials count in tables and searches."""
    n = record.get("num_phases", (record.get("config") or {}).get("phases"))
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return False
    return phases_done(record) == int(n) + 1 and record.get("status") not in DISCARDED


# ------------------------------------------------------------------------------ the trial record
@dataclass
class TrialRecord:
    """One trial as the runner records it in ``trials/<trial_id>.json`` (its worker writes it before every
    phase report): the flat config, one metrics row per completed phase (``METRICS`` + ``EXTRA_METRICS``
    [+ ``VAL_METRICS``], base phase first), the accuracy matrices (phase x class group), whether its base
    phase came from the shared cache, and its status (``RUNNING`` from the worker; the driver's final
    word is in the status file, see ``merge``)."""

    trial_id: str
    trial_name: str = ""
    sweep: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    phases: list[dict[str, Any]] = field(default_factory=list)
    status: str = "RUNNING"
    error: str = ""
    base_cache: str = ""
    acc_matrix_cnn: list[list[float]] = field(default_factory=list)
    acc_matrix_nme: list[list[float]] = field(default_factory=list)
    #: a member of a fused array (``lucir.fused``): {"array": array id, "index": i, "size": N}; else {}
    fused: dict[str, Any] = field(default_factory=dict)
    #: every time a worker started (or resumed) training: {"phase", "epoch" (first epoch it trains), "time",
    #: "host", "pid", "node" (Ray's node id)}; a finished phase never appears again after its row (the runner's
    #: chaos test counts them)
    starts: list[dict[str, Any]] = field(default_factory=list)
    #: unix time at which each phase row was written (MLflow's timestamp of that phase)
    ended: list[float] = field(default_factory=list)
    #: the Optuna trial number of a search slot (None: not a search)
    optuna_trial: int | None = None
    #: the last phase this slot trains when it stops before the stream's end (a first-task search); None: all
    last_phase: int | None = None

    @property
    def num_phases(self) -> int | None:
        """Incremental phases the slot trains after the base phase (``config["phases"]``, or ``last_phase``)."""
        n = self.config.get("phases") if self.last_phase is None else self.last_phase
        return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None

    @property
    def finished(self) -> bool:
        return is_finished(self.to_json())

    def to_json(self) -> dict[str, Any]:
        d = {"trial_id": self.trial_id, "trial_name": self.trial_name, "sweep": self.sweep,
             "config": dict(self.config), "phases": [dict(p) for p in self.phases], "num_phases": self.num_phases,
             "acc_matrix_cnn": [list(r) for r in self.acc_matrix_cnn],
             "acc_matrix_nme": [list(r) for r in self.acc_matrix_nme], "status": self.status,
             "base_cache": self.base_cache}
        if self.error:
            d["error"] = self.error
        if self.fused:
            d["fused"] = dict(self.fused)
        d["starts"] = [dict(x) for x in self.starts]
        d["ended"] = list(self.ended)
        if self.optuna_trial is not None:
            d["optuna_trial"] = self.optuna_trial
        if self.last_phase is not None:
            d["last_phase"] = self.last_phase
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], trial_id: str = "", **extra: Any) -> "TrialRecord":
        """Tolerant of older or partial files: missing keys take their defaults, unknown keys are ignored."""
        return cls(trial_id=str(d.get("trial_id") or trial_id), trial_name=str(d.get("trial_name") or ""),
                   sweep=str(d.get("sweep") or ""), config=dict(d.get("config") or {}),
                   phases=[p for p in (d.get("phases") or []) if isinstance(p, dict)],
                   status=str(d.get("status") or "RUNNING").upper(), error=str(d.get("error") or ""),
                   base_cache=str(d.get("base_cache") or ""), acc_matrix_cnn=d.get("acc_matrix_cnn") or [],
                   acc_matrix_nme=d.get("acc_matrix_nme") or [],
                   fused=dict(d.get("fused") or {}) if isinstance(d.get("fused"), dict) else {},
                   starts=[x for x in d.get("starts") or [] if isinstance(x, dict)],
                   ended=[float(x) for x in d.get("ended") or [] if isinstance(x, (int, float))],
                   optuna_trial=d.get("optuna_trial") if isinstance(d.get("optuna_trial"), int) else None,
                   last_phase=d.get("last_phase") if isinstance(d.get("last_phase"), int) else None, **extra)


# ------------------------------------------------------------------------------ trial records and status
#: ``trials/<slot>.json`` is the slot's record (config, phases, accuracy matrices, base-cache use, status),
#: written only by the slot's worker; ``trials/<slot>.status.json`` is the driver's word on a slot whose
#: worker failed for good (ERROR with the error text), written only by the driver, removed by it when it
#: runs the slot again.  Readers merge the two.
RECORD_SUFFIX = ".json"
STATUS_SUFFIX = ".status.json"


def record_path(folder, trial_id: str):
    from pathlib import Path

    return Path(folder) / TRIALS_DIR / f"{trial_id}{RECORD_SUFFIX}"


def status_path(folder, trial_id: str):
    from pathlib import Path

    return Path(folder) / TRIALS_DIR / f"{trial_id}{STATUS_SUFFIX}"


def read_json_dict(path) -> dict | None:
    """A JSON object from ``path``; None when it is missing, unreadable or not an object."""
    import json

    try:
        with open(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_status(folder, trial_id: str) -> dict | None:
    """The driver's status file of a trial (None while the driver has not ended it)."""
    return read_json_dict(status_path(folder, trial_id))


def merge(record: dict | None, status: dict | None) -> dict:
    """A trial as readers see it: the worker's record, with the driver's status and error on top; a trial
    that failed before its worker wrote anything is its status file alone (no phases)."""
    out = dict(record or {})
    if record is None and status is not None:
        out.update({k: status[k] for k in ("trial_id", "trial_name", "sweep", "config", "num_phases")
                    if k in status})
        out.setdefault("phases", [])
    if status is not None:
        out["status"] = status.get("status", out.get("status"))
        if status.get("error"):
            out["error"] = status["error"]
        else:
            out.pop("error", None)
    out.setdefault("status", "RUNNING")
    return out


def trial_ids(folder) -> list[str]:
    """Every trial of an experiment folder with a record or a status file, sorted."""
    from pathlib import Path

    d = Path(folder) / TRIALS_DIR
    if not d.is_dir():
        return []
    ids = set()
    for p in d.glob("*.json"):
        name = p.name
        ids.add(name[:-len(STATUS_SUFFIX)] if name.endswith(STATUS_SUFFIX) else name[:-len(RECORD_SUFFIX)])
    return sorted(ids)


def read_trial(folder, trial_id: str) -> dict | None:
    rec, st = read_json_dict(record_path(folder, trial_id)), read_status(folder, trial_id)
    if rec is None and st is None:
        return None
    return merge(rec, st)


def read_trials(folder) -> list[dict]:
    """Every trial of an experiment folder (record + driver status merged), by trial id."""
    return [t for t in (read_trial(folder, i) for i in trial_ids(folder)) if t is not None]
