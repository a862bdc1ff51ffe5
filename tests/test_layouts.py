"""Memory layouts: every layout numpy can hand us gives, bit for bit, what the
same values give as a fresh C-contiguous, native, aligned array; the caller's
memory is never written; C-contiguous float32/float64 input reaches the kernel
without a copy (issue 2, "Inputs": layouts, dtypes, labels).

Issue 3 widens "every layout" to N-D logits with any class axis, probability
targets and class weights: each is checked the same way, and one-position (C,)
and spatial (N, C, d1, d2) logits are checked against the plain (N, C) case.
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import _bindings, reference

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


# Each builder takes (dtype, values) and returns (x, store): x holds the values
# in its layout, store is a C-contiguous 1-D array over all the memory x can
# reach, gaps included.  Gaps hold NaN, so a layer that reads between strided
# elements gets caught.  Builders work for any number of dimensions.
def _c_order(dtype, values):
    store = np.full(values.size, np.nan, dtype)
    x = store.reshape(values.shape)
    x[...] = values
    return x, store


def _fortran(dtype, values):
    store = np.full(values.size, np.nan, dtype)
    x = store.reshape(values.shape[::-1]).T
    x[...] = values
    assert x.flags.f_contiguous and (values.ndim < 2 or not x.flags.c_contiguous)
    return x, store


def _first_axis_last(dtype, values):
    """Memory ordered (d1, ..., dk, d0), seen through np.moveaxis."""
    shape = values.shape
    store = np.full(values.size, np.nan, dtype)
    x = np.moveaxis(store.reshape(shape[1:] + shape[:1]), -1, 0)
    x[...] = values
    assert values.ndim < 2 or not x.flags.c_contiguous
    return x, store


def _strided(steps, reverse=False):
    """Axes taken with the given steps, aligned on the last axis (leading
    axes beyond len(steps) take steps[0]), reversed if asked."""
    def build(dtype, values):
        step = [steps[max(0, len(steps) - values.ndim + k)]
                for k in range(values.ndim)]
        big = tuple(n * s for n, s in zip(values.shape, step))
        store = np.full(int(np.prod(big)), np.nan, dtype)
        index = tuple(slice(None, None, -s if reverse else s) for s in step)
        x = store.reshape(big)[index]
        x[...] = values
        assert reverse or max(step) == 1 or not x.flags.c_contiguous
        return x, store
    return build


def _rows_reversed(dtype, values):
    store = np.full(values.size, np.nan, dtype)
    x = store.reshape(values.shape)[::-1]
    x[...] = values
    return x, store


def _cols_reversed(dtype, values):
    store = np.full(values.size, np.nan, dtype)
    x = store.reshape(values.shape)[..., ::-1]
    x[...] = values
    return x, store


def _readonly(build):
    def readonly(dtype, values):
        x, store = build(dtype, values)
        x.flags.writeable = False
        return x, store
    return readonly


def _big_endian(build):
    def big_endian(dtype, values):
        x, store = build(np.dtype(dtype).newbyteorder(">"), values)
        assert not x.dtype.isnative
        return x, store
    return big_endian


def _misaligned(dtype, values):
    """A writable array one byte into a bytearray: np.frombuffer at offset 1."""
    itemsize = np.dtype(dtype).itemsize
    raw = bytearray(values.size * itemsize + 1)
    x = np.frombuffer(raw, dtype=dtype, count=values.size, offset=1)
    x = x.reshape(values.shape)
    x[...] = values
    assert not x.flags.aligned and x.flags.writeable
    return x, np.frombuffer(raw, np.uint8)


def _misaligned_bytes(dtype, values):
    """Read-only and misaligned: np.frombuffer on an immutable bytes object."""
    raw = b"\x00" + np.asarray(values, dtype).tobytes()
    x = np.frombuffer(raw, dtype=dtype, offset=1).reshape(values.shape)
    assert not x.flags.aligned and not x.flags.writeable
    return x, np.frombuffer(raw, np.uint8)


def _misaligned_strided(dtype, values):
    itemsize = np.dtype(dtype).itemsize
    shape = values.shape[:-1] + (2 * values.shape[-1],)
    raw = bytearray(2 * values.size * itemsize + 1)
    full = np.frombuffer(raw, dtype=dtype, count=2 * values.size, offset=1)
    full[...] = np.nan
    x = full.reshape(shape)[..., 1::2]
    x[...] = values
    assert not x.flags.aligned
    return x, np.frombuffer(raw, np.uint8)


def _broadcast_first_axis(dtype, values):
    """Every entry along the first axis the same memory (stride 0), read-only
    by numpy's rule.  The values are values[1] repeated."""
    store = np.asarray(values[1:2], dtype).copy()
    x = np.broadcast_to(store, values.shape)
    assert x.strides[0] == 0
    return x, store.reshape(-1)


