"""The log-sum-exp: pysafemax.logsumexp and softmax_loss(return_lse=True).

Against a float64 oracle always (the max plus the log of the shifted sum,
numpy's pairwise sum), against scipy.special.logsumexp and torch.logsumexp
where they are installed; special values, every SIMD tail, layouts, dtypes,
streamed blocks, threads and bad inputs.
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import _core

# SIMD tails (8 floats, 4 doubles), the small-row path (<= 16 classes) and
# the one-pass sweep (more), blocks of 2048.
CLASSES = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000, 2049, 4099]
DTYPES = [np.float16, np.float32, np.float64]


def oracle(x, axis=-1):
    """log(sum(exp(x))) in float64, with its special values: -inf for an
    empty or all -inf sum, +inf if a term is +inf, NaN if one is NaN."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    with np.errstate(all="ignore"):
        m = np.max(np.where(np.isnan(x), -np.inf, x), axis=-1, initial=-np.inf)
        finite = np.isfinite(m)
        shift = np.where(finite, m, 0.0)
        total = np.exp(x - shift[..., None]).sum(axis=-1)
        out = np.where(finite, shift + np.log(total), m)
    return np.where(np.isnan(x).any(axis=-1), np.nan, out)


def tolerance(dtype):
    """The stable lse: max + log1p(s) in double, rounded once (half an ulp of
    the dtype), from exps within 0.6 ulp of the compute dtype summed in
    float lanes (float32: a few ulp of the sum, i.e. of the lse's log part)."""
    compute = np.float32 if dtype == np.float16 else dtype
    return 2 * float(np.finfo(dtype).eps) + 8 * float(np.finfo(compute).eps)


def assert_lse_close(got, want, dtype):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    special = ~np.isfinite(want)
    np.testing.assert_array_equal(got[special], want[special])
    finite = np.isfinite(want)
    err = np.abs(got[finite] - want[finite])
    assert np.all(err <= tolerance(dtype) * (1 + np.abs(want[finite]))), err.max()


