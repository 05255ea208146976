"""``lucir ablate``, ``lucir search`` and ``lucir resume`` (added to the ``lucir`` parser by lucir/cli.py).

Each command builds the sweep's slots and checks everything that can fail (every slot's Config, the data,
``--out``, the tracking URI, the Ray cluster and its GPUs) before ``lucir_experiment.json`` is written
(``tune.sweep.check_new`` and ``tune.sweep.start``); then ``tune.sweep.run`` runs it.  Running the same command again on an
unfinished folder continues it, like ``lucir resume``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lucir import record
from lucir.config import LADDER, Config, ConfigError


def _runner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runner")
    g.add_argument("--out", help="experiment folder (default ./experiments/<name>); made absolute")
    g.add_argument("--name", help="experiment name (default <command>-<dataset>-<date>-<time>)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial = torch threads (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; a fraction (e.g. 0.25) packs trials on one GPU and caps each "
                        "trial's GPU memory to its share (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    g.add_argument("--max-failures", type=int, default=3,
                   help="retries of a crashed worker in one driver run, each from the slot's state file (default 3)")
    g.add_argument("--fuse", type=int, default=None,
                   help="train up to N compatible slots (same protocol, seed, schedule, backbone; cosine rungs) as "
                        "one fused model, one Ray trial per array; each member keeps its own record, Optuna trial "
                        "and MLflow run (default 1: no GPU measurement shows a gain yet, docs/PERFORMANCE.md)")
    g.add_argument("--no-base-cache", action="store_true",
                   help="train the base phase in every trial (default: once per base key, shared)")
    g.add_argument("--mlflow-uri", help="MLflow tracking URI (default sqlite:///<experiment folder>/mlflow.db; "
                                        "e.g. http://host:5000)")
    g.add_argument("--mlflow-experiment", help="MLflow experiment name (default: the sweep's name)")
    g.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    g.add_argument("--address", help="Ray cluster address ('auto' joins a running cluster; default: "
                                     "$RAY_ADDRESS if set, else a local Ray started for this command)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")


def add_tune_commands(sub, add_config_args, config_overrides) -> None:
    p = sub.add_parser("ablate", help="Ray Tune grid: ablation presets x protocols x seeds",
                       description="Ray Tune grid over ablation presets x protocols x seeds; prints a summary "
                                   "table (mean ± std over seeds) at the end.")
    add_config_args(p, with_preset=False)
    from tune.spaces import GRIDS

    p.add_argument("--grid", default="digits", help=f"named grid: one of {sorted(GRIDS)} (default digits)")
    p.add_argument("--presets", help=f"comma-separated presets to grid over (of {', '.join(LADDER)})")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 1)")
    p.add_argument("--grid-set", dest="grid_sets", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid any config field, e.g. --grid-set phases=1,3 --grid-set memory_total=0,40")
    _runner_args(p)
    p.set_defaults(func=lambda a: cmd_ablate(a, config_overrides))

    p = sub.add_parser("search", help="Ray Tune + Optuna (TPE) over eta_init, margin, K, lambda_base",
                       description="Optuna TPE search (journal storage in the experiment folder) over eta_init, "
                                   "margin, K and lambda_base, the paper's defaults first; the best config is "
                                   "chosen among trials that finished every phase.")
    add_config_args(p, with_preset=True)
    p.add_argument("--trials", type=int, default=12, help="number of trials (default 12)")
    p.add_argument("--concurrency", type=int, default=None, help="trials at once (default: what resources allow)")
    p.add_argument("--asha", action="store_true",
                   help="asynchronous successive halving on phase (the rule of Optuna's SuccessiveHalvingPruner, "
                        "on the study's intermediate values); pruned slots never win")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--sampler", default="tpe", help="Optuna sampler: tpe, gp or random (default tpe; "
                                                  "start-up random draws: max(4, trials // 4))")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each class's training images held out (seeded, stratified) and never trained "
                        "on; the objective is val_avg_inc_acc_cnn on it (default 0.1; 0 selects on the test set)")
    p.add_argument("--confirm-top", type=int, default=3,
                   help="after the search, re-run the top-k configs and the paper defaults on the full training "
                        "set with --confirm-seeds seeds and report test accuracy (default 3; 0: no confirm stage)")
    p.add_argument("--confirm-seeds", type=int, default=3, help="seeds of the confirm stage (default 3)")
    p.add_argument("--protocol", default="stream", help="where to tune and where to evaluate (docs/RUNNER.md): "
                   "stream (every phase of one class order; default), first-task (the base classes and the "
                   "first phase(s) only), transfer (tune on one scenario, evaluate on others)")
    p.add_argument("--first-task-phases", type=int, default=1,
                   help="first-task: incremental phases the search may see (default 1)")
    p.add_argument("--tune-on", action="append", default=[], metavar="KEY=VALUE",
                   help="transfer: the tuning scenario, e.g. --tune-on class_order_seed=1993 (default: the command's)")
    p.add_argument("--evaluate-on", action="append", default=[], metavar="KEY=V1,V2",
                   help="transfer: the evaluation scenarios, e.g. --evaluate-on class_order_seed=1,2 (default "
                        "class orders 1 and 2)")
    _runner_args(p)
    p.set_defaults(func=lambda a: cmd_search(a, config_overrides))

    p = sub.add_parser("resume", help="finish an interrupted ablate/search; finished slots are not run again")
    p.add_argument("experiment", help="the experiment folder")
    p.add_argument("--address", help="Ray cluster address (default: as recorded in the experiment)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: as recorded)")
    p.add_argument("--mlflow-uri", help="log to this MLflow store from now on (default: as recorded)")
    p.set_defaults(func=cmd_resume)


# ---------------------------------------------------------------------------------------- helpers
def _check_datasets(cfgs: list[Config], address: str | None = None) -> None:
    """Every dataset of the sweep is readable on the driver.  A local run may download CIFAR-100 here,
    once (unless ``download=false``); with a cluster address nothing is downloaded (the driver's disk is
    not the nodes'), and trials never download (``tune.worker.runtime_overrides``)."""
    from lucir.data import DatasetMissingError, check_dataset
    from tune.cluster import cluster_address

    remote = cluster_address(address)
    for dataset, root, download in dict.fromkeys((c.protocol.dataset, c.protocol.data_root, c.runtime.download)
                                                 for c in cfgs):
        try:
            check_dataset(dataset, root, download=remote is None and download)
        except DatasetMissingError as exc:
            if remote is None:
                raise
            raise DatasetMissingError(f"{exc} With a cluster address ({remote}) nothing is downloaded: put the "
                                      f"dataset at {Path(root).absolute()} on storage every node sees") from None


def _runner(args, **overrides):
    from tune.sweep import RunnerOptions

    opts = dict(cpus_per_trial=float(args.cpus_per_trial), gpus_per_trial=float(args.gpus_per_trial),
                base_cache=not args.no_base_cache, max_failures=int(args.max_failures),
                max_concurrent=args.max_concurrent, address=args.address, num_cpus=args.num_cpus,
                fuse=1 if args.fuse is None else args.fuse)
    return RunnerOptions(**{**opts, **overrides})


def _folder(args, kind: str, dataset: str) -> Path:
    from tune.cluster import cluster_address
    from tune.sweep import default_name

    address = cluster_address(args.address)
    if address is not None and not (args.out and Path(args.out).expanduser().is_absolute()):
        raise ConfigError(
            (f"--out {args.out!r} is a relative path" if args.out else
             "--out is missing (the default experiments/<name> is relative to the driver's working directory)")
            + f": with a cluster address ({address}) give --out an absolute path on storage shared by every "
              "node, mounted at the same path everywhere (e.g. --out /mnt/lucir/experiments/<name>)")
    name = args.name or (Path(args.out).name if args.out else default_name(kind, dataset))
    return Path(args.out if args.out else Path("experiments") / name).expanduser().absolute()


def _mlflow(args, exp: Path) -> tuple[str | None, str | None]:
    uri = None if args.no_mlflow else (args.mlflow_uri or f"sqlite:///{exp / 'mlflow.db'}")
    return uri, (args.mlflow_experiment or exp.name) if uri else None


def _go(exp: Path, doc: dict, runner, cfgs: list[Config]) -> int:
    from tune.sweep import check_new, print_summary, ray_session, run, start

    old = check_new(exp, doc, runner, cfgs)
    try:
        with ray_session(runner):
            if old is None:
                start(exp, doc, runner)
            code = run(exp, runner, checked=old is None)
    except BaseException:
        if old is None and exp.is_dir() and not any(exp.iterdir()):
            exp.rmdir()  # nothing of this sweep was written: the same command works again
        raise
    print_summary(exp)
    print(f"\nexperiment folder: {exp}")
    return code


# ---------------------------------------------------------------------------------------- commands
def cmd_ablate(args, config_overrides) -> int:
    from tune.spaces import (absolute_data_root, ablation_space, grid_points, is_grid, parse_grid_set,
                             parse_presets, validate_points)
    from tune.sweep import make_doc

    fixed = config_overrides(args)
    presets = parse_presets(args.presets) if args.presets else None
    space = ablation_space(args.grid, fixed=fixed, gridded=parse_grid_set(args.grid_sets), presets=presets,
                           seeds=args.seeds)
    datasets = space["dataset"]["grid_search"] if is_grid(space.get("dataset")) else [space.get("dataset", "digits")]
    if "data_root" in space or any(d != "digits" for d in datasets):
        space = absolute_data_root(space)
    points = grid_points(space)
    cfgs = validate_points(points, [k for k, v in space.items() if is_grid(v)])
    runner = _runner(args)
    _check_datasets(cfgs, args.address)
    exp = _folder(args, "ablate", str(datasets[0]))
    uri, mlexp = _mlflow(args, exp)
    doc = make_doc("ablate", exp.name, points, runner, metric=record.OBJECTIVE, argv=["lucir", *sys.argv[1:]],
                   mlflow_uri=uri, mlflow_experiment=mlexp, grid=args.grid, param_space=space)
    fused = f", fused into {len(doc['arrays'])} arrays of up to {runner.fuse}" if doc["arrays"] else ""
    print(f"lucir ablate: {len(points)} trials{fused} (grid {args.grid}: "
          + ", ".join(f"{k}={v['grid_search']}" for k, v in space.items() if is_grid(v)) + f") -> {exp}", flush=True)
    return _go(exp, doc, runner, cfgs)


def cmd_search(args, config_overrides) -> int:
    from tune.spaces import ETA_CHOICES, absolute_data_root, paper_defaults, search_corners, search_domains, \
        validate_points
    from tune.study import check_sampler
    from tune.sweep import make_doc

    fixed = config_overrides(args)
    for flag, v, ok in (("trials", args.trials, args.trials >= 1), ("confirm-top", args.confirm_top, args.confirm_top >= 0),
                        ("confirm-seeds", args.confirm_seeds, args.confirm_seeds >= 1),
                        ("concurrency", args.concurrency, args.concurrency is None or args.concurrency >= 1)):
        if not ok:
            raise ConfigError(f"--{flag}={v} is invalid: allowed an integer >= {0 if flag == 'confirm-top' else 1}")
    check_sampler(args.sampler)
    fixed.setdefault("val_fraction", args.val_fraction)
    metric = record.objective(float(fixed["val_fraction"]))
    if metric != record.VAL_OBJECTIVE:
        print("warning: --val-fraction 0: the search selects on the test set", file=sys.stderr)
    base = Config.from_flat(fixed)
    if base.protocol.dataset != "digits" or "data_root" in fixed:
        fixed = absolute_data_root(fixed)
    fixed.setdefault("preset", base.method.preset)
    fixed.setdefault("dataset", base.protocol.dataset)
    from tune.protocols import first_task_stats, plan

    pl = plan(args.protocol, fixed, args.tune_on, args.evaluate_on, args.first_task_phases)
    if pl["last_phase"] is not None:
        fixed.update(first_task_stats(base, pl["last_phase"]))
    tuning = {**fixed, **pl["tune"]}
    base = Config.from_flat(tuning)
    validate_points([{**fixed, **ev, "val_fraction": 0.0} for ev in pl["evaluate"]])
    points = [paper_defaults(base, fixed)]
    validate_points(search_corners(tuning, base))
    runner = _runner(args, max_concurrent=args.concurrency)
    if runner.fuse > 1:
        from lucir.fused import unfusable_reason

        if unfusable_reason(base) is not None:
            raise ConfigError(f"--fuse={runner.fuse}: {unfusable_reason(base)}")
    _check_datasets([base, *(Config.from_flat({**fixed, **ev}) for ev in pl["evaluate"])], args.address)
    exp = _folder(args, "search", base.protocol.dataset)
    uri, mlexp = _mlflow(args, exp)
    searched = search_domains(base, fixed)
    etas = ETA_CHOICES if "eta_init" not in fixed and args.trials > len(ETA_CHOICES) else \
        [fixed.get("eta_init", points[0].get("eta_init", base.method.eta_init))]
    pre = [Config.from_flat({**tuning, **points[0], "eta_init": e}).to_flat() for e in etas]
    search = {"study": exp.name, "sampler": args.sampler, "seed": args.search_seed, "prune": bool(args.asha),
              "searched": searched, "defaults": points[0], "fixed": fixed, "pretrain": pre, "protocol": pl,
              "confirm": {"top": args.confirm_top, "seeds": args.confirm_seeds}}
    doc = make_doc("search", exp.name, [dict(tuning)] * args.trials, runner, metric=metric,
                   argv=["lucir", *sys.argv[1:]], mlflow_uri=uri, mlflow_experiment=mlexp, search=search,
                   searched=searched, param_space={**fixed, **searched}, optuna_study=exp.name, num_trials=args.trials)
    if pl["last_phase"] is not None:
        for slot in doc["slots"]:
            slot["last_phase"] = pl["last_phase"]
    print(f"lucir search ({args.protocol}): {args.trials} trials, {args.sampler} seed {args.search_seed}, objective {metric}, "
          f"{'successive halving on phase, ' if args.asha else ''}searching {', '.join(searched)} -> {exp}", flush=True)
    return _go(exp, doc, runner, [base])


def cmd_resume(args) -> int:
    from tune.sweep import DriverLock, RunnerOptions, print_summary, ray_session, read_experiment, run

    exp = Path(args.experiment).expanduser().absolute()
    doc = read_experiment(exp)
    DriverLock(exp).check()
    runner = RunnerOptions.from_dict(doc["runner"]).replace(address=args.address, num_cpus=args.num_cpus)
    print(f"lucir resume: {doc['kind']} {exp}", flush=True)
    with ray_session(runner):
        code = run(exp, runner, mlflow_uri=args.mlflow_uri)
    print_summary(exp)
    return code
