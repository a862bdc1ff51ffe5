"""Moved to pysafemax.tools.demo; this module keeps the old import path
(``from pysafemax.demo import run_demo``) working."""
from .tools.demo import *  # noqa: F401,F403
from .tools.demo import METHODS, __all__  # noqa: F401
from .tools.limits import FLT_EXP_OVERFLOW as EXP_OVERFLOW  # noqa: F401
from .tools.limits import FLT_MIN  # noqa: F401
