"""A search whose Tune trials are fused arrays (``lucir.fused``; ``lucir search --fuse N``).

``ArraySearch`` wraps the Optuna searcher (``tune.experiment.PrunedAwareOptunaSearch``): for every Tune
trial it asks Optuna for up to N trials at once, one per member, under the members' own trial ids
(``lucir.record.member_ids``), and returns them as one array config ``{ARRAY_KEY: [member configs]}``.
Each phase's result and the final result are told to each member's Optuna trial with that member's own
metrics, so the study holds N trials per array, each with its own value, intermediate values and state
(COMPLETE, PRUNED, FAIL), exactly as if they had run alone; with ``--asha`` (tune/asha.py) each member is
judged alone and a stopped member is told PRUNED with its last result.  The search budget counts members: ``trials``
Optuna trials in ``ceil(trials / N)`` Tune trials (the last array may be smaller).  Ray's
``ConcurrencyLimiter`` (``max_concurrent_trials``) counts arrays, each of which uses one trial's resources.
"""

from __future__ import annotations

import pickle

from ray.tune.search import Searcher

from lucir import record


class ArraySearch(Searcher):
    def __init__(self, inner: Searcher, size: int, trials: int):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.size, self.trials = inner, int(size), int(trials)
        self.asked = 0  # member trials handed out
        self.members: dict[str, list[str]] = {}  # Tune trial id -> its members' trial ids
        self.fixed: dict = {}
        self.last: dict[str, dict] = {}  # member id -> its last result (a stopped member's is older)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """``config`` is the Tuner's param space: the fixed fields every member gets (the searched domains
        are the inner searcher's own space)."""
        self.inner.set_search_properties(metric, mode, {}, **spec)
        self._metric, self._mode = metric or self._metric, mode or self._mode
        self.fixed = dict(config or {})
        return True

    def suggest(self, trial_id: str):
        n = min(self.size, self.trials - self.asked)
        if n <= 0:
            return Searcher.FINISHED
        ids = record.member_ids(trial_id, n)
        configs = []
        for mid in ids:
            params = self.inner.suggest(mid)
            if params in (None, Searcher.FINISHED):
                if configs:  # Optuna already holds the first members: an array must not lose them
                    raise RuntimeError(f"the Optuna searcher gave {len(configs)} of the {n} trials of array "
                                       f"{trial_id}")
                return params
            configs.append({**self.fixed, **params})
        self.asked += n
        self.members[trial_id] = ids
        return {record.ARRAY_KEY: configs}

    def _member_results(self, trial_id: str, result: dict | None) -> list[dict | None]:
        ids = self.members.get(trial_id, [])
        if result is None:
            return [None] * len(ids)
        per = result.get(record.ARRAY_KEY)
        out = []
        for i in range(len(ids)):
            if isinstance(per, dict):
                m = dict(per.get(str(i)) or {})
            else:  # Tune hands searchers flattened results: members/<i>/<metric>
                prefix = f"{record.ARRAY_KEY}/{i}/"
                m = {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}
            for k in ("training_iteration", "num_phases", "time_total_s"):
                if k in result:
                    m.setdefault(k, result[k])
            out.append(m)
        return out

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for mid, r in zip(self.members.get(trial_id, []), self._member_results(trial_id, result)):
            if r is not None and "phase" in r:  # a member ASHA stopped reports no more
                self.last[mid] = r
                self.inner.on_trial_result(mid, r)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Each member is told its own last result: every phase (COMPLETE), fewer (stopped by ASHA: PRUNED),
        or an error (FAIL)."""
        for mid, r in zip(self.members.get(trial_id, []), self._member_results(trial_id, result)):
            if r is None or "phase" not in r:
                r = self.last.get(mid)
            self.inner.on_trial_complete(mid, r, error)
            self.last.pop(mid, None)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump({"asked": self.asked, "members": self.members, "fixed": self.fixed, "last": self.last,
                         "inner": self.inner.__dict__.copy()}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            saved = pickle.load(fh)
        self.asked, self.members, self.fixed = saved["asked"], saved["members"], saved["fixed"]
        self.last = saved.get("last", {})
        self.inner.__dict__.update(saved["inner"])
        if hasattr(self.inner, "find_orphans"):  # Optuna trials asked after Tune's last snapshot
            self.inner._orphans = self.inner.find_orphans()
            # members asked after the snapshot count against the budget, except those handed out again
            self.asked = max(self.asked, len(self.inner._asked()) - len(self.inner._orphans))
