"""lucir: the LUCIR class-incremental trainer (Hou et al., CVPR 2019), faithful to the reference code.

``lucir.run(config, state=None)`` yields ``(PhaseResult, state)`` per phase; see ``lucir.run``.
The trainer knows nothing of Ray, Optuna or MLflow (DESIGN §2).
"""

import os as _os

# torch's OpenMP threads spin while they wait by default; on a shared or oversubscribed CPU that
# starves the other threads (3.2x fewer images/s measured here, docs/PERFORMANCE.md).  Only takes
# effect when lucir is imported before torch; export OMP_WAIT_POLICY=ACTIVE to opt out.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lucir.checkpoint import CheckpointError, load_state, save_state
from lucir.config import LADDER, PRESETS, Config, ConfigError
from lucir.data import DatasetError, DatasetMissingError
from lucir.learner import TrainingDivergedError
from lucir import run as run_module  # noqa: F401  (the module, for check_state)
from lucir.run import PhaseResult, run

__all__ = ["Config", "ConfigError", "CheckpointError", "DatasetError", "DatasetMissingError", "LADDER", "PRESETS",
           "PhaseResult", "TrainingDivergedError", "load_state", "run", "save_state"]
__version__ = "0.1.0"
