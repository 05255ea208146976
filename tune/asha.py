"""ASHA whose rungs survive a resume (DESIGN §6: early stopping on ``phase``).

Ray Tune saves neither the scheduler's rungs nor replays finished trials' results to a restored
scheduler, so ``lucir resume`` of an ``--asha`` search would start ASHA with empty rungs: trials after
the interruption would be compared with nothing and pruned less than in an uninterrupted sweep.
``RecordedASHA`` rebuilds its rungs from the trial records (``trials/<id>.json``, one row per phase)
the first time a trial is added after it was created or unpickled: a trial that reported phase ``m``
is recorded at the rung of milestone ``m`` with its metric at that phase, exactly what ASHA records
when that result arrives live (the first result at or past a milestone; phases come one by one).
A rebuilt trial that had not ended and whose config a newly added trial runs again (an Optuna trial
asked after Tune's last snapshot and handed out again, ``tune.experiment.PrunedAwareOptunaSearch``)
leaves the rungs when that trial is added, so that its results are counted once, as live.

Fused arrays (``lucir.fused``, ``lucir search --fuse N --asha``): every member is an ASHA trial of its own
under its member id, in its array's bracket, judged on its own metric (``members/<i>/<metric>`` of the
array's flattened result).  A member that falls below its rung's cutoff is written to
``trials/<array id>.pruned.json`` (``lucir.record.pruned_path``; this scheduler is its one writer) and the
array's worker stops that member's slice at its next phase end; the array stops when every member is.
"""

from __future__ import annotations

import logging

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from lucir.checkpoint import atomic_write_json

from lucir import record
from tune.spaces import config_key

log = logging.getLogger("lucir.tune")


class _Member:
    """What an ASHA bracket reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def _config(trial) -> dict:
    return dict(getattr(trial, "config", None) or {})


class RecordedASHA(ASHAScheduler):
    def __init__(self, exp_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.exp_dir = str(exp_dir)
        self._rebuilt = False
        self._open: dict[str, str] = {}  # config key -> id of a rebuilt trial that had not ended

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rebuilt = False  # unpickled (Tuner.restore): rebuild the rungs from the records
        self._open = {}

    def rebuild(self, records: list[dict]) -> int:
        """Record every (trial, milestone) the trial records show; returns how many were recorded."""
        n = 0
        for rec in records:
            tid = rec.get("trial_id")
            rows = {int(p["phase"]): p for p in rec.get("phases") or [] if isinstance(p, dict) and "phase" in p}
            if not tid or not rows:
                continue
            if rec.get("status") == "RUNNING":
                self._open[config_key(rec.get("config") or {})] = tid
            bracket = self._trial_info.get(tid, self._brackets[0])
            for milestone, recorded in bracket._rungs:
                value = record.number(rows.get(int(milestone), {}).get(self._metric))
                if value is not None and tid not in recorded and int(milestone) < self._max_t:
                    recorded[tid] = self._metric_op * value
                    n += 1
        return n

    def on_trial_add(self, tune_controller, trial):
        if not self._rebuilt:
            self._rebuilt = True
            n = self.rebuild(record.read_trials(self.exp_dir))
            if n:
                log.info("ASHA: %d rung entries rebuilt from the trial records of %s", n, self.exp_dir)
        for tid, config in record.trial_members(trial.trial_id, _config(trial)):
            old = self._open.pop(config_key(config), tid)
            if old != tid:  # run again under a new id: the live results replace the rebuilt ones
                for bracket in self._brackets:
                    for _, recorded in bracket._rungs:
                        recorded.pop(old, None)
        super().on_trial_add(tune_controller, trial)
        if record.ARRAY_KEY in _config(trial):
            for mid, _ in record.trial_members(trial.trial_id, _config(trial)):
                self._trial_info[mid] = self._trial_info[trial.trial_id]

    def on_trial_result(self, tune_controller, trial, result):
        if record.ARRAY_KEY not in _config(trial):
            return super().on_trial_result(tune_controller, trial, result)
        t = result.get(self._time_attr)
        if t is None:
            return TrialScheduler.CONTINUE
        ids = [mid for mid, _ in record.trial_members(trial.trial_id, _config(trial))]
        pruned = record.read_pruned(self.exp_dir, trial.trial_id)
        stopped = set(pruned)
        for i, mid in enumerate(ids):
            value = record.number(result.get(f"{record.ARRAY_KEY}/{i}/{self._metric}"))
            if mid in stopped or value is None or t >= self._max_t:
                continue
            bracket = self._trial_info.get(mid, self._trial_info.get(trial.trial_id, self._brackets[0]))
            if bracket.on_result(_Member(mid), t, self._metric_op * value) == TrialScheduler.STOP:
                stopped.add(mid)
                self._num_stopped += 1
        if stopped != pruned:
            atomic_write_json(record.pruned_path(self.exp_dir, trial.trial_id), {"members": sorted(stopped)})
            log.info("ASHA: array %s stops member(s) %s at %s %s", trial.trial_id, sorted(stopped - pruned),
                     self._time_attr, t)
        if all(mid in stopped for mid in ids):
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        if record.ARRAY_KEY not in _config(trial):
            return super().on_trial_complete(tune_controller, trial, result)
        self._forget(trial)

    def on_trial_remove(self, tune_controller, trial):
        if record.ARRAY_KEY not in _config(trial):
            return super().on_trial_remove(tune_controller, trial)
        self._forget(trial)

    def _forget(self, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)
        for mid, _ in record.trial_members(trial.trial_id, _config(trial)):
            self._trial_info.pop(mid, None)
