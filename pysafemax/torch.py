"""pysafemax for PyTorch: `cross_entropy`, torch.nn.functional.cross_entropy's
arguments and results, computed by pysafemax's kernel on CPU tensors.

The forward pass is one ``pysafemax.softmax_loss(..., return_grad=True)`` on
the tensors' memory (``Tensor.numpy()`` shares it; nothing is copied for
contiguous float32 and float64 logits): the loss and d loss / d input in
one sweep, one exp per logit.  The gradient is kept for the backward pass, which
multiplies it by the incoming gradient (or returns it as it is when that is
1, as for ``loss.backward()``).  So a training step holds one N x C
gradient between forward and backward, as torch holds its log-softmax, and
a call that needs no gradient (torch.no_grad(), an input that does not
require it) computes the loss only.

PyTorch is optional: importing `pysafemax` never imports torch, and this
module raises ImportError without it (``python -m pip install torch``).

LinearCrossEntropy is a language model's output layer and its loss in one:
torch.nn.Linear(in_features, num_classes) then torch.nn.CrossEntropyLoss,
computed by pysafemax.linear_cross_entropy without the N x num_classes
logits.
"""
from __future__ import annotations

import numbers
import math
from typing import Any, Dict, List, Optional, Tuple, cast

try:
    import torch
except ImportError as exc:
    raise ImportError(
        "pysafemax.torch needs PyTorch, which is not installed: "
        "python -m pip install torch (pysafemax itself needs only numpy and cffi)"
    ) from exc

import numpy as np

from ._core import softmax_loss
from ._linear import linear_cross_entropy, position_scaled_grads
from ._validation import choice

__all__ = ["cross_entropy", "LinearCrossEntropy"]

# torch's reductions; pysafemax's Caffe modes have no torch name.
REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# torch's default ignore_index, which probability targets accept (any other
# value is refused for them, as torch refuses it).
_TORCH_IGNORE_INDEX = -100
# The options cross_entropy passes on, with softmax_loss's defaults.
_DEFAULT_OPTIONS = (("weight", None), ("ignore_index", None), ("label_smoothing", 0.0),
                    ("z_loss", 0.0))


