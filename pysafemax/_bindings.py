"""The one door into the compiled kernel, pysafemax._kernel.

Only this module imports it.  Each C entry point has one thin wrapper here,
in PyNaCl's way: take arrays the caller has validated (dtype, C-contiguous,
aligned; outputs writable), make the zero-copy buffers, call, and turn the
status into an exception.  (softmax_loss, softmax and log_softmax pick the
dtype's entry points from KERNELS and pass them to a *_by twin, which the
tiny calls' fast paths call directly with the entry points their own dtype
test looked up; the reduced loss by value has its wrapper in KERNELS.)  The
wrappers know the C contract (csrc/softmax_loss.h) and nothing of the
Python API's arguments: a bad label found by the kernel comes out as
BadLabel(position), which the caller, who holds the labels as given, turns
into its ValueError.

cffi releases the GIL around each call and the kernel's only state shared
between calls is its thread pool, which is thread-safe and fork-safe, so
every function here may run on many threads at once.
"""
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from ._kernel import ffi, lib

METHOD_IDS = {"naive": lib.PSM_NAIVE, "maxsub": lib.PSM_MAXSUB,
              "stable": lib.PSM_STABLE}
REDUCTION_IDS = {"none": lib.PSM_NONE, "sum": lib.PSM_SUM, "mean": lib.PSM_MEAN,
                 "valid": lib.PSM_VALID, "full": lib.PSM_FULL,
                 "batch_size": lib.PSM_BATCH_SIZE}
# The kernel starts at most this many threads: 1 where it was built without
# threads, and then runs every call on the calling thread.
MAX_THREADS = lib.psm_max_threads()

# psm_partial, field for field (csrc/softmax_loss.h).
STATE_DTYPE = np.dtype([
    ("max", np.float64), ("rest", np.float64), ("ties", np.float64),
    ("cross", np.float64), ("cross_mass", np.float64), ("mass", np.float64),
    ("label_logit", np.float64), ("label_found", np.int32), ("cross_inf", np.int32),
])
assert STATE_DTYPE.itemsize == ffi.sizeof("psm_partial")


class _Kernels(NamedTuple):
    """One dtype's entry points."""
    ctype: Any              # the cffi array type of its buffers
    softmax_loss: Any       # psm_softmax_loss_lse (lse NULL: psm_softmax_loss)
    loss_value: Any         # psm_softmax_loss_value's wrapper (_loss_value_of)
    softmax: Any
    log_softmax: Any
    partials: Any
    loss_from_partials: Any
    grad_from_partials: Any


# The array types are looked up once: ffi.from_buffer takes them faster than
# their names.
_INT64_ARRAY = ffi.typeof("int64_t[]")
# What psm_softmax_loss_value returns for no loss: never one of its losses.
_NO_VALUE = float("-inf")


def _loss_value_of(kernel, ctype):
    """The wrapper of one dtype's psm_softmax_loss_value (kernel, its
    buffers of ctype).  It is made once, a closure over what it calls, and
    called through KERNELS: a (32, 10) call takes about 2.5 us, and a
    module-level wrapper's lookups (the entry point and array type in the
    caller's KERNELS entry, ffi.from_buffer twice, two globals) and sixth
    argument cost 0.2 us of it."""
    buffer, int64s, no_value = ffi.from_buffer, _INT64_ARRAY, _NO_VALUE

    def loss_value(logits, outer, classes, labels, opts):
        """The reduced loss of (outer, classes) logits and (outer,) int64
        labels (opts a reducing one of method, reduction and threads
        alone), or None where it cannot be had so: either array not
        C-contiguous (ffi.from_buffer takes no other: the buffer protocol
        gives only those without strides), or not aligned, a bad label.
        The tiny calls' fast path then takes the general one, which copies
        such arrays, or finds what went wrong; its caller checks no layout
        itself."""
        try:
            loss = kernel(buffer(ctype, logits), outer, classes, buffer(int64s, labels),
                          opts.struct)
        except ValueError:   # not C-contiguous
            return None
        return None if loss == no_value else loss
    return loss_value


