"""softmax_loss, softmax and log_softmax: validate, allocate, call the kernel
through pysafemax._bindings, and return results in the caller's dtype; and
the default thread count.

cffi releases the GIL around each kernel call, and the kernel keeps no
state, so every function here is safe to call from many threads at once.
"""
import math
import os
import warnings

import numpy as np

from . import _bindings, _validation, reference
from ._blocks import Block, position_blocks


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


_num_threads = None   # set_num_threads(); None: the default


def simd_level():
    """The kernel's code path on this CPU: "avx2+fma" or "portable"."""
    simd = _bindings.simd_level() and not _bindings.portable()
    return "avx2+fma" if simd else "portable"


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


_CORES = _available_cores()


def _capped(threads):
    """The kernel starts at most MAX_THREADS threads; a larger count (any
    Python int) means as many as it will start."""
    return min(threads, _bindings.MAX_THREADS)


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


_env_threads = _capped(_threads_from_environment())


def set_num_threads(n):
    """Set how many threads calls use by default (None: back to the default,
    PYSAFEMAX_NUM_THREADS as it was at import, or else every core this
    process may run on).  Counts above 256 are taken as 256."""
    global _num_threads
    _num_threads = None if n is None else _capped(_validation.thread_count(n, "n"))


def get_num_threads():
    """How many threads a call uses unless it passes threads=."""
    return _env_threads if _num_threads is None else _num_threads


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
    # The common call, cheap: (N, C) float32/float64 logits and (N,) int64
    # labels, C-contiguous and aligned, used in place, with no options but
    # method, reduction, threads and return_grad (True or False).  A (32, 10)
    # call spends more time here than in the kernel, so this is written out
    # without helper calls.  Anything else, every bad input included, falls
    # through to the general path, which checks everything.
    if (weight is None and ignore_index is None and out is None and check is False
            and type(logits) is np.ndarray and type(labels) is np.ndarray
            and type(axis) is int and axis == 1
            and (type(label_smoothing) is float or type(label_smoothing) is int)
            and label_smoothing == 0.0 and (return_grad is False or return_grad is True)
            and type(method) is str and type(reduction) is str
            and logits.ndim == 2 and labels.ndim == 1
            and labels.dtype is _validation.INT64 and logits.dtype in _bindings.KERNELS):
        rows, classes = logits.shape
        count = threads
        if count is None:
            count = _env_threads if _num_threads is None else _num_threads
        flags, label_flags = logits.flags, labels.flags
        if (classes and len(labels) == rows and type(count) is int and count >= 1
                and flags.c_contiguous and flags.aligned
                and label_flags.c_contiguous and label_flags.aligned):
            try:
                opts = _plain_options[method, reduction, count]
            except KeyError:
                opts = _new_plain_options(method, reduction, count)
            if opts is not None:
                losses = np.empty(rows, logits.dtype) if reduction == "none" else None
                grad = np.empty((rows, classes), logits.dtype) if return_grad else None
                try:
                    loss = _bindings.softmax_loss(logits, rows, classes, 1, labels, None,
                                                  opts, losses, grad)
                except _bindings.BadLabel as bad:
                    raise _validation.label_out_of_range(labels, bad.position,
                                                         classes) from None
                if losses is not None:
                    loss = losses
                return (loss, grad) if return_grad else loss
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
    # Results in the caller's dtype, filled block by block.
    losses = (np.empty(x.position_shape, dtype=x.result_dtype)
              if reduction == "none" or check else None)
    grad = None
    if return_grad:
        grad = out if out is not None else np.empty(x.array.shape, dtype=x.result_dtype)
    if x.array.size * x.compute_dtype.itemsize * 3 <= _STREAM_BYTES:
        # small enough to stage everything at once
        blocks = [Block(..., ..., 0, math.prod(x.position_shape))]
    else:
        blocks = list(_blocks(x, _staged_bytes(x, t.probs, grad)))
    loss = _run_blocks(x, t, blocks, method, reduction, threads, losses, grad, check)
    if reduction == "none":
        loss = losses
    return (loss, grad) if return_grad else loss


def _run_blocks(x, t, blocks, method, reduction, threads, losses, grad, check):
    """One kernel call per block, filling losses and grad (or None); returns
    the reduced loss.  Several blocks sum their losses and scale their
    gradient by the whole batch's normalizer (checking every label before
    any block runs); one block is one call that reduces by itself."""
    streamed = len(blocks) > 1
    normalizer = (_batch_normalizer(x, t, reduction, threads) if streamed or check
                  else None)
    opts = _bindings.options(method, "sum" if streamed else reduction, threads,
                             t.weight, t.ignore_index, t.label_smoothing,
                             normalizer if streamed else None)
    compute = x.compute_dtype
    total = _CompensatedSum()
    for index, positions, first, _ in blocks:
        block = _kernel_input(x.array[index], compute)
        labels_block = None if t.labels is None else t.labels[positions]
        probs_block = None if t.probs is None else _kernel_input(t.probs[index], compute)
        losses_to, losses_block = _kernel_output(losses, positions, compute)
        grad_to, grad_block = _kernel_output(grad, index, compute)
        try:
            result = _bindings.softmax_loss(
                block, math.prod(block.shape[:x.axis]), x.classes,
                math.prod(block.shape[x.axis + 1:]), labels_block, probs_block, opts,
                losses_block, grad_block)
        except _bindings.BadLabel as bad:   # one call's own check found it, or a
            # block found a label changed since the batch's check
            raise t.label_error(first + bad.position, x.classes) from None
        if check:  # before float16 results are rounded to float16
            origin = (tuple(s.start or 0 for s in positions[:-1]) if streamed
                      else (0,) * len(x.position_shape))
            _check_against_reference(
                block, probs_block if t.labels is None else labels_block, t, x.axis,
                method, normalizer, losses_block, grad_block, origin)
        _store(losses_to, losses_block)
        _store(grad_to, grad_block)
        total.add(result)
        # Freed before the next block's copies are made, not after.
        del block, probs_block, losses_block, grad_block
    return _bindings.reduce(reduction, total.value(), normalizer) if streamed else result


