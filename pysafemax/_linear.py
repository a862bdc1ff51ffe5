"""linear_cross_entropy: the softmax loss of hidden @ weight.T + bias, one
vocabulary chunk at a time.

A language model's last layer makes N x V logits (V up to 10**5 and more)
only to reduce them to one loss.  Here the logits of chunk_size classes at
a time are made (numpy's BLAS matmul into one reused buffer), reduced to
the kernel's partial state per position (softmax_partials) and merged
(combine_partials), so the loss is that of one softmax_loss call over the
whole rows, up to float rounding, without the N x V array.  The gradient
recomputes each chunk's logits in a second pass (as the flash-attention
backward and Liger's fused linear cross entropy do): memory for speed.

Like pysafemax._core this module validates, allocates and calls; the loss
arithmetic is the kernel's, through the partials API, except in one place:
naive and maxsub with label smoothing clamp every class's probability once
the whole sum is known, which no partial state can carry (not_decomposable
in _partials), so their clamped terms are added by a second pass in numpy,
in _clamped_smoothing, with Caffe's formula.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _bindings, _validation
from ._constants import FLT_MIN
from ._core import batch_normalizer, get_num_threads
from ._partials import (SoftmaxPartials, combine_partials, grad_from_partials,
                        loss_from_partials, softmax_partials)
from ._types import FloatArray, Integer, Loss, Reduced

__all__ = ["linear_cross_entropy"]

# The N x chunk_size buffers of the compute dtype take at most this many
# bytes by default: one buffer of the logits, or with the gradient two of
# half the size (the logits and their gradient).  Large enough for BLAS to
# run near full speed (OpenBLAS ran 7-13% faster at 4096 classes a chunk
# than at 2048, bench/linear.py's shapes), small enough to stay far below
# the N x V logits it replaces.
CHUNK_BYTES = 64 << 20

# (d_hidden, d_weight) or (d_hidden, d_weight, d_bias)
Grads = Tuple[FloatArray, ...]



def _compute_dtype(dtype: DTypeLike, name: str) -> np.dtype[Any]:
    """float32 for float16 and bfloat16, else the dtype itself (native byte
    order); _validation's TypeError naming the argument for any other."""
    dtype = _validation.float_dtype(dtype, name)
    return np.dtype(np.float32) if dtype.itemsize == 2 else dtype


def _float_array(value: ArrayLike, name: str, shape_text: str,
                 ndim: int) -> NDArray[Any]:
    array = _validation.as_array(value, name)
    _compute_dtype(array.dtype, name)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {shape_text}, got shape {array.shape}")
    return array


def default_chunk_size(rows: int, classes: int, itemsize: int, buffers: int) -> int:
    """The classes per chunk that keep `buffers` rows x chunk buffers within
    CHUNK_BYTES (at least 1, at most all of them)."""
    if rows == 0:
        return classes
    return max(1, min(classes, CHUNK_BYTES // (buffers * rows * itemsize)))


@overload
def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = ..., class_weight: Optional[ArrayLike] = ...,
        method: str = ..., reduction: Reduced = ..., ignore_index: Optional[Integer] = ...,
        label_smoothing: float = ..., z_loss: float = ...,
        return_grad: Literal[False] = ...,
        chunk_size: Optional[Integer] = ..., threads: Optional[Integer] = ...) -> float: ...
@overload
def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = ..., class_weight: Optional[ArrayLike] = ...,
        method: str = ..., reduction: Literal["none"],
        ignore_index: Optional[Integer] = ...,
        label_smoothing: float = ..., z_loss: float = ...,
        return_grad: Literal[False] = ...,
        chunk_size: Optional[Integer] = ..., threads: Optional[Integer] = ...
) -> FloatArray: ...
@overload
def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = ..., class_weight: Optional[ArrayLike] = ...,
        method: str = ..., reduction: Reduced = ..., ignore_index: Optional[Integer] = ...,
        label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[True],
        chunk_size: Optional[Integer] = ..., threads: Optional[Integer] = ...
) -> Tuple[float, Grads]: ...
@overload
def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = ..., class_weight: Optional[ArrayLike] = ...,
        method: str = ..., reduction: Literal["none"],
        ignore_index: Optional[Integer] = ...,
        label_smoothing: float = ..., z_loss: float = ..., return_grad: Literal[True],
        chunk_size: Optional[Integer] = ..., threads: Optional[Integer] = ...
) -> Tuple[FloatArray, Grads]: ...
@overload
def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = ..., class_weight: Optional[ArrayLike] = ...,
        method: str = ..., reduction: str = ..., ignore_index: Optional[Integer] = ...,
        label_smoothing: float = ..., z_loss: float = ..., return_grad: bool = ...,
        chunk_size: Optional[Integer] = ..., threads: Optional[Integer] = ...
) -> Union[Loss, Tuple[Loss, Grads]]: ...


