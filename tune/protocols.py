"""Hyperparameter protocols of ``lucir search``: where it tunes and where it evaluates (issue 19).

Class-incremental papers tune on the whole stream and report on that same stream, which overstates
methods (Lee et al. 2024, "Hyperparameters in Continual Learning: a Reality Check", arXiv 2404.06466).

* ``stream`` (the default): tune on a validation split of every phase of one class order; confirm on
  that order with new seeds.  Answers "how good can the method be made on this benchmark" (an upper bound).
* ``first-task``: tune only on what a learner has before the stream goes on: the base classes and the
  first ``--first-task-phases`` incremental phases (validation images of those classes only); the search
  slots stop there (``last_phase`` of the slot), and when the dataset's normalisation would be computed
  from its training images (digits) it is computed from those classes alone and kept for the whole
  stream.  The chosen config then runs on the whole stream.  Answers "what does tuning buy a deployed
  learner that cannot see the future".
* ``transfer``: tune on one scenario (the command's, changed by ``--tune-on``: another class order,
  base size or dataset) and evaluate on others (``--evaluate-on``, never the tuning one).  Answers
  "do the tuned hyperparameters generalise beyond the scenario they were tuned on".

The confirm stage runs the paper defaults and the top configurations on the evaluation scenarios x
seeds, paired, so the reports can say whether tuning helped beyond the defaults there.
"""

from __future__ import annotations

import itertools

from lucir.config import Config, ConfigError

PROTOCOLS = ("stream", "first-task", "transfer")
#: the class orders a transfer search evaluates on when ``--evaluate-on`` is not given
DEFAULT_TRANSFER_ORDERS = (1, 2)


def parse_settings(items: list[str]) -> dict[str, list]:
    """``KEY=V1,V2`` items (repeatable) -> {key: [values]}; keys are config fields."""
    from tune.spaces import parse_grid_set

    return {k: v["grid_search"] for k, v in parse_grid_set(items).items()} if items else {}


def _scenario(fixed: dict, overrides: dict) -> dict:
    """The protocol fields a scenario is made of (what tells scenarios apart), as a sorted dict."""
    cfg = Config.from_flat({**fixed, **overrides})
    p = cfg.protocol
    return {"dataset": p.dataset, "data_root": p.data_root, "class_order_seed": p.class_order_seed,
            "base_classes": p.base_classes, "phases": p.phases}


def plan(protocol: str, fixed: dict, tune_on: list[str], evaluate_on: list[str], first_task_phases: int) -> dict:
    """{"tune": overrides of the search slots, "last_phase": where they stop (None: the stream's end),
    "evaluate": [overrides of each evaluation scenario]}, checked: a transfer search never evaluates on
    its tuning scenario; first-task stops before the stream's end."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is invalid: allowed one of {list(PROTOCOLS)}")
    tune_grid = parse_settings(tune_on)
    tune = {k: v[0] for k, v in tune_grid.items()}
    if any(len(v) > 1 for v in tune_grid.values()):
        raise ConfigError("--tune-on takes one value per field (KEY=VALUE): a search tunes on one scenario")
    grid = parse_settings(evaluate_on)
    if protocol != "transfer" and (tune or grid):
        raise ConfigError(f"--tune-on and --evaluate-on belong to --protocol transfer (got --protocol {protocol})")
    out = {"protocol": protocol, "tune": tune, "last_phase": None, "evaluate": [{}]}
    base = Config.from_flat({**fixed, **tune})
    if protocol == "first-task":
        if not 1 <= first_task_phases < base.protocol.phases:
            raise ConfigError(f"--first-task-phases {first_task_phases} is invalid: allowed 1..{base.protocol.phases - 1} "
                              f"(the stream has {base.protocol.phases} incremental phases; tuning on all is --protocol stream)")
        out["last_phase"] = first_task_phases
    if protocol == "transfer":
        if not grid:
            grid = {"class_order_seed": [s for s in DEFAULT_TRANSFER_ORDERS if s != base.protocol.class_order_seed]}
        out["evaluate"] = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
        tuned = _scenario(fixed, tune)
        for ev in out["evaluate"]:
            if _scenario(fixed, ev) == tuned:
                raise ConfigError(f"--evaluate-on {ev} is the tuning scenario itself: a transfer search evaluates "
                                  "only on scenarios it never tuned on (change --tune-on or --evaluate-on)")
    return out


def first_task_stats(cfg: Config, last_phase: int) -> dict:
    """``mean``/``std`` for a first-task search: from the training images of the classes of phases
    0..``last_phase`` alone when the dataset's own would be computed from every class (digits); {} when
    they are fixed (CIFAR-100's reference values, ImageNet's, or given with ``--set``).  An ImageFolder
    whose statistics would be computed from every class must be given them."""
    p = cfg.protocol
    if p.mean or p.dataset == "cifar100" or (p.dataset == "imagefolder" and p.augment == "imagenet"):
        return {}
    if p.dataset != "digits":
        raise ConfigError("--protocol first-task on this dataset needs --set mean=... --set std=... (its statistics "
                          "would otherwise be computed from every class, including those the tuning may not see)")
    import torch

    from lucir.data import channel_stats, class_order, load_dataset

    ds = load_dataset(p.dataset, p.data_root)
    seen = torch.as_tensor(class_order(p.num_classes, p.class_order_seed)[:p.seen_classes(last_phase)])
    mean, std = channel_stats(ds.train_x[torch.isin(ds.train_y, seen)])
    return {"mean": list(mean), "std": list(std)}
