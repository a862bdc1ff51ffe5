"""Directed special values (issue 2, "Special values" and the method
definitions), each checked against a value worked out by hand, then a sweep
checking that the kernel and pysafemax.reference put NaN and +-inf in the same
places for all of them.

Losses are read with reduction="none" and gradients with reduction="sum", whose
scale is 1, so a gradient entry is p_j - [j == y] itself.
"""
import math

import numpy as np
import pytest

import pysafemax
from pysafemax import reference

inf, nan = np.inf, np.nan
FLT_MIN_LOSS = pysafemax.FLT_MIN_LOSS
# Caffe's SoftmaxWithLoss<double> clamps at FLT_MIN too: -ln(FLT_MIN) in double.
FLT_MIN_LOSS_F64 = 87.3365447505531
MODULES = [pytest.param(pysafemax, id="kernel"), pytest.param(reference, id="reference")]
FLOATS = [np.float32, np.float64]
METHODS = pysafemax.METHODS
CLAMP = {np.float32: FLT_MIN_LOSS, np.float64: FLT_MIN_LOSS_F64}
# Relative accuracy asked of a hand-computed, non-exact expectation.
REL = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-13}


def losses(module, logits, labels, method, dtype=np.float32):
    return module.softmax_loss(np.array(logits, dtype), labels, method=method,
                               reduction="none")


def grad(module, logits, labels, method, dtype=np.float32):
    return module.softmax_loss(np.array(logits, dtype), labels, method=method,
                               reduction="sum", return_grad=True)[1]


def logsumexp(row):
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row))


def assert_bits_equal(got, expected):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    width = f"u{got.dtype.itemsize}"
    np.testing.assert_array_equal(np.ascontiguousarray(got).view(width),
                                  np.ascontiguousarray(expected).view(width))


# --- -inf masks its class ------------------------------------------------------

MASK_ROW = [1.5, 0.25, -2.0, 0.75]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("where", [0, 2, 4])
def test_neg_inf_logit_masks_its_class(module, dtype, method, where):
    masked = MASK_ROW[:where] + [-inf] + MASK_ROW[where:]
    kept = [j for j in range(len(masked)) if j != where]
    for label_in_kept, label in enumerate(kept):
        got = losses(module, [masked], [label], method, dtype)
        removed = losses(module, [MASK_ROW], [label_in_kept], method, dtype)
        assert_bits_equal(got, removed)
        exact = logsumexp(MASK_ROW) - MASK_ROW[label_in_kept]
        assert got[0] == pytest.approx(exact, rel=REL[dtype])

        g = grad(module, [masked], [label], method, dtype)
        assert g[0, where] == 0
        assert_bits_equal(g[:, kept], grad(module, [MASK_ROW], [label_in_kept],
                                           method, dtype))

    p = module.softmax(np.array([masked], dtype), method=method)
    assert p[0, where] == 0
    assert_bits_equal(p[:, kept], module.softmax(np.array([MASK_ROW], dtype),
                                                 method=method))
    logp = module.log_softmax(np.array([masked], dtype))
    assert logp[0, where] == -inf
    assert_bits_equal(logp[:, kept], module.log_softmax(np.array([MASK_ROW], dtype)))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_label_on_neg_inf_logit(module, dtype):
    row = [[1.0, -inf, 2.0]]
    assert losses(module, row, [1], "stable", dtype)[0] == inf
    for reduction in ("mean", "sum"):
        assert module.softmax_loss(np.array(row, dtype), [1], reduction=reduction) == inf
    # naive and maxsub are Caffe's formula: p_y = 0 is clamped to TINY.
    for method in ("naive", "maxsub"):
        assert losses(module, row, [1], method, dtype)[0] == dtype(CLAMP[dtype])
    for method in METHODS:
        g = grad(module, row, [1], method, dtype)
        assert g[0, 1] == -1
        assert np.all(np.isfinite(g))
        assert g[0, 0] == pytest.approx(1 / (1 + math.e), rel=REL[dtype])


# --- NaN and +inf poison their own row only ------------------------------------

def _rows_with(bad_row):
    return [[0.5, -1.0, 2.0, 0.0], bad_row, [3.0, 3.0, -0.5, 1.0]]


NAN_ROWS = {
    "nan_first": [nan, 1.0, 2.0, 0.5],
    "nan_at_max": [1.0, nan, 5.0, 0.5],
    "nan_last": [1.0, 0.0, 2.0, nan],
    "all_nan": [nan, nan, nan, nan],
    "nan_and_neg_inf": [-inf, nan, 1.0, 0.0],
    "nan_and_pos_inf": [inf, nan, 1.0, 0.0],
}


