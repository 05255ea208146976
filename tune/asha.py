"""ASHA whose rungs survive a resume (DESIGN §6: early stopping on ``phase``).

Ray Tune saves neither the scheduler's rungs nor replays finished trials' results to a restored
scheduler, so ``lucir resume`` of an ``--asha`` search would start ASHA with empty rungs: trials after
the interruption would be compared with nothing and pruned less than in an uninterrupted sweep.
``RecordedASHA`` rebuilds its rungs from the trial records (``trials/<id>.json``, one row per phase)
the first time a trial is added after it was created or unpickled: a trial that reported phase ``m``
is recorded at the rung of milestone ``m`` with its metric at that phase, exactly what ASHA records
when that result arrives live (the first result at or past a milestone; phases come one by one).
"""

from __future__ import annotations

import logging

from ray.tune.schedulers import ASHAScheduler

from lucir import record

log = logging.getLogger("lucir.tune")


class RecordedASHA(ASHAScheduler):
    def __init__(self, exp_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.exp_dir = str(exp_dir)
        self._rebuilt = False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._rebuilt = False  # unpickled (Tuner.restore): rebuild the rungs from the records

    def rebuild(self, records: list[dict]) -> int:
        """Record every (trial, milestone) the trial records show; returns how many were recorded."""
        n = 0
        for rec in records:
            tid = rec.get("trial_id")
            rows = {int(p["phase"]): p for p in rec.get("phases") or [] if isinstance(p, dict) and "phase" in p}
            if not tid or not rows:
                continue
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
        super().on_trial_add(tune_controller, trial)