def _transposed_strided(dtype, values):
    shape = values.shape[::-1]
    store = np.full(2 * values.size, np.nan, dtype)
    x = store.reshape((2 * shape[0],) + shape[1:])[::2].T
    x[...] = values
    assert not x.flags.c_contiguous and not x.flags.f_contiguous
    return x, store


LAYOUTS = {
    "c_contiguous": _c_order,
    "fortran": _fortran,
    "cols_step2": _strided((1, 2)),
    "rows_step3": _strided((3, 1)),
    "rows_step2_cols_step3": _strided((2, 3)),
    "rows_reversed": _rows_reversed,
    "cols_reversed": _cols_reversed,
    "both_reversed_step2": _strided((2,), reverse=True),
    "transposed_strided": _transposed_strided,
    "first_axis_last": _first_axis_last,
    "readonly": _readonly(_c_order),
    "readonly_fortran": _readonly(_fortran),
    "readonly_strided": _readonly(_strided((3, 1))),
    "readonly_step2": _readonly(_strided((2,))),
    "big_endian": _big_endian(_c_order),
    "big_endian_fortran": _big_endian(_fortran),
    "big_endian_reversed": _big_endian(_strided((1,), reverse=True)),
    "misaligned": _misaligned,
    "misaligned_readonly_bytes": _misaligned_bytes,
    "misaligned_strided": _misaligned_strided,
    "broadcast_rows": _broadcast_first_axis,
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
    x, _ = LAYOUTS[layout](dtype, VALUES)
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
    x, _ = LAYOUTS[layout](dtype, VALUES)
    plain = _plain(x)
    for axis in (1, 0, -1):
        for method in pysafemax.METHODS:
            assert_identical(module.softmax(x, axis=axis, method=method),
                             module.softmax(plain, axis=axis, method=method),
                             f"{method} axis={axis}")
        assert_identical(module.log_softmax(x, axis=axis),
                         module.log_softmax(plain, axis=axis), f"axis={axis}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_check_passes_on_every_layout(dtype, layout):
    x, _ = LAYOUTS[layout](dtype, VALUES)
    for method in pysafemax.METHODS:
        for return_grad in (False, True):
            got = pysafemax.softmax_loss(x, LABELS, method=method, reduction="none",
                                         return_grad=return_grad, check=True)
            expected = pysafemax.softmax_loss(_plain(x), LABELS, method=method,
                                              reduction="none",
                                              return_grad=return_grad)
            assert_identical(got, expected, method)


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
    x, store = LAYOUTS[layout](dtype, VALUES)
    y = LABELS.copy()
    y.flags.writeable = layout != "readonly"     # both kinds of label array
    store_before, y_before = store.tobytes(), y.tobytes()
    writeable_before = x.flags.writeable
    outputs = []
    for method in pysafemax.METHODS:
        for reduction, return_grad in MODES:
            kwargs = {"check": True} if module is pysafemax else {}
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
    x, _ = LAYOUTS[layout](np.float16, VALUES)
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


def _label_variants(labels):
    """The same class indices in every integer kind and layout."""
    cases = {}
    for dtype in (np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64,
                  np.intc, np.intp, np.longlong, np.ulonglong):
        cases[np.dtype(dtype).name] = labels.astype(dtype)
    for dtype in (">i2", ">i4", ">i8", ">u4", ">u8"):
        cases[f"big_endian_{dtype[1:]}"] = labels.astype(dtype)
    cases["list"] = labels.tolist()
    cases["strided"] = np.repeat(labels, 2, axis=-1)[..., ::2]
    cases["reversed"] = labels[::-1].copy()[::-1]
    cases["fortran"] = np.asfortranarray(labels)
    readonly = labels.copy()
    readonly.flags.writeable = False
    cases["readonly"] = readonly
    raw = bytearray(labels.size * 8 + 3)
    misaligned = np.frombuffer(raw, np.int64, count=labels.size, offset=3)
    misaligned = misaligned.reshape(labels.shape)
    misaligned[...] = labels
    cases["misaligned_int64"] = misaligned
    return cases


def _label_variants_1d():
    cases = _label_variants(LABELS)
    cases["tuple"] = tuple(LABELS.tolist())
    cases["list_of_numpy_ints"] = [np.uint8(v) for v in LABELS]
    cases["list_of_mixed_ints"] = [int(v) if i % 2 else np.int16(v)
                                   for i, v in enumerate(LABELS)]
    cases["column_of_fortran_matrix"] = np.asfortranarray(
        np.stack([LABELS, LABELS[::-1]], axis=1))[:, 0]
    return cases


LABEL_VARIANTS = _label_variants_1d()


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


# --- N-D logits, every class axis ----------------------------------------------

ND_SHAPE = (2, 5, 3, 4)
ND_AXES = list(range(-len(ND_SHAPE), len(ND_SHAPE)))
ND_LAYOUTS = ["c_contiguous", "fortran", "first_axis_last", "rows_step2_cols_step3",
              "both_reversed_step2", "transposed_strided", "readonly_strided",
              "big_endian_reversed", "misaligned_strided", "broadcast_rows"]


def _nd_values():
    """(2, 5, 3, 4) logits, with overflow for naive, clamping gaps for maxsub,
    -inf and ties along every axis."""
    rng = np.random.default_rng(3)
    v = rng.standard_normal(ND_SHAPE) * 4.0
    v[0, 1] += 95.0                 # a 100-ish plane: naive overflows
    v[1, :, 0, :] = 0.5             # ties
    v[1, 3, 2, 1] = -np.inf
    v[0, 0, 1, 3] = -np.inf
    v[1, 2, 1, :] = [-100.0, 0.0, 100.0, 3.0]
    return v


ND_VALUES = _nd_values()


def _nd_labels(axis, ignore_index=None, seed=0):
    axis %= len(ND_SHAPE)
    rng = np.random.default_rng(seed + axis)
    positions = ND_SHAPE[:axis] + ND_SHAPE[axis + 1:]
    labels = rng.integers(0, ND_SHAPE[axis], positions)
    if ignore_index is not None:
        labels.reshape(-1)[::5] = ignore_index
    return labels


def _nd_options(axis, dtype=np.float64):
    """A weight for the axis' classes, an ignored label and smoothing."""
    classes = ND_SHAPE[axis]
    return {"weight": np.linspace(0.25, 2.0, classes).astype(dtype),
            "ignore_index": -100, "label_smoothing": 0.125}


# Every layout with every axis; the dtype turns with both, so each layout and
# each axis meets all three dtypes.
ND_CASES = [pytest.param(layout, axis, DTYPES[(k + axis) % 3],
                         id=f"{layout}-axis{axis}-{np.dtype(DTYPES[(k + axis) % 3])}")
            for k, layout in enumerate(ND_LAYOUTS) for axis in ND_AXES]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout, axis, dtype", ND_CASES)
def test_nd_loss_on_layout_equals_contiguous(module, layout, axis, dtype):
    x, _ = LAYOUTS[layout](dtype, ND_VALUES)
    plain = _plain(x)
    for options in ({}, _nd_options(axis)):
        labels = _nd_labels(axis, options.get("ignore_index"))
        for method in pysafemax.METHODS:
            for reduction in pysafemax.REDUCTIONS:
                context = f"{method} {reduction} {sorted(options)}"
                kwargs = dict(axis=axis, method=method, reduction=reduction,
                              return_grad=True, **options)
                got = module.softmax_loss(x, labels, **kwargs)
                assert got[1].shape == ND_SHAPE, context
                assert_identical(got, module.softmax_loss(plain, labels, **kwargs),
                                 context)
    for method in pysafemax.METHODS:
        assert_identical(module.softmax(x, axis=axis, method=method),
                         module.softmax(plain, axis=axis, method=method), method)
    assert_identical(module.log_softmax(x, axis=axis),
                     module.log_softmax(plain, axis=axis))


ND_LABEL_VARIANTS = _label_variants(_nd_labels(1))
ND_LABEL_VARIANTS["transposed"] = np.ascontiguousarray(_nd_labels(1).T).T
ND_LABEL_VARIANTS["broadcast"] = np.broadcast_to(_nd_labels(1)[:1], (2, 3, 4))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("labels", list(ND_LABEL_VARIANTS))
def test_nd_labels_of_every_kind_and_layout(module, labels):
    y = ND_LABEL_VARIANTS[labels]
    plain = np.array(np.asarray(y), dtype=np.int64, order="C")
    x = np.asarray(ND_VALUES, np.float32)
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            kwargs = dict(method=method, reduction=reduction, return_grad=True,
                          weight=np.linspace(0.5, 1.5, 5), label_smoothing=0.25)
            assert_identical(module.softmax_loss(x, y, **kwargs),
                             module.softmax_loss(x, plain, **kwargs),
                             f"{method} {reduction}")


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_spatial_logits_are_positions_of_a_matrix(module, dtype, method):
    # (N, C, d1, d2) is N * d1 * d2 positions of C classes: the same numbers
    # as the (N * d1 * d2, C) matrix with the class axis moved last.  Positions
    # come in the same order, so even the reduced sums agree bit for bit.
    x = np.asarray(ND_VALUES, dtype)
    labels = _nd_labels(1, -100)
    matrix = np.ascontiguousarray(np.moveaxis(x, 1, -1).reshape(-1, C))
    options = _nd_options(1)
    for reduction in pysafemax.REDUCTIONS:
        if reduction == "batch_size":
            continue            # its normalizer is N, not N * d1 * d2: below
        for kwargs in ({}, options):
            flat_labels = labels.reshape(-1)
            if "ignore_index" not in kwargs:
                flat_labels = np.where(flat_labels == -100, 0, flat_labels)
            nd_labels = flat_labels.reshape(labels.shape)
            loss, grad = module.softmax_loss(x, nd_labels, method=method,
                                             reduction=reduction,
                                             return_grad=True, **kwargs)
            loss2, grad2 = module.softmax_loss(matrix, flat_labels, method=method,
                                               reduction=reduction,
                                               return_grad=True, **kwargs)
            context = f"{reduction} {sorted(kwargs)}"
            if reduction == "none":
                assert loss.shape == (2, 3, 4)
                loss2 = loss2.reshape(loss.shape)
            assert_identical(loss, loss2, context)
            assert grad.shape == x.shape
            assert_identical(grad, np.moveaxis(grad2.reshape(2, 3, 4, C), -1, 1),
                             context)
    assert_identical(module.softmax(x, method=method),
                     np.moveaxis(module.softmax(matrix, method=method)
                                 .reshape(2, 3, 4, C), -1, 1))
    # Caffe's batch_size divides the sum by the outer size N = 2 only.
    flat_labels = labels.reshape(-1)
    total = module.softmax_loss(matrix, flat_labels, method=method,
                                reduction="sum", **options)
    assert_identical(module.softmax_loss(x, labels, method=method,
                                         reduction="batch_size", **options),
                     total / 2)
    assert_identical(module.softmax_loss(x, labels, method=method, reduction="full",
                                         **options), total / 24)


# --- one position: (C,) logits -------------------------------------------------

@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_one_position_logits(module, dtype, method):
    # A (C,) input is one unbatched position, as in PyTorch: the same numbers
    # as a (1, C) batch, a 0-d 'none' loss and a (C,) gradient.
    layouts = {"c_contiguous": np.asarray(VALUES[1], dtype),
               "strided": np.repeat(np.asarray(VALUES[1], dtype), 3)[::3],
               "reversed": np.asarray(VALUES[1, ::-1], dtype)[::-1],
               "big_endian": np.asarray(VALUES[1], np.dtype(dtype).newbyteorder(">")),
               "row_of_fortran": np.asfortranarray(np.asarray(VALUES, dtype))[1]}
    batch = np.asarray(VALUES[1:2], dtype)
    native = np.dtype(dtype)
    label_spellings = [0, np.int8(2), np.array(4), np.array(1, ">u2")]
    axes = (1, 0, -1)
    for k, (name, x) in enumerate(layouts.items()):
        assert x.shape == (C,)
        # Each layout takes one label spelling and one spelling of the axis;
        # together the layouts use them all.
        label, axis = label_spellings[k % 4], axes[k % 3]
        for reduction in pysafemax.REDUCTIONS:
            context = f"{name} label={label!r} axis={axis} {reduction}"
            loss, grad = module.softmax_loss(x, label, axis=axis, method=method,
                                             reduction=reduction,
                                             return_grad=True)
            loss2, grad2 = module.softmax_loss(batch, [int(label)],
                                               method=method,
                                               reduction=reduction,
                                               return_grad=True)
            if reduction == "none":
                assert isinstance(loss, np.ndarray), context
                assert loss.shape == () and loss.dtype == native, context
                loss2 = loss2.reshape(())
            assert_identical(loss, loss2, context)
            assert_identical(grad, grad2[0], context)
        assert_identical(module.softmax(x, axis=axis, method=method),
                         module.softmax(batch, method=method)[0], name)
        assert_identical(module.log_softmax(x, axis=axis),
                         module.log_softmax(batch)[0], name)
        # Probability targets for one position have the logits' shape (C,).
        probs = np.array([0.125, 0.0, 0.5, 0.375, 0.0])
        for reduction in pysafemax.REDUCTIONS:
            got = module.softmax_loss(x, probs, method=method, reduction=reduction,
                                      return_grad=True, label_smoothing=0.25)
            expected = module.softmax_loss(batch, probs[None], method=method,
                                           reduction=reduction, return_grad=True,
                                           label_smoothing=0.25)
            if reduction == "none":
                assert got[0].shape == ()
                expected = (expected[0].reshape(()), expected[1])
            assert_identical(got[0], expected[0], f"{name} probs {reduction}")
            assert_identical(got[1], expected[1][0], f"{name} probs {reduction}")


# --- probability targets and class weights in odd layouts ----------------------

def _probs_values(shape, axis=1):
    """Class probabilities along `axis`, with zeros, a one-hot position and
    values float16 holds exactly (so every dtype holds the same numbers)."""
    rng = np.random.default_rng(17)
    p = rng.integers(0, 4, shape).astype(np.float64)
    p = np.moveaxis(p, axis, -1)
    p[..., 0] += 1.0                              # no all-zero position
    p.reshape(-1, p.shape[-1])[1] = [0.0] * (p.shape[-1] - 1) + [1.0]
    p /= 2.0 ** np.ceil(np.log2(p.sum(axis=-1, keepdims=True)))
    return np.moveaxis(p, -1, axis)


PROBS_VALUES = _probs_values((N, C))
PROBS_LAYOUTS = ["c_contiguous", "fortran", "cols_step2", "rows_reversed",
                 "transposed_strided", "readonly_strided", "big_endian",
                 "big_endian_fortran", "misaligned", "misaligned_strided",
                 "broadcast_rows"]


# Every probability dtype in every layout; the logits' dtype turns with the
# layout, so each pair of dtypes meets several layouts.
PROBS_CASES = [pytest.param(layout, probs_dtype, DTYPES[(k + j) % 3],
                            id=f"{layout}-{np.dtype(probs_dtype)}-"
                               f"logits_{np.dtype(DTYPES[(k + j) % 3])}")
               for k, layout in enumerate(PROBS_LAYOUTS)
               for j, probs_dtype in enumerate(DTYPES)]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout, probs_dtype, logits_dtype", PROBS_CASES)
def test_probability_targets_on_layout_equal_contiguous(module, layout, probs_dtype,
                                                        logits_dtype):
    x = np.asarray(VALUES, logits_dtype)
    t, _ = LAYOUTS[layout](probs_dtype, PROBS_VALUES)
    plain = _plain(t)
    # Probabilities are read in the logits' (compute) dtype.
    compute = np.float64 if logits_dtype is np.float64 else np.float32
    as_compute = plain.astype(compute)
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            # Smoothing on one method, so the plain path is taken too.
            options = {"weight": np.linspace(0.5, 2.5, C)}
            if method != "naive":
                options["label_smoothing"] = 0.25
            kwargs = dict(method=method, reduction=reduction, return_grad=True,
                          **options)
            context = f"{method} {reduction}"
            got = module.softmax_loss(x, t, **kwargs)
            assert_identical(got, module.softmax_loss(x, plain, **kwargs), context)
            assert_identical(got, module.softmax_loss(x, as_compute, **kwargs),
                             context)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout", ["c_contiguous", "first_axis_last",
                                    "both_reversed_step2", "big_endian_fortran",
                                    "misaligned"])
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_nd_probability_targets_on_layout_equal_contiguous(module, layout, axis):
    x, _ = LAYOUTS["transposed_strided"](np.float32, ND_VALUES)
    t, _ = LAYOUTS[layout](np.float16, _probs_values(ND_SHAPE, axis))
    plain_x, plain_t = _plain(x), _plain(t)
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            kwargs = dict(axis=axis, method=method, reduction=reduction,
                          return_grad=True, label_smoothing=0.5)
            assert_identical(module.softmax_loss(x, t, **kwargs),
                             module.softmax_loss(plain_x, plain_t, **kwargs),
                             f"{method} {reduction}")