def _assert_other_rows_alone(module, x, labels, method, bad):
    """Rows other than `bad` give, bit for bit, what they give on their own."""
    got_losses = module.softmax_loss(x, labels, method=method, reduction="none")
    got_grad = module.softmax_loss(x, labels, method=method, reduction="sum",
                                   return_grad=True)[1]
    got_p = module.softmax(x, method=method)
    got_logp = module.log_softmax(x)
    for r in range(len(x)):
        if r == bad:
            continue
        alone = x[r:r + 1]
        assert_bits_equal(got_losses[r:r + 1], module.softmax_loss(
            alone, labels[r:r + 1], method=method, reduction="none"))
        assert_bits_equal(got_grad[r:r + 1], module.softmax_loss(
            alone, labels[r:r + 1], method=method, reduction="sum",
            return_grad=True)[1])
        assert_bits_equal(got_p[r:r + 1], module.softmax(alone, method=method))
        assert_bits_equal(got_logp[r:r + 1], module.log_softmax(alone))
    return got_losses, got_grad, got_p, got_logp


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("row", list(NAN_ROWS))
@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_nan_makes_its_row_nan_and_only_its_row(module, dtype, method, row, label):
    x = np.array(_rows_with(NAN_ROWS[row]), dtype)
    labels = np.array([2, label, 0])
    loss, g, p, logp = _assert_other_rows_alone(module, x, labels, method, bad=1)
    assert np.isnan(loss[1])
    assert np.isnan(g[1]).all()
    assert np.isnan(p[1]).all()
    assert np.isnan(logp[1]).all()
    assert not np.isnan(loss[[0, 2]]).any()
    assert math.isnan(module.softmax_loss(x, labels, method=method))
    assert math.isnan(module.softmax_loss(x, labels, method=method, reduction="sum"))


POS_INF_ROWS = {
    "inf_first": [inf, 1.0, 2.0, 0.5],
    "inf_middle": [1.0, inf, 2.0, 0.5],
    "two_infs": [inf, 0.0, inf, -1.0],
    "inf_and_neg_inf": [-inf, 1.0, inf, 0.0],
    "all_inf": [inf, inf, inf, inf],
}


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", ["maxsub", "stable"])
@pytest.mark.parametrize("row", list(POS_INF_ROWS))
@pytest.mark.parametrize("label", [0, 1, 3])
def test_pos_inf_makes_its_row_nan_for_maxsub_and_stable(module, dtype, method,
                                                         row, label):
    x = np.array(_rows_with(POS_INF_ROWS[row]), dtype)
    labels = np.array([1, label, 3])
    loss, g, p, logp = _assert_other_rows_alone(module, x, labels, method, bad=1)
    assert np.isnan(loss[1])
    assert np.isnan(g[1]).all()
    assert np.isnan(p[1]).all()
    assert np.isnan(logp[1]).all()
    assert not np.isnan(loss[[0, 2]]).any()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_pos_inf_under_naive_is_the_seed_formula(module, dtype):
    # exp(+inf) = inf, so s = inf: the +inf class gets inf/inf = nan, every
    # finite class e/inf = 0, clamped to TINY.
    x = np.array(_rows_with([1.0, inf, 2.0, 0.5]), dtype)
    for label, expected in ((1, nan), (0, CLAMP[dtype]), (3, CLAMP[dtype])):
        labels = np.array([1, label, 3])
        loss, g, p, logp = _assert_other_rows_alone(module, x, labels, "naive", bad=1)
        np.testing.assert_array_equal(loss[1], dtype(expected))
        expected_g = np.array([0.0, nan, 0.0, 0.0], dtype)
        expected_g[label] -= 1
        np.testing.assert_array_equal(g[1], expected_g)
        np.testing.assert_array_equal(p[1], np.array([0, nan, 0, 0], dtype))
        assert np.isnan(logp[1]).all()


# --- the seed and the clamp ----------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
def test_seed_naive_100_20(module):
    seed = [[100.0, 20.0]]
    assert FLT_MIN_LOSS == 87.3365478515625
    got = losses(module, seed + seed, [0, 1], "naive")
    assert np.isnan(got[0])
    assert got[1] == np.float32(87.3365478515625)
    assert got[1] == np.float32(FLT_MIN_LOSS)
    np.testing.assert_array_equal(module.softmax(np.array(seed, np.float32),
                                                 method="naive"),
                                  np.array([[nan, 0.0]], np.float32))
    np.testing.assert_array_equal(grad(module, seed, [0], "naive"), [[nan, 0.0]])
    np.testing.assert_array_equal(grad(module, seed, [1], "naive"), [[nan, -1.0]])


