"""Class-sharded softmax loss: partial states that merge exactly.

When a position's classes are split into blocks (a vocabulary spread over
workers, or logits too wide for one call), each block gives a partial state
per position: its max, the sum of exp(x - max) below it, the label's logit
if the label is in the block, and what label smoothing or probability
targets add.  Two states merge by rescaling the smaller max's sum to the
larger (the online normalizer of Milakov and Gimelshein, as in Megatron's
vocab-parallel cross entropy), so the merged state, and the loss from it,
are those of one call over all the classes, up to float rounding, whatever
the grouping and order of the merges.

Like pysafemax._core, this module only validates, allocates and calls the
kernel (through pysafemax._bindings); the arithmetic is csrc's
(psm_softmax_partials and its siblings).
"""
from __future__ import annotations

from typing import Any, Iterable, Literal, Optional, Sequence, Tuple, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _bindings, _validation
from ._core import get_num_threads
from ._types import FloatArray, Integer, Loss, Reduced

__all__ = ["SoftmaxPartials", "softmax_partials", "combine_partials",
           "loss_from_partials", "grad_from_partials"]


class SoftmaxPartials:
    """The partial softmax-loss state of every position over some of its
    classes, from softmax_partials() or combine_partials().

    The options the blocks were computed with (method, weight, ignore_index,
    label_smoothing, z_loss, the labels) travel with the state: states merge only
    with states computed with the same ones.  States pickle, so they can be
    computed on other processes or machines.

    Attributes
    ----------
    classes_covered : tuple of (int, int)
        The class ranges [start, stop) merged in, sorted.
    num_classes : int or None
        How many classes a position has in all, or None if no block was told
        (then the classes merged from 0 without a gap are taken as all of
        them).
    complete : bool
        Whether every class is covered (then the loss and gradients can be
        taken).
    position_shape : tuple of int
        The logits' shape without the class axis.
    state : ndarray
        The kernel's per-position state (psm_partial in
        csrc/softmax_loss.h), shaped like the positions.
    max, sum_exp : ndarray of float64
        Each position's max logit so far and the sum of exp(x - max) over
        its covered classes (naive: max 0; -inf and 0 where no logit is
        above -inf).

    All are read-only.
    """

    def __init__(self, state: NDArray[np.void], *,
                 classes_covered: Iterable[Tuple[int, int]], num_classes: Optional[int],
                 position_shape: Sequence[int], axis: int, compute_dtype: np.dtype[Any],
                 result_dtype: np.dtype[Any], method: str,
                 labels: Optional[NDArray[np.int64]], uses_probabilities: bool,
                 weight: Optional[NDArray[np.float64]], ignore_index: Optional[int],
                 label_smoothing: float, z_loss: float = 0.0) -> None:
        self._state = state
        self.classes_covered = tuple(classes_covered)
        self.num_classes = num_classes
        self.position_shape = tuple(position_shape)
        self.axis = axis
        self.compute_dtype = compute_dtype
        self.result_dtype = result_dtype
        self.method = method
        self.labels = labels
        self.uses_probabilities = uses_probabilities
        self.weight = weight
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self._freeze()

    def _freeze(self) -> None:
        """A state owns its arrays (no caller holds them) and never changes:
        read-only, also after unpickling, which makes arrays writable."""
        for array in (self._state, self.labels, self.weight):
            if array is not None:
                array.flags.writeable = False

    def __setstate__(self, attributes: dict[str, Any]) -> None:
        self.__dict__.update(attributes)
        self._freeze()

    @property
    def total_classes(self) -> Optional[int]:
        """num_classes, else the end of the merged classes if they run from 0
        without a gap, else None."""
        if self.num_classes is not None:
            return self.num_classes
        covered = self.classes_covered
        return covered[0][1] if len(covered) == 1 and covered[0][0] == 0 else None

    @property
    def complete(self) -> bool:
        total = self.total_classes
        return total is not None and self.classes_covered == ((0, total),)

    @property
    def state(self) -> NDArray[np.void]:
        return self._state.reshape(self.position_shape)

    @property
    def max(self) -> NDArray[np.float64]:
        return self.state["max"]

    @property
    def sum_exp(self) -> NDArray[np.float64]:
        state = self.state
        # The kernel counts logits equal to the max apart ("ties"); where the
        # max is -inf they are -inf logits, whose terms are 0.
        return np.where(state["max"] == -np.inf, state["rest"] * 0.0,
                        state["rest"] + state["ties"])

    def __repr__(self) -> str:
        covered = ", ".join(f"[{a}, {b})" for a, b in self.classes_covered)
        of = "?" if self.num_classes is None else self.num_classes
        return (f"SoftmaxPartials(positions {self.position_shape}, classes {covered} "
                f"of {of}, method={self.method!r}, "
                f"dtype={self.result_dtype})")

    def kernel_options(self, reduction: str, threads: Optional[int] = None,
                       normalizer: Optional[float] = None) -> _bindings.Options:
        """The kernel's options for this state's method and options (threads
        None: get_num_threads())."""
        return _bindings.options(
            self.method, reduction, get_num_threads() if threads is None else threads,
            self.weight, self.ignore_index, self.label_smoothing, normalizer, self.z_loss)


