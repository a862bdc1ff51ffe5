"""pysafemax.torch.LinearCrossEntropy against torch's own F.linear +
F.cross_entropy: the loss and the gradients of hidden, weight and bias, and
torch.autograd.gradcheck in float64."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from pysafemax.torch import LinearCrossEntropy  # noqa: E402

F = torch.nn.functional


def _pair(features, classes, bias, dtype=torch.float64, **options):
    torch.manual_seed(0)
    ours = LinearCrossEntropy(features, classes, bias=bias, dtype=dtype, **options)
    theirs = torch.nn.Linear(features, classes, bias=bias, dtype=dtype)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        if bias:
            theirs.bias.copy_(ours.bias)
    return ours, theirs


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_linear_then_cross_entropy(reduction, bias, label_smoothing, dtype):
    rows, features, classes = 11, 6, 29
    ours, theirs = _pair(features, classes, bias, dtype, reduction=reduction,
                         label_smoothing=label_smoothing, chunk_size=8)
    hidden = torch.randn(rows, features, dtype=dtype)
    target = torch.randint(0, classes, (rows,))
    target[3] = -100
    h1 = hidden.clone().requires_grad_()
    h2 = hidden.clone().requires_grad_()
    loss = ours(h1, target)
    expected = F.cross_entropy(theirs(h2), target, reduction=reduction,
                               label_smoothing=label_smoothing)
    assert loss.dtype == expected.dtype and loss.shape == expected.shape
    # a non-uniform incoming gradient for "none"
    outer = torch.arange(1.0, rows + 1, dtype=dtype) if reduction == "none" else 2.0
    (loss * outer).sum().backward()
    (expected * outer).sum().backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4,
                                                                            atol=1e-5)
    torch.testing.assert_close(loss, expected, **tol)
    torch.testing.assert_close(h1.grad, h2.grad, **tol)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tol)
    if bias:
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction):
    torch.manual_seed(1)
    hidden = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, -100, 6])
    layer = LinearCrossEntropy(4, 7, reduction=reduction, label_smoothing=0.1,
                               chunk_size=3, dtype=torch.float64)

    def f(h, w, b):
        from pysafemax.torch import _LinearCrossEntropyFunction
        options = dict(ignore_index=-100, reduction=reduction, label_smoothing=0.1,
                       z_loss=0.0, chunk_size=3)
        return _LinearCrossEntropyFunction.apply(h, w, b, target, options)

    assert torch.autograd.gradcheck(f, (hidden, weight, bias))
    assert layer(hidden, target).shape == (() if reduction == "mean" else (3,))


def test_no_grad_and_module_details():
    layer = LinearCrossEntropy(5, 10)
    assert "num_classes=10" in repr(layer)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    with torch.no_grad():
        loss = layer(torch.randn(4, 5), torch.randint(0, 10, (4,)))
    assert loss.dtype == torch.float32 and np.isfinite(loss.item())
    with pytest.raises(ValueError, match="labels"):
        layer(torch.randn(4, 5), torch.tensor([0, 1, 2, 10]))


def test_z_loss_adds_palms_term():
    # F.cross_entropy plus z * lse**2, averaged over the counted positions
    ours, theirs = _pair(5, 13, True, z_loss=1e-2, chunk_size=4)
    hidden = torch.randn(7, 5, dtype=torch.float64)
    target = torch.randint(0, 13, (7,))
    target[1] = -100
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    loss = ours(h1, target)
    logits = theirs(h2)
    counted = target != -100
    expected = (F.cross_entropy(logits, target)
                + 1e-2 * (torch.logsumexp(logits, 1)[counted] ** 2).mean())
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-12)
