"""Bad inputs: every argument of softmax_loss, softmax and log_softmax, in the
kernel layer and in pysafemax.reference.

The matrix is a table: one row per bad input, with the exception it must raise
and a regex its message must match.  Every regex names the argument, and for
an out-of-range label the position and the value (issue 2, "Inputs"); issue 3
adds the class axis, weight, ignore_index, label_smoothing and probability
targets, each with its own rows.  The rest of the file feeds inputs that are
odd but legal (empty batches, the extreme values of every integer dtype, the
other spellings of each option) and checks that nothing crashes.
"""
import inspect
import math
import re
from fractions import Fraction

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
PROBS = np.full((N, C), 1.0 / C)
# Spatial logits (N, C, d) = (2, 3, 4): labels are (2, 4).
X3 = np.linspace(-1.0, 1.0, 24, dtype=np.float64).reshape(2, C, 4)
Y3 = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
METHODS_RE = r"\('naive', 'maxsub', 'stable'\)"
REDUCTIONS_RE = r"\('mean', 'sum', 'none', 'valid', 'full', 'batch_size'\)"


def _row(row_id, function, args, kwargs, exc, match, arg, modules=BOTH, marks=()):
    """One bad input, expanded to a pytest.param per module it applies to."""
    return [pytest.param(module, function, args, kwargs, exc, match, arg,
                         id=f"{module}-{function}-{row_id}", marks=marks)
            for module in modules]


def _logits_rows(row_id, logits, exc, match, marks=(), kwargs=None):
    """A bad `logits` (or class axis) is bad for all three functions."""
    kwargs = kwargs or {}
    rows = _row(row_id, "softmax_loss", (logits, Y), kwargs, exc, match,
                "logits", marks=marks)
    for function in ("softmax", "log_softmax"):
        rows += _row(row_id, function, (logits,), kwargs, exc, match, "logits",
                     marks=marks)
    return rows


def _axis_rows(row_id, logits, labels, axis, exc, match):
    rows = _row(row_id, "softmax_loss", (logits, labels), {"axis": axis}, exc,
                match, "axis")
    for function in ("softmax", "log_softmax"):
        rows += _row(row_id, function, (logits,), {"axis": axis}, exc, match,
                     "axis")
    return rows


def _labels_rows(row_id, labels, exc, match, marks=(), logits=X, kwargs=None):
    return _row(row_id, "softmax_loss", (logits, labels), kwargs or {}, exc,
                match, "labels", marks=marks)


def _option_rows(row_id, name, value, exc, match, labels=Y):
    return _row(row_id, "softmax_loss", (X, labels), {name: value}, exc, match,
                name)


def _typed_id(value):
    """A value in a test id, with its type: numpy 1.x writes np.float64(1.0)
    as 1.0 and np.bool_(True) as True, which would collide."""
    return f"{type(value).__name__}-{value!r}"


def _shape(shape):
    return re.escape(str(tuple(shape)))


def _dtype_re(dtype):
    return "got dtype " + re.escape(str(np.dtype(dtype))) + "$"


def _logits_dtype_re(dtype):
    return r"^logits must be float16, float32 or float64, " + _dtype_re(dtype)


def _labels_dtype_re(dtype):
    return (r"^labels must be integer class indices or floating probabilities, "
            + _dtype_re(dtype))


def _labels_shape_re(got, logits_shape=(N, C), axis=1):
    expected = tuple(n for k, n in enumerate(logits_shape) if k != axis)
    return (rf"^labels must have shape {_shape(expected)} \(the logits' shape "
            rf"{_shape(logits_shape)} without axis {axis}\), got {_shape(got)}$")


def _probs_shape_re(got, logits_shape=(N, C)):
    return (rf"^floating labels are probability targets and must have the "
            rf"logits' shape {_shape(logits_shape)}, got {_shape(got)}; "
            rf"class indices must be integers$")


def _no_classes_re(shape, axis):
    return rf"^logits has no classes: shape {_shape(shape)}, axis {axis}; C must be >= 1$"


def _overlap_re(name):
    return (rf"^out must not overlap the {name}: the gradient is written while "
            rf"the {name} are read$")


def _masked_re(name):
    return rf"^{name} is a masked array; pysafemax does not read masks: "


def _axis_range_re(axis, shape):
    return rf"^axis {axis} is out of range for logits of shape {_shape(shape)}$"


def _out_of_range_re(position, value, classes=C, hint=None):
    """The out-of-range message; `position` is a flat index or a tuple.  A
    negative label with no ignore_index given suggests ignore_index=label."""
    if hint is None:
        hint = value < 0
    index = position if isinstance(position, tuple) else (position,)
    where = "".join(rf"\[{k}\]" for k in index)
    suggestion = (rf"; to skip positions labelled {value}, pass "
                  rf"ignore_index={value}") if hint else ""
    return (rf"^labels{where} = {value} is out of range for "
            rf"C = {classes} classes \(valid labels are 0\.\.{classes - 1}\)"
            rf"{suggestion}$")


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
TABLE += _logits_rows("logits-3d-int", np.zeros((2, C, 4), np.int16), TypeError,
                      _logits_dtype_re(np.int16))

# --- logits: shape -> ValueError ---------------------------------------------
# (C,), (N, C) and (N, C, d1, ..., dk) are all legal now; what is left is no
# class axis at all, or a class axis of length 0.
_NO_AXIS = r"^logits must have a class axis, got a 0-d array$"
TABLE += _logits_rows("logits-0d", np.float32(1.0), ValueError, _NO_AXIS)
TABLE += _logits_rows("logits-0d-array", np.array(1.0), ValueError, _NO_AXIS)
TABLE += _logits_rows("logits-python-float", 1.0, ValueError, _NO_AXIS)
TABLE += _logits_rows("logits-C0", np.zeros((N, 0), np.float32), ValueError,
                      _no_classes_re((N, 0), 1))