def linear_cross_entropy(
        hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
        bias: Optional[ArrayLike] = None, class_weight: Optional[ArrayLike] = None,
        method: str = "stable", reduction: str = "mean",
        ignore_index: Optional[Integer] = None, label_smoothing: float = 0.0,
        z_loss: float = 0.0, return_grad: bool = False,
        chunk_size: Optional[Integer] = None,
        threads: Optional[Integer] = None) -> Union[Loss, Tuple[Loss, Grads]]:
    """Softmax cross-entropy of the logits ``hidden @ weight.T + bias``,
    without making them: the classes are taken chunk_size at a time.

    The result is that of ``softmax_loss(hidden @ weight.T + bias, labels,
    ...)`` up to float rounding (the kernel's partial states merge exactly),
    while at most an N x chunk_size block of logits, and with return_grad
    one of their gradient, exists at a time.

    Parameters
    ----------
    hidden : array_like of float, shape (N, H)
        The positions' features: float16, float32 or float64 (bfloat16 from
        ml_dtypes too; float16 and bfloat16 are computed in float32).
    weight : array_like of float, shape (V, H)
        The output layer's weights, one row per class (torch.nn.Linear's
        layout).
    labels : array_like of int, shape (N,)
        Class indices in [0, V), or `ignore_index`.
    bias : array_like of float, shape (V,), optional
        The output layer's bias.
    class_weight : array_like of float, shape (V,), optional
        Per-class loss weights: softmax_loss's ``weight=``, renamed since
        `weight` is the layer's here.
    method : {"stable", "maxsub", "naive"}
        As softmax_loss.  naive and maxsub with label smoothing take one
        more pass over the chunks: their clamp needs every class's sum.
    reduction : {"mean", "sum", "none", "valid", "full", "batch_size"}
        As softmax_loss.
    ignore_index : int, optional
        Positions with this label add no loss and no gradient.
    label_smoothing : float, default 0.0
        In [0, 1], PyTorch's semantics.
    z_loss : float, default 0.0
        As softmax_loss: PaLM's ``z_loss * lse**2`` per counted position,
        kept with the partial state and added from each row's whole
        log-sum-exp.  Not with naive or maxsub and label smoothing.
    return_grad : bool, default False
        Also return the gradients, from a second pass that recomputes each
        chunk's logits.
    chunk_size : int, optional
        Classes per chunk.  By default as many as keep the buffers of the
        compute dtype within 64 MB: one N x chunk_size buffer of logits, or
        with return_grad two (the logits and their gradient) of 32 MB each;
        at least one class, at most V.  Narrow chunks cost speed: BLAS runs
        best on wide ones.
    threads : int, optional
        The kernel's threads (None: get_num_threads()).  The matmuls run on
        numpy's BLAS with its own thread count (OPENBLAS_NUM_THREADS, or
        threadpoolctl).

    Returns
    -------
    loss : float or ndarray
        As softmax_loss: a float, or for reduction="none" the (N,) losses in
        the logits' dtype (the inputs' common dtype; float32 or float64 if
        they differ).
    grads : tuple of ndarray
        Only with ``return_grad=True`` (then a ``(loss, grads)`` tuple is
        returned): ``(d_hidden, d_weight)``, and ``d_bias`` last when `bias`
        is given, each in its input's shape and dtype.

    Raises
    ------
    TypeError
        For non-float hidden, weight, bias or class_weight, non-integer
        labels, or a chunk_size, threads or ignore_index that is no int.
    ValueError
        For wrong shapes, a label out of range, an unknown method or
        reduction, chunk_size < 1, a negative z_loss, or z_loss with
        naive or maxsub and label smoothing.

    Notes
    -----
    Memory beyond the inputs and outputs: for float32 and float64 inputs at
    most two N x chunk_size arrays of their dtype plus O(N + V); float16 and
    bfloat16 inputs add their float32 copies (hidden whole, weight a chunk
    at a time).

    Examples
    --------
    >>> import numpy as np, pysafemax
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((4, 8)).astype(np.float32)
    >>> weight = rng.standard_normal((100, 8)).astype(np.float32)
    >>> labels = np.array([3, 14, 15, 92])
    >>> loss = pysafemax.linear_cross_entropy(hidden, weight, labels, chunk_size=32)
    >>> whole = pysafemax.softmax_loss(hidden @ weight.T, labels)
    >>> bool(abs(loss - whole) < 1e-5 * whole)
    True
    >>> loss, (d_hidden, d_weight) = pysafemax.linear_cross_entropy(
    ...     hidden, weight, labels, return_grad=True)
    >>> d_weight.shape
    (100, 8)
    """
    return _run(hidden, weight, labels, bias=bias, class_weight=class_weight,
                method=method, reduction=reduction, ignore_index=ignore_index,
                label_smoothing=label_smoothing, z_loss=z_loss, return_grad=return_grad,
                chunk_size=chunk_size, threads=threads)


