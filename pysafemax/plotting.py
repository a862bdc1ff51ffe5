"""Moved to pysafemax.tools.plot; this module keeps the old import path
(``from pysafemax.plotting import plot_loss_vs_gap``) working."""
from .tools.plot import *  # noqa: F401,F403
from .tools.plot import (GAP_MAX, GAPS, ROUNDS_TO_ONE, STABLE_ZERO,  # noqa: F401
                         __all__)
from .tools.limits import FLT_DENORM_MIN, FLT_MIN  # noqa: F401