@pytest.mark.parametrize("module", MODULES)
def test_maxsub_clamps_where_stable_is_exact(module):
    row = [[0.0, 100.0]]
    assert losses(module, row, [0], "maxsub")[0] == np.float32(FLT_MIN_LOSS)
    assert losses(module, row, [0], "stable")[0] == np.float32(100.0)
    assert module.softmax_loss(np.array(row, np.float32), [0], method="stable",
                               reduction="sum") == 100.0
    np.testing.assert_array_equal(grad(module, row, [0], "maxsub"), [[-1.0, 1.0]])
    np.testing.assert_array_equal(grad(module, row, [0], "stable"), [[-1.0, 1.0]])
    np.testing.assert_array_equal(module.log_softmax(np.array(row, np.float32))[0, 0],
                                  np.float32(-100.0))


GAPS = [10, 50, 87, 88, 89, 100, 1000]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("gap", GAPS)
def test_gap_table_float32(module, gap):
    # logits {0, gap}, label 0: the true loss is gap + log1p(exp(-gap)).
    true = gap + math.log1p(math.exp(-gap))
    row = [[0.0, float(gap)]]
    assert losses(module, row, [0], "stable")[0] == pytest.approx(true, rel=2e-7)
    clamped = math.exp(-gap) < np.finfo(np.float32).tiny      # gap >= 88
    for method in ("naive", "maxsub"):
        got = losses(module, row, [0], method)[0]
        if clamped:
            assert got == np.float32(FLT_MIN_LOSS), method
        else:
            assert got == pytest.approx(true, rel=2e-6), method
    # label 1 (the max) under naive: exp(gap) overflows float32 above 88.72.
    top = losses(module, row, [1], "naive")[0]
    if gap >= 89:
        assert np.isnan(top)
    else:
        assert top == pytest.approx(math.log1p(math.exp(-gap)), abs=1e-6)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("gap, clamped", [(80, False), (87, False), (87.3365, False),
                                          (87.3366, True), (88, True), (700, True),
                                          (709, True), (1000, True), (1e300, True)])
def test_maxsub_float64_clamps_at_flt_min_loss_as_caffe_double(module, gap, clamped):
    # Caffe's SoftmaxWithLoss<double>: loss -= log(max(p, Dtype(FLT_MIN))).
    row = [[0.0, gap]]
    got = losses(module, row, [0], "maxsub", np.float64)[0]
    if clamped:
        assert got == FLT_MIN_LOSS_F64 == -math.log(np.finfo(np.float32).tiny)
    else:
        assert got == pytest.approx(gap, rel=1e-13)
        assert got < FLT_MIN_LOSS_F64
    assert losses(module, row, [0], "stable", np.float64)[0] == gap


# --- stable is exact where the others are not ----------------------------------

@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_equal_huge_logits_give_ln2(module, dtype):
    row = np.array([[1e8, 1e8]], dtype)
    assert row[0, 0] == 1e8
    for method in ("stable", "maxsub"):
        got = module.softmax_loss(row, [0], method=method, reduction="none")
        assert got[0] == dtype(math.log(2))
        total = module.softmax_loss(row, [1], method=method, reduction="sum")
        assert total == pytest.approx(math.log(2), rel=REL[dtype])
    assert abs(module.softmax_loss(row, [0], reduction="sum") - math.log(2)) <= 2**-52
    # naive: exp(1e8) overflows float32 and float64 alike, inf / inf = nan.
    assert np.isnan(module.softmax_loss(row, [0], method="naive", reduction="none")[0])
    np.testing.assert_array_equal(module.softmax(row), np.array([[0.5, 0.5]], dtype))
    np.testing.assert_array_equal(module.log_softmax(row),
                                  np.array([[-math.log(2)] * 2], dtype))
    np.testing.assert_array_equal(grad(module, row, [1], "stable", dtype), [[0.5, -0.5]])


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_all_neg_inf_row_is_nan_for_stable(module, dtype):
    x = np.array(_rows_with([-inf] * 4), dtype)
    labels = np.array([0, 2, 1])
    loss, g, p, logp = _assert_other_rows_alone(module, x, labels, "stable", bad=1)
    assert np.isnan(loss[1])
    assert np.isnan(g[1]).all() and np.isnan(p[1]).all() and np.isnan(logp[1]).all()
    assert not np.isnan(loss[[0, 2]]).any()


F32 = np.float32


