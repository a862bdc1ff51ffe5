"""Shared test settings: Hypothesis profiles and the slow marker.

PYSAFEMAX_HYPOTHESIS_PROFILE selects the Hypothesis profile: "ci" (the
default, a few seconds) or "long" (thousands of examples per property).
"""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=5000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("PYSAFEMAX_HYPOTHESIS_PROFILE", "ci"))