def position_scaled_grads(hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike,
                          position_scale: ArrayLike, **options: Any) -> Grads:
    """linear_cross_entropy's gradients (options as there) with each
    position's share scaled by position_scale, (N,): the backward of
    sum(position_scale * losses) for reduction="none", the vector-Jacobian
    product autograd asks for."""
    _, grads = _run(hidden, weight, labels, return_grad=True,
                    position_scale=position_scale, **options)
    return grads


def _run(hidden: ArrayLike, weight: ArrayLike, labels: ArrayLike, *,
         bias: Optional[ArrayLike] = None, class_weight: Optional[ArrayLike] = None,
         method: str = "stable", reduction: str = "mean",
         ignore_index: Optional[Integer] = None, label_smoothing: float = 0.0,
         z_loss: float = 0.0, return_grad: bool = False,
         chunk_size: Optional[Integer] = None, threads: Optional[Integer] = None,
         position_scale: Optional[ArrayLike] = None) -> Any:
    """linear_cross_entropy, and position_scaled_grads with position_scale."""
    hidden = _float_array(hidden, "hidden", "(N, H)", 2)
    weight = _float_array(weight, "weight", "(V, H), one row per class", 2)
    rows, features = hidden.shape
    classes = weight.shape[0]
    if weight.shape[1] != features:
        raise ValueError(f"weight must have shape (V, {features}) to match hidden's "
                         f"(N, H) = {hidden.shape}, got {weight.shape}")
    if classes == 0:
        raise ValueError(f"weight has no rows: shape {weight.shape}; V must be >= 1")
    inputs = [hidden, weight]
    if bias is not None:
        bias = _float_array(bias, "bias", f"({classes},), one per class", 1)
        if bias.shape != (classes,):
            raise ValueError(f"bias must have shape ({classes},), one per class, "
                             f"got {bias.shape}")
        inputs.append(bias)
    compute = max((_compute_dtype(a.dtype, "") for a in inputs), key=lambda d: d.itemsize)
    # The logits' dtype, as numpy's matmul would make it: the inputs' common
    # dtype, float32 or float64 when they differ.
    dtypes = {_validation.native(a.dtype) for a in inputs}
    result_dtype = dtypes.pop() if len(dtypes) == 1 else compute

    labels = _validation.as_array(labels, "labels")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    # The (N, V) logits are never made: a broadcast view stands for their
    # shape in _validation's checks and messages.
    logits_shape = _validation.Logits(np.broadcast_to(np.zeros((), compute),
                                                      (rows, classes)),
                                      compute, 1, rows, classes, 1)
    if class_weight is not None:
        class_weight = _validation.class_weight(class_weight, classes, "class_weight")
    t = _validation.targets(labels, logits_shape, weight=class_weight,
                            ignore_index=ignore_index, label_smoothing=label_smoothing)
    assert t.labels is not None     # integers: class indices, never probabilities
    class_labels = t.labels
    bad = np.flatnonzero(_validation.out_of_range(labels, classes, t.ignore_index))
    if bad.size:
        raise _validation.label_out_of_range(labels, int(bad[0]), classes, t.ignore_index)
    method = _validation.choice(method, "method", _validation.METHODS)
    reduction = _validation.choice(reduction, "reduction", _validation.REDUCTIONS)
    return_grad = _validation.flag(return_grad, "return_grad")
    z_loss = _validation.z_loss(z_loss)
    threads = get_num_threads() if threads is None else _validation.thread_count(threads)
    if chunk_size is None:
        chunk = default_chunk_size(rows, classes, compute.itemsize, 2 if return_grad else 1)
    else:
        chunk = _validation.integer(chunk_size, "chunk_size")
        if chunk < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk}")
        chunk = min(chunk, classes)

    if position_scale is not None and np.shape(position_scale) != (rows,):
        raise ValueError(f"position_scale must have shape ({rows},), one per position, "
                         f"got {np.shape(position_scale)}")
    clamped = method != "stable" and t.label_smoothing != 0.0
    if clamped and z_loss:
        raise ValueError(f"z_loss={z_loss!r} with method={method!r} and label_smoothing="
                         f"{t.label_smoothing!r} is not supported: use method='stable'")
    # naive and maxsub with smoothing: a first pass without it, for each
    # row's shift and sum (_ClampedSmoothing adds the smoothed terms)
    options: dict[str, Any] = dict(
        num_classes=classes, method=method, weight=t.weight, ignore_index=t.ignore_index,
        threads=threads, label_smoothing=0.0 if clamped else t.label_smoothing,
        z_loss=z_loss)
    chunks = _Chunks(hidden, weight, bias, compute, chunk)

    state: Optional[SoftmaxPartials] = None
    for start, logits in chunks:
        part = softmax_partials(logits, class_labels, class_offset=start, **options)
        state = part if state is None else combine_partials(state, part)
        del part
    assert state is not None        # V >= 1: one chunk at least
    if not clamped and not return_grad:
        return _as_result(loss_from_partials(state, reduction=reduction), result_dtype)

    # The second pass: each chunk's logits again, for its gradient and (naive
    # and maxsub with smoothing) its clamped terms.
    if clamped:
        smoothing = _ClampedSmoothing(state, t, logits_shape, reduction, threads)
    grads = (_Gradients(hidden, weight, bias, compute, position_scale) if return_grad
             else None)
    for start, logits in chunks:
        if clamped:
            grad = smoothing.add_chunk(logits, start, return_grad)
        else:
            grad = grad_from_partials(state, logits, class_labels, class_offset=start,
                                      reduction=reduction, threads=threads)
        if grads is not None:
            assert grad is not None     # asked for: return_grad
            grads.add_chunk(grad, start, chunks.chunk_weight(start), logits)
        del grad
    loss = _as_result(smoothing.loss() if clamped
                      else loss_from_partials(state, reduction=reduction), result_dtype)
    return (loss, grads.result()) if grads is not None else loss


