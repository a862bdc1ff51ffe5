"""Thin wrappers over the C kernel: validate, allocate, call, check the status.

This is the only module that touches the compiled extension.  cffi releases
the GIL around each kernel call, and the kernel keeps no state, so every
function here is safe to call from many threads at once.
"""
import math
import os
import warnings

import numpy as np

from . import _validation, reference
from ._blocks import position_blocks
from ._kernel import ffi, lib

_METHOD_IDS = {"naive": lib.PSM_NAIVE, "maxsub": lib.PSM_MAXSUB,
               "stable": lib.PSM_STABLE}

# dtype -> (C element type, softmax_loss, softmax, log_softmax)
_KERNELS = {
    np.dtype(np.float32): ("float[]", lib.psm_softmax_loss_f32,
                           lib.psm_softmax_f32, lib.psm_log_softmax_f32),
    np.dtype(np.float64): ("double[]", lib.psm_softmax_loss_f64,
                           lib.psm_softmax_f64, lib.psm_log_softmax_f64),
}


class ReferenceMismatchError(RuntimeError):
    """check=True found the kernel and the numpy reference further apart than
    check_tolerance() allows."""


def check_tolerance(dtype, classes):
    """The (relative = absolute) tolerance check=True allows between the kernel
    and pysafemax.reference for logits of this dtype and class count.

    8 ULP of the dtype covers exp, division and log rounding differently in
    two implementations (numpy's exp and the kernel's can differ by 1 ULP)
    and the kernel's float partial sums of 4 terms (2 ULP); classes * 2**-53
    bounds the extra error of summing that many terms in double in a
    different order (numpy sums pairwise, the kernel in blocks).
    """
    return 8 * float(np.finfo(dtype).eps) + classes * 2.0 ** -53


# Tests set this to compare the portable scalar code with the SIMD code.
_PORTABLE = False
_num_threads = None   # set_num_threads(); None: the default


def simd_level():
    """The kernel's code path on this CPU: "avx2+fma" or "portable"."""
    return "avx2+fma" if lib.psm_simd_level() and not _PORTABLE else "portable"


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


_CORES = _available_cores()


def _capped(threads):
    """The kernel starts at most PSM_MAX_THREADS threads; a larger count
    (any Python int) means as many as it will start."""
    return min(threads, lib.PSM_MAX_THREADS)


def _threads_from_environment():
    """PYSAFEMAX_NUM_THREADS, read once at import (as OMP_NUM_THREADS is).
    A value that is not a whole number >= 1 is ignored, with one warning."""
    env = os.environ.get("PYSAFEMAX_NUM_THREADS")
    if env is None:
        return _CORES
    digits = env.strip()
    if digits.isascii() and digits.isdigit() and int(digits) >= 1:
        return _capped(int(digits))
    shown = env if len(env) <= 40 else env[:40] + "..."
    warnings.warn(f"PYSAFEMAX_NUM_THREADS={shown!r} is not a whole number >= 1; "
                  f"ignored: calls use {_CORES} threads (every core)",
                  RuntimeWarning, stacklevel=2)
    return _CORES


_env_threads = _threads_from_environment()


def set_num_threads(n):
    """Set how many threads calls use by default (None: back to the default,
    PYSAFEMAX_NUM_THREADS as it was at import, or else every core this
    process may run on).  Counts above 256 are taken as 256."""
    global _num_threads
    _num_threads = None if n is None else _capped(_validation.thread_count(n, "n"))


def get_num_threads():
    """How many threads a call uses unless it passes threads=."""
    return _env_threads if _num_threads is None else _num_threads


def _buffer(array, ctype):
    """A zero-copy view for the kernel; its arguments' arrays are validated
    (dtype, C-contiguous, aligned), and the outputs are writable arrays."""
    if array is None:
        return ffi.NULL
    return ffi.from_buffer(ctype, array)


def _raise_for_status(status):
    if status == lib.PSM_NO_MEMORY:
        raise MemoryError("pysafemax kernel could not allocate its work space")
    if status != lib.PSM_OK:
        raise RuntimeError(f"pysafemax kernel rejected its arguments (status {status})")