TABLE += _logits_rows("logits-N0-C0", np.zeros((0, 0), np.float64), ValueError,
                      _no_classes_re((0, 0), 1))
TABLE += _logits_rows("logits-C0-float16", np.zeros((N, 0), np.float16),
                      ValueError, _no_classes_re((N, 0), 1))
TABLE += _logits_rows("logits-1d-empty", np.zeros(0, np.float32), ValueError,
                      _no_classes_re((0,), 0))
TABLE += _logits_rows("logits-empty-list", [], ValueError, _no_classes_re((0,), 0))
TABLE += _logits_rows("logits-3d-C0", np.zeros((2, 0, 4), np.float32), ValueError,
                      _no_classes_re((2, 0, 4), 1))
TABLE += _logits_rows("logits-4d-C0", np.zeros((0, 0, 1, 1), np.float64),
                      ValueError, _no_classes_re((0, 0, 1, 1), 1))
TABLE += _logits_rows("logits-C0-on-axis-0", np.zeros((0, 3), np.float32),
                      ValueError, _no_classes_re((0, 3), 0), kwargs={"axis": 0})
TABLE += _logits_rows("logits-C0-on-axis-minus-1", np.zeros((2, 3, 0), np.float32),
                      ValueError, _no_classes_re((2, 3, 0), 2), kwargs={"axis": -1})
TABLE += _logits_rows("logits-masked", np.ma.masked_array(X, mask=X > 1), TypeError,
                      _masked_re("logits") + r"fill the masked logits with -inf")
TABLE += _logits_rows("logits-masked-nothing", np.ma.masked_array(X), TypeError,
                      _masked_re("logits"))
TABLE += _logits_rows("logits-ragged", [[1.0, 2.0, 3.0], [4.0]], ValueError,
                      r"^logits could not be read as an array")
TABLE += _logits_rows("logits-ragged-deep", [[[1.0], [2.0, 3.0]]], ValueError,
                      r"^logits could not be read as an array")

# --- axis: exactly an int -> TypeError; in range -> ValueError ---------------
for _value in (1.0, "1", None, True, False, np.bool_(True), np.float64(1.0),
               (1,), [1], np.array(1), 1 + 0j):
    TABLE += _axis_rows(f"axis-{_typed_id(_value)}", X, Y, _value, TypeError,
                        rf"^axis must be an int, got {re.escape(repr(_value))}$")
for _logits, _labels, _value in ((X, Y, 2), (X, Y, -3), (X, Y, 2**63),
                                 (X3, Y3, 3), (X3, Y3, -4),
                                 (np.zeros(C, np.float32), 0, 2),
                                 (np.zeros(C, np.float32), 0, -2)):
    TABLE += _axis_rows(f"axis-{_value}-for-{_logits.ndim}d", _logits, _labels,
                        _value, ValueError, _axis_range_re(_value, _logits.shape))

# --- labels: dtype -> TypeError ---------------------------------------------
for _dtype in (np.bool_, np.complex128, object, "U1", "datetime64[s]",
               "timedelta64[s]"):
    TABLE += _labels_rows(f"labels-dtype-{np.dtype(_dtype)}",
                          np.zeros(N, dtype=_dtype), TypeError,
                          _labels_dtype_re(_dtype))
TABLE += _labels_rows("labels-list-of-bools", [True, False, True, False],
                      TypeError, _labels_dtype_re(np.bool_))
TABLE += _labels_rows("labels-list-with-None", [0, None, 1, 0], TypeError,
                      _labels_dtype_re(object))
TABLE += _labels_rows("labels-list-of-str", ["0", "2", "1", "0"], TypeError,
                      _labels_dtype_re("U1"))
TABLE += _labels_rows("labels-None", None, TypeError, _labels_dtype_re(object))
TABLE += _labels_rows("labels-complex-of-logits-shape", PROBS.astype(complex),
                      TypeError, _labels_dtype_re(np.complex128))
TABLE += _labels_rows("labels-bool-of-logits-shape", np.ones((N, C), bool),
                      TypeError, _labels_dtype_re(np.bool_))

# --- labels: floating, but not the logits' shape -> TypeError ----------------
# Floating labels are probability targets; at any other shape they are
# neither probabilities nor class indices.
for _dtype in (np.float16, np.float32, np.float64, ">f8", np.longdouble):
    TABLE += _labels_rows(f"labels-dtype-{np.dtype(_dtype).str}",
                          np.zeros(N, dtype=_dtype), TypeError,
                          _probs_shape_re((N,)))
TABLE += _labels_rows("labels-list-of-floats", [0.0, 2.0, 1.0, 0.0], TypeError,
                      _probs_shape_re((N,)))
TABLE += _labels_rows("labels-float-nan", np.array([0, np.nan, 1, 0]),
                      TypeError, _probs_shape_re((N,)))
TABLE += _labels_rows("labels-python-float", 1.0, TypeError, _probs_shape_re(()))
TABLE += _labels_rows("probs-too-few-classes", PROBS[:, :2], TypeError,
                      _probs_shape_re((N, 2)))
TABLE += _labels_rows("probs-transposed", PROBS.T.copy(), TypeError,
                      _probs_shape_re((C, N)))
TABLE += _labels_rows("probs-extra-axis", PROBS[..., None], TypeError,
                      _probs_shape_re((N, C, 1)))
TABLE += _labels_rows("probs-of-2d-for-3d-logits", PROBS, TypeError,
                      _probs_shape_re((N, C), X3.shape), logits=X3)
TABLE += _labels_rows("probs-float-labels-for-3d-logits", Y3.astype(np.float32),
                      TypeError, _probs_shape_re(Y3.shape, X3.shape), logits=X3)