# The kernel's class count for a block whose total is not known yet: labels
# are then only checked to be >= 0, and against the total when it is known.
_UNKNOWN_CLASSES = int(np.iinfo(np.int64).max)


def _kernel_classes(num_classes: Optional[int]) -> int:
    return _UNKNOWN_CLASSES if num_classes is None else num_classes


def _class_block(class_offset: Integer, num_classes: Optional[Integer], block_classes: int,
                 weight: Any) -> Tuple[int, Optional[int]]:
    """Check class_offset and num_classes (None: unknown, unless weight gives
    it) against a block's width."""
    class_offset = _validation.integer(class_offset, "class_offset")
    if class_offset < 0:
        raise ValueError(f"class_offset must be >= 0, got {class_offset}")
    if class_offset + block_classes > _UNKNOWN_CLASSES:
        raise ValueError(
            f"a block of {block_classes} classes at class_offset {class_offset} "
            f"ends past class {_UNKNOWN_CLASSES}, the most an int64 counts")
    if num_classes is None and weight is not None and np.ndim(weight) == 1:
        num_classes = len(weight)
    if num_classes is None:
        return class_offset, None
    num_classes = _validation.integer(num_classes, "num_classes")
    if num_classes > _UNKNOWN_CLASSES:
        raise ValueError(f"num_classes must fit in int64, got {num_classes}")
    if class_offset + block_classes > num_classes:
        raise ValueError(
            f"a block of {block_classes} classes at class_offset {class_offset} "
            f"ends at class {class_offset + block_classes}, past num_classes = "
            f"{num_classes}")
    return class_offset, num_classes


def not_decomposable(method: str) -> ValueError:
    return ValueError(
        f"method={method!r} has no partial state with label smoothing or "
        f"probability targets: it clamps every class's probability after the "
        f"whole sum is known; use method='stable', or softmax_loss on whole rows")


def _block_targets(x: _validation.Logits, labels: ArrayLike, num_classes: Optional[int],
                   weight: Optional[ArrayLike], ignore_index: Optional[Integer],
                   label_smoothing: float) -> _validation.Targets:
    """Targets of a block: labels are checked against all num_classes
    classes, probability targets have the block's shape."""
    whole = x._replace(classes=_kernel_classes(num_classes))
    return _validation.targets(labels, whole, weight=weight, ignore_index=ignore_index,
                               label_smoothing=label_smoothing)