class _CompensatedSum:
    """The blocks' totals summed as the kernel sums its chunks' (psm_sum in
    csrc/internal.h, Neumaier's compensation), so that a streamed call's
    total is within an ulp or two of one call's, however many blocks."""

    def __init__(self):
        self.sum = -0.0   # the identity of +: all -0.0 losses sum to -0.0
        self.comp = 0.0

    def add(self, x):
        t = self.sum + x
        if math.isfinite(t):
            self.comp += (self.sum - t) + x if abs(self.sum) >= abs(x) else (x - t) + self.sum
        self.sum = t

    def value(self):
        return self.sum if self.comp == 0.0 else self.sum + self.comp


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
    """The blocks of whole positions that softmax_loss converts and computes
    one at a time (see position_blocks), each of at
    most _STREAM_BYTES // position_bytes positions, and at least one (all of
    them when nothing is staged)."""
    if position_bytes == 0:
        per_block = math.prod(x.position_shape)
    else:
        per_block = max(1, _STREAM_BYTES // position_bytes)
    return position_blocks(x.array.shape, x.axis, per_block)


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


def _batch_normalizer(x, t, reduction, threads):
    """What the whole batch's reduction divides by (psm_normalizer).  Checks
    every label first, and raises the ValueError naming the first bad one."""
    positions = math.prod(x.position_shape)
    opts = _bindings.options("stable", reduction, threads, t.weight, t.ignore_index,
                             t.label_smoothing)
    try:
        valid, weight_sum = _bindings.label_summary(t.labels, positions, x.classes, opts)
    except _bindings.BadLabel as bad:
        raise t.label_error(bad.position, x.classes) from None
    return _bindings.normalizer(reduction, valid, weight_sum, positions, x.outer)


# The options of softmax_loss's cheap path, by (method, reduction, threads);
# built once and only ever read by the kernel, so threads can share them.
_plain_options = {}


def _new_plain_options(method, reduction, threads):
    """The options of a cheap call, made and kept; None for an unknown
    method or reduction (the general path's error to raise).  Counts above
    MAX_THREADS share MAX_THREADS's options, so that the cache stays small."""
    if method not in _bindings.METHOD_IDS or reduction not in _bindings.REDUCTION_IDS:
        return None
    threads = min(threads, _bindings.MAX_THREADS)
    key = (method, reduction, threads)
    opts = _plain_options.get(key)
    if opts is None:
        opts = _plain_options[key] = _bindings.options(method, reduction, threads)
    return opts


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
    scale = logits.dtype.type(_bindings.reduce("mean", 1.0, normalizer))
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


def softmax(logits, *, axis=1, method="stable", threads=None):
    """Softmax probabilities of `logits` along the class axis, by method.

    threads    how many threads (None: get_num_threads()); small inputs use
               one, and every count gives the same bits
    """
    # The common call, cheap, as in softmax_loss: plain (N, C) logits.
    if (type(logits) is np.ndarray and type(axis) is int and axis == 1
            and type(method) is str and method in _validation.METHODS
            and logits.ndim == 2 and logits.dtype in _bindings.KERNELS):
        rows, classes = logits.shape
        count = threads
        if count is None:
            count = _env_threads if _num_threads is None else _num_threads
        flags = logits.flags
        if (classes and type(count) is int and count >= 1
                and flags.c_contiguous and flags.aligned):
            out = np.empty((rows, classes), logits.dtype)
            _bindings.softmax(logits, rows, classes, 1, method, count, out)
            return out
    x = _validation.logits_array(logits, axis)
    method = _validation.choice(method, "method", _validation.METHODS)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    out = np.empty_like(x.array)
    _bindings.softmax(x.array, x.outer, x.classes, x.inner, method, threads, out)
    return x.in_result_dtype(out)


def log_softmax(logits, *, axis=1, threads=None):
    """Log-softmax of `logits` along the class axis, in the log domain (exact).

    threads    how many threads (None: get_num_threads()); small inputs use
               one, and every count gives the same bits
    """
    # The common call, cheap, as in softmax_loss: plain (N, C) logits.
    if (type(logits) is np.ndarray and type(axis) is int and axis == 1
            and logits.ndim == 2 and logits.dtype in _bindings.KERNELS):
        rows, classes = logits.shape
        count = threads
        if count is None:
            count = _env_threads if _num_threads is None else _num_threads
        flags = logits.flags
        if (classes and type(count) is int and count >= 1
                and flags.c_contiguous and flags.aligned):
            out = np.empty((rows, classes), logits.dtype)
            _bindings.log_softmax(logits, rows, classes, 1, count, out)
            return out
    x = _validation.logits_array(logits, axis)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    out = np.empty_like(x.array)
    _bindings.log_softmax(x.array, x.outer, x.classes, x.inner, threads, out)
    return x.in_result_dtype(out)