TABLE += _labels_rows("probs-of-other-axis", np.moveaxis(np.full(X3.shape, 1 / C), 1, 2),
                      TypeError, _probs_shape_re((2, 4, C), X3.shape), logits=X3)
TABLE += _labels_rows("probs-for-1d-logits", [0.5, 0.5], TypeError,
                      _probs_shape_re((2,), (C,)), logits=np.zeros(C, np.float32))

# --- labels: shape -> ValueError --------------------------------------------
TABLE += _labels_rows("labels-too-short", np.array([0, 1, 2]), ValueError,
                      _labels_shape_re((3,)))
TABLE += _labels_rows("labels-too-long", [0, 1, 2, 0, 1], ValueError,
                      _labels_shape_re((5,)))
TABLE += _labels_rows("labels-empty-list", [], ValueError, _labels_shape_re((0,)))
TABLE += _labels_rows("labels-2d-column", Y.reshape(N, 1), ValueError,
                      _labels_shape_re((N, 1)))
TABLE += _labels_rows("labels-2d-row", Y.reshape(1, N), ValueError,
                      _labels_shape_re((1, N)))
TABLE += _labels_rows("labels-2d-list", [[0, 1], [2, 0]], ValueError,
                      _labels_shape_re((2, 2)))
TABLE += _labels_rows("labels-python-int", 0, ValueError, _labels_shape_re(()))
TABLE += _labels_rows("labels-0d-array", np.array(1), ValueError,
                      _labels_shape_re(()))
TABLE += _labels_rows("labels-int-of-logits-shape", np.zeros((N, C), np.int64),
                      ValueError, _labels_shape_re((N, C)))
TABLE += _labels_rows("labels-for-empty-batch", [0], ValueError,
                      _labels_shape_re((1,), (0, C)),
                      logits=np.zeros((0, C), np.float32))
TABLE += _labels_rows("labels-masked", np.ma.masked_array(Y, mask=[0, 1, 0, 0]),
                      TypeError, _masked_re("labels") + r"fill the masked labels with "
                      r"an ignore_index value \(labels\.filled\(-100\)\) and pass "
                      r"ignore_index$")
TABLE += _labels_rows("labels-masked-probabilities", np.ma.masked_array(PROBS),
                      TypeError, _masked_re("labels"))
TABLE += _labels_rows("labels-ragged", [[0], [1, 2], [0], [1]], ValueError,
                      r"^labels could not be read as an array")
# ... for N-D logits: the labels drop the class axis and keep the rest.
TABLE += _labels_rows("labels-3d-drop-wrong-axis", Y3[:, :C], ValueError,
                      _labels_shape_re((2, C), X3.shape), logits=X3)
TABLE += _labels_rows("labels-3d-flattened", Y3.reshape(-1), ValueError,
                      _labels_shape_re((8,), X3.shape), logits=X3)
TABLE += _labels_rows("labels-3d-transposed", Y3.T, ValueError,
                      _labels_shape_re((4, 2), X3.shape), logits=X3)
TABLE += _labels_rows("labels-3d-keepdims", Y3[:, None, :], ValueError,
                      _labels_shape_re((2, 1, 4), X3.shape), logits=X3)
TABLE += _labels_rows("labels-2d-for-4d", Y3, ValueError,
                      _labels_shape_re((2, 4), (2, C, 4, 1)),
                      logits=X3[..., None])
TABLE += _labels_rows("labels-4d-empty", Y, ValueError,
                      _labels_shape_re((N,), (0, 1, 1, 1)),
                      logits=np.zeros((0, 1, 1, 1), np.float32))
TABLE += _labels_rows("labels-for-1d-logits", Y, ValueError,
                      _labels_shape_re((N,), (C,), 0),
                      logits=np.zeros(C, np.float32))
TABLE += _labels_rows("labels-list-for-1d-logits", [1], ValueError,
                      _labels_shape_re((1,), (C,), 0),
                      logits=np.zeros(C, np.float32))
# ... and for a class axis other than 1.
TABLE += _labels_rows("labels-for-axis-0", Y, ValueError,
                      _labels_shape_re((N,), (N, C), 0), kwargs={"axis": 0})
TABLE += _labels_rows("labels-for-axis-minus-2", Y, ValueError,
                      _labels_shape_re((N,), (N, C), 0), kwargs={"axis": -2})
TABLE += _labels_rows("labels-for-axis-minus-1-of-3d", Y3, ValueError,
                      _labels_shape_re((2, 4), X3.shape, 2), logits=X3,
                      kwargs={"axis": -1})
TABLE += _labels_rows("labels-for-axis-0-of-3d", Y3, ValueError,
                      _labels_shape_re((2, 4), X3.shape, 0), logits=X3,
                      kwargs={"axis": 0})

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
                      ValueError, _out_of_range_re(1, 2**64 - 1))
TABLE += _labels_rows("label-list-minus-1-and-2**63", [0, -1, 2**63, 0],
                      ValueError, _out_of_range_re(1, -1))
TABLE += _labels_rows("label-list-2**70", _labels_with(3, 2**70), ValueError,
                      _out_of_range_re(3, 2**70))
TABLE += _labels_rows("label-list-minus-2**64", _labels_with(0, -2**64),
                      ValueError, _out_of_range_re(0, -2**64))
# PyTorch's default ignore label is not ignored by default: the message says how.
TABLE += _labels_rows("label-minus-100", _labels_with(3, -100, np.int64),
                      ValueError, _out_of_range_re(3, -100, hint=True))
TABLE += _labels_rows("label-minus-100-from-list", [-100, 0, 0, 0], ValueError,
                      r"^labels\[0\] = -100 .*; to skip positions labelled -100, "
                      r"pass ignore_index=-100$")
TABLE += _labels_rows("label-minus-100-ignoring-another", _labels_with(3, -100),
                      ValueError, _out_of_range_re(3, -100, hint=False),
                      kwargs={"ignore_index": -1})
