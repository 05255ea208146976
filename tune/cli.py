"""``lucir ablate``, ``lucir search`` and ``lucir resume`` (added to the ``lucir`` parser by lucir/cli.py).

Every check that can fail does so before Ray starts (DESIGN §7): the grid (every point's Config is
built), the dataset, the MLflow tracking URI, the experiment folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lucir.config import LADDER, Config, ConfigError


def _runner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runner")
    g.add_argument("--out", help="experiment folder (default ./experiments/<name>); made absolute; "
                                 "it is Ray Tune's storage_path/name")
    g.add_argument("--name", help="experiment name (default <command>-<dataset>-<date>-<time>)")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial = torch threads (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; a fraction (e.g. 0.25) packs trials on one GPU and caps each "
                        "trial's GPU memory to its share (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    g.add_argument("--max-failures", type=int, default=3,
                   help="retries of a crashed trial, each from its last phase checkpoint (default 3)")
    g.add_argument("--no-base-cache", action="store_true",
                   help="train the base phase in every trial (default: once per base key, shared)")
    g.add_argument("--cache-stale-after", type=float, default=60.0,
                   help="seconds without heartbeat after which a base-cache claim is taken over (default 60)")
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
    p.add_argument("--fuse", type=int, default=None,
                   help="train up to N compatible trials (same protocol, seed, schedule, backbone; cosine rungs) "
                        "as one fused model, one Ray trial per array; each member keeps its own record and "
                        "MLflow run (default 1 on the CPU, 8 with --gpus-per-trial; docs/PERFORMANCE.md)")
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
                   help="ASHA early stopping on phase; stopped trials are told to Optuna as pruned")
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
    p.add_argument("--fuse", type=int, default=None,
                   help="ask Optuna for N trials at once and train them as one fused model, one Ray trial per "
                        "array; each member is its own Optuna trial, record and MLflow run (default 1 on the "
                        "CPU, 8 with --gpus-per-trial; with --asha each member is judged and stopped alone)")
    _runner_args(p)
    p.set_defaults(func=lambda a: cmd_search(a, config_overrides))

    p = sub.add_parser("resume", help="finish an interrupted ablate/search; finished trials are not re-run")
    p.add_argument("experiment", help="the experiment folder")
    p.add_argument("--address", help="Ray cluster address (default: as recorded in the experiment)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: as recorded)")
    p.set_defaults(func=cmd_resume)


# ---------------------------------------------------------------------------------------- helpers
def _check_datasets(cfgs: list[Config], address: str | None = None) -> None:
    """Every dataset of the sweep is readable on the driver.  A local run may download CIFAR-100 here,
    once (unless ``download=false``); with a cluster address nothing is downloaded (the driver's disk is
    not the nodes'), and trials never download (tune/trainable.py ``runtime_overrides``)."""
    from lucir.data import DatasetMissingError, check_dataset
    from tune.cluster import cluster_address

    remote = cluster_address(address)
    seen = set()
    for c in cfgs:
        k = (c.protocol.dataset, c.protocol.data_root)
        if k not in seen:
            seen.add(k)
            try:
                check_dataset(*k, download=remote is None and c.runtime.download)
            except DatasetMissingError as exc:
                if remote is None:
                    raise
                raise DatasetMissingError(f"{exc} With a cluster address ({remote}) nothing is downloaded, "
                                          "neither by the driver nor by the trials: put the dataset at "
                                          f"{Path(k[1]).absolute()} on storage every node sees") from None


def _sweep_data(space: dict) -> list[tuple[str, str]]:
    """The distinct (dataset, absolute data_root) pairs of a param space that need files (not digits)."""
    from tune.spaces import is_grid

    def values(v, default):
        return list(v["grid_search"]) if is_grid(v) else [default if v is None else v]

    datasets = [d for d in dict.fromkeys(values(space.get("dataset"), "digits")) if d != "digits"]
    roots = list(dict.fromkeys(str(Path(r).absolute()) for r in values(space.get("data_root"), "data")))
    return [(d, r) for d in datasets for r in roots]


def _verify_cluster_storage(exp: Path, space: dict, address: str | None, fresh: bool = True) -> None:
    """With a cluster address, after Ray is up: every node sees the experiment folder (the same folder,
    not just the same path) and every data_root of the sweep; else refuse before ``Tuner.fit``."""
    from tune.cluster import cluster_address, verify_dataset_on_nodes, verify_shared_storage
    from tune.experiment import EXPERIMENT_FILE

    if cluster_address(address) is None:
        return
    what = "--out"
    try:
        verify_shared_storage(str(exp))
        for dataset, root in _sweep_data(space):
            what = f"--data-root ({dataset})"
            verify_dataset_on_nodes(dataset, root)
    except ValueError as exc:
        if fresh:  # nothing ran: free --out for the next try (else it "already holds an experiment")
            (exp / EXPERIMENT_FILE).unlink(missing_ok=True)
        raise ConfigError(f"{what} is refused: {exc}") from None


def _prepare_folder(args, kind: str, dataset: str) -> Path:
    from tune.cluster import cluster_address
    from tune.experiment import EXPERIMENT_FILE, default_name, experiment_dir

    address = cluster_address(args.address)
    if address is not None and not (args.out and Path(args.out).expanduser().is_absolute()):
        raise ConfigError(
            (f"--out {args.out!r} is a relative path" if args.out else
             "--out is missing (the default experiments/<name> is relative to the driver's working directory)")
            + f": with a cluster address ({address}) give --out an absolute path on storage shared by every "
              "node, mounted at the same path everywhere (e.g. --out /mnt/lucir/experiments/<name>)")
    name = args.name or (Path(args.out).name if args.out else default_name(kind, dataset))
    exp = experiment_dir(args.out, name)
    if (exp / EXPERIMENT_FILE).exists():
        raise ConfigError(f"--out {exp} already holds an experiment: finish it with `lucir resume {exp}` "
                          "or choose another --out")
    from tune.experiment import runner_options

    runner_options(args)  # validated here, before anything is written (RunnerOptions names the flag)
    return exp


def _callbacks(args, exp: Path, tags: dict) -> tuple[list, str | None, str | None]:
    from tune.experiment import make_callbacks

    uri = None if args.no_mlflow else (args.mlflow_uri or f"sqlite:///{exp / 'mlflow.db'}")
    name = args.mlflow_experiment or exp.name
    created = not exp.exists()
    exp.mkdir(parents=True, exist_ok=True)
    try:
        cbs = make_callbacks(exp, uri, name, tags)
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(exp, ignore_errors=True)
        raise
    return cbs, uri, (name if uri else None)


def _space_text(space: dict) -> dict:
    return {k: v for k, v in space.items()}


def _finish(kind: str, exp: Path) -> int:
    from tune.experiment import print_ablation_summary, print_search_summary, read_trials

    if kind == "ablate":
        print_ablation_summary(exp)
    else:
        print_search_summary(exp)
    docs = read_trials(exp)
    errors = [d["trial_id"] for d in docs if d.get("status") == "ERROR"]
    running = [d["trial_id"] for d in docs if d.get("status") == "RUNNING"]
    print(f"\nexperiment folder: {exp}")
    if errors:
        print(f"{len(errors)} trial(s) failed: {errors} (see trials/<id>.json 'error')", file=sys.stderr)
    if running:
        print(f"{len(running)} trial(s) unfinished: finish them with `lucir resume {exp}`", file=sys.stderr)
    return 1 if errors or running else 0


def _tuner_fit(exp: Path, runner: dict, space: dict, callbacks: list, tune_config,
               pretrain: list[Config] | None = None, min_share: int = 2, tune_space: dict | None = None) -> None:
    """Start Ray, check the storage, pre-train the shared base phases of ``pretrain`` (tune/pretrain.py),
    then run the sweep (over ``tune_space`` when given: the fused arrays of ``space``'s points)."""
    import ray
    from ray import tune

    from tune.experiment import build_trainable, init_ray, run_config
    from tune.pretrain import pretrain_base_phases

    started = init_ray(runner.address, runner.num_cpus)
    try:
        _verify_cluster_storage(exp, space, runner.address)
        if pretrain:
            pretrain_base_phases(exp, pretrain, runner, min_share=min_share)
        tuner = tune.Tuner(build_trainable(exp, runner), param_space=tune_space or space, tune_config=tune_config,
                           run_config=run_config(exp, runner, callbacks))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------- commands
def cmd_ablate(args, config_overrides) -> int:
    from ray import tune

    from tune.experiment import runner_options, write_experiment_json
    from tune.spaces import (absolute_data_root, ablation_space, fuse_points, grid_points, is_grid,
                             parse_grid_set, parse_presets, validate_points)

    fixed = config_overrides(args)
    gridded = parse_grid_set(args.grid_sets)
    presets = parse_presets(args.presets) if args.presets else None
    space = ablation_space(args.grid, fixed=fixed, gridded=gridded, presets=presets, seeds=args.seeds)
    datasets = space["dataset"]["grid_search"] if is_grid(space.get("dataset")) else [space.get("dataset", "digits")]
    if "data_root" in space or any(d != "digits" for d in datasets):
        space = absolute_data_root(space)
    points = grid_points(space)
    cfgs = validate_points(points, [k for k, v in space.items() if is_grid(v)])
    _check_datasets(cfgs, args.address)
    runner = runner_options(args)
    fuse = runner.fuse
    arrays = fuse_points(points, cfgs, fuse)
    exp = _prepare_folder(args, "ablate", str(datasets[0]))
    fused = f", fused into {len(arrays)} arrays of up to {fuse}" if len(arrays) < len(points) else ""
    print(f"lucir ablate: {len(points)} trials{fused} (grid {args.grid}: "
          + ", ".join(f"{k}={v['grid_search']}" for k, v in space.items() if is_grid(v)) + f") -> {exp}",
          flush=True)
    callbacks, uri, mlexp = _callbacks(args, exp, {"kind": "ablate", "grid": args.grid})
    write_experiment_json(exp, kind="ablate", argv=["lucir", *sys.argv[1:]], param_space_text=_space_text(space),
                          runner=runner, mlflow_uri=uri, mlflow_experiment=mlexp,
                          extra={"grid": args.grid, "num_trials": len(points), "fuse": fuse,
                                 "arrays": [len(a) for a in arrays]})
    tune_space = None
    if len(arrays) < len(points):
        from lucir.record import ARRAY_KEY

        tune_space = {ARRAY_KEY: tune.grid_search(arrays)}
    _tuner_fit(exp, runner, space, callbacks,
               tune.TuneConfig(num_samples=1, max_concurrent_trials=args.max_concurrent, reuse_actors=True),
               pretrain=cfgs, tune_space=tune_space)
    return _finish("ablate", exp)


def cmd_search(args, config_overrides) -> int:
    from ray import tune

    from tune.experiment import MODE, SAMPLERS, make_searcher, objective, runner_options, write_experiment_json
    from tune.spaces import absolute_data_root, search_corners, search_domains, search_space, validate_points

    fixed = config_overrides(args)
    if args.trials < 1:
        raise ConfigError(f"--trials={args.trials} is invalid: allowed an integer >= 1")
    if args.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler={args.sampler!r} is invalid: allowed one of {list(SAMPLERS)}")
    if args.confirm_top < 0:
        raise ConfigError(f"--confirm-top={args.confirm_top} is invalid: allowed an integer >= 0")
    if args.confirm_seeds < 1:
        raise ConfigError(f"--confirm-seeds={args.confirm_seeds} is invalid: allowed an integer >= 1")
    fixed.setdefault("val_fraction", args.val_fraction)
    metric = objective(float(fixed["val_fraction"]))
    if metric != "val_avg_inc_acc_cnn":
        print("warning: --val-fraction 0: the search selects on the test set", file=sys.stderr)
    if args.concurrency is not None and args.concurrency < 1:
        raise ConfigError(f"--concurrency={args.concurrency} is invalid: allowed an integer >= 1")
    base = Config.from_flat(fixed)
    if base.protocol.dataset != "digits" or "data_root" in fixed:
        fixed = absolute_data_root(fixed)
    if "preset" not in fixed:
        fixed["preset"] = base.method.preset
    fixed.setdefault("dataset", base.protocol.dataset)
    space, text, points = search_space(base, fixed)
    searched = search_domains(base, fixed)
    validate_points(search_corners(fixed, base))
    _check_datasets([base], args.address)
    exp = _prepare_folder(args, "search", base.protocol.dataset)
    runner = runner_options(args).replace(max_concurrent=args.concurrency)
    if runner.fuse > 1:
        from lucir.fused import unfusable_reason

        if unfusable_reason(base) is not None:
            raise ConfigError(f"--fuse={runner.fuse}: {unfusable_reason(base)}")
    print(f"lucir search: {args.trials} trials, {args.sampler} seed {args.search_seed}, objective {metric}, "
          f"{'ASHA on phase, ' if args.asha else ''}space {text} -> {exp}", flush=True)
    callbacks, uri, mlexp = _callbacks(args, exp, {"kind": "search"})
    write_experiment_json(exp, kind="search", argv=["lucir", *sys.argv[1:]], param_space_text=text,
                          runner=runner, mlflow_uri=uri, mlflow_experiment=mlexp,
                          extra={"num_trials": args.trials, "points_to_evaluate": points, "asha": args.asha,
                                 "search_seed": args.search_seed, "optuna_study": exp.name, "metric": metric,
                                 "sampler": args.sampler, "fixed": fixed, "searched": searched,
                                 "confirm": {"top": args.confirm_top, "seeds": args.confirm_seeds}})
    domains = {k: v for k, v in space.items() if hasattr(v, "sample")}
    searcher = make_searcher(exp, exp.name, args.search_seed, points, metric=metric, sampler=args.sampler,
                             trials=args.trials, fuse=runner.fuse, domains=domains)
    tune_space = None
    if runner.fuse > 1:  # the searcher owns the domains; every member gets the fixed fields
        tune_space = {k: v for k, v in space.items() if k not in domains}
    scheduler = None
    if args.asha:
        from tune.asha import RecordedASHA

        scheduler = RecordedASHA(str(exp), time_attr="phase", metric=metric, mode=MODE, max_t=base.protocol.phases,
                                 grace_period=1, reduction_factor=2)
    tc = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-(-args.trials // runner.fuse),
                         max_concurrent_trials=args.concurrency, reuse_actors=True)
    # the base phases the search can use: one per eta_init choice once the budget must reuse one (more
    # trials than choices), else the paper defaults' one (the first trial's)
    from tune.spaces import ETA_CHOICES

    etas = ETA_CHOICES if "eta_init" not in fixed and args.trials > len(ETA_CHOICES) else \
        [fixed.get("eta_init", points[0].get("eta_init", base.method.eta_init))]
    pre = [Config.from_flat({**fixed, **points[0], "eta_init": e}) for e in etas]
    _tuner_fit(exp, runner, space, callbacks, tc, pretrain=pre, min_share=1, tune_space=tune_space)
    _confirm(exp)
    return _finish("search", exp)


def _confirm(exp: Path) -> None:
    """The confirm stage of a search (its own Tune experiment in ``<exp>/confirm``): the top-k configs and
    the paper defaults on the full training set, each over the confirm seeds.  The candidates are fixed
    when the stage first starts (written to its lucir_experiment.json); ``lucir resume`` restores it."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from tune.experiment import (CONFIRM_DIR, EXPERIMENT_FILE, RunnerOptions, build_trainable, confirm_candidates,
                                 confirm_points, init_ray, make_callbacks, read_experiment, run_config,
                                 write_experiment_json)

    doc = read_experiment(exp)
    opts = doc.get("confirm") or {}
    if not opts.get("top") and opts.get("top") is not None:
        return
    folder = exp / CONFIRM_DIR
    runner = RunnerOptions.from_dict(doc["runner"])
    if not (folder / EXPERIMENT_FILE).is_file():
        defaults = dict(doc["points_to_evaluate"][0])
        candidates = confirm_candidates(exp, defaults, int(opts.get("top", 3)))
        seeds = int(opts.get("seeds", 3))
        points = confirm_points(doc["fixed"], candidates, seeds)
        print(f"lucir search: confirm stage, {len(candidates)} configs x {seeds} seeds on the full training set "
              f"-> {folder}", flush=True)
        write_experiment_json(folder, kind="confirm", argv=doc.get("argv", []), param_space_text={},
                              runner=runner, mlflow_uri=doc.get("mlflow_uri"),
                              mlflow_experiment=doc.get("mlflow_experiment"),
                              extra={"candidates": candidates, "seeds": seeds, "points": points,
                                     "search_metric": doc.get("metric"), "search": str(exp)})
    cdoc = read_experiment(folder)
    callbacks = make_callbacks(folder, cdoc.get("mlflow_uri"), cdoc.get("mlflow_experiment"),
                               {"kind": "confirm", "search": exp.name}, sweep=f"{exp.name}-confirm")
    import ray

    from tune.pretrain import pretrain_base_phases

    started = init_ray(runner.address, runner.num_cpus)
    try:
        pretrain_base_phases(folder, [Config.from_flat(pt) for pt in cdoc["points"]], runner)
        if tune.Tuner.can_restore(str(folder)):
            tuner = tune.Tuner.restore(str(folder), build_trainable(folder, runner), resume_unfinished=True,
                                       resume_errored=True)
        else:
            points = cdoc["points"]
            if runner.fuse > 1:  # the candidates of one seed share everything but the searched fields
                from lucir.record import ARRAY_KEY
                from tune.spaces import fuse_points

                points = [{ARRAY_KEY: a} for a in fuse_points(points, [Config.from_flat(p) for p in points],
                                                              runner.fuse)]
            space = {k: points[0][k] for k in points[0]}
            tuner = tune.Tuner(build_trainable(folder, runner), param_space=space,
                               tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(points_to_evaluate=points),
                                                           num_samples=len(points),
                                                           max_concurrent_trials=runner.max_concurrent,
                                                           reuse_actors=True),
                               run_config=run_config(folder, runner, callbacks))
        tuner.fit()
    finally:
        if started:
            ray.shutdown()



def cmd_resume(args) -> int:
    import ray
    from ray import tune

    from tune.experiment import RunnerOptions, build_trainable, init_ray, read_experiment

    exp = Path(args.experiment).expanduser().absolute()
    doc = read_experiment(exp)
    runner = RunnerOptions.from_dict(doc["runner"])
    if args.address:
        runner = runner.replace(address=args.address)
    if args.num_cpus:
        runner = runner.replace(num_cpus=args.num_cpus)
    if not tune.Tuner.can_restore(str(exp)):
        raise ConfigError(f"{exp}: no Ray Tune experiment state to restore (did the sweep start any trial?)")
    print(f"lucir resume: {doc['kind']} {exp}", flush=True)
    started = init_ray(runner.address, runner.num_cpus)
    try:
        # a resumed sweep on a cluster: the same checks as at its start (the folder is the experiment's own)
        _verify_cluster_storage(exp, doc.get("param_space") or {}, runner.address, fresh=False)
        tuner = tune.Tuner.restore(str(exp), build_trainable(exp, runner), resume_unfinished=True,
                                   resume_errored=True)
        tuner.fit()
        if doc["kind"] == "search":
            _confirm(exp)
    finally:
        if started:
            ray.shutdown()
    return _finish(doc["kind"], exp)