@pytest.mark.parametrize("module", MODULES)
def test_huge_finite_logits_float32_stable(module):
    a, b = float(F32(3e38)), float(F32(2e38))
    x = np.array([[3e38, 3e38], [3e38, 2e38], [-3e38, -3e38], [-3e38, -3e38],
                  [3e38, -3e38], [3e38, 2e38]], F32)
    labels = np.array([0, 1, 0, 1, 1, 0])
    got = module.softmax_loss(x, labels, reduction="none")
    assert got[0] == F32(math.log(2))
    assert got[1] == F32(a - b)                     # exact: (m - x_y) + log1p(0)
    assert got[2] == got[3] == F32(math.log(2))
    assert got[5] == 0
    assert module.softmax_loss(x[1:2], [1], reduction="sum") == a - b
    # 6e38 is past float32's range, but the double sum holds it exactly.
    total = module.softmax_loss(x[4:5], [1], reduction="sum")
    assert math.isfinite(total) and total == 2 * a
    g = module.softmax_loss(x, labels, reduction="sum", return_grad=True)[1]
    np.testing.assert_array_equal(g[[1, 4]], [[1.0, -1.0], [1.0, -1.0]])
    np.testing.assert_array_equal(g[5], [0.0, 0.0])
    np.testing.assert_array_equal(g[[0, 2]], [[-0.5, 0.5], [-0.5, 0.5]])
    np.testing.assert_array_equal(module.softmax(x[1:2]), [[1.0, 0.0]])
    np.testing.assert_array_equal(module.log_softmax(x[1:2]), [[0.0, F32(b - a)]])


@pytest.mark.parametrize("module", MODULES)
def test_huge_finite_logits_float64_stable(module):
    x = np.array([[3e38, -3e38], [1e308, -1e308], [1e308, 1e308]], np.float64)
    got = module.softmax_loss(x, [1, 0, 1], reduction="none")
    np.testing.assert_array_equal(got, [6e38, 0.0, math.log(2)])
    np.testing.assert_array_equal(module.softmax(x[:2]), [[1.0, 0.0], [1.0, 0.0]])
    assert module.log_softmax(x[:1])[0, 1] == -6e38


@pytest.mark.parametrize("module", MODULES)
def test_huge_finite_logits_under_naive_and_maxsub(module):
    x = np.array([[3e38, 0.0]], F32)
    assert np.isnan(losses(module, x, [0], "naive")[0])              # inf / inf
    assert losses(module, x, [1], "naive")[0] == F32(FLT_MIN_LOSS)   # 1 / inf = 0
    x = np.array([[3e38, 2e38]], F32)
    assert np.isnan(losses(module, x, [1], "naive")[0])              # both overflow
    assert losses(module, x, [0], "maxsub")[0] == 0
    assert losses(module, x, [1], "maxsub")[0] == F32(FLT_MIN_LOSS)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype, row", [
    (np.float32, [1e-40, -1e-40, 0.0, 1e-45]),
    (np.float32, [-1e-45, 1e-45, 1e-38, -1e-38]),
    (np.float64, [5e-324, -5e-324, 0.0, 1e-310]),
])
def test_denormal_logits_are_four_equal_classes(module, method, dtype, row):
    x = np.array([row], dtype)
    assert (x[0] != 0).sum() >= 3 and (np.abs(x[0]) < np.finfo(dtype).tiny).all()
    for label in range(4):
        got = module.softmax_loss(x, [label], method=method, reduction="none")[0]
        assert got == pytest.approx(math.log(4), rel=REL[dtype])
        g = module.softmax_loss(x, [label], method=method, reduction="sum",
                                return_grad=True)[1][0]
        expected = np.full(4, 0.25)
        expected[label] -= 1
        np.testing.assert_allclose(g, expected, rtol=REL[dtype], atol=REL[dtype])
    np.testing.assert_allclose(module.softmax(x, method=method), [[0.25] * 4],
                               rtol=REL[dtype])
    np.testing.assert_allclose(module.log_softmax(x), [[-math.log(4)] * 4],
                               rtol=REL[dtype])


@pytest.mark.parametrize("module", MODULES)
def test_stable_keeps_a_denormal_loss(module):
    # log1p(exp(-740)) = exp(-740) = 4.2e-322, a float64 denormal, not 0.
    got = losses(module, [[0.0, -740.0]], [0], "stable", np.float64)[0]
    assert 0 < got < np.finfo(np.float64).tiny
    assert got == pytest.approx(math.exp(-740), rel=0.02)


