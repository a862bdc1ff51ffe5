"""Pure-numpy versions of the kernel's functions, one per method.

Each follows its method's float behaviour, not just its mathematics: naive's
exp overflows here too, and maxsub clamps at -log(FLT_MIN) in the logits'
dtype (float64 too, as Caffe's SoftmaxWithLoss<double>).
They share the kernel's argument checking (pysafemax._validation) and nothing
else, so they can check it (`softmax_loss(..., check=True)` and the tests).
Where the kernel walks the class axis by stride, these move it last and work
on a (positions, classes) matrix.  All warnings numpy would raise for
overflow and NaN are silenced: those values are the point of the exercise.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _validation
from ._constants import FLT_MIN
from ._types import FloatArray, Integer, Loss

__all__ = ["softmax_loss", "softmax", "log_softmax", "softmax_partials"]

# _row_stats' (shift, e, excluded, s)
_Stats = Tuple[NDArray[Any], NDArray[Any], Optional[NDArray[np.intp]], NDArray[Any]]


def _row_stats(x: NDArray[Any], method: str) -> _Stats:
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


def _probabilities(x: NDArray[Any], method: str, stats: _Stats) -> NDArray[Any]:
    shift, e, excluded, s = stats
    if method != "stable":
        return e / s[:, None]
    p = e.astype(np.float64) / (1.0 + s[:, None])
    p[~np.isfinite(shift[:, 0])] = np.nan
    return p


def _target_mass(x: NDArray[Any], labels: Optional[NDArray[np.int64]],
                 probs: Optional[NDArray[Any]], weight: Optional[NDArray[np.float64]],
                 smoothing: float, ignored: NDArray[np.bool_]) -> NDArray[np.float64]:
    """q (rows x classes, double): the target distribution of each row; zero
    on ignored rows.  See psm_options in csrc/softmax_loss.h."""
    rows, classes = x.shape
    w = np.ones(classes) if weight is None else weight
    if probs is not None:
        return w * ((1.0 - smoothing) * probs.astype(np.float64) + smoothing / classes)
    assert labels is not None       # class indices, when not probabilities
    q = np.zeros((rows, classes)) + (smoothing / classes) * w
    keep = np.flatnonzero(~ignored)
    q[keep, labels[keep]] += (1.0 - smoothing) * w[labels[keep]]
    q[ignored] = 0.0
    return q


def _losses(x: NDArray[Any], method: str, stats: _Stats,
            q: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-row losses in double: sum over q != 0 of q_c * -log p_c."""
    shift, e, excluded, s = stats
    used = q != 0                       # NaN counts as used, and poisons
    mass = np.where(used, q, 0).sum(axis=1)
    if method != "stable":
        tiny = x.dtype.type(FLT_MIN)
        p = e / s[:, None]
        # Caffe's loss -= log(std::max(p, Dtype(FLT_MIN))): NaN stays NaN,
        # +0 not -0.
        nll = x.dtype.type(0) - np.log(np.where(p < tiny, tiny, p))
        return np.where(used, q * nll.astype(np.float64), 0).sum(axis=1)
    m = shift.astype(np.float64)
    cross = np.where(used, q * (m - x.astype(np.float64)), 0).sum(axis=1)
    loss = cross + mass * np.log1p(s)
    loss[~np.isfinite(m[:, 0])] = np.nan
    return loss


def _gradient(x: NDArray[Any], method: str, stats: _Stats, q: NDArray[np.float64],
              scale: float, z_mass: NDArray[np.float64]) -> NDArray[Any]:
    """(p (Q + Z) - q) * scale: Z is the z-loss's 2 z v lse (0 without)."""
    shift, e, excluded, s = stats
    used = q != 0
    mass = np.where(used, q, 0).sum(axis=1, keepdims=True)
    p = _probabilities(x, method, stats)
    if method != "stable":
        t = x.dtype.type
        p_mass = (mass + z_mass[:, None]).astype(x.dtype)
        return (p * p_mass - q.astype(x.dtype)) * t(scale)
    assert excluded is not None     # stable's argmax, excluded from s
    grad = p * (mass + z_mass[:, None]) - q
    # At the argmax, when p there exceeds 1/2: p Q - q = rest - Q s / (1 + s),
    # rest being the mass off the argmax; no cancellation as p -> 1.
    rows = np.arange(x.shape[0])
    off_max = np.where(used, q, 0)
    off_max[rows, excluded] = 0
    rest = off_max.sum(axis=1)   # summed, not Q - q_max, which cancels
    near_one = (s < 1.0) & np.isfinite(shift[:, 0])
    r = rows[near_one]
    grad[r, excluded[r]] = (rest[r] - mass[r, 0] * (s[r] / (1.0 + s[r])) +
                            z_mass[r] / (1.0 + s[r]))
    return grad * scale


