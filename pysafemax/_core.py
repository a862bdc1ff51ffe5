"""Thin wrappers over the C kernel: validate, allocate, call, check the status.

This is the only module that touches the compiled extension.  cffi releases
the GIL around each kernel call, and the kernel keeps no state, so every
function here is safe to call from many threads at once.
"""
import numpy as np
from _pysafemax_kernel import ffi, lib

from . import _validation, reference

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
    two implementations (numpy's exp and libm's can differ by 1 ULP);
    classes * 2**-53 bounds the extra error of summing that many terms in
    double in a different order (numpy sums pairwise, the kernel in blocks).
    """
    return 8 * float(np.finfo(dtype).eps) + classes * 2.0 ** -53


def _buffer(array, ctype):
    if array is None:
        return ffi.NULL
    return ffi.from_buffer(ctype, array, require_writable=array.flags.writeable)


def _raise_for_status(status, given_labels, classes):
    if status == lib.PSM_OK:
        return
    if status > 0:
        raise _validation.label_out_of_range(given_labels, status - 1, classes)
    raise RuntimeError(f"pysafemax kernel rejected its arguments (status {status})")


def softmax_loss(logits, labels, *, method="stable", reduction="mean",
                 return_grad=False, check=False):
    """Softmax cross-entropy of `logits` (N, C) against class indices `labels` (N,).

    method     "stable" (log-sum-exp, exact), "maxsub" (Caffe: max subtracted,
               clamped at -log(FLT_MIN) = 87.3365) or "naive" (the textbook
               formula, which overflows)
    reduction  "mean" or "sum" (a Python float, accumulated in double) or
               "none" (an array of per-row losses in the logits' dtype)
    return_grad  also return d loss / d logits, shaped like logits
    check      recompute with pysafemax.reference and raise
               ReferenceMismatchError if the two disagree beyond
               check_tolerance()
    """
    x, result_dtype = _validation.logits_array(logits)
    y, given = _validation.labels_array(labels, x.shape[0])
    method = _validation.choice(method, "method", _validation.METHODS)
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    check = _validation.flag(check, "check")

    rows, classes = x.shape
    ctype, loss_kernel, _, _ = _KERNELS[x.dtype]
    losses = np.empty(rows, dtype=x.dtype) if reduction == "none" or check else None
    grad = np.empty_like(x) if return_grad else None
    scale = 1.0 / rows if reduction == "mean" and rows else 1.0
    total = ffi.new("double *")
    status = loss_kernel(
        _buffer(x, ctype), _buffer(y, "int64_t[]"), rows, classes, 1,
        _METHOD_IDS[method], _buffer(losses, ctype), total, _buffer(grad, ctype),
        scale)
    _raise_for_status(status, given, classes)

    if reduction == "none":
        loss = losses.astype(result_dtype, copy=False)
    elif reduction == "sum":
        loss = total[0]
    else:
        loss = total[0] / rows if rows else float("nan")
    if grad is not None:
        grad = grad.astype(result_dtype, copy=False)
    if check:
        _check_against_reference(x, y, method, losses, grad, reduction)
    return (loss, grad) if return_grad else loss


def _check_against_reference(x, y, method, losses, grad, reduction):
    tol = check_tolerance(x.dtype, x.shape[1])
    expected = reference.softmax_loss(x, y, method=method, reduction="none")
    _compare("loss", losses, expected, tol, method)
    if grad is not None:
        _, expected_grad = reference.softmax_loss(
            x, y, method=method, reduction=reduction, return_grad=True)
        _compare("gradient", grad.astype(x.dtype), expected_grad, tol, method)


def _compare(what, got, expected, tol, method):
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    expected = np.asarray(expected, dtype=np.float64).reshape(len(got), -1)
    with np.errstate(invalid="ignore"):
        error = np.abs(got - expected)
        same = (got == expected) | (np.isnan(got) & np.isnan(expected))
        bad = ~same & ~(error <= tol * (1.0 + np.abs(expected)))
    if not bad.any():
        return
    # The worst row: the first with a special-value mismatch, else the largest error.
    row_bad = bad.any(axis=1)
    row_error = np.where(bad, np.nan_to_num(error, nan=np.inf), 0).max(axis=1)
    row = int(np.argmax(np.where(row_bad, row_error, -1)))
    col = int(np.argmax(bad[row]))
    at = f"row {row}" + (f", class {col}" if got.shape[1] > 1 else "")
    raise ReferenceMismatchError(
        f"method={method!r} {what} disagrees with pysafemax.reference at {at}: "
        f"kernel {got[row, col]!r}, reference {expected[row, col]!r} "
        f"(tolerance {tol:.3g} relative and absolute); "
        f"{int(row_bad.sum())} row(s) disagree")


def softmax(logits, *, method="stable"):
    """Softmax probabilities of `logits` (N, C) along the class axis, by method."""
    x, result_dtype = _validation.logits_array(logits)
    method = _validation.choice(method, "method", _validation.METHODS)
    ctype, _, softmax_kernel, _ = _KERNELS[x.dtype]
    out = np.empty_like(x)
    status = softmax_kernel(_buffer(x, ctype), x.shape[0], x.shape[1], 1,
                            _METHOD_IDS[method], _buffer(out, ctype))
    _raise_for_status(status, None, x.shape[1])
    return out.astype(result_dtype, copy=False)


def log_softmax(logits):
    """Log-softmax of `logits` (N, C), computed in the log domain (exact)."""
    x, result_dtype = _validation.logits_array(logits)
    ctype, _, _, log_softmax_kernel = _KERNELS[x.dtype]
    out = np.empty_like(x)
    status = log_softmax_kernel(_buffer(x, ctype), x.shape[0], x.shape[1], 1,
                                _buffer(out, ctype))
    _raise_for_status(status, None, x.shape[1])
    return out.astype(result_dtype, copy=False)