def softmax_partials(logits_block: ArrayLike, labels: ArrayLike, *,
                     class_offset: Integer = 0, num_classes: Optional[Integer] = None,
                     axis: Integer = 1, method: str = "stable",
                     weight: Optional[ArrayLike] = None,
                     ignore_index: Optional[Integer] = None, label_smoothing: float = 0.0,
                     z_loss: float = 0.0,
                     threads: Optional[Integer] = None) -> SoftmaxPartials:
    """The partial state of every position over one block of its classes.

    Merge the blocks' states with combine_partials(), then take
    loss_from_partials() and grad_from_partials().

    Parameters
    ----------
    logits_block : array_like of float16, float32 or float64
        Classes [class_offset, class_offset + C_block) of every position,
        with the class axis `axis` (as softmax_loss).
    labels : array_like
        The positions' class indices over all the classes (shaped like the
        positions), or the block's probability targets (shaped like
        logits_block).
    class_offset : int, default 0
        The class the block starts at.
    num_classes : int, optional
        Every position's class count: needed with label smoothing (which
        spreads over it), given by weight if that is passed.  Without it,
        labels are checked against it when the states are finished, and the
        classes merged by then (from 0, without a gap) are taken as all of
        them.
    axis : int, default 1
        The class axis.
    method : {"stable", "maxsub", "naive"}
        As softmax_loss; naive and maxsub take class-index labels without
        smoothing only.
    weight : array_like of float, shape (num_classes,), optional
        Per-class weights for all num_classes classes.
    ignore_index, label_smoothing, threads
        As softmax_loss.
    z_loss : float, default 0.0
        As softmax_loss: kept with the state, and added by
        loss_from_partials() and grad_from_partials() from each position's
        whole log-sum-exp.

    Returns
    -------
    SoftmaxPartials
        The block's state, covering classes [class_offset, class_offset +
        C_block).

    Raises
    ------
    TypeError
        For an argument of the wrong type, as softmax_loss.
    ValueError
        For a bad value, as softmax_loss; a block that ends past
        num_classes; label smoothing without num_classes; naive or maxsub
        with label smoothing or probability targets.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> logits = np.array([[1.0, 2.0, 3.0, 4.0]])
    >>> labels = np.array([2])
    >>> left = pysafemax.softmax_partials(logits[:, :2], labels, num_classes=4)
    >>> right = pysafemax.softmax_partials(logits[:, 2:], labels, class_offset=2,
    ...                                    num_classes=4)
    >>> whole = pysafemax.combine_partials(left, right)
    >>> whole.complete
    True
    >>> bool(np.isclose(pysafemax.loss_from_partials(whole),
    ...                 pysafemax.softmax_loss(logits, labels)))
    True
    """
    x = _validation.logits_array(logits_block, axis)
    method = _validation.choice(method, "method", _validation.METHODS)
    z_loss = _validation.z_loss(z_loss)
    class_offset, num_classes = _class_block(class_offset, num_classes, x.classes, weight)
    t = _block_targets(x, labels, num_classes, weight, ignore_index, label_smoothing)
    if num_classes is None and t.label_smoothing != 0.0:
        raise ValueError("label_smoothing spreads over every class: pass num_classes, "
                         "the class count of the whole rows")
    if method != "stable" and (t.probs is not None or t.label_smoothing != 0.0):
        raise not_decomposable(method)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)

    state = np.empty(x.outer * x.inner, dtype=_bindings.STATE_DTYPE)
    opts = _bindings.options(method, "sum", threads, t.weight, t.ignore_index,
                             t.label_smoothing)
    try:
        _bindings.softmax_partials(x.array, x.outer, x.classes, x.inner, class_offset,
                                   _kernel_classes(num_classes), t.labels, t.probs,
                                   opts, state)
    except _bindings.BadLabel as bad:
        raise t.label_error(bad.position, num_classes) from None
    return SoftmaxPartials(
        state, classes_covered=[(class_offset, class_offset + x.classes)],
        num_classes=num_classes, position_shape=x.position_shape, axis=x.axis,
        compute_dtype=x.array.dtype, result_dtype=x.result_dtype, method=method,
        labels=None if t.labels is None else t.labels.copy(),
        uses_probabilities=t.probs is not None, weight=t.weight,
        ignore_index=t.ignore_index, label_smoothing=t.label_smoothing, z_loss=z_loss)


