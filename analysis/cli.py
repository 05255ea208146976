"""The ``lucir report`` subcommand (``lucir/cli.py`` calls ``add_report_command``)."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="put experiments A and B side by side (B - A per protocol and preset, paired per seed "
                        "where possible); writes <out>/compare.md and .csv (default out <B>/compare-<A>)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import run_report

    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    if getattr(args, "compare", None):
        from analysis.paired import run_compare

        if args.experiment is not None:
            print("lucir report: error: give either an experiment folder or --compare A B, not both",
                  file=sys.stderr)
            return 2
        return run_compare(args.compare[0], args.compare[1], args.out, formats)
    if args.experiment is None:
        print("lucir report: error: an experiment folder (or --compare A B) is required", file=sys.stderr)
        return 2
    return run_report(args.experiment, args.out, formats, args.mlflow, top_k=args.top_k,
                      reference=getattr(args, "reference", "lucir"))
