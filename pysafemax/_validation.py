"""Argument checking shared by the kernel wrappers and the numpy references.

Everything here turns caller input into arrays the computations can trust
(native float32/float64 logits, int64 labels, C-contiguous and aligned), or
raises a TypeError / ValueError that names the argument, and where it helps the
position and the value.  Arrays that already qualify pass through uncopied;
nothing here writes to the caller's arrays.
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import NDArray

METHODS = ("naive", "maxsub", "stable")
_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
# PyTorch's reductions, then Caffe's normalization modes.
REDUCTIONS = ("mean", "sum", "none", "valid", "full", "batch_size")

_NATIVE_FLOATS = frozenset([np.dtype(np.float32), np.dtype(np.float64)])
INT64 = np.dtype(np.int64)

# float16 has no kernel of its own: it is computed in float32 and the results
# are returned as float16.  So is bfloat16 (ml_dtypes', JAX's), which numpy
# lists as a kind "V" dtype: it is added when first met (is_bfloat16), so
# that ml_dtypes stays an optional extra pysafemax never imports.
_COMPUTE_DTYPE: dict[np.dtype[Any], np.dtype[Any]] = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    """ml_dtypes.bfloat16 (registered as a compute dtype on sight)."""
    if dtype.kind == "V" and dtype.name == "bfloat16" and dtype.itemsize == 2:
        _COMPUTE_DTYPE.setdefault(dtype, np.dtype(np.float32))
        return True
    return False


def computable(dtype: np.dtype[Any]) -> bool:
    """float16, float32, float64 (either byte order) or bfloat16: a dtype
    the kernel computes, in itself or in float32."""
    return (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) or is_bfloat16(dtype)


def native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """dtype in this machine's byte order (bfloat16, a kind "V" dtype, has
    only the one)."""
    return dtype.newbyteorder("=") if dtype.kind == "f" else dtype


def float_dtype(value: Any, name: str) -> np.dtype[Any]:
    """A result dtype: float16, float32, float64 or bfloat16."""
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name} must be a float dtype (float16, float32, float64 or "
                        f"bfloat16), got {value!r}") from None
    if not computable(dtype):
        raise TypeError(f"{name} must be a float dtype (float16, float32, float64 or "
                        f"bfloat16), got {dtype}")
    return native(dtype)


def is_floating(dtype: np.dtype[Any]) -> bool:
    """A floating dtype: numpy's own, or bfloat16."""
    return dtype.kind == "f" or is_bfloat16(dtype)


class Logits(NamedTuple):
    """Logits ready for a kernel, seen as outer x classes x inner."""
    array: np.ndarray          # compute dtype, C-contiguous, the caller's shape
                               # (as given, with convert=False)
    result_dtype: np.dtype     # what results are returned in
    axis: int                  # the class axis, non-negative
    outer: int
    classes: int
    inner: int

    @property
    def compute_dtype(self) -> np.dtype[Any]:
        """The dtype the kernel computes in (float32 for float16)."""
        return _COMPUTE_DTYPE[self.result_dtype]

    @property
    def position_shape(self) -> Tuple[int, ...]:
        """The logits' shape without the class axis: one loss per entry."""
        return self.array.shape[:self.axis] + self.array.shape[self.axis + 1:]

    def in_result_dtype(self, result: NDArray[Any]) -> NDArray[Any]:
        """A result in the dtype the caller's logits had (float16 stays
        float16; a value beyond float16's range becomes inf, silently)."""
        with np.errstate(over="ignore"):
            return result.astype(self.result_dtype, copy=False)


class Targets(NamedTuple):
    labels: Optional[np.ndarray]   # int64 class indices, position_shape
    given_labels: Optional[np.ndarray]  # the labels as the caller gave them
    probs: Optional[np.ndarray]    # probability targets, the logits' shape
    weight: Optional[np.ndarray]   # float64 (classes,)
    ignore_index: Optional[int]
    label_smoothing: float

    def label_error(self, position: int, classes: Optional[int]) -> ValueError:
        """The ValueError for the label at flat position `position` (one the
        kernel found out of range; classes None: not known yet)."""
        return label_out_of_range(self.given_labels, position, classes,
                                  self.ignore_index)


# What a masked array's caller should do instead, per argument.
_UNMASK = {
    "logits": "fill the masked logits with -inf (logits.filled(-np.inf))",
    "labels": ("fill the masked labels with an ignore_index value "
               "(labels.filled(-100)) and pass ignore_index"),
}


