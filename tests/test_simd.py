"""The vector paths against their portable twins, the kernel's exp, threads
and out=.

The AVX2 loops and their portable twins perform the same float operations in
the same order, so results must match bit for bit; the kernel's exp must stay
within the error stated in csrc/exp_f32.h.
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import _bindings, _core

needs_simd = pytest.mark.skipif(not _bindings.simd_level(), reason="no AVX2+FMA here")
# Widths around the vector (8), group (32) and block (2048) sizes.
WIDTHS = list(range(1, 70)) + [255, 256, 257, 2047, 2048, 2049, 2050, 4095, 4097, 6151]


def kernel_exp(x, portable):
    return _bindings.exp_f32(np.ascontiguousarray(x, dtype=np.float32), portable)


def ulp_error(got, x):
    exact = np.exp(x.astype(np.float64))
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_exp_within_its_stated_error_on_a_sample():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 2**21, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[(x >= -104) & (x <= 89)]
    x = np.concatenate([x, np.float32([0.6497286, -87.33655, 88.72283, -103.97208,
                                        1e-30, -1e-30, 0.0, -0.0])])
    for portable in (0, 1):
        got = kernel_exp(x, portable)
        exact = np.exp(x.astype(np.float64))
        normal = (exact >= np.finfo(np.float32).tiny) & (exact <= np.finfo(np.float32).max)
        assert ulp_error(got[normal], x[normal]).max() <= 0.603
        subnormal = exact < np.finfo(np.float32).tiny
        step = 2.0 ** -149
        assert np.all(np.abs(got[subnormal] - exact[subnormal]) <= 0.763 * step)


def test_exp_special_values_are_exact():
    x = np.float32([np.inf, -np.inf, np.nan, 88.72284, 89.0, 1e10, -104.0, -1e10,
                    -103.98, 88.72283])
    for portable in (0, 1):
        got = kernel_exp(x, portable)
        assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2])
        assert got[3] == np.inf and got[4] == np.inf and got[5] == np.inf
        assert got[6] == 0 and got[7] == 0 and got[8] == 0
        # the largest float whose exp is finite: FLT_MAX's neighbourhood, not inf
        assert np.isfinite(got[9]) and ulp_error(got[9:10], x[9:10])[0] <= 0.603


@needs_simd
def test_vector_and_portable_exp_agree_bit_for_bit():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, 2**20 + 5, dtype=np.uint64).astype(np.uint32).view(np.float32)
    a, b = kernel_exp(x, 0), kernel_exp(x, 1)
    same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
    assert same.all()


def results(x, y, portable, monkeypatch, **kw):
    if not portable:
        return pysafemax.softmax_loss(x, y, return_grad=True, reduction="none", **kw)
    with _bindings.portable_code():
        return pysafemax.softmax_loss(x, y, return_grad=True, reduction="none", **kw)


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u.view(np.uint32), v.view(np.uint32))


@needs_simd
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("classes", WIDTHS)
def test_vector_path_gives_the_portable_bits(method, classes, monkeypatch):
    rng = np.random.default_rng(classes)
    rows = 3 if classes > 1000 else 9
    for scale in (0.5, 30.0, 300.0):
        x = (rng.standard_normal((rows, classes)) * scale).astype(np.float32)
        if classes > 2:   # special values and ties in some rows
            x[0, classes // 2] = np.inf if method != "naive" else 90.0
            x[1, 1] = np.nan
            x[2, :] = x[2, 0]
            x[3 % rows, -1] = -np.inf
        y = rng.integers(0, classes, rows)
        for options in ({}, {"weight": rng.random(classes) + 0.5}, {"ignore_index": 0}):
            assert_same_bits(results(x, y, False, monkeypatch, method=method, **options),
                             results(x, y, True, monkeypatch, method=method, **options))


@needs_simd
def test_row_whose_max_rises_block_after_block(monkeypatch):
    # Ascending logits rescale the running sum at every block.
    x = np.linspace(-200, 200, 3 * 4099, dtype=np.float32).reshape(3, -1)
    x[1] = x[1][::-1]
    y = np.array([0, 5, 4098])
    a = results(x, y, False, monkeypatch)
    assert_same_bits(a, results(x, y, True, monkeypatch))
    want = pysafemax.reference.softmax_loss(x.astype(np.float64), y, reduction="none")
    np.testing.assert_allclose(a[0], want, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4500, 1000), (64, 100001), (1300000, 7)])
def test_every_thread_count_gives_the_same_bits(shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    y = rng.integers(0, shape[1], shape[0])
    first = None
    for threads in (1, 2, 3, 4, 7):
        got = pysafemax.softmax_loss(x, y, return_grad=True, threads=threads)
        none = pysafemax.softmax_loss(x, y, reduction="none", threads=threads)
        if first is None:
            first = got, none
        assert got[0] == first[0][0]
        np.testing.assert_array_equal(got[1], first[0][1])
        np.testing.assert_array_equal(none, first[1])


# softmax and log_softmax: widths 1..70 and around the group and block sizes.
SOFTMAX_WIDTHS = list(range(1, 71)) + [255, 256, 257, 2047, 2048, 2049, 2050, 4095, 4097,
                                       6151]


def softmax_results(x, method, **kw):
    return (pysafemax.softmax(x, method=method, **kw),
            pysafemax.log_softmax(x, **kw) if method == "stable" else np.empty(0, x.dtype))


def assert_same_bits_any_dtype(a, b):
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u.view(np.uint8), v.view(np.uint8))


@needs_simd
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("classes", SOFTMAX_WIDTHS)
def test_softmax_vector_path_gives_the_portable_bits(dtype, method, classes):
    rng = np.random.default_rng(classes)
    rows = 5 if classes > 1000 else 12
    for scale in (0.5, 30.0, 300.0):
        x = (rng.standard_normal((rows, classes)) * scale).astype(dtype)
        x[0, classes // 2] = np.inf      # special values, ties and -inf rows
        x[1, classes - 1] = np.nan
        x[2, :] = x[2, 0]
        x[3, :] = -np.inf
        x[4, 0] = -np.inf
        if classes > 1000:
            x[4, 1:] = np.linspace(-200, 200, classes - 1)   # the max rises by block
        else:
            x[5, ::2] = -np.inf
            x[6, -1] = 90.0                  # naive overflows
        fast = softmax_results(x, method)
        with _bindings.portable_code():
            portable = softmax_results(x, method)
        assert_same_bits_any_dtype(fast, portable)
        # a strided class axis takes the portable loops: the same bits again
        strided = softmax_results(np.ascontiguousarray(x.T), method, axis=0)
        assert_same_bits_any_dtype(fast, [np.ascontiguousarray(a.T) for a in strided])


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("shape", [(4500, 1000), (40, 100001), (1300000, 7)])
def test_softmax_every_thread_count_gives_the_same_bits(method, shape):
    # 4.5M logits and more: psm_threads_for gives 2 threads
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    first = softmax_results(x, method, threads=1)
    for threads in (2, 3):
        assert_same_bits_any_dtype(first, softmax_results(x, method, threads=threads))


def read_environment(monkeypatch, value):
    """What importing pysafemax with PYSAFEMAX_NUM_THREADS=value would read."""
    if value is None:
        monkeypatch.delenv("PYSAFEMAX_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("PYSAFEMAX_NUM_THREADS", value)
    monkeypatch.setattr(_core, "_env_threads", _core._threads_from_environment())


def test_set_num_threads_and_the_environment(monkeypatch):
    monkeypatch.setattr(_core, "_num_threads", None)
    read_environment(monkeypatch, "3")
    assert pysafemax.get_num_threads() == 3
    pysafemax.set_num_threads(5)
    assert pysafemax.get_num_threads() == 5
    pysafemax.set_num_threads(None)
    assert pysafemax.get_num_threads() == 3
    read_environment(monkeypatch, None)
    assert pysafemax.get_num_threads() == _core._CORES >= 1
    with pytest.raises(ValueError, match="n must be >= 1"):
        pysafemax.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        pysafemax.set_num_threads(2.5)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_out_receives_the_gradient(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 33)).astype(dtype)
    y = rng.integers(0, 33, 50)
    expected = pysafemax.softmax_loss(x, y, return_grad=True)
    out = np.full_like(x, np.nan)
    for _ in range(2):
        loss, grad = pysafemax.softmax_loss(x, y, return_grad=True, out=out)
        assert grad is out and loss == expected[0]
        np.testing.assert_array_equal(out, expected[1])


def test_read_probe_sums_what_it_reads():
    x = np.arange(100003, dtype=np.float32) % 7
    for portable in (0, 1):
        for threads in (1, 2):
            total = _bindings.read_probe_f32(x, threads, portable)
            assert total == float(x.astype(np.float64).sum())


# Enough elements for two threads (psm_threads_for: 2^17 per thread), and a
# last chunk that is not a multiple of 32 or 8 floats.
PROBE_ELEMENTS = 2 * (1 << 21) + 1003


def test_exp_sum_probe_sums_the_kernels_exp_on_every_path():
    x = np.random.default_rng(3).standard_normal(PROBE_ELEMENTS, dtype=np.float32) * 4
    sums = {(portable, threads): _bindings.exp_sum_probe_f32(x, threads, portable)
            for portable in (0, 1) for threads in (1, 2)}
    assert len(set(sums.values())) == 1, sums          # the same bits everywhere
    exact = float(np.exp(x.astype(np.float64)).sum())
    # each exp within 0.603 ULP (exp_f32.h), float adds of 4 terms: ~1e-7
    assert abs(sums[0, 1] - exact) <= 1e-6 * exact


def test_copy_probe_copies_on_every_path():
    x = np.random.default_rng(4).standard_normal(PROBE_ELEMENTS, dtype=np.float32)
    results = set()
    for portable in (0, 1):
        for threads in (1, 2):
            out = np.full_like(x, np.nan)
            results.add(_bindings.copy_probe_f32(x, out, threads, portable))
            np.testing.assert_array_equal(out, x)
    assert len(results) == 1, results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "valid", "full", "batch_size"])
def test_the_cheap_path_for_plain_calls_gives_the_general_path_bits(dtype, method, reduction):
    # axis=-1 names the same axis but takes the general, fully validated path.
    rng = np.random.default_rng(5)
    for shape in [(0, 3), (1, 1), (32, 10), (7, 1000), (3, 4099)]:
        x = (rng.standard_normal(shape) * 20).astype(dtype)
        y = rng.integers(0, shape[1], shape[0])
        plain = pysafemax.softmax_loss(x, y, method=method, reduction=reduction)
        general = pysafemax.softmax_loss(x, y, method=method, reduction=reduction, axis=-1)
        assert type(plain) is float
        np.testing.assert_array_equal(plain, general)


def test_the_cheap_path_leaves_every_error_to_the_general_path():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"labels\[1\] = 7 is out of range"):
        pysafemax.softmax_loss(x, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match="method must be one of"):
        pysafemax.softmax_loss(x, np.array([0, 1, 1]), method="fast")
    with pytest.raises(TypeError, match="label_smoothing must be a float"):
        pysafemax.softmax_loss(x, np.array([0, 1, 1]), label_smoothing=False)
    with pytest.raises(TypeError, match="axis must be an int"):
        pysafemax.softmax_loss(x, np.array([0, 1, 1]), axis=True)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        pysafemax.softmax_loss(x, np.array([0, 1, 1]), threads=0)