TABLE += _labels_rows("label-C-with-ignore-index", _labels_with(1, C, np.int16),
                      ValueError, _out_of_range_re(1, C),
                      kwargs={"ignore_index": 0})
TABLE += _labels_rows("label-out-of-range-3d", np.where(Y3 == 2, 5, Y3),
                      ValueError, _out_of_range_re((0, 2), 5), logits=X3)
TABLE += _labels_rows("label-minus-100-3d-axis-2", np.full((2, C), -100),
                      ValueError, _out_of_range_re((0, 0), -100, classes=4),
                      logits=X3, kwargs={"axis": 2})
TABLE += _labels_rows("label-for-1d-logits", C, ValueError,
                      rf"^labels = {C} is out of range for C = {C} classes",
                      logits=np.zeros(C, np.float32))

# --- weight: floating, shape (C,), no NaN ------------------------------------
for _value, _got in ((np.ones(2), (2,)), (np.ones(N), (N,)), (np.ones((1, C)), (1, C)),
                     (np.ones((C, 1)), (C, 1)), (1.0, ()), (np.float64(1.0), ()),
                     (np.ones(0), (0,)), ([[1.0, 2.0, 3.0]], (1, C))):
    TABLE += _option_rows(f"weight-shape-{_got}-{type(_value).__name__}", "weight",
                          _value, ValueError,
                          rf"^weight must have shape \({C},\), one per class, "
                          rf"got {_shape(_got)}$")
TABLE += _row("weight-for-axis-0", "softmax_loss", (X, [0, 1, 2]),
              {"axis": 0, "weight": np.ones(C)}, ValueError,
              rf"^weight must have shape \({N},\), one per class, got \({C},\)$",
              "weight")
for _value, _dtype in ((np.ones(C, np.int64), "int64"), ([1, 2, 3], "int64"),
                       (np.ones(C, np.uint8), "uint8"), (np.ones(C, bool), "bool"),
                       (np.ones(C, np.complex128), "complex128"),
                       (np.ones(C, np.complex64), "complex64"),
                       (np.ones(C, object), "object"),
                       ([1.0, None, 1.0], "object"), ("abc", "<U3"),
                       ([1.0, 2.0, 1j], "complex128"), (np.ones(N, np.int32), "int32")):
    TABLE += _option_rows(f"weight-dtype-{_dtype}-{type(_value).__name__}",
                          "weight", _value, TypeError,
                          rf"^weight must be a floating array of {C} class "
                          rf"weights, got dtype {re.escape(_dtype)}$")
for _id, _value, _position in (
        ("list", [1.0, 2.0, np.nan], 2),
        ("first-of-two", [np.nan, 1.0, np.nan], 0),
        ("float32", np.array([1.0, np.nan, 0.0], np.float32), 1),
        ("big-endian", np.array([0.0, 0.0, np.nan], ">f8"), 2),
        ("float16-negative-nan", np.array([1.0, -np.nan, 1.0], np.float16), 1),
        ("strided", np.array([1.0, 9.0, 2.0, 9.0, np.nan, 9.0])[::2], 2),
        ("reversed", np.array([np.nan, 1.0, 2.0])[::-1], 2),
        ("with-inf", [np.inf, np.nan, -np.inf], 1)):
    TABLE += _option_rows(f"weight-nan-{_id}", "weight", _value, ValueError,
                          rf"^weight\[{_position}\] is nan; class weights must be numbers$")
for _id, _value, _position, _text in (
        ("inf", [1.0, np.inf, 1.0], 1, "inf"),
        ("minus-inf-float32", np.array([1.0, 1.0, -np.inf], np.float32), 2, "-inf")):
    TABLE += _option_rows(f"weight-{_id}", "weight", _value, ValueError,
                          rf"^weight\[{_position}\] is {_text}; class weights must be finite$")
TABLE += _option_rows("weight-masked", "weight", np.ma.masked_array(np.ones(C)),
                      TypeError, _masked_re("weight"))
TABLE += _option_rows("weight-ragged", "weight", [[1.0, 2.0], [3.0]], ValueError,
                      r"^weight could not be read as an array")

# --- ignore_index: an int or None --------------------------------------------
for _value in (1.0, -100.0, True, False, np.bool_(False), "-100", [-100],
               np.float32(0.0), np.array(-100), float("nan"), Fraction(1)):
    TABLE += _option_rows(f"ignore_index-{_typed_id(_value)}", "ignore_index", _value,
                          TypeError,
                          rf"^ignore_index must be an int, got {re.escape(repr(_value))}$")

# --- label_smoothing: a real number in [0, 1] --------------------------------
for _value, _shown in ((-0.1, "-0.1"), (1.1, "1.1"), (float("nan"), "nan"),
                       (float("inf"), "inf"), (float("-inf"), "-inf"), (2, "2.0"),
                       (-1e-300, "-1e-300"), (1 + 2**-52, re.escape(repr(1 + 2**-52))),
                       (np.float32(1.5), "1.5"), (Fraction(3, 2), "1.5"),
                       (10**400, "inf"), (Fraction(-10**400, 3), "-inf")):
    TABLE += _option_rows(f"label_smoothing-{_typed_id(_value)[:40]}", "label_smoothing",
                          _value,
                          ValueError,
                          rf"^label_smoothing must be in \[0, 1\], got {_shown}$")
for _value in ("0.1", True, False, None, np.bool_(True), np.array(0.1), 0.1j,
               [0.1], b"0"):
    TABLE += _option_rows(f"label_smoothing-{_typed_id(_value)}", "label_smoothing", _value,
                          TypeError,
                          rf"^label_smoothing must be a float in \[0, 1\], "
                          rf"got {re.escape(repr(_value))}$")