def _same(a: Optional[NDArray[Any]], b: Optional[NDArray[Any]]) -> bool:
    """Equal contents (never identity: an array can change and stay itself)."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and np.array_equal(a, b)


def _check_compatible(first: SoftmaxPartials, other: SoftmaxPartials, k: int) -> None:
    checks = [("position_shape", first.position_shape == other.position_shape),
              ("num_classes", None in (first.num_classes, other.num_classes)
               or first.num_classes == other.num_classes),
              ("method", first.method == other.method),
              ("dtype", first.compute_dtype == other.compute_dtype),
              ("axis", first.axis == other.axis),
              ("ignore_index", first.ignore_index == other.ignore_index),
              ("label_smoothing", first.label_smoothing == other.label_smoothing),
              ("z_loss", first.z_loss == other.z_loss),
              ("targets", first.uses_probabilities == other.uses_probabilities),
              ("weight", _same(first.weight, other.weight)),
              ("labels", _same(first.labels, other.labels))]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"parts[{k}] differs from parts[0] in its {name}: only "
                             f"states of the same positions with the same options merge")


def _union(ranges: Iterable[Tuple[int, int]]) -> list[Tuple[int, int]]:
    """Sorted, coalesced class ranges; overlapping ones would count classes twice."""
    merged: list[Tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and start < merged[-1][1]:
            raise ValueError(
                f"class ranges [{merged[-1][0]}, {merged[-1][1]}) and [{start}, {stop}) "
                f"overlap: each class must be merged once")
        if merged and start == merged[-1][1]:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


@overload
def combine_partials(*parts: SoftmaxPartials) -> SoftmaxPartials: ...
@overload
def combine_partials(parts: Sequence[SoftmaxPartials], /) -> SoftmaxPartials: ...


def combine_partials(*parts: Any) -> SoftmaxPartials:
    """Merge states of the same positions over disjoint class blocks.

    Exact up to float rounding, associative and commutative: any grouping
    and order gives the state (and the loss) of one call over the union of
    the blocks.

    Parameters
    ----------
    *parts : SoftmaxPartials, or one list or tuple of them
        States of the same positions, computed with the same options, over
        class ranges that do not overlap.

    Returns
    -------
    SoftmaxPartials
        A new state over the union of the parts' classes; the parts are
        unchanged.

    Raises
    ------
    TypeError
        For no parts, or a part that is not a SoftmaxPartials.
    ValueError
        For parts of other positions or options, overlapping class ranges,
        or classes past num_classes.

    Examples
    --------
    See softmax_partials.
    """
    if len(parts) == 1 and isinstance(parts[0], (list, tuple)):
        parts = tuple(parts[0])
    if not parts:
        raise TypeError("combine_partials needs at least one SoftmaxPartials")
    for k, part in enumerate(parts):
        if not isinstance(part, SoftmaxPartials):
            raise TypeError(f"parts[{k}] must be a SoftmaxPartials (from "
                            f"softmax_partials), got {type(part).__name__}")
        _check_compatible(parts[0], part, k)
    covered = _union([r for part in parts for r in part.classes_covered])
    known = [p.num_classes for p in parts if p.num_classes is not None]
    num_classes = known[0] if known else None
    if num_classes is not None and covered[-1][1] > num_classes:
        raise ValueError(f"classes up to {covered[-1][1]} merged, past num_classes = "
                         f"{num_classes}")
    first = parts[0]
    state = first.state.reshape(-1).copy()
    for part in parts[1:]:
        _bindings.combine_partials(state, part.state.reshape(-1))
    return SoftmaxPartials(
        state, classes_covered=covered, num_classes=num_classes,
        position_shape=first.position_shape, axis=first.axis,
        compute_dtype=first.compute_dtype, result_dtype=first.result_dtype,
        method=first.method, labels=first.labels,
        uses_probabilities=first.uses_probabilities, weight=first.weight,
        ignore_index=first.ignore_index, label_smoothing=first.label_smoothing,
        z_loss=first.z_loss)


def _require_complete(state: SoftmaxPartials, what: str) -> None:
    if not isinstance(state, SoftmaxPartials):
        raise TypeError(f"state must be a SoftmaxPartials, got {type(state).__name__}")
    if state.complete:
        return
    missing, start = [], 0
    for a, b in state.classes_covered:
        if a > start:
            missing.append(f"[{start}, {a})")
        start = b
    if state.num_classes is not None and start < state.num_classes:
        missing.append(f"[{start}, {state.num_classes})")
    of = "" if state.num_classes is None else f" of {state.num_classes}"
    raise ValueError(f"{what} needs every class merged in: classes "
                     f"{', '.join(missing)}{of} are missing")


@overload
def loss_from_partials(state: SoftmaxPartials, *, reduction: Reduced = ...) -> float: ...
@overload
def loss_from_partials(state: SoftmaxPartials, *,
                       reduction: Literal["none"]) -> FloatArray: ...
@overload
def loss_from_partials(state: SoftmaxPartials, *, reduction: str = ...) -> Loss: ...


def loss_from_partials(state: SoftmaxPartials, *, reduction: str = "mean") -> Loss:
    """The loss from a state covering every class: as softmax_loss with the
    options the state was computed with, and this reduction.

    Parameters
    ----------
    state : SoftmaxPartials
        A state covering every class (``state.complete``).
    reduction : {"mean", "sum", "none", "valid", "full", "batch_size"}
        As softmax_loss.

    Returns
    -------
    float or ndarray
        A float, or for "none" the per-position losses in the logits' dtype.

    Raises
    ------
    TypeError
        If `state` is not a SoftmaxPartials, or `reduction` not a str.
    ValueError
        If classes are missing from the state, for an unknown reduction,
        or a label past the classes merged (when no block knew their
        count).

    Examples
    --------
    See softmax_partials.
    """
    _require_complete(state, "loss_from_partials")
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    outer, inner = _outer_inner(state)
    losses = (np.empty(state.position_shape, dtype=state.compute_dtype)
              if reduction == "none" else None)
    try:
        loss = _bindings.loss_from_partials(
            state.state.reshape(-1), outer, inner, state.total_classes, state.labels,
            state.kernel_options(reduction, 1), losses, state.compute_dtype)
    except _bindings.BadLabel as bad:   # beyond the classes merged, when no
        # block knew their count
        assert state.labels is not None     # only labels are out of range
        raise _validation.label_out_of_range(state.labels.reshape(state.position_shape),
                                             bad.position, state.total_classes,
                                             state.ignore_index) from None
    if losses is not None:      # reduction == "none"
        with np.errstate(over="ignore"):
            return losses.astype(state.result_dtype, copy=False)
    return loss


def _outer_inner(state: SoftmaxPartials) -> Tuple[int, int]:
    """The kernel's outer x inner view of the positions."""
    shape = state.position_shape
    outer = int(np.prod(shape[:state.axis], dtype=np.int64))
    inner = int(np.prod(shape[state.axis:], dtype=np.int64))
    return outer, inner


