"""Memory layouts: every layout numpy can hand us gives, bit for bit, what the
same values give as a fresh C-contiguous, native, aligned array; the caller's
memory is never written; C-contiguous float32/float64 input reaches the kernel
without a copy (issue 2, "Inputs": layouts, dtypes, labels).
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import _core, reference

N, C = 6, 5
MODULES = [pytest.param(pysafemax, id="kernel"), pytest.param(reference, id="reference")]
DTYPES = [np.float16, np.float32, np.float64]
MODES = [(reduction, return_grad) for reduction in pysafemax.REDUCTIONS
         for return_grad in (False, True)]


def _values():
    """Logits that take every method down its interesting paths: ordinary
    rows, a row naive overflows on, a gap maxsub clamps, a -inf, ties."""
    rng = np.random.default_rng(20240611)
    v = rng.standard_normal((N, C)) * 3.0
    v[1] = [100.0, 20.0, 0.0, -5.0, 3.0]
    v[2] = [0.0, 100.0, -1.0, 2.0, 1.0]
    v[3, 2] = -np.inf
    v[4] = 7.0
    return v


VALUES = _values()
LABELS = np.array([0, 1, 0, 3, 4, 2], dtype=np.int64)


# Each builder returns (x, store): x holds VALUES in its layout, store is a
# C-contiguous 1-D array over all the memory x can reach, gaps included.  Gaps
# hold NaN, so a layer that reads between strided elements gets caught.
def _c_order(dtype):
    store = np.full(N * C, np.nan, dtype)
    x = store.reshape(N, C)
    x[...] = VALUES
    return x, store


def _fortran(dtype):
    store = np.full(N * C, np.nan, dtype)
    x = store.reshape(C, N).T
    x[...] = VALUES
    assert x.flags.f_contiguous and not x.flags.c_contiguous
    return x, store


def _strided(shape, index):
    def build(dtype):
        store = np.full(int(np.prod(shape)), np.nan, dtype)
        x = store.reshape(shape)[index]
        x[...] = VALUES
        assert not x.flags.c_contiguous
        return x, store
    return build


def _readonly(build):
    def readonly(dtype):
        x, store = build(dtype)
        x.flags.writeable = False
        return x, store
    return readonly


def _big_endian(build):
    def big_endian(dtype):
        x, store = build(np.dtype(dtype).newbyteorder(">"))
        assert not x.dtype.isnative
        return x, store
    return big_endian


def _misaligned(dtype):
    """A writable array one byte into a bytearray: np.frombuffer at offset 1."""
    itemsize = np.dtype(dtype).itemsize
    raw = bytearray(N * C * itemsize + 1)
    x = np.frombuffer(raw, dtype=dtype, count=N * C, offset=1).reshape(N, C)
    x[...] = VALUES
    assert not x.flags.aligned and x.flags.writeable
    return x, np.frombuffer(raw, np.uint8)


def _misaligned_bytes(dtype):
    """Read-only and misaligned: np.frombuffer on an immutable bytes object."""
    raw = b"\x00" + np.asarray(VALUES, dtype).tobytes()
    x = np.frombuffer(raw, dtype=dtype, offset=1).reshape(N, C)
    assert not x.flags.aligned and not x.flags.writeable
    return x, np.frombuffer(raw, np.uint8)


def _misaligned_strided(dtype):
    itemsize = np.dtype(dtype).itemsize
    raw = bytearray(N * 2 * C * itemsize + 1)
    full = np.frombuffer(raw, dtype=dtype, count=N * 2 * C, offset=1)
    full[...] = np.nan
    x = full.reshape(N, 2 * C)[:, 1::2]
    x[...] = VALUES
    assert not x.flags.aligned
    return x, np.frombuffer(raw, np.uint8)


def _broadcast_rows(dtype):
    """Every row the same memory (row stride 0), read-only by numpy's rule."""
    store = np.asarray(VALUES[1], dtype).copy()
    x = np.broadcast_to(store, (N, C))
    assert x.strides[0] == 0
    return x, store


