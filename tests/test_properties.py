"""Property tests (Hypothesis) over shapes, scales, dtypes, layouts, special
values and every option of softmax_loss.

- stable agrees with a wider oracle (pysafemax.reference evaluated in float64
  for float32 logits, in long double for float64 logits) within the bound
  stated in oracle_tolerance below, for the loss and the gradient;
- every method agrees with its numpy reference within check_tolerance, with
  the same NaNs and infinities, also when special values are injected.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import pysafemax
from pysafemax import reference

SPECIALS = {
    np.float32: [np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45, -1e-40, 88.8, -104.0],
    np.float64: [np.inf, -np.inf, np.nan, 1e308, -1e308, 5e-324, -1e-310, 709.9, -746.0],
}
LAYOUTS = ["C", "F", "strided", "reversed"]


@st.composite
def problems(draw, specials=False, dtypes=(np.float32, np.float64)):
    dtype = draw(st.sampled_from(dtypes))
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    shape[axis] = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100]))
    scale = 10.0 ** draw(st.floats(-3, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    if specials and x.size:
        for _ in range(draw(st.integers(1, 4))):
            x.flat[rng.integers(x.size)] = draw(st.sampled_from(SPECIALS[dtype]))
    position_shape = tuple(np.delete(shape, axis % ndim))
    classes = shape[axis]
    options = {"axis": axis, "reduction": draw(st.sampled_from(pysafemax.REDUCTIONS))}
    if draw(st.booleans()):
        options["weight"] = rng.uniform(0.0, 3.0, classes)
    if draw(st.booleans()):
        options["label_smoothing"] = draw(st.floats(0.0, 1.0))
    if draw(st.integers(0, 3)) == 0:
        labels = rng.random(shape).astype(dtype)
    else:
        labels = rng.integers(0, classes, position_shape)
        if draw(st.booleans()) and x.size:
            # Confident and right: the label is the max by a margin, so the
            # loss is tiny and its relative precision is what gets tested.
            moved = np.moveaxis(x, axis, -1)
            top = moved.max(axis=-1, keepdims=True)
            margin = draw(st.floats(1.0, 80.0))
            np.put_along_axis(moved, labels[..., None], top + moved.dtype.type(margin), -1)
        if draw(st.booleans()):
            options["ignore_index"] = draw(st.sampled_from([-100, 0, classes - 1]))
            labels = np.where(rng.random(position_shape) < 0.3,
                              options["ignore_index"], labels)
    layout = draw(st.sampled_from(LAYOUTS))
    return lay_out(x, layout), labels, options


def lay_out(x, layout):
    """The same values in another memory layout."""
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "strided":
        wide = np.full(x.shape[:-1] + (2 * x.shape[-1],) if x.ndim else (), np.nan, x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if layout == "reversed":
        return np.ascontiguousarray(x[::-1])[::-1] if x.ndim else x
    return x


def oracle_tolerance(x, labels, options, oracle_loss, oracle_grad):
    """The stable method's error bound for float32, per position and class
    (reduction "none"), in the notation of the header's psm_options: with u
    the unit roundoff, p the softmax, t_j = max - x_j, q the target mass,
    Q = sum_j q_j, e_j = t_j + 2 off the max (0 at it: that term is exactly 1),
    S = sum_j p_j e_j and P = sum of p_j off the max,
        |loss error|   <= 8u |loss| + Q (8u S + C 2^-53 P)
        |grad_j error| <= 8u (|g_j| + Q p_j e_j) + Q (8u S + C 2^-53 P) max(p_j, q_j / Q)
    plus C subnormals.  The terms are exp's error and the rounding of
    x_j - max (per class, as in csrc/row.h), the double sum over
    C classes, and the final rounding."""
    axis = options["axis"] % x.ndim
    xw = np.moveaxis(x.astype(np.float64), axis, -1)
    classes = xw.shape[-1]
    t = xw.max(axis=-1, keepdims=True) - xw
    p = np.exp(-t)
    p /= p.sum(axis=-1, keepdims=True)
    q = target_mass(xw, labels, options, axis)
    mass = q.sum(axis=-1, keepdims=True)
    # The max's own term is exactly 1 and left out of the sum: no error.
    term = np.where(t > 0, t + 2, 0.0)
    off_max = np.where(t > 0, p, 0.0).sum(axis=-1, keepdims=True)
    spread = (p * term).sum(axis=-1, keepdims=True)
    u = float(np.finfo(x.dtype).eps) / 2
    tiny = classes * float(np.finfo(x.dtype).smallest_subnormal)
    summation = classes * 2.0 ** -53 * off_max
    loss_tol = (8 * u * np.abs(oracle_loss)
                + mass[..., 0] * (8 * u * spread[..., 0] + summation[..., 0]) + tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(mass > 0, q / mass, 0)
    grad_tol = (8 * u * (np.moveaxis(np.abs(oracle_grad), axis, -1) + mass * p * term)
                + mass * (8 * u * spread + summation) * np.maximum(p, share) + tiny)
    return loss_tol, np.moveaxis(grad_tol, -1, axis)


def target_mass(xw, labels, options, axis):
    classes = xw.shape[-1]
    w = options.get("weight", np.ones(classes))
    eps = options.get("label_smoothing", 0.0)
    if np.asarray(labels).dtype.kind == "f":
        probs = np.moveaxis(np.asarray(labels, np.float64), axis, -1)
        return w * ((1 - eps) * probs + eps / classes)
    y = np.asarray(labels)
    q = np.broadcast_to(eps / classes * w, xw.shape).copy()
    ignored = y == options.get("ignore_index", object())
    yy = np.where(ignored, 0, y)
    np.put_along_axis(q, yy[..., None], np.take_along_axis(q, yy[..., None], -1)
                      + (1 - eps) * w[yy][..., None], -1)
    q[ignored] = 0
    return q


@given(problems(dtypes=(np.float32,)))
# Found by the long profile: the reference once took Q - q_max for the mass
# off the max, which cancels when the smoothing is tiny.
@example((np.array([28.640423, -0.13210486, 0.64042264], np.float32), np.array(0),
          {"axis": 0, "reduction": "mean", "label_smoothing": 2.0 ** -52}))
def test_stable_agrees_with_a_float64_oracle(problem):
    x, labels, options = problem
    options = {**options, "reduction": "none"}
    loss, grad = pysafemax.softmax_loss(x, labels, return_grad=True, **options)
    # The oracle: the same mathematics evaluated in float64 on the same values.
    wide_labels = labels.astype(np.float64) if labels.dtype.kind == "f" else labels
    want_loss, want_grad = reference.softmax_loss(
        x.astype(np.float64), wide_labels, return_grad=True, **options)
    loss_tol, grad_tol = oracle_tolerance(x, labels, options, want_loss, want_grad)
    loss_err = np.abs(loss.astype(np.float64) - want_loss)
    grad_err = np.abs(grad.astype(np.float64) - want_grad)
    assert np.all(loss_err <= loss_tol), (loss_err.max(), options)
    assert np.all(grad_err <= grad_tol), (grad_err.max(), options)


@given(problems(specials=True), st.sampled_from(pysafemax.METHODS))
def test_every_method_agrees_with_its_reference(problem, method):
    x, labels, options = problem
    got = pysafemax.softmax_loss(x, labels, method=method, return_grad=True, **options)
    want = reference.softmax_loss(x, labels, method=method, return_grad=True, **options)
    tol = pysafemax.check_tolerance(x.dtype, x.shape[options["axis"]])
    for ours, theirs in zip(got, want):
        ours = np.asarray(ours, np.float64)
        theirs = np.asarray(theirs, np.float64)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs))
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
        finite = np.isfinite(theirs)
        assert np.all(np.abs(ours[finite] - theirs[finite])
                      <= tol * (1 + np.abs(theirs[finite])))


@given(problems(specials=True), st.sampled_from(pysafemax.METHODS))
def test_softmax_and_log_softmax_agree_with_the_reference(problem, method):
    x, _, options = problem
    tol = pysafemax.check_tolerance(x.dtype, x.shape[options["axis"]])
    pairs = [(pysafemax.softmax(x, axis=options["axis"], method=method),
              reference.softmax(x, axis=options["axis"], method=method)),
             (pysafemax.log_softmax(x, axis=options["axis"]),
              reference.log_softmax(x, axis=options["axis"]))]
    for ours, theirs in pairs:
        ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        finite = np.isfinite(theirs)
        np.testing.assert_array_equal(ours[~finite & ~np.isnan(theirs)],
                                      theirs[~finite & ~np.isnan(theirs)])
        assert np.all(np.abs(ours[finite] - theirs[finite])
                      <= tol * (1 + np.abs(theirs[finite])))
