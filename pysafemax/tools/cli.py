"""Command line: `python -m pysafemax COMMAND` (also installed as `pysafemax`).

Each command is an argparse subparser whose `run` default takes the parsed
arguments and returns the exit code; add a command by adding a subparser.
The tools are imported by the command that runs them.  pysafemax/__main__.py
calls main(prog="python -m pysafemax"); the console script is
pysafemax.tools.cli:main, called with no arguments, so its usage line says
`pysafemax`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(sys.stdout)
    if args.plot is None:
        return 0
    from .plot import plot_loss_vs_gap

    return plot_loss_vs_gap(args.plot)


def _run_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import cli_diagnose

    return cli_diagnose(args.logits, args.labels, axis=args.axis,
                        ignore_index=args.ignore_index, as_json=args.json)


def _run_scan_log(args: argparse.Namespace) -> int:
    from .scan_log import cli_scan_log

    return cli_scan_log(args.file)


def _run_explain(args: argparse.Namespace) -> int:
    from .explain import cli_explain

    return cli_explain(args.value)


# How the usage line names the program: the console script's name, unless
# the caller says how it was run (pysafemax/__main__.py says "python -m").
PROG = "pysafemax"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's parser, its usage line naming the program `prog`.

    Parameters
    ----------
    prog : str
        How the program was run, as the usage line shows it:
        ``"pysafemax"`` (the console script) or ``"python -m pysafemax"``.

    Returns
    -------
    argparse.ArgumentParser
        One subparser per command; each sets the default ``run``, which
        takes the parsed arguments and returns the exit code.
    """
    from .. import FLT_MIN_LOSS, __version__

    parser = argparse.ArgumentParser(
        prog=prog,
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
    demo.add_argument("--plot", metavar="FILE.png",
                      help="also draw reported against true loss for the three "
                           "methods (needs matplotlib: pip install \".[plot]\")")
    demo.set_defaults(run=_run_demo)

    diagnose = commands.add_parser(
        "diagnose", help="say why a batch's loss reads 87.3365 or nan, from "
                         "its logits and labels (.npy or .npz)",
        description="Look for the float failure modes of softmax "
                    "cross-entropy in saved logits and labels, say which "
                    "method's loss can be trusted, and rank the usual remedies "
                    "by the evidence.  Exit code: 0 clean, 1 issues found, "
                    "2 unusable input.")
    diagnose.add_argument("logits", help="logits, .npy or .npz (memory-mapped, "
                                         "so files larger than memory work)")
    diagnose.add_argument("labels", help="class-index labels, .npy or .npz")
    diagnose.add_argument("--axis", type=int, default=1, help="the class axis (default 1)")
    diagnose.add_argument("--ignore-index", type=int, default=None,
                          help="a label value that marks positions to ignore")
    diagnose.add_argument("--json", action="store_true",
                          help="print the report as JSON")
    diagnose.set_defaults(run=_run_diagnose)

    scan = commands.add_parser(
        "scan-log", help="find where a training log's loss sticks at 87.3365 "
                         "or nan, and what that means",
        description="Read a Caffe (glog) training log, or plain 'loss = X' / "
                    "'loss: X' lines, and report where the loss first hits "
                    "87.3365 or nan, whether it stays there, and what that "
                    "means.")
    scan.add_argument("file", nargs="?", default="-",
                      help="the log file (default, or '-': standard input)")
    scan.set_defaults(run=_run_scan_log)

    explain = commands.add_parser(
        "explain", help="name the constant a stuck loss value comes from",
        description="Name the constant a stuck loss value comes from, such as "
                    "87.3365 = -ln(FLT_MIN).")
    explain.add_argument("value", help="the loss value, as printed (e.g. 87.3365)")
    explain.set_defaults(run=_run_explain)
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Run one command of the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program's name (default ``sys.argv[1:]``).
    prog : str
        How the program was run, for the usage line: ``"pysafemax"`` (the
        console script, the default) or ``"python -m pysafemax"``.

    Returns
    -------
    int
        The exit code: the command's, 2 for no command, 1 when standard
        output was closed by its reader.

    Raises
    ------
    SystemExit
        From argparse, for ``--help``, ``--version`` and bad arguments.
    """
    parser = build_parser(prog)
    argv = sys.argv[1:] if argv is None else list(argv)
    if (len(argv) >= 2 and argv[0] == "explain" and argv[1].startswith("-")
            and argv[1] not in ("-h", "--help", "--")):
        # `explain -nan` or `explain -inf`: a value, not an option
        argv.insert(1, "--")
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
