"""The search's Optuna study, in the experiment folder, driven by the workers that own its slots (DESIGN §6).

Optuna's ask-and-tell recipe over ``JournalStorage(JournalFileBackend(<exp>/optuna_journal.log))`` (a file
that works on NFS): the worker of search slot ``sNNNN`` takes the study trial tagged with its slot (user
attribute ``lucir.record.SLOT_ATTR``), or adopts one a killed worker asked but never tagged, or asks a new
one and tags it; ask-and-tag runs under an exclusive ``flock`` on ``<exp>/optuna.lock``, which the kernel
releases when its holder dies, so an untagged RUNNING trial seen under the lock is an orphan.  Nothing
else asks, so the study holds exactly one trial per slot: the budget is exact whatever was killed when.
Slot 0 takes the paper defaults (``PartialFixedSampler``).  Per phase the worker reports the objective at
``step = phase`` and applies successive halving (``halving``: a pure function of the intermediate values
in the study, so a resumed search prunes as an uninterrupted one); it tells COMPLETE or PRUNED after
writing its record.
Samplers are seeded per slot, so a slot's draw depends only on its number and the study's history.
No private attribute of Optuna's or Ray's classes is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import warnings
from pathlib import Path

from lucir import record
from lucir.config import ConfigError

log = logging.getLogger("lucir.tune")

SAMPLERS = ("tpe", "gp", "random")
LOCK = "optuna.lock"


def n_startup_trials(trials: int) -> int:
    """Random start-up draws before the model-based sampler: a quarter of the budget, at least 4 (Optuna's
    default of 10 would leave a 12-trial search with one or two model-based draws)."""
    return max(4, trials // 4)


def check_sampler(kind: str) -> None:
    if kind not in SAMPLERS:
        raise ConfigError(f"--sampler {kind!r} is invalid: allowed one of {list(SAMPLERS)}")


def make_sampler(kind: str, seed: int, index: int, trials: int):
    """``kind`` seeded for slot ``index`` of a search with ``trials`` slots (TPE with the constant liar:
    concurrent slots and fused members are not drawn from one unchanged model)."""
    import optuna

    check_sampler(kind)
    s = (int(seed) * 1_000_003 + int(index)) % (2**32 - 1)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup_trials(trials), constant_liar=True)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=s, n_startup_trials=n_startup_trials(trials))
    return optuna.samplers.RandomSampler(seed=s)


def distributions(searched: dict[str, dict]) -> dict:
    """Optuna distributions from ``tune.spaces.search_domains`` (the data in ``lucir_experiment.json``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name, d in searched.items():
        if d["kind"] == "choice":
            out[name] = CategoricalDistribution(list(d["values"]))
        elif d["kind"] == "randint":
            out[name] = IntDistribution(int(d["low"]), int(d["high"]))
        else:
            out[name] = FloatDistribution(float(d["low"]), float(d["high"]), log=d["kind"] == "loguniform")
    return out


def storage(exp: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(exp) / record.JOURNAL_FILE)))