# --- z_loss: a finite real number >= 0 ------------------------------------------
for _value, _shown in ((-0.1, "-0.1"), (float("nan"), "nan"), (float("inf"), "inf"),
                       (-1, "-1.0"), (np.float32(-2.0), "-2.0"), (Fraction(-1, 2), "-0.5"),
                       (10**400, "inf")):      # beyond a double
    TABLE += _option_rows(f"z_loss-{_typed_id(_value)[:40]}", "z_loss", _value, ValueError,
                          rf"^z_loss must be a finite number >= 0, got {_shown}$")
for _value in ("0.1", True, np.bool_(False), None, np.array(0.1), 0.1j, [0.1]):
    TABLE += _option_rows(f"z_loss-{_typed_id(_value)}", "z_loss", _value, TypeError,
                          rf"^z_loss must be a real number >= 0, got {re.escape(repr(_value))}$")

# --- loss_dtype: a float dtype ------------------------------------------------
for _value, _shown in ((np.int32, "int32"), ("complex64", "complex64"), (object, "object"),
                       ("float128", "float128"), ("nonsense", "'nonsense'"),
                       (np.bool_, "bool")):
    TABLE += _row(f"loss_dtype-{_shown}", "softmax_loss", (X, Y), {"loss_dtype": _value},
                  TypeError, r"^loss_dtype must be a float dtype \(float16, float32, "
                  rf"float64 or bfloat16\), got {_shown}$", "loss_dtype", modules=("kernel",))

# --- probability targets take no ignore_index ---------------------------------
_PROBS_IGNORE = (r"^ignore_index applies to class-index labels only; probability "
                 r"targets \(floating labels\) take ignore_index=None$")
for _value in (-100, 0, np.int64(1)):
    TABLE += _row(f"probs-with-ignore_index-{_typed_id(_value)}", "softmax_loss", (X, PROBS),
                  {"ignore_index": _value}, ValueError, _PROBS_IGNORE, "ignore_index")
TABLE += _row("probs-float32-3d-with-ignore_index", "softmax_loss",
              (X3, np.full(X3.shape, 1 / C, np.float32)), {"ignore_index": -100},
              ValueError, _PROBS_IGNORE, "ignore_index")

# --- method ------------------------------------------------------------------
for _function in ("softmax_loss", "softmax"):
    _args = (X, Y) if _function == "softmax_loss" else (X,)
    for _value in ("Stable", "", "logsumexp", " stable", "stable\x00"):
        TABLE += _row(f"method-{_typed_id(_value)}", _function, _args, {"method": _value},
                      ValueError,
                      rf"^method must be one of {METHODS_RE}, got '", "method")
    for _value, _shown in ((None, "None"), (2, "2"), (b"stable", "b'stable'"),
                           (["stable"], r"\['stable'\]")):
        TABLE += _row(f"method-{_typed_id(_value)}", _function, _args, {"method": _value},
                      TypeError,
                      rf"^method must be a str, one of {METHODS_RE}, got {_shown}$",
                      "method")

# --- reduction ---------------------------------------------------------------
for _value in ("MEAN", "avg", "", "elementwise_mean", "Valid", "batch", "batchsize",
               "VALID", "none "):
    TABLE += _row(f"reduction-{_typed_id(_value)}", "softmax_loss", (X, Y),
                  {"reduction": _value}, ValueError,
                  rf"^reduction must be one of {REDUCTIONS_RE}, got '", "reduction")
for _value, _shown in ((None, "None"), (0, "0"), (b"mean", "b'mean'")):
    TABLE += _row(f"reduction-{_typed_id(_value)}", "softmax_loss", (X, Y),
                  {"reduction": _value}, TypeError,
                  rf"^reduction must be a str, one of {REDUCTIONS_RE}, got {_shown}$",
                  "reduction")

# --- return_grad, return_lse and check: exactly bool (or numpy.bool_) --------
for _name, _modules in (("return_grad", BOTH), ("return_lse", ("kernel",)),
                        ("check", ("kernel",))):
    for _value, _shown in ((1, "1"), (0, "0"), (None, "None"), ("yes", "'yes'"),
                           (1.0, "1.0"), (np.array(True), r"array\(True\)"),
                           ([True], r"\[True\]")):
        TABLE += _row(f"{_name}-{_typed_id(_value)}", "softmax_loss", (X, Y),
                      {_name: _value}, TypeError,
                      rf"^{_name} must be True or False, got {_shown}$", _name,
                      modules=_modules)

# --- threads and out: the kernel's execution knobs ----------------------------
for _value, _exc, _match in (
        (0, ValueError, r"^threads must be >= 1, got 0$"),
        (-2, ValueError, r"^threads must be >= 1, got -2$"),
        (1.5, TypeError, r"^threads must be an int, got 1.5$"),
        ("2", TypeError, r"^threads must be an int, got '2'$"),
        (True, TypeError, r"^threads must be an int, got True$")):
    TABLE += _row(f"threads-{_typed_id(_value)}", "softmax_loss", (X, Y), {"threads": _value},
                  _exc, _match, "threads", modules=("kernel",))
    for _function in ("softmax", "log_softmax"):
        TABLE += _row(f"threads-{_typed_id(_value)}", _function, (X,), {"threads": _value},
                      _exc, _match, "threads", modules=("kernel",))