def special_rows(classes, dtype):
    """Rows of classes logits each: random, and one of each special case."""
    rng = np.random.default_rng(classes)
    big = float(np.finfo(dtype).max) / 2
    rows = [rng.standard_normal(classes) * 10 for _ in range(4)]
    for fill in (-np.inf, np.inf, np.nan, 0.0, big, -big):
        rows.append(np.full(classes, fill))
    row = rng.standard_normal(classes)
    row[classes // 2] = np.inf
    rows.append(row)
    row = np.full(classes, -np.inf)
    row[-1] = 3.0
    rows.append(row)
    row = rng.standard_normal(classes)
    row[0] = np.nan
    rows.append(row)
    row = np.full(classes, -np.inf)
    row[0] = np.inf
    row[-1] = np.nan
    rows.append(row)
    row = rng.standard_normal(classes) - 1e4 * (dtype != np.float16)   # confident
    row[-1] = 100.0
    rows.append(row)
    rows.append(np.full(classes, float(np.finfo(dtype).smallest_subnormal)))
    with np.errstate(over="ignore"):
        return np.array(rows).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", CLASSES)
def test_logsumexp_agrees_with_a_float64_oracle(dtype, classes):
    x = special_rows(classes, dtype)
    got = pysafemax.logsumexp(x, axis=1)
    assert got.dtype == dtype
    assert_lse_close(got, oracle(x, 1), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_axis_keepdims_and_none(dtype):
    x = (np.random.default_rng(1).standard_normal((3, 4, 5)) * 20).astype(dtype)
    for axis in (None, 0, 1, 2, -1, -3):
        for keepdims in (False, True):
            got = pysafemax.logsumexp(x, axis=axis, keepdims=keepdims)
            flat = x.reshape(-1) if axis is None else x
            want = oracle(flat, -1 if axis is None else axis)
            if keepdims:
                want = (want.reshape((1,) * x.ndim) if axis is None
                        else np.expand_dims(want, axis))
            assert_lse_close(got, want, dtype)
            assert np.shape(got) == np.shape(want)
    scalar = pysafemax.logsumexp(x, axis=None)
    assert isinstance(scalar, np.floating) and scalar.dtype == dtype
    assert isinstance(pysafemax.logsumexp(x[0, 0]), np.floating)


def test_integers_booleans_lists_and_empty_axes():
    assert pysafemax.logsumexp([1, 2, 3]) == pytest.approx(float(oracle([1.0, 2, 3])),
                                                            rel=1e-15)
    assert pysafemax.logsumexp(np.array([1, 2, 3], np.int8)).dtype == np.float64
    assert pysafemax.logsumexp(np.array([True, False])) == pytest.approx(np.log(1 + np.e))
    empty = pysafemax.logsumexp(np.zeros((2, 0), np.float32))
    assert empty.dtype == np.float32
    np.testing.assert_array_equal(empty, [-np.inf, -np.inf])
    np.testing.assert_array_equal(pysafemax.logsumexp(np.zeros((0, 3))), np.zeros(0))
    assert pysafemax.logsumexp(np.zeros(0), axis=None) == -np.inf


def test_layouts_and_byte_orders():
    rng = np.random.default_rng(2)
    base = (rng.standard_normal((40, 37)) * 5).astype(np.float32)
    views = {"transposed": base.T, "strided": base[::3, ::2], "fortran": np.asfortranarray(base),
             "swapped": base.astype(base.dtype.newbyteorder()), "negative": base[::-1, ::-1]}
    for name, view in views.items():
        for axis in (0, 1):
            got = pysafemax.logsumexp(view, axis=axis)
            assert got.dtype.isnative, name
            np.testing.assert_array_equal(
                got, pysafemax.logsumexp(np.ascontiguousarray(view, np.float32), axis=axis),
                err_msg=name)


def test_same_bits_at_every_thread_count_and_when_streamed(monkeypatch):
    x = (np.random.default_rng(3).standard_normal((300, 1001)) * 8).astype(np.float32)
    one = pysafemax.logsumexp(x, threads=1)
    np.testing.assert_array_equal(one, pysafemax.logsumexp(x, threads=2))
    half = x.astype(np.float16)
    whole = pysafemax.logsumexp(half)
    monkeypatch.setattr(_core, "_STREAM_BYTES", 64 * 1024)   # float16 is staged
    np.testing.assert_array_equal(pysafemax.logsumexp(half), whole)


def test_the_callers_array_is_left_alone():
    x = np.random.default_rng(4).standard_normal((5, 9)).astype(np.float32)
    x[0, 0] = np.nan
    before = x.copy()
    pysafemax.logsumexp(x)
    pysafemax.softmax_loss(x, np.zeros(5, np.int64), return_grad=True, return_lse=True)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_matches_scipy(dtype):
    special = pytest.importorskip("scipy.special")
    for classes in (1, 9, 17, 1000):
        x = special_rows(classes, dtype)
        with np.errstate(all="ignore"):
            want = special.logsumexp(x.astype(np.float64), axis=1)
        assert_lse_close(pysafemax.logsumexp(x, axis=1), want, dtype)
    assert pysafemax.logsumexp(np.zeros(0)) == special.logsumexp(np.zeros(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    for classes in (1, 9, 17, 1000):
        x = special_rows(classes, dtype)
        want = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), dim=1).numpy()
        assert_lse_close(pysafemax.logsumexp(x, axis=1), want, dtype)


LABEL_OPTIONS = [{}, {"ignore_index": 2}, {"label_smoothing": 0.2},
                 {"weight": "random"}, {"reduction": "none"}, {"reduction": "valid"}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 3, 9, 16, 17, 1000])
@pytest.mark.parametrize("options", LABEL_OPTIONS, ids=str)
@pytest.mark.parametrize("return_grad", [False, True])
def test_return_lse_is_stables_log_sum_exp_beside_unchanged_results(dtype, classes, options,
                                                                    return_grad):
    x = special_rows(classes, dtype)
    labels = np.arange(len(x)) % classes
    if "weight" in options:
        options = {**options, "weight": np.random.default_rng(5).random(classes)}
    *results, lse = pysafemax.softmax_loss(x, labels, return_grad=return_grad,
                                           return_lse=True, **options)
    assert lse.shape == labels.shape and lse.dtype == dtype
    # ignored positions have one too
    assert_lse_close(lse, oracle(x, 1), dtype)
    plain = pysafemax.softmax_loss(x, labels, return_grad=return_grad, **options)
    plain = plain if return_grad else (plain,)
    for got, want in zip(results, plain):
        np.testing.assert_array_equal(got, want)
    assert len(results) == len(plain)


def test_return_lse_with_probability_targets_and_another_class_axis():
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((4, 11, 3)) * 6).astype(np.float32)
    probs = rng.random((4, 11, 3)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    loss, grad, lse = pysafemax.softmax_loss(x, probs, axis=1, return_grad=True,
                                             return_lse=True, label_smoothing=0.1)
    assert lse.shape == (4, 3)
    assert_lse_close(lse, oracle(x, 1), np.float32)
    np.testing.assert_array_equal(lse, pysafemax.logsumexp(x, axis=1))


def test_return_lse_when_streamed_equals_one_call(monkeypatch):
    x = (np.random.default_rng(7).standard_normal((64, 130)) * 4).astype(np.float16)
    labels = np.arange(64) % 130
    whole = pysafemax.softmax_loss(x, labels, return_grad=True, return_lse=True)
    monkeypatch.setattr(_core, "_STREAM_BYTES", 4096)
    streamed = pysafemax.softmax_loss(x, labels, return_grad=True, return_lse=True)
    np.testing.assert_array_equal(streamed[1], whole[1])
    np.testing.assert_array_equal(streamed[2], whole[2])


def test_naive_and_maxsubs_lse_are_the_logs_of_their_own_sums():
    x = np.array([[1.0, 2.0, 3.0], [100.0, 0.0, 0.0], [-np.inf, -np.inf, -np.inf],
                  [np.inf, 0.0, 0.0]], np.float32)
    labels = np.zeros(4, np.int64)
    _, naive = pysafemax.softmax_loss(x, labels, method="naive", return_lse=True)
    _, maxsub = pysafemax.softmax_loss(x, labels, method="maxsub", return_lse=True)
    _, stable = pysafemax.softmax_loss(x, labels, return_lse=True)
    exact = oracle(x, 1)
    assert naive[0] == pytest.approx(exact[0], rel=1e-6)
    assert naive[1] == np.inf                 # exp(100) overflows float32
    assert maxsub[1] == pytest.approx(100.0, rel=1e-6)
    assert naive[2] == -np.inf                # the log of an empty sum
    assert np.isnan(maxsub[2]) and np.isnan(maxsub[3])   # max - max = nan
    np.testing.assert_array_equal(stable[2:], [-np.inf, np.inf])


def test_bad_arguments_are_named():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="a must be a float16, float32, float64 or bfloat16"):
        pysafemax.logsumexp(x.astype(np.complex64))
    with pytest.raises(TypeError, match="a must be"):
        pysafemax.logsumexp(np.array(["1", "2"]))
    with pytest.raises(TypeError, match="masked"):
        pysafemax.logsumexp(np.ma.masked_array(x))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        pysafemax.logsumexp(x, axis=2)
    with pytest.raises(ValueError, match="axis 0 is out of range"):
        pysafemax.logsumexp(np.float32(1.0), axis=0)
    with pytest.raises(TypeError, match="axis"):
        pysafemax.logsumexp(x, axis=1.5)
    with pytest.raises(TypeError, match="keepdims must be True or False"):
        pysafemax.logsumexp(x, keepdims=1)
    with pytest.raises(ValueError, match="threads"):
        pysafemax.logsumexp(x, threads=0)
    with pytest.raises(TypeError, match="return_lse must be True or False"):
        pysafemax.softmax_loss(x, np.zeros(2, np.int64), return_lse="yes")


@pytest.mark.parametrize("method_dtype", [np.float32, np.float64])
def test_return_lse_matches_torch_logsumexp(method_dtype):
    torch = pytest.importorskip("torch")
    x = special_rows(257, method_dtype)
    labels = np.arange(len(x)) % 257
    _, _, lse = pysafemax.softmax_loss(x, labels, return_grad=True, return_lse=True)
    want = torch.logsumexp(torch.from_numpy(x.astype(np.float64)), dim=1).numpy()
    assert_lse_close(lse, want, method_dtype)