def _log_sum_exp(x: NDArray[Any], method: str, stats: _Stats) -> NDArray[np.float64]:
    """Each row's log-sum-exp as the method has it (psm_softmax_loss_lse):
    stable's exact one, naive's and maxsub's the log of their own sum."""
    shift, e, excluded, s = stats
    m = shift[:, 0].astype(np.float64)
    if method != "stable":
        return m + np.log(s).astype(np.float64)
    lse = m + np.log1p(s)
    # no finite max: that max (-inf, +inf), or NaN where a logit is NaN
    return np.where(np.isfinite(m), lse, np.where(np.isnan(x).any(axis=1), np.nan, m))


def _z_weights(x: NDArray[Any], labels: Optional[NDArray[np.int64]],
               weight: Optional[NDArray[np.float64]], ignored: NDArray[np.bool_]
               ) -> NDArray[np.float64]:
    """Each row's share of the mean's normalizer, which weighs its z-loss:
    w[label] (1 without weights), 1 with probability targets, 0 if ignored."""
    if labels is None:
        return np.ones(x.shape[0])
    v = np.ones(x.shape[0]) if weight is None else weight[np.where(ignored, 0, labels)]
    return np.where(ignored, 0.0, v)


def _normalizer(reduction: str, ignored: NDArray[np.bool_],
                labels: Optional[NDArray[np.int64]], weight: Optional[NDArray[np.float64]],
                outer: int) -> float:
    positions = ignored.size
    valid = int((~ignored).sum())
    if reduction == "mean":
        if labels is None or weight is None:
            return float(valid)
        return float(weight[labels[~ignored]].sum())
    if reduction == "valid":
        return max(1.0, float(valid))
    if reduction == "full":
        return max(1.0, float(positions))
    if reduction == "batch_size":
        return max(1.0, float(outer))
    return 1.0


def softmax_loss(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = 1,
                 method: str = "stable", reduction: str = "mean",
                 weight: Optional[ArrayLike] = None,
                 ignore_index: Optional[Integer] = None, label_smoothing: float = 0.0,
                 z_loss: float = 0.0,
                 return_grad: bool = False) -> Union[Loss, Tuple[Loss, FloatArray]]:
    """numpy twin of pysafemax.softmax_loss (same arguments and results).

    Parameters
    ----------
    logits, labels, axis, method, reduction, weight, ignore_index, label_smoothing
        As pysafemax.softmax_loss.
    z_loss, return_grad
        As pysafemax.softmax_loss.

    Returns
    -------
    loss : float or ndarray
        A float, or for reduction="none" the per-position losses in the
        logits' dtype.
    grad : ndarray
        Only with ``return_grad=True`` (then a ``(loss, grad)`` tuple):
        d loss / d logits in the logits' shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As pysafemax.softmax_loss, for the same inputs.
    """
    lg = _validation.logits_array(logits, axis)
    t = _validation.targets(labels, lg, weight=weight, ignore_index=ignore_index,
                            label_smoothing=label_smoothing)
    _validation.choice(method, "method", _validation.METHODS)
    _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    z = _validation.z_loss(z_loss)
    return_grad = _validation.flag(return_grad, "return_grad")

    x = _positions_by_classes(lg.array, lg.axis)
    flat_labels = probs = None
    ignored = np.zeros(x.shape[0], dtype=bool)
    if t.labels is not None:
        flat_labels = t.labels.reshape(-1)
        if t.ignore_index is not None:
            ignored = flat_labels == t.ignore_index
        bad = np.flatnonzero(_validation.out_of_range(flat_labels, lg.classes,
                                                      t.ignore_index))
        if bad.size:
            raise _validation.label_out_of_range(t.given_labels, int(bad[0]),
                                                 lg.classes, t.ignore_index)
    else:
        assert t.probs is not None      # no class indices: probabilities
        probs = _positions_by_classes(t.probs, lg.axis)

    with np.errstate(all="ignore"):
        stats = _row_stats(x, method)
        q = _target_mass(x, flat_labels, probs, t.weight, t.label_smoothing, ignored)
        losses = _losses(x, method, stats, q)
        z_mass = np.zeros(x.shape[0])
        if z:
            zv = z * _z_weights(x, flat_labels, t.weight, ignored)
            lse = _log_sum_exp(x, method, stats)
            counted = zv != 0          # 0 * inf would be NaN
            losses[counted] += zv[counted] * lse[counted] ** 2
            z_mass[counted] = 2.0 * zv[counted] * lse[counted]
        losses[ignored] = 0.0
        total = float(losses.sum())
        normalizer = _normalizer(reduction, ignored, flat_labels, t.weight, lg.outer)
        loss: Loss
        if reduction == "none":
            loss = losses.reshape(lg.position_shape).astype(lg.result_dtype)
        elif reduction == "sum":
            loss = total
        else:
            loss = total / normalizer if normalizer else float("nan")
        if not return_grad:
            return loss
        # a mean over no weight: a NaN loss, and so a NaN gradient
        scale = 1.0 if reduction in ("none", "sum") else 1.0 / normalizer if normalizer else np.nan
        grad = _gradient(x, method, stats, q, scale, z_mass)
        grad[ignored] = 0.0
        return loss, _from_positions_by_classes(grad, lg).astype(lg.result_dtype)