_GRAD = {"return_grad": True}
_READ_ONLY = np.empty((N, C), np.float32)
_READ_ONLY.flags.writeable = False
for _id, _value, _kwargs, _exc, _match in (
        ("without-return-grad", np.empty((N, C), np.float32), {}, ValueError,
         r"^out receives the gradient: pass return_grad=True with it$"),
        ("list", [[0.0] * C] * N, _GRAD, TypeError,
         r"^out must be a numpy array, got list$"),
        ("float64", np.empty((N, C)), _GRAD, TypeError,
         r"^out must have the logits' dtype float32, got float64$"),
        ("shape", np.empty((C, N), np.float32), _GRAD, ValueError,
         rf"^out must have the logits' shape {_shape((N, C))}, got {_shape((C, N))}$"),
        ("fortran", np.empty((N, C), np.float32, order="F"), _GRAD, ValueError,
         r"^out must be C-contiguous, aligned and writeable$"),
        ("strided", np.empty((N, 2 * C), np.float32)[:, ::2], _GRAD, ValueError,
         r"^out must be C-contiguous, aligned and writeable$"),
        ("read-only", _READ_ONLY, _GRAD, ValueError,
         r"^out must be C-contiguous, aligned and writeable$"),
        ("masked", np.ma.masked_array(np.empty((N, C), np.float32)), _GRAD, TypeError,
         r"^out is a masked array; pysafemax does not read masks")):
    TABLE += _row(f"out-{_id}", "softmax_loss", (X, Y), {"out": _value, **_kwargs},
                  _exc, _match, "out", modules=("kernel",))
# softmax's and log_softmax's out: any layout, and any overlap with the
# logits, is written through a temporary (tests/test_softmax_out.py).
for _id, _value, _exc, _match in (
        ("list", [[0.0] * C] * N, TypeError, r"^out must be a numpy array, got list$"),
        ("float64", np.empty((N, C)), TypeError,
         r"^out must have the logits' dtype float32, got float64$"),
        ("shape", np.empty((C, N), np.float32), ValueError,
         rf"^out must have the logits' shape {_shape((N, C))}, got {_shape((C, N))}$"),
        ("positions-only", np.empty(N, np.float32), ValueError,
         rf"^out must have the logits' shape {_shape((N, C))}, got {_shape((N,))}$"),
        ("read-only", _READ_ONLY, ValueError, r"^out must be writeable$"),
        ("masked", np.ma.masked_array(np.empty((N, C), np.float32)), TypeError,
         r"^out is a masked array; pysafemax does not read masks")):
    for _function in ("softmax", "log_softmax"):
        TABLE += _row(f"out-{_id}", _function, (X,), {"out": _value}, _exc, _match, "out",
                      modules=("kernel",))
# out=logits itself is the gradient written over the logits
# (tests/test_inplace.py); any other overlap with them is refused.
_LOGITS_BUFFER = np.zeros(N * C + 1, np.float32)
_LOGITS_BUFFER[:N * C] = X.reshape(-1)
TABLE += _row("out-overlaps-the-logits", "softmax_loss",
              (_LOGITS_BUFFER[:N * C].reshape(N, C), Y),
              {"out": _LOGITS_BUFFER[1:].reshape(N, C), **_GRAD}, ValueError,
              _overlap_re("logits"), "out", modules=("kernel",))
# out shares memory with an input other than the logits: the gradient would
# overwrite labels the kernel has checked and reads again (a crash, before
# the kernel bounded labels at the point of use), or weights and targets it
# still reads (a wrong answer).
_BUFFER = np.zeros(N * C, np.float32)
_OUT = _BUFFER.reshape(N, C)
for _id, _labels in (("int64-labels", _BUFFER[:2 * N].view(np.int64)),
                     ("int32-labels", _BUFFER[-N:].view(np.int32)),
                     ("probabilities", _BUFFER.reshape(N, C))):
    TABLE += _row(f"out-overlaps-{_id}", "softmax_loss", (X, _labels),
                  {"out": _OUT, **_GRAD}, ValueError, _overlap_re("labels"), "out",
                  modules=("kernel",))
_WEIGHT_BUFFER = np.zeros(N * C + C)
TABLE += _row("out-overlaps-weight", "softmax_loss", (X.astype(np.float64), Y),
              {"out": _WEIGHT_BUFFER[C:].reshape(N, C), **_GRAD,
               "weight": _WEIGHT_BUFFER[C - 1:2 * C - 1]}, ValueError,
              _overlap_re("weight"), "out", modules=("kernel",))

# --- the signature itself -----------------------------------------------------
TABLE += _row("method-positional", "softmax_loss", (X, Y, "stable"), {},
              TypeError, r"softmax_loss\(\) takes 2 positional arguments",
              "softmax_loss")
TABLE += _row("axis-positional", "softmax", (X, 1), {}, TypeError,
              r"softmax\(\) takes 1 positional argument", "softmax")
TABLE += _row("axis-positional", "log_softmax", (X, 1), {}, TypeError,
              r"log_softmax\(\) takes 1 positional argument", "log_softmax")
TABLE += _row("labels-missing", "softmax_loss", (X,), {}, TypeError,
              r"missing 1 required positional argument: 'labels'", "labels")
TABLE += _row("log-softmax-has-no-method", "log_softmax", (X,),
              {"method": "stable"}, TypeError,
              r"unexpected keyword argument 'method'", "method")
TABLE += _row("softmax-has-no-weight", "softmax", (X,), {"weight": np.ones(C)},
              TypeError, r"unexpected keyword argument 'weight'", "weight")
for _name, _value in (("check", True), ("threads", 2), ("out", np.empty((N, C))),
                      ("return_lse", True), ("loss_dtype", np.float32)):
    TABLE += _row(f"reference-has-no-{_name}", "softmax_loss", (X, Y), {_name: _value},
                  TypeError, rf"unexpected keyword argument '{_name}'", _name,
                  modules=("reference",))
for _function in ("softmax", "log_softmax"):
    TABLE += _row("reference-has-no-threads", _function, (X,), {"threads": 2}, TypeError,
                  r"unexpected keyword argument 'threads'", "threads", modules=("reference",))


@pytest.mark.parametrize("module, function, args, kwargs, exc, match, arg", TABLE)
def test_bad_input(module, function, args, kwargs, exc, match, arg):
    with pytest.raises(exc, match=match) as info:
        getattr(MODULES[module], function)(*args, **kwargs)
    assert arg in str(info.value)