WEIGHT_VALUES = np.array([0.5, 2.0, 1.25, 0.0, 3.0])   # exact in float16


def _weight_variants():
    w = WEIGHT_VALUES
    cases = {}
    for k, layout in enumerate(("c_contiguous", "cols_step2", "both_reversed_step2",
                                "readonly_step2", "big_endian",
                                "big_endian_reversed", "misaligned",
                                "misaligned_strided")):
        for dtype in (DTYPES[k % 3], DTYPES[(k + 1) % 3]):
            cases[f"{layout}-{np.dtype(dtype).name}"] = LAYOUTS[layout](dtype, w)
    cases["list"] = (w.tolist(), None)
    cases["tuple"] = (tuple(w.tolist()), None)
    cases["column_of_fortran_matrix"] = (
        np.asfortranarray(np.stack([w, w[::-1]], axis=1))[:, 0], None)
    cases["longdouble"] = (w.astype(np.longdouble), None)
    return cases


WEIGHT_VARIANTS = _weight_variants()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("weight", list(WEIGHT_VARIANTS))
def test_weights_of_every_layout_equal_contiguous(module, weight):
    w, _ = WEIGHT_VARIANTS[weight]
    x = np.asarray(VALUES, np.float32)
    labels = np.array([0, 1, 0, 3, -100, 2])
    probs = np.asarray(PROBS_VALUES, np.float32)
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            smoothing = {"label_smoothing": 0.5} if method == "stable" else {}
            for y, options in ((labels, {"ignore_index": -100, **smoothing}),
                               (probs, {"label_smoothing": 0.25})):
                kwargs = dict(method=method, reduction=reduction,
                              return_grad=True, **options)
                context = f"{method} {reduction} {sorted(options)} {y.dtype}"
                got = module.softmax_loss(x, y, weight=w, **kwargs)
                # The same numbers as a fresh contiguous float64 array: every
                # weight dtype here converts to float64 exactly.
                assert_identical(got, module.softmax_loss(
                    x, y, weight=WEIGHT_VALUES.copy(), **kwargs), context)
                if isinstance(w, np.ndarray):
                    assert_identical(got, module.softmax_loss(
                        x, y, weight=_plain(w), **kwargs), context)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", PROBS_LAYOUTS)
