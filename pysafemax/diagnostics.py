"""Moved to pysafemax.tools.diagnose; this module keeps the old import path
(``from pysafemax.diagnostics import diagnose``) working."""
from .tools.diagnose import *  # noqa: F401,F403
from .tools.diagnose import WIDTH, __all__  # noqa: F401