def _as_result(loss: Loss, result_dtype: np.dtype[Any]) -> Loss:
    """A reduced loss as it is (a float), per-position losses in the
    logits' dtype."""
    return _in_dtype(loss, result_dtype) if isinstance(loss, np.ndarray) else loss


def _in_dtype(array: NDArray[Any], dtype: DTypeLike) -> NDArray[Any]:
    with np.errstate(over="ignore"):   # float16: beyond its range is inf
        return array.astype(dtype, copy=False)


class _Chunks:
    """The logits of classes [start, start + chunk_size) for each chunk, in
    one reused buffer: iterate for (start, logits).

    Each pass goes the other way round from the one before and starts with
    the chunk that one ended with, whose logits are still in the buffer:
    one matmul fewer per extra pass (the only one with a single chunk).  So
    only the last pass may overwrite the logits it is given."""

    def __init__(self, hidden: NDArray[Any], weight: NDArray[Any],
                 bias: Optional[NDArray[Any]], compute: np.dtype[Any],
                 chunk_size: int) -> None:
        self.hidden = np.asarray(hidden, dtype=compute)
        self.weight = weight
        self.bias = None if bias is None else np.asarray(bias, dtype=compute)
        self.compute = compute
        self.chunk_size = chunk_size
        rows = hidden.shape[0]
        # Flat, so that a narrower last chunk is a C-contiguous view too
        # (softmax_partials would copy a strided one).
        self.buffer = np.empty(rows * chunk_size, dtype=compute)
        self.backwards = False
        self.held: Optional[int] = None    # the chunk whose logits the buffer holds

    def chunk_weight(self, start: int) -> NDArray[Any]:
        """weight's rows for the chunk at start, in the compute dtype."""
        rows = self.weight[start:start + self.chunk_size]
        return np.asarray(rows, dtype=self.compute)

    def __iter__(self) -> Iterator[Tuple[int, NDArray[Any]]]:
        rows = self.hidden.shape[0]
        classes = self.weight.shape[0]
        starts: Iterator[int] = iter(range(0, classes, self.chunk_size))
        if self.backwards:
            starts = reversed(range(0, classes, self.chunk_size))
        self.backwards = not self.backwards
        for start in starts:
            width = min(self.chunk_size, classes - start)
            logits = self.buffer[:rows * width].reshape(rows, width)
            if start != self.held:
                np.matmul(self.hidden, self.chunk_weight(start).T, out=logits)
                if self.bias is not None:
                    logits += self.bias[start:start + width]
            self.held = None
            yield start, logits
        self.held = start


