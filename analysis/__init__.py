"""analysis: reports of LUCIR experiments (DESIGN §2). Knows nothing of training.

``load_experiment(path)`` / ``load_mlflow(uri, name)`` give one long DataFrame (trial x phase);
``analysis.tables`` and ``analysis.plots`` turn it into tables and figures; ``lucir report`` writes them.
"""

from analysis.results import (METRICS, PROTOCOL, Experiment, ExperimentError, load_experiment, load_mlflow,
                              read_experiment)

__all__ = ["METRICS", "PROTOCOL", "Experiment", "ExperimentError", "load_experiment", "load_mlflow",
           "read_experiment"]
