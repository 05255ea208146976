"""Read an experiment into one long DataFrame: one row per trial x phase (DESIGN §2, §4).

Two sources give the same frame for the same trials:

* the experiment folder the runner writes (``docs/EXPERIMENT_LAYOUT.md``): ``lucir_experiment.json``
  and one ``trials/<trial_id>.json`` per trial (config, per-phase metrics, accuracy matrices, status);
* an MLflow experiment: one child run per trial (params = the flat config, metrics with
  ``step = phase``, tags ``lucir.trial_id``, ``lucir.preset``, ``lucir.sweep``, ``lucir.status``) under
  a parent run per sweep.

Failed, pruned and unfinished trials are kept: a trial that never reported a phase is one row with
``phase`` missing (``pd.NA``), so every trial the runner started appears in the frame. A trial is
``finished`` when it reported every phase (``len(phases) == config["phases"] + 1``) and did not fail.

This module knows nothing of training; it only uses the field names and types of ``lucir.config``
to give every config column one dtype whichever source it came from.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from lucir.record import (EXPERIMENT_FILE, EXTRA_METRICS, JOURNAL_FILE, METRICS, OBJECTIVE, STATUSES,  # noqa: F401
                          TRIALS_DIR, VAL_METRICS, is_finished)
from lucir import record

#: Protocol columns: trials with equal values ran the same class-incremental protocol.
PROTOCOL = ("dataset", "base_classes", "phases", "exemplars_per_class", "memory_total")
#: The LUCIR hyperparameters (DESIGN §3) and the search space of ``lucir search``.
HYPERPARAMS = ("eta_init", "lambda_base", "margin", "K")

_ID_COLS = ("trial_id", "trial_name", "sweep", "preset")
_LEAD_CONFIG = PROTOCOL + ("seed",) + HYPERPARAMS
_TAIL_COLS = ("status", "finished", "phases_done", "error", "base_cache", "updated")


class ExperimentError(RuntimeError):
    """The experiment folder or MLflow experiment cannot be read (missing, not an experiment)."""


# --------------------------------------------------------------------------- config field types
def _config_fields() -> dict[str, str]:
    """Flat config field -> type name ('int', 'float', 'bool', 'str', 'tuple[int, ...]'), in Config order."""
    try:
        from dataclasses import fields

        from lucir.config import Config
    except ImportError:  # pragma: no cover - the trainer ships in the same wheel
        return {}
    # Config's fields are its sections (protocol, method, schedule, runtime), each a dataclass
    return {f.name: str(f.type) for sec in fields(Config) for f in fields(sec.default_factory)}


def _runtime_fields() -> tuple[str, ...]:
    try:
        from lucir.config import RUNTIME_FIELDS as rt
    except ImportError:  # pragma: no cover
        rt = ("device", "bf16", "channels_last", "compile", "threads", "eval_batch_size", "gpu_memory_fraction")
    return tuple(sorted(rt)) + ("data_root",)


CONFIG_FIELDS: dict[str, str] = _config_fields()
#: How a trial ran, not what it computed (plus where the data lies): never part of a configuration's identity.
RUNTIME_FIELDS = _runtime_fields()


def parse_param(text: Any, ftype: str | None = None) -> Any:
    """A value back from its MLflow param string (``str(value)``): 'True' -> True, '[20, 25]' -> (20, 25)."""
    if not isinstance(text, str):
        return text
    s = text.strip()
    if ftype == "str":
        return s
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    if s in ("None", "null", ""):
        return None
    if s[:1] in "[(":
        try:
            return tuple(ast.literal_eval(s))
        except (ValueError, SyntaxError):
            return s
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    return s


def _coerce(name: str, value: Any) -> Any:
    """One Python type per config field, so JSON (5 vs 5.0) and MLflow ('5.0') sources agree."""
    ftype = CONFIG_FIELDS.get(name)
    value = parse_param(value, ftype)
    if value is None or ftype is None:
        return tuple(value) if isinstance(value, list) else value
    try:
        if ftype == "float":
            return float(value)
        if ftype == "int" and not isinstance(value, bool):
            return int(value)
        if ftype == "bool":
            return bool(value)
        if ftype.startswith("tuple"):
            return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    except (TypeError, ValueError):
        return value
    return value


# --------------------------------------------------------------------------- records
@dataclass
class TrialRecord(record.TrialRecord):
    """One trial (``lucir.record.TrialRecord``: the record the runner writes), from whichever source, with
    when it was last written; ``finished`` (every phase, not failed) decides what counts in tables."""

    updated: float = math.nan  # POSIX time of the last record (file mtime or MLflow end time)


@dataclass
class Experiment:
    """An experiment read from disk: metadata, one record per trial, the long frame, notes."""

    path: Path | None
    meta: dict[str, Any]
    trials: list[TrialRecord]
    frame: pd.DataFrame
    source: str = "folder"
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or (self.path.name if self.path else "experiment"))

    @property
    def metric(self) -> str:
        return str(self.meta.get("metric") or OBJECTIVE)

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode") or "max")

    def trial(self, trial_id: str) -> TrialRecord:
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise KeyError(trial_id)


def frame_from_records(records: Iterable[TrialRecord]) -> pd.DataFrame:
    """The long frame: one row per trial x reported phase; a trial with no phase is one row, phase NA."""
    records = list(records)
    cfg_keys: list[str] = [k for k in CONFIG_FIELDS]
    for r in records:
        cfg_keys += [k for k in r.config if k not in cfg_keys]
    cfg_cols = [k for k in _LEAD_CONFIG if k in cfg_keys] + [k for k in cfg_keys if k not in _LEAD_CONFIG
                                                              and k != "preset"]
    extra: list[str] = []
    for r in records:
        for p in r.phases:
            extra += [k for k in p if k not in METRICS and k not in EXTRA_METRICS
                      and k not in ("phase", "classes_seen") and k not in extra]
    metric_cols = list(METRICS) + list(EXTRA_METRICS) + extra
    rows = []
    for r in records:
        cfg = {k: _coerce(k, r.config.get(k)) for k in cfg_keys}
        base = {"trial_id": r.trial_id, "trial_name": r.trial_name, "sweep": r.sweep,
                "preset": r.config.get("preset")}
        base.update({k: cfg.get(k) for k in cfg_cols})
        tail = {"status": r.status, "finished": r.finished, "phases_done": len(r.phases),
                "error": r.error, "base_cache": r.base_cache, "updated": r.updated}
        if not r.phases:
            rows.append({**base, "phase": pd.NA, "classes_seen": pd.NA,
                         **{m: math.nan for m in metric_cols}, **tail})
        for p in sorted(r.phases, key=lambda p: p.get("phase", 0)):
            rows.append({**base, "phase": p.get("phase"), "classes_seen": p.get("classes_seen"),
                         **{m: _float(p.get(m)) for m in metric_cols}, **tail})
    columns = list(_ID_COLS) + cfg_cols + ["phase", "classes_seen"] + metric_cols + list(_TAIL_COLS)
    df = pd.DataFrame(rows, columns=columns)
    for c in ("phase", "classes_seen", "phases_done"):
        df[c] = pd.array([None if _missing(v) else int(v) for v in df[c]], dtype="Int64")
    for c in metric_cols + ["updated"]:
        df[c] = df[c].astype("float64")
    df["finished"] = df["finished"].astype(bool)
    for c in ("trial_id", "trial_name", "sweep", "status", "error", "base_cache"):
        df[c] = df[c].fillna("").astype(object)
    for c in cfg_cols:  # one dtype per config column (object columns keep tuples and None)
        ftype = CONFIG_FIELDS.get(c)
        vals = df[c]
        try:
            if ftype == "int":
                df[c] = pd.array([None if _missing(v) else int(v) for v in vals], dtype="Int64")
            elif ftype == "float":
                df[c] = vals.astype("float64")
            elif ftype == "bool":
                df[c] = pd.array([None if _missing(v) else bool(v) for v in vals], dtype="boolean")
        except (TypeError, ValueError):  # a value of another type: keep the column as it is
            pass
    df = df.sort_values(["trial_id", "phase"], na_position="first", kind="stable").reset_index(drop=True)
    return df


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan if v is None else float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- experiment folder
def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # strict JSON (null for NaN); a NaN token from an older runner is read too


def _trial_from_json(rec_path: Path) -> TrialRecord:
    """A trial from its record path (the worker's file, which may not exist yet) merged with the driver's
    status file (``lucir.record``)."""
    trial_id = rec_path.name[:-len(record.RECORD_SUFFIX)]
    status = record.read_status(rec_path.parent.parent, trial_id)
    try:
        d = read_json(rec_path) if rec_path.exists() or status is None else None
        if d is not None and not isinstance(d, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return TrialRecord(trial_id=trial_id, status="ERROR",
                           error=f"unreadable {TRIALS_DIR}/{rec_path.name}: {exc}", updated=_mtime(rec_path))
    d = record.merge(d, status)
    return TrialRecord.from_json(d, trial_id, updated=_mtime(rec_path if rec_path.exists() else
                                                             record.status_path(rec_path.parent.parent, trial_id)))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return math.nan


def _trials_from_ray_dirs(path: Path) -> list[TrialRecord]:
    """Trials from Ray Tune's own trial folders (``params.json`` + ``result.json``, one JSON line per report).

    A fallback for a folder without ``trials/``: the config is resolved to the full flat lucir config,
    the status is ERROR when Ray left an ``error.txt``, TERMINATED when every phase was reported, else RUNNING.
    """
    out = []
    for d in sorted(p for p in path.iterdir() if p.is_dir() and (p / "params.json").exists()):
        try:
            params = read_json(d / "params.json")
        except (OSError, ValueError):
            continue
        phases, trial_id = [], ""
        rfile = d / "result.json"
        if rfile.exists():
            for line in rfile.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                trial_id = trial_id or str(r.get("trial_id") or "")
                if isinstance(r.get("phase"), (int, float)):
                    phases.append({k: r[k] for k in ("phase", "classes_seen", *METRICS, *EXTRA_METRICS) if k in r})
        by_phase = {int(p["phase"]): p for p in phases}  # a phase reported twice (retried trial): keep the last
        phases = [by_phase[k] for k in sorted(by_phase)]
        config = dict(params)
        try:
            from lucir.config import Config

            config = Config.from_flat({k: v for k, v in params.items() if k in CONFIG_FIELDS}).to_flat()
        except Exception:  # noqa: BLE001 - keep the literal params of a config the trainer refuses
            pass
        if not trial_id:
            parts = d.name.split("_")
            trial_id = next((f"{a}_{b}" for a, b in zip(parts, parts[1:]) if b.isdigit() and len(b) == 5), d.name)
        i = d.name.find(trial_id)
        name = d.name[: i + len(trial_id)] if i >= 0 else d.name  # Ray's trial name: <trainable>_<trial_id>
        err = ""
        for name_ in ("error.txt",):
            if (d / name_).exists():
                err = (d / name_).read_text(encoding="utf-8", errors="replace").strip()[-4000:]
        n = config.get("phases")
        status = "ERROR" if err else ("TERMINATED" if isinstance(n, int) and len(phases) == n + 1 else "RUNNING")
        out.append(TrialRecord(trial_id=trial_id, trial_name=name, sweep=path.name, config=config,
                               phases=phases, status=status, error=err, updated=_mtime(rfile)))
    return out


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``lucir_experiment.json`` of an experiment folder ({} when absent)."""
    f = Path(path) / EXPERIMENT_FILE
    if not f.exists():
        return {}
    try:
        d = read_json(f)
    except (OSError, ValueError) as exc:
        raise ExperimentError(f"{f} is unreadable: {exc}") from exc
    return d if isinstance(d, dict) else {}


def read_experiment(path: str | os.PathLike, *, source: str = "auto") -> Experiment:
    """Read an experiment folder.

    ``source``: ``folder`` (``trials/*.json``), ``mlflow`` (the store named in ``lucir_experiment.json``),
    ``ray`` (Ray Tune's trial folders) or ``auto``: the folder's trial files; when there are none, MLflow,
    then Ray's trial folders.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise ExperimentError(f"{path} is not an experiment folder (it does not exist or is not a directory)")
    meta = read_meta(path)
    notes: list[str] = []
    tdir = path / TRIALS_DIR
    files = [tdir / f"{i}{record.RECORD_SUFFIX}" for i in record.trial_ids(path)]
    if not meta and not files and not any(path.glob("*/params.json")):
        raise ExperimentError(f"{path} is not an experiment folder: no {EXPERIMENT_FILE} and no {TRIALS_DIR}/*.json "
                              "(give the folder `lucir ablate` or `lucir search` printed)")
    if source not in ("auto", "folder", "mlflow", "ray"):
        raise ValueError(f"source={source!r} is invalid: allowed auto, folder, mlflow, ray")
    if source == "mlflow" or (source == "auto" and not files and meta.get("mlflow_uri")):
        uri, name = meta.get("mlflow_uri"), meta.get("mlflow_experiment") or meta.get("name")
        try:
            if not uri or not name:
                raise ExperimentError(f"{path / EXPERIMENT_FILE} names no mlflow_uri / mlflow_experiment")
            exp = load_mlflow_experiment(uri, name)
            if exp.trials or source == "mlflow":
                exp.path = path
                exp.meta = {**exp.meta, **{k: v for k, v in meta.items() if v is not None}}
                exp.notes.insert(0, f"trials read from MLflow ({uri}, experiment {name!r})"
                                    + ("" if source == "mlflow" else f": no {TRIALS_DIR}/*.json in the folder"))
                return exp
        except ExperimentError as exc:
            if source == "mlflow":
                raise
            notes.append(f"no trials in MLflow: {exc}")
    if source == "ray" or (source == "auto" and not files):
        records = _trials_from_ray_dirs(path)
        if records or source == "ray":
            if records:
                notes.insert(0, f"trials read from Ray's trial folders (result.json): no {TRIALS_DIR}/*.json; "
                                "accuracy matrices and PRUNED status are not available there")
            return Experiment(path=path, meta=meta, trials=records, frame=frame_from_records(records),
                              source="ray", notes=notes)
    records = [_trial_from_json(f) for f in files]
    seen: dict[str, TrialRecord] = {}
    for r in records:
        if r.trial_id in seen:
            notes.append(f"trial id {r.trial_id} appears in two files; the later one is kept")
        seen[r.trial_id] = r
    records = list(seen.values())
    return Experiment(path=path, meta=meta, trials=records, frame=frame_from_records(records),
                      source="folder", notes=notes)


def load_experiment(path: str | os.PathLike) -> pd.DataFrame:
    """The long DataFrame (trial x phase) of an experiment folder; see ``frame_from_records``."""
    return read_experiment(path).frame


# --------------------------------------------------------------------------- MLflow
def _sqlite_missing(uri: str) -> bool:
    """True for a ``sqlite:///`` URI whose file does not exist (MLflow would silently create it)."""
    if not uri.startswith("sqlite:///"):
        return False
    return not Path(uri[len("sqlite:///"):]).exists()


def _tag(tags: dict[str, str], *names: str, default: str = "") -> str:
    for n in names:
        if tags.get(n):
            return tags[n]
    return default


_MLFLOW_STATUS = {"FAILED": "ERROR", "KILLED": "PRUNED", "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}


def load_mlflow_experiment(tracking_uri: str, experiment_name: str) -> Experiment:
    """Read the child runs (one per trial) of an MLflow experiment into records and the long frame."""
    if _sqlite_missing(tracking_uri):
        raise ExperimentError(f"MLflow store {tracking_uri} does not exist")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise ExperimentError(f"no MLflow experiment named {experiment_name!r} in {tracking_uri}")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            break
    parents = [r for r in runs if not _tag(r.data.tags, "lucir.trial_id")]
    meta: dict[str, Any] = {"mlflow_uri": tracking_uri, "mlflow_experiment": experiment_name}
    if len(parents) == 1:
        meta["parent_run_id"] = parents[0].info.run_id
    records: dict[str, TrialRecord] = {}
    notes: list[str] = []
    for run in runs:
        tags = run.data.tags
        tid = _tag(tags, "lucir.trial_id")
        if not tid:
            continue
        config = {k: parse_param(v, CONFIG_FIELDS.get(k)) for k, v in run.data.params.items()}
        preset = _tag(tags, "lucir.preset", "preset")
        if "preset" not in config and preset:
            config["preset"] = preset
        by_step: dict[int, dict[str, Any]] = {}
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                by_step.setdefault(int(m.step), {"phase": int(m.step)})[key] = m.value
        phases = [by_step[s] for s in sorted(by_step)]
        for p in phases:
            if "classes_seen" in p:
                p["classes_seen"] = int(p["classes_seen"])
            else:
                p["classes_seen"] = _classes_seen(config, p["phase"])
        status = _tag(tags, "lucir.status").upper()
        n = config.get("phases")
        if not status:
            status = _MLFLOW_STATUS.get(run.info.status)
            if status is None:  # FINISHED
                status = "TERMINATED" if isinstance(n, int) and len(phases) == n + 1 else "PRUNED"
        end = run.info.end_time
        rec = TrialRecord(trial_id=tid, trial_name=_tag(tags, "lucir.trial_name", "mlflow.runName",
                                                        default=run.info.run_name or ""),
                          sweep=_tag(tags, "lucir.sweep", "sweep"), config=config, phases=phases, status=status,
                          error=_tag(tags, "lucir.error"), base_cache=_tag(tags, "lucir.base_cache"),
                          updated=(end / 1000.0) if end else math.nan)
        if tid in records:
            notes.append(f"trial {tid} has more than one MLflow run; the latest is kept")
        records[tid] = rec
    recs = list(records.values())
    return Experiment(path=None, meta=meta, trials=recs, frame=frame_from_records(recs), source="mlflow",
                      notes=notes)


def _classes_seen(config: dict[str, Any], phase: int) -> int | None:
    try:
        b, n, p = int(config["base_classes"]), int(config["num_classes"]), int(config["phases"])
        return b + phase * ((n - b) // p)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def load_mlflow(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """The same long frame as ``load_experiment``, from the child runs of an MLflow experiment."""
    return load_mlflow_experiment(tracking_uri, experiment_name).frame


# --------------------------------------------------------------------------- helpers for tables/plots
def last_phase(df: pd.DataFrame, finished_only: bool = True) -> pd.DataFrame:
    """One row per trial: its last reported phase (only finished trials unless ``finished_only=False``)."""
    d = df[df["finished"]] if finished_only else df
    d = d.sort_values(["trial_id", "phase"], na_position="first", kind="stable")
    return d.groupby("trial_id", sort=False, as_index=False).tail(1).reset_index(drop=True)


def trial_overview(df: pd.DataFrame) -> pd.DataFrame:
    """One row per trial (all trials): id, preset, protocol, seed, status, phases done/total, objective."""
    last = last_phase(df, finished_only=False)
    cols = ["trial_id", "preset", *[c for c in PROTOCOL if c in last], "seed", "status", "finished",
            "phases_done", OBJECTIVE, "error"]
    out = last[[c for c in cols if c in last]].copy()
    out.insert(out.columns.get_loc("phases_done") + 1, "phases_total",
               (last["phases"] + 1).astype("Int64") if "phases" in last else pd.NA)
    return out


def describe_unfinished(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that do not count in the tables (pruned, failed, still running), with what is missing."""
    ov = trial_overview(df)
    return ov[~ov["finished"]].reset_index(drop=True)


def accuracy_matrix(trial: TrialRecord, kind: str = "cnn") -> pd.DataFrame:
    """The trial's accuracy matrix (phase x class group, %; group g = classes added in phase g), from the
    trial file (DESIGN §4: saved so that any other metric can be computed later); NaN above the diagonal."""
    mat = trial.acc_matrix_cnn if kind == "cnn" else trial.acc_matrix_nme
    width = max((len(r) for r in mat), default=0)
    data = [[_float(v) for v in r] + [math.nan] * (width - len(r)) for r in mat]
    return pd.DataFrame(data, index=pd.RangeIndex(len(data), name="phase"),
                        columns=[f"group_{g}" for g in range(width)])


def utc(ts: float) -> str:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# --------------------------------------------------------------------------- the Optuna study of a search
def load_study(exp_path: str | os.PathLike | None, study_name: str | None = None):
    """(the Optuna study in ``<exp>/optuna_journal.log`` or None, a note saying why there is none);
    the study named ``study_name`` when there, else the one with the most trials (as
    ``tables.param_importances`` and ``plots.optuna_figures`` use it)."""
    if exp_path is None:
        return None, "no experiment folder"
    journal = Path(exp_path) / JOURNAL_FILE
    if not journal.exists():
        return None, f"no Optuna study ({JOURNAL_FILE} not in the experiment folder)"
    try:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(journal)))
        names = optuna.get_all_study_names(storage)
        if not names:
            return None, f"{JOURNAL_FILE} holds no study"
        pick = [study_name] if study_name in names else names
        studies = [optuna.load_study(study_name=n, storage=storage) for n in pick]
        return max(studies, key=lambda s: len(s.trials)), ""
    except Exception as exc:  # noqa: BLE001 - figures and importances are extras; say why they are missing
        return None, f"Optuna study unreadable: {type(exc).__name__}: {exc}"