class _Gradients:
    """d_hidden, d_weight and d_bias summed chunk by chunk from each chunk's
    d loss / d logits G."""

    def __init__(self, hidden: NDArray[Any], weight: NDArray[Any],
                 bias: Optional[NDArray[Any]], compute: np.dtype[Any],
                 position_scale: Optional[ArrayLike] = None) -> None:
        self.hidden = np.asarray(hidden, dtype=compute)
        self.position_scale = (None if position_scale is None else
                               np.asarray(position_scale, dtype=compute)[:, None])
        self.dtypes = [_validation.native(a.dtype) for a in (hidden, weight, bias)
                       if a is not None]
        self.d_hidden: Optional[NDArray[Any]] = None    # from the first chunk
        # d_weight is written a chunk's rows at a time, in place when it has
        # the compute dtype.
        self.d_weight = np.empty(weight.shape, dtype=self.dtypes[1])
        self.d_bias = None if bias is None else np.empty(bias.shape, dtype=self.dtypes[2])

    def add_chunk(self, grad: NDArray[Any], start: int, chunk_weight: NDArray[Any],
                  scratch: NDArray[Any]) -> None:
        """Add the chunk at start, with gradient grad (N x width); scratch is
        an N x width buffer free to overwrite (the chunk's logits, used)."""
        if self.position_scale is not None:
            grad *= self.position_scale
        width = grad.shape[1]
        stop = start + width
        rows, features = self.hidden.shape
        if self.d_hidden is None:
            self.d_hidden = np.matmul(grad, chunk_weight)
        else:
            # grad @ chunk_weight into scratch, a block of H columns at a
            # time when H > width, and added: numpy's matmul cannot add into
            # its output, and a fresh N x H product would exceed the memory
            # bound.
            for first in range(0, features, width):
                last = min(features, first + width)
                product = scratch.reshape(-1)[:rows * (last - first)].reshape(
                    rows, last - first)
                np.matmul(grad, chunk_weight[:, first:last], out=product)
                self.d_hidden[:, first:last] += product
        d_weight = self.d_weight[start:stop]
        if d_weight.dtype == grad.dtype:
            np.matmul(grad.T, self.hidden, out=d_weight)
        else:
            d_weight[...] = _in_dtype(grad.T @ self.hidden, d_weight.dtype)
        if self.d_bias is not None:
            # summed in double (buffered, no N x width copy)
            self.d_bias[start:stop] = _in_dtype(grad.sum(axis=0, dtype=np.float64),
                                                self.d_bias.dtype)

    def result(self) -> Grads:
        assert self.d_hidden is not None    # V >= 1: one chunk at least
        d_hidden = _in_dtype(self.d_hidden, self.dtypes[0])
        if self.d_bias is None:
            return d_hidden, self.d_weight
        return d_hidden, self.d_weight, self.d_bias


