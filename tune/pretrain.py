"""Train every shared base phase of a sweep before its trials start (DESIGN §5).

Every base key of a sweep is known before it starts (``Config.base_key()`` of each grid point; for a
search, of each ``eta_init`` choice).  Without this step the first trial of a key trains phase 0 while
every other trial of that key waits for it, holding its CPU or GPU share for a whole base phase.
Here each base key shared by two trials or more is trained once, by a Ray task with the trials'
resources, and published to the experiment's base cache (``tune/base_cache.py``); the trials then find
it there (a hit) and go straight to phase 1.  A key already in the cache (a resumed sweep) costs one
lookup.  A key trained by a single trial is left to that trial.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from lucir.config import Config
from lucir.record import BASE_CACHE_DIR

log = logging.getLogger("lucir.tune")


def shared_base_configs(cfgs: list[Config], min_share: int = 2) -> list[Config]:
    """One config per base key that ``min_share`` or more of ``cfgs`` share, in first-seen order."""
    counts = Counter(c.base_key() for c in cfgs)
    out: dict[str, Config] = {}
    for c in cfgs:
        if counts[c.base_key()] >= min_share:
            out.setdefault(c.base_key(), c)
    return list(out.values())


def _train_base(flat: dict, cache_dir: str, cache_options: dict) -> str:
    """Ray task: phase 0 of ``flat`` into the base cache (a hit when another process already has it)."""
    import lucir
    from tune.base_cache import BaseCache

    cfg = lucir.Config.from_flat(flat)
    look = BaseCache(cache_dir, **cache_options).lookup(cfg.base_key(), who="pretrain")
    if look.status == "hit":
        return "hit"
    try:
        for result, state in lucir.run(cfg, None):
            look.claim.publish(state, {"trial_id": "pretrain", "config": cfg.identity()})
            break
    finally:
        look.claim.release()
    return "trained"


def pretrain_base_phases(exp: Path, cfgs: list[Config], runner, min_share: int = 2) -> dict[str, str]:
    """Train the base phases of ``cfgs`` (already validated) that ``min_share`` or more of them share, in
    parallel Ray tasks; returns {base_key: "hit" | "trained"}.  Needs Ray initialised; does nothing with
    the base cache off.  A search passes one config per ``eta_init`` choice and ``min_share=1``."""
    if not runner.base_cache:
        return {}
    todo = shared_base_configs(cfgs, min_share)
    if not todo:
        return {}
    import ray

    from tune.worker import runtime_overrides

    cpus, gpus = runner.cpus_per_trial, runner.gpus_per_trial
    task = ray.remote(_train_base).options(num_cpus=cpus, num_gpus=gpus, max_retries=runner.max_failures)
    cache_dir = str(Path(exp) / BASE_CACHE_DIR)
    opts = runner.cache_options
    print(f"pre-training {len(todo)} shared base phase(s) before the trials start", flush=True)
    refs = {c.base_key(): task.remote(runtime_overrides(c.to_flat(), cpus, gpus), cache_dir, opts) for c in todo}
    out = {k: ray.get(r) for k, r in refs.items()}
    log.info("base phases: %s", out)
    return out
