"""Shared base-phase cache: the claim protocol (real processes, real files) and a real sweep in which
trials that differ only in margin, K and lambda_base train the base phase once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

import lucir
from tune_fixtures import TINY, ray_local, trial_docs  # noqa: F401
from lucir.checkpoint import atomic_write_text
from tune.base_cache import BaseCache, beat_file
from tune.experiment import TrialStatusCallback
from tune.trainable import make_trainable


def _fake_state(tag: int) -> dict:
    import torch

    return {"phase": 0, "config": {}, "base_key": "k", "model": {"w": torch.full((2,), float(tag))},
            "head": {}, "memory": {}, "acc_cnn": [[1.0]], "acc_nme": [[1.0]], "results": [{"tag": tag}]}


def _worker(root: str, tag: int, out: str) -> None:
    """One 'trial': look the key up; on a miss, 'train' (sleep) and publish."""
    cache = BaseCache(root, poll=0.05)
    look = cache.lookup("k", who=f"w{tag}")
    if look.status == "miss":
        time.sleep(0.5)
        look.claim.publish(_fake_state(tag), {"trial_id": f"w{tag}"})
        res = tag
    else:
        res = look.state["results"][0]["tag"]
    Path(out, f"{tag}.json").write_text(json.dumps({"status": look.status, "from": res}))


def test_concurrent_processes_train_a_key_once(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), i, str(tmp_path))) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    outs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(4)]
    assert sorted(o["status"] for o in outs) == ["hit", "hit", "hit", "miss"]
    trainer = next(i for i, o in enumerate(outs) if o["status"] == "miss")
    assert all(o["from"] == trainer for o in outs)  # everyone got the one published state
    c = BaseCache(tmp_path / "cache").counts()
    assert c["miss"] == 1 and c["publish"] == 1 and c["hit"] == 3
    assert not (tmp_path / "cache" / "k" / "lock").exists()
    assert not [p for p in (tmp_path / "cache" / "k").iterdir() if p.name.startswith(".")]  # no temp files


def test_stale_lock_of_dead_owner_is_taken_over(tmp_path):
    root = tmp_path / "cache"
    (root / "k").mkdir(parents=True)
    p = mp.get_context("fork").Process(target=time.sleep, args=(0,))
    p.start()
    p.join()
    dead_pid = p.pid  # a process of this host that no longer exists
    import socket

    (root / "k" / "lock").write_text(json.dumps({"token": "t", "pid": dead_pid, "host": socket.gethostname()}))
    look = BaseCache(root, poll=0.05).lookup("k", who="me")
    assert look.status == "miss"
    look.claim.release()
    assert BaseCache(root).counts()["takeover"] == 1


def test_lock_without_heartbeat_is_taken_over(tmp_path):
    """A claim of another node whose counter stops: stale after stale_after s of the waiter's own clock,
    although its files' mtimes are brand new (they never decide: NFS mtimes come from the server)."""
    root = tmp_path / "cache"
    (root / "k").mkdir(parents=True)
    lock = root / "k" / "lock"
    lock.write_text(json.dumps({"token": "t", "pid": 1, "host": "another-node"}))
    beat_file(lock, "t").write_text("7\n")
    t0 = time.monotonic()
    look = BaseCache(root, poll=0.05, stale_after=0.5).lookup("k", who="me")
    assert look.status == "miss"
    assert time.monotonic() - t0 >= 0.5  # counted from when the waiter first saw the claim
    assert not beat_file(lock, "t").exists()  # the dead claim's counter went with it
    look.claim.release()
    assert sorted(p.name for p in (root / "k").iterdir()) == []
    assert BaseCache(root).counts()["takeover"] == 1


def _fake_remote_owner(lock, stop, every: float = 0.05) -> None:
    """Another node's live claim seen through a skewed NFS server clock: the counter advances, but every
    mtime is an hour old."""
    lock.write_text(json.dumps({"token": "remote", "pid": 1, "host": "another-node"}))
    old = time.time() - 3600
    n = 0
    while not stop.is_set():
        atomic_write_text(beat_file(lock, "remote"), f"{n}\n")
        for p in (lock, beat_file(lock, "remote")):
            os.utime(p, (old, old))
        n += 1
        stop.wait(every)


