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
# Every header, so that changing any one rebuilds the extension.
HEADERS = tuple(sorted(name for name in os.listdir(HERE) if name.endswith(".h")))


def _declarations(header_path):
    with open(header_path, encoding="utf-8") as f:
        text = f.read()
    begin = text.index("/* cdef-begin */") + len("/* cdef-begin */")
    end = text.index("/* cdef-end */")
    return text[begin:end]


def _compile_args():
    # Portable flags only: CPU-specific code must be chosen at run time, and
    # -ffast-math (MSVC's /fp:fast) would break the NaN and inf semantics the
    # methods promise.  PYSAFEMAX_CFLAGS adds flags for checked builds
    # (sanitizers), on every platform.
    extra = os.environ.get("PYSAFEMAX_CFLAGS", "").split()
    if sys.platform == "win32":
        # MSVC (setuptools' compiler on Windows): /fp:precise keeps NaN and
        # inf semantics, and x64 code without /arch has no FMA instruction to
        # contract into.  C11 atomics (Visual Studio 2022 17.5 and later) let
        # chunks.c run threads; an older cl ignores the option (warning
        # D9002) and the kernel runs on the calling thread (psm_max_threads
        # says 1).  MSVC compiles the portable scalar code only (internal.h).
        return ["/O2", "/fp:precise", "/std:c11", "/experimental:c11atomics"] + extra
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
