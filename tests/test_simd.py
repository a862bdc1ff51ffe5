"""The vector paths against their portable twins, the kernel's exp, threads
and out=.

The AVX2 loops and their portable twins perform the same float operations in
the same order, so results must match bit for bit; the kernel's exps must stay
within the errors stated in csrc/exp_f32.h and csrc/exp_f64.h.
"""
import contextlib
import math

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
    for portable in (0, 1, 2):
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
    for portable in (0, 1, 2):
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
    a = kernel_exp(x, 0)
    # the portable twin, and the scalar exp compiled for FMA (the vector
    # path's scalar exps: psm_expf_fma)
    for other in (1, 2):
        b = kernel_exp(x, other)
        same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
        assert same.all(), other
    # the vector exp without its range check, where loops take it: inputs in
    # [-87, 87] and NaNs, whose very bits it must keep
    inside = x[~(np.abs(x) > 87)]
    inside = np.concatenate([inside, np.float32([87.0, -87.0, 0.0, -0.0])])
    assert np.count_nonzero(np.isnan(inside)) > 1000 and inside.size > 2**18
    np.testing.assert_array_equal(kernel_exp(inside, 3).view(np.uint32),
                                  kernel_exp(inside, 0).view(np.uint32))


def kernel_exp_f64(x, portable):
    return _bindings.exp_f64(np.ascontiguousarray(x, dtype=np.float64), portable)


def ulp_error_f64(got, x):
    """|got - exp(x)| in ULPs of the double result, against 80-bit exp."""
    exact = np.exp(x.astype(np.longdouble))
    spacing = np.spacing(np.abs(exact).astype(np.float64)).astype(np.longdouble)
    return (np.abs(got.astype(np.longdouble) - exact) / spacing).astype(np.float64)


needs_long_double = pytest.mark.skipif(
    np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
    reason="long double is no wider than double here")

F64_EDGES = np.array([0.0, -0.0, 1e-300, -1e-300, 708.0, -708.0, 709.782712893384,
                      -708.3964185322641, -745.1332191019411, -744.44007192138,
                      -720.0, 705.5, -247.49954678520902])


@needs_long_double
def test_exp_f64_within_its_stated_error_on_a_sample():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-746, 710, 2**20),
                        rng.integers(0, 2**64, 2**20, dtype=np.uint64).view(np.float64),
                        F64_EDGES])
    x = x[(x >= -746) & (x <= 709.78)]
    tiny = np.finfo(np.float64).tiny
    for portable in (0, 1):
        got = kernel_exp_f64(x, portable)
        with np.errstate(under="ignore"):
            exact = np.exp(x.astype(np.longdouble))
        normal = exact >= tiny
        assert ulp_error_f64(got[normal], x[normal]).max() <= 0.5108   # exp_f64.h: 0.51074
        sub = ~normal
        steps = np.abs(got[sub].astype(np.longdouble) - exact[sub]) / np.longdouble(2.0**-1074)
        assert steps.max() <= 0.5025   # exp_f64.h: 0.50244


def test_exp_f64_special_values_are_exact():
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 709.79, 710.0, 1e300, -745.14, -746.0,
                  -1e300, 0.0, -0.0, -745.13, 709.78])
    for portable in (0, 1):
        got = kernel_exp_f64(x, portable)
        assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2]) and np.isnan(got[3])
        assert got[4] == np.inf and got[5] == np.inf and got[6] == np.inf
        assert got[7] == 0 and got[8] == 0 and got[9] == 0
        assert got[10] == 1 and got[11] == 1
        assert got[12] == 5e-324             # the smallest subnormal, rounded up
        assert np.isfinite(got[13]) and got[13] > 1.7e308


