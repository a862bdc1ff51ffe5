"""Softmax cross-entropy of dask arrays chunked along rows, classes or both.

    import pysafemax.dask
    loss = pysafemax.dask.softmax_loss(logits, labels)       # a lazy 0-d dask array
    loss, grad = pysafemax.dask.softmax_loss(logits, labels, return_grad=True)

The graph (nothing is computed until .compute()):

- Labels are rechunked to the logits' position chunks (the logits' own
  chunks are never changed).  One task per labels block checks its range and
  sums what the reduction divides by (psm_label_summary: how many positions
  are not ignored, and their class weights).
- A row block whose classes are all in one chunk is one kernel call, as
  pysafemax.softmax_loss makes: its summed (or per-position) loss and its
  gradient in one pass; every method and option works.
- A row block whose classes are split: one softmax_partials per block,
  merged per row block by a tree of combine_partials, then
  loss_from_partials; each block's gradient comes from its row block's
  merged state.  The class axis is never gathered into one chunk.
- mean and valid divide by the whole batch's normalizer, so the label
  summaries are added up over every row block (a tree) before any gradient
  is scaled; full and batch_size are known from the shape.  Each block's
  gradient is scaled by that normalizer inside the kernel (psm_options'
  has_normalizer), so it has the single call's scale exactly.

Agreement with the single call: per-position losses and the gradients of
blocks holding all their classes are the single call's bits (the kernel's
results do not depend on how many rows a call sees), except that mean's
normalizer, a sum of class weights, is added per row block: with weights
that do not add up exactly it can differ in its last bit, and so can the
gradient scaled by it.  Reduced losses add the row blocks' sums in another
order, and split classes merge their exp sums in double: these differ by
rounding, well within pysafemax.check_tolerance (see tests/test_dask.py).
"""
from __future__ import annotations

import itertools
import math
import operator
from functools import partial
from typing import (Any, Callable, Dict, List, Literal, NamedTuple, Optional, Tuple,
                    Union, overload)

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:     # pysafemax itself never needs dask
    raise ImportError(f'pysafemax.dask needs dask ({exc}): pip install "dask[array]" '
                      '(the "dask" extra: pip install ".[dask]" in a source tree)') \
        from None

from . import _bindings, _partials, _validation
from ._core import get_num_threads
from ._partials import (SoftmaxPartials, combine_partials, loss_from_partials,
                        softmax_partials)
from ._types import FloatArray, Integer, Loss

__all__ = ["softmax_loss"]

# How many states or sums one merge task takes: a tree, so that no task has
# to hold every class block's state (or every row block's sum) at once.
SPLIT_EVERY = 8

# A task's key in the graph: (name, index, ...).
Key = Tuple[Any, ...]


class _Call(NamedTuple):
    """The validated options of one softmax_loss call, bound into its tasks."""
    axis: int                   # the class axis, non-negative
    classes: int
    method: str
    reduction: str
    weight: Optional[np.ndarray]
    ignore_index: Optional[int]
    label_smoothing: float
    threads: Optional[int]
    return_grad: bool


class _LabelBlock(NamedTuple):
    """A labels block, checked and as int64, with its psm_label_summary."""
    labels: np.ndarray
    valid: int
    weight_sum: float


# A dask array, or what numpy takes as an array (numpy logits are chunked
# along the positions, with the classes whole).
DaskArrayLike = Union[da.Array, ArrayLike]


