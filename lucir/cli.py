"""The ``lucir`` command line: ``train``, ``bench`` and ``prepare-subset`` here; ``ablate``, ``search``, ``resume`` come
from ``tune.cli`` and ``report`` from ``analysis.report`` (imported only when used, so the trainer
never imports Ray or MLflow).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from lucir.commands import command_line  # noqa: F401  (re-exported: ``lucir.cli.command_line``)
from lucir.config import DATASETS, FIELD_SECTION, LADDER, Config, ConfigError
from lucir.metrics import METRIC_NAMES


def add_config_args(p: argparse.ArgumentParser, *, with_preset: bool = True) -> None:
    """Flags for the common fields; ``--set key=value`` reaches any other config field."""
    g = p.add_argument_group("configuration (defaults depend on --dataset)")
    g.add_argument("--dataset", choices=list(DATASETS))
    g.add_argument("--data-root", dest="data_root")
    if with_preset:
        g.add_argument("--preset", help=f"one of {', '.join(LADDER)} (default lucir)")
    g.add_argument("--base", dest="base_classes", type=int, help="base classes")
    g.add_argument("--phases", type=int, help="incremental phases after the base phase")
    g.add_argument("--exemplars", dest="exemplars_per_class", type=int, help="exemplars per class")
    g.add_argument("--memory-total", dest="memory_total", type=int, help="fixed total memory (0 = per class)")
    g.add_argument("--seed", type=int)
    g.add_argument("--epochs", type=int, help="epochs per phase; milestones scale in proportion")
    g.add_argument("--lr", type=float)
    g.add_argument("--batch-size", dest="batch_size", type=int)
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    g.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast")
    g.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default on: 1.1-1.25x on CPU training steps)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic GPU kernels (cuDNN, cuBLAS workspace; slower on GPUs, no effect on CPUs)")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set margin=0.3 --set K=1 (repeatable)")


def config_overrides(args: argparse.Namespace) -> dict:
    flat = {}
    for k in FIELD_SECTION:
        v = getattr(args, k, None)
        if v is not None:
            flat[k] = v
    for item in args.sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is invalid: allowed KEY=VALUE with KEY one of {sorted(FIELD_SECTION)}")
        k, v = item.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in FIELD_SECTION:
            raise ConfigError(f"--set {k}: unknown config field; allowed {sorted(FIELD_SECTION)}")
        flat[k] = json.loads(v) if v[:1] in "[{" else v
    return flat


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.2f}"
    return str(v)


def format_table(rows: list[dict], cols=METRIC_NAMES) -> str:
    from tabulate import tabulate

    return tabulate([[_fmt(r[c]) for c in cols] for r in rows], headers=list(cols), tablefmt="github")


def write_results(out: Path, cfg: Config, results: list[dict], acc_cnn, acc_nme, wall: float) -> None:
    from lucir.checkpoint import atomic_write_json, atomic_write_text

    atomic_write_json(out / "results.json", {"config": cfg.to_flat(), "phases": results,
                                             "acc_matrix_cnn": acc_cnn, "acc_matrix_nme": acc_nme,
                                             "wall_seconds": wall})
    buf = io.StringIO()
    # every key of every row, in order of appearance: a run resumed from a state of an older version has rows
    # without the newer metrics (empty cells there)
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in results for k in r)), restval="")
    w.writeheader()
    w.writerows(results)
    atomic_write_text(out / "results.csv", buf.getvalue())
    buf = io.StringIO()
    cw = csv.writer(buf)
    cw.writerow(["phase"] + [f"group_{g}" for g in range(len(acc_cnn))])
    for t, row in enumerate(acc_cnn):
        cw.writerow([t] + [f"{a:.4f}" for a in row])
    atomic_write_text(out / "acc_matrix_cnn.csv", buf.getvalue())


def _resume_flat(out: Path, flat: dict) -> dict:
    """The run's own config (``<out>/config.json``) with the flags given now on top; another dataset is refused
    here, naming ``dataset`` (its defaults would otherwise fail on some other field first)."""
    path = out / "config.json"
    if not path.is_file():
        return flat
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} is unreadable ({type(exc).__name__}); remove it or use another --out") \
            from None
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume: {path} is not a lucir config; remove it or use another --out")
    if "dataset" in flat and "dataset" in saved and flat["dataset"] != saved["dataset"]:
        raise ConfigError(f"dataset={flat['dataset']!r} is invalid with --resume: {out} holds a run of "
                          f"dataset={saved['dataset']!r} (allowed {saved['dataset']!r}, or another --out)")
    return {**saved, **flat}


def cmd_train(args: argparse.Namespace) -> int:
    import lucir
    from lucir.checkpoint import atomic_write_json, load_state, save_state
    from lucir.data import check_dataset, count_imagefolder_classes
    from lucir.run import resolve_device, set_deterministic

    out = Path(args.out).absolute()
    flat = config_overrides(args)
    state = None
    ckpt = out / "state.pt"
    if args.resume:
        flat = _resume_flat(out, flat)  # the run's own config; flags given now override it
        state = load_state(ckpt)
    cfg = Config.from_flat(flat, num_classes_of=count_imagefolder_classes)  # imagefolder: count its class folders
    if cfg.runtime.deterministic:
        set_deterministic(True)  # CUBLAS_WORKSPACE_CONFIG before anything touches CUDA
    resolve_device(cfg.runtime.device)  # a device this machine lacks: ConfigError before anything is written
    if state is not None:
        lucir.run_module.check_state(cfg, state)
        partial = state.get("partial")
        where = (f"in phase {partial['phase']} after epoch {partial['epoch']}" if partial
                 else f"after phase {state['phase']}")
        print(f"resuming {out} {where}")
    check_dataset(cfg.protocol.dataset, cfg.protocol.data_root, download=cfg.runtime.download)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_flat())
    print(f"lucir train: dataset={cfg.protocol.dataset} preset={cfg.method.preset} base={cfg.protocol.base_classes} "
          f"phases={cfg.protocol.phases} epochs={cfg.schedule.epochs} milestones={list(cfg.schedule.milestones)} "
          f"seed={cfg.protocol.seed} -> {out}", flush=True)
    t0 = time.perf_counter()
    results = list(state["results"]) if state else []
    for res, st in lucir.run(cfg, state, progress=not args.quiet, on_checkpoint=lambda st: save_state(st, ckpt)):
        save_state(st, ckpt)
        results.append(res.metrics())
        write_results(out, cfg, results, res.acc_matrix_cnn, res.acc_matrix_nme, time.perf_counter() - t0)
        print(format_table([results[-1]]) if res.phase == 0 or args.quiet
              else format_table([results[-1]]).splitlines()[-1], flush=True)
    print()
    print(format_table(results))
    last = results[-1]
    print(f"\naverage incremental accuracy: CNN {last['avg_inc_acc_cnn']:.2f}  NME {last['avg_inc_acc_nme']:.2f}  "
          f"({time.perf_counter() - t0:.0f} s); results in {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lucir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="one run, no Ray: a table per phase, results as JSON and CSV")
    add_config_args(p)
    p.add_argument("--out", default="runs/train", help="output folder (results.json, results.csv, state.pt)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/state.pt (after the last finished phase, or inside a phase from its "
                        "last epoch checkpoint: --set checkpoint_every=K, default 10)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="images/s of training steps, herding and evaluation; peak RSS")
    from lucir.bench import add_bench_args, cmd_bench

    add_bench_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("prepare-subset", help="ImageNet-Subset as the reference builds it (seed-1993 choice of "
                                              "100 classes), as hard links")
    from lucir.prepare import add_prepare_args, cmd_prepare_subset

    add_prepare_args(p)
    p.set_defaults(func=cmd_prepare_subset)

    try:
        from tune.cli import add_tune_commands
    except ImportError:  # tune/ ships in the same wheel; only a broken install gets here
        add_tune_commands = None
    if add_tune_commands is not None:
        add_tune_commands(sub, add_config_args, config_overrides)
    try:
        from analysis.cli import add_report_command
    except ImportError:
        add_report_command = None
    if add_report_command is not None:
        add_report_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from lucir.checkpoint import CheckpointError
    from lucir.data import DatasetError, DatasetMissingError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError, DatasetMissingError, DatasetError) as exc:
        print(f"lucir {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
