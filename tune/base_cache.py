"""The shared base phase (DESIGN §5): trials with the same ``Config.base_key()`` train phase 0 once.

The base phase depends only on (dataset, class order, base classes, backbone, eta_init, base schedule,
seed, precision), not on lambda_base, m or K.  Before a sweep's trials start, the driver trains every
base key that two slots or more share, once, in parallel Ray tasks (:func:`pretrain`), and publishes it
here; the trials then find it (a hit) and go straight to phase 1.  Because the driver trains the shared
keys first, trials never contend for a key: a key that is not here when a trial starts is used by that
trial alone (or by a search slot that drew a rare ``eta_init``; two such slots may both train it, and
each publication is atomic, so the cost is time, never a wrong state).  A key already here (a resumed
sweep) costs one lookup.  Only the file system is used, so the cache works on storage every node
shares::

    <exp>/base_cache/<base_key>/state.pt     the phase-0 run state, written atomically (temp + rename)
    <exp>/base_cache/<base_key>/meta.json    who trained it, when, with which config
    <exp>/base_cache/events.log              one JSON line per hit / miss / publish (O_APPEND)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path

from lucir.checkpoint import CheckpointError, atomic_write_json, load_state, save_state
from lucir.config import Config
from lucir.record import BASE_CACHE_DIR

log = logging.getLogger("lucir.base_cache")


class BaseCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()

    def entry(self, key: str) -> Path:
        return self.root / key

    def _event(self, kind: str, key: str, **extra) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": kind, "key": key, "time": time.time(), "host": socket.gethostname(),
                           "pid": os.getpid(), **extra}, default=str) + "\n"
        fd = os.open(self.root / "events.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict]:
        p = self.root / "events.log"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    def counts(self) -> dict[str, int]:
        return {"hit": 0, "miss": 0, "publish": 0, **Counter(e["event"] for e in self.events())}

    def has(self, key: str) -> bool:
        return (self.entry(key) / "state.pt").exists()

    def get(self, key: str, who: str = "") -> dict | None:
        """The published phase-0 state of ``key`` (a hit), or None (a miss: the caller trains it)."""
        p = self.entry(key) / "state.pt"
        state = None
        if p.exists():
            try:
                state = load_state(p)
            except CheckpointError as exc:  # cannot happen with atomic writes; never trust a bad entry
                log.warning("base cache entry %s is unreadable (%s); training it again", p, exc)
        self._event("hit" if state is not None else "miss", key, who=who)
        return state

    def put(self, key: str, state: dict, meta: dict | None = None) -> None:
        """Publish a phase-0 state atomically."""
        if state.get("phase") != 0:
            raise ValueError(f"only a phase-0 state can be cached (got phase {state.get('phase')})")
        d = self.entry(key)
        d.mkdir(parents=True, exist_ok=True)
        save_state({k: v for k, v in state.items() if k != "partial"}, d / "state.pt")
        atomic_write_json(d / "meta.json", {"base_key": key, "published": time.time(),
                                            "host": socket.gethostname(), "pid": os.getpid(), **(meta or {})})
        self._event("publish", key, **(meta or {}))


def shared_base_configs(cfgs: list[Config], min_share: int = 2) -> list[Config]:
    """One config per base key that ``min_share`` or more of ``cfgs`` share, in first-seen order."""
    counts = Counter(c.base_key() for c in cfgs)
    out: dict[str, Config] = {}
    for c in cfgs:
        if counts[c.base_key()] >= min_share:
            out.setdefault(c.base_key(), c)
    return list(out.values())


def _train_base(flat: dict, cache_dir: str) -> str:
    """Ray task: phase 0 of ``flat`` into the base cache (nothing to do when it is there already)."""
    import lucir

    cfg = lucir.Config.from_flat(flat)
    cache = BaseCache(cache_dir)
    if cache.get(cfg.base_key(), who="pretrain") is not None:
        return "hit"
    for _, state in lucir.run(cfg, None):
        cache.put(cfg.base_key(), state, {"trial_id": "pretrain", "config": cfg.identity()})
        break
    return "trained"


def pretrain(exp: Path, cfgs: list[Config], runner, min_share: int = 2) -> dict[str, str]:
    """Train the base phases that ``min_share`` or more of ``cfgs`` share, in parallel Ray tasks with the
    trials' resources; {base_key: "hit" | "trained"}.  Needs Ray; nothing with the base cache off."""
    cache_dir = Path(exp) / BASE_CACHE_DIR
    todo = [c for c in shared_base_configs(cfgs, min_share) if not BaseCache(cache_dir).has(c.base_key())] \
        if runner.base_cache else []
    if not todo:
        return {}
    import ray

    from tune.worker import runtime_overrides

    cpus, gpus = runner.cpus_per_trial, runner.gpus_per_trial
    task = ray.remote(_train_base).options(num_cpus=cpus, num_gpus=gpus, max_retries=runner.max_failures)
    print(f"pre-training {len(todo)} shared base phase(s) before the trials start", flush=True)
    refs = {c.base_key(): task.remote(runtime_overrides(c.to_flat(), cpus, gpus), str(cache_dir))
            for c in todo}
    out = {k: ray.get(r) for k, r in refs.items()}
    log.info("base phases: %s", out)
    return out