def test_targets_and_weights_are_never_written(module, dtype, layout):
    x, x_store = LAYOUTS[layout](dtype, VALUES)
    t, t_store = LAYOUTS[layout](dtype, PROBS_VALUES)
    w, w_store = LAYOUTS["big_endian_reversed" if dtype is np.float16 else
                         "cols_step2"](dtype, WEIGHT_VALUES)
    y = LABELS.copy()
    y[3] = -100
    y.flags.writeable = layout != "readonly_strided"
    stores = [x_store, t_store, w_store, y]
    before = [s.tobytes() for s in stores]
    flags_before = [a.flags.writeable for a in (x, t, w)]
    outputs = []
    kwargs = {"check": True} if module is pysafemax else {}
    for method in pysafemax.METHODS:
        for reduction, return_grad in MODES:
            for targets, options in ((t, {"label_smoothing": 0.5}),
                                     (y, {"ignore_index": -100,
                                          "label_smoothing": 0.5})):
                result = module.softmax_loss(x, targets, method=method,
                                             reduction=reduction, weight=w,
                                             return_grad=return_grad,
                                             **options, **kwargs)
                outputs.extend(result if isinstance(result, tuple) else [result])
    assert [s.tobytes() for s in stores] == before
    assert [a.flags.writeable for a in (x, t, w)] == flags_before
    for out in outputs:
        if isinstance(out, np.ndarray):
            for s in stores:
                assert not np.shares_memory(out, s)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("layout", ["c_contiguous", "first_axis_last",
                                    "readonly_strided", "big_endian_reversed",
                                    "misaligned_strided", "broadcast_rows"])
