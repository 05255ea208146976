"""The Ray Tune runner of lucir (DESIGN §2, §6), and its Python API.

The experiment folder is the one truth (``tune.sweep``); Ray Tune only executes the slots
(``tune.worker``); a search's Optuna study lives in the folder (``tune.study``); MLflow mirrors the
records (``tune.mlflow_sync``).  Nothing here implements the algorithm; everything drives ``lucir.run``.

From Python, in the style of Ray's ``Tuner``, each call runs (or continues) a sweep to its end and
returns it as the long DataFrame the reports use (one row per slot x phase)::

    import tune
    df = tune.ablate(presets=["cn", "lucir"], seeds=2, set={"epochs": 2}, out="experiments/ab")
    df = tune.search(trials=8, set={"epochs": 2}, out="experiments/se")
    df = tune.resume("experiments/se")
    df[df.phase == df.phases].groupby("preset").avg_inc_acc_cnn.mean()

Keyword arguments are the command-line options with ``_`` for ``-`` (``max_concurrent=2``,
``gpus_per_trial=0.25``); ``set`` is a dict of config fields (``--set``), ``grid_set`` a dict of lists
(``--grid-set``).  A failed check raises ``lucir.config.ConfigError`` before anything starts.
"""

from __future__ import annotations


def _argv(command: str, kwargs: dict) -> list[str]:
    argv = [command]
    for k, v in kwargs.items():
        flag = "--" + k.replace("_", "-")
        if k == "set":
            argv += [x for f, val in v.items() for x in ("--set", f"{f}={val}")]
        elif k == "grid_set":
            argv += [x for f, vals in v.items() for x in ("--grid-set", f"{f}={','.join(map(str, vals))}")]
        elif isinstance(v, bool):
            argv += [flag] if v else []
        elif isinstance(v, (list, tuple)):
            argv += [flag, ",".join(map(str, v))]
        elif v is not None:
            argv += [flag, str(v)]
    return argv


def _call(argv: list[str]):
    """Run a ``lucir`` command in this process; the sweep's folder as a long DataFrame."""
    from pathlib import Path

    from analysis.results import load_experiment
    from lucir.cli import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)
    exp = Path(args.experiment if argv[0] == "resume" else args.out or "").absolute()
    return load_experiment(exp)


def ablate(*, out: str, **kwargs):
    """``lucir ablate`` (every option as a keyword); returns the long DataFrame of the sweep."""
    return _call(_argv("ablate", {"out": out, **kwargs}))


def search(*, out: str, **kwargs):
    """``lucir search`` (every option as a keyword); returns the long DataFrame of the search (its confirm
    stage: ``tune.confirmed(out)``)."""
    return _call(_argv("search", {"out": out, **kwargs}))


def resume(path: str, **kwargs):
    """``lucir resume``: finish the sweep in ``path``; returns its long DataFrame."""
    return _call(["resume", str(path), *_argv("x", kwargs)[1:]])


def confirmed(path: str):
    """The confirm stage of the search in ``path`` as a long DataFrame."""
    from pathlib import Path

    from analysis.results import load_experiment
    from lucir.record import CONFIRM_DIR

    return load_experiment(Path(path) / CONFIRM_DIR)
