"""The ``lucir report`` subcommand (``lucir/cli.py`` calls ``add_report_command``)."""

from __future__ import annotations

import argparse


def add_report_command(subparsers) -> argparse.ArgumentParser:
    """Add ``report <experiment folder> [--out DIR] [--formats csv,md,tex] [--no-mlflow] [--top-k N]``."""
    p = subparsers.add_parser(
        "report", help="tables (CSV/Markdown/LaTeX), plots and an index.md of an experiment folder",
        description="Read an experiment folder written by `lucir ablate` / `lucir search` and write a report: "
                    "mean ± std over seeds per protocol and preset, the ablation table, the best configuration "
                    "and its command line, figures, and the list of unfinished or failed trials.")
    p.add_argument("experiment", help="experiment folder (the one holding lucir_experiment.json and trials/)")
    p.add_argument("--out", default=None, help="report folder (default <experiment>/report)")
    p.add_argument("--formats", default="csv,md,tex", help="table formats, a comma list of csv, md, tex "
                                                             "(default all)")
    p.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                   help="do not log the report to the sweep's MLflow parent run")
    p.add_argument("--top-k", dest="top_k", type=int, default=10, help="configurations in the search table")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import run_report

    formats = [f.strip().lower() for f in str(args.formats).split(",") if f.strip()]
    return run_report(args.experiment, args.out, formats, args.mlflow, top_k=args.top_k)