def cross_entropy(input: torch.Tensor, target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy of CPU tensors, as
    ``torch.nn.functional.cross_entropy``, by pysafemax's exact kernel.

    Differentiable with respect to `input` (once: a second derivative is
    refused).  Threads: pysafemax's own (``pysafemax.set_num_threads``),
    not ``torch.set_num_threads``.

    Parameters
    ----------
    input : Tensor
        Logits on the CPU, (C,), (N, C) or (N, C, d1, ..., dk): float32 or
        float64 (read in place when contiguous; other strides are copied a
        block at a time), float16 or bfloat16 (computed in float32, results
        in the input's dtype, as torch does).
    target : Tensor
        Class indices (an integer tensor shaped like `input` without the
        class axis) or class probabilities (a floating tensor shaped like
        `input`).
    weight : Tensor, optional
        Per-class weights, shape (C,), as torch's; no gradient flows to them.
    ignore_index : int, default -100
        Class-index positions with this label add no loss and no gradient.
        Probability targets accept only the default, as in torch.
    reduction : {"mean", "sum", "none"}
        "mean": torch's weighted mean over the non-ignored positions;
        "none": the per-position losses, shaped like `target` (class
        indices) or `input` without the class axis.
    label_smoothing : float, default 0.0
        In [0, 1], as torch's.
    z_loss : float, default 0.0
        PaLM's z-loss: adds ``z_loss * logsumexp(input) ** 2`` per
        non-ignored position, weighted and reduced like the loss (see
        pysafemax.softmax_loss); not a torch argument.

    Returns
    -------
    Tensor
        The loss in the input's dtype: 0-d for "mean" and "sum" (summed in
        double, then rounded once), per position for "none".

    Raises
    ------
    TypeError
        If `input`, `target` or `weight` is not a tensor, or `input` is not
        float16, bfloat16, float32 or float64.
    ValueError
        If a tensor is not a strided CPU tensor, `reduction` is not one of
        torch's, `weight` or a probability `target` requires a gradient
        while autograd records, `ignore_index` is set with probability
        targets, or pysafemax.softmax_loss refuses the values (it names
        `input` "logits" and `target` "labels": a shape mismatch, a label
        out of range, smoothing outside [0, 1], a negative z_loss).

    Examples
    --------
    >>> import torch
    >>> from pysafemax.torch import cross_entropy
    >>> x = torch.tensor([[100.0, 0.0], [0.0, 0.0]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([1, 0]))
    >>> loss
    tensor(50.3466, grad_fn=<_CrossEntropyBackward>)
    >>> loss.backward()
    >>> x.grad
    tensor([[ 0.5000, -0.5000],
            [-0.2500,  0.2500]])
    """
    reduction = choice(reduction, "reduction", REDUCTIONS)
    logits = _array(input, "input")
    if input.dtype not in _FLOATS:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, "
                        f"got {input.dtype}")
    labels = _array(target, "target")
    recording = torch.is_grad_enabled()
    options: Dict[str, Any] = {
        "weight": None if weight is None else _array(weight, "weight"),
        "label_smoothing": label_smoothing, "ignore_index": ignore_index,
        "z_loss": z_loss}
    for name, tensor in (("weight", weight), ("target", target)):
        if recording and tensor is not None and tensor.requires_grad:
            raise ValueError(
                f"{name} requires grad, but pysafemax.torch.cross_entropy gives a "
                f"gradient for input only: pass {name}.detach()")
    if labels.dtype.kind == "f":
        # pysafemax takes probability targets with ignore_index=None; torch
        # takes them with its default and refuses any other value.
        if not (isinstance(ignore_index, numbers.Integral)
                and ignore_index == _TORCH_IGNORE_INDEX):
            raise ValueError(f"ignore_index applies to class-index targets only; "
                             f"probability targets take the default "
                             f"{_TORCH_IGNORE_INDEX}, got {ignore_index!r}")
        options["ignore_index"] = None
    elif (type(ignore_index) is int and abs(ignore_index) < 2 ** 63
          and not (labels == ignore_index).any()):
        # Nothing to ignore: without ignore_index the results are the same,
        # and a plain (N, C) call takes softmax_loss's cheap path (20 us less
        # on (32, 10)).  Other values are left for softmax_loss to check.
        options["ignore_index"] = None
    # Leave out the options at softmax_loss's defaults: any option it is
    # given but method, reduction, return_grad, out and threads sends the
    # call past its cheap path.
    for name, default in _DEFAULT_OPTIONS:
        value = options[name]
        if value is default or (type(value) in (int, float) and value == default):
            del options[name]
    if recording and input.requires_grad:
        return _CrossEntropy.apply(input, logits, labels, reduction, options)
    # no graph to record: the loss alone, without a gradient to compute
    return _tensor(softmax_loss(logits, labels, reduction=reduction, **options),
                   input.dtype)


class _CrossEntropy(torch.autograd.Function):
    """The loss as an autograd node: the gradient computed with the loss and
    kept until backward.  `input` is the tensor the graph records; `logits`
    and `labels` its and target's arrays (see _array)."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, logits: np.ndarray,
                labels: np.ndarray, reduction: str,
                options: Dict[str, Any]) -> torch.Tensor:
        # (a str reduction picks softmax_loss's catch-all overload)
        loss, grad = cast(Tuple[Any, np.ndarray],
                          softmax_loss(logits, labels, reduction=reduction,
                                       return_grad=True, **options))
        ctx.save_for_backward(_tensor(grad, input.dtype))
        # "none": one incoming gradient per position, spread over its classes
        ctx.class_axis = 1 if reduction == "none" and input.dim() > 1 else None
        ctx.per_position = reduction == "none"
        return _tensor(loss, input.dtype)

    @staticmethod
    def backward(ctx: Any,
                 grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        if torch.is_grad_enabled():
            # create_graph=True: the kept gradient is a constant to autograd,
            # so a second derivative through it would silently be 0.
            raise RuntimeError(
                "pysafemax.torch.cross_entropy has no second derivative: "
                "backward with create_graph=True is refused; use "
                "torch.nn.functional.cross_entropy where one is needed")
        (grad,) = ctx.saved_tensors
        if ctx.per_position:
            scale = (grad_output if ctx.class_axis is None
                     else grad_output.unsqueeze(ctx.class_axis))
        elif grad_output.item() == 1:    # (item: a tenth of the cost of ==)
            # loss.backward(): the kept gradient is the answer.  Returning it
            # is safe: autograd adopts it as input.grad only once this node
            # has dropped it (no retain_graph), and otherwise copies it; a
            # caller who writes it in place (autograd.grad, retain_graph)
            # fails the next backward's version check instead of changing it.
            return grad, None, None, None, None
        else:
            scale = grad_output
        return grad * scale, None, None, None, None


def _array(tensor: Any, name: str) -> np.ndarray:
    """The tensor's values as an ndarray sharing its memory (bfloat16, which
    numpy lacks, as a float32 copy), or the TypeError / ValueError saying why
    pysafemax cannot read it."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_cpu:
        raise ValueError(
            f"{name} is on {tensor.device}; pysafemax.torch computes on the CPU "
            f"only: pass {name}.cpu(), or use torch's own functions on "
            f"{tensor.device.type}")
    if tensor.layout is not torch.strided:
        raise ValueError(f"{name} is a {tensor.layout} tensor; pass a dense one "
                         f"({name}.to_dense())")
    values = tensor.detach()
    if values.dtype is torch.bfloat16:
        values = values.float()
    try:
        return values.numpy()
    except RuntimeError:
        # a view with a pending negation or conjugation, which numpy() refuses
        return values.resolve_neg().resolve_conj().numpy()


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A loss (a float, or an ndarray of losses) or gradient as a tensor of
    `dtype`; an ndarray is shared, not copied, when it has that dtype."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value).to(dtype)
    return torch.tensor(value, dtype=dtype)


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """loss = cross_entropy(hidden @ weight.T + bias, target), with the
    gradients of linear_cross_entropy."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor], target: torch.Tensor,
                options: Dict[str, Any]) -> torch.Tensor:
        arrays = (_array(hidden, "hidden"), _array(weight, "weight"),
                  _array(target, "target"))
        with_bias = dict(options, bias=None if bias is None else _array(bias, "bias"))
        wants_grad = any(ctx.needs_input_grad[:3])
        per_position = options["reduction"] == "none"
        loss: Any
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if wants_grad and not per_position:
            # A reduced loss's backward only scales these: take them in the
            # same call, whose second pass reuses the first's state.
            loss, grads = linear_cross_entropy(*arrays, return_grad=True, **with_bias)
            ctx.grads = grads
        else:
            loss = linear_cross_entropy(*arrays, **with_bias)
            ctx.grads = None
        if wants_grad and per_position:
            # Each position's incoming gradient scales its share: known only
            # in backward, which recomputes (from saved tensors, so that
            # autograd sees any change made to them in between).
            ctx.save_for_backward(hidden, weight, bias, target)
            ctx.options = options
        result_dtype = torch.promote_types(hidden.dtype, weight.dtype)
        if per_position:
            return _tensor(loss, result_dtype)
        return torch.tensor(loss, dtype=result_dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        if ctx.grads is not None:
            scale = grad_output.to(torch.float64)
            grads: List[Optional[torch.Tensor]] = [
                _tensor(g, dtype) * scale.to(dtype)
                for g, dtype in zip(ctx.grads, ctx.dtypes)]
        else:
            hidden, weight, bias, target = ctx.saved_tensors
            arrays = position_scaled_grads(
                _array(hidden, "hidden"), _array(weight, "weight"),
                _array(target, "target"), _array(grad_output, "grad_output"),
                bias=None if bias is None else _array(bias, "bias"), **ctx.options)
            grads = [_tensor(g, dtype) for g, dtype in zip(arrays, ctx.dtypes)]
        if len(grads) == 2:
            grads.append(None)
        return grads[0], grads[1], grads[2], None, None


class LinearCrossEntropy(torch.nn.Module):
    """torch.nn.Linear(in_features, num_classes, bias) followed by
    torch.nn.CrossEntropyLoss(ignore_index, reduction, label_smoothing), its
    logits never made: the classes are taken chunk_size at a time
    (pysafemax.linear_cross_entropy).

    Parameters
    ----------
    in_features : int
        H, the features of each position.
    num_classes : int
        V, the classes (the vocabulary).
    bias : bool, optional
        Whether the layer has a bias (default True).
    ignore_index, reduction, label_smoothing : optional
        As torch.nn.CrossEntropyLoss ("mean", "sum" or "none"; pysafemax's
        other reductions work too).
    z_loss : float, optional
        As pysafemax.linear_cross_entropy.
    chunk_size : int, optional
        Classes per chunk (None: linear_cross_entropy's default, about 64 MB
        of working memory).
    device, dtype : optional
        Of the parameters, as torch.nn.Linear (CPU only).

    Examples
    --------
    >>> import torch
    >>> from pysafemax.torch import LinearCrossEntropy
    >>> layer = LinearCrossEntropy(16, 1000)
    >>> hidden = torch.randn(8, 16, requires_grad=True)
    >>> loss = layer(hidden, torch.randint(0, 1000, (8,)))
    >>> loss.backward()
    >>> layer.weight.grad.shape
    torch.Size([1000, 16])
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, *,
                 ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 chunk_size: Optional[int] = None, device: Any = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.chunk_size = chunk_size
        factory = dict(device=device, dtype=dtype)
        self.weight = torch.nn.Parameter(torch.empty(num_classes, in_features, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(num_classes, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.Linear's initialization."""
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        options = dict(ignore_index=self.ignore_index, reduction=self.reduction,
                       label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                       chunk_size=self.chunk_size)
        return _LinearCrossEntropyFunction.apply(hidden, self.weight, self.bias, target,
                                                 options)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"bias={self.bias is not None}, reduction={self.reduction!r}, "
                f"ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"chunk_size={self.chunk_size}")
