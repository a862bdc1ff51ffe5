"""stable against a wider-precision oracle, with the error bound stated in
csrc/row.h: per term, exp's 1 ULP plus the rounding of x_j - m
in the working type; then one final rounding.

The oracle is written here from the mathematics alone (it shares no code with
the kernel or pysafemax.reference) and evaluated in float64 for float32 logits
and in long double for float64 logits.
"""
import numpy as np
import pytest

import pysafemax

WIDTHS = list(range(1, 34)) + [64, 1000, 4099]


def oracle(x, y, wide):
    """(loss, grad-with-unit-scale, bounds) for rows of finite logits x.

    The bounds are the kernel's error bound for each value (see module doc).
    """
    x = x.astype(wide)
    rows = np.arange(x.shape[0])
    argmax = np.argmax(x, axis=1)
    m = x[rows, argmax][:, None]
    t = m - x                                   # >= 0, exactly what exp sees negated
    e = np.exp(-t)
    e[rows, argmax] = 0
    s = e.sum(axis=1)                           # all terms but the argmax's 1
    loss = (m[:, 0] - x[rows, y]) + np.log1p(s)
    p = e / (1 + s[:, None])
    p[rows, argmax] = 1 / (1 + s)
    grad = p.copy()
    grad[rows, y] -= 1
    at_max = y == argmax
    grad[rows[at_max], y[at_max]] = -s[at_max] / (1 + s[at_max])
    return loss, grad, p, t


def error_bounds(dtype, loss, grad, p, t):
    u = float(np.finfo(dtype).eps) / 2          # unit roundoff of the kernel's type
    classes = p.shape[1]
    # exp's error in ULP (glibc: < 1) plus the argument's rounding, per term;
    # the argmax term is exactly 1.  Subnormal exps carry an absolute error.
    # Summing the other classes in double, in any order, adds (C - 1) 2^-53
    # relative to their sum.
    a = (t + 2) * u + (classes - 1) * 2.0 ** -53
    a[t == 0] = 0
    s_err = (p * a).sum(axis=1)
    denormal = classes * float(np.finfo(dtype).smallest_subnormal)
    loss_bound = 2 * (u * np.abs(loss) + s_err) + denormal
    onehot_or_p = np.maximum(p, grad < 0)
    grad_bound = 2 * (u * np.abs(grad) + p * a + s_err[:, None] * onehot_or_p) + denormal
    return loss_bound, grad_bound


def random_case(rng, rows, classes, scale, dtype):
    x = (rng.standard_normal((rows, classes)) * scale).astype(dtype)
    y = rng.integers(0, classes, rows)
    # Half the rows are confident and right: the label is the max by a margin,
    # so the loss is tiny and its relative precision is what is tested.
    confident = rng.random(rows) < 0.5
    margin = rng.uniform(1, 60, rows).astype(dtype)
    x[confident, y[confident]] = x[confident].max(axis=1) + margin[confident]
    return x, y


def oracle_dtype(dtype):
    if dtype == np.float32:
        return np.float64
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("long double is no wider than double here")
    return np.longdouble


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", WIDTHS)
def test_stable_loss_and_grad_within_the_stated_bound(dtype, classes):
    wide = oracle_dtype(dtype)
    rng = np.random.default_rng(classes)
    for scale in (1e-3, 1.0, 30.0, 1e4):
        x, y = random_case(rng, 40, classes, scale, dtype)
        loss, grad = pysafemax.softmax_loss(x, y, reduction="none", return_grad=True)
        want_loss, want_grad, p, t = oracle(x, y, wide)
        loss_bound, grad_bound = error_bounds(dtype, want_loss, want_grad, p, t)
        loss_err = np.abs(loss.astype(wide) - want_loss)
        grad_err = np.abs(grad.astype(wide) - want_grad)
        worst = np.argmax(loss_err / loss_bound)
        assert np.all(loss_err <= loss_bound), (
            f"scale {scale}: row {worst} loss {loss[worst]!r} vs oracle "
            f"{float(want_loss[worst])!r}, bound {float(loss_bound[worst]):.3g}")
        worst = np.unravel_index(np.argmax(grad_err / grad_bound), grad.shape)
        assert np.all(grad_err <= grad_bound), (
            f"scale {scale}: grad{worst} {grad[worst]!r} vs oracle "
            f"{float(want_grad[worst])!r}, bound {float(grad_bound[worst]):.3g}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_and_mean_are_the_oracle_sum(dtype):
    wide = oracle_dtype(dtype)
    rng = np.random.default_rng(7)
    x, y = random_case(rng, 500, 37, 5.0, dtype)
    want = oracle(x, y, wide)[0]
    total = pysafemax.softmax_loss(x, y, reduction="sum")
    mean = pysafemax.softmax_loss(x, y, reduction="mean")
    rel = 8 * float(np.finfo(dtype).eps)
    assert abs(total - float(want.sum())) <= rel * float(want.sum())
    assert abs(mean - float(want.mean())) <= rel * float(want.mean())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_softmax_within_the_stated_bound(dtype):
    wide = oracle_dtype(dtype)
    rng = np.random.default_rng(11)
    x, y = random_case(rng, 64, 19, 20.0, dtype)
    got = pysafemax.log_softmax(x).astype(wide)
    xw = x.astype(wide)
    m = xw.max(axis=1, keepdims=True)
    e = np.exp(xw - m)
    want = (xw - m) - np.log(e.sum(axis=1, keepdims=True))
    u = float(np.finfo(dtype).eps) / 2
    t = m - xw
    bound = 2 * u * (np.abs(want) + ((t + 2) * e / e.sum(axis=1, keepdims=True)).sum(axis=1, keepdims=True))
    bound += 64 * float(np.finfo(wide).eps) * np.abs(want)   # the oracle's own log(sum)
    assert np.all(np.abs(got - want) <= bound)
