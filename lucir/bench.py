"""Placeholder: replaced by the benchmark module."""


def add_bench_args(p):
    pass


def cmd_bench(args):
    raise SystemExit("lucir bench: not implemented yet")