def test_table_covers_every_argument():
    # Read the arguments from the signatures, so an argument added later
    # fails here until it has rows of its own.
    covered = {(row.values[0], row.values[1], row.values[6]) for row in TABLE}
    for module in BOTH:
        for function in FUNCTIONS:
            signature = inspect.signature(getattr(MODULES[module], function))
            for arg in signature.parameters:
                assert (module, function, arg) in covered, (module, function, arg)
    for arg in ("axis", "weight", "ignore_index", "label_smoothing"):
        assert ("kernel", "softmax_loss", arg) in covered
    assert {row.values[0] for row in TABLE} == set(BOTH)
    assert len({row.id for row in TABLE}) == len(TABLE)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_reference_has_the_kernel_signature_without_check(function):
    # check, out and threads steer the kernel, return_lse asks for one more of
    # its outputs (tests/test_logsumexp.py has its float64 oracle) and
    # loss_dtype for its per-position outputs in another dtype; the numpy
    # twin has none of them.
    kernel = inspect.signature(getattr(pysafemax, function))
    twin = inspect.signature(getattr(reference, function))
    expected = [p for name, p in kernel.parameters.items()
                if name not in ("check", "out", "threads", "return_lse", "loss_dtype")]
    assert list(twin.parameters.values()) == expected
    assert "check" in inspect.signature(pysafemax.softmax_loss).parameters


OPTION_SETS = {
    "plain": {},
    "weight": {"weight": np.array([0.5, 2.0, 1.0])},
    "smoothing": {"label_smoothing": 0.2},
    "ignore_1": {"ignore_index": 1},
    "all": {"weight": np.array([0.5, 2.0, 1.0]), "label_smoothing": 1.0,
            "ignore_index": -100},
}


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_out_of_range_label_is_caught_in_every_mode(module, method, options):
    # The kernel checks labels inside its pass: put the bad one last, behind
    # rows that overflow, hold NaN and hold +-inf, so the pass gets that far.
    x = np.array([[100.0, 20.0, 0.0], [np.nan, 1.0, 2.0], [np.inf, 0.0, -np.inf],
                  [-np.inf, -np.inf, -np.inf], [0.5, 0.25, 0.125]], np.float32)
    labels = np.array([0, 1, 2, 0, C], dtype=np.int16)
    spatial = np.moveaxis(np.stack([x, x[::-1]]), 2, 1)       # (2, C, 5)
    spatial_labels = np.stack([labels, labels])
    spatial_labels[1, 0] = -7                  # a second bad label, reported not
    for reduction in pysafemax.REDUCTIONS:
        for return_grad in (False, True):
            kwargs = dict(method=method, reduction=reduction,
                          return_grad=return_grad, **OPTION_SETS[options])
            with pytest.raises(ValueError, match=_out_of_range_re(4, C)):
                module.softmax_loss(x, labels, **kwargs)
            with pytest.raises(ValueError, match=_out_of_range_re((0, 4), C)):
                module.softmax_loss(spatial, spatial_labels, **kwargs)


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
    # An ignore_index other than the label changes nothing but the hint.
    with pytest.raises(ValueError, match=_out_of_range_re(2, value, hint=False)):
        module.softmax_loss(X, labels, ignore_index=0)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int64, ">i4", np.intp])
@pytest.mark.parametrize("value", [-100, -1, -128, 0, 2])
def test_following_the_ignore_index_hint_works(module, dtype, value):
    labels = _labels_with(1, value, dtype)
    ints = np.asarray(labels, np.int64)
    kept = ints != value
    loss, grad = module.softmax_loss(X, labels, ignore_index=value,
                                     reduction="none", return_grad=True)
    assert np.all(loss[~kept] == 0) and np.all(grad[~kept] == 0)
    expected = module.softmax_loss(X[kept], ints[kept], reduction="none",
                                   return_grad=True)
    np.testing.assert_array_equal(loss[kept], expected[0])
    np.testing.assert_array_equal(grad[kept], expected[1])


# ignore_index is an int64, like the labels the kernel compares it with.
@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("labels, ignore_index", [
    pytest.param(Y, 2**63, id="2**63"),
    pytest.param(Y, 2**70, id="2**70"),
    pytest.param(Y, -2**63 - 1, id="-2**63-1"),
    pytest.param([0, 2, 1, -2**64], -2**64, id="list-minus-2**64"),
    pytest.param([0, 2, 1, 2**70], 2**70, id="list-2**70"),
    pytest.param(np.array([0, 2, 1, 2**63], np.uint64), 2**63, id="uint64-2**63"),
])
def test_ignore_index_beyond_int64_is_refused(module, labels, ignore_index):
    with pytest.raises(ValueError,
                       match=rf"^ignore_index must fit in int64, got {ignore_index}$"):
        module.softmax_loss(X, labels, ignore_index=ignore_index)


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("value, ignore_index", [(2**64 - 1, -1),
                                                 (2**64 - 100, -100),
                                                 (2**63, -2**63)])
def test_uint64_label_does_not_alias_a_negative_ignore_index(module, value,
                                                             ignore_index):
    labels = _labels_with(1, value, np.uint64)
    with pytest.raises(ValueError, match=_out_of_range_re(1, value, hint=False)):
        module.softmax_loss(X, labels, ignore_index=ignore_index)


