"""Bad inputs: every argument of softmax_loss, softmax and log_softmax, in the
kernel layer and in pysafemax.reference.

The matrix is a table: one row per bad input, with the exception it must raise
and a regex its message must match.  Every regex names the argument, and for
an out-of-range label the position and the value (issue 2, "Inputs").  The rest
of the file feeds inputs that are odd but legal (an empty batch, the extreme
values of every integer dtype) and checks that nothing crashes.
"""
import math
import re

import numpy as np
import pytest

import pysafemax
from pysafemax import reference

MODULES = {"kernel": pysafemax, "reference": reference}
BOTH = ("kernel", "reference")
FUNCTIONS = ("softmax_loss", "softmax", "log_softmax")

N, C = 4, 3
X = np.linspace(-2.0, 2.0, N * C, dtype=np.float32).reshape(N, C)
Y = np.array([0, 2, 1, 0])
METHODS_RE = r"\('naive', 'maxsub', 'stable'\)"
REDUCTIONS_RE = r"\('mean', 'sum', 'none'\)"

# The same failing shape for every label given as a Python list of ints that
# numpy cannot hold in one integer dtype: it becomes float64 or object, and the
# caller is told "labels must be integers" about a list of integers.
LIST_OF_BIG_INTS = pytest.mark.xfail(
    strict=True, raises=TypeError,
    reason="a list of ints outside int64 (numpy makes it float64 or object) "
           "raises TypeError 'labels must be integers', not the spec's "
           "out-of-range ValueError with position and value")


def _row(row_id, function, args, kwargs, exc, match, arg, modules=BOTH, marks=()):
    """One bad input, expanded to a pytest.param per module it applies to."""
    return [pytest.param(module, function, args, kwargs, exc, match, arg,
                         id=f"{module}-{function}-{row_id}", marks=marks)
            for module in modules]


def _logits_rows(row_id, logits, exc, match, marks=()):
    """A bad `logits` is bad for all three functions."""
    rows = _row(row_id, "softmax_loss", (logits, Y), {}, exc, match, "logits",
                marks=marks)
    for function in ("softmax", "log_softmax"):
        rows += _row(row_id, function, (logits,), {}, exc, match, "logits",
                     marks=marks)
    return rows


def _labels_rows(row_id, labels, exc, match, marks=(), logits=X):
    return _row(row_id, "softmax_loss", (logits, labels), {}, exc, match,
                "labels", marks=marks)


def _dtype_re(dtype):
    return "got dtype " + re.escape(str(np.dtype(dtype))) + "$"


def _logits_dtype_re(dtype):
    return r"^logits must be float16, float32 or float64, " + _dtype_re(dtype)


def _labels_dtype_re(dtype):
    return r"^labels must be integers \(class indices\), " + _dtype_re(dtype)


def _out_of_range_re(position, value, classes=C):
    return (rf"^labels\[{position}\] = {value} is out of range for "
            rf"C = {classes} classes \(valid labels are 0\.\.{classes - 1}\)$")


def _labels_with(position, value, dtype=None):
    labels = [0, 2, 1, 0]
    labels[position] = value
    return labels if dtype is None else np.array(labels, dtype=dtype)


TABLE = []

# --- logits: type and dtype -> TypeError ------------------------------------
for _dtype in (np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_,
               np.complex64, np.complex128, np.longdouble, object, "U3", "S3",
               "datetime64[s]", "timedelta64[ms]"):
    TABLE += _logits_rows(f"logits-dtype-{np.dtype(_dtype)}",
                          np.zeros((N, C), dtype=_dtype), TypeError,
                          _logits_dtype_re(_dtype))
TABLE += _logits_rows("logits-big-endian-int", np.zeros((N, C), dtype=">i4"),
                      TypeError, _logits_dtype_re(">i4"))
TABLE += _logits_rows("logits-list-of-int-lists", [[1, 2, 3], [4, 5, 6]],
                      TypeError, _logits_dtype_re(np.int64))
TABLE += _logits_rows("logits-list-of-bool-lists", [[True, False]], TypeError,
                      _logits_dtype_re(np.bool_))
TABLE += _logits_rows("logits-list-of-complex", [[1j, 2.0]], TypeError,
                      _logits_dtype_re(np.complex128))
TABLE += _logits_rows("logits-list-with-str", [[1.0, "a"]], TypeError,
                      r"^logits must be float16, float32 or float64, got dtype <U")