def _transposed_strided(dtype):
    store = np.full(2 * C * N, np.nan, dtype)
    x = store.reshape(2 * C, N)[::2].T
    x[...] = VALUES
    assert not x.flags.c_contiguous and not x.flags.f_contiguous
    return x, store


LAYOUTS = {
    "c_contiguous": _c_order,
    "fortran": _fortran,
    "cols_step2": _strided((N, 2 * C), np.s_[:, ::2]),
    "rows_step3": _strided((3 * N, C), np.s_[::3]),
    "rows_step2_cols_step3": _strided((2 * N, 3 * C), np.s_[::2, 1::3]),
    "rows_reversed": _strided((N, C), np.s_[::-1]),
    "cols_reversed": _strided((N, C), np.s_[:, ::-1]),
    "both_reversed_step2": _strided((2 * N, 2 * C), np.s_[::-2, ::-2]),
    "transposed_strided": _transposed_strided,
    "readonly": _readonly(_c_order),
    "readonly_fortran": _readonly(_fortran),
    "readonly_strided": _readonly(_strided((3 * N, C), np.s_[::3])),
    "big_endian": _big_endian(_c_order),
    "big_endian_fortran": _big_endian(_fortran),
    "big_endian_reversed": _big_endian(_strided((N, C), np.s_[::-1, ::-1])),
    "misaligned": _misaligned,
    "misaligned_readonly_bytes": _misaligned_bytes,
    "misaligned_strided": _misaligned_strided,
    "broadcast_rows": _broadcast_rows,
}
def _plain(x):
    """A fresh C-contiguous, aligned, writable, native-order copy of x."""
    return np.array(x, dtype=x.dtype.newbyteorder("="), order="C", copy=True)


def _bits(value):
    a = np.ascontiguousarray(np.asarray(value))
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def assert_identical(got, expected, context=""):
    """Same type, dtype, shape and bits (NaN payloads and signed zeros too)."""
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected), context
        for g, e in zip(got, expected):
            assert_identical(g, e, context)
        return
    assert type(got) is type(expected), context
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.shape == expected.shape, context
    np.testing.assert_array_equal(got, expected, err_msg=context)
    np.testing.assert_array_equal(_bits(got), _bits(expected), err_msg=context)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_loss_on_layout_equals_contiguous(module, dtype, layout, method):
    x, _ = LAYOUTS[layout](dtype)
    plain = _plain(x)
    for reduction, return_grad in MODES:
        context = f"reduction={reduction} return_grad={return_grad}"
        got = module.softmax_loss(x, LABELS, method=method, reduction=reduction,
                                  return_grad=return_grad)
        expected = module.softmax_loss(plain, LABELS, method=method,
                                       reduction=reduction, return_grad=return_grad)
        assert_identical(got, expected, context)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_softmax_and_log_softmax_on_layout_equal_contiguous(module, dtype, layout):
    x, _ = LAYOUTS[layout](dtype)
    plain = _plain(x)
    for method in pysafemax.METHODS:
        assert_identical(module.softmax(x, method=method),
                         module.softmax(plain, method=method), method)
    assert_identical(module.log_softmax(x), module.log_softmax(plain))


# check=True with float16 logits and return_grad=True compares the gradient
# after it was rounded to float16 against the float32 reference, with float32's
# tolerance, so it always raises; test_check_float16_gradient pins that down.
FLOAT16_GRAD_CHECK_BUG = pytest.mark.xfail(
    strict=True, raises=pysafemax.ReferenceMismatchError,
    reason="check=True, return_grad=True on float16 logits: _core compares the "
           "float16-rounded gradient with the float32 reference at float32 "
           "tolerance and raises ReferenceMismatchError")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_check_passes_on_every_layout(dtype, layout):
    x, _ = LAYOUTS[layout](dtype)
    for method in pysafemax.METHODS:
        got = pysafemax.softmax_loss(x, LABELS, method=method, reduction="none",
                                     check=True)
        expected = pysafemax.softmax_loss(_plain(x), LABELS, method=method,
                                          reduction="none")
        assert_identical(got, expected, method)
        if dtype is not np.float16:    # see FLOAT16_GRAD_CHECK_BUG
            got = pysafemax.softmax_loss(x, LABELS, method=method, reduction="none",
                                         return_grad=True, check=True)
            expected = pysafemax.softmax_loss(_plain(x), LABELS, method=method,
                                              reduction="none", return_grad=True)
            assert_identical(got, expected, method)