def no_mask(value: object, name: str) -> None:
    """Refuse a numpy.ma array: its mask would be dropped silently, and no
    single reading of it (ignored? -inf? zero?) fits every argument."""
    if isinstance(value, np.ma.MaskedArray):
        remedy = _UNMASK.get(name, f"pass {name}.filled(...) with the values you mean")
        raise TypeError(f"{name} is a masked array; pysafemax does not read masks: "
                        f"{remedy}")


def as_array(value: Any, name: str) -> NDArray[Any]:
    """value as an ndarray, without copying one; refuses masked arrays.
    A sequence that is no array (ragged) is a ValueError, one that holds no
    numbers numpy can take (a bfloat16 tensor) a TypeError."""
    no_mask(value, name)
    if isinstance(value, np.ndarray):
        return value
    try:
        with warnings.catch_warnings():
            # numpy < 1.24 makes an object array of ragged input, with a
            # deprecation warning; later versions raise ValueError
            warnings.simplefilter(
                "error", getattr(np, "exceptions", np).VisibleDeprecationWarning)
            return np.asarray(value)
    except TypeError as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from None
    except (ValueError, OverflowError, Warning) as exc:
        raise ValueError(f"{name} could not be read as an array: {exc}") from None


def integer(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def logits_array(logits: Any, axis: Any = 1, convert: bool = True) -> Logits:
    """Check logits and the class axis; see Logits.  convert=False leaves the
    array as given, for a caller that converts it block by block."""
    x = logits if type(logits) is np.ndarray else as_array(logits, "logits")
    # The common case first: a native float32/float64 array (cheap checks,
    # since they run on every call).
    dtype = x.dtype
    compute = dtype if dtype in _NATIVE_FLOATS else _COMPUTE_DTYPE.get(dtype.newbyteorder("="))
    if compute is None and is_bfloat16(dtype):
        compute = _COMPUTE_DTYPE[dtype]
    if compute is None:
        raise TypeError(
            f"logits must be float16, float32 or float64, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("logits must have a class axis, got a 0-d array")
    if type(axis) is not int:
        axis = integer(axis, "axis")
    # 1-D logits are one unbatched position, as in PyTorch: their one axis
    # holds the classes, and the default axis=1 names it too.
    if x.ndim == 1 and axis in (-1, 0, 1):
        axis = 0
    elif not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis {axis} is out of range for logits of shape {x.shape}")
    axis %= x.ndim
    classes = x.shape[axis]
    if classes == 0:
        raise ValueError(
            f"logits has no classes: shape {x.shape}, axis {axis}; C must be >= 1")
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1:])
    if not convert or (compute is dtype and x.flags.c_contiguous and x.flags.aligned):
        array = x
    else:
        array = np.require(x, dtype=compute, requirements=("C", "A"))
    result_dtype = dtype if compute is dtype else native(dtype)
    return Logits(array, result_dtype, axis, outer, classes, inner)


def targets(labels: Any, logits: Logits, *, weight: Any = None, ignore_index: Any = None,
            label_smoothing: Any = 0.0, convert: bool = True) -> Targets:
    """Check labels (class indices or probabilities) and the options on them.
    convert=False leaves probability targets as given, for a caller that
    converts them block by block (class indices are converted: they are C
    times smaller than the logits)."""
    position_shape = logits.position_shape
    if type(labels) is np.ndarray:
        given = labels
    elif isinstance(labels, (list, tuple)) and len(labels) == 0:
        given = np.zeros(0, dtype=np.int64)
    else:
        given = as_array(labels, "labels")
    if ignore_index is not None:
        ignore_index = integer(ignore_index, "ignore_index")
        if not _INT64_MIN <= ignore_index <= _INT64_MAX:
            raise ValueError(f"ignore_index must fit in int64, got {ignore_index}")
    if given.dtype.kind in "fO" and isinstance(labels, (list, tuple)):
        _reject_python_ints_beyond_int64(labels, logits.classes, ignore_index)
    weight = class_weight(weight, logits.classes)
    label_smoothing = smoothing(label_smoothing)

    if is_floating(given.dtype):
        if given.shape != logits.array.shape:
            raise probabilities_shape_error(given.shape, logits.array.shape)
        if ignore_index is not None:
            raise ValueError(
                "ignore_index applies to class-index labels only; probability "
                "targets (floating labels) take ignore_index=None")
        probs = (np.require(given, dtype=logits.compute_dtype,
                            requirements=("C", "A"))
                 if convert else given)
        return Targets(None, None, probs, weight, None, label_smoothing)

    if given.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integer class indices or floating probabilities, "
            f"got dtype {given.dtype}")
    if given.shape != position_shape:
        raise labels_shape_error(given.shape, logits.array.shape, logits.axis)
    if given.dtype.kind == "u" and given.itemsize == 8 and given.size:
        _reject_uint64_beyond_int64(given, logits.classes, ignore_index)
    if given.dtype is INT64 and given.flags.c_contiguous and given.flags.aligned:
        ints = given
    else:
        ints = np.require(given, dtype=np.int64, requirements=("C", "A"))
    return Targets(ints, given, None, weight, ignore_index, label_smoothing)


