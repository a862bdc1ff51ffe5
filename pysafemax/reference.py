"""Pure-numpy versions of the kernel's functions, one per method.

Each follows its method's float behaviour, not just its mathematics: naive's
exp overflows here too, and maxsub clamps at -log(TINY) in the logits' dtype.
They share the kernel's argument checking (pysafemax._validation) and nothing
else, so they can check it (`softmax_loss(..., check=True)` and the tests).
All warnings numpy would raise for overflow and NaN are silenced: those values
are the point of the exercise.
"""
import numpy as np

from . import _validation

__all__ = ["softmax_loss", "softmax", "log_softmax"]


def _row_stats(x, method):
    """(shift, e, excluded, s) for every row of x, mirroring the kernel.

    e = exp(x - shift) in x's dtype.  naive and maxsub: s is the row sum of e
    taken in double and rounded to x's dtype.  stable: s is the double sum of
    e over all but the first argmax (whose term is exactly 1), so the softmax
    denominator is 1 + s and log1p(s) keeps small losses exact.
    """
    rows = np.arange(x.shape[0])
    if method == "naive":
        shift = np.zeros((x.shape[0], 1), dtype=x.dtype)
    else:
        shift = x.max(axis=1, keepdims=True)
    e = np.exp(x - shift)
    if method != "stable":
        s = e.astype(np.float64).sum(axis=1).astype(x.dtype)
        return shift, e, None, s
    excluded = np.argmax(x, axis=1)
    e64 = e.astype(np.float64)
    e64[rows, excluded] = 0.0
    return shift, e, excluded, e64.sum(axis=1)


def _probabilities(x, method, stats):
    shift, e, excluded, s = stats
    if method != "stable":
        return e / s[:, None]
    p = e.astype(np.float64) / (1.0 + s[:, None])
    p[~np.isfinite(shift[:, 0])] = np.nan
    return p


def _losses(x, y, method, stats):
    """Per-row losses: in x's dtype for naive/maxsub, in double for stable."""
    shift, e, excluded, s = stats
    rows = np.arange(x.shape[0])
    if method != "stable":
        p = e[rows, y] / s
        tiny = np.finfo(x.dtype).tiny
        # Caffe's loss -= log(std::max(p, TINY)): NaN stays NaN, +0 not -0.
        return x.dtype.type(0) - np.log(np.where(p < tiny, tiny, p))
    m = shift[:, 0].astype(np.float64)
    loss = (m - x[rows, y].astype(np.float64)) + np.log1p(s)
    loss[~np.isfinite(m)] = np.nan
    return loss


def _gradient(x, y, method, stats, scale):
    shift, e, excluded, s = stats
    rows = np.arange(x.shape[0])
    p = _probabilities(x, method, stats)
    if method != "stable":
        p[rows, y] -= 1
        return p * x.dtype.type(scale)
    p[rows, y] -= 1.0
    # p_y - 1 where y is the argmax, as -s / (1 + s): no cancellation.
    at_max = (y == excluded) & np.isfinite(shift[:, 0])
    p[rows[at_max], y[at_max]] = -s[at_max] / (1.0 + s[at_max])
    return (p * scale).astype(x.dtype)


def softmax_loss(logits, labels, *, method="stable", reduction="mean",
                 return_grad=False):
    """numpy twin of pysafemax.softmax_loss (same arguments and results)."""
    x, result_dtype = _validation.logits_array(logits)
    y, given = _validation.labels_array(labels, x.shape[0])
    _validation.choice(method, "method", _validation.METHODS)
    _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    classes = x.shape[1]
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise _validation.label_out_of_range(given, int(bad[0]), classes)

    with np.errstate(all="ignore"):
        stats = _row_stats(x, method)
        losses = _losses(x, y, method, stats)
        total = float(losses.astype(np.float64).sum())
        if reduction == "none":
            loss = losses.astype(result_dtype)
        elif reduction == "sum":
            loss = total
        else:
            loss = total / x.shape[0] if x.shape[0] else float("nan")
        if not return_grad:
            return loss
        scale = 1.0 / x.shape[0] if reduction == "mean" and x.shape[0] else 1.0
        return loss, _gradient(x, y, method, stats, scale).astype(result_dtype)


def softmax(logits, *, method="stable"):
    """numpy twin of pysafemax.softmax."""
    x, result_dtype = _validation.logits_array(logits)
    _validation.choice(method, "method", _validation.METHODS)
    with np.errstate(all="ignore"):
        p = _probabilities(x, method, _row_stats(x, method))
    return p.astype(result_dtype)


def log_softmax(logits):
    """numpy twin of pysafemax.log_softmax (log domain, stable)."""
    x, result_dtype = _validation.logits_array(logits)
    with np.errstate(all="ignore"):
        shift, _, _, s = _row_stats(x, "stable")
        m = shift.astype(np.float64)
        out = (x.astype(np.float64) - m) - np.log1p(s)[:, None]
        out[~np.isfinite(m[:, 0])] = np.nan
    return out.astype(result_dtype)
