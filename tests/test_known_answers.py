"""The seed's numbers and the README's claims, exactly."""
import math

import numpy as np
import pytest

import pysafemax
from pysafemax import reference

SEED = np.array([[100.0, 20.0]], dtype=np.float32)


def test_flt_min_loss_is_minus_log_flt_min_in_float32():
    assert pysafemax.FLT_MIN_LOSS == float(np.float32(-math.log(np.finfo(np.float32).tiny)))
    assert round(pysafemax.FLT_MIN_LOSS, 7) == 87.3365479
    assert pysafemax.DBL_MIN_LOSS == pytest.approx(-math.log(2.2250738585072014e-308), rel=1e-15, abs=0)
    assert str(pysafemax.DBL_MIN_LOSS).startswith("708.396")


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_seed_naive_program(module):
    # exp {inf, 4.85165e+08}, sum inf, softmax {nan, 0}, loss {nan, 87.3365}
    with np.errstate(over="ignore"):
        e = np.exp(SEED[0])
    assert np.isinf(e[0]) and f"{e[1]:g}" == "4.85165e+08"
    p = module.softmax(SEED, method="naive")
    assert np.isnan(p[0, 0]) and p[0, 1] == 0.0
    losses = [module.softmax_loss(SEED, [label], method="naive", reduction="none")[0]
              for label in (0, 1)]
    assert np.isnan(losses[0])
    assert losses[1] == np.float32(pysafemax.FLT_MIN_LOSS)
    assert losses[1].dtype == np.float32


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_seed_maxsub_and_stable(module):
    # maxsub: 100 - 20 = 80, exp(-80) is a normal float, so both are right here.
    for method in ("maxsub", "stable"):
        loss = module.softmax_loss(SEED, [1], method=method, reduction="none")
        assert loss[0] == np.float32(80.0)
        # The label on the max: loss = log1p(exp(-80)) = 1.8048514e-35.
        tiny = module.softmax_loss(SEED, [0], method=method, reduction="none")[0]
        if method == "stable":
            assert tiny == pytest.approx(math.exp(-80.0), rel=2e-7, abs=0)
        else:
            assert tiny == 0.0 and not math.copysign(1.0, tiny) < 0


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_maxsub_caps_true_losses_above_flt_min_loss(module):
    x = np.array([[0.0, 100.0]], dtype=np.float32)
    assert module.softmax_loss(x, [0], method="maxsub") == pysafemax.FLT_MIN_LOSS
    assert module.softmax_loss(x, [0], method="stable") == 100.0
    # float64 clamps at FLT_MIN too, as Caffe's SoftmaxWithLoss<double>: its
    # real build reported 87.3365447505531 for [[0, 100]], label 0.
    for gap in (100.0, 1000.0):
        x64 = np.array([[0.0, gap]])
        assert module.softmax_loss(x64, [0], method="maxsub") == 87.3365447505531
        # naive: p = 1 / (1 + e^gap), below FLT_MIN (or 1 / inf = 0)
        assert module.softmax_loss(x64, [0], method="naive") == 87.3365447505531
        assert module.softmax_loss(x64, [0], method="stable") == gap


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_subtracts_before_adding(module, dtype):
    x = np.array([[1e8, 1e8]], dtype=dtype)
    assert module.softmax_loss(x, [0]) == pytest.approx(math.log(2), rel=1e-7, abs=0)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_reductions_and_empty_batch(module):
    x = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    y = [1, 1, 0]
    rows = [math.log1p(math.exp(-1)), 2 + math.log1p(math.exp(-2)), math.log(2)]
    none = module.softmax_loss(x, y, reduction="none")
    np.testing.assert_allclose(none, rows, rtol=2e-7)
    total = module.softmax_loss(x, y, reduction="sum")
    mean = module.softmax_loss(x, y)
    assert type(total) is float and type(mean) is float
    assert total == pytest.approx(sum(rows), rel=1e-7, abs=0)
    assert mean == pytest.approx(sum(rows) / 3, rel=1e-7, abs=0)
    empty = np.zeros((0, 4), dtype=np.float32)
    assert math.isnan(module.softmax_loss(empty, []))
    assert module.softmax_loss(empty, [], reduction="sum") == 0.0
    out = module.softmax_loss(empty, [], reduction="none")
    assert out.shape == (0,) and out.dtype == np.float32


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("reduction, scale", [("mean", 1 / 3), ("sum", 1.0), ("none", 1.0)])
def test_gradient_is_p_minus_onehot_times_the_reduction_scale(module, reduction, scale):
    x = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    y = np.array([1, 1, 0])
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    expected = (p - np.eye(2)[y]) * scale
    for method in pysafemax.METHODS:
        _, grad = module.softmax_loss(x, y, method=method, reduction=reduction,
                                      return_grad=True)
        np.testing.assert_allclose(grad, expected, rtol=1e-15, atol=1e-16)


def test_tiny_losses_keep_their_relative_precision():
    # A confident, correct prediction: the true loss log1p(exp(-60)) is 8.8e-27;
    # log(sum) in float32 or even double would round it to 0.
    x = np.array([[60.0, 0.0]], dtype=np.float32)
    loss = pysafemax.softmax_loss(x, [0], reduction="none")[0]
    assert loss == pytest.approx(math.exp(-60.0), rel=2e-7, abs=0)
    _, grad = pysafemax.softmax_loss(x, [0], reduction="sum", return_grad=True)
    assert grad[0, 0] == pytest.approx(-math.exp(-60.0), rel=2e-7, abs=0)
    assert grad[0, 1] == pytest.approx(math.exp(-60.0), rel=2e-7, abs=0)


def test_log_softmax_and_softmax_agree():
    x = np.array([[3.0, -1.0, 0.5, 2.0]], dtype=np.float64)
    lsm = pysafemax.log_softmax(x)
    expected = x - np.log(np.exp(x).sum())
    np.testing.assert_allclose(lsm, expected, rtol=1e-15)
    for method in pysafemax.METHODS:
        np.testing.assert_allclose(pysafemax.softmax(x, method=method), np.exp(expected),
                                   rtol=1e-15)
