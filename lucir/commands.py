"""The ``lucir train`` command line that reproduces a configuration (a leaf module: the search summary in
``tune`` and the reports in ``analysis`` import it without importing the command line itself)."""

from __future__ import annotations

import shlex
from typing import Any

from lucir.config import RUNTIME_FIELDS, Config


#: the flags ``command_line`` always spells out; every other field differing from their defaults is a --set
_COMMAND_FLAGS = {"dataset": "--dataset", "preset": "--preset", "base_classes": "--base", "phases": "--phases",
                  "exemplars_per_class": "--exemplars", "memory_total": "--memory-total", "seed": "--seed",
                  "epochs": "--epochs"}


def _plain(v: Any) -> Any:
    """Tuples as lists, so that a config read back from JSON compares equal to one built in Python."""
    return list(v) if isinstance(v, (list, tuple)) else v


def _cli_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(str(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def command_line(config: dict[str, Any], command: str = "lucir train") -> str:
    """A ``lucir train`` command line that reproduces the flat ``config`` (DESIGN §1); the search
    summary (``tune``) and the reports (``analysis``) print it for the best trial.

    The main protocol fields are flags; every other field whose value differs from what those flags
    give by default (``Config.from_flat``) is a ``--set key=value``. Runtime fields are left out.
    """
    cfg = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS and k not in ("num_classes", "data_root")}
    head = {k: cfg[k] for k in _COMMAND_FLAGS if k in cfg and not (k == "memory_total" and not cfg[k])}
    try:
        ref = Config.from_flat({k: _plain(v) for k, v in head.items()}).to_flat()
    except Exception:  # noqa: BLE001 - any config the trainer rejects: spell every field out
        ref = {}
    parts = [command]
    for k, flag in _COMMAND_FLAGS.items():
        if k in head:
            parts += [flag, shlex.quote(_cli_value(head[k]))]
    for k, v in cfg.items():
        if k in _COMMAND_FLAGS:
            continue
        if k not in ref or _plain(v) != _plain(ref[k]):
            parts += ["--set", shlex.quote(f"{k}={_cli_value(v)}")]
    if config.get("dataset") not in (None, "digits") and config.get("data_root"):  # digits is embedded
        parts += ["--data-root", shlex.quote(str(config["data_root"]))]
    return " ".join(parts)