def grad_from_partials(state: SoftmaxPartials, logits_block: ArrayLike,
                       labels: ArrayLike, *, class_offset: Integer = 0,
                       reduction: str = "mean",
                       threads: Optional[Integer] = None) -> FloatArray:
    """d loss / d logits_block: one block's gradient, from a state covering
    every class (the merge of all blocks' states).

    Parameters
    ----------
    state : SoftmaxPartials
        A state covering every class (``state.complete``); the options
        (method, weight, ignore_index, label_smoothing) come from it.
    logits_block, labels, class_offset
        Those the block's partials were computed with.
    reduction : {"mean", "sum", "none", "valid", "full", "batch_size"}
        As softmax_loss.
    threads : int, optional
        As softmax_loss.

    Returns
    -------
    ndarray
        The gradient, with logits_block's shape and dtype: that block of
        softmax_loss(..., return_grad=True)'s gradient up to float
        rounding.

    Raises
    ------
    TypeError
        If `state` is not a SoftmaxPartials, or logits_block's dtype is not
        the state's.
    ValueError
        If classes are missing from the state, the positions or labels
        differ from the state's, or for a bad class_offset or reduction.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> logits = np.array([[0.0, 0.0, 0.0, 0.0]])
    >>> labels = np.array([0])
    >>> parts = [pysafemax.softmax_partials(logits[:, k:k + 2], labels,
    ...                                     class_offset=k, num_classes=4)
    ...          for k in (0, 2)]
    >>> state = pysafemax.combine_partials(parts)
    >>> pysafemax.grad_from_partials(state, logits[:, 2:], labels, class_offset=2)
    array([[0.25, 0.25]])
    """
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return block_grad(state, logits_block, labels, class_offset, reduction, threads)


def block_grad(state: SoftmaxPartials, logits_block: ArrayLike, labels: ArrayLike,
               class_offset: Integer, reduction: str, threads: Optional[Integer],
               normalizer: Optional[float] = None) -> FloatArray:
    """grad_from_partials, scaled by `normalizer` instead of the reduction's
    own when given: the whole batch's, for a state of some of its rows
    (pysafemax.dask)."""
    _require_complete(state, "grad_from_partials")
    x = _validation.logits_array(logits_block, state.axis)
    if x.position_shape != state.position_shape:
        raise ValueError(f"logits_block has positions {x.position_shape}, the state "
                         f"{state.position_shape}")
    if x.array.dtype != state.compute_dtype:
        raise TypeError(f"logits_block must have the state's dtype "
                        f"{state.result_dtype}, got {x.result_dtype}")
    total = state.total_classes
    class_offset, _ = _class_block(class_offset, total, x.classes, None)
    t = _block_targets(x, labels, total, state.weight, state.ignore_index,
                       state.label_smoothing)
    if (t.probs is not None) != state.uses_probabilities or not (
            t.labels is None or _same(t.labels, state.labels)):
        raise ValueError("labels differ from those the partials were computed with")
    threads = None if threads is None else _validation.thread_count(threads)

    grad = np.empty_like(x.array)
    # The state's own labels, equal to the caller's: those may change during
    # the call, the state's cannot.
    try:
        _bindings.grad_from_partials(
            x.array, x.outer, x.classes, x.inner, class_offset, total, state.labels,
            t.probs, state.kernel_options(reduction, threads, normalizer),
            state.state.reshape(-1), grad)
    except _bindings.BadLabel as bad:
        raise t.label_error(bad.position, total) from None
    with np.errstate(over="ignore"):
        return grad.astype(x.result_dtype, copy=False)