def load(exp: Path, doc: dict, index: int = 0):
    """(study, storage) of the search ``doc`` (``lucir_experiment.json``), created on first use, with slot
    ``index``'s sampler and the search's pruner."""
    import optuna

    s = doc["search"]
    sampler = make_sampler(s["sampler"], s["seed"], index, len(doc["slots"]))
    if index == 0 and s.get("defaults"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.PartialFixedSampler(dict(s["defaults"]), sampler)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stor = storage(exp)
    return optuna.create_study(storage=stor, study_name=s["study"], direction="maximize", sampler=sampler,
                               pruner=optuna.pruners.NopPruner(), load_if_exists=True), stor


@contextlib.contextmanager
def _ask_lock(exp: Path):
    fd = os.open(Path(exp) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _suggest(trial, name: str, dist):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


class SlotTrial:
    """A slot's study trial: ``study``, ``storage``, ``trial`` (an ``optuna.Trial``), ``number``, ``params``."""

    def __init__(self, study, stor, number: int, dists: dict):
        import optuna

        self.study, self.storage, self.number = study, stor, number
        self.id = stor.get_trial_id_from_study_id_trial_number(stor.get_study_id_from_name(study.study_name),
                                                               number)
        self.trial = optuna.trial.Trial(study, self.id)
        self.params = ({n: _suggest(self.trial, n, d) for n, d in dists.items()} if self.running
                       else dict(self.frozen.params))

    @property
    def frozen(self):
        return self.storage.get_trial(self.id)

    @property
    def running(self) -> bool:
        from optuna.trial import TrialState

        return self.frozen.state == TrialState.RUNNING


def trial_for_slot(exp: Path, doc: dict, slot: str) -> SlotTrial:
    """The study trial of ``slot``: the one tagged with it, else an orphan adopted, else a new one asked;
    every searched param is set (a kill inside ``ask`` may have left some unset)."""
    from optuna.trial import TrialState

    index = [s["id"] for s in doc["slots"]].index(slot)
    dists = distributions(doc["search"]["searched"])
    with _ask_lock(exp):
        study, stor = load(exp, doc, index)
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if t.user_attrs.get(record.SLOT_ATTR) == slot]
        orphans = [t for t in trials if t.state == TrialState.RUNNING and record.SLOT_ATTR not in t.user_attrs]
        if mine:
            number = mine[0].number
        elif orphans:
            number = orphans[0].number
            log.info("slot %s adopts Optuna trial %d (asked by a worker killed before it tagged it)", slot, number)
        else:
            number = study.ask(dists).number
        st = SlotTrial(study, stor, number, dists)
        if not mine:
            st.trial.set_user_attr(record.SLOT_ATTR, slot)
    return st


def halving(study, step: int, value: float) -> bool:
    """Asynchronous successive halving (Li et al., MLSys 2020; the rule of Optuna's
    ``SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)``) as a pure function of the study's
    intermediate values: at a rung step (1, 2, 4, ...) a slot is stopped unless its value is in the top half
    of the values the study's trials reported at that step (the first trial at a rung goes on).  Optuna's
    pruner records a rung on every ``should_prune`` call, so asking again after a worker died between its
    decision and its record gives another answer; this rule gives the same answer every time it is asked."""
    if step < 1 or step & (step - 1):
        return False
    vals = sorted(t.intermediate_values[step] for t in study.get_trials(deepcopy=False)
                  if step in t.intermediate_values)
    return value < vals[-max(len(vals) // 2, 1)]


def report(st: SlotTrial, rows: list[dict], metric: str) -> None:
    """Report the objective of every record row at ``step = phase`` that the study does not hold yet (a
    resumed slot reports what it recorded before it was killed, and nothing twice)."""
    if not st.running:
        return
    done = st.frozen.intermediate_values
    for row in rows:
        value = record.number(row.get(metric))
        if value is not None and int(row["phase"]) not in done:
            st.trial.report(value, int(row["phase"]))


def tell(study, number: int, status: str, value: float | None) -> None:
    """Tell a RUNNING trial a slot's final status (TERMINATED: COMPLETE with ``value``; PRUNED)."""
    from optuna.trial import TrialState

    if status == "TERMINATED" and value is not None:
        study.tell(number, value)
    else:
        study.tell(number, state=TrialState.PRUNED)


def reconcile(exp: Path, doc: dict) -> int:
    """Tell the study what the records say where a worker was killed between its record and its tell:
    a RUNNING trial of a final slot gets that slot's status.  Returns how many were told."""
    from optuna.trial import TrialState

    if not (Path(exp) / record.JOURNAL_FILE).exists():
        return 0
    study, _ = load(exp, doc)
    metric = doc["metric"]
    told = 0
    for t in study.get_trials(deepcopy=False):
        slot = t.user_attrs.get(record.SLOT_ATTR)
        rec = record.read_trial(exp, slot) if slot else None
        if t.state == TrialState.RUNNING and record.is_final(rec):
            tell(study, t.number, rec["status"], record.last_value(rec, metric))
            told += 1
    return told
