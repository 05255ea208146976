"""The driver side of a sweep: experiment folder, Tuner, callbacks, Optuna, summaries, resume.

The experiment folder (docs/EXPERIMENT_LAYOUT.md) is Ray Tune's ``storage_path/name``, always an
absolute path.  ``lucir_experiment.json`` is written before any trial starts and records, besides the
contract's fields, a ``runner`` section (resources, base cache, failure policy, Ray address) from which
``lucir resume`` rebuilds the trainable; callbacks and the search algorithm come back from Tune's own
experiment state (``tuner.pkl``, searcher and callback checkpoints).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from lucir.checkpoint import atomic_write_json
from lucir.commands import command_line as train_command
from lucir.config import Config, ConfigError
from lucir.record import CONFIRM_DIR, EXPERIMENT_FILE, JOURNAL_FILE, MODE, is_finished, objective  # noqa: F401 (re-exported)
from lucir.record import OBJECTIVE as METRIC
from lucir import record
from tune.spaces import config_key

log = logging.getLogger("lucir.tune")

SAMPLERS = ("tpe", "gp", "random")

try:  # the driver-side callbacks subclass tune.Callback; tune/ may be imported without Ray work
    from ray.tune import Callback as _Callback
    from ray.tune.search import Searcher as _Searcher
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch
except ImportError:  # pragma: no cover - ray is a dependency
    _Callback = object
    _OptunaSearch = _Searcher = object


# ---------------------------------------------------------------------------------------- folder
def default_name(kind: str, dataset: str) -> str:
    return f"{kind}-{dataset}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def experiment_dir(out: str | None, name: str) -> Path:
    return Path(out if out else Path("experiments") / name).expanduser().absolute()


def read_experiment(exp: str | os.PathLike) -> dict:
    p = Path(exp) / EXPERIMENT_FILE
    if not p.is_file():
        raise ConfigError(f"{Path(exp).absolute()} is not a lucir experiment folder (no {EXPERIMENT_FILE})")
    return json.loads(p.read_text())


def read_trials(exp: str | os.PathLike) -> list[dict]:
    """Every trial: the worker's record with the driver's status on top (``lucir.record.read_trials``)."""
    return record.read_trials(exp)


# ---------------------------------------------------------------------------------------- callbacks
class TrialStatusCallback(_Callback):
    """Writes the driver's final word on a trial to ``trials/<id>.status.json`` (its only file there;
    the record ``trials/<id>.json`` belongs to the worker): TERMINATED (every phase done), PRUNED
    (stopped early by a scheduler), ERROR (failed for good, with the error text).  Runs before the
    MLflow callback in the list, so that callback reads the final status."""

    def __init__(self, exp_dir: str):
        self.exp_dir = str(exp_dir)

    def _update(self, trial, status: str, error: str | None = None) -> None:
        members = record.trial_members(trial.trial_id, dict(trial.config))  # a fused array: each member
        for i, (tid, config) in enumerate(members):
            self._write(tid, str(trial) if len(members) == 1 else f"{trial}_m{i}", config, status, error)

    def _write(self, trial_id: str, name: str, config: dict, status: str, error: str | None) -> None:
        rec = record.read_trial(self.exp_dir, trial_id) or {}
        if status == "ERROR" and rec.get("status") == "TERMINATED" and is_finished(rec):
            # a finished trial restored from an older snapshot that failed to start again: its result stands
            log.warning("trial %s failed after it had finished every phase; it stays TERMINATED: %s", trial_id,
                        (error or "")[-500:])
            return
        if status in ("TERMINATED", "PRUNED"):
            status = "TERMINATED" if is_finished({**rec, "status": status}) else "PRUNED"
        try:
            num_phases = Config.from_flat(config).protocol.phases
        except Exception:  # noqa: BLE001 - an invalid config is itself the error
            num_phases = config.get("phases", 0)
        doc = {"trial_id": trial_id, "trial_name": name, "sweep": Path(self.exp_dir).name,
               "config": config, "num_phases": num_phases, "status": status,
               "updated": _dt.datetime.now().isoformat(timespec="seconds")}
        if error is not None:
            doc["error"] = error
        atomic_write_json(record.status_path(self.exp_dir, trial_id), doc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        text = None
        try:
            err = trial.get_error()
            text = str(err) if err is not None else None
        except Exception:
            pass
        if not text and trial.error_file and os.path.exists(trial.error_file):
            text = Path(trial.error_file).read_text()
        self._update(trial, "ERROR", (text or "trial failed").strip()[-4000:])

    def on_experiment_end(self, trials, **info):
        """Give a final status to the records no trial of this sweep owns: those of trials a killed driver
        started after Tune's last snapshot, which the resumed sweep does not restore.  One whose config a
        trial of the sweep runs again (an unfinished Optuna trial handed out again, a grid point generated
        again) is ABANDONED; one that finished every phase alone (its Optuna trial was told its value on
        restore) is TERMINATED; any other is ABANDONED."""
        owned, running = set(), set()
        for t in trials:
            for tid, config in record.trial_members(t.trial_id, dict(t.config)):
                owned.add(tid)
                running.add(config_key(config))
        for tid in record.trial_ids(self.exp_dir):
            if tid in owned or record.read_status(self.exp_dir, tid) is not None:
                continue
            rec = record.read_json_dict(record.record_path(self.exp_dir, tid)) or {}
            config = rec.get("config") or {}
            again = config_key(config) in running
            status = "TERMINATED" if is_finished(rec) and not again else "ABANDONED"
            log.info("trial %s was started by a driver killed before Tune saved it: %s", tid, status)
            why = "its config was run again by another trial" if again else "no trial resumed it"
            self._write(tid, rec.get("trial_name", tid), config, status, None if status == "TERMINATED" else
                        f"started by a driver killed before Tune's last snapshot; {why}")


class ExperimentInfoCallback(_Callback):
    """No longer used: the MLflow callback records ``parent_run_id`` itself (one writer).  Kept so that the
    ``tuner.pkl`` of a sweep started before 2026-12-02 still unpickles on ``lucir resume``."""


def mlflow_callback(uri: str, experiment_name: str, sweep: str, exp_dir: Path, tags: dict | None = None):
    """The other half of the runner (tune/mlflow_logger.py); checked before any trial starts."""
    try:
        from tune.mlflow_logger import MLflowCallback, check_tracking_uri
    except ImportError as exc:
        print(f"warning: MLflow logging is unavailable ({exc}); the sweep runs without it", file=sys.stderr)
        return None
    try:
        check_tracking_uri(uri)
    except ValueError as exc:
        raise ConfigError(f"--mlflow-uri {uri}: {exc}") from None
    return MLflowCallback(tracking_uri=uri, experiment_name=experiment_name, sweep_name=sweep,
                          experiment_dir=str(exp_dir), tags=tags)


# ---------------------------------------------------------------------------------------- optuna
class PrunedAwareOptunaSearch(_OptunaSearch):
    """Ray's OptunaSearch, told the truth about trials that did not finish (DESIGN §6), and exact on resume.

    Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the *last reported*
    metric whenever a result exists: a trial stopped early by ASHA (its average incremental accuracy
    over fewer phases looks better), and even a trial that crashed after some phases, would count as
    a finished trial.  Here a trial counts as COMPLETE only when its last result is the last phase;
    a trial stopped early is PRUNED, a failed one FAIL.

    Resume.  A trial that ended after Tune's last snapshot is restored as running and reports its last
    phase again; its Optuna trial was already told, so those reports are not passed on (:meth:`_told`).
    A driver killed between asking Optuna and Tune's next experiment snapshot leaves Optuna trials that
    no restored Tune trial owns.  Each Optuna trial carries the id of the trial it was
    handed to (user attribute :data:`TRIAL_ATTR`), so on restore (:meth:`find_orphans`) one whose
    record (``trials/<id>.json``) holds every phase is told COMPLETE with the record's objective
    (its work is kept), and one left unfinished is handed out again to the next new Tune trial (same
    parameters, same Optuna trial number).  ``budget`` (the search's ``--trials``): once the study holds
    that many asked trials, :meth:`suggest` says FINISHED, so trials finished after the snapshot count
    against it and a resumed search runs exactly ``budget`` trials.
    """

    TRIAL_ATTR = "lucir.trial_id"
    _exp_dir: str | None = None   # class defaults: a searcher pickled by an older version lacks them
    _budget: int | None = None
    _orphans: list[int] | tuple = ()

    def __init__(self, *args, exp_dir: str | os.PathLike | None = None, budget: int | None = None, **kw):
        super().__init__(*args, **kw)
        self._exp_dir = None if exp_dir is None else str(exp_dir)
        self._budget = budget
        self._orphans: list[int] = []

    def _told(self, trial_id: str) -> bool:
        """``trial_id``'s Optuna trial already holds a final state in the storage: a trial that ended after
        Tune's last snapshot, restored as running and reporting its last phase again on resume."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or self._ot_study is None:
            return False
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict):
        if not self._told(trial_id):  # Optuna refuses (and Tune's loop would die on) reports to a told trial
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        from optuna.trial import TrialState

        if trial_id not in self._completed_trials and self._told(trial_id):
            self._completed_trials.add(trial_id)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        finished = bool(result) and result.get("phase", -1) >= result.get("num_phases", math.inf)
        if finished and not error:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        state = TrialState.FAIL if error else TrialState.PRUNED
        try:
            self._ot_study.tell(ot_trial, None, state=state)
        except Exception as exc:  # e.g. already told
            log.warning("optuna tell(%s) failed: %s", state, exc)
        self._completed_trials.add(trial_id)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self._orphans = self.find_orphans()

    def _asked(self) -> list:
        """The study's trials that were asked (enqueued warm-start points still WAITING are not)."""
        from optuna.trial import TrialState

        return [t for t in self._ot_study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]

    def find_orphans(self) -> list[int]:
        """Optuna trials left RUNNING that no Tune trial owns (asked after Tune's last snapshot): those whose
        trial finished every phase are told COMPLETE from its record; the storage ids of the others are
        returned, to be handed out again."""
        from optuna.trial import TrialState

        if self._ot_study is None:
            return []
        owned = {t.number for t in self._ot_trials.values()}
        orphans = []
        for t in self._asked():
            if t.state != TrialState.RUNNING or t.number in owned:
                continue
            tid = t.user_attrs.get(self.TRIAL_ATTR)
            doc = record.read_trial(self._exp_dir, tid) if self._exp_dir and tid else None
            value = record.number(doc["phases"][-1].get(self._metric)) if doc and is_finished(doc) else None
            if value is not None:
                self._ot_study.tell(t.number, value)
                log.info("Optuna trial %d finished as %s after the driver's last snapshot: told %s = %.4g",
                         t.number, tid, self._metric, value)
            else:
                orphans.append(t._trial_id)
        if orphans:
            log.info("%d Optuna trial(s) were asked but never finished; they are handed out again", len(orphans))
        return orphans

    def suggest(self, trial_id: str):
        fresh = trial_id not in self._ot_trials and self._ot_study is not None
        if fresh and self._orphans:
            from optuna.trial import Trial

            self._ot_trials[trial_id] = Trial(self._ot_study, self._orphans.pop(0))
        elif fresh and self._budget is not None and len(self._asked()) >= self._budget:
            return _Searcher.FINISHED
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials and isinstance(params, dict):
            self._ot_trials[trial_id].set_user_attr(self.TRIAL_ATTR, trial_id)
        return params


