"""Moved to pysafemax.tools.explain (the text helpers abbreviate, ECHO_LIMIT
and WIDTH to pysafemax.tools.text); this module keeps the old import path
(``from pysafemax.explain import explain``) working."""
from .tools.explain import *  # noqa: F401,F403
from .tools.explain import (DECIMAL_SPELLING, INF_ADVICE,  # noqa: F401
                            INF_SPELLING, INF_STORY, NAN_ADVICE, NAN_SPELLING,
                            NAN_STORY)
from .tools.text import ECHO_LIMIT, WIDTH, abbreviate  # noqa: F401

__all__ = ["explain", "cli_explain", "Explanation", "StuckValue", "CONSTANTS",
           "CONSTANT_BY_KEY", "parse_value", "matches", "match_constant",
           "uniform_classes", "abbreviate", "NUMBER_SPELLING", "REL_TOL",
           "MIN_DIGITS", "MAX_CLASSES", "ECHO_LIMIT"]
