"""Moved to pysafemax.tools.scan_log (its line width to
pysafemax.tools.text); this module keeps the old import path
(``from pysafemax.logscan import scan_log``) working."""
from .tools.scan_log import *  # noqa: F401,F403
from .tools.scan_log import __all__  # noqa: F401
from .tools.text import WIDTH  # noqa: F401