_FLOATS, _DOUBLES = ffi.typeof("float[]"), ffi.typeof("double[]")
KERNELS = {
    np.dtype(np.float32): _Kernels(
        _FLOATS, lib.psm_softmax_loss_lse_f32,
        _loss_value_of(lib.psm_softmax_loss_value_f32, _FLOATS), lib.psm_softmax_f32,
        lib.psm_log_softmax_f32, lib.psm_softmax_partials_f32,
        lib.psm_loss_from_partials_f32, lib.psm_grad_from_partials_f32),
    np.dtype(np.float64): _Kernels(
        _DOUBLES, lib.psm_softmax_loss_lse_f64,
        _loss_value_of(lib.psm_softmax_loss_value_f64, _DOUBLES), lib.psm_softmax_f64,
        lib.psm_log_softmax_f64, lib.psm_softmax_partials_f64,
        lib.psm_loss_from_partials_f64, lib.psm_grad_from_partials_f64),
}


class BadLabel(Exception):
    """The kernel found the label at flat position `position` outside
    [0, classes) (and not ignored), where it read it."""

    def __init__(self, position):
        super().__init__(position)
        self.position = position


def _check(status):
    if status > 0:
        raise BadLabel(status - 1)
    if status == lib.PSM_OK:
        return
    if status == lib.PSM_NO_MEMORY:
        raise MemoryError("pysafemax kernel could not allocate its work space")
    if status == lib.PSM_NOT_DECOMPOSABLE:
        raise RuntimeError("pysafemax kernel found no partial state for these options")
    raise RuntimeError(f"pysafemax kernel rejected its arguments (status {status})")


def _in(array, ctype):
    """An input buffer, or NULL."""
    return ffi.NULL if array is None else ffi.from_buffer(ctype, array)


def _out(array, ctype):
    """An output buffer, or NULL."""
    return ffi.NULL if array is None else ffi.from_buffer(ctype, array, True)


class Options(NamedTuple):
    """A psm_options and the weight buffer it points into (kept alive with it)."""
    struct: Any
    weight_buffer: Any


def options(method, reduction, threads, weight=None, ignore_index=None,
            label_smoothing=0.0, normalizer=None, z_loss=0.0):
    """The psm_options of a call, built whole: method and reduction by name,
    threads an int >= 1 (capped at MAX_THREADS), weight a float64 array the
    caller keeps unchanged, normalizer what the reduction divides by instead
    of its own (the whole batch's, for a call on part of it), z_loss the
    z-loss coefficient (checked: finite, >= 0)."""
    struct = ffi.new("psm_options *")      # zeroed: no weights, no ignore
    struct.method = METHOD_IDS[method]
    struct.reduction = REDUCTION_IDS[reduction]
    struct.threads = min(threads, MAX_THREADS)
    if ignore_index is not None:
        struct.use_ignore_index = 1
        struct.ignore_index = ignore_index
    weight_buffer = None
    if weight is not None:
        weight_buffer = ffi.from_buffer("double[]", weight)
        struct.class_weight = weight_buffer
    if label_smoothing:
        struct.label_smoothing = label_smoothing
    if normalizer is not None:
        struct.has_normalizer = 1
        struct.normalizer = normalizer
    if z_loss:
        struct.z_loss = z_loss
    return Options(struct, weight_buffer)


# ---- the entry points --------------------------------------------------------

# Cells the kernel writes a reduced loss into, kept for reuse: making one
# (ffi.new) costs a twentieth of a (32, 10) call.  Each call pops a cell that
# no other call holds (list.pop and list.append are atomic), so threads, and
# a call nested on the same thread by a signal handler, never share one; a
# call that raises drops its cell, and the list holds at most as many cells as
# calls ever ran at once.
_loss_cells: list[Any] = []


def softmax_loss(logits, outer, classes, inner, labels, probs, opts, losses, grad,
                 lse=None):
    """psm_softmax_loss_lse: the reduced loss; losses, grad and lse (or None)
    filled."""
    return softmax_loss_by(KERNELS[logits.dtype], logits, outer, classes, inner, labels,
                           probs, opts, losses, grad, lse)