def test_nd_caller_memory_is_never_written(module, layout):
    x, x_store = LAYOUTS[layout](np.float32, ND_VALUES)
    t, t_store = LAYOUTS[layout](np.float64, _probs_values(ND_SHAPE, 2))
    y = _nd_labels(2, -100)
    y.flags.writeable = False
    stores = [x_store, t_store, y]
    before = [s.tobytes() for s in stores]
    outputs = []
    kwargs = {"check": True} if module is pysafemax else {}
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            outputs += module.softmax_loss(x, t, axis=2, method=method,
                                           reduction=reduction, return_grad=True,
                                           **kwargs)
            outputs += module.softmax_loss(x, y, axis=-2, method=method,
                                           reduction=reduction, return_grad=True,
                                           ignore_index=-100, weight=np.ones(3),
                                           **kwargs)
        outputs.append(module.softmax(x, axis=2, method=method))
    outputs.append(module.log_softmax(x, axis=-2))
    assert [s.tobytes() for s in stores] == before
    for out in outputs:
        if isinstance(out, np.ndarray):
            for s in stores:
                assert not np.shares_memory(out, s)


# --- what reaches the kernel uncopied ------------------------------------------

class _RecordingFFI:
    """Stands in for _bindings.ffi and records the address of every buffer the
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
    recorder = _RecordingFFI(_bindings.ffi)
    monkeypatch.setattr(_bindings, "ffi", recorder)
    return recorder.addresses


def _calls(x, y, axis=1):
    """Every public entry point, each a function of nothing."""
    yield "softmax_loss", lambda: pysafemax.softmax_loss(x, y, axis=axis)
    yield "softmax_loss none+grad", lambda: pysafemax.softmax_loss(
        x, y, axis=axis, method="maxsub", reduction="none", return_grad=True)
    yield "softmax_loss check", lambda: pysafemax.softmax_loss(
        x, y, axis=axis, method="naive", reduction="none", check=True)
    for method in pysafemax.METHODS:
        yield f"softmax {method}", lambda method=method: pysafemax.softmax(
            x, axis=axis, method=method)
    yield "log_softmax", lambda: pysafemax.log_softmax(x, axis=axis)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "readonly"])
@pytest.mark.parametrize("nd", [False, True], ids=["2d", "4d-axis2"])
def test_c_contiguous_input_reaches_the_kernel_uncopied(kernel_buffers, dtype,
                                                         writeable, nd):
    values, axis = (ND_VALUES, 2) if nd else (VALUES, 1)
    x = np.ascontiguousarray(values, dtype=dtype)
    y = _nd_labels(2) if nd else LABELS.copy()
    x.flags.writeable = writeable
    y.flags.writeable = writeable
    for name, call in _calls(x, y, axis):
        kernel_buffers.clear()
        call()
        assert x.ctypes.data in kernel_buffers, name
        if name.startswith("softmax_loss"):
            assert y.ctypes.data in kernel_buffers, name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_contiguous_targets_reach_the_kernel_uncopied_and_weights_copied(
        kernel_buffers, dtype):
    x = np.ascontiguousarray(VALUES, dtype=dtype)
    probs = np.ascontiguousarray(PROBS_VALUES, dtype=dtype)
    weight = WEIGHT_VALUES.copy()          # float64: the kernel's weight type
    for targets, options in ((probs, {}), (LABELS, {"ignore_index": 1})):
        kernel_buffers.clear()
        pysafemax.softmax_loss(x, targets, weight=weight, return_grad=True,
                               label_smoothing=0.5, **options)
        assert targets.ctypes.data in kernel_buffers
        # C weights are always copied (a kernel call reads them without the
        # GIL, and a partial state keeps them): the kernel sees the copy.
        assert weight.ctypes.data not in kernel_buffers


@pytest.mark.parametrize("layout, dtype", [
    ("fortran", np.float32), ("cols_step2", np.float64),
    ("big_endian", np.float32), ("misaligned", np.float64),
    ("c_contiguous", np.float16),
])
def test_the_uncopied_probe_sees_copies(kernel_buffers, layout, dtype):
    # The probe above can fail: inputs the kernel cannot take as they are get
    # copied, and then the caller's address is not among the kernel's buffers.
    x, _ = LAYOUTS[layout](dtype, VALUES)
    for name, call in _calls(x, LABELS.astype(np.int32)):
        kernel_buffers.clear()
        call()
        assert kernel_buffers, name
        assert x.ctypes.data not in kernel_buffers, name
    probs, _ = LAYOUTS[layout](dtype, PROBS_VALUES)
    weight = WEIGHT_VALUES.astype(np.float32)
    kernel_buffers.clear()
    pysafemax.softmax_loss(np.asarray(VALUES, np.float32), probs, weight=weight)
    assert probs.ctypes.data not in kernel_buffers
    assert weight.ctypes.data not in kernel_buffers
