"""Shared base-phase cache (DESIGN §5): trials with the same ``Config.base_key()`` train phase 0 once.

Layout inside the experiment folder (docs/EXPERIMENT_LAYOUT.md)::

    <exp>/base_cache/<base_key>/state.pt     the phase-0 run state, published atomically (temp + rename)
    <exp>/base_cache/<base_key>/meta.json    who trained it, when, with which config
    <exp>/base_cache/<base_key>/lock         claim of the trial training it: O_CREAT|O_EXCL, owner + heartbeat
    <exp>/base_cache/events.log              one JSON line per hit / miss / takeover (O_APPEND)

Only the file system is used, so the cache works across nodes that share the experiment's storage
(NFS at the same path).  Protocol:

1. ``state.pt`` exists: a **hit**, load it and start the run from it (``lucir.run(cfg, base_state)``).
2. Otherwise try to **claim** the key by creating ``lock`` with ``O_CREAT | O_EXCL`` (atomic on POSIX
   and NFSv3+).  The claimant is a **miss**: it trains phase 0 itself, :meth:`Claim.publish` writes
   ``state.pt`` atomically and removes the lock.  A thread touches the lock every ``heartbeat`` seconds.
3. A trial that finds the lock held **waits** (polls) for ``state.pt``.  A lock whose heartbeat is older
   than ``stale_after`` seconds, or whose owner process is gone (same host), is **stale**: it is moved
   aside with an atomic rename (only one waiter wins it) and the waiter claims the key itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lucir.checkpoint import CheckpointError, atomic_write_json, load_state, save_state

log = logging.getLogger("lucir.base_cache")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """The right to train one base key; keeps the lock's heartbeat until published or released."""

    def __init__(self, cache: "BaseCache", key: str, lock: Path, token: str):
        self.cache, self.key, self.lock, self.token = cache, key, lock, token
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"base-cache-heartbeat-{key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.cache.heartbeat):
            try:
                os.utime(self.lock)
            except FileNotFoundError:
                return

    def _owns_lock(self) -> bool:
        try:
            return json.loads(self.lock.read_text()).get("token") == self.token
        except (OSError, ValueError):
            return False

    def publish(self, state: dict, meta: dict | None = None) -> None:
        """Write the phase-0 state atomically, then drop the lock."""
        if state.get("phase") != 0:
            raise ValueError(f"only a phase-0 state can be cached (got phase {state.get('phase')})")
        d = self.cache.entry(self.key)
        save_state(state, d / "state.pt")
        atomic_write_json(d / "meta.json", {"base_key": self.key, "published": time.time(),
                                            "host": socket.gethostname(), "pid": os.getpid(), **(meta or {})})
        self.cache._event("publish", self.key, **(meta or {}))
        self.release()

    def release(self) -> None:
        self._stop.set()
        if self._owns_lock():
            try:
                self.lock.unlink()
            except FileNotFoundError:
                pass


@dataclass
class Lookup:
    status: str  # "hit" | "miss"
    state: dict | None = None
    claim: Claim | None = None
    waited: float = 0.0


class BaseCache:
    def __init__(self, root: str | os.PathLike, *, poll: float = 0.5, heartbeat: float = 5.0,
                 stale_after: float = 60.0, timeout: float | None = None):
        self.root = Path(root).absolute()
        self.poll, self.heartbeat, self.stale_after, self.timeout = poll, heartbeat, stale_after, timeout

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
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def counts(self) -> dict[str, int]:
        out = {"hit": 0, "miss": 0, "publish": 0, "takeover": 0}
        for e in self.events():
            out[e["event"]] = out.get(e["event"], 0) + 1
        return out

    def _try_claim(self, key: str, who: str) -> Claim | None:
        d = self.entry(key)
        d.mkdir(parents=True, exist_ok=True)
        lock = d / "lock"
        token = uuid.uuid4().hex
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as fh:
            json.dump({"token": token, "pid": os.getpid(), "host": socket.gethostname(), "who": who,
                       "claimed": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return Claim(self, key, lock, token)

    def _stale_token(self, lock: Path) -> str | None:
        """The token of a stale lock (heartbeat too old or owner process gone), else None."""
        try:
            age = time.time() - lock.stat().st_mtime
            owner = json.loads(lock.read_text() or "{}")
        except FileNotFoundError:
            return None
        except ValueError:  # being written right now
            return None
        token = owner.get("token", "")
        if age > self.stale_after:
            return token
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            return None if _pid_alive(owner["pid"]) else token
        return None

    def _load(self, key: str) -> dict | None:
        p = self.entry(key) / "state.pt"
        if not p.exists():
            return None
        try:
            return load_state(p)
        except CheckpointError as exc:  # cannot happen with atomic publish; never trust a bad entry
            log.warning("base cache entry %s is unreadable (%s); retraining it", p, exc)
            return None

    def lookup(self, key: str, who: str = "") -> Lookup:
        """Return a hit (the phase-0 state) or a miss with a :class:`Claim` to train and publish it."""
        t0 = time.monotonic()
        announced = False
        while True:
            state = self._load(key)
            if state is not None:
                waited = time.monotonic() - t0
                self._event("hit", key, who=who, waited=round(waited, 3))
                log.info("base cache hit %s for %s (waited %.1f s)", key, who, waited)
                return Lookup("hit", state=state, waited=waited)
            claim = self._try_claim(key, who)
            if claim is not None:
                if self._load(key) is not None:  # published between our check and our claim
                    claim.release()
                    continue
                self._event("miss", key, who=who)
                log.info("base cache miss %s: %s trains the base phase", key, who)
                return Lookup("miss", claim=claim, waited=time.monotonic() - t0)
            lock = self.entry(key) / "lock"
            stale = self._stale_token(lock)
            if stale is not None:
                aside = lock.with_name(f"lock.stale.{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(lock, aside)  # only one waiter wins the rename
                except FileNotFoundError:
                    continue
                try:
                    moved = json.loads(aside.read_text() or "{}").get("token", "")
                except (OSError, ValueError):
                    moved = stale
                if moved != stale:  # another waiter already took over: give its fresh lock back
                    try:
                        os.link(aside, lock)
                    except FileExistsError:
                        pass
                    aside.unlink(missing_ok=True)
                    continue
                self._event("takeover", key, who=who)
                log.warning("base cache %s: stale lock taken over by %s", key, who)
                try:
                    aside.unlink()
                except FileNotFoundError:
                    pass
                continue
            if not announced:
                log.info("base cache %s: being trained by another trial; %s waits", key, who)
                announced = True
            if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                raise TimeoutError(f"base cache {key}: waited {self.timeout:.0f} s for another trial's base phase")
            time.sleep(self.poll)