# --- one class -------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", ["stable", "maxsub"])
def test_one_class_loss_is_zero(module, dtype, method):
    values = [0.0, 5.0, -7.5, 60000.0, -60000.0]
    if dtype is not np.float16:
        values += [1e30, -1e30, 3e38, -3e38]
    x = np.array(values, dtype)[:, None]
    labels = np.zeros(len(values), np.int64)
    for reduction in pysafemax.REDUCTIONS:
        loss, g = module.softmax_loss(x, labels, method=method, reduction=reduction,
                                      return_grad=True)
        assert np.all(np.asarray(loss) == 0)
        assert g.shape == x.shape and np.all(g == 0)
    np.testing.assert_array_equal(module.softmax(x, method=method), np.ones_like(x))
    np.testing.assert_array_equal(module.log_softmax(x), np.zeros_like(x))


@pytest.mark.parametrize("module", MODULES)
def test_one_class_naive(module):
    x = np.array([[0.0], [5.0], [-30.0], [100.0]], F32)
    got = module.softmax_loss(x, [0, 0, 0, 0], method="naive", reduction="none")
    np.testing.assert_array_equal(got[:3], [0.0, 0.0, 0.0])
    assert np.isnan(got[3])                                       # inf / inf


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("value", [-inf, inf, nan])
def test_one_class_non_finite_is_nan_for_stable(module, value):
    x = np.array([[value], [2.0]], F32)
    loss, g = module.softmax_loss(x, [0, 0], reduction="none", return_grad=True)
    assert np.isnan(loss[0]) and np.isnan(g[0, 0])
    assert loss[1] == 0 and g[1, 0] == 0


# --- the options of issue 3 ------------------------------------------------------
# Each position's target is q_c = (1 - eps) w_y [c == y] + (eps / C) w_c (or
# w_c ((1 - eps) t_c + eps / C) for probabilities t), its loss
# sum_c q_c * -log p_c, and classes with q_c = 0 add nothing, even on a -inf
# logit (csrc/softmax_loss.h, psm_options).  Gradients: sum_c q_c p_j - q_j.

MASKED = [0.0, 0.0, -inf]          # p = (1/2, 1/2, 0) for every method


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("label", [0, 1])
def test_label_smoothing_puts_mass_on_a_neg_inf_class(module, dtype, label):
    # eps = 0.3, C = 3: q = 0.7 on the label + 0.1 on each class, so the -inf
    # class gets 0.1 of the target, and -log p there is +inf.
    x = np.array([MASKED], dtype)
    kwargs = dict(label_smoothing=0.3, reduction="none", return_grad=True)
    loss, g = module.softmax_loss(x, [label], method="stable", **kwargs)
    assert loss[0] == inf
    for reduction in ("sum", "mean", "valid", "full", "batch_size"):
        assert module.softmax_loss(x, [label], label_smoothing=0.3,
                                   reduction=reduction) == inf
    # The gradient stays finite: p - q = (1/2 - 0.8, 1/2 - 0.1, 0 - 0.1).
    expected = [0.5 - 0.1, 0.5 - 0.1, -0.1]
    expected[label] = 0.5 - 0.8
    np.testing.assert_allclose(g[0], expected, rtol=REL[dtype])
    # naive and maxsub clamp p = 0 to TINY: 0.9 ln 2 + 0.1 * -log(TINY).
    for method in ("naive", "maxsub"):
        loss, g_clamped = module.softmax_loss(x, [label], method=method, **kwargs)
        assert loss[0] == pytest.approx(0.9 * math.log(2) + 0.1 * CLAMP[dtype],
                                        rel=REL[dtype])
        np.testing.assert_allclose(g_clamped[0], expected, rtol=REL[dtype])
    # Without smoothing the -inf class holds no target and the loss is ln 2.
    assert module.softmax_loss(x, [label], reduction="none")[0] == dtype(math.log(2))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("method", METHODS)