def n_startup_trials(trials: int) -> int:
    """Random start-up draws before the model-based sampler: a quarter of the budget, at least 4 (Optuna's
    default of 10 would leave a 12-trial search with one or two model-based draws)."""
    return max(4, trials // 4)


class _TrialSeeded:
    """Reseeds an Optuna sampler's random state from (seed, trial number) before every trial, so a trial's
    draws depend only on its number and the study's history, not on how many draws the sampler made before
    (a driver killed and resumed restores the sampler from an older snapshot: with one random stream for the
    whole study it would draw other parameters than an uninterrupted search)."""

    def before_trial(self, study, trial):
        from optuna.samplers._lazy_random_state import LazyRandomState

        base = (int(self._lucir_seed) * 1_000_003 + int(trial.number)) % (2**32 - 2)
        self._rng = LazyRandomState(base)
        for name in ("_random_sampler", "_independent_sampler"):  # TPE's / GP's start-up and fallback draws
            if getattr(self, name, None) is not None:
                getattr(self, name)._rng = LazyRandomState(base + 1)
        for name in ("_gprs_cache_list", "_constraints_gprs_cache_list"):  # GP: fit afresh, not warm-started
            if hasattr(self, name):
                setattr(self, name, None)
        super().before_trial(study, trial)


try:
    import optuna as _optuna

    class TrialSeededTPESampler(_TrialSeeded, _optuna.samplers.TPESampler):
        """TPE, reseeded per trial."""

    class TrialSeededGPSampler(_TrialSeeded, _optuna.samplers.GPSampler):
        """Gaussian-process sampler, reseeded per trial."""

    class TrialSeededRandomSampler(_TrialSeeded, _optuna.samplers.RandomSampler):
        """Random sampler, reseeded per trial."""
except ImportError:  # pragma: no cover - optuna is a dependency
    pass


def make_sampler(kind: str, seed: int, trials: int, batch: int = 1):
    """``tpe`` (TPESampler), ``gp`` (GPSampler) or ``random``, seeded per trial (``_TrialSeeded``), start-up
    draws scaled to the budget.  ``batch`` > 1 (fused arrays ask that many trials at once): TPE's constant
    liar, so the trials of one array are not drawn from one unchanged model."""
    if kind not in SAMPLERS:
        raise ConfigError(f"--sampler {kind!r} is invalid: allowed one of {list(SAMPLERS)}")

    if kind == "tpe":
        sampler = TrialSeededTPESampler(seed=seed, n_startup_trials=n_startup_trials(trials),
                                        constant_liar=batch > 1)
    elif kind == "gp":
        sampler = TrialSeededGPSampler(seed=seed, n_startup_trials=n_startup_trials(trials))
    else:
        sampler = TrialSeededRandomSampler(seed=seed)
    sampler._lucir_seed = seed
    return sampler


def make_searcher(exp: Path, name: str, seed: int, points: list[dict], metric: str = METRIC,
                  sampler: str = "tpe", trials: int = 12, fuse: int = 1, domains: dict | None = None):
    """The Optuna search (journal storage in the experiment folder); with ``fuse`` > 1 wrapped in
    ``tune.arrays.ArraySearch``: each Tune trial is an array of up to ``fuse`` Optuna trials, the searched
    ``domains`` (Tune domains) are the Optuna searcher's own space and the Tuner's param space is the
    fixed fields."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(exp / JOURNAL_FILE)))
    inner = PrunedAwareOptunaSearch(space=domains if fuse > 1 else None, metric=metric, mode=MODE,
                                    sampler=make_sampler(sampler, seed, trials, fuse),
                                    study_name=name, storage=storage, points_to_evaluate=points,
                                    exp_dir=exp, budget=trials if fuse == 1 else None)
    if fuse == 1:
        return inner
    from tune.arrays import ArraySearch

    return ArraySearch(inner, size=fuse, trials=trials)


# ---------------------------------------------------------------------------------------- running
def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None = None) -> bool:
    """Start (or join) Ray; returns True when this call started it (then the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address in (None, "") and os.environ.get("RAY_ADDRESS"):  # `ray submit` / Ray jobs set it
        address = os.environ["RAY_ADDRESS"]
    if address in (None, "", "local"):
        kwargs.update(address="local", num_cpus=num_cpus)
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


@dataclasses.dataclass(frozen=True)
class RunnerOptions:
    """How a sweep runs (resources, retries, base cache, cluster), validated at construction: every invalid
    value is a ConfigError naming the command-line flag.  Stored as ``runner`` in lucir_experiment.json,
    from which ``lucir resume`` rebuilds it (``from_dict`` ignores keys it does not know)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    base_cache: bool = True
    max_failures: int = 3
    max_concurrent: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    cache_stale_after: float = 60.0
    fuse: int = 1  # members per fused array (lucir.fused); 1: every trial trains alone

    def __post_init__(self):
        if not self.cpus_per_trial > 0:  # NaN too
            raise ConfigError(f"--cpus-per-trial={self.cpus_per_trial} is invalid: allowed a number > 0")
        if not 0 <= self.gpus_per_trial <= 1:
            raise ConfigError(f"--gpus-per-trial={self.gpus_per_trial} is invalid: allowed 0 (CPU), a fraction in "
                              "(0, 1] (e.g. 0.25 packs 4 trials on a GPU); a trial trains on one device, so more "
                              "than 1 GPU per trial would only leave GPUs idle")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise ConfigError(f"--max-failures={self.max_failures} is invalid: allowed an integer >= 0")
        if self.max_concurrent is not None and (not isinstance(self.max_concurrent, int) or self.max_concurrent < 1):
            raise ConfigError(f"--max-concurrent={self.max_concurrent} is invalid: allowed an integer >= 1")
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            raise ConfigError(f"--num-cpus={self.num_cpus} is invalid: allowed an integer >= 1")
        if not isinstance(self.fuse, int) or isinstance(self.fuse, bool) or self.fuse < 1:
            raise ConfigError(f"--fuse={self.fuse!r} is invalid: allowed an integer >= 1 (1: no fusion)")
        if not self.cache_stale_after > 0:
            raise ConfigError(f"--cache-stale-after={self.cache_stale_after} is invalid: allowed seconds > 0")

    @classmethod
    def from_args(cls, args, **overrides) -> "RunnerOptions":
        """``--fuse`` unset: 1 on the CPU (fusion is not faster there, docs/PERFORMANCE.md), 8 with GPUs."""
        fuse = getattr(args, "fuse", None)
        if fuse is None:
            fuse = 8 if float(args.gpus_per_trial) > 0 else 1
        return cls(cpus_per_trial=float(args.cpus_per_trial), gpus_per_trial=float(args.gpus_per_trial),
                   base_cache=not args.no_base_cache, max_failures=int(args.max_failures),
                   max_concurrent=args.max_concurrent, address=args.address, num_cpus=args.num_cpus,
                   cache_stale_after=float(args.cache_stale_after), fuse=fuse, **overrides)

    @classmethod
    def from_dict(cls, d: dict) -> "RunnerOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunnerOptions":
        return dataclasses.replace(self, **changes)

    @property
    def cache_options(self) -> dict:
        return {"stale_after": self.cache_stale_after}


def runner_options(args, **overrides) -> RunnerOptions:
    return RunnerOptions.from_args(args, **overrides)


def build_trainable(exp: Path, runner: RunnerOptions):
    from tune.trainable import make_trainable

    return make_trainable(str(exp), cpus=runner.cpus_per_trial, gpus=runner.gpus_per_trial,
                          base_cache=runner.base_cache, cache_options=runner.cache_options)


def write_experiment_json(exp: Path, *, kind: str, argv: list[str], param_space_text: dict, runner: RunnerOptions,
                          mlflow_uri: str | None, mlflow_experiment: str | None, extra: dict | None = None) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    doc = {"name": exp.name, "kind": kind, "argv": argv,
           "created": _dt.datetime.now().isoformat(timespec="seconds"), "metric": METRIC, "mode": MODE,
           "mlflow_uri": mlflow_uri, "mlflow_experiment": mlflow_experiment, "parent_run_id": None,
           "param_space": param_space_text, "runner": runner.to_dict(), **(extra or {})}
    atomic_write_json(exp / EXPERIMENT_FILE, doc)


def make_callbacks(exp: Path, mlflow_uri: str | None, mlflow_experiment: str | None, tags: dict,
                   sweep: str | None = None) -> list:
    cbs: list = [TrialStatusCallback(str(exp))]
    ml = None
    if mlflow_uri:
        ml = mlflow_callback(mlflow_uri, mlflow_experiment or exp.name, sweep or exp.name, exp, tags)
        if ml is not None:
            cbs.append(ml)
    # parent_run_id reaches lucir_experiment.json through the MLflow callback's own setup (its one writer)
    return cbs


def run_config(exp: Path, runner: "RunnerOptions", callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=exp.name, storage_path=str(exp.parent), callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=runner.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1)


# ---------------------------------------------------------------------------------------- reports
def _mean_std(xs: list[float]) -> str:
    xs = [x for x in map(record.number, xs) if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def ablation_summary(exp: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """Per preset x protocol: mean ± std over seeds of the final avg_inc_acc_cnn/nme and last acc."""
    from tune.spaces import PROTOCOL_KEYS

    groups: dict[tuple, list[dict]] = {}
    for doc in read_trials(exp):
        c = doc["config"]
        key = (c.get("preset"),) + tuple(c.get(k) for k in PROTOCOL_KEYS)
        groups.setdefault(key, []).append(doc)
    head = ["preset", *PROTOCOL_KEYS, "seeds", "finished", "avg_inc_acc_cnn", "avg_inc_acc_nme",
            "last_acc_cnn", "last_acc_nme"]
    rows = []
    from lucir.config import LADDER

    order = {p: i for i, p in enumerate(LADDER)}
    for key in sorted(groups, key=lambda k: (tuple(str(x) for x in k[1:]), order.get(k[0], 99), str(k[0]))):
        docs = groups[key]
        fin = [d for d in docs if is_finished(d)]
        last = [d["phases"][-1] for d in fin]
        rows.append([str(key[0]), *[str(x) for x in key[1:]], str(len({d["config"].get("seed") for d in docs})),
                     f"{len(fin)}/{len(docs)}",
                     _mean_std([r["avg_inc_acc_cnn"] for r in last]), _mean_std([r["avg_inc_acc_nme"] for r in last]),
                     _mean_std([r["acc_cnn"] for r in last]), _mean_std([r["acc_nme"] for r in last])])
    return head, rows


def print_ablation_summary(exp: str | os.PathLike, file=None) -> None:
    from tabulate import tabulate

    head, rows = ablation_summary(exp)
    print(f"\nablation summary ({Path(exp)}; mean ± std over seeds, last phase, %):", file=file)
    print(tabulate(rows, headers=head, tablefmt="github"), file=file)


def ranked_trials(exp: str | os.PathLike, metric: str = METRIC) -> list[dict]:
    """Trials that finished every phase (never a pruned or partial one), best ``metric`` first."""
    docs = [d for d in read_trials(exp) if is_finished(d)]
    docs = [d for d in docs if record.number(d["phases"][-1].get(metric)) is not None]
    return sorted(docs, key=lambda d: -d["phases"][-1][metric])


def best_trial(exp: str | os.PathLike, metric: str = METRIC) -> dict | None:
    """The best trial among those that finished every phase (never a pruned or partial one)."""
    docs = ranked_trials(exp, metric)
    return docs[0] if docs else None




def print_search_summary(exp: str | os.PathLike, file=None) -> dict | None:
    from tabulate import tabulate

    from tune.spaces import SEARCHED, fmt_value

    metric = read_experiment(exp).get("metric", METRIC)  # the search's objective
    docs = read_trials(exp)
    rows = []
    for d in sorted(docs, key=lambda d: d["trial_id"]):
        last = d["phases"][-1] if d["phases"] else {}
        rows.append([d["trial_id"], d.get("status"), f"{len(d['phases']) - 1}/{d['num_phases']}",
                     *[fmt_value(d["config"].get(k)) for k in SEARCHED], fmt_value(last.get(metric))])
    print(f"\nsearch trials ({Path(exp)}; {metric} at the last phase reached):", file=file)
    print(tabulate(rows, headers=["trial", "status", "phases", *SEARCHED, metric], tablefmt="github"), file=file)
    best = best_trial(exp, metric)
    if best is None:
        print("\nno trial finished every phase: no best config", file=file)
        return None
    confirmed = confirm_summary(exp)
    if confirmed is not None:
        return print_confirm_summary(confirmed, file=file)
    print(f"\nbest config on {metric} (among {sum(is_finished(d) for d in docs)} trials that finished every "
          f"phase; not confirmed on seeds): trial {best['trial_id']}, {metric} = {best['phases'][-1][metric]:.2f}",
          file=file)
    print("  " + ", ".join(f"{k}={fmt_value(best['config'][k])}" for k in SEARCHED), file=file)
    print("  " + train_command(best["config"]), file=file)
    return best


# ---------------------------------------------------------------------------------------- confirm stage
def confirm_candidates(exp: str | os.PathLike, defaults: dict, top_k: int) -> list[dict]:
    """The configurations the confirm stage re-runs: the paper defaults and the ``top_k`` best distinct
    searched configurations on the search's objective (finished trials only)."""
    from tune.spaces import SEARCHED

    metric = read_experiment(exp).get("metric", METRIC)
    out = [{"label": "paper defaults", "params": dict(defaults), "search_trial": None, "search_value": None}]
    for d in read_trials(exp):  # the defaults' own search trial, when it finished
        if {k: d["config"].get(k) for k in defaults} == defaults and is_finished(d):
            out[0].update(search_trial=d["trial_id"], search_value=d["phases"][-1].get(metric))
    seen = [out[0]["params"]]
    for d in ranked_trials(exp, metric):
        params = {k: d["config"][k] for k in SEARCHED if k in defaults}
        if params in seen:
            continue
        if len(out) > top_k:
            break
        seen.append(params)
        out.append({"label": f"top-{len(out)}", "params": params, "search_trial": d["trial_id"],
                    "search_value": d["phases"][-1][metric]})
    return out


def confirm_points(fixed: dict, candidates: list[dict], seeds: int) -> list[dict]:
    """Every (candidate, seed) as a flat trial config on the full training set (no validation split)."""
    base = {k: v for k, v in fixed.items() if k not in ("val_fraction", "seed")}
    return [{**base, **c["params"], "val_fraction": 0.0, "seed": s} for c in candidates for s in range(seeds)]


def confirm_summary(exp: str | os.PathLike) -> dict | None:
    from analysis.confirm import confirm_summary as summary

    return summary(exp)


def print_confirm_summary(summary: dict, file=None) -> dict | None:
    from tabulate import tabulate

    from tune.spaces import fmt_value

    rows = summary["rows"]
    print(f"\nconfirmed on the test set (full training set, seeds 0..{(summary['seeds'] or 1) - 1}; "
          f"avg_inc_acc at the last phase, mean ± std over seeds):", file=file)
    table = [[r["label"], ", ".join(f"{k}={fmt_value(v)}" for k, v in r["params"].items()),
              fmt_value(r["search_value"]), f"{r['n']}/{r['runs']}",
              _mean_std_of(r["cnn_mean"], r["cnn_std"]), _mean_std_of(r["nme_mean"], r["nme_std"])] for r in rows]
    print(tabulate(table, headers=["candidate", "params", f"search {summary['metric']}", "finished",
                                   "test avg_inc_acc_cnn", "test avg_inc_acc_nme"], tablefmt="github"), file=file)
    w, v = summary["winner"], summary["verdict"]
    if w is None:
        print("\nno candidate finished a confirm run yet: no winner", file=file)
        return None
    print(f"\nwinner (best confirmed mean): {w['label']}, test avg_inc_acc_cnn {_mean_std_of(w['cnn_mean'], w['cnn_std'])}",
          file=file)
    if v is not None and not v["winner_is_defaults"]:
        std = "n/a" if v["defaults_std"] is None else f"{v['defaults_std']:.2f}"
        print(f"  it beats the paper defaults by {v['gap']:.2f} points, "
              + ("more" if v["beats_by_more_than_std"] else "not more") + f" than their seed std ({std})", file=file)
    elif v is not None:
        print("  the paper defaults are the best confirmed configuration", file=file)
    if w.get("config"):
        print("  " + train_command({k: v for k, v in w["config"].items() if k != "seed"}), file=file)
    return w


def _mean_std_of(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
