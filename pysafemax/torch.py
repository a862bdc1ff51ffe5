"""PyTorch modules on pysafemax (torch is optional: imported here only).

LinearCrossEntropy is a language model's output layer and its loss in one:
torch.nn.Linear(in_features, num_classes) then torch.nn.CrossEntropyLoss,
computed by pysafemax.linear_cross_entropy without the N x num_classes
logits.  CPU tensors only (the kernel reads numpy arrays).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

try:
    import torch
except ImportError:   # pragma: no cover - the message is the point
    raise ImportError("pysafemax.torch needs PyTorch, which pysafemax does not "
                      "install: pip install torch") from None

from numpy.typing import NDArray

from ._linear import linear_cross_entropy, position_scaled_grads

__all__ = ["LinearCrossEntropy"]


def _array(tensor: torch.Tensor, name: str) -> NDArray[Any]:
    """A CPU tensor's numpy view (no copy); bfloat16, which numpy cannot
    hold, as float32."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got device {tensor.device}")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _tensor(array: NDArray[Any], dtype: torch.dtype) -> torch.Tensor:
    """A numpy result as a tensor of `dtype` (the input's: bfloat16 comes
    back from float32)."""
    return torch.from_numpy(array).to(dtype)


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