def test_zero_probability_on_a_neg_inf_class_adds_nothing(module, dtype, method):
    # Target (1/4, 3/4, 0) on p = (1/2, 1/2, 0): loss (1/4 + 3/4) ln 2 = ln 2,
    # finite.  PyTorch computes 0 * -inf there and gives nan; our documented
    # choice is that a class with zero target mass contributes nothing.
    x = np.array([MASKED], dtype)
    target = np.array([[0.25, 0.75, 0.0]], dtype)
    loss, g = module.softmax_loss(x, target, method=method, reduction="none",
                                  return_grad=True)
    assert loss[0] == pytest.approx(math.log(2), rel=REL[dtype])
    if method == "stable":
        assert loss[0] == dtype(math.log(2))       # 0 + 1 * log1p(1), exactly
    np.testing.assert_array_equal(g, np.array([[0.25, -0.25, 0.0]], dtype))
    total = module.softmax_loss(x, target, method=method, reduction="sum")
    assert math.isfinite(total) and total == pytest.approx(math.log(2), rel=REL[dtype])
    # Any smoothing gives the -inf class mass again: +inf for stable.
    assert module.softmax_loss(x, target, label_smoothing=0.01,
                               reduction="none")[0] == inf


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
def test_zero_weight_on_the_label_class_gives_zero_loss_and_gradient(module, dtype,
                                                                     method):
    # Row 0 is labelled 1, whose weight is 0: q = 0 everywhere, so loss 0 and
    # gradient 0, even when the label's logit is -inf (no 0 * inf).  Row 1 is
    # labelled 0, weight 1: its loss is logsumexp(row) - 0.5.
    weight = np.array([1.0, 0.0, 1.0])
    row1 = [0.5, -1.0, 2.0]
    x = np.array([[1.0, 2.0, 3.0], row1, [1.0, -inf, 3.0]], dtype)
    labels = [1, 0, 1]
    loss, g = module.softmax_loss(x, labels, weight=weight, method=method,
                                  reduction="none", return_grad=True)
    np.testing.assert_array_equal(loss[[0, 2]], [0.0, 0.0])
    np.testing.assert_array_equal(g[[0, 2]], np.zeros((2, 3)))
    row1_loss = logsumexp(row1) - 0.5
    assert loss[1] == pytest.approx(row1_loss, rel=REL[dtype])
    for reduction, normalizer in (("sum", 1), ("mean", 1), ("valid", 3),
                                  ("full", 3), ("batch_size", 3)):
        # mean is PyTorch's weighted mean: divided by w[1] + w[0] + w[1] = 1.
        total, g = module.softmax_loss(x, labels, weight=weight, method=method,
                                       reduction=reduction, return_grad=True)
        assert total == pytest.approx(row1_loss / normalizer, rel=REL[dtype]), reduction
        np.testing.assert_array_equal(g[[0, 2]], np.zeros((2, 3)))
    # Weight 0 for every label: PyTorch's mean is 0 / 0 = nan, Caffe's modes 0.
    only_zero = x[[0, 2]]
    assert math.isnan(module.softmax_loss(only_zero, [1, 1], weight=weight,
                                          method=method))
    for reduction in ("sum", "valid", "full", "batch_size"):
        total, g = module.softmax_loss(only_zero, [1, 1], weight=weight,
                                       method=method, reduction=reduction,
                                       return_grad=True)
        assert total == 0.0
        np.testing.assert_array_equal(g, np.zeros((2, 3)))


IGNORED_ROWS = [[nan, 1.0, 2.0], [inf, 0.0, 1.0], [-inf, -inf, -inf],
                [nan, nan, nan], [1e30, -1e30, 0.0]]
KEPT_ROW = [0.5, 1.5, -1.0]


# 1e30 is past float16's range: numpy's cast says so, and the row is inf there.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ignore_index", [-100, 0, 2])
def test_ignored_positions_are_silent_even_when_nan(module, dtype, method,
                                                    ignore_index):
    # Ignored positions (whatever their logits: NaN, +inf, all -inf, a
    # naive overflow) get loss 0 and an all-zero gradient, and add nothing to
    # any reduction.  The one kept row is labelled 1: logsumexp - 1.5.
    x = np.array(IGNORED_ROWS + [KEPT_ROW], dtype)
    labels = [ignore_index] * len(IGNORED_ROWS) + [1]
    kept = logsumexp(KEPT_ROW) - 1.5
    positions = len(labels)
    for options in ({}, {"weight": np.array([0.5, 1.0, 2.0]), "label_smoothing": 0.3}):
        kwargs = dict(method=method, ignore_index=ignore_index, **options)
        loss, g = module.softmax_loss(x, labels, reduction="none",
                                      return_grad=True, **kwargs)
        np.testing.assert_array_equal(loss[:-1], np.zeros(positions - 1, dtype))
        np.testing.assert_array_equal(g[:-1], np.zeros((positions - 1, 3), dtype))
        assert np.isfinite(loss[-1]) and np.isfinite(g[-1]).all()
        if not options:
            assert loss[-1] == pytest.approx(kept, rel=REL[dtype])
        alone = module.softmax_loss(x[-1:], [1], reduction="none",
                                    return_grad=True, **kwargs)
        assert_bits_equal(loss[-1:], alone[0])
        assert_bits_equal(g[-1:], alone[1])
        total = float(alone[0][0])
        w_kept = options["weight"][1] if options else 1.0
        for reduction, normalizer in (("sum", 1), ("mean", w_kept), ("valid", 1),
                                      ("full", positions),
                                      ("batch_size", positions)):
            got, g = module.softmax_loss(x, labels, reduction=reduction,
                                         return_grad=True, **kwargs)
            assert got == pytest.approx(total / normalizer, rel=REL[dtype]), reduction
            np.testing.assert_array_equal(g[:-1], np.zeros((positions - 1, 3), dtype))
    # Spatial logits: ignored positions along the inner axis, class axis 1.
    spatial = np.moveaxis(x[None], 2, 1)                  # (1, 3, positions)
    loss, g = module.softmax_loss(spatial, np.array([labels]), method=method,
                                  ignore_index=ignore_index, reduction="none",
                                  return_grad=True)
    np.testing.assert_array_equal(loss[0, :-1], np.zeros(positions - 1, dtype))
    np.testing.assert_array_equal(g[0, :, :-1], np.zeros((3, positions - 1), dtype))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("method", METHODS)