class _ClampedSmoothing:
    """naive and maxsub with label smoothing: each position's loss
    sum_j q_j * -log(max(p_j, FLT_MIN)) and gradient (p_j Q - q_j) * scale,
    with p_j = exp(x_j - shift) / total in the logits' dtype (Caffe's
    SoftmaxWithLoss: clamped_nll and position_grad in csrc/row.h, _losses and
    _gradient in pysafemax/reference.py), summed chunk by chunk.  The shift
    and total are those of the whole rows: the state of a first pass
    without smoothing.  q_j = (1 - eps) w_y [j = y] + (eps / V) w_j."""

    def __init__(self, state: SoftmaxPartials, t: _validation.Targets,
                 logits: _validation.Logits, reduction: str, threads: int) -> None:
        compute = logits.compute_dtype
        rows, classes = logits.outer, logits.classes
        self.real = compute.type
        fields = state.state
        self.shift = fields["max"].astype(compute)
        # float_total in row.h: the sum rounded once; NaN under maxsub where
        # the max is not finite
        self.total = (fields["rest"] + fields["ties"]).astype(compute)
        if state.method == "maxsub":
            self.total[~np.isfinite(fields["max"])] = np.nan
        self.weight = np.ones(classes) if t.weight is None else t.weight
        assert t.labels is not None     # class indices: never probabilities here
        eps = t.label_smoothing
        self.smooth = (eps / classes) * self.weight        # double, per class
        self.ignored = (np.zeros(rows, dtype=bool) if t.ignore_index is None
                        else t.labels == t.ignore_index)
        self.labels = np.where(self.ignored, 0, t.labels)
        self.label_part = (1.0 - eps) * self.weight[self.labels]
        self.mass = self.label_part + (eps / classes) * self.weight.sum()   # Q
        self.reduction = reduction
        self.normalizer = batch_normalizer(logits, t, reduction, threads)
        self.scale = _bindings.reduce("mean", 1.0, self.normalizer)
        self.losses = np.zeros(rows)

    def add_chunk(self, logits: NDArray[Any], start: int,
                  want_grad: bool) -> Optional[NDArray[Any]]:
        """Add the chunk's terms to the losses; return its gradient (None
        without want_grad).  Overwrites logits."""
        real = self.real
        width = logits.shape[1]
        here = np.flatnonzero(~self.ignored & (self.labels >= start)
                              & (self.labels < start + width))
        column = self.labels[here] - start
        p = logits
        with np.errstate(all="ignore"):   # naive overflows, as it does in Caffe
            p -= self.shift[:, None]
            np.exp(p, out=p)
            p /= self.total[:, None]
            grad = None
            if want_grad:
                grad = p * self.mass.astype(real)[:, None]
                grad -= self.smooth[start:start + width].astype(real)
                # the label's q_j rounded once, as target_mass is
                q = (self.label_part[here] + self.smooth[start + column]).astype(real)
                grad[here, column] = p[here, column] * real(self.mass[here]) - q
                grad *= real(self.scale)
                grad[self.ignored] = 0
            # Caffe's loss -= log(std::max(p, Dtype(FLT_MIN))): NaN stays NaN
            np.maximum(p, real(FLT_MIN), out=p)
            np.log(p, out=p)
            np.subtract(real(0), p, out=p)   # +0 for p = 1, not -0
            smooth = self.smooth[start:start + width]
            # classes with q_j = 0 add nothing, not 0 * inf
            p[:, smooth == 0.0] = 0
            terms = np.einsum("ij,j->i", p, smooth, dtype=np.float64, casting="unsafe")
            terms[here] += self.label_part[here] * p[here, column].astype(np.float64)
        terms[self.ignored] = 0.0
        self.losses += terms
        return grad

    def loss(self) -> Loss:
        if self.reduction == "none":
            return self.losses
        return _bindings.reduce(self.reduction, math.fsum(self.losses), self.normalizer)