def _positions_by_classes(a: NDArray[Any], axis: int) -> NDArray[Any]:
    """The array as a (positions, classes) matrix, the class axis moved last."""
    return np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis])


def _from_positions_by_classes(matrix: NDArray[Any],
                               lg: _validation.Logits) -> NDArray[Any]:
    shape = lg.position_shape + (lg.classes,)
    return np.moveaxis(matrix.reshape(shape), -1, lg.axis)


def softmax(logits: ArrayLike, *, axis: Integer = 1,
            method: str = "stable") -> FloatArray:
    """numpy twin of pysafemax.softmax.

    Parameters
    ----------
    logits, axis, method
        As pysafemax.softmax.

    Returns
    -------
    ndarray
        The probabilities, in the logits' shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As pysafemax.softmax, for the same inputs.
    """
    lg = _validation.logits_array(logits, axis)
    _validation.choice(method, "method", _validation.METHODS)
    x = _positions_by_classes(lg.array, lg.axis)
    with np.errstate(all="ignore"):
        p = _probabilities(x, method, _row_stats(x, method))
        return _from_positions_by_classes(p, lg).astype(lg.result_dtype)


def log_softmax(logits: ArrayLike, *, axis: Integer = 1) -> FloatArray:
    """numpy twin of pysafemax.log_softmax (log domain, stable).

    Parameters
    ----------
    logits, axis
        As pysafemax.log_softmax.

    Returns
    -------
    ndarray
        The log-probabilities, in the logits' shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As pysafemax.log_softmax, for the same inputs.
    """
    lg = _validation.logits_array(logits, axis)
    x = _positions_by_classes(lg.array, lg.axis)
    with np.errstate(all="ignore"):
        shift, _, _, s = _row_stats(x, "stable")
        m = shift.astype(np.float64)
        out = (x.astype(np.float64) - m) - np.log1p(s)[:, None]
        out[~np.isfinite(m[:, 0])] = np.nan
        return _from_positions_by_classes(out, lg).astype(lg.result_dtype)


def softmax_partials(logits_block: ArrayLike, labels: ArrayLike, *,
                     class_offset: int = 0, num_classes: Optional[int] = None,
                     axis: Integer = 1, method: str = "stable",
                     ignore_index: Optional[Integer] = None
                     ) -> dict[str, NDArray[np.float64]]:
    """numpy twin of the state pysafemax.softmax_partials keeps for each
    position of a block of classes.

    Parameters
    ----------
    logits_block, labels, class_offset, num_classes, axis, method, ignore_index
        As pysafemax.softmax_partials (class-index labels only); without
        num_classes, class_offset + the block's classes.

    Returns
    -------
    dict of str to ndarray of float64
        Arrays shaped like the positions: "max" (the shift: the block's
        max, 0 for naive, -inf where no logit is above -inf or the label is
        ignored), "sum_exp" (the double sum of exp(x - max) taken in the
        logits' dtype) and "label_logit" (the label's logit where the block
        holds it, else NaN).

    Raises
    ------
    TypeError, ValueError
        For bad logits, labels or options, as pysafemax.softmax_partials.
    """
    lg = _validation.logits_array(logits_block, axis)
    _validation.choice(method, "method", _validation.METHODS)
    num_classes = class_offset + lg.classes if num_classes is None else num_classes
    t = _validation.targets(labels, lg._replace(classes=num_classes),
                            ignore_index=ignore_index)
    x = _positions_by_classes(lg.array, lg.axis)
    with np.errstate(all="ignore"):
        if method == "naive":
            shift = np.zeros(x.shape[0], dtype=x.dtype)
        else:
            finite_max = np.where(np.isnan(x), -np.inf, x).max(axis=1)
            shift = finite_max.astype(x.dtype)
        e = np.exp(x - shift[:, None]).astype(np.float64)
        e[np.isneginf(shift)] = np.where(np.isnan(x[np.isneginf(shift)]), np.nan, 0.0)
        sum_exp = e.sum(axis=1)
    label_logit = np.full(x.shape[0], np.nan)
    if t.labels is not None:
        local = t.labels.reshape(-1) - class_offset
        held = (local >= 0) & (local < lg.classes)
        label_logit[held] = x[np.flatnonzero(held), local[held]]
        if t.ignore_index is not None:
            ignored = t.labels.reshape(-1) == t.ignore_index
            shift = np.where(ignored, -np.inf, shift)
            sum_exp[ignored] = 0.0
            label_logit[ignored] = np.nan
    return {name: value.astype(np.float64).reshape(lg.position_shape)
            for name, value in (("max", shift), ("sum_exp", sum_exp),
                                ("label_logit", label_logit))}
