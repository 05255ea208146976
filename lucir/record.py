"""The facts a trial record and an experiment folder are made of, each defined once (DESIGN §4, §6).

The trainer, the runner (``tune/``) and the reports (``analysis/``) import these names instead of
spelling them again: the experiment folder's file names, the per-phase metric names, the search
objectives, and what "finished" means for a trial.  Plain constants and functions, no torch.
"""

from __future__ import annotations

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

STATUSES = ("TERMINATED", "RUNNING", "PRUNED", "ERROR")


def objective(val_fraction: float | None) -> str:
    """The search objective: validation average incremental accuracy when a split is held out."""
    return VAL_OBJECTIVE if val_fraction and float(val_fraction) > 0 else OBJECTIVE


def phases_done(record: dict[str, Any]) -> int:
    return len(record.get("phases") or [])


def is_finished(record: dict[str, Any]) -> bool:
    """A trial record is finished when it holds every phase (the base phase included: ``num_phases + 1``
    rows) and did not fail; only finished trials count in tables and searches."""
    n = record.get("num_phases", (record.get("config") or {}).get("phases"))
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return False
    return phases_done(record) == int(n) + 1 and record.get("status") != "ERROR"