@FLOAT16_GRAD_CHECK_BUG
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
def test_check_float16_gradient(method, reduction):
    x = np.linspace(-3, 3, 12, dtype=np.float16).reshape(3, 4)
    y = [0, 1, 2]
    got = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                 return_grad=True, check=True)
    expected = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                      return_grad=True)
    assert_identical(got, expected)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_caller_memory_is_never_written(module, dtype, layout):
    x, store = LAYOUTS[layout](dtype)
    y = LABELS.copy()
    y.flags.writeable = layout != "readonly"     # both kinds of label array
    store_before, y_before = store.tobytes(), y.tobytes()
    writeable_before = x.flags.writeable
    outputs = []
    for method in pysafemax.METHODS:
        for reduction, return_grad in MODES:
            check = module is pysafemax and not (
                dtype is np.float16 and return_grad)   # FLOAT16_GRAD_CHECK_BUG
            kwargs = {"check": True} if check else {}
            result = module.softmax_loss(x, y, method=method, reduction=reduction,
                                         return_grad=return_grad, **kwargs)
            outputs.extend(result if isinstance(result, tuple) else [result])
        outputs.append(module.softmax(x, method=method))
    outputs.append(module.log_softmax(x))
    assert store.tobytes() == store_before
    assert y.tobytes() == y_before
    assert x.flags.writeable == writeable_before
    for out in outputs:
        if isinstance(out, np.ndarray):
            assert not np.shares_memory(out, store)
            assert not np.shares_memory(out, y)


@pytest.mark.parametrize("module", MODULES)
def test_label_lists_are_not_modified(module):
    labels = [0, 1, 0, 3, 4, 2]
    as_tuple = tuple(labels)
    module.softmax_loss(VALUES, labels, return_grad=True)
    module.softmax_loss(VALUES, as_tuple, reduction="none")
    assert labels == [0, 1, 0, 3, 4, 2] and as_tuple == (0, 1, 0, 3, 4, 2)


def _float16_cases():
    return [pytest.param(layout, id=layout)
            for layout in ("c_contiguous", "fortran", "cols_step2",
                           "big_endian", "misaligned")]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout", _float16_cases())
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_float16_is_computed_in_float32(module, layout, method):
    x, _ = LAYOUTS[layout](np.float16)
    x32 = _plain(x).astype(np.float32)
    for reduction, return_grad in MODES:
        context = f"reduction={reduction} return_grad={return_grad}"
        got = module.softmax_loss(x, LABELS, method=method, reduction=reduction,
                                  return_grad=return_grad)
        expected = module.softmax_loss(x32, LABELS, method=method,
                                       reduction=reduction, return_grad=return_grad)
        loss, grad = got if return_grad else (got, None)
        loss32, grad32 = expected if return_grad else (expected, None)
        if reduction == "none":
            assert loss.dtype == np.float16, context
            assert_identical(loss, loss32.astype(np.float16), context)
        else:
            assert_identical(loss, loss32, context)   # Python floats, from float32
        if return_grad:
            assert grad.dtype == np.float16, context
            assert_identical(grad, grad32.astype(np.float16), context)
    assert_identical(module.softmax(x, method=method),
                     module.softmax(x32, method=method).astype(np.float16))
    assert_identical(module.log_softmax(x),
                     module.log_softmax(x32).astype(np.float16))


