"""The facts a trial record and an experiment folder are made of, each defined once (DESIGN §4, §6).

The trainer, the runner (``tune/``) and the reports (``analysis/``) import these names instead of
spelling them again: the experiment folder's file names, the per-phase metric names, the search
objectives, and what "finished" means for a trial.  Plain constants and functions, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------ experiment folder
EXPERIMENT_FILE = "lucir_experiment.json"  # the sweep's metadata, written by the driver before any trial
TRIALS_DIR = "trials"                      # trials/<trial_id>.json: one record per trial, written by its worker
JOURNAL_FILE = "optuna_journal.log"        # Optuna's journal storage of a search
BASE_CACHE_DIR = "base_cache"              # the shared base-phase cache
CONFIRM_DIR = "confirm"                    # a search's confirm stage: an experiment folder of its own

# ------------------------------------------------------------------------------ metrics (DESIGN §4)
#: per phase, in this order
METRICS = ("acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn", "avg_inc_acc_cnn", "avg_inc_acc_nme",
           "forgetting_cnn", "train_seconds")
#: other per-phase values the trainer reports
EXTRA_METRICS = ("phase_seconds", "eta", "lambda", "exemplars")
#: on the held-out validation split (``Protocol.val_fraction`` > 0 only)
VAL_METRICS = ("val_acc_cnn", "val_acc_nme", "val_avg_inc_acc_cnn", "val_avg_inc_acc_nme")
#: the paper's headline metric, at the last phase; a search's objective without a validation split
OBJECTIVE = "avg_inc_acc_cnn"
#: a search's objective with a validation split (never select on the test set)
VAL_OBJECTIVE = "val_avg_inc_acc_cnn"
MODE = "max"

#: ABANDONED: a trial a killed driver started after Tune's last snapshot and that the resumed sweep does not own
#: (its Optuna trial, if unfinished, was run again under another trial id); it never counts
STATUSES = ("TERMINATED", "RUNNING", "PRUNED", "ERROR", "ABANDONED")
#: statuses whose records never count, whatever phases they hold
DISCARDED = ("ERROR", "ABANDONED")


def objective(val_fraction: float | None) -> str:
    """The search objective: validation average incremental accuracy when a split is held out."""
    return VAL_OBJECTIVE if val_fraction and float(val_fraction) > 0 else OBJECTIVE


def number(v: Any) -> float | None:
    """A metric read back from strict JSON: null (undefined) and NaN are None."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    return float(v)


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
    #: a member of a fused array (``lucir.fused``): {"array": Tune trial id, "index": i, "size": N}; else {}
    fused: dict[str, Any] = field(default_factory=dict)

    @property
    def num_phases(self) -> int | None:
        """Incremental phases after the base phase (``config["phases"]``)."""
        n = self.config.get("phases")
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
                   fused=dict(d.get("fused") or {}) if isinstance(d.get("fused"), dict) else {}, **extra)


# ------------------------------------------------------------------------------ trial records and status
#: ``trials/<trial_id>.json`` is the trial's record (config, phases, accuracy matrices, base-cache use),
#: written only by the trial's worker; ``trials/<trial_id>.status.json`` is the driver's final word on it
#: (TERMINATED, PRUNED, ERROR with the error text), written only by the driver.  Readers merge the two.
RECORD_SUFFIX = ".json"
STATUS_SUFFIX = ".status.json"


#: a fused array's Tune trial config is ``{ARRAY_KEY: [flat config of each member]}`` (``lucir.fused``); each
#: member is a trial of its own in the folder, ``member_ids`` names them
ARRAY_KEY = "members"


def member_ids(array_id: str, n: int) -> list[str]:
    """The trial ids of an array's members: the array's own id for an array of one, else ``<id>_m<i>``."""
    return [array_id] if n == 1 else [f"{array_id}_m{i}" for i in range(n)]


#: ``trials/<array id>.pruned.json``: the members of a fused array that ASHA stopped (``{"members": [ids]}``),
#: written only by the driver's scheduler (tune/asha.py), read by the array's worker, which stops their slice
PRUNED_SUFFIX = ".pruned.json"


def pruned_path(folder, array_id: str):
    from pathlib import Path

    return Path(folder) / TRIALS_DIR / f"{array_id}{PRUNED_SUFFIX}"


def read_pruned(folder, array_id: str) -> set[str]:
    """The member ids of a fused array that its scheduler stopped (empty: none, or no file)."""
    doc = read_json_dict(pruned_path(folder, array_id)) or {}
    return {str(m) for m in doc.get("members") or []}


def trial_members(trial_id: str, config: dict) -> list[tuple[str, dict]]:
    """(trial id, flat config) of every trial a Tune trial runs: itself, or each member of a fused array."""
    members = config.get(ARRAY_KEY) if isinstance(config, dict) else None
    if not isinstance(members, (list, tuple)):
        return [(trial_id, dict(config))]
    return list(zip(member_ids(trial_id, len(members)), [dict(m) for m in members]))


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
        if name.endswith(PRUNED_SUFFIX):
            continue
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
