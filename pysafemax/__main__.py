"""`python -m pysafemax COMMAND`: the command line is pysafemax.tools.cli."""
import sys

from .tools.cli import build_parser, main  # noqa: F401  (the old import path)

if __name__ == "__main__":
    sys.exit(main(prog="python -m pysafemax"))
