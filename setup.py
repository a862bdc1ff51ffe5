"""Build glue: metadata lives in pyproject.toml; this only names the cffi extension."""
from setuptools import setup

setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"])
