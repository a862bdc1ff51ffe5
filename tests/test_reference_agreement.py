"""Every kernel path against its numpy reference, on widths that exercise
every vector tail, and check=True itself."""
import numpy as np
import pytest

import pysafemax
from pysafemax import reference

WIDTHS = list(range(1, 34)) + [1000, 32003]
DTYPES = [np.float32, np.float64]


def assert_matches(got, want, tol, what):
    """Same NaNs, same infinities, finite values within tol (relative and absolute)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)],
                                  want[~finite & ~np.isnan(want)], err_msg=what)
    err = np.abs(got[finite] - want[finite])
    limit = tol * (1 + np.abs(want[finite]))
    if err.size:
        worst = np.argmax(err / limit)
        assert np.all(err <= limit), (
            f"{what}: {got[finite][worst]!r} vs reference {want[finite][worst]!r}")


def logits(rng, rows, classes, dtype, scale):
    return (rng.standard_normal((rows, classes)) * scale).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", WIDTHS)
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_loss_and_grad_match_the_reference(method, classes, dtype):
    rng = np.random.default_rng(classes)
    # 25 rows: plain rows are finished sixteen, then eight, then one at a time
    rows = 3 if classes > 10000 else 25
    tol = pysafemax.check_tolerance(dtype, classes)
    # Scale 40 takes naive past exp's overflow in float32 on some rows.
    for scale in (0.1, 5.0, 40.0):
        x = logits(rng, rows, classes, dtype, scale)
        y = rng.integers(0, classes, rows)
        for reduction in pysafemax.REDUCTIONS:
            got = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                         return_grad=True)
            want = reference.softmax_loss(x, y, method=method, reduction=reduction,
                                          return_grad=True)
            what = f"{method} C={classes} scale={scale} {reduction}"
            assert_matches(got[0], want[0], tol, what + " loss")
            assert_matches(got[1], want[1], tol, what + " grad")
            assert got[1].dtype == dtype
            # the forward alone takes its own sweep and finish
            forward = pysafemax.softmax_loss(x, y, method=method, reduction=reduction)
            assert_matches(forward, want[0], tol, what + " forward loss")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 1000])
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_softmax_matches_the_reference(method, classes, dtype):
    rng = np.random.default_rng(100 + classes)
    tol = pysafemax.check_tolerance(dtype, classes)
    for scale in (0.1, 5.0, 40.0):
        x = logits(rng, 9, classes, dtype, scale)
        assert_matches(pysafemax.softmax(x, method=method),
                       reference.softmax(x, method=method), tol, f"{method} softmax")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 2, 7, 8, 9, 16, 17, 33, 1000])
def test_log_softmax_matches_the_reference(classes, dtype):
    rng = np.random.default_rng(200 + classes)
    tol = pysafemax.check_tolerance(dtype, classes)
    for scale in (0.1, 5.0, 1e4):
        # 25 rows: sixteen finished at once, then eight, then one
        x = logits(rng, 25, classes, dtype, scale)
        assert_matches(pysafemax.log_softmax(x), reference.log_softmax(x), tol,
                       "log_softmax")


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("return_grad", [False, True])
def test_check_passes_on_agreeing_results(method, return_grad):
    rng = np.random.default_rng(3)
    x = logits(rng, 50, 13, np.float32, 50.0)
    y = rng.integers(0, 13, 50)
    checked = pysafemax.softmax_loss(x, y, method=method, return_grad=return_grad,
                                     check=True)
    plain = pysafemax.softmax_loss(x, y, method=method, return_grad=return_grad)
    # naive overflows at this scale: its NaNs are part of what must agree.
    if return_grad:
        np.testing.assert_array_equal(checked[0], plain[0])
        np.testing.assert_array_equal(checked[1], plain[1])
    else:
        np.testing.assert_array_equal(checked, plain)


def _skewed_reference(row, amount, grad_only=False):
    real = reference.softmax_loss

    def skewed(*args, **kwargs):
        result = real(*args, **kwargs)
        loss, grad = result if isinstance(result, tuple) else (result, None)
        target = grad if grad_only else loss
        if target is not None and np.ndim(target):
            target = target.copy()
            target.reshape(target.shape[0], -1)[row, 0] += amount
            if grad_only:
                return loss, target
            return (target, grad) if grad is not None else target
        return result
    return skewed


@pytest.mark.parametrize("grad_only", [False, True])
def test_check_names_the_worst_row_on_disagreement(monkeypatch, grad_only):
    rng = np.random.default_rng(4)
    x = logits(rng, 20, 5, np.float64, 1.0)
    y = rng.integers(0, 5, 20)
    monkeypatch.setattr(pysafemax._core.reference, "softmax_loss",
                        _skewed_reference(row=13, amount=1e-3, grad_only=grad_only))
    with pytest.raises(pysafemax.ReferenceMismatchError,
                       match=r"(loss|gradient) disagrees .* at row 13\b"):
        pysafemax.softmax_loss(x, y, return_grad=True, check=True)


def test_check_flags_a_nan_the_reference_does_not_have(monkeypatch):
    x = np.zeros((4, 3), dtype=np.float32)
    y = [0, 1, 2, 0]
    monkeypatch.setattr(pysafemax._core.reference, "softmax_loss",
                        _skewed_reference(row=2, amount=np.nan))
    with pytest.raises(pysafemax.ReferenceMismatchError, match=r"at row 2\b"):
        pysafemax.softmax_loss(x, y, check=True)


def test_check_tolerance_is_documented_and_grows_with_classes():
    assert pysafemax.check_tolerance(np.float32, 10) < 1e-6
    assert pysafemax.check_tolerance(np.float64, 10) < 1e-14
    assert pysafemax.check_tolerance(np.float64, 10**6) > pysafemax.check_tolerance(np.float64, 10)


def random_options_case(seed):
    """Logits of 1 to 4 dims with a random class axis, and random options."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[seed % 2]
    classes = int(rng.choice([1, 2, 3, 8, 9, 17]))
    ndim = int(rng.integers(1, 5))
    shape = [int(rng.integers(1, 4)) for _ in range(ndim)]
    axis = int(rng.integers(-ndim, ndim))
    shape[axis] = classes
    x = (rng.standard_normal(shape) * rng.choice([0.5, 10.0, 60.0])).astype(dtype)
    position_shape = tuple(np.delete(shape, axis % ndim))
    options = {"axis": axis,
               "reduction": str(rng.choice(pysafemax.REDUCTIONS))}
    if rng.random() < 0.5:
        options["weight"] = rng.uniform(0.0, 2.0, classes)
    if rng.random() < 0.5:
        options["label_smoothing"] = float(rng.choice([0.05, 0.3, 1.0]))
    if rng.random() < 0.3:
        labels = rng.random(shape).astype(dtype)
    else:
        labels = rng.integers(0, classes, position_shape)
        if rng.random() < 0.5:
            options["ignore_index"] = -100
            labels = np.where(rng.random(position_shape) < 0.4, -100, labels)
    return x, labels, options


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("seed", range(60))
def test_every_option_matches_the_reference(method, seed):
    x, labels, options = random_options_case(seed)
    got = pysafemax.softmax_loss(x, labels, method=method, return_grad=True, **options)
    want = reference.softmax_loss(x, labels, method=method, return_grad=True, **options)
    tol = pysafemax.check_tolerance(x.dtype, x.shape[options["axis"]])
    what = f"{method} {x.shape} {options}"
    assert_matches(got[0], want[0], tol, what + " loss")
    assert_matches(got[1], want[1], tol, what + " grad")
    # check=True runs the same comparison inside the library.
    pysafemax.softmax_loss(x, labels, method=method, check=True, **options)