# The loss is always a dask array (0-d, or per position for "none"):
# return_grad alone picks one array or a (loss, grad) pair.
@overload
def softmax_loss(logits: DaskArrayLike, labels: DaskArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., return_grad: Literal[False] = ...,
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> da.Array: ...
@overload
def softmax_loss(logits: DaskArrayLike, labels: DaskArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., return_grad: Literal[True],
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Tuple[da.Array, da.Array]: ...
@overload
def softmax_loss(logits: DaskArrayLike, labels: DaskArrayLike, *, axis: Integer = ...,
                 method: str = ..., reduction: str = ...,
                 weight: Optional[ArrayLike] = ..., ignore_index: Optional[Integer] = ...,
                 label_smoothing: float = ..., return_grad: bool = ...,
                 out: None = ..., threads: Optional[Integer] = ...,
                 check: bool = ...) -> Union[da.Array, Tuple[da.Array, da.Array]]: ...


def softmax_loss(logits: DaskArrayLike, labels: DaskArrayLike, *, axis: Integer = 1,
                 method: str = "stable", reduction: str = "mean",
                 weight: Optional[ArrayLike] = None,
                 ignore_index: Optional[Integer] = None, label_smoothing: float = 0.0,
                 return_grad: bool = False, out: None = None,
                 threads: Optional[Integer] = None,
                 check: bool = False) -> Union[da.Array, Tuple[da.Array, da.Array]]:
    """pysafemax.softmax_loss of dask arrays, as a dask graph.

    Nothing is computed until ``.compute()``.  Bad labels raise ValueError
    at compute time, naming the label's position in the whole labels array.

    Parameters
    ----------
    logits, labels : dask.array.Array or array_like
        As pysafemax.softmax_loss; dask or numpy arrays (numpy logits are
        chunked along the positions, with the classes whole).  Labels are
        rechunked to match the logits' positions; the logits keep their
        chunks, which may split the classes.
    axis, method, reduction, weight, ignore_index, label_smoothing, return_grad
        As pysafemax.softmax_loss.  naive and maxsub with label smoothing
        or probability targets need every class in one chunk.
    out : None
        Refused: the gradient is a dask array (``dask.array.store`` it
        where you want it).
    threads : int, optional
        Each block's kernel call's thread count (None: pysafemax's default
        where the task runs); dask runs several blocks at once as well.
    check : bool, default False
        Refused when True: the reference needs whole rows in numpy.

    Returns
    -------
    loss : dask.array.Array
        A 0-d float64 dask array (its ``.compute()`` is a numpy.float64,
        which is a float), or for reduction="none" a dask array of
        per-position losses chunked like the logits' positions.
    grad : dask.array.Array
        Only with ``return_grad=True`` (then a ``(loss, grad)`` tuple): the
        gradient, chunked exactly like the logits.

    Raises
    ------
    TypeError
        For an argument of the wrong type, as pysafemax.softmax_loss.
    ValueError
        For a bad value, as pysafemax.softmax_loss (bad labels at compute
        time); for out= or check=True; for unknown chunk sizes or an empty
        class chunk; for naive or maxsub with split classes and label
        smoothing or probability targets.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> import pysafemax.dask
    >>> logits = da.from_array(np.zeros((4, 6)), chunks=(2, 3))   # classes split
    >>> labels = np.array([0, 1, 2, 5])
    >>> loss, grad = pysafemax.dask.softmax_loss(logits, labels, return_grad=True)
    >>> round(float(loss.compute()), 6)     # ln 6
    1.791759
    >>> grad.chunks
    ((2, 2), (3, 3))
    """
    method = _validation.choice(method, "method", _validation.METHODS)
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    if _validation.flag(check, "check"):
        raise ValueError("check=True is not supported by pysafemax.dask: the numpy "
                         "reference needs whole rows; run pysafemax.softmax_loss("
                         "..., check=True) on a sample instead")
    if out is not None:
        raise ValueError("out= is not supported by pysafemax.dask: the gradient is a "
                         "dask array; write it with dask.array.store(grad, out)")
    threads = None if threads is None else _validation.thread_count(threads)

    logits, x = _dask_logits(logits, axis)
    if isinstance(labels, da.Array):
        _require_known_chunks(labels, "labels")
        _validation.no_mask(labels._meta, "labels")
    else:
        labels = _validation.as_array(labels, "labels")
    uses_probabilities = _check_targets(labels, logits, x, weight, ignore_index,
                                        label_smoothing)
    targets = _dask_targets(labels, logits, x.axis)
    split = len(logits.chunks[x.axis]) > 1
    if split and method != "stable" and (uses_probabilities or label_smoothing != 0):
        raise _partials.not_decomposable(method)
    call = _Call(x.axis, logits.shape[x.axis], method, reduction,
                 _validation.class_weight(weight, logits.shape[x.axis]),
                 None if ignore_index is None else int(ignore_index),
                 _validation.smoothing(label_smoothing), threads, return_grad)
    return _Graph(logits, targets, call, uses_probabilities, x.result_dtype).build()


def _dask_logits(logits: Any, axis: Integer) -> Tuple[da.Array, _validation.Logits]:
    """Logits as a dask array, and their metadata checked (see Logits)."""
    if isinstance(logits, da.Array):
        _require_known_chunks(logits, "logits")
        _validation.no_mask(logits._meta, "logits")
        x = _logits_metadata(logits.shape, logits.dtype, axis)
    else:
        logits = _validation.as_array(logits, "logits")
        x = _logits_metadata(logits.shape, logits.dtype, axis)
        # Positions in dask's automatic chunks, the classes whole; name=False
        # spares hashing the whole array for a name.
        chunks = tuple(-1 if i == x.axis else "auto" for i in range(logits.ndim))
        logits = da.from_array(logits, chunks=chunks, name=False)
    if any(n == 0 for n in logits.chunks[x.axis]):
        raise ValueError(f"logits has an empty chunk along the class axis "
                         f"{logits.chunks[x.axis]}: drop it first, e.g. with "
                         f"logits.rechunk({{{x.axis}: <the non-empty chunks>}})")
    return logits, x


def _require_known_chunks(array: da.Array, name: str) -> None:
    if any(math.isnan(n) for n in array.shape):
        raise ValueError(f"{name} has unknown chunk sizes (nan): call "
                         f"{name}.compute_chunk_sizes() first")


def _logits_metadata(shape: Tuple[int, ...], dtype: np.dtype[Any],
                     axis: Integer) -> _validation.Logits:
    """_validation.logits_array's checks of a shape and dtype, run on a
    stand-in that computes and allocates nothing: the real shape when it is
    empty, else one element per axis."""
    empty = math.prod(shape) == 0
    stand_in = np.empty(shape if empty else (1,) * len(shape), dtype)
    try:
        return _validation.logits_array(stand_in, axis)
    except ValueError:
        if empty or not shape:
            raise
        # the one shape-dependent error a one-element-per-axis stand-in raises
        raise ValueError(f"axis {axis} is out of range for logits of shape "
                         f"{shape}") from None


def _check_targets(labels: Any, logits: da.Array, x: _validation.Logits,
                   weight: Optional[ArrayLike], ignore_index: Optional[Integer],
                   label_smoothing: float) -> bool:
    """_validation.targets' checks of the labels' dtype and the options, on
    stand-ins (nothing is computed), then its shape checks, naming the real
    shapes.  Returns whether the labels are probability targets."""
    probabilities = labels.dtype.kind == "f"
    stand_in = np.zeros(x.array.shape if probabilities else x.position_shape,
                        labels.dtype)
    _validation.targets(stand_in, x._replace(classes=logits.shape[x.axis]),
                        weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing)
    if probabilities and labels.shape != logits.shape:
        raise _validation.probabilities_shape_error(labels.shape, logits.shape)
    if not probabilities and labels.shape != _without(logits.shape, x.axis):
        raise _validation.labels_shape_error(labels.shape, logits.shape, x.axis)
    return probabilities


def _without(items: Tuple[Any, ...], axis: int) -> Tuple[Any, ...]:
    return items[:axis] + items[axis + 1:]


def _dask_targets(labels: Any, logits: da.Array, axis: int) -> da.Array:
    """Checked labels as a dask array chunked like the logits' positions, or
    probability targets chunked like the logits.  Only the labels are ever
    rechunked: the logits keep their chunks."""
    probabilities = labels.dtype.kind == "f"
    chunks = logits.chunks if probabilities else _without(logits.chunks, axis)
    if isinstance(labels, da.Array):
        return labels.rechunk(chunks)
    return da.from_array(labels, chunks=chunks, name=False)


class _Graph:
    """Builds the tasks of one call; see the module's docstring."""

    def __init__(self, logits: da.Array, targets: da.Array, call: _Call,
                 uses_probabilities: bool, result_dtype: np.dtype[Any]) -> None:
        self.logits, self.targets, self.call = logits, targets, call
        self.uses_probabilities = uses_probabilities
        self.result_dtype = result_dtype
        token = tokenize(logits.name, targets.name, call)
        self.name = lambda part: f"softmax-loss-{part}-{token}"
        self.tasks: Dict[Any, Any] = {}   # Key: task
        a = call.axis
        self.position_chunks = _without(logits.chunks, a)
        self.position_shape = _without(logits.shape, a)
        self.class_offsets = (0,) + tuple(itertools.accumulate(logits.chunks[a]))[:-1]
        self.rows = list(itertools.product(*(range(len(c)) for c in self.position_chunks)))

    def block(self, row: Tuple[int, ...], k: int) -> Tuple[int, ...]:
        """A block's index in the logits' grid: row block `row`, class block k."""
        a = self.call.axis
        return row[:a] + (k,) + row[a:]

    def target_key(self, row: Tuple[int, ...], k: int) -> Key:
        if self.uses_probabilities:
            return (self.targets.name,) + self.block(row, k)
        return (self.name("labels"),) + row

    def build(self) -> Union[da.Array, Tuple[da.Array, da.Array]]:
        """The loss (and gradient) as dask arrays over the tasks."""
        call = self.call
        if not self.uses_probabilities:
            self.add_label_checks()
        normalizer = self.normalizer()
        if len(self.logits.chunks[call.axis]) == 1:
            loss_parts = self.add_whole_rows(normalizer)
        else:
            loss_parts = self.add_split_rows(normalizer)

        if call.reduction == "none":     # the loss parts are the per-position losses
            meta = np.empty((0,) * len(self.position_shape), self.result_dtype)
            loss = self.array(self.name("losses"), self.position_chunks, meta)
        else:
            total = self.tree("loss-sum", (), loss_parts, _add)
            name = self.name("loss")
            self.tasks[(name,)] = (partial(_finish_loss, call.reduction), total, normalizer)
            loss = self.array(name, (), np.empty((), np.float64))
        if not call.return_grad:
            return loss
        meta = np.empty((0,) * self.logits.ndim, self.result_dtype)
        return loss, self.array(self.name("grad"), self.logits.chunks, meta)

    def array(self, name: str, chunks: Any, meta: NDArray[Any]) -> da.Array:
        # dask's Array does not match its own DaskCollection protocol in mypy
        graph = HighLevelGraph.from_collections(
            name, self.tasks,
            dependencies=[self.logits, self.targets])  # type: ignore[list-item]
        return da.Array(graph, name, chunks=chunks, meta=meta)

    def add_label_checks(self) -> None:
        """One task per labels block: check, convert to int64, summarize."""
        starts = [(0,) + tuple(itertools.accumulate(c))[:-1] for c in self.position_chunks]
        for row in self.rows:
            start = tuple(s[i] for s, i in zip(starts, row))
            check = partial(_checked_labels, self.call, start, self.position_shape)
            self.tasks[(self.name("labels"),) + row] = (check, (self.targets.name,) + row)

    def normalizer(self) -> Union[float, Key]:
        """What the reduction divides by, for the whole batch: a number known
        from the shape, or the key of the task adding up the label summaries."""
        call = self.call
        positions = math.prod(self.position_shape)
        outer = math.prod(self.logits.shape[:call.axis])
        normalizer = partial(_normalizer, call.reduction, positions, outer)
        if call.reduction not in ("mean", "valid") or self.uses_probabilities:
            # probability targets count every position, with weight 1
            return normalizer((positions, float(positions)))
        summaries = []
        for row in self.rows:
            key = (self.name("label-summary"),) + row
            self.tasks[key] = (_label_summary, (self.name("labels"),) + row)
            summaries.append(key)
        root = self.tree("label-sum", (), summaries, _add_summaries)
        self.tasks[(self.name("normalizer"),)] = (normalizer, root)
        return (self.name("normalizer"),)

    def add_whole_rows(self, normalizer: Union[float, Key]) -> List[Key]:
        """Every class of a row block in one chunk: one kernel call each."""
        loss_parts = []
        rows_call = partial(_whole_rows, self.call)
        for row in self.rows:
            index = self.block(row, 0)
            key = (self.name("rows"),) + row
            self.tasks[key] = (rows_call, normalizer, (self.logits.name,) + index,
                               self.target_key(row, 0))
            loss_parts.append(self.getitem(self.loss_part(), row, key, 0))
            if self.call.return_grad:
                self.getitem("grad", index, key, 1)
        return loss_parts

    def loss_part(self) -> str:
        """What a row block's loss part is called: for reduction="none" its
        per-position losses are blocks of the result."""
        return "losses" if self.call.reduction == "none" else "loss-part"

    def getitem(self, part: str, index: Tuple[int, ...], key: Key, item: int) -> Key:
        self.tasks[(self.name(part),) + index] = (operator.getitem, key, item)
        return (self.name(part),) + index

    def add_split_rows(self, normalizer: Union[float, Key]) -> List[Key]:
        """Classes split over chunks: partial states, merged per row block."""
        call = self.call
        loss_parts = []
        partials_call = partial(_block_partials, call)
        grad_call = partial(_block_grad, call)
        state_loss = partial(_state_loss, call.reduction)
        for row in self.rows:
            states = []
            for k, offset in enumerate(self.class_offsets):
                key = (self.name("partials"),) + self.block(row, k)
                self.tasks[key] = (partials_call, (self.logits.name,) + self.block(row, k),
                                   self.target_key(row, k), offset)
                states.append(key)
            state = self.tree("merge", row, states, combine_partials)
            loss_key = (self.name(self.loss_part()),) + row
            self.tasks[loss_key] = (state_loss, state)
            loss_parts.append(loss_key)
            if call.return_grad:
                for k, offset in enumerate(self.class_offsets):
                    index = self.block(row, k)
                    self.tasks[(self.name("grad"),) + index] = (
                        grad_call, normalizer, state, (self.logits.name,) + index,
                        self.target_key(row, k), offset)
        return loss_parts

    def tree(self, part: str, row: Tuple[int, ...], keys: List[Key],
             merge: Callable[..., Any]) -> Key:
        """Merge `keys` in order, SPLIT_EVERY at a time, level by level;
        returns the key of the result (the one key itself if there is one)."""
        level = 0
        while len(keys) > 1:
            name = self.name(f"{part}-{level}")
            merged = []
            for g, start in enumerate(range(0, len(keys), SPLIT_EVERY)):
                self.tasks[(name,) + row + (g,)] = (merge,) + tuple(
                    keys[start:start + SPLIT_EVERY])
                merged.append((name,) + row + (g,))
            keys, level = merged, level + 1
        return keys[0]


# ---- the tasks: module-level functions, so that workers import them by name


def _checked_labels(call: _Call, start: Tuple[int, ...], labels_shape: Tuple[int, ...],
                    block: ArrayLike) -> _LabelBlock:
    """A labels block as int64, after psm_label_summary checked its range."""
    given = _validation.as_array(block, "labels")
    if given.dtype.kind == "u" and given.size and given.max() > np.uint64(2**63 - 1):
        # would wrap to a negative int64, which could pass for ignore_index
        raise _label_error(call, given, start, labels_shape)
    labels = np.require(given, dtype=np.int64, requirements=("C", "A"))
    opts = _bindings.options(call.method, "sum", 1, call.weight, call.ignore_index,
                             call.label_smoothing)
    try:
        valid, weight_sum = _bindings.label_summary(labels, labels.size, call.classes,
                                                    opts)
    except _bindings.BadLabel:
        raise _label_error(call, given, start, labels_shape) from None
    return _LabelBlock(labels, valid, weight_sum)


def _label_error(call: _Call, given: NDArray[Any], start: Tuple[int, ...],
                 labels_shape: Tuple[int, ...]) -> ValueError:
    """The single call's ValueError for the block's first bad label, naming
    its position in the whole labels array (`start` is the block's corner)."""
    bad = _validation.out_of_range(given, call.classes, call.ignore_index)
    local = np.unravel_index(int(np.argmax(bad)), given.shape)
    where = tuple(s + i for s, i in zip(start, local))
    position = int(np.ravel_multi_index(where, labels_shape)) if where else 0
    # label_out_of_range reads the value at that position: a stand-in of the
    # whole labels' shape holding the bad value, with no memory of its own
    stand_in = np.broadcast_to(given[local], labels_shape)
    return _validation.label_out_of_range(stand_in, position, call.classes,
                                          call.ignore_index)


def _label_summary(block: _LabelBlock) -> Tuple[int, float]:
    return block.valid, block.weight_sum


def _add_summaries(*summaries: Tuple[int, float]) -> Tuple[int, float]:
    valid, weight_sum = zip(*summaries)
    return sum(valid), sum(weight_sum)


def _normalizer(reduction: str, positions: int, outer: int,
                summary: Tuple[int, float]) -> float:
    valid, weight_sum = summary
    return _bindings.normalizer(reduction, valid, weight_sum, positions, outer)


def _add(*parts: Any) -> Any:
    return sum(parts)


def _finish_loss(reduction: str, total: float, normalizer: float) -> np.float64:
    """The reduced loss as the kernel finishes it (psm_reduce)."""
    return np.float64(_bindings.reduce(reduction, total, normalizer))


def _targets_of(block: Union[_LabelBlock, NDArray[Any]]) -> NDArray[Any]:
    return block.labels if isinstance(block, _LabelBlock) else block


def _whole_rows(call: _Call, normalizer: float, logits_block: NDArray[Any],
                targets_block: Union[_LabelBlock, NDArray[Any]]
                ) -> Tuple[Loss, Optional[FloatArray]]:
    """A block holding every class of its positions: its loss part (the sum,
    or per-position losses) and gradient (or None) from one kernel pass."""
    x = _validation.logits_array(logits_block, call.axis)
    t = _validation.targets(_targets_of(targets_block), x, weight=call.weight,
                            ignore_index=call.ignore_index,
                            label_smoothing=call.label_smoothing)
    # The block sums its losses (or keeps them per position) and scales its
    # gradient by 1 / the whole batch's normalizer instead of its own.
    opts = _bindings.options(
        call.method, "none" if call.reduction == "none" else "sum",
        get_num_threads() if call.threads is None else call.threads, t.weight,
        t.ignore_index, t.label_smoothing, normalizer)
    losses = (np.empty(x.position_shape, dtype=x.array.dtype)
              if call.reduction == "none" else None)
    grad = np.empty_like(x.array) if call.return_grad else None
    try:
        total = _bindings.softmax_loss(x.array, x.outer, x.classes, x.inner, t.labels,
                                       t.probs, opts, losses, grad)
    except _bindings.BadLabel as bad:   # changed since the labels task checked it
        raise t.label_error(bad.position, x.classes) from None
    loss = total if losses is None else x.in_result_dtype(losses)
    return loss, None if grad is None else x.in_result_dtype(grad)


def _block_partials(call: _Call, logits_block: NDArray[Any],
                    targets_block: Union[_LabelBlock, NDArray[Any]],
                    class_offset: int) -> SoftmaxPartials:
    return softmax_partials(
        logits_block, _targets_of(targets_block), class_offset=class_offset,
        num_classes=call.classes, axis=call.axis, method=call.method, weight=call.weight,
        ignore_index=call.ignore_index, label_smoothing=call.label_smoothing,
        threads=call.threads)


def _state_loss(reduction: str, state: SoftmaxPartials) -> Loss:
    """A row block's summed loss (or per-position losses) from its merged state."""
    return loss_from_partials(state, reduction="none" if reduction == "none" else "sum")


def _block_grad(call: _Call, normalizer: float, state: SoftmaxPartials,
                logits_block: NDArray[Any], targets_block: Union[_LabelBlock, NDArray[Any]],
                class_offset: int) -> FloatArray:
    """grad_from_partials, scaled by the whole batch's normalizer."""
    return _partials.block_grad(state, logits_block, _targets_of(targets_block),
                                class_offset, call.reduction, call.threads, normalizer)