def test_advancing_counter_with_old_mtime_is_live_and_taken_over_once_it_stops(tmp_path):
    import threading

    root = tmp_path / "cache"
    (root / "k").mkdir(parents=True)
    lock = root / "k" / "lock"
    stop = threading.Event()
    owner = threading.Thread(target=_fake_remote_owner, args=(lock, stop))
    owner.start()
    try:
        while not beat_file(lock, "remote").exists():
            time.sleep(0.01)
        with pytest.raises(TimeoutError):  # 1.5 s of waiting = 3 x stale_after: the claim stays live
            BaseCache(root, poll=0.05, stale_after=0.5, timeout=1.5).lookup("k", who="waiter")
        assert json.loads(lock.read_text())["token"] == "remote"
    finally:
        stop.set()
        owner.join()
    look = BaseCache(root, poll=0.05, stale_after=0.5).lookup("k", who="waiter")  # the owner died
    assert look.status == "miss"
    look.claim.release()


def test_claim_heartbeat_counter_advances_and_stops_when_taken_over(tmp_path):
    root = tmp_path / "cache"
    owner = BaseCache(root, heartbeat=0.05).lookup("k", who="owner").claim
    lock = root / "k" / "lock"
    first = int(owner.beat_file.read_text())
    time.sleep(0.4)
    assert int(owner.beat_file.read_text()) > first  # rewritten whole (temp + rename), not touched
    # a waiter takes the claim over (e.g. this process was stopped longer than stale_after)
    os.rename(lock, root / "k" / "aside")
    (root / "k" / "aside").unlink()
    lock.write_text(json.dumps({"token": "newowner", "pid": 1, "host": "another-node"}))
    owner._thread.join(5)
    assert not owner._thread.is_alive() and not owner.beat_file.exists()  # it noticed and stopped
    owner.release()
    assert json.loads(lock.read_text())["token"] == "newowner"  # the new claimant's lock is left alone


def test_live_claim_keeps_waiters_waiting(tmp_path):
    root = tmp_path / "cache"
    owner = BaseCache(root, heartbeat=0.1).lookup("k", who="owner")
    assert owner.status == "miss"
    with pytest.raises(TimeoutError):
        BaseCache(root, poll=0.05, stale_after=2.0, timeout=3.0).lookup("k", who="waiter")  # 20 heartbeats of slack
    owner.claim.release()


@pytest.mark.slow
def test_sweep_over_margin_K_lambda_trains_base_phase_once(ray_local, tmp_path):  # noqa: F811
    from ray import tune

    exp = tmp_path / "exp"
    space = {**TINY, "margin": tune.grid_search([0.2, 0.5]), "K": tune.grid_search([1, 2]),
             "lambda_base": tune.grid_search([2.0])}
    keys = {lucir.Config.from_flat({**TINY, "margin": m, "K": k, "lambda_base": 2.0}).base_key()
            for m in (0.2, 0.5) for k in (1, 2)}
    assert len(keys) == 1  # the premise: they share the base phase (DESIGN §5)
    grid = tune.Tuner(make_trainable(str(exp), cpus=1), param_space=space,
                      tune_config=tune.TuneConfig(reuse_actors=True),
                      run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0,
                                                callbacks=[TrialStatusCallback(str(exp))])).fit()
    assert not grid.errors and len(grid) == 4
    counts = BaseCache(exp / "base_cache").counts()
    assert counts["miss"] == 1 and counts["publish"] == 1 and counts["hit"] == 3  # base phase trained once
    docs = trial_docs(exp)
    assert sorted(d["base_cache"] for d in docs) == ["hit", "hit", "hit", "miss"]
    assert all(d["status"] == "TERMINATED" for d in docs)
    p0 = [{k: v for k, v in d["phases"][0].items() if k not in ("train_seconds", "phase_seconds")} for d in docs]
    assert all(json.dumps(x, sort_keys=True) == json.dumps(p0[0], sort_keys=True) for x in p0)
    assert all(d["acc_matrix_cnn"][0] == docs[0]["acc_matrix_cnn"][0] for d in docs)
    # later phases do differ (margin/K matter), so the trials really are different runs
    assert len({json.dumps(d["acc_matrix_cnn"]) for d in docs}) > 1
    # a hit is the same run as training from scratch: the trainer's resume guarantee, checked once
    hit = next(d for d in docs if d["base_cache"] == "hit")
    flat = {k: hit["config"][k] for k in ("epochs", "margin", "K", "lambda_base", "threads", "device")}
    direct = [r for r, _ in lucir.run(lucir.Config.from_flat(flat))]
    assert hit["acc_matrix_cnn"] == direct[-1].acc_matrix_cnn
