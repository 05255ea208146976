"""Shared base-phase cache (DESIGN §5): trials with the same ``Config.base_key()`` train phase 0 once.

Layout inside the experiment folder (docs/EXPERIMENT_LAYOUT.md)::

    <exp>/base_cache/<base_key>/state.pt     the phase-0 run state, published atomically (temp + rename)
    <exp>/base_cache/<base_key>/meta.json    who trained it, when, with which config
    <exp>/base_cache/<base_key>/lock         claim of the trial training it (owner, token); never rewritten
    <exp>/base_cache/<base_key>/lock.<token>.beat   the claim's heartbeat counter, rewritten atomically
    <exp>/base_cache/events.log              one JSON line per hit / miss / takeover (O_APPEND)

Only the file system is used, so the cache works across nodes that share the experiment's storage
(NFS at the same path).  Protocol:

1. ``state.pt`` exists: a **hit**, load it and start the run from it (``lucir.run(cfg, base_state)``).
2. Otherwise try to **claim** the key by creating ``lock``: written whole under a temporary name, then
   ``link(2)``ed to ``lock``, which fails when it exists (atomic on POSIX and NFSv3+, like
   ``O_CREAT | O_EXCL``, and no reader sees a half-written lock).  The claimant is a **miss**: it trains phase 0 itself, :meth:`Claim.publish` writes
   ``state.pt`` atomically and removes the lock.  A thread increments the claim's heartbeat counter
   every ``heartbeat`` seconds (``lock.<token>.beat``, written to a temporary name and renamed).
3. A trial that finds the lock held **waits** (polls) for ``state.pt``.  A claim is **stale** when its
   owner process is gone (same host: the pid is checked), or when neither the lock nor its heartbeat
   counter has changed for ``stale_after`` seconds of the *waiter's own* ``time.monotonic()`` clock.
   File mtimes are never compared with the local clock: on NFS they come from the server's clock, which
   may be minutes off a node's.  A stale lock is moved aside with an atomic rename (only one waiter wins
   it) and the waiter claims the key itself.

The counter lives in its own file, named by the claim's token, rather than in the lock: an owner that
comes back after a takeover (a process stopped for longer than ``stale_after``) then only rewrites its
own heartbeat file and can never overwrite the new claimant's lock; it notices the lost claim (the lock's
token is not its own), stops beating, and its ``release`` leaves the new lock alone.
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

from lucir.checkpoint import CheckpointError, atomic_write_json, atomic_write_text, load_state, save_state

log = logging.getLogger("lucir.base_cache")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def beat_file(lock: Path, token: str) -> Path:
    """The heartbeat counter of the claim ``token`` of ``lock``."""
    return lock.with_name(f"{lock.name}.{token}.beat")


def _owner(text: str) -> dict:
    """The lock's JSON; {} while it is being written (or was written half by an owner that died)."""
    try:
        owner = json.loads(text or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _token_of(text: str) -> str:
    token = _owner(text).get("token")
    return token if isinstance(token, str) and token.isalnum() else ""  # a uuid hex: a safe file name


def _lock_token(lock: Path) -> str | None:
    """The token in ``lock``; None when there is no lock (other ``OSError`` propagate)."""
    try:
        return _token_of(lock.read_text())
    except FileNotFoundError:
        return None


class Claim:
    """The right to train one base key; keeps the heartbeat counter going until published or released."""

    def __init__(self, cache: "BaseCache", key: str, lock: Path, token: str):
        self.cache, self.key, self.lock, self.token = cache, key, lock, token
        self.beat_file = beat_file(lock, token)
        self.beats = 0
        self._write_beat()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"base-cache-heartbeat-{key}", daemon=True)
        self._thread.start()

    def _write_beat(self) -> None:
        atomic_write_text(self.beat_file, f"{self.beats}\n")  # temp + rename: a reader sees n or n+1

    def _beat(self) -> None:
        while not self._stop.wait(self.cache.heartbeat):
            try:
                if _lock_token(self.lock) != self.token:  # taken over while this process was stopped
                    log.warning("base cache %s: this claim was taken over as stale; its heartbeat stops", self.key)
                    self.beat_file.unlink(missing_ok=True)
                    return
                self.beats += 1
                self._write_beat()
            except OSError as exc:  # e.g. an NFS hiccup: try again at the next beat
                log.warning("base cache %s: heartbeat failed (%s)", self.key, exc)

    def _owns_lock(self) -> bool:
        try:
            return _lock_token(self.lock) == self.token
        except OSError:
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
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)  # no beat rewrites the counter file after it is removed
        if self._owns_lock():
            try:
                self.lock.unlink()
            except FileNotFoundError:
                pass
        self.beat_file.unlink(missing_ok=True)


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
        # per key: (what the waiter last saw of the claim, its own monotonic time when that changed)
        self._seen: dict[str, tuple[tuple[str, str | None], float]] = {}

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
        if lock.exists():  # the common case of a waiter's poll: no temporary file written
            return None
        token = uuid.uuid4().hex
        # written whole under a temporary name, then link(2)ed to `lock`: the link fails when the lock
        # exists (atomic on POSIX and NFSv3+, like O_CREAT|O_EXCL), and no one ever reads a half lock
        tmp = d / f".lock.{token}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"token": token, "pid": os.getpid(), "host": socket.gethostname(), "who": who,
                       "claimed": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, lock)
        except FileExistsError:
            return None
        finally:
            tmp.unlink(missing_ok=True)
        try:
            return Claim(self, key, lock, token)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise

    def _stale_lock(self, key: str, lock: Path) -> str | None:
        """The text of ``lock`` when its claim is stale, else None.

        Stale: the owner's pid is gone (same host), or the lock and its heartbeat counter have shown the
        same content for more than ``stale_after`` seconds of this process's monotonic clock, counted
        from when this waiter first saw them so (never from a file's mtime: another clock).
        """
        try:
            text = lock.read_text()
        except FileNotFoundError:
            self._seen.pop(key, None)
            return None
        owner = _owner(text)
        token = _token_of(text)
        try:
            beat = beat_file(lock, token).read_text() if token else None
        except FileNotFoundError:
            beat = None
        now = time.monotonic()
        seen = (text, beat)
        if key not in self._seen or self._seen[key][0] != seen:
            self._seen[key] = (seen, now)
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
            if not _pid_alive(owner["pid"]):
                return text
        if now - self._seen[key][1] > self.stale_after:
            return text
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

    def peek(self, key: str, who: str = "") -> dict | None:
        """The published phase-0 state of ``key``, or None at once (no claim, no waiting): a fused array
        uses its members' cached base phases only when all of them are there."""
        state = self._load(key)
        if state is not None:
            self._event("hit", key, who=who, waited=0.0)
        return state

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
            stale = self._stale_lock(key, lock)
            if stale is not None:
                aside = lock.with_name(f"lock.stale.{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(lock, aside)  # only one waiter wins the rename
                except FileNotFoundError:
                    continue
                try:
                    moved = aside.read_text()
                except OSError:
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
                token = _token_of(stale)
                if token:  # the dead claim's counter
                    beat_file(lock, token).unlink(missing_ok=True)
                self._seen.pop(key, None)
                continue
            if not announced:
                log.info("base cache %s: being trained by another trial; %s waits", key, who)
                announced = True
            if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                raise TimeoutError(f"base cache {key}: waited {self.timeout:.0f} s for another trial's base phase")
            time.sleep(self.poll)
