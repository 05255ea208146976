"""Run state save/load with atomic writes (DESIGN §7).

The state is a plain dict of tensors, lists, numbers and strings (``lucir.run`` documents the
keys), saved with ``torch.save`` to a temporary file in the target folder, flushed, fsynced and
renamed over the target: a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

STATE_FORMAT = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, of another format, or of another configuration."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode a plain open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (RFC 8259): NaN and infinities are written as ``null``."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    atomic_write_text(path, text + "\n")


def _finite_or_none(o):
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_or_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_none(v) for v in o]
    if hasattr(o, "tolist"):
        return _finite_or_none(o.tolist())
    return o


def _json_default(o):
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_state(state: dict, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    torch.save({**state, "format": STATE_FORMAT}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's text can run to paragraphs: its first line is enough
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "").split(". ")[0][:160]
        raise CheckpointError(f"checkpoint {path} is corrupt or not a lucir state "
                              f"({type(exc).__name__}: {first}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format') if isinstance(state, dict) else None!r}; "
                              f"this version reads format {STATE_FORMAT}")
    return state