_REDUCTION_IDS = {"none": lib.PSM_NONE, "sum": lib.PSM_SUM, "mean": lib.PSM_MEAN,
                  "valid": lib.PSM_VALID, "full": lib.PSM_FULL,
                  "batch_size": lib.PSM_BATCH_SIZE}


def softmax_loss(logits, labels, *, axis=1, method="stable", reduction="mean",
                 weight=None, ignore_index=None, label_smoothing=0.0,
                 return_grad=False, out=None, threads=None, check=False):
    """Softmax cross-entropy of `logits` against `labels`, with PyTorch's and
    Caffe's options.

    logits     (C,), (N, C) or (N, C, d1, ..., dk); `axis` is the class axis
    labels     class indices shaped like logits without the class axis, or
               floating class probabilities shaped like logits
    method     "stable" (log-sum-exp, exact), "maxsub" (Caffe: max subtracted,
               clamped at -log(FLT_MIN) = 87.3365) or "naive" (the textbook
               formula, which overflows)
    reduction  "none" (per-position losses in the logits' dtype), "sum",
               "mean" (PyTorch's weighted mean over non-ignored positions),
               or Caffe's normalizations "valid", "full", "batch_size";
               all but "none" give a Python float, accumulated in double
    weight     per-class weights (C,), PyTorch's semantics
    ignore_index  positions with this label add no loss and no gradient
    label_smoothing  in [0, 1], PyTorch's semantics
    return_grad  also return d loss / d logits, shaped like logits
    out        with return_grad: a C-contiguous array of the logits' shape
               and dtype to write the gradient into (and return), so that
               repeated calls need not allocate
    threads    how many threads (None: get_num_threads()); small inputs use
               one, and every count gives the same bits
    check      recompute with pysafemax.reference and raise
               ReferenceMismatchError if the two disagree beyond
               check_tolerance()

    Arrays larger than memory (an np.memmap) work: native float32/float64
    C-contiguous ones are read in place, and any that need converting
    (float16, byte-swapped, another layout) are converted a block of whole
    positions at a time, as are float16 gradients.  check=True checks block
    by block, but the reference needs several times each block's memory.
    """
    if (type(logits) is np.ndarray and type(labels) is np.ndarray
            and type(axis) is int and axis == 1 and type(method) is str
            and type(reduction) is str and weight is None and ignore_index is None
            and type(label_smoothing) in (float, int) and label_smoothing == 0
            and return_grad is False and out is None and check is False):
        loss = _plain_loss(logits, labels, method, reduction, threads)
        if loss is not None:
            return loss
    x = _validation.logits_array(logits, axis, convert=False)
    t = _validation.targets(labels, x, weight=weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, convert=False)
    method = _validation.choice(method, "method", _validation.METHODS)
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    check = _validation.flag(check, "check")
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    if out is not None:
        out = _validation.gradient_out(out, x, return_grad, (
            ("logits", logits), ("logits", x.array), ("labels", labels),
            ("labels", t.labels), ("labels", t.probs), ("weight", weight),
            ("weight", t.weight)))

    compute = x.compute_dtype
    ctype, loss_kernel, _, _ = _KERNELS[compute]
    # Results in the caller's dtype, filled block by block.
    losses = (np.empty(x.position_shape, dtype=x.result_dtype)
              if reduction == "none" or check else None)
    grad = None
    if return_grad:
        grad = out if out is not None else np.empty(x.array.shape, dtype=x.result_dtype)
    options, _weight = kernel_options(method, reduction, threads, t.weight,
                                      t.ignore_index, t.label_smoothing)
    if x.array.size * compute.itemsize * 3 <= _STREAM_BYTES:
        blocks = [(..., ...)]   # small enough to stage everything at once
    else:
        blocks = list(_blocks(x, _staged_bytes(x, t.probs, grad)))
    streamed = len(blocks) > 1
    normalizer = _batch_normalizer(x, t, reduction, options) if streamed or check else None
    if streamed:
        # Every block sums its losses and scales its gradient by the whole
        # batch's normalizer; the total is divided by it once, at the end.
        options.reduction = lib.PSM_SUM
        options.has_normalizer = 1
        options.normalizer = normalizer
    # else one call: the kernel checks the labels and reduces by itself.
    result = ffi.new("double *")
    total = -0.0   # the identity of +: all -0.0 losses sum to -0.0, as in one call
    for index, positions in blocks:
        block = _kernel_input(x.array[index], compute)
        labels_block = None if t.labels is None else t.labels[positions]
        probs_block = None if t.probs is None else _kernel_input(t.probs[index], compute)
        losses_to, losses_block = _kernel_output(losses, positions, compute)
        grad_to, grad_block = _kernel_output(grad, index, compute)
        status = loss_kernel(
            _buffer(block, ctype), math.prod(block.shape[:x.axis]), x.classes,
            math.prod(block.shape[x.axis + 1:]), _buffer(labels_block, "int64_t[]"),
            _buffer(probs_block, ctype), options, _buffer(losses_block, ctype), result,
            _buffer(grad_block, ctype))
        if status > 0:   # one call (streamed calls checked every label first)
            raise _validation.label_out_of_range(t.given_labels, status - 1,
                                                 x.classes, t.ignore_index)
        _raise_for_status(status)
        if check:  # before float16 results are rounded to float16
            origin = (tuple(s.start or 0 for s in positions[:-1]) if streamed
                      else (0,) * len(x.position_shape))
            _check_against_reference(
                block, probs_block if t.labels is None else labels_block, t, x.axis,
                method, normalizer, losses_block, grad_block, origin)
        _store(losses_to, losses_block)
        _store(grad_to, grad_block)
        total += result[0]
        # Freed before the next block's copies are made, not after.
        del block, probs_block, losses_block, grad_block

    if reduction == "none":
        loss = losses
    elif streamed:
        loss = lib.psm_reduce(_REDUCTION_IDS[reduction], total, normalizer)
    else:
        loss = result[0]
    return (loss, grad) if return_grad else loss