def softmax_loss_by(k, logits, outer, classes, inner, labels, probs, opts, losses, grad,
                    lse=None):
    """softmax_loss by k, the logits' KERNELS entry, which the caller has
    looked up (the tiny calls' fast paths, which test the dtype with it).
    Written for tiny calls, whose whole cost a few hundred ns of Python can
    double: the buffers are made inline (positional require_writable: the
    keyword alone costs 0.15 us), and the loss cell is reused."""
    ctype, buffer, null = k.ctype, ffi.from_buffer, ffi.NULL
    try:
        cell = _loss_cells.pop()
    except IndexError:
        cell = ffi.new("double *")
    status = k.softmax_loss(
        buffer(ctype, logits), outer, classes, inner,
        null if labels is None else buffer(_INT64_ARRAY, labels),
        null if probs is None else buffer(ctype, probs), opts.struct,
        null if losses is None else buffer(ctype, losses, True), cell,
        null if grad is None else buffer(ctype, grad, True),
        null if lse is None else buffer(ctype, lse, True))
    loss = cell[0]
    _loss_cells.append(cell)
    if status:
        _check(status)
    return loss


def softmax(logits, outer, classes, inner, method, threads, out):
    """psm_softmax into out, on at most threads threads (capped at MAX_THREADS)."""
    softmax_by(KERNELS[logits.dtype], logits, outer, classes, inner, METHOD_IDS[method],
               threads, out)


def softmax_by(k, logits, outer, classes, inner, method_id, threads, out):
    """softmax by k, the logits' KERNELS entry, and the method's METHOD_IDS
    entry, both looked up by the caller (as in softmax_loss_by).  Buffers
    inline, as there."""
    ctype, buffer = k.ctype, ffi.from_buffer
    status = k.softmax(buffer(ctype, logits), outer, classes, inner, method_id,
                       threads if threads < MAX_THREADS else MAX_THREADS,
                       buffer(ctype, out, True))
    if status:
        _check(status)


def log_softmax(logits, outer, classes, inner, threads, out):
    """psm_log_softmax into out, on at most threads threads."""
    log_softmax_by(KERNELS[logits.dtype], logits, outer, classes, inner, threads, out)


def log_softmax_by(k, logits, outer, classes, inner, threads, out):
    """log_softmax by k, the logits' KERNELS entry (as in softmax_by)."""
    ctype, buffer = k.ctype, ffi.from_buffer
    status = k.log_softmax(buffer(ctype, logits), outer, classes, inner,
                           threads if threads < MAX_THREADS else MAX_THREADS,
                           buffer(ctype, out, True))
    if status:
        _check(status)


def softmax_partials(logits, outer, classes, inner, class_offset, total_classes,
                     labels, probs, opts, state):
    """psm_softmax_partials into state (STATE_DTYPE, one per position)."""
    k = KERNELS[logits.dtype]
    _check(k.partials(_in(logits, k.ctype), outer, classes, inner, class_offset,
                      total_classes, _in(labels, "int64_t[]"), _in(probs, k.ctype),
                      opts.struct, _out(state, "psm_partial[]")))


def combine_partials(into, part):
    """psm_combine_partials: into = into (+) part, position by position."""
    lib.psm_combine_partials(into.size, _in(part, "psm_partial[]"),
                             _out(into, "psm_partial[]"))


def loss_from_partials(state, outer, inner, total_classes, labels, opts, losses,
                       dtype):
    """psm_loss_from_partials for logits of `dtype`: the reduced loss."""
    k = KERNELS[dtype]
    loss = ffi.new("double *")
    _check(k.loss_from_partials(_in(state, "psm_partial[]"), outer, inner,
                                total_classes, _in(labels, "int64_t[]"), opts.struct,
                                _out(losses, k.ctype), loss))
    return loss[0]


def grad_from_partials(logits, outer, classes, inner, class_offset, total_classes,
                       labels, probs, opts, state, grad):
    k = KERNELS[logits.dtype]
    _check(k.grad_from_partials(_in(logits, k.ctype), outer, classes, inner,
                                class_offset, total_classes, _in(labels, "int64_t[]"),
                                _in(probs, k.ctype), opts.struct,
                                _in(state, "psm_partial[]"), _out(grad, k.ctype)))


def label_summary(labels, positions, classes, opts):
    """psm_label_summary: (positions not ignored, the sum of their class
    weights); labels None (probability targets) count every position."""
    valid, weight_sum = ffi.new("int64_t *"), ffi.new("double *")
    _check(lib.psm_label_summary(_in(labels, "int64_t[]"), positions, classes,
                                 opts.struct, valid, weight_sum))
    return valid[0], weight_sum[0]


