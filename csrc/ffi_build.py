"""Describes the cffi extension `pysafemax._kernel`; setup.py's cffi_modules builds it.

Nothing is compiled on import: this module only configures the builder.  The
cdef is the declaration blocks of the public header (softmax_loss.h) and of
the test-only one (testing.h), in that order, read verbatim, so the headers
and the module cannot drift apart.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# The public contract first, then the hooks the tests and benchmarks use.
CDEF_HEADERS = ("softmax_loss.h", "testing.h")
SOURCES = ("softmax_loss.c", "softmax_loss_f32.c", "softmax_loss_f64.c", "chunks.c",
           "testing.c")
HEADERS = CDEF_HEADERS + ("internal.h", "chunks.h", "row.h", "driver.h", "exp_f32.h",
                          "lanes_avx2.h", "rows_avx2.h", "rows_online_avx2.h")


def _declarations(header_path):
    with open(header_path, encoding="utf-8") as f:
        text = f.read()
    begin = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = text.index("/* cdef-end */")
    return text[begin:end]


def _compile_args():
    if sys.platform == "win32":
        return []
    # Portable flags only: CPU-specific code must be chosen at run time, and
    # -ffast-math would break the NaN and inf semantics the methods promise.
    # PYSAFEMAX_CFLAGS adds flags for checked builds (sanitizers).
    extra = os.environ.get("PYSAFEMAX_CFLAGS", "").split()
    # -ffp-contract=off: no fused multiply-adds but the written ones, so the
    # scalar and AVX2 exp give the same bits.
    return ["-std=c11", "-O3", "-fno-math-errno", "-ffp-contract=off"] + extra


def _here(name):
    return os.path.relpath(os.path.join(HERE, name))


ffibuilder = FFI()
ffibuilder.cdef("".join(_declarations(os.path.join(HERE, name)) for name in CDEF_HEADERS))
ffibuilder.set_source(
    "pysafemax._kernel",
    "".join(f'#include "{name}"\n' for name in CDEF_HEADERS),
    sources=[_here(name) for name in SOURCES],
    # Headers are listed so that an in-tree build/ recompiles when only they change.
    depends=[_here(name) for name in HEADERS],
    include_dirs=[os.path.relpath(HERE)],
    libraries=[] if sys.platform == "win32" else ["m", "pthread"],
    extra_compile_args=_compile_args(),
    extra_link_args=os.environ.get("PYSAFEMAX_LDFLAGS", "").split(),
)