def test_exp_f64_table_and_constants_are_the_rounded_values():
    # exp_f64.h's table of H_j, T_j pairs and its ln2/128 split, recomputed
    mpmath = pytest.importorskip("mpmath")
    import pathlib
    import re
    text = (pathlib.Path(__file__).parent.parent / "csrc" / "exp_f64.h").read_text()
    body = re.search(r"#define PSM_EXP_F64_TABLE \\\n(.*?)\n\n", text, re.S).group(1)
    values = [float.fromhex(v) if v != "0.0" else 0.0
              for v in re.findall(r"-?0x[0-9a-f.]+p[+-]\d+|0\.0", body)]
    assert len(values) == 256
    with mpmath.workprec(200):
        for j in range(128):
            exact = mpmath.power(2, mpmath.mpf(j) / 128)
            h, t = values[2 * j], values[2 * j + 1]
            assert h == float(exact) and t == float((exact - h) / h), j
        ln2_128 = mpmath.log(2) / 128
        hi = float.fromhex(re.search(r"PSM_LN2_128_HI (\S+)", text).group(1))
        lo = float.fromhex(re.search(r"PSM_LN2_128_LO (\S+)", text).group(1))
        assert float(ln2_128 - hi) == lo and abs(hi - ln2_128) < 2.0**-40
        assert float.fromhex(re.search(r"PSM_128_OVER_LN2 (\S+)", text).group(1)) == \
            float(128 / mpmath.log(2))


@needs_simd
def test_vector_and_portable_exp_f64_agree_bit_for_bit():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.integers(0, 2**64, 2**20 + 3, dtype=np.uint64).view(np.float64),
                        rng.uniform(-750, 712, 2**20 + 1), F64_EDGES,
                        np.array([np.inf, -np.inf, np.nan])])
    for start in (0, 1, 2, 3):            # every lane position of the tail
        a, b = kernel_exp_f64(x[start:], 0), kernel_exp_f64(x[start:], 1)
        same = (a.view(np.uint64) == b.view(np.uint64)) | (np.isnan(a) & np.isnan(b))
        assert same.all()


def results(x, y, portable, monkeypatch, **kw):
    """Per-position losses and gradient, and the losses of a call without
    the gradient (another path through the kernel)."""
    def both():
        losses, grad = pysafemax.softmax_loss(x, y, return_grad=True, reduction="none", **kw)
        return losses, grad, pysafemax.softmax_loss(x, y, reduction="none", **kw)
    if not portable:
        return both()
    with _bindings.portable_code():
        return both()


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        u, v = np.ascontiguousarray(u), np.ascontiguousarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u.view(np.uint8), v.view(np.uint8))


