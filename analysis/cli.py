"""The ``lucir report`` subcommand (``lucir/cli.py`` calls ``add_report_command``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _kind(folder: str) -> str | None:
    from lucir.record import EXPERIMENT_FILE, read_json_dict

    return (read_json_dict(Path(folder) / EXPERIMENT_FILE) or {}).get("kind")


def add_report_command(subparsers) -> argparse.ArgumentParser:
    """Add ``report <experiment folder> [--out DIR] [--formats csv,md,tex] [--no-mlflow] [--top-k N]``."""
    p = subparsers.add_parser(
        "report", help="tables (CSV/Markdown/LaTeX), plots and an index.md of an experiment folder",
        description="Read an experiment folder written by `lucir ablate` / `lucir search` and write a report: "
                    "mean ± std over seeds per protocol and preset, the ablation table, the best configuration "
                    "and its command line, figures, and the list of unfinished or failed trials.")
    p.add_argument("experiment", nargs="?", default=None,
                   help="experiment folder (the one holding lucir_experiment.json and trials/)")
    p.add_argument("--out", default=None, help="report folder (default <experiment>/report)")
    p.add_argument("--formats", default="csv,md,tex", help="table formats, a comma list of csv, md, tex "
                                                             "(default all)")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                   help="do not log the report to the sweep's MLflow parent run")
    p.add_argument("--top-k", dest="top_k", type=int, default=10, help="configurations in the search table")
    p.add_argument("--reference", default="lucir", metavar="NAME",
                   help="preset the other rungs are compared with, paired per seed (default lucir)")
    p.add_argument("--compare", nargs="+", metavar="EXP", default=None,
                   help="put experiments side by side: two experiments A B (B - A per protocol and preset, paired "
                        "per seed where possible; <out>/compare.md and .csv, default out <B>/compare-<A>); two or "
                        "more searches: their hyperparameter protocols (tuning and evaluation gain over the paper "
                        "defaults; <out>/protocols.md and .csv, default out <last>/protocols)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import run_report

    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    if getattr(args, "compare", None):
        from analysis.paired import run_compare

        if args.experiment is not None or len(args.compare) < 2:
            print("lucir report: error: give either an experiment folder or --compare with two or more folders",
                  file=sys.stderr)
            return 2
        kinds = [_kind(x) for x in args.compare]
        if all(k == "search" for k in kinds):
            from analysis.protocols import write_protocol_table

            for path in write_protocol_table(args.compare, args.out or Path(args.compare[-1]) / "protocols"):
                print(path)
        if len(args.compare) == 2:
            return run_compare(args.compare[0], args.compare[1], args.out, formats)
        if not all(k == "search" for k in kinds):
            print("lucir report: error: --compare with more than two folders takes searches only", file=sys.stderr)
            return 2
        return 0
    if args.experiment is None:
        print("lucir report: error: an experiment folder (or --compare A B) is required", file=sys.stderr)
        return 2
    try:  # MLflow mirrors the records: bring it up to date when no driver is running (the driver syncs itself)
        from tune.sweep import sync_idle

        sync_idle(args.experiment)
    except ImportError:
        pass
    return run_report(args.experiment, args.out, formats, args.mlflow, top_k=args.top_k,
                      reference=getattr(args, "reference", "lucir"))
