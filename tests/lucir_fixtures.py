"""Shared helpers of the trainer tests (imported by the test modules; not a conftest).

* one torch thread (the test machine's cores are shared);
* where real CIFAR-100 lies (``$LUCIR_DATA`` or ``<repo>/../shared/data``) and a skip marker;
* the digits dataset loaded once per test session;
* tiny digits configurations and a helper that runs ``lucir.run`` to completion.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def cifar_root() -> Path:
    """Folder holding ``cifar-100-binary/`` or ``cifar-100-python/`` ($LUCIR_DATA wins)."""
    env = os.environ.get("LUCIR_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def cifar_available() -> bool:
    from lucir.data import cifar100_paths

    return cifar100_paths(cifar_root()) is not None


requires_cifar = pytest.mark.skipif(
    not cifar_available(),
    reason=f"real CIFAR-100 not found under {cifar_root()} (put cifar-100-binary/ or cifar-100-python/ "
           "there, or set LUCIR_DATA to the folder that holds it)")


@functools.lru_cache(maxsize=1)
def digits():
    """scikit-learn digits as a ``TensorDataset`` (loaded once; treat it as read-only)."""
    from lucir.data import load_digits_dataset

    return load_digits_dataset()


def tiny_config(**flat):
    """A digits configuration small enough for a test: 2 epochs per phase, CPU."""
    from lucir.config import Config

    base = dict(dataset="digits", epochs=2, device="cpu")
    base.update(flat)
    return Config.from_flat(base)


def run_all(cfg, state=None, stop_after=None):
    """``[(PhaseResult, state), ...]`` of ``lucir.run`` (up to and including phase ``stop_after``)."""
    import lucir

    out = []
    gen = lucir.run(cfg, state, data=digits())
    for res, st in gen:
        out.append((res, st))
        if stop_after is not None and res.phase >= stop_after:
            gen.close()
            break
    return out


def same_tensors(a: dict, b: dict) -> bool:
    """Two state dicts hold exactly the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