def _label_variants():
    cases = {}
    for dtype in (np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64,
                  np.intc, np.intp, np.longlong, np.ulonglong):
        cases[np.dtype(dtype).name] = LABELS.astype(dtype)
    for dtype in (">i2", ">i4", ">i8", ">u4", ">u8"):
        cases[f"big_endian_{dtype[1:]}"] = LABELS.astype(dtype)
    cases["list"] = LABELS.tolist()
    cases["tuple"] = tuple(LABELS.tolist())
    cases["list_of_numpy_ints"] = [np.uint8(v) for v in LABELS]
    cases["list_of_mixed_ints"] = [int(v) if i % 2 else np.int16(v)
                                   for i, v in enumerate(LABELS)]
    cases["strided"] = np.repeat(LABELS, 2)[::2]
    cases["reversed"] = LABELS[::-1].copy()[::-1]
    readonly = LABELS.copy()
    readonly.flags.writeable = False
    cases["readonly"] = readonly
    raw = bytearray(LABELS.size * 8 + 3)
    misaligned = np.frombuffer(raw, np.int64, count=LABELS.size, offset=3)
    misaligned[...] = LABELS
    cases["misaligned_int64"] = misaligned
    cases["column_of_fortran_matrix"] = np.asfortranarray(
        np.stack([LABELS, LABELS[::-1]], axis=1))[:, 0]
    return cases


LABEL_VARIANTS = _label_variants()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("labels", list(LABEL_VARIANTS))
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_labels_of_every_integer_kind(module, labels, method):
    y = LABEL_VARIANTS[labels]
    assert np.array_equal(np.asarray(y, dtype=np.int64), LABELS)
    x = np.asarray(VALUES, np.float32)
    for reduction, return_grad in MODES:
        got = module.softmax_loss(x, y, method=method, reduction=reduction,
                                  return_grad=return_grad)
        expected = module.softmax_loss(x, LABELS, method=method,
                                       reduction=reduction, return_grad=return_grad)
        assert_identical(got, expected, f"reduction={reduction} return_grad={return_grad}")


class _RecordingFFI:
    """Stands in for _core.ffi and records the address of every buffer the
    wrappers hand to the kernel; everything else goes to the real ffi."""

    def __init__(self, real):
        self._real = real
        self.addresses = []

    def from_buffer(self, *args, **kwargs):
        cdata = self._real.from_buffer(*args, **kwargs)
        self.addresses.append(int(self._real.cast("uintptr_t", cdata)))
        return cdata

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def kernel_buffers(monkeypatch):
    recorder = _RecordingFFI(_core.ffi)
    monkeypatch.setattr(_core, "ffi", recorder)
    return recorder.addresses


def _calls(x, y):
    """Every public entry point, each a function of nothing."""
    yield "softmax_loss", lambda: pysafemax.softmax_loss(x, y)
    yield "softmax_loss none+grad", lambda: pysafemax.softmax_loss(
        x, y, method="maxsub", reduction="none", return_grad=True)
    yield "softmax_loss check", lambda: pysafemax.softmax_loss(
        x, y, method="naive", reduction="none", check=True)
    for method in pysafemax.METHODS:
        yield f"softmax {method}", lambda method=method: pysafemax.softmax(x, method=method)
    yield "log_softmax", lambda: pysafemax.log_softmax(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "readonly"])
def test_c_contiguous_input_reaches_the_kernel_uncopied(kernel_buffers, dtype,
                                                         writeable):
    x = np.ascontiguousarray(VALUES, dtype=dtype)
    y = LABELS.copy()
    x.flags.writeable = writeable
    y.flags.writeable = writeable
    for name, call in _calls(x, y):
        kernel_buffers.clear()
        call()
        assert x.ctypes.data in kernel_buffers, name
        if name.startswith("softmax_loss"):
            assert y.ctypes.data in kernel_buffers, name


@pytest.mark.parametrize("layout, dtype", [
    ("fortran", np.float32), ("cols_step2", np.float64),
    ("big_endian", np.float32), ("misaligned", np.float64),
    ("c_contiguous", np.float16),
])
def test_the_uncopied_probe_sees_copies(kernel_buffers, layout, dtype):
    # The probe above can fail: inputs the kernel cannot take as they are get
    # copied, and then the caller's address is not among the kernel's buffers.
    x, _ = LAYOUTS[layout](dtype)
    for name, call in _calls(x, LABELS.astype(np.int32)):
        kernel_buffers.clear()
        call()
        assert kernel_buffers, name
        assert x.ctypes.data not in kernel_buffers, name