TABLE += _logits_rows("logits-list-with-None", [[1.0, None]], TypeError,
                      _logits_dtype_re(object))
TABLE += _logits_rows("logits-None", None, TypeError, _logits_dtype_re(object))
TABLE += _logits_rows("logits-str", "1.0 2.0", TypeError,
                      r"^logits must be float16, float32 or float64, got dtype <U")
TABLE += _logits_rows("logits-bytes", b"\x00\x00\x80?", TypeError,
                      _logits_dtype_re("S4"))
TABLE += _logits_rows("logits-bytearray", bytearray(8), TypeError,
                      _logits_dtype_re(np.uint8))
TABLE += _logits_rows("logits-dict", {"a": 1.0}, TypeError,
                      _logits_dtype_re(object))
TABLE += _logits_rows("logits-object-array-of-floats",
                      np.array([[1.0, 2.0]], dtype=object), TypeError,
                      _logits_dtype_re(object))
TABLE += _logits_rows("logits-structured",
                      np.zeros((N, C), dtype=[("a", np.float32)]), TypeError,
                      r"^logits must be float16, float32 or float64, got dtype")

# --- logits: shape -> ValueError ---------------------------------------------
TABLE += _logits_rows("logits-0d", np.float32(1.0), ValueError,
                      r"^logits must be 2-D \(N, C\), got 0-D shape \(\)$")
TABLE += _logits_rows("logits-python-float", 1.0, ValueError,
                      r"^logits must be 2-D \(N, C\), got 0-D shape \(\)$")
TABLE += _logits_rows("logits-1d", np.zeros(C, np.float32), ValueError,
                      r"^logits must be 2-D \(N, C\), got 1-D shape \(3,\)$")
TABLE += _logits_rows("logits-1d-list", [1.0, 2.0, 3.0], ValueError,
                      r"^logits must be 2-D \(N, C\), got 1-D shape \(3,\)$")
TABLE += _logits_rows("logits-3d", np.zeros((2, 2, C), np.float64), ValueError,
                      r"^logits must be 2-D \(N, C\), got 3-D shape \(2, 2, 3\)$")
TABLE += _logits_rows("logits-4d-empty", np.zeros((0, 1, 1, 1), np.float32),
                      ValueError, r"^logits must be 2-D \(N, C\), got 4-D shape")
TABLE += _logits_rows("logits-C0", np.zeros((N, 0), np.float32), ValueError,
                      r"^logits has no classes: shape \(4, 0\), C must be >= 1$")
TABLE += _logits_rows("logits-N0-C0", np.zeros((0, 0), np.float64), ValueError,
                      r"^logits has no classes: shape \(0, 0\), C must be >= 1$")
TABLE += _logits_rows("logits-C0-float16", np.zeros((N, 0), np.float16),
                      ValueError, r"^logits has no classes")
TABLE += _logits_rows("logits-ragged", [[1.0, 2.0, 3.0], [4.0]], ValueError,
                      r"^logits could not be read as an array")
TABLE += _logits_rows("logits-ragged-deep", [[[1.0], [2.0, 3.0]]], ValueError,
                      r"^logits could not be read as an array")

# --- labels: dtype -> TypeError ---------------------------------------------
for _dtype in (np.float16, np.float32, np.float64, np.bool_, np.complex128,
               object, "U1", "datetime64[s]"):
    TABLE += _labels_rows(f"labels-dtype-{np.dtype(_dtype)}",
                          np.zeros(N, dtype=_dtype), TypeError,
                          _labels_dtype_re(_dtype))
TABLE += _labels_rows("labels-list-of-floats", [0.0, 2.0, 1.0, 0.0], TypeError,
                      _labels_dtype_re(np.float64))
TABLE += _labels_rows("labels-list-of-bools", [True, False, True, False],
                      TypeError, _labels_dtype_re(np.bool_))
TABLE += _labels_rows("labels-list-with-None", [0, None, 1, 0], TypeError,
                      _labels_dtype_re(object))
TABLE += _labels_rows("labels-list-of-str", ["0", "2", "1", "0"], TypeError,
                      _labels_dtype_re("U1"))
TABLE += _labels_rows("labels-None", None, TypeError, _labels_dtype_re(object))
TABLE += _labels_rows("labels-float-nan", np.array([0, np.nan, 1, 0]),
                      TypeError, _labels_dtype_re(np.float64))