def labels_shape_error(shape: Sequence[int], logits_shape: Sequence[int],
                       axis: int) -> ValueError:
    """The ValueError for class-index labels of `shape` against logits of
    logits_shape with the class axis `axis` (non-negative)."""
    position_shape = tuple(logits_shape[:axis]) + tuple(logits_shape[axis + 1:])
    return ValueError(
        f"labels must have shape {position_shape} (the logits' shape "
        f"{tuple(logits_shape)} without axis {axis}), got {tuple(shape)}")


def probabilities_shape_error(shape: Sequence[int],
                              logits_shape: Sequence[int]) -> TypeError:
    """The TypeError for floating labels (probability targets) of `shape`."""
    return TypeError(
        f"floating labels are probability targets and must have the "
        f"logits' shape {tuple(logits_shape)}, got {tuple(shape)}; "
        f"class indices must be integers")


def _reject_python_ints_beyond_int64(labels: Sequence[Any], classes: int,
                                     ignore_index: Optional[int]) -> None:
    """numpy turns a list of ints some of which no int64 holds into float or
    object arrays; such a list is still class indices, with a label out of
    range, and gets that ValueError rather than a dtype complaint."""
    try:
        values = np.asarray(labels, dtype=object)
    except ValueError:
        return
    flat = values.reshape(-1)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
               for v in flat):
        return
    bad = out_of_range(flat, classes, ignore_index)
    if bad.any():
        raise label_out_of_range(values, int(np.argmax(bad)), classes, ignore_index)


def _reject_uint64_beyond_int64(given: NDArray[Any], classes: int,
                                ignore_index: Optional[int]) -> None:
    """A uint64 label of 2**63 or more would wrap to a negative int64, and
    could then pass for a negative ignore_index: report the first
    out-of-range label here instead."""
    if given.max() <= np.uint64(_INT64_MAX):
        return
    bad = out_of_range(given, classes, ignore_index).reshape(-1)
    raise label_out_of_range(given, int(np.argmax(bad)), classes, ignore_index)


def out_of_range(labels: NDArray[Any], classes: int,
                 ignore_index: Optional[int] = None) -> NDArray[np.bool_]:
    """Where integer labels lie outside [0, classes) and are not ignore_index
    (an int64 or None).  Exact for every integer dtype on every numpy: the
    bounds are numpy scalars of the labels' own kind, since numpy before 1.25
    compares uint64 with a Python int through float64 (2**63 passed for
    2**63 - 1).  An object array of Python ints is compared as Python ints."""
    if labels.dtype.kind == "O":
        bad = (labels < 0) | (labels >= classes)
        if ignore_index is not None:
            bad &= labels != ignore_index
        return bad.astype(bool)
    if labels.dtype.kind == "u" and labels.itemsize == 8:
        bad = labels >= np.uint64(classes)
        if ignore_index is not None and ignore_index >= 0:
            bad &= labels != np.uint64(ignore_index)
        return bad
    values = labels.astype(np.int64, copy=False)
    bad = (values < 0) | (values >= np.int64(classes))
    if ignore_index is not None:
        bad &= values != np.int64(ignore_index)
    return bad


def class_weight(weight: Any, classes: int,
                 name: str = "weight") -> Optional[NDArray[np.float64]]:
    """Per-class weights as a private float64 copy; `name` is the argument's
    name in messages (linear_cross_entropy calls it class_weight)."""
    if weight is None:
        return None
    w = as_array(weight, name)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array of {classes} class "
                        f"weights, got dtype {w.dtype}")
    if w.shape != (classes,):
        raise ValueError(f"{name} must have shape ({classes},), one per class, "
                         f"got {w.shape}")
    # Always a private copy: a kernel call reads it with the GIL released,
    # and a partial state keeps it.
    w = np.array(w, dtype=np.float64, order="C", copy=True)
    nan = np.flatnonzero(np.isnan(w))
    if nan.size:
        raise ValueError(f"{name}[{nan[0]}] is nan; class weights must be numbers")
    infinite = np.flatnonzero(np.isinf(w))
    if infinite.size:
        raise ValueError(f"{name}[{infinite[0]}] is {w[infinite[0]]}; class weights "
                         f"must be finite")
    return w