def normalizer(reduction, valid, weight_sum, positions, outer):
    """psm_normalizer: what `reduction` divides the summed loss by."""
    return lib.psm_normalizer(REDUCTION_IDS[reduction], valid, weight_sum, positions,
                              outer)


def reduce(reduction, total, normalizer):
    """psm_reduce: the reduced loss from the summed one (NaN for a mean over
    no weight)."""
    return lib.psm_reduce(REDUCTION_IDS[reduction], total, normalizer)


def simd_level():
    """1 when this CPU runs the AVX2+FMA paths."""
    return lib.psm_simd_level()


# ---- test hooks (csrc/testing.h) -----------------------------------------------

@contextmanager
def portable_code():
    """Calls on this thread run the portable scalar twins instead of the
    vector code, for tests that compare the two bit for bit."""
    before = lib.psm_testing_portable()
    lib.psm_testing_set_portable(1)
    try:
        yield
    finally:
        lib.psm_testing_set_portable(before)


def portable():
    """Whether calls on this thread run the portable twins."""
    return bool(lib.psm_testing_portable())


def exp_f32(x, portable):
    """The kernel's float exp of each element of a float32 array; portable
    0: the vector path, 1: the scalar twin, 2: the scalar exp compiled for
    FMA, 3: the vector exp without its range check, for inputs in [-87, 87]
    or NaN only (psm_exp_f32)."""
    out = np.empty_like(x)
    lib.psm_exp_f32(_in(x, "float[]"), x.size, int(portable), _out(out, "float[]"))
    return out


def exp_f64(x, portable):
    """The kernel's double exp of each element of a float64 array."""
    out = np.empty_like(x)
    lib.psm_exp_f64(_in(x, "double[]"), x.size, int(portable), _out(out, "double[]"))
    return out


def log1p_f64(x, portable):
    """The kernel's double log1p of each element of a float64 array."""
    out = np.empty_like(x)
    lib.psm_log1p_f64(_in(x, "double[]"), x.size, int(portable), _out(out, "double[]"))
    return out


def read_probe_f32(x, threads, portable):
    """The sum of a float32 array read with the kernel's SIMD and threads:
    the read-bandwidth probe of the benchmarks."""
    return lib.psm_read_probe_f32(_in(x, "float[]"), x.size, threads, int(portable))


def exp_sum_probe_f32(x, threads, portable):
    """The sum of the kernel's float exp of a float32 array, on the kernel's
    chunks and threads: the exp+sum (compute) probe of the benchmarks."""
    return lib.psm_exp_sum_probe_f32(_in(x, "float[]"), x.size, threads, int(portable))


def _probe_output(probe, x, out):
    """Checks a probe's output array: float32, as many elements as x, C
    contiguous, not overlapping x."""
    for name, a in (("x", x), ("out", out)):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f"{probe}: {name} must be C-contiguous float32")
    if out.size != x.size:
        raise ValueError(f"{probe}: out has {out.size} elements, x has {x.size}")
    if np.shares_memory(x, out):
        raise ValueError(f"{probe}: out overlaps x")


def exp_store_probe_f32(x, out, threads, portable):
    """Stores the kernel's float exp of a float32 array into `out` while
    summing it, then scales each chunk's exps by one over their sum, with
    the kernel's SIMD and threads: the exp+store probe of the benchmarks (the
    floor of a gradient computing one exp per element).  Returns the
    exp+sum probe's value."""
    _probe_output("exp_store_probe_f32", x, out)
    return lib.psm_exp_store_probe_f32(_in(x, "float[]"), x.size, _out(out, "float[]"),
                                       threads, int(portable))


def copy_probe_f32(x, out, threads, portable):
    """Copies a float32 array into `out` (float32, as many elements, C
    contiguous, not overlapping x) with the kernel's SIMD and threads: the
    copy probe of the benchmarks.  Returns the sum of the last element of
    each chunk, read back from `out`."""
    _probe_output("copy_probe_f32", x, out)
    return lib.psm_copy_probe_f32(_in(x, "float[]"), x.size, _out(out, "float[]"),
                                  threads, int(portable))