@needs_simd
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("classes", WIDTHS)
def test_vector_path_gives_the_portable_bits(dtype, method, classes, monkeypatch):
    rng = np.random.default_rng(classes)
    rows = 3 if classes > 1000 else 9
    # 300 and 1000: many x_j - max below -708, exp's cold path (float64)
    for scale in (0.5, 30.0, 300.0) + ((1000.0,) if dtype == np.float64 else ()):
        x = (rng.standard_normal((rows, classes)) * scale).astype(dtype)
        if classes > 2:   # special values and ties in some rows
            x[0, classes // 2] = np.inf if method != "naive" else 90.0
            x[1, 1] = np.nan
            x[2, :] = x[2, 0]
            x[3 % rows, -1] = -np.inf
        y = rng.integers(0, classes, rows)
        some_zero = rng.random(classes) + 0.5
        some_zero[::3] = 0.0
        for options in ({}, {"weight": rng.random(classes) + 0.5}, {"ignore_index": 0},
                        {"label_smoothing": 0.1},
                        {"label_smoothing": 0.3, "weight": some_zero}):
            assert_same_bits(results(x, y, False, monkeypatch, method=method, **options),
                             results(x, y, True, monkeypatch, method=method, **options))


@needs_simd
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("classes", [1, 2, 3, 5, 17, 33, 70, 2047, 2050, 4097])
def test_float64_layouts_give_the_contiguous_bits(method, classes):
    # Fortran order and strided class axes take the portable loops (or the
    # vector loops on copies), which must give the vector path's bits, for
    # the loss, its gradient, softmax and log_softmax.
    rng = np.random.default_rng(classes + 100)
    rows = 6
    x = rng.standard_normal((rows, classes)) * 40
    if classes > 2:
        x[0, classes // 2] = np.inf if method != "naive" else 800.0
        x[1, 1] = np.nan
        x[2, :] = x[2, 0]
        x[3, -1] = -np.inf
        x[4, ::2] = -1e300
    y = rng.integers(0, classes, rows)
    kw = dict(method=method, reduction="none", return_grad=True)
    want = pysafemax.softmax_loss(x, y, **kw)
    want_sm = softmax_results(x, method)
    wide = np.zeros((rows, 2 * classes))
    wide[:, ::2] = x
    for layout in (np.asfortranarray(x), wide[:, ::2], wide[::-1, ::2][::-1]):
        assert_same_bits(want, pysafemax.softmax_loss(layout, y, **kw))
        assert_same_bits_any_dtype(want_sm, softmax_results(layout, method))
    # classes on axis 0 of a C array: a stride of `rows` elements
    assert_same_bits(want, [np.asarray(a).T if np.ndim(a) == 2 else a for a in
                            pysafemax.softmax_loss(np.ascontiguousarray(x.T), y, axis=0,
                                                   **kw)])
    with _bindings.portable_code():
        assert_same_bits(want, pysafemax.softmax_loss(np.asfortranarray(x), y, **kw))


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
        u, v = np.ascontiguousarray(u), np.ascontiguousarray(v)
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


@needs_simd
@pytest.mark.parametrize("method", ["stable", "maxsub"])
@pytest.mark.parametrize("classes", [17, 40, 1000, 2049, 6151])
def test_rows_at_the_edge_of_the_exps_unchecked_range_give_the_portable_bits(method,
                                                                           classes):
    # The exps of a row's sums and stored exps (the forward of rows up to
    # 2048 classes, softmax, log_softmax, the gradient) skip their range
    # check where the row's min and max put every x_j - max within
    # [-87, 87]: rows just inside and just outside that range, with a NaN,
    # -inf or +inf among them, must give the portable loops' bits.
    rng = np.random.default_rng(classes)
    inside = np.float32(-87.0)
    outside = np.nextafter(inside, np.float32(-np.inf))
    rows = []
    for top in (0.0, 10.0, -50.0):
        for low in (inside, outside, np.float32(-100.0)):
            row = (rng.random(classes) * (-low) + low + top).astype(np.float32)
            row[rng.integers(classes)] = low + np.float32(top)
            row[rng.integers(classes)] = top
            rows.append(row)
    rows = np.array(rows)
    for special in (np.nan, -np.inf, np.inf):
        row = rows[0].copy()
        row[classes // 3] = special
        rows = np.vstack([rows, row])
    y = rng.integers(0, classes, len(rows))
    def outputs():
        return (pysafemax.softmax_loss(rows, y, method=method, reduction="none",
                                       return_grad=True)
                + (pysafemax.softmax_loss(rows, y, method=method, reduction="none"),
                   pysafemax.softmax(rows, method=method), pysafemax.log_softmax(rows)))
    fast = outputs()
    with _bindings.portable_code():
        portable = outputs()
    assert_same_bits(fast, portable)
    # the softmax far below the max is the exact path's subnormals and zeros
    softmax = fast[3][~np.isnan(fast[3])]
    assert np.count_nonzero(softmax < np.finfo(np.float32).tiny) > 0


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
    monkeypatch.setattr(_core, "_default_options",
                        _core._new_plain_options("stable", "mean", _core._env_threads))


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


def test_exp_store_probe_stores_each_chunks_normalized_exps_on_every_path():
    x = np.random.default_rng(6).standard_normal(PROBE_ELEMENTS, dtype=np.float32) * 4
    expected_sum = _bindings.exp_sum_probe_f32(x, 1, 0)
    chunk = 32768                           # PSM_CHUNK_ELEMENTS (chunks.h)
    exact = np.exp(x.astype(np.float64))
    chunk_sums = np.add.reduceat(exact, np.arange(0, x.size, chunk))
    exact /= np.repeat(chunk_sums, chunk)[:x.size]
    outputs = []
    for portable in (0, 1):
        for threads in (1, 2):
            out = np.full_like(x, np.nan)
            assert _bindings.exp_store_probe_f32(x, out, threads, portable) == expected_sum
            outputs.append(out)
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    # an exp within 0.603 ULP, a chunk's sum to ~1e-7, then two roundings
    np.testing.assert_allclose(outputs[0], exact, rtol=1e-6, atol=0)


def test_probes_refuse_outputs_they_cannot_fill():
    x = np.zeros(100, np.float32)
    for probe in (_bindings.exp_store_probe_f32, _bindings.copy_probe_f32):
        with pytest.raises(ValueError, match="out has 99 elements"):
            probe(x, np.zeros(99, np.float32), 1, 0)
        with pytest.raises(ValueError, match="out must be C-contiguous float32"):
            probe(x, np.zeros(100, np.float64), 1, 0)
        with pytest.raises(ValueError, match="out overlaps x"):
            probe(x, x, 1, 0)


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


def _loss_bits(x, y, **options):
    """The per-row losses' bits, and with the gradient its bits after them."""
    got = pysafemax.softmax_loss(x, y, reduction="none", **options)
    bits = np.dtype(f"u{x.dtype.itemsize}")
    if options.get("return_grad"):
        return np.concatenate([got[0].view(bits), got[1].reshape(-1).view(bits)])
    return got.view(bits)


# Per dtype: the rows' scales, and special values: huge, near exp's
# overflow and underflow, subnormal (float64), signed zeros, inf, NaN.
FEW_CLASSES_DATA = {
    np.float32: ([1.0, 30.0, 100.0],
                 [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 88.0, -104.0]),
    np.float64: ([1.0, 30.0, 100.0, 1000.0],
                 [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e300, -1e300, 709.5, -745.0, 5e-324,
                  -2.5e-320]),
}


@needs_simd
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [*range(1, 18), 33, 100, 256, 257])
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_rows_of_few_classes_read_eight_at_a_time_give_each_row_its_own_bits(classes,
                                                                           method, dtype):
    """Rows of up to 16 classes take an eight-row vector loop, and plain
    labels on rows of up to 256 are finished eight at a time: each row's
    loss and gradient are the ones it has alone (one row per call), and the
    twin's, with one thread or two."""
    scales, specials = FEW_CLASSES_DATA[dtype]
    rng = np.random.default_rng(classes)
    rows = 8 * 3 + 5   # three batches of eight and a remainder
    x = (rng.standard_normal((rows, classes)) * rng.choice(scales, (rows, 1)))
    x = x.astype(dtype)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, len(specials))] = specials
    x[3] = x[3, 0]   # a row of ties
    y = rng.integers(0, classes, rows)
    for options in ({}, {"label_smoothing": 0.1}, {"ignore_index": 0},
                    {"weight": rng.uniform(0, 2, classes)}, {"z_loss": 1e-3}):
        for grad in (False, True):
            options["return_grad"] = grad
            got = _loss_bits(x, y, method=method, **options)
            two_threads = _loss_bits(x, y, method=method, threads=2, **options)
            with _bindings.portable_code():
                twin = _loss_bits(x, y, method=method, **options)
            alone = [_loss_bits(x[i:i + 1], y[i:i + 1], method=method, **options)
                     for i in range(rows)]
            if grad:   # the losses, then the gradient rows
                alone = [a[:1] for a in alone] + [a[1:] for a in alone]
            np.testing.assert_array_equal(got, twin, err_msg=str(options))
            np.testing.assert_array_equal(got, two_threads, err_msg=str(options))
            np.testing.assert_array_equal(got, np.concatenate(alone), err_msg=str(options))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [2, 10, 16, 100])
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_an_ignored_label_anywhere_in_a_run_of_plain_rows_keeps_every_rows_bits(classes,
                                                                                method,
                                                                                dtype):
    """Plain rows are finished sixteen at a time where the next sixteen
    labels are all plain, else eight, else one by one: an ignored label at
    each position of 40 rows (in either half of a sixteen, in an eight, in
    the remainder) gives every other row the loss and gradient it has alone,
    and the ignored one zeros, on the vector and the portable path."""
    rng = np.random.default_rng(classes)
    rows = 40
    x = (rng.standard_normal((rows, classes)) * 4).astype(dtype)
    y = rng.integers(1, classes, rows)   # label 0 is the one ignored below
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")

    def alone(**options):
        return [pysafemax.softmax_loss(x[i:i + 1], y[i:i + 1], method=method,
                                       reduction="none", **options) for i in range(rows)]

    # a forward-only row's loss may differ from its loss with the gradient
    # in the last bit (row.h), so each is checked against its own kind
    alone_forward = np.concatenate(alone())
    with_grad = alone(return_grad=True)
    alone_loss = np.concatenate([a[0] for a in with_grad])
    alone_grad = np.concatenate([a[1] for a in with_grad])
    for where in range(rows):
        labels = y.copy()
        labels[where] = 0
        expect = [alone_forward.copy(), alone_loss.copy(), alone_grad.copy()]
        for e in expect:
            e[where] = 0
        for portable in (False, True):
            with _bindings.portable_code() if portable else contextlib.nullcontext():
                forward = pysafemax.softmax_loss(x, labels, method=method, ignore_index=0,
                                                 reduction="none")
                loss, grad = pysafemax.softmax_loss(x, labels, method=method, ignore_index=0,
                                                    reduction="none", return_grad=True)
            for got, e in zip([forward, loss, grad], expect):
                np.testing.assert_array_equal(got.view(bits), e.view(bits),
                                              err_msg=f"ignored at {where}")