def test_all_ignored_mean_is_nan_and_caffe_modes_are_zero(module, method):
    x = np.array(IGNORED_ROWS, np.float32)
    labels = [-100] * len(IGNORED_ROWS)
    loss, g = module.softmax_loss(x, labels, method=method, ignore_index=-100,
                                  return_grad=True)
    assert math.isnan(loss)                       # PyTorch: 0 / 0
    np.testing.assert_array_equal(g, np.zeros_like(x))
    for reduction in ("sum", "valid", "full", "batch_size"):
        loss, g = module.softmax_loss(x, labels, method=method, ignore_index=-100,
                                      reduction=reduction, return_grad=True)
        assert loss == 0.0                        # Caffe: max(1, count)
        np.testing.assert_array_equal(g, np.zeros_like(x))


# --- kernel and reference agree on where the specials are ----------------------

SPECIAL_CASES = {
    "neg_inf_mask": (np.float32, [[1.5, -inf, 0.25, -2.0]] * 4, [0, 1, 2, 3]),
    "nan_rows": (np.float32, [NAN_ROWS[k] for k in NAN_ROWS], [0, 1, 2, 3, 0, 1]),
    "pos_inf_rows": (np.float64, [POS_INF_ROWS[k] for k in POS_INF_ROWS],
                     [0, 1, 2, 3, 1]),
    "seed": (np.float32, [[100.0, 20.0], [100.0, 20.0]], [0, 1]),
    "gap_100": (np.float32, [[0.0, 100.0], [0.0, 100.0]], [0, 1]),
    "gaps_float32": (np.float32, [[0.0, float(g)] for g in GAPS], [0] * len(GAPS)),
    "gap_1000_float64": (np.float64, [[0.0, 1000.0], [0.0, 1000.0]], [0, 1]),
    "ties_1e8": (np.float32, [[1e8, 1e8], [1e8, 1e8]], [0, 1]),
    "all_neg_inf": (np.float32, [[-inf, -inf, -inf]] * 3, [0, 1, 2]),
    "huge_float32": (np.float32, [[3e38, 3e38], [3e38, 2e38], [3e38, -3e38],
                                  [-3e38, -3e38], [3e38, -3e38]], [0, 1, 1, 0, 0]),
    "huge_float64": (np.float64, [[1e308, -1e308], [1e308, 1e308]], [1, 0]),
    "denormal_float32": (np.float32, [[1e-40, -1e-40, 0.0, 1e-45]] * 2, [0, 3]),
    "denormal_float64": (np.float64, [[5e-324, -5e-324, 0.0]] * 2, [0, 2]),
    "one_class": (np.float32, [[0.0], [100.0], [-inf], [inf], [nan], [3e38]],
                  [0] * 6),
    "label_on_neg_inf": (np.float32, [[1.0, -inf, 2.0], [-inf, 0.0, -inf]], [1, 0]),
    "float16": (np.float16, [[60000.0, -60000.0], [nan, 1.0], [inf, 0.0],
                             [-inf, 0.0]], [1, 1, 1, 0]),
}


def _kind(a):
    """0 finite, 1 NaN, 2 +inf, 3 -inf, elementwise."""
    a = np.asarray(a, np.float64)
    return np.select([np.isnan(a), np.isposinf(a), np.isneginf(a)], [1, 2, 3], 0)


# Results past float16's range (the float16 case) or float32's (-6e38) round to
# inf, and numpy's cast says so; that is the expected outcome here.
OVERFLOW_IN_CAST = pytest.mark.filterwarnings(
    "ignore:overflow encountered in cast:RuntimeWarning")


