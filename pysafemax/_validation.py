"""Argument checking shared by the kernel wrappers and the numpy references.

Everything here turns caller input into arrays the computations can trust
(native float32/float64 logits, int64 labels, C-contiguous and aligned), or
raises a TypeError / ValueError that names the argument, and where it helps the
position and the value.  Arrays that already qualify pass through uncopied;
nothing here writes to the caller's arrays.
"""
import numpy as np

METHODS = ("naive", "maxsub", "stable")
REDUCTIONS = ("mean", "sum", "none")

# float16 has no kernel of its own: it is computed in float32 and the results
# are returned as float16.
_COMPUTE_DTYPE = {
    np.dtype(np.float16): np.dtype(np.float32),
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
}


def _as_array(value, name):
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{name} could not be read as an array: {exc}") from None


def logits_array(logits):
    """Return (logits as a computable 2-D array, the dtype results are given in)."""
    x = _as_array(logits, "logits")
    compute = _COMPUTE_DTYPE.get(x.dtype.newbyteorder("="))
    if compute is None:
        raise TypeError(
            f"logits must be float16, float32 or float64, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(
            f"logits must be 2-D (N, C), got {x.ndim}-D shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"logits has no classes: shape {x.shape}, C must be >= 1")
    result_dtype = x.dtype.newbyteorder("=")
    return np.require(x, dtype=compute, requirements="CA"), result_dtype


def labels_array(labels, rows):
    """Return (labels as C-contiguous int64, the labels as given, for messages)."""
    if isinstance(labels, (list, tuple)) and len(labels) == 0:
        given = np.zeros(0, dtype=np.int64)
    else:
        given = _as_array(labels, "labels")
    if given.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integers (class indices), got dtype {given.dtype}")
    if given.shape != (rows,):
        raise ValueError(
            f"labels must have shape ({rows},) to match logits, got {given.shape}")
    # uint64 labels above 2**63 wrap to negative here; the range check then
    # reports the caller's original value from `given`.
    return np.require(given, dtype=np.int64, requirements="CA"), given


def label_out_of_range(given, position, classes):
    """The ValueError for the label at flat position `position`."""
    index = np.unravel_index(position, given.shape) if given.ndim > 1 else (position,)
    where = "".join(f"[{int(k)}]" for k in index)
    value = given[index]
    return ValueError(
        f"labels{where} = {int(value)} is out of range for C = {classes} "
        f"classes (valid labels are 0..{classes - 1})")


def choice(value, name, allowed):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {allowed}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
