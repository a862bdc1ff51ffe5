"""Build glue: metadata lives in pyproject.toml; this names the cffi extension
and says how its wheel is tagged and linked."""
import os
import sys
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _wants_debug_info(cflags):
    """True when PYSAFEMAX_CFLAGS asks for debug info (-g, -g3, -ggdb; not -g0)."""
    return any(flag.startswith("-g") and flag != "-g0" for flag in cflags.split())


class build_ext_without_debug_info(build_ext):
    """Links the kernel without debug info on Linux (-Wl,--strip-debug).

    Python's own CFLAGS carry -g, which makes the .so 5 times larger (1.3 MB
    against 260 KB with GCC 12).  Only the debug sections go: the symbol
    table stays (12 KB), so nm, perf and backtraces still name the functions.
    A build that asks for debug info keeps it: a -g flag in PYSAFEMAX_CFLAGS
    (the sanitizer builds in .ci/run) or `build_ext --debug`.  macOS and MSVC
    leave debug info out of the module anyway.
    """

    def build_extension(self, ext):
        if (sys.platform.startswith("linux") and not self.debug
                and not _wants_debug_info(os.environ.get("PYSAFEMAX_CFLAGS", ""))):
            ext.extra_link_args = [*ext.extra_link_args, "-Wl,--strip-debug"]
        super().build_extension(ext)


# cffi builds the module against the limited API (pysafemax/_kernel.abi3.so)
# except on free-threaded and debug CPython builds (cffi.setuptools_ext), so
# the wheel is tagged cp39-abi3, one wheel for CPython 3.9 and every later
# one, except there (where setuptools would refuse the tag).
LIMITED_API = not (sysconfig.get_config_var("Py_GIL_DISABLED") or hasattr(sys, "gettotalrefcount"))

setup(
    cffi_modules=["csrc/ffi_build.py:ffibuilder"],
    cmdclass={"build_ext": build_ext_without_debug_info},
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if LIMITED_API else {},
)