# Logits, probability targets and gradients the kernel cannot use in place (of
# another dtype or layout) are converted a block of whole positions at a time,
# the block's copies together at most this many bytes, so that an array
# larger than memory (an np.memmap) streams through.  Tests make it small.
_STREAM_BYTES = 64 << 20


def _kernel_ready(array, dtype):
    return array.dtype == dtype and array.flags.c_contiguous and array.flags.aligned


def _kernel_input(array, dtype):
    """The array itself if the kernel can read it in place, else a copy."""
    return array if _kernel_ready(array, dtype) else np.array(array, dtype, order="C")


def _staged_bytes(x, probs, grad):
    """How many bytes per position the block loop copies: of the logits,
    probability targets and gradient the kernel cannot use in place."""
    compute = x.compute_dtype
    staged = sum(a is not None and not _kernel_ready(a, compute)
                 for a in (x.array, probs, grad))
    # A block of a gradient the kernel can write is a contiguous slab of it,
    # written in place, unless blocks cut an axis after the class axis: then
    # it is staged too.
    if (staged and grad is not None and _kernel_ready(grad, compute)
            and x.axis < grad.ndim - 1):
        staged += 1
    return staged * x.classes * compute.itemsize


def _blocks(x, position_bytes):
    """(index, positions): the blocks of whole positions that softmax_loss
    converts and computes one at a time (see position_blocks), each of at
    most _STREAM_BYTES // position_bytes positions, and at least one (all of
    them when nothing is staged)."""
    if position_bytes == 0:
        per_block = math.prod(x.position_shape)
    else:
        per_block = max(1, _STREAM_BYTES // position_bytes)
    for block in position_blocks(x.array.shape, x.axis, per_block):
        yield block.index, block.positions


def _kernel_output(whole, index, dtype):
    """(part of whole, what the kernel writes it through): the part itself
    when the kernel can write it in place, else a compute-dtype block that
    _store copies in."""
    if whole is None:
        return None, None
    part = whole[index]
    return part, part if _kernel_ready(part, dtype) else np.empty(part.shape, dtype)


def _store(part, block):
    if part is not block:
        with np.errstate(over="ignore"):   # float16: beyond its range is inf
            np.copyto(part, block, casting="unsafe")


def kernel_options(method, reduction, threads, weight=None, ignore_index=None,
                   label_smoothing=0.0):
    """(psm_options, the weight buffer they point into): the buffer must be
    kept alive through the call.  threads None: get_num_threads()."""
    options = ffi.new("psm_options *")      # zeroed: no weights, no ignore
    options.method = _METHOD_IDS[method]
    options.reduction = _REDUCTION_IDS[reduction]
    options.threads = get_num_threads() if threads is None else _capped(threads)
    lib.psm_testing_set_portable(1 if _PORTABLE else 0)
    if ignore_index is not None:
        options.use_ignore_index = 1
        options.ignore_index = ignore_index
    weight_buffer = None
    if weight is not None:
        weight_buffer = _buffer(weight, "double[]")
        options.class_weight = weight_buffer
    if label_smoothing:
        options.label_smoothing = label_smoothing
    return options, weight_buffer


def label_summary(labels, positions, classes, options):
    """psm_label_summary: (status, how many positions are not ignored, the
    sum of their class weights); status is 1 + the position of the first bad
    label, or 0."""
    valid, weight_sum = ffi.new("int64_t *"), ffi.new("double *")
    status = lib.psm_label_summary(_buffer(labels, "int64_t[]"), positions, classes,
                                   options, valid, weight_sum)
    return status, valid[0], weight_sum[0]


def _batch_normalizer(x, t, reduction, options):
    """What the whole batch's reduction divides by (psm_normalizer).  Checks
    every label first, and raises the ValueError naming the first bad one."""
    positions = math.prod(x.position_shape)
    status, valid, weight_sum = label_summary(t.labels, positions, x.classes, options)
    if status > 0:
        raise _validation.label_out_of_range(t.given_labels, status - 1,
                                             x.classes, t.ignore_index)
    _raise_for_status(status)
    return lib.psm_normalizer(_REDUCTION_IDS[reduction], valid, weight_sum,
                              positions, x.outer)


_PLAIN_KERNELS = {np.dtype(np.float32): ("float[]", lib.psm_softmax_loss_f32),
                  np.dtype(np.float64): ("double[]", lib.psm_softmax_loss_f64)}
_plain_options = {}   # (method, reduction, threads, portable) -> psm_options


def _plain_loss(logits, labels, method, reduction, threads):
    """softmax_loss's most common call, made cheap: (N, C) float32/float64
    logits and (N,) int64 labels, C-contiguous and aligned, a reduced loss and
    no options.  Anything else (including anything invalid) returns None, for
    the general path to handle or reject.  The options structs are built once
    and only ever read by the kernel, so threads can share them."""
    ctype, kernel = _PLAIN_KERNELS.get(logits.dtype, (None, None))
    if (kernel is None or reduction == "none" or logits.ndim != 2
            or labels.dtype is not _validation.INT64 or labels.shape != logits.shape[:1]
            or logits.shape[1] == 0):
        return None
    flags, label_flags = logits.flags, labels.flags
    if not (flags.c_contiguous and flags.aligned
            and label_flags.c_contiguous and label_flags.aligned):
        return None
    if threads is None:
        threads = get_num_threads()
    elif type(threads) is not int or threads < 1:
        return None
    key = (method, reduction, threads, _PORTABLE)
    options = _plain_options.get(key)
    if options is None:
        if method not in _METHOD_IDS or reduction not in _REDUCTION_IDS:
            return None
        options, _ = kernel_options(method, reduction, threads)   # no weight buffer
        _plain_options[key] = options
    result = ffi.new("double *")
    rows, classes = logits.shape
    status = kernel(ffi.from_buffer(ctype, logits), rows, classes, 1,
                    ffi.from_buffer("int64_t[]", labels), ffi.NULL, options, ffi.NULL,
                    result, ffi.NULL)
    if status > 0:
        raise _validation.label_out_of_range(labels, status - 1, classes)
    _raise_for_status(status)
    return result[0]


def _in_dtype(result, x):
    """A result in the dtype the caller's logits had (float16 stays float16;
    a value beyond float16's range becomes inf, without a warning)."""
    with np.errstate(over="ignore"):
        return result.astype(x.result_dtype, copy=False)


def _check_against_reference(logits, targets, t, axis, method, normalizer,
                             losses, grad, origin):
    """Compare one block's losses and gradient (in the compute dtype) with
    pysafemax.reference on the block; origin is the block's first position,
    so that an error names the position in the whole batch."""
    tol = check_tolerance(logits.dtype, logits.shape[axis])
    expected = reference.softmax_loss(
        logits, targets, axis=axis, method=method, weight=t.weight,
        ignore_index=t.ignore_index, label_smoothing=t.label_smoothing,
        reduction="none", return_grad=grad is not None)
    expected_losses, expected_grad = expected if grad is not None else (expected, None)
    _compare("loss", losses, expected_losses, tol, method, 1, origin)
    if grad is None:
        return
    # reduction="none" leaves the gradient unscaled: scale it by the whole
    # batch's normalizer as the kernel does (1 / normalizer, NaN for 0: what
    # psm_reduce makes of a loss of 1), in the logits' dtype (one more
    # rounding for stable, well within tol).  Ignored positions are zeroed
    # after scaling, as the kernel leaves them.
    scale = logits.dtype.type(lib.psm_reduce(lib.PSM_MEAN, 1.0, normalizer))
    with np.errstate(invalid="ignore"):
        expected_grad = np.moveaxis(expected_grad, axis, -1) * scale
    if t.ignore_index is not None:
        expected_grad[targets == t.ignore_index] = 0
    # Compare per position: the class axis last.
    _compare("gradient", np.moveaxis(grad, axis, -1), expected_grad, tol, method,
             logits.shape[axis], origin)


def _compare(what, got, expected, tol, method, width, origin):
    """Raise ReferenceMismatchError naming the worst position (counted from
    origin) unless got and expected (positions, then `width` values each)
    agree."""
    positions = np.shape(got)[:-1] if what == "gradient" else np.shape(got)
    got = np.asarray(got, dtype=np.float64).reshape(math.prod(positions), width)
    expected = np.asarray(expected, dtype=np.float64).reshape(got.shape)
    with np.errstate(invalid="ignore"):
        error = np.abs(got - expected)
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))
        bad = ~same & ~(error <= tol * (1.0 + np.abs(expected)))
    if not bad.any():
        return
    # The worst position: the first with a special-value mismatch, else the
    # one with the largest error.
    position_bad = bad.any(axis=1)
    position_error = np.where(bad, np.nan_to_num(error, nan=np.inf), 0).max(axis=1)
    flat = int(np.argmax(np.where(position_bad, position_error, -1)))
    col = int(np.argmax(bad[flat]))
    index = np.unravel_index(flat, positions) if positions else ()
    index = [int(k) + start for k, start in zip(index, origin)]
    if len(index) == 1:
        at = f"row {index[0]}"
    else:
        at = "position [" + ", ".join(str(k) for k in index) + "]"
    if what == "gradient":
        at += f", class {col}"
    raise ReferenceMismatchError(
        f"method={method!r} {what} disagrees with pysafemax.reference at {at}: "
        f"kernel {float(got[flat, col])!r}, reference {float(expected[flat, col])!r} "
        f"(tolerance {tol:.3g} relative and absolute); "
        f"{int(position_bad.sum())} position(s) disagree")


def softmax(logits, *, axis=1, method="stable"):
    """Softmax probabilities of `logits` along the class axis, by method."""
    x = _validation.logits_array(logits, axis)
    method = _validation.choice(method, "method", _validation.METHODS)
    ctype, _, softmax_kernel, _ = _KERNELS[x.array.dtype]
    out = np.empty_like(x.array)
    _raise_for_status(softmax_kernel(_buffer(x.array, ctype), x.outer, x.classes,
                                     x.inner, _METHOD_IDS[method],
                                     _buffer(out, ctype)))
    return _in_dtype(out, x)


def log_softmax(logits, *, axis=1):
    """Log-softmax of `logits` along the class axis, in the log domain (exact)."""
    x = _validation.logits_array(logits, axis)
    ctype, _, _, log_softmax_kernel = _KERNELS[x.array.dtype]
    out = np.empty_like(x.array)
    _raise_for_status(log_softmax_kernel(_buffer(x.array, ctype), x.outer,
                                         x.classes, x.inner, _buffer(out, ctype)))
    return _in_dtype(out, x)