def _empty_batch_expectation(loss, reduction, position_shape, native):
    """mean of nothing is nan (PyTorch); sum and Caffe's normalizations,
    which are at least 1, give 0 (Caffe); none gives no losses."""
    if reduction == "none":
        assert isinstance(loss, np.ndarray)
        assert loss.shape == position_shape and loss.dtype == native
    elif reduction == "mean":
        assert type(loss) is float and math.isnan(loss)
    else:
        assert type(loss) is float and loss == 0.0, reduction


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

    for reduction in pysafemax.REDUCTIONS:
        loss = module.softmax_loss(x, y, method=method, reduction=reduction)
        _empty_batch_expectation(loss, reduction, (0,), native)
        loss, grad = module.softmax_loss(x, y, method=method, reduction=reduction,
                                         return_grad=True)
        assert isinstance(grad, np.ndarray)
        assert grad.shape == (0, 5) and grad.dtype == native
        _empty_batch_expectation(loss, reduction, (0,), native)

    p = module.softmax(x, method=method)
    assert p.shape == (0, 5) and p.dtype == native
    logp = module.log_softmax(x)
    assert logp.shape == (0, 5) and logp.dtype == native


# Shapes with no positions: an empty batch, empty spatial axes, and a class
# axis other than 1.  (shape, axis)
EMPTY_SHAPES = [((0, 5, 3), 1), ((2, 5, 0), 1), ((3, 5, 2, 0), 1),
                ((0, 5, 3), -1), ((4, 0), 0), ((2, 0, 5), -1)]


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("shape, axis", EMPTY_SHAPES,
                         ids=[f"{s}-axis{a}" for s, a in EMPTY_SHAPES])
@pytest.mark.parametrize("targets", ["labels", "probs"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_empty_positions_nd(module, shape, axis, targets, options):
    x = np.zeros(shape, np.float32)
    classes = shape[axis]
    position_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    kwargs = dict(OPTION_SETS[options], axis=axis)
    if "weight" in kwargs:
        kwargs["weight"] = np.ones(classes)
    if targets == "probs":
        y = np.zeros(shape, np.float64)
        kwargs.pop("ignore_index", None)
    else:
        y = np.zeros(position_shape, np.int64)
    for method in pysafemax.METHODS:
        for reduction in pysafemax.REDUCTIONS:
            loss, grad = module.softmax_loss(x, y, method=method, reduction=reduction,
                                             return_grad=True, **kwargs)
            assert grad.shape == shape and grad.dtype == np.float32
            _empty_batch_expectation(loss, reduction, position_shape,
                                     np.dtype(np.float32))
        assert module.softmax(x, axis=axis, method=method).shape == shape
    assert module.log_softmax(x, axis=axis).shape == shape


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_empty_batch_with_check(method, reduction, dtype):
    x = np.zeros((0, 2), dtype)
    loss, grad = pysafemax.softmax_loss(x, [], method=method, reduction=reduction,
                                        return_grad=True, check=True)
    assert grad.shape == (0, 2) and grad.dtype == dtype
    _empty_batch_expectation(loss, reduction, (0,), np.dtype(dtype))
    x3 = np.zeros((2, 3, 0), dtype)
    loss = pysafemax.softmax_loss(x3, np.zeros((2, 0), np.int8), method=method,
                                  reduction=reduction, label_smoothing=0.5,
                                  check=True)
    _empty_batch_expectation(loss, reduction, (2, 0), np.dtype(dtype))


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


# Other spellings of the same option: each must give, bit for bit, what the
# plain spelling gives.  (name, plain value, other spellings)
SPELLINGS = [
    ("axis", 1, [np.int8(1), np.int64(1), np.uint16(1), -1]),
    ("ignore_index", 2, [np.int16(2), np.uint64(2), np.intp(2)]),
    ("ignore_index", -100, [np.int8(-100), np.int64(-100)]),
    ("label_smoothing", 0.25, [np.float32(0.25), np.float16(0.25), Fraction(1, 4),
                               np.float64(0.25)]),
    ("label_smoothing", 0.0, [0, -0.0, np.int64(0), Fraction(0)]),
    ("label_smoothing", 1.0, [1, np.uint8(1), Fraction(1)]),
    ("weight", np.array([0.5, 2.0, 1.0]),
     [[0.5, 2.0, 1.0], (0.5, 2.0, 1.0), np.array([0.5, 2.0, 1.0], np.float32),
      np.array([0.5, 2.0, 1.0], np.float16), np.array([0.5, 2.0, 1.0], ">f8"),
      np.array([0.5, 2.0, 1.0], np.longdouble),
      np.array([0.5, 9.0, 2.0, 9.0, 1.0])[::2]]),
]


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
@pytest.mark.parametrize("name, plain, spellings", SPELLINGS,
                         ids=[f"{s[0]}-{k}" for k, s in enumerate(SPELLINGS)])
def test_other_spellings_of_an_option_are_accepted(module, name, plain, spellings):
    labels = np.array([0, 2, 1, 2])
    expected = module.softmax_loss(X, labels, reduction="none", return_grad=True,
                                   **{name: plain})
    for value in spellings:
        got = module.softmax_loss(X, labels, reduction="none", return_grad=True,
                                  **{name: value})
        np.testing.assert_array_equal(got[0], expected[0], err_msg=repr(value))
        np.testing.assert_array_equal(got[1], expected[1], err_msg=repr(value))


@pytest.mark.parametrize("module", [pysafemax, reference], ids=["kernel", "reference"])
def test_bad_call_leaves_nothing_behind(module):
    # A failed call must not poison the next one (no state kept anywhere).
    before = module.softmax_loss(X, Y, reduction="none")
    for labels, kwargs in (([0, 1, 2, C], {}), ([-1, 0, 0, 0], {}),
                           (np.full(N, 2**64 - 1, np.uint64), {}),
                           (Y, {"weight": [1.0, np.nan, 1.0]}),
                           (Y, {"label_smoothing": 2.0}), (Y, {"axis": 5}),
                           (PROBS, {"ignore_index": 0}),
                           ([0, 1, -100, 2], {"ignore_index": -1})):
        with pytest.raises(ValueError):
            module.softmax_loss(X, labels, reduction="none", return_grad=True,
                                **kwargs)
    np.testing.assert_array_equal(module.softmax_loss(X, Y, reduction="none"), before)