def _real(value: Any) -> float:
    """float(value), or an infinity for an int or Fraction beyond a double
    (which float() refuses with OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def smoothing(value: Any) -> float:
    if type(value) is float and 0.0 <= value <= 1.0:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {value!r}")
    value = _real(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {value!r}")
    return value


def z_loss(value: Any) -> float:
    """The z-loss coefficient: a finite real number >= 0 (PaLM used 1e-4)."""
    if type(value) is float and 0.0 <= value <= 1.7976931348623157e308:
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"z_loss must be a real number >= 0, got {value!r}")
    number = _real(value)
    if not 0.0 <= number <= 1.7976931348623157e308:
        raise ValueError(f"z_loss must be a finite number >= 0, got {number!r}")
    return number


def label_out_of_range(given: Any, position: int, classes: Optional[int],
                       ignore_index: Optional[int] = None) -> ValueError:
    """The ValueError for the label at flat position `position`; classes
    None: the class count is not known yet (a block of classes)."""
    index = np.unravel_index(position, given.shape) if given.ndim else ()
    where = "".join(f"[{int(k)}]" for k in index)
    value = int(given[index])
    if value == ignore_index or 0 <= value < (_INT64_MAX if classes is None
                                              else classes):
        # The kernel bounds each label where it uses it: this one was out of
        # range then, and another thread has written it since.
        return ValueError(f"labels{where} was out of range when it was read, and "
                          f"is {value} now: the labels changed during the call")
    hint = ""
    if value < 0 and ignore_index is None:
        hint = (f"; to skip positions labelled {value}, pass "
                f"ignore_index={value}")
    if classes is None:
        return ValueError(f"labels{where} = {value} is out of range (class indices "
                          f"are 0 or more){hint}")
    return ValueError(
        f"labels{where} = {value} is out of range for C = {classes} "
        f"classes (valid labels are 0..{classes - 1}){hint}")


def thread_count(value: Any, name: str = "threads") -> int:
    """A thread count: any int >= 1 (the kernel caps what it starts)."""
    value = integer(value, name)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def same_array(a: Any, b: NDArray[Any]) -> bool:
    """Whether a is b's very memory: an ndarray of its dtype, shape, strides
    and first byte (b itself, or a view of it as it is)."""
    if a is b:
        return True
    # may_share_memory first: a separate buffer is told apart in a fraction
    # of what reading two data pointers costs (a microsecond each)
    return (isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
            and a.strides == b.strides and np.may_share_memory(a, b)
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def logits_shaped_out(out: Any, logits: Logits) -> NDArray[Any]:
    """Check `out`, a caller's array for a result shaped like the logits: a
    numpy array of the logits' shape and (result) dtype.  Its layout and
    overlap are the caller's to check or work around."""
    if type(out) is not np.ndarray:
        no_mask(out, "out")
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != logits.result_dtype:
        raise TypeError(f"out must have the logits' dtype {logits.result_dtype}, "
                        f"got {out.dtype}")
    if out.shape != logits.array.shape:
        raise ValueError(f"out must have the logits' shape {logits.array.shape}, "
                         f"got {out.shape}")
    return out


def probabilities_out(out: Any, logits: Logits) -> NDArray[Any]:
    """Check `out` for softmax or log_softmax: logits_shaped_out, and
    writeable.  Any layout, and overlap with the logits, is allowed: the
    caller writes through a buffer where the kernel cannot write in place,
    as numpy's ufuncs do."""
    out = logits_shaped_out(out, logits)
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    return out


def gradient_out(out: Any, logits: Logits, return_grad: bool,
                 inputs: Sequence[Tuple[str, Any]]) -> NDArray[Any]:
    """Check `out`, the caller's buffer for the gradient, against the logits
    and every input array ((name, array) pairs: each as given, and as
    converted): the kernel writes the gradient while it still reads them."""
    if not return_grad:
        raise ValueError("out receives the gradient: pass return_grad=True with it")
    out = logits_shaped_out(out, logits)
    flags = out.flags
    if not (flags.c_contiguous and flags.aligned and flags.writeable):
        raise ValueError("out must be C-contiguous, aligned and writeable")
    previous = None
    for name, array in inputs:
        # Each input comes as given, then as converted (often the same
        # array); None and lists share no memory.  Small calls feel every
        # check here, so each costs one may_share_memory at most.
        if array is previous or not isinstance(array, np.ndarray):
            continue
        previous = array
        if np.may_share_memory(out, array):
            raise ValueError(f"out must not overlap the {name}: the gradient is "
                             f"written while the {name} are read")
    return out


def choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {allowed}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