# --- labels: shape -> ValueError --------------------------------------------
TABLE += _labels_rows("labels-too-short", np.array([0, 1, 2]), ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(3,\)$")
TABLE += _labels_rows("labels-too-long", [0, 1, 2, 0, 1], ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(5,\)$")
TABLE += _labels_rows("labels-empty-list", [], ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(0,\)$")
TABLE += _labels_rows("labels-2d-column", Y.reshape(N, 1), ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(4, 1\)$")
TABLE += _labels_rows("labels-2d-row", Y.reshape(1, N), ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(1, 4\)$")
TABLE += _labels_rows("labels-2d-list", [[0, 1], [2, 0]], ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(2, 2\)$")
TABLE += _labels_rows("labels-python-int", 0, ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(\)$")
TABLE += _labels_rows("labels-0d-array", np.array(1), ValueError,
                      r"^labels must have shape \(4,\) to match logits, got \(\)$")
TABLE += _labels_rows("labels-for-empty-batch", [0], ValueError,
                      r"^labels must have shape \(0,\) to match logits, got \(1,\)$",
                      logits=np.zeros((0, C), np.float32))
TABLE += _labels_rows("labels-ragged", [[0], [1, 2], [0], [1]], ValueError,
                      r"^labels could not be read as an array")

# --- labels: range -> ValueError with position and value ---------------------
TABLE += _labels_rows("label-minus-1", _labels_with(3, -1, np.int64),
                      ValueError, _out_of_range_re(3, -1))
TABLE += _labels_rows("label-equals-C", _labels_with(0, C, np.int64),
                      ValueError, _out_of_range_re(0, C))
TABLE += _labels_rows("label-equals-C-int8", _labels_with(1, C, np.int8),
                      ValueError, _out_of_range_re(1, C))
TABLE += _labels_rows("label-minus-1-int8", _labels_with(2, -1, np.int8),
                      ValueError, _out_of_range_re(2, -1))
TABLE += _labels_rows("label-equals-C-uint8", _labels_with(3, C, np.uint8),
                      ValueError, _out_of_range_re(3, C))
TABLE += _labels_rows("label-uint64-max", _labels_with(2, 2**64 - 1, np.uint64),
                      ValueError, _out_of_range_re(2, 2**64 - 1))
TABLE += _labels_rows("label-uint64-2**63", _labels_with(1, 2**63, np.uint64),
                      ValueError, _out_of_range_re(1, 2**63))
TABLE += _labels_rows("label-uint64-2**64-C", _labels_with(1, 2**64 - C, np.uint64),
                      ValueError, _out_of_range_re(1, 2**64 - C))
TABLE += _labels_rows("label-int64-min", _labels_with(0, -2**63, np.int64),
                      ValueError, _out_of_range_re(0, -2**63))
TABLE += _labels_rows("label-int64-max", _labels_with(3, 2**63 - 1, np.int64),
                      ValueError, _out_of_range_re(3, 2**63 - 1))
TABLE += _labels_rows("label-big-endian", _labels_with(2, 7, ">i8"),
                      ValueError, _out_of_range_re(2, 7))
TABLE += _labels_rows("label-from-list", _labels_with(2, 7), ValueError,
                      _out_of_range_re(2, 7))
TABLE += _labels_rows("label-minus-1-from-list", _labels_with(3, -1), ValueError,
                      _out_of_range_re(3, -1))
TABLE += _labels_rows("label-from-tuple", tuple(_labels_with(1, C)), ValueError,
                      _out_of_range_re(1, C))
TABLE += _labels_rows("label-list-int64-min", _labels_with(1, -2**63), ValueError,
                      _out_of_range_re(1, -2**63))
TABLE += _labels_rows("label-list-2**63", [2**63, 2**63 + 1, 2**63, 2**63],
                      ValueError, _out_of_range_re(0, 2**63))
TABLE += _labels_rows("label-first-bad-is-reported", [0, 5, -1, 9], ValueError,
                      _out_of_range_re(1, 5))
TABLE += _labels_rows("label-list-uint64-max", _labels_with(1, 2**64 - 1),
                      ValueError, _out_of_range_re(1, 2**64 - 1),
                      marks=LIST_OF_BIG_INTS)
TABLE += _labels_rows("label-list-minus-1-and-2**63", [0, -1, 2**63, 0],
                      ValueError, _out_of_range_re(1, -1), marks=LIST_OF_BIG_INTS)
TABLE += _labels_rows("label-list-2**70", _labels_with(3, 2**70), ValueError,
                      _out_of_range_re(3, 2**70), marks=LIST_OF_BIG_INTS)
TABLE += _labels_rows("label-list-minus-2**64", _labels_with(0, -2**64),
                      ValueError, _out_of_range_re(0, -2**64),
                      marks=LIST_OF_BIG_INTS)

# --- method ------------------------------------------------------------------
for _function in ("softmax_loss", "softmax"):
    _args = (X, Y) if _function == "softmax_loss" else (X,)
    for _value in ("Stable", "", "logsumexp", " stable", "stable\x00"):
        TABLE += _row(f"method-{_value!r}", _function, _args, {"method": _value},
                      ValueError,
                      rf"^method must be one of {METHODS_RE}, got '", "method")
    for _value, _shown in ((None, "None"), (2, "2"), (b"stable", "b'stable'"),
                           (["stable"], r"\['stable'\]")):
        TABLE += _row(f"method-{_value!r}", _function, _args, {"method": _value},
                      TypeError,
                      rf"^method must be a str, one of {METHODS_RE}, got {_shown}$",
                      "method")

# --- reduction ---------------------------------------------------------------
for _value in ("MEAN", "avg", "", "elementwise_mean"):
    TABLE += _row(f"reduction-{_value!r}", "softmax_loss", (X, Y),
                  {"reduction": _value}, ValueError,
                  rf"^reduction must be one of {REDUCTIONS_RE}, got '", "reduction")
for _value, _shown in ((None, "None"), (0, "0"), (b"mean", "b'mean'")):
    TABLE += _row(f"reduction-{_value!r}", "softmax_loss", (X, Y),
                  {"reduction": _value}, TypeError,
                  rf"^reduction must be a str, one of {REDUCTIONS_RE}, got {_shown}$",
                  "reduction")

# --- return_grad and check: exactly bool (or numpy.bool_) --------------------
for _name, _modules in (("return_grad", BOTH), ("check", ("kernel",))):
    for _value, _shown in ((1, "1"), (0, "0"), (None, "None"), ("yes", "'yes'"),
                           (1.0, "1.0"), (np.array(True), r"array\(True\)"),
                           ([True], r"\[True\]")):
        TABLE += _row(f"{_name}-{_value!r}", "softmax_loss", (X, Y),
                      {_name: _value}, TypeError,
                      rf"^{_name} must be True or False, got {_shown}$", _name,
                      modules=_modules)

# --- the signature itself -----------------------------------------------------
TABLE += _row("method-positional", "softmax_loss", (X, Y, "stable"), {},
              TypeError, r"softmax_loss\(\) takes 2 positional arguments",
              "softmax_loss")
TABLE += _row("labels-missing", "softmax_loss", (X,), {}, TypeError,
              r"missing 1 required positional argument: 'labels'", "labels")
TABLE += _row("log-softmax-has-no-method", "log_softmax", (X,),
              {"method": "stable"}, TypeError,
              r"unexpected keyword argument 'method'", "method")


@pytest.mark.parametrize("module, function, args, kwargs, exc, match, arg", TABLE)
def test_bad_input(module, function, args, kwargs, exc, match, arg):
    with pytest.raises(exc, match=match) as info:
        getattr(MODULES[module], function)(*args, **kwargs)
    assert arg in str(info.value)


def test_table_covers_every_argument():
    covered = {(row.values[1], row.values[6]) for row in TABLE}
    for function in FUNCTIONS:
        assert (function, "logits") in covered
    for arg in ("labels", "method", "reduction", "return_grad", "check"):
        assert ("softmax_loss", arg) in covered
    assert ("softmax", "method") in covered
    modules = {row.values[0] for row in TABLE}
    assert modules == set(BOTH)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
@pytest.mark.parametrize("return_grad", [False, True])
def test_out_of_range_label_is_caught_in_every_mode(module, method, reduction,
                                                     return_grad):
    # The kernel checks labels inside its pass: put the bad one last, behind
    # rows that overflow, hold NaN and hold +-inf, so the pass gets that far.
    x = np.array([[100.0, 20.0, 0.0], [np.nan, 1.0, 2.0], [np.inf, 0.0, -np.inf],
                  [-np.inf, -np.inf, -np.inf], [0.5, 0.25, 0.125]], np.float32)
    labels = np.array([0, 1, 2, 0, C], dtype=np.int16)
    with pytest.raises(ValueError, match=_out_of_range_re(4, C)):
        module.softmax_loss(x, labels, method=method, reduction=reduction,
                            return_grad=return_grad)


EXTREME_LABELS = [
    pytest.param(dtype, value, id=f"{np.dtype(dtype)}-{value}")
    for dtype in (np.int8, np.int16, np.int32, np.int64,
                  np.uint8, np.uint16, np.uint32, np.uint64)
    for value in {int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)}
    if not 0 <= value < C
]


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype, value", EXTREME_LABELS)
def test_extreme_label_of_every_integer_dtype(module, dtype, value):
    labels = _labels_with(2, value, dtype)
    with pytest.raises(ValueError, match=_out_of_range_re(2, value)):
        module.softmax_loss(X, labels)


EMPTY_LABELS = {
    "list": [], "tuple": (), "int64": np.zeros(0, np.int64),
    "uint8": np.zeros(0, np.uint8),
}


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ">f4", ">f8"])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("labels", list(EMPTY_LABELS), ids=list(EMPTY_LABELS))
def test_empty_batch(module, dtype, method, labels):
    x = np.zeros((0, 5), dtype=dtype)
    y = EMPTY_LABELS[labels]
    native = np.dtype(dtype).newbyteorder("=")

    mean = module.softmax_loss(x, y, method=method)
    assert type(mean) is float and math.isnan(mean)
    total = module.softmax_loss(x, y, method=method, reduction="sum")
    assert type(total) is float and total == 0.0
    losses = module.softmax_loss(x, y, method=method, reduction="none")
    assert isinstance(losses, np.ndarray)
    assert losses.shape == (0,) and losses.dtype == native

    for reduction in pysafemax.REDUCTIONS:
        loss, grad = module.softmax_loss(x, y, method=method, reduction=reduction,
                                         return_grad=True)
        assert isinstance(grad, np.ndarray)
        assert grad.shape == (0, 5) and grad.dtype == native
        if reduction == "mean":
            assert math.isnan(loss)
        elif reduction == "sum":
            assert loss == 0.0
        else:
            assert loss.shape == (0,) and loss.dtype == native

    p = module.softmax(x, method=method)
    assert p.shape == (0, 5) and p.dtype == native
    logp = module.log_softmax(x)
    assert logp.shape == (0, 5) and logp.dtype == native


@pytest.mark.xfail(
    strict=True, raises=ValueError,
    reason="check=True on an empty batch: _core._compare reshapes the empty "
           "loss array with reshape(0, -1), which numpy rejects ('cannot "
           "reshape array of size 0 into shape (0,newaxis)')")
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
def test_empty_batch_with_check(method, reduction):
    x = np.zeros((0, 2), np.float32)
    loss, grad = pysafemax.softmax_loss(x, [], method=method, reduction=reduction,
                                        return_grad=True, check=True)
    assert grad.shape == (0, 2)
    if reduction == "mean":
        assert math.isnan(loss)
    elif reduction == "sum":
        assert loss == 0.0
    else:
        assert loss.shape == (0,)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_numpy_bool_flags_and_str_subclass_are_accepted(module):
    # The spec's "exactly bool" check must not trip on numpy's own bool, the
    # trap STYLE.md warns about in PyNaCl.
    expected = module.softmax_loss(X, Y, method="maxsub", reduction="none",
                                   return_grad=True)
    got = module.softmax_loss(X, Y, method=np.str_("maxsub"),
                              reduction=np.str_("none"), return_grad=np.bool_(True))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert module.softmax_loss(X, Y, return_grad=np.False_) == module.softmax_loss(X, Y)


def test_check_accepts_numpy_bool():
    assert pysafemax.softmax_loss(X, Y, check=np.True_) == pysafemax.softmax_loss(X, Y)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_bad_call_leaves_nothing_behind(module):
    # A failed call must not poison the next one (no state kept anywhere).
    before = module.softmax_loss(X, Y, reduction="none")
    for labels in ([0, 1, 2, C], [-1, 0, 0, 0], np.full(N, 2**64 - 1, np.uint64)):
        with pytest.raises(ValueError):
            module.softmax_loss(X, labels, reduction="none", return_grad=True)
    np.testing.assert_array_equal(module.softmax_loss(X, Y, reduction="none"), before)
