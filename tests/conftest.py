"""Shared test settings: explicit torch threads, the shared data folder, no services left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning OpenMP threads (PERFORMANCE.md)
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("LUCIR_TEST_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUCIR_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $LUCIR_DATA); tests that need CIFAR-100 skip where it is absent."""
    if not (SHARED_DATA / "cifar-100-binary" / "train.bin").is_file():
        pytest.skip(f"CIFAR-100 binary version not found under {SHARED_DATA} (set LUCIR_DATA to its parent folder)")
    return SHARED_DATA
