"""Gradients against central finite differences of the loss, in float64."""
import numpy as np
import pytest

import pysafemax


def finite_difference_grad(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = h * max(1.0, abs(x[idx]))
        up, down = x.copy(), x.copy()
        up[idx] += step
        down[idx] -= step
        grad[idx] = (f(up) - f(down)) / (2 * step)
    return grad


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (4, 7), (2, 17)])
def test_gradient_matches_finite_differences(method, reduction, shape):
    rng = np.random.default_rng(shape[1])
    x = rng.standard_normal(shape) * 3
    y = rng.integers(0, shape[1], shape[0])
    _, grad = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                     return_grad=True)
    numeric = finite_difference_grad(
        lambda z: pysafemax.softmax_loss(z, y, method=method, reduction=reduction), x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_none_reduction_gradient_is_the_gradient_of_the_sum():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6))
    y = rng.integers(0, 6, 5)
    _, per_row = pysafemax.softmax_loss(x, y, reduction="none", return_grad=True)
    _, summed = pysafemax.softmax_loss(x, y, reduction="sum", return_grad=True)
    np.testing.assert_array_equal(per_row, summed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_gradient_rows_sum_to_zero(dtype):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((64, 33)) * 10).astype(dtype)
    y = rng.integers(0, 33, 64)
    _, grad = pysafemax.softmax_loss(x, y, reduction="sum", return_grad=True)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(grad.astype(np.float64).sum(axis=1)) <= 33 * eps)
