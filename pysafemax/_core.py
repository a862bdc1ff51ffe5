"""softmax_loss, softmax and log_softmax: validate, allocate, call the kernel
through pysafemax._bindings, and return results in the caller's dtype; and
the default thread count.

cffi releases the GIL around each kernel call, and the kernel keeps no
state, so every function here is safe to call from many threads at once.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any, Callable, Iterator, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from ._types import FloatArray, Integer, Loss, Reduced

from . import _bindings, _validation, reference
from ._blocks import Block, position_blocks


class ReferenceMismatchError(RuntimeError):
    """check=True found the kernel and the numpy reference further apart than
    check_tolerance() allows."""


def check_tolerance(dtype: DTypeLike, classes: int) -> float:
    """The tolerance ``check=True`` allows between the kernel and
    pysafemax.reference.

    8 ULP of the dtype covers exp, division and log rounding differently in
    two implementations (numpy's exp and the kernel's can differ by 1 ULP)
    and the kernel's float partial sums of 4 terms (2 ULP); classes * 2**-53
    bounds the extra error of summing that many terms in double in a
    different order (numpy sums pairwise, the kernel in blocks).

    Parameters
    ----------
    dtype : dtype
        The logits' floating dtype.
    classes : int
        The class count C.

    Returns
    -------
    float
        The tolerance, relative and absolute alike: ``8 * eps(dtype) +
        classes * 2**-53``.

    Raises
    ------
    ValueError
        If `dtype` is not a floating dtype (numpy.finfo's error).

    Examples
    --------
    >>> import numpy as np
    >>> from pysafemax import check_tolerance
    >>> check_tolerance(np.float32, 10) == 8 * 2.0**-23 + 10 * 2.0**-53
    True
    """
    return 8 * float(np.finfo(dtype).eps) + classes * 2.0 ** -53


_num_threads = None   # set_num_threads(); None: the default

# The defaults of method and reduction.
_STABLE = "stable"
_MEAN = "mean"

# What the tiny calls' fast paths test against, looked up once: a module's
# attribute costs them about 30 ns a lookup, and a (32, 10) call 2.5 us.
_ndarray = np.ndarray
_KERNELS = _bindings.KERNELS
_INT64 = _validation.INT64


def simd_level() -> str:
    """The kernel's code path on this CPU.

    Returns
    -------
    str
        ``"avx2+fma"`` when this CPU runs the AVX2+FMA paths, else
        ``"portable"`` (the scalar code, the same on every CPU).
    """
    simd = _bindings.simd_level() and not _bindings.portable()
    return "avx2+fma" if simd else "portable"


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return os.cpu_count() or 1


_CORES = _available_cores()


def _capped(threads: int) -> int:
    """The kernel starts at most MAX_THREADS threads; a larger count (any
    Python int) means as many as it will start."""
    return min(threads, _bindings.MAX_THREADS)


def _threads_from_environment() -> int:
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


def set_num_threads(n: Optional[Integer]) -> None:
    """Set how many threads calls use by default.

    Parameters
    ----------
    n : int or None
        The thread count, >= 1; counts above the kernel's limit are taken
        as the limit (256, or 1 in a build without threads).  None goes
        back to the default: PYSAFEMAX_NUM_THREADS as it was at import,
        or else every core this process may run on.

    Raises
    ------
    TypeError
        If `n` is not an int (or None).
    ValueError
        If `n` is below 1.

    Examples
    --------
    >>> from pysafemax import get_num_threads, set_num_threads
    >>> set_num_threads(2)
    >>> get_num_threads()
    2
    >>> set_num_threads(None)     # back to the default
    """
    global _num_threads
    _num_threads = None if n is None else _capped(_validation.thread_count(n, "n"))


def get_num_threads() -> int:
    """How many threads a call uses unless it passes ``threads=``.

    Returns
    -------
    int
        The count set by set_num_threads(), else PYSAFEMAX_NUM_THREADS as
        it was at import, else every core this process may run on.
    """
    return _env_threads if _num_threads is None else _num_threads


# What softmax_loss returns follows reduction, return_grad and return_lse: a
# float, or per-position losses for "none"; with return_grad, a (loss,
# gradient) pair; with return_lse, the log-sum-exps last.
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: Reduced = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[False] = ...,
                 return_lse: Literal[False] = ..., loss_dtype: Optional[DTypeLike] = ...,
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> float: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: Literal["none"],
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[False] = ...,
                 return_lse: Literal[False] = ..., loss_dtype: Optional[DTypeLike] = ...,
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> FloatArray: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: Reduced = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[True],
                 return_lse: Literal[False] = ..., loss_dtype: Optional[DTypeLike] = ...,
                 out: Optional[FloatArray] = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Tuple[float, FloatArray]: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: Literal["none"],
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[True],
                 return_lse: Literal[False] = ..., loss_dtype: Optional[DTypeLike] = ...,
                 out: Optional[FloatArray] = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Tuple[FloatArray, FloatArray]: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[False] = ...,
                 return_lse: Literal[True], loss_dtype: Optional[DTypeLike] = ...,
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Tuple[Loss, FloatArray]: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[True],
                 return_lse: Literal[True], loss_dtype: Optional[DTypeLike] = ...,
                 out: Optional[FloatArray] = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Tuple[Loss, FloatArray, FloatArray]: ...
@overload
def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., z_loss: float = ..., return_grad: bool = ...,
                 return_lse: bool = ..., loss_dtype: Optional[DTypeLike] = ...,
                 out: Optional[FloatArray] = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Union[Loss, Tuple[Loss, FloatArray],
                                             Tuple[Loss, FloatArray, FloatArray]]: ...


def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, method: str = _STABLE,
                 reduction: str = _MEAN, return_grad: bool = False,
                 out: Optional[FloatArray] = None, threads: Optional[Integer] = None,
                 **options: Any) -> Union[Loss, Tuple[Loss, FloatArray],
                                          Tuple[Loss, FloatArray, FloatArray]]:
    """Softmax cross-entropy of `logits` against `labels`, with PyTorch's and
    Caffe's options.

    Arrays larger than memory (an np.memmap) work: native float32/float64
    C-contiguous ones are read in place, and any that need converting
    (float16, byte-swapped, another layout) are converted a block of whole
    positions at a time, as are float16 gradients.  check=True checks block
    by block, but the reference needs several times each block's memory.

    Parameters
    ----------
    logits : array_like of float16, float32 or float64
        Shaped (C,), (N, C) or (N, C, d1, ..., dk); `axis` is the class axis.
    labels : array_like
        Class indices shaped like `logits` without the class axis, or
        floating class probabilities shaped like `logits`.
    axis : int, default 1
        The class axis (1-D logits: their one axis).
    method : {"stable", "maxsub", "naive"}
        "stable" (log-sum-exp, exact), "maxsub" (Caffe: max subtracted,
        clamped at -log(FLT_MIN) = 87.3365) or "naive" (the textbook
        formula, which overflows).
    reduction : {"mean", "sum", "none", "valid", "full", "batch_size"}
        "none" (per-position losses in the logits' dtype), "sum", "mean"
        (PyTorch's weighted mean over non-ignored positions), or Caffe's
        normalizations "valid", "full", "batch_size"; all but "none" give a
        Python float, accumulated in double.
    weight : array_like of float, shape (C,), optional
        Per-class weights, PyTorch's semantics.
    ignore_index : int, optional
        Positions with this label add no loss and no gradient.
    label_smoothing : float, default 0.0
        In [0, 1], PyTorch's semantics.
    z_loss : float, default 0.0
        PaLM's z-loss: each counted position adds ``z_loss * lse**2``, lse
        its log-sum-exp (see `return_lse`), weighted as its main term is in
        the mean (w[label], 1 with probability targets) and reduced with it;
        its gradient adds ``2 * z_loss * lse * softmax``.  Exact in
        "stable"; in "maxsub" and "naive" lse is the log of their own sum,
        so naive's z-loss is inf (and its gradient nan) once exp overflows.
    return_grad : bool, default False
        Also return d loss / d logits, shaped like `logits`.
    return_lse : bool, default False
        Also return each position's log-sum-exp over its classes (ignored
        positions too), shaped like the logits without the class axis, in
        the logits' dtype.  For "stable" it is exact, as logsumexp() gives
        it (-inf where every logit is -inf, +inf where one is +inf, NaN
        where one is NaN); for "maxsub" and "naive" it is the log of the
        sum those methods compute: naive's is inf once exp overflows.
    loss_dtype : dtype, optional
        The dtype of the per-position losses (reduction "none") and
        log-sum-exps: float16, float32, float64 or bfloat16; None, the
        logits'.  float32 keeps float16 or bfloat16 logits' losses as the
        kernel computed them (a float16 loss of 4.308065 reads 4.31).
    out : ndarray, optional
        With return_grad: a C-contiguous array of the logits' shape and
        dtype to write the gradient into (and return), so that repeated
        calls need not allocate.  It must not overlap any input, but for
        ``out=logits`` itself: then the gradient is written over the
        logits, which are consumed (each block of positions is copied,
        at most 64 MB, before its gradient overwrites it), so the call
        needs one logits-sized array, not two.
    threads : int, optional
        How many threads (None: get_num_threads()); small inputs use one,
        and every count gives the same bits.
    check : bool, default False
        Recompute with pysafemax.reference and raise ReferenceMismatchError
        if the two disagree beyond check_tolerance().

    Returns
    -------
    loss : float or ndarray
        A float for every reduction but "none"; for "none", the
        per-position losses, shaped like the logits without the class axis
        and in the logits' dtype.
    grad : ndarray
        Only with ``return_grad=True`` (then a ``(loss, grad)`` tuple is
        returned): d loss / d logits, in the logits' shape and dtype (`out`
        itself when given).
    lse : ndarray
        Only with ``return_lse=True``, last: ``(loss, lse)`` or ``(loss,
        grad, lse)``.

    Raises
    ------
    TypeError
        For an argument of the wrong type: logits not float16/32/64,
        labels neither integer nor floating, a masked array, `out` of
        another dtype, a method or reduction that is not a str.
    ValueError
        For a bad value: an unknown method or reduction, shapes that do not
        match, a label out of range (naming its position), label_smoothing
        outside [0, 1], `out` overlapping an input.
    ReferenceMismatchError
        With ``check=True``, if the kernel and the reference disagree.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> logits = np.array([[100.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    >>> labels = np.array([1, 0])
    >>> pysafemax.softmax_loss(logits, labels, reduction="none")  # -ln p[label]
    array([100.       ,   0.6931472], dtype=float32)
    >>> round(pysafemax.softmax_loss(logits, labels), 4)    # their mean
    50.3466
    >>> round(pysafemax.softmax_loss(logits, labels, method="maxsub"), 4)  # 87.3365
    44.0148
    >>> loss, grad = pysafemax.softmax_loss(logits, labels, return_grad=True)
    >>> grad
    array([[ 0.5 , -0.5 ],
           [-0.25,  0.25]], dtype=float32)
    """
    # Its signature, annotations and errors are _softmax_loss_general's (see
    # below).  It names only the options that tiny calls use, and takes the
    # rest as **options, because CPython 3.11 looks each keyword-only
    # argument a call leaves out up in __kwdefaults__: a function with 13
    # of them took 171.7 ns a call against 36.8 ns for one of two arguments,
    # and a (32, 10) call takes about 2.5 us.
    #
    # The common call, cheap: (N, C) float32/float64 logits and (N,) int64
    # labels, C-contiguous and aligned, used in place, with no options but
    # method, reduction, threads, return_grad (True or False) and an out=
    # buffer that is plainly fine (the logits' dtype and shape, C-contiguous,
    # writeable, sharing no memory with the inputs).  A (32, 10) call spends
    # more time here than in the kernel, so this is written out without
    # helper calls, the cheapest tests first: the defaults by identity, then
    # one dict lookup for method, reduction and threads together.  A reduced
    # loss without a gradient comes back from the kernel by value, and the
    # binding leaves the layout to ffi.from_buffer and the kernel (None:
    # take the general path).  Anything else, every bad input and every
    # other option included (even one given its default), falls through to
    # the general path, which checks everything.
    if (not options and type(logits) is _ndarray and type(labels) is _ndarray
            and (return_grad is False or return_grad is True)
            and (out is None or (return_grad is True and type(out) is _ndarray))
            and logits.ndim == 2 and labels.ndim == 1
            and labels.dtype is _INT64):
        kernels = _KERNELS.get(logits.dtype)
        if (method is _STABLE and reduction is _MEAN and threads is None
                and _num_threads is None):
            opts = _default_options
        else:
            count = threads
            if count is None:
                count = _env_threads if _num_threads is None else _num_threads
            opts = None
            if type(count) is int and type(method) is str and type(reduction) is str:
                opts = _plain_options.get((method, reduction, count))
                if opts is None:
                    opts = _new_plain_options(method, reduction, count)
        rows, classes = logits.shape
        if kernels is not None and opts is not None and classes and len(labels) == rows:
            if return_grad is False and reduction != "none":
                value = kernels.loss_value(logits, rows, classes, labels, opts)
                if value is not None:
                    return value
            else:
                flags, label_flags = logits.flags, labels.flags
                if (flags.c_contiguous and flags.aligned
                        and label_flags.c_contiguous and label_flags.aligned
                        and (out is None or _plain_out(out, logits, labels))):
                    losses = np.empty(rows, logits.dtype) if reduction == "none" else None
                    grad = (out if out is not None
                            else np.empty((rows, classes), logits.dtype)
                            if return_grad else None)
                    try:
                        loss = _bindings.softmax_loss_by(kernels, logits, rows, classes, 1,
                                                         labels, None, opts, losses, grad)
                    except _bindings.BadLabel as bad:
                        raise _validation.label_out_of_range(labels, bad.position,
                                                             classes) from None
                    if losses is not None:
                        loss = losses
                    # grad is an array when return_grad (mypy cannot tell)
                    return (loss, grad) if return_grad else loss  # type: ignore[return-value]
    return _softmax_loss_general(logits, labels, method=method, reduction=reduction,
                                 return_grad=return_grad, out=out, threads=threads,
                                 **options)


def _softmax_loss_general(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = 1,
                          method: str = _STABLE, reduction: str = _MEAN,
                          weight: Optional[ArrayLike] = None,
                          ignore_index: Optional[Integer] = None,
                          label_smoothing: float = 0.0, z_loss: float = 0.0,
                          return_grad: bool = False, return_lse: bool = False,
                          loss_dtype: Optional[DTypeLike] = None,
                          out: Optional[FloatArray] = None, threads: Optional[Integer] = None,
                          check: bool = False) -> Union[Loss, Tuple[Loss, FloatArray],
                                                        Tuple[Loss, FloatArray, FloatArray]]:
    """softmax_loss for every input and option: validate everything, then
    run the kernel block by block."""
    x = _validation.logits_array(logits, axis, convert=False)
    t = _validation.targets(labels, x, weight=weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, convert=False)
    method = _validation.choice(method, "method", _validation.METHODS)
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    return_lse = _validation.flag(return_lse, "return_lse")
    z_loss = _validation.z_loss(z_loss)
    per_position = (x.result_dtype if loss_dtype is None
                    else _validation.float_dtype(loss_dtype, "loss_dtype"))
    check = _validation.flag(check, "check")
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    # out=logits: the gradient written over the logits (consumed)
    consume = out is not None and _validation.same_array(out, x.array)
    if out is not None:
        logits_inputs = () if consume else (("logits", logits), ("logits", x.array))
        out = _validation.gradient_out(out, x, return_grad, logits_inputs + (
            ("labels", labels), ("labels", t.labels), ("labels", t.probs),
            ("weight", weight), ("weight", t.weight)))
    # Results in the caller's dtype, filled block by block.
    losses = (np.empty(x.position_shape, dtype=per_position)
              if reduction == "none" or check else None)
    lse = np.empty(x.position_shape, dtype=per_position) if return_lse else None
    grad = None
    if return_grad:
        grad = out if out is not None else np.empty(x.array.shape, dtype=x.result_dtype)
    blocks = _call_blocks(x, t.probs, grad, consume)
    # a float, or for "none" the losses (mypy cannot tell which results exist)
    loss: Any = _run_blocks(x, t, blocks, method, reduction, threads, losses, grad, check,
                            lse, z_loss, consume)
    if reduction == "none":
        loss = losses
    results = (loss,) + ((grad,) if return_grad else ()) + ((lse,) if return_lse else ())
    return results if len(results) > 1 else loss


# softmax_loss answers to its general path's signature (inspect.signature
# follows __wrapped__) and annotations, and the general path to its name, so
# that a misspelt keyword's TypeError names the function the caller called:
# Python 3.10 and later take that name from __qualname__, 3.9 from the
# code object's co_name (which tracebacks show too).
functools.update_wrapper(softmax_loss, _softmax_loss_general, assigned=("__annotations__",),
                         updated=())
_softmax_loss_general.__name__ = _softmax_loss_general.__qualname__ = "softmax_loss"
_softmax_loss_general.__code__ = _softmax_loss_general.__code__.replace(co_name="softmax_loss")


def _call_blocks(x: _validation.Logits, probs: Optional[NDArray[Any]],
                 grad: Optional[FloatArray], consume: bool = False) -> list[Block]:
    """The blocks of positions a call computes one at a time: one, if all it
    stages fits at once.  consume: the gradient overwrites the logits, so
    each block of them is copied first, as if staged."""
    if x.array.size * x.compute_dtype.itemsize * 3 <= _STREAM_BYTES:
        return [Block(..., ..., 0, math.prod(x.position_shape))]
    position_bytes = _staged_bytes(x, probs, grad)
    if consume and _kernel_ready(x.array, x.compute_dtype):   # not counted there
        position_bytes += x.classes * x.compute_dtype.itemsize
    return list(_blocks(x, position_bytes))


def _run_blocks(x: _validation.Logits, t: _validation.Targets, blocks: list[Block],
                method: str, reduction: str, threads: int, losses: Optional[FloatArray],
                grad: Optional[FloatArray], check: bool,
                lse: Optional[FloatArray] = None, z_loss: float = 0.0,
                consume: bool = False) -> float:
    """One kernel call per block, filling losses, grad and lse (or None); returns
    the reduced loss.  Several blocks sum their losses and scale their
    gradient by the whole batch's normalizer (checking every label before
    any block runs); one block is one call that reduces by itself."""
    streamed = len(blocks) > 1
    normalizer = (batch_normalizer(x, t, reduction, threads) if streamed or check
                  else None)
    opts = _bindings.options(method, "sum" if streamed else reduction, threads,
                             t.weight, t.ignore_index, t.label_smoothing,
                             normalizer if streamed else None, z_loss)
    compute = x.compute_dtype
    total = _CompensatedSum()
    for index, positions, first, _ in blocks:
        # (consume: a copy, whatever its layout, since grad is x.array)
        block = (np.array(x.array[index], compute, order="C") if consume
                 else _kernel_input(x.array[index], compute))
        labels_block = None if t.labels is None else t.labels[positions]
        probs_block = None if t.probs is None else _kernel_input(t.probs[index], compute)
        losses_to, losses_block = _kernel_output(losses, positions, compute)
        grad_to, grad_block = _kernel_output(grad, index, compute)
        lse_to, lse_block = _kernel_output(lse, positions, compute)
        try:
            result = _bindings.softmax_loss(
                block, math.prod(block.shape[:x.axis]), x.classes,
                math.prod(block.shape[x.axis + 1:]), labels_block, probs_block, opts,
                losses_block, grad_block, lse_block)
        except _bindings.BadLabel as bad:   # one call's own check found it, or a
            # block found a label changed since the batch's check
            raise t.label_error(first + bad.position, x.classes) from None
        if check:  # before float16 results are rounded to float16
            origin = (tuple(s.start or 0 for s in positions[:-1]) if streamed
                      else (0,) * len(x.position_shape))
            targets = probs_block if t.labels is None else labels_block
            assert targets is not None      # labels, or else probabilities
            _check_against_reference(block, targets, t, x.axis, method, normalizer, z_loss,
                                     losses_block, grad_block, origin)
        _store(losses_to, losses_block)
        _store(grad_to, grad_block)
        _store(lse_to, lse_block)
        total.add(result)
        # Freed before the next block's copies are made, not after.
        del block, probs_block, losses_block, grad_block, lse_block
    return _bindings.reduce(reduction, total.value(), normalizer) if streamed else result


class _CompensatedSum:
    """The blocks' totals summed as the kernel sums its chunks' (psm_sum in
    csrc/internal.h, Neumaier's compensation), so that a streamed call's
    total is within an ulp or two of one call's, however many blocks."""

    def __init__(self) -> None:
        self.sum = -0.0   # the identity of +: all -0.0 losses sum to -0.0
        self.comp = 0.0

    def add(self, x: float) -> None:
        t = self.sum + x
        if math.isfinite(t):
            self.comp += (self.sum - t) + x if abs(self.sum) >= abs(x) else (x - t) + self.sum
        self.sum = t

    def value(self) -> float:
        return self.sum if self.comp == 0.0 else self.sum + self.comp


# Logits, probability targets and gradients the kernel cannot use in place (of
# another dtype or layout) are converted a block of whole positions at a time,
# the block's copies together at most this many bytes, so that an array
# larger than memory (an np.memmap) streams through.  Tests make it small.
_STREAM_BYTES = 64 << 20


def _kernel_ready(array: NDArray[Any], dtype: np.dtype[Any]) -> bool:
    return array.dtype == dtype and array.flags.c_contiguous and array.flags.aligned


def _kernel_input(array: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """The array itself if the kernel can read it in place, else a copy."""
    return array if _kernel_ready(array, dtype) else np.array(array, dtype, order="C")


def _staged_bytes(x: _validation.Logits, probs: Optional[NDArray[Any]],
                  grad: Optional[FloatArray]) -> int:
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


def _blocks(x: _validation.Logits, position_bytes: int) -> Iterator[Block]:
    """The blocks of whole positions that softmax_loss converts and computes
    one at a time (see position_blocks), each of at
    most _STREAM_BYTES // position_bytes positions, and at least one (all of
    them when nothing is staged)."""
    if position_bytes == 0:
        per_block = math.prod(x.position_shape)
    else:
        per_block = max(1, _STREAM_BYTES // position_bytes)
    return position_blocks(x.array.shape, x.axis, per_block)


def _kernel_output(whole: Optional[NDArray[Any]], index: Any, dtype: np.dtype[Any]
                   ) -> Tuple[Optional[NDArray[Any]], Optional[NDArray[Any]]]:
    """(part of whole, what the kernel writes it through): the part itself
    when the kernel can write it in place, else a compute-dtype block that
    _store copies in."""
    if whole is None:
        return None, None
    part = whole[index]
    return part, part if _kernel_ready(part, dtype) else np.empty(part.shape, dtype)


def _store(part: Any, block: Any) -> None:   # arrays, or both None
    if part is not block:
        with np.errstate(over="ignore"):   # float16: beyond its range is inf
            np.copyto(part, block, casting="unsafe")


def batch_normalizer(x: _validation.Logits, t: _validation.Targets, reduction: str,
                     threads: int) -> float:
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
_plain_options: dict[tuple[str, str, int], _bindings.Options] = {}


def _new_plain_options(method: str, reduction: str,
                       threads: int) -> Optional[_bindings.Options]:
    """The options of a cheap call, made and kept; None for an unknown
    method or reduction, or a thread count below 1 (the general path's
    error to raise).  Counts above MAX_THREADS share MAX_THREADS's options,
    so that the cache stays small."""
    if (method not in _bindings.METHOD_IDS or reduction not in _bindings.REDUCTION_IDS
            or threads < 1):
        return None
    key = (method, reduction, min(threads, _bindings.MAX_THREADS))
    opts = _plain_options.get(key)
    if opts is None:
        opts = _plain_options[key] = _bindings.options(method, reduction, threads)
    return opts


# The options of the commonest call: method, reduction and threads all
# left to their defaults (PYSAFEMAX_NUM_THREADS is read once, at import).
_default_options = _new_plain_options(_STABLE, _MEAN, _env_threads)


def _check_against_reference(logits: NDArray[Any], targets: NDArray[Any],
                             t: _validation.Targets, axis: int, method: str,
                             normalizer: Optional[float], z_loss: float,
                             losses: Optional[NDArray[Any]],
                             grad: Optional[NDArray[Any]], origin: Tuple[int, ...]) -> None:
    """Compare one block's losses and gradient (in the compute dtype) with
    pysafemax.reference on the block; origin is the block's first position,
    so that an error names the position in the whole batch."""
    tol = check_tolerance(logits.dtype, logits.shape[axis])
    expected: Any = reference.softmax_loss(
        logits, targets, axis=axis, method=method, weight=t.weight,
        ignore_index=t.ignore_index, label_smoothing=t.label_smoothing, z_loss=z_loss,
        reduction="none", return_grad=grad is not None)
    expected_grad: Any      # an array when grad is one
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


def _compare(what: str, got: Any, expected: Any, tol: float, method: str, width: int,
             origin: Tuple[int, ...]) -> None:
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
    unraveled = np.unravel_index(flat, positions) if positions else ()
    index = [int(k) + start for k, start in zip(unraveled, origin)]
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


def _plain_out(out: Any, logits: NDArray[Any],
               labels: Optional[NDArray[Any]] = None) -> bool:
    """Whether the kernel may write a result shaped like `logits` straight
    into `out`, checked cheaply (the common call's fast paths run it): an
    array of their dtype and shape, C-contiguous, aligned and writeable,
    that shares no memory with them (nor with `labels`, if given)."""
    if type(out) is not _ndarray or out.dtype is not logits.dtype:
        return False
    flags = out.flags
    return (out.shape == logits.shape and flags.c_contiguous and flags.aligned
            and flags.writeable and _apart(out, flags.owndata, logits)
            and (labels is None or _apart(out, flags.owndata, labels)))


def _apart(out: NDArray[Any], out_owns_data: bool, other: NDArray[Any]) -> bool:
    """Whether two arrays share no memory.  Two that each own their data
    (numpy allocated it for them) are separate allocations unless they are
    one array: a flag read (about 0.07 us) rather than numpy's bounds test
    (about 0.3 us), which decides the rest; on the (32, 10) out= call two
    such tests were 0.6 us of 5.5."""
    if out is other:
        return False
    return (out_owns_data and other.flags.owndata) or not np.may_share_memory(out, other)


def _rows_into(x: _validation.Logits, out: Optional[FloatArray],
               fill: Callable[[NDArray[Any]], None]) -> FloatArray:
    """A result shaped like the logits x, which fill(into) writes into
    `into` (x.array's dtype and shape, C-contiguous): a new array in the
    logits' dtype for out None, else `out`, checked, written in place when
    the kernel can, else through a temporary (another dtype or layout, or
    memory the kernel still reads: ``out=logits``)."""
    if out is not None:
        out = _validation.probabilities_out(out, x)
        if _plain_out(out, x.array):
            fill(out)
            return out
    into = np.empty_like(x.array)
    fill(into)
    if out is None:
        return x.in_result_dtype(into)
    out[...] = x.in_result_dtype(into)
    return out


def softmax(logits: ArrayLike, *, axis: Integer = 1, method: str = "stable",
            threads: Optional[Integer] = None,
            out: Optional[FloatArray] = None) -> FloatArray:
    """Softmax probabilities of `logits` along the class axis, by method.

    Parameters
    ----------
    logits : array_like of float16, float32 or float64
        Shaped (C,), (N, C) or (N, C, d1, ..., dk); `axis` is the class axis.
    axis : int, default 1
        The class axis (1-D logits: their one axis).
    method : {"stable", "maxsub", "naive"}
        "stable" scales exp(x - max) by 1 / (1 + s), s summed in double
        without the max's own term; "maxsub" divides exp(x - max) by their
        sum (taken in double, rounded to the logits' dtype; Caffe's clamp
        is in the loss, not here); "naive" divides exp(x) by their sum,
        which overflows to nan past exp's range.
    threads : int, optional
        How many threads (None: get_num_threads()); small inputs use one,
        and every count gives the same bits.
    out : ndarray, optional
        A writeable array of the logits' shape and dtype to write the
        probabilities into (and return), so that repeated calls need not
        allocate.  Written in place when C-contiguous and apart from the
        logits; otherwise (another layout, or ``out=logits``) through a
        temporary, with the same result.

    Returns
    -------
    ndarray
        The probabilities, in the logits' shape and dtype (`out` itself
        when given).

    Raises
    ------
    TypeError
        If the logits are not float16/32/64 (or a masked array), `method`
        is not a str, or `out` is not an array of the logits' dtype.
    ValueError
        For an unknown method, an axis out of range, no classes, or an
        `out` of another shape or read-only.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> pysafemax.softmax(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    array([[0.5, 0.5],
           [1. , 0. ]])
    >>> pysafemax.softmax(np.array([[1000.0, 0.0]]), method="naive")
    array([[nan,  0.]])
    """
    # The common call, cheap, as in softmax_loss: plain (N, C) logits, the
    # kernels and the method's id each looked up once, the lookup the test.
    if (type(logits) is _ndarray and type(axis) is int and axis == 1
            and type(method) is str and logits.ndim == 2):
        kernels = _KERNELS.get(logits.dtype)
        method_id = _bindings.METHOD_IDS.get(method)
        rows, classes = logits.shape
        count = threads
        if count is None:
            count = _env_threads if _num_threads is None else _num_threads
        flags = logits.flags
        if (kernels is not None and method_id is not None and classes
                and type(count) is int and count >= 1
                and flags.c_contiguous and flags.aligned
                and (out is None or _plain_out(out, logits))):
            if out is None:
                out = np.empty((rows, classes), logits.dtype)
            _bindings.softmax_by(kernels, logits, rows, classes, 1, method_id, count, out)
            return out
    x = _validation.logits_array(logits, axis)
    method = _validation.choice(method, "method", _validation.METHODS)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    return _rows_into(x, out, lambda into: _bindings.softmax(
        x.array, x.outer, x.classes, x.inner, method, threads, into))


def log_softmax(logits: ArrayLike, *, axis: Integer = 1,
                threads: Optional[Integer] = None,
                out: Optional[FloatArray] = None) -> FloatArray:
    """Log-softmax of `logits` along the class axis, in the log domain (exact).

    Parameters
    ----------
    logits : array_like of float16, float32 or float64
        Shaped (C,), (N, C) or (N, C, d1, ..., dk); `axis` is the class axis.
    axis : int, default 1
        The class axis (1-D logits: their one axis).
    threads : int, optional
        How many threads (None: get_num_threads()); small inputs use one,
        and every count gives the same bits.
    out : ndarray, optional
        As in softmax: an array of the logits' shape and dtype to write
        into (and return).

    Returns
    -------
    ndarray
        ``x - max - log(sum(exp(x - max)))`` per position, in the logits'
        shape and dtype: finite where softmax's probability underflows to 0
        (`out` itself when given).

    Raises
    ------
    TypeError
        If the logits are not float16/32/64 (or a masked array), or `out`
        is not an array of the logits' dtype.
    ValueError
        For an axis out of range, no classes, or an `out` of another shape
        or read-only.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> pysafemax.log_softmax(np.array([[1000.0, 0.0]]))
    array([[    0., -1000.]])
    """
    # The common call, cheap, as in softmax.
    if type(logits) is _ndarray and type(axis) is int and axis == 1 and logits.ndim == 2:
        kernels = _KERNELS.get(logits.dtype)
        rows, classes = logits.shape
        count = threads
        if count is None:
            count = _env_threads if _num_threads is None else _num_threads
        flags = logits.flags
        if (kernels is not None and classes and type(count) is int and count >= 1
                and flags.c_contiguous and flags.aligned
                and (out is None or _plain_out(out, logits))):
            if out is None:
                out = np.empty((rows, classes), logits.dtype)
            _bindings.log_softmax_by(kernels, logits, rows, classes, 1, count, out)
            return out
    x = _validation.logits_array(logits, axis)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    return _rows_into(x, out, lambda into: _bindings.log_softmax(
        x.array, x.outer, x.classes, x.inner, threads, into))


def logsumexp(a: ArrayLike, axis: Optional[Integer] = -1, keepdims: bool = False, *,
              threads: Optional[Integer] = None) -> Union[np.floating[Any], FloatArray]:
    """log(sum(exp(a))) along an axis, exact, through the loss's one pass.

    The stable method's own log-sum-exp (as ``softmax_loss(...,
    return_lse=True)`` gives it): the max plus log1p of the other terms'
    sum, in double, rounded once to the input's dtype.  It agrees with
    ``scipy.special.logsumexp`` (without ``b`` or ``return_sign``),
    special values included.

    Parameters
    ----------
    a : array_like
        float16, float32 or float64 (float16 is computed in float32);
        integers and booleans are taken as float64, as scipy does.
    axis : int or None, default -1
        The axis summed over; None sums over every element.
    keepdims : bool, default False
        Keep the summed axis (axes) with length 1.
    threads : int, optional
        How many threads (None: get_num_threads()); every count gives the
        same bits.

    Returns
    -------
    numpy scalar or ndarray
        In `a`'s floating dtype: -inf where every term is -inf (or the axis
        is empty), +inf where a term is +inf, NaN where a term is NaN.

    Raises
    ------
    TypeError
        If `a` is not a real number array (complex, object, a masked array),
        or `axis` or `keepdims` has the wrong type.
    ValueError
        For an axis out of range.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> float(pysafemax.logsumexp(np.array([1000.0, 1000.0])))  # 1000 + ln 2
    1000.6931471805599
    >>> pysafemax.logsumexp(np.array([[0.0, -np.inf], [-np.inf, -np.inf]]))
    array([  0., -inf])
    """
    array = a if type(a) is np.ndarray else _validation.as_array(a, "a")
    if array.dtype.kind in "biu":      # as scipy: exactly, in float64
        array = array.astype(np.float64)
    if not _validation.computable(array.dtype):
        raise TypeError(f"a must be a float16, float32, float64 or bfloat16 array (or "
                        f"integers), got dtype {array.dtype}")
    keepdims = _validation.flag(keepdims, "keepdims")
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    shape = array.shape
    if axis is None:
        array = array.reshape(1, -1)
        class_axis = 1
    else:
        class_axis = _validation.integer(axis, "axis")
        if not -array.ndim <= class_axis < array.ndim:
            raise ValueError(f"axis {axis} is out of range for a of shape {shape}")
        class_axis %= array.ndim
    if array.shape[class_axis] == 0:       # the log of an empty sum
        lse = np.full(array.shape[:class_axis] + array.shape[class_axis + 1:], -np.inf,
                      dtype=_validation.native(array.dtype))
    else:
        x = _validation.logits_array(array, class_axis, convert=False)
        t = _validation.targets(np.zeros(x.position_shape, np.int64), x, convert=False)
        lse = np.empty(x.position_shape, dtype=x.result_dtype)
        _run_blocks(x, t, _call_blocks(x, None, None), "stable", "sum", threads, None, None,
                    False, lse)
    if keepdims:
        lse = (lse.reshape((1,) * len(shape)) if axis is None
               else np.expand_dims(lse, class_axis))
    elif axis is None:
        lse = lse.reshape(())
    return lse[()] if lse.ndim == 0 else lse