def _few_class_rows(rng, classes, rows, dtype=np.float32):
    """Rows of random scale, among them one of each special kind, placed in
    random rows so that each kind lands in another lane of the eight-row
    batches (and in the remainder) from seed to seed."""
    x = rng.standard_normal((rows, classes)) * rng.choice([1.0, 30.0, 100.0], (rows, 1))
    x = x.astype(dtype)
    last = classes - 1
    kinds = [{0: np.inf}, {last: -np.inf}, {classes // 2: np.nan},
             {j: -np.inf for j in range(classes)},                  # no finite logit
             {j: np.nan for j in range(classes)},
             {j: 2.5 for j in range(classes)},                      # all tied
             {0: 7.0, last: 7.0},                                   # a tie of the max
             {0: 1e38, last: -1e38},                                # huge
             {0: 1e-45, last: -1e-40},                              # subnormal
             {j: -1.0 - j for j in range(classes)} | {last: -0.0},  # max -0.0
             {j: -1.0 - j for j in range(classes)} | {0: 0.0, last: -0.0},   # max +0.0
             {last: 90.0},                                          # naive overflows
             {0: -np.inf, last: 88.0}]
    if dtype == np.float64:   # the same kinds at double's range
        kinds += [{0: 1e300, last: -1e300}, {0: 5e-324, last: -2.5e-320},
                  {last: 710.0}, {0: -np.inf, last: 709.0}]
    shuffled = [kinds[k] for k in rng.permutation(len(kinds))]
    for row, kind in zip(rng.permutation(rows), shuffled):
        for j, v in kind.items():
            x[row, j] = v
    return x


@needs_simd
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", range(1, 18))
@pytest.mark.parametrize("method", pysafemax.METHODS + ("log_softmax",))
def test_softmax_of_rows_of_few_classes_read_eight_at_a_time_gives_each_row_its_own_bits(
        classes, method, dtype):
    """Rows of up to 16 classes: softmax and log_softmax take eight rows at
    once; each row gets the bits it has alone (one row per call, the
    per-row path) and the twin's, wherever the batch puts it."""
    def result(x):
        if method == "log_softmax":
            return pysafemax.log_softmax(x)
        return pysafemax.softmax(x, method=method)

    rng = np.random.default_rng(classes)
    bits = np.dtype(f"u{np.dtype(dtype).itemsize}")
    # one batch; a sixteen, an eight (log_softmax finishes sixteen rows at
    # once where it can) and a remainder; two sixteens and a remainder
    for rows in (8, 8 * 3 + 5, 8 * 4 + 5):
        for _ in range(3):
            x = _few_class_rows(rng, classes, rows, dtype)
            got = result(x).view(bits)
            with _bindings.portable_code():
                twin = result(x).view(bits)
            alone = np.concatenate([result(x[i:i + 1]) for i in range(rows)])
            np.testing.assert_array_equal(got, twin)
            np.testing.assert_array_equal(got, alone.view(bits))


@pytest.mark.parametrize("classes", [1, 7, 10, 16, 17])
@pytest.mark.parametrize("method", pysafemax.METHODS + ("log_softmax",))
def test_softmax_of_few_classes_gives_the_same_bits_on_any_threads_and_chunks(classes,
                                                                            method):
    """Enough rows for two threads, chunks whose starts are not multiples
    of eight (psm_chunk_positions), and a remainder: the bits of one thread,
    and of one row per call."""
    def result(x, threads):
        if method == "log_softmax":
            return pysafemax.log_softmax(x, threads=threads)
        return pysafemax.softmax(x, method=method, threads=threads)

    rng = np.random.default_rng(classes)
    rows = 300001 // classes
    x = (rng.standard_normal((rows, classes)) * 4).astype(np.float32)
    x[rng.permutation(rows)[:13]] = _few_class_rows(rng, classes, 13)
    first = result(x, 1).view(np.uint32)
    for threads in (2, 3):
        np.testing.assert_array_equal(first, result(x, threads).view(np.uint32))
    some = rng.choice(rows, 200, replace=False)
    alone = np.concatenate([result(x[i:i + 1], 1) for i in some])
    np.testing.assert_array_equal(first[some], alone.view(np.uint32))


def test_log1p_within_its_stated_error_on_a_sample():
    """csrc/log1p_f64.h's bound (bench/check_log1p_ulp.py measures it over
    2^26 inputs) on a sample of the stable method's domain, s >= 0."""
    rng = np.random.default_rng(2)
    s = np.concatenate([np.exp2(rng.uniform(-60, 40, 2 ** 18)), rng.uniform(0, 4, 2 ** 16),
                        [0.0, 5e-324, 1e-30, 0.40262, np.sqrt(0.5) - 1 + 1e-17, 2.0 ** 1000]])
    exact = np.log1p(s.astype(np.longdouble))
    ulp = np.abs(np.spacing(exact.astype(np.float64))).astype(np.longdouble)
    for portable in (0, 1):
        got = _bindings.log1p_f64(s, portable)
        assert float((np.abs(got.astype(np.longdouble) - exact) / ulp).max()) <= 0.840
        assert got[-6] == 0.0 and got[-4] == 1e-30   # log1p(s) = s for tiny s


@needs_simd
def test_vector_and_portable_log1p_agree_bit_for_bit():
    rng = np.random.default_rng(3)
    s = np.exp2(rng.uniform(-80, 60, 2 ** 16 + 7))
    # the specials among ordinary values: the vector path takes sixteen at a
    # time, and one out of its range sends all sixteen to the scalar one
    s[rng.choice(s.size - 7, 7, replace=False)] = [np.nan, np.inf, -0.0, -0.5, 2.0 ** 1001,
                                                   0.0, 1.0]
    s[-7:] = [np.nan, np.inf, -0.0, -0.5, 2.0 ** 1001, 0.0, 1.0]
    vector = _bindings.log1p_f64(s, 0)
    np.testing.assert_array_equal(vector.view(np.uint64),
                                  _bindings.log1p_f64(s, 1).view(np.uint64))
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(vector[-7:-2], np.log1p(s[-7:-2]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("bad", [10, -1, 2**40])
@pytest.mark.parametrize("where", [0, 7, 8, 13, 28])
def test_a_bad_label_in_a_batch_of_eight_rows_is_named(method, bad, where, dtype):
    # rows of 10 classes are read eight at a time; a bad label anywhere in a
    # batch must still stop the call at its own position
    x = np.zeros((29, 10), dtype)
    y = np.arange(29) % 10
    y[where] = bad
    for grad in (False, True):
        with pytest.raises(ValueError, match=rf"labels\[{where}\] = {bad} is out of range"):
            pysafemax.softmax_loss(x, y, method=method, return_grad=grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", list(range(1, 18)) + [31, 33, 1000])
def test_stable_softmax_writes_positive_nan_where_a_row_has_none(classes, dtype):
    # A row with no softmax (a NaN logit of either sign, a +inf logit, every
    # logit -inf) is written +NaN throughout, not multiplied by a NaN factor,
    # whose sign the NaN read would set: in the eight-row batches (rows 3,
    # 9, 12 and 14) and in the rows left over after them (rows 17-19), on
    # the vector and the portable path, at 1 and 2 threads.
    x = np.random.default_rng(classes).standard_normal((20, classes)).astype(dtype)
    negative_nan = np.copysign(dtype(np.nan), -1)
    x[3, classes // 2] = negative_nan
    x[9, 0] = np.nan
    x[12, -1] = np.inf
    x[14, :] = -np.inf
    x[17, classes - 1] = negative_nan
    x[18, 0] = np.nan
    x[19, classes // 3] = np.inf
    bad = [3, 9, 12, 14, 17, 18, 19]
    positive_nan = np.array(np.nan, dtype).view(f"u{x.itemsize}")
    for threads in (1, 2):
        got = pysafemax.softmax(x, threads=threads)
        with _bindings.portable_code():
            twin = pysafemax.softmax(x, threads=threads)
        for p in (got, twin):
            assert np.all(p[bad].view(f"u{x.itemsize}") == positive_nan)
            kept = np.setdiff1d(np.arange(20), bad)
            assert np.all(np.isfinite(p[kept]))
        np.testing.assert_array_equal(got.view(f"u{x.itemsize}"), twin.view(f"u{x.itemsize}"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("classes", [1, 4, 10, 16, 17, 1000])
def test_a_nan_loss_reduces_to_positive_nan(method, classes, dtype):
    # Which of two NaNs a sum keeps depends on the operand order a compiler
    # picks; the kernel writes every NaN total as +NaN, on every path
    # NaNs made by the arithmetic, not read: inf - inf and inf / inf give
    # the x86 default NaN, whose sign bit is set
    x = np.zeros((24, classes), dtype)
    x[5, :] = np.inf
    x[9, :] = 1000.0    # naive: exp overflows (float32 and float64), inf / inf
    y = np.zeros(24, np.int64)
    positive_nan = np.float64(np.nan).view(np.uint64)
    for reduction in ("mean", "sum"):
        for threads in (1, 2):
            for grad in (False, True):
                got = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                             threads=threads, return_grad=grad)
                loss = np.float64(got[0] if grad else got)
                assert loss.view(np.uint64) == positive_nan
                with _bindings.portable_code():
                    twin = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                                  threads=threads)
                assert np.float64(twin).view(np.uint64) == positive_nan


@pytest.mark.parametrize("classes", [2, 10, 16, 17, 100])
@pytest.mark.parametrize("offset", [0, 3])
def test_the_reduced_loss_keeps_what_each_lane_of_its_sum_rounds_off(classes, offset):
    # A chunk's losses join eight compensated lanes (internal.h's psm_lanes;
    # eight rows of a batch in one vector step where the CPU allows).  Eight
    # losses of 1e16 (whose ulp is 2), one in each lane, then thousands of
    # ln 2: a plain sum of each lane would round every ln 2 away.  offset
    # puts a few rows of ln 2 first, so that the batches start mid-lane.
    rows = offset + 8 + 8 * 700
    x = np.zeros((rows, classes))
    x[offset:offset + 8, 1] = -1e16
    y = np.zeros(rows, np.int64)
    y[offset:offset + 8] = 1
    for dtype in (np.float64, np.float32):
        # the losses: 1e16 (as the dtype has it) + ln(classes - 1), and
        # ln(classes); float64's per-position losses are the terms summed
        logits = x.astype(dtype)
        exact = math.fsum([float(dtype(1e16)) + math.log(classes - 1)] * 8
                          + [math.log(classes)] * (rows - 8))
        if dtype == np.float64:
            terms = pysafemax.softmax_loss(logits, y, reduction="none").tolist()
            assert math.fsum(terms) == pytest.approx(exact, rel=2**-52, abs=0)
            exact = math.fsum(terms)
        for threads in (1, 2):
            got = pysafemax.softmax_loss(logits, y, reduction="sum", threads=threads)
            assert got == pytest.approx(exact, rel=2**-52, abs=0), (dtype, threads)
            with _bindings.portable_code():
                twin = pysafemax.softmax_loss(logits, y, reduction="sum", threads=threads)
            assert np.float64(got).view(np.uint64) == np.float64(twin).view(np.uint64)
