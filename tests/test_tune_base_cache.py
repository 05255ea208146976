"""The shared base-phase cache: atomic publication, hits and misses counted, only phase-0 states."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from tune.base_cache import BaseCache, shared_base_configs


def _state(tag: int) -> dict:
    import torch

    return {"phase": 0, "config": {}, "model": {"w": torch.full((50_000,), float(tag))}, "results": [{"tag": tag}],
            "partial": {"epoch": 3}}


def _writer(root: str, tag: int) -> None:
    for _ in range(20):
        BaseCache(root).put("k", _state(tag), {"trial_id": f"w{tag}"})


def test_a_published_base_phase_is_read_whole_while_others_publish(tmp_path):
    cache = BaseCache(tmp_path)
    assert cache.get("k", who="a") is None
    with pytest.raises(ValueError, match="only a phase-0 state"):
        cache.put("k", {**_state(1), "phase": 1})
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(tmp_path), t)) for t in (1, 2)]
    for p in procs:
        p.start()
    seen = set()
    while any(p.is_alive() for p in procs):  # a reader never sees a half-written state
        st = cache.get("k", who="reader")
        if st is not None:
            w = st["model"]["w"]
            assert bool((w == w[0]).all()) and st["results"][0]["tag"] == int(w[0]) and "partial" not in st
            seen.add(int(w[0]))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert seen <= {1, 2} and cache.get("k")["results"][0]["tag"] in (1, 2)
    c = cache.counts()
    assert c["publish"] == 40 and c["miss"] >= 1 and c["hit"] >= 1


def test_only_keys_shared_by_two_slots_are_pretrained():
    import lucir

    cfgs = [lucir.Config.from_flat({"preset": p, "epochs": 2}) for p in ("cn", "lucir", "baseline")]
    shared = shared_base_configs(cfgs)
    assert [c.method.preset for c in shared] == ["cn"]  # cn and lucir share the cosine base phase
    assert len(shared_base_configs(cfgs, min_share=1)) == 2
