"""Command line: `python -m pysafemax COMMAND` (also installed as `pysafemax`).

Each command is an argparse subparser whose `run` default takes the parsed
arguments and returns the exit code; add a command by adding a subparser.
"""
import argparse
import os
import sys


def _run_demo(args):
    from .demo import run_demo

    run_demo(sys.stdout)
    return 0


def build_parser():
    from . import FLT_MIN_LOSS, __version__

    parser = argparse.ArgumentParser(
        prog="python -m pysafemax",
        description="Softmax cross-entropy three ways (naive, maxsub, stable), "
                    f"and why a loss reads {FLT_MIN_LOSS:g}.")
    parser.add_argument("--version", action="version",
                        version=f"pysafemax {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="walk through logits {100, 20} for each method, then "
                     "reported against true loss as the logit gap grows",
        description="Walk through the logits {100, 20} step by step for the "
                    "naive, maxsub and stable methods, then print reported "
                    "against true loss as the logit gap grows.")
    demo.set_defaults(run=_run_demo)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except BrokenPipeError:
        # `python -m pysafemax demo | head`: the reader left; exit quietly
        # instead of a traceback when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