@OVERFLOW_IN_CAST
@pytest.mark.parametrize("case", list(SPECIAL_CASES))
@pytest.mark.parametrize("method", METHODS)
def test_kernel_and_reference_agree_on_specials(case, method):
    dtype, rows, labels = SPECIAL_CASES[case]
    x = np.array(rows, dtype)
    for reduction in pysafemax.REDUCTIONS:
        for return_grad in (False, True):
            got = pysafemax.softmax_loss(x, labels, method=method, reduction=reduction,
                                         return_grad=return_grad)
            ref = reference.softmax_loss(x, labels, method=method, reduction=reduction,
                                         return_grad=return_grad)
            if return_grad:
                np.testing.assert_array_equal(_kind(got[1]), _kind(ref[1]),
                                              err_msg=f"gradient, {reduction}")
                got, ref = got[0], ref[0]
            np.testing.assert_array_equal(_kind(got), _kind(ref),
                                          err_msg=f"loss, {reduction}")
    np.testing.assert_array_equal(_kind(pysafemax.softmax(x, method=method)),
                                  _kind(reference.softmax(x, method=method)))
    np.testing.assert_array_equal(_kind(pysafemax.log_softmax(x)),
                                  _kind(reference.log_softmax(x)))


def _options(name, labels, classes, dtype):
    """(labels, options) for each option set the sweep tries."""
    weight = np.linspace(0.5, 2.0, classes)
    if name == "smoothing":
        return labels, {"label_smoothing": 0.25}
    if name == "weight_ignore":
        return labels, {"weight": weight, "ignore_index": 0}
    if name == "zero_weight":
        return labels, {"weight": np.where(np.arange(classes) == 1, 0.0, 1.0)}
    # Probability targets: the label's one-hot, with a little on class 0 (so
    # zero targets sit on -inf logits too).
    probs = np.zeros((len(labels), classes))
    probs[np.arange(len(labels)), labels] = 0.75
    probs[:, 0] += 0.25
    return probs.astype(dtype), {"label_smoothing": 0.1} if name == "probs_smoothed" else {}


OPTION_NAMES = ["smoothing", "weight_ignore", "zero_weight", "probs", "probs_smoothed"]


@OVERFLOW_IN_CAST
@pytest.mark.parametrize("case", list(SPECIAL_CASES))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("options", OPTION_NAMES)
def test_kernel_and_reference_agree_on_specials_with_options(case, method, options):
    dtype, rows, labels = SPECIAL_CASES[case]
    x = np.array(rows, dtype)
    targets, kwargs = _options(options, labels, x.shape[1], dtype)
    for reduction in pysafemax.REDUCTIONS:
        got = pysafemax.softmax_loss(x, targets, method=method, reduction=reduction,
                                     return_grad=True, **kwargs)
        ref = reference.softmax_loss(x, targets, method=method, reduction=reduction,
                                     return_grad=True, **kwargs)
        np.testing.assert_array_equal(_kind(got[1]), _kind(ref[1]),
                                      err_msg=f"gradient, {reduction}")
        np.testing.assert_array_equal(_kind(got[0]), _kind(ref[0]),
                                      err_msg=f"loss, {reduction}")


@OVERFLOW_IN_CAST
def test_special_cases_do_contain_specials():
    # The agreement sweep means something only if the specials are there.
    kinds = set()
    for dtype, rows, labels in SPECIAL_CASES.values():
        x = np.array(rows, dtype)
        for method in METHODS:
            kinds |= set(np.unique(_kind(pysafemax.softmax_loss(
                x, labels, method=method, reduction="none"))).tolist())
        kinds |= set(np.unique(_kind(pysafemax.log_softmax(x))).tolist())
    assert kinds == {0, 1, 2, 3}


@pytest.mark.parametrize("weight", [None, [1.0, 0.5, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.75]])
@pytest.mark.parametrize("smoothing", [0.3, 1.0])
def test_smoothing_with_logits_near_the_largest_double_stays_finite(weight, smoothing):
    """Each smoothed term q_j (m - x_j) is finite, and so is their sum: the
    terms are scaled by q_j before they are added (found by Hypothesis:
    {1e308, -0.13, 0.64} summed 2e308 before scaling by 1/3, and read inf)."""
    x = np.array([[1e308, -0.13, 0.64, 5.0, -1e307, 0.0, 2.0, 1.0, 3.0]] * 3)
    y = np.array([0, 1, 8])
    w = None if weight is None else np.array(weight)
    got = pysafemax.softmax_loss(x, y, label_smoothing=smoothing, weight=w,
                                 reduction="none", return_grad=True)
    want = reference.softmax_loss(x, y, label_smoothing=smoothing, weight=w,
                                  reduction="none", return_grad=True)
    assert np.all(np.isfinite(got[0])) and np.all(np.isfinite(want[0]))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-14, atol=1e-300)
