"""pysafemax.torch.cross_entropy against torch.nn.functional.cross_entropy:
losses and gradients for every option, dtype and layout, gradcheck, special
values, bad inputs, and autograd's corners.  Skipped without torch (the
import behaviour without torch is tested here too, in a child process)."""
import subprocess
import sys

import numpy as np
import pytest

import pysafemax

torch = pytest.importorskip("torch")
F = torch.nn.functional
from pysafemax import torch as psm_torch  # noqa: E402
from pysafemax.torch import cross_entropy  # noqa: E402
# The random cases and tolerances of the parity tests of softmax_loss itself.
from test_torch_parity import TOLERANCE, assert_close, random_case  # noqa: E402

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def torch_options(options, dtype):
    """random_case's options as cross_entropy's keyword arguments."""
    kwargs = dict(options)
    if "weight" in kwargs:
        kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=dtype)
    return kwargs


def loss_and_grad(function, x, target, kwargs, upstream=None):
    """function(x, target, **kwargs) and d/dx of (loss * upstream).sum()
    (upstream: ones of the loss's shape unless given)."""
    xg = x.detach().clone().requires_grad_(True)
    loss = function(xg, target, **kwargs)
    if upstream is None:
        upstream = torch.ones_like(loss)
    (grad,) = torch.autograd.grad(loss, xg, upstream)
    return loss.detach(), grad


def as_numpy(t):
    return t.detach().to(torch.float64).numpy()


# -- parity with torch ------------------------------------------------------

@pytest.mark.parametrize("seed", range(0, 240, 3))
def test_matches_torch_on_random_cases(seed):
    x, labels, options = random_case(seed)
    dtype = TORCH_DTYPE[x.dtype.type]
    xt, target = torch.from_numpy(x), torch.from_numpy(labels)
    kwargs = torch_options(options, dtype)
    rng = np.random.default_rng(seed)
    # an upstream gradient that is not all ones, so backward's scaling counts
    loss_shape = (labels.shape[:1] + labels.shape[2:] if labels.dtype.kind == "f"
                  else labels.shape) if options["reduction"] == "none" else ()
    upstream = torch.from_numpy(rng.uniform(0.5, 2.0, loss_shape).astype(x.dtype))
    want_loss, want_grad = loss_and_grad(F.cross_entropy, xt, target, kwargs, upstream)
    loss, grad = loss_and_grad(cross_entropy, xt, target, kwargs, upstream)
    what = f"shape {x.shape} {x.dtype} {options}"
    tol = TOLERANCE[x.dtype.type]
    assert loss.dtype == want_loss.dtype and loss.shape == want_loss.shape, what
    assert grad.dtype == xt.dtype
    assert_close(loss.numpy(), want_loss.numpy(), tol, what + " loss")
    assert_close(grad.numpy(), want_grad.numpy(), tol, what + " grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_option_on_spatial_logits(reduction, targets, dtype):
    # (N, C, d1, d2) with weight and smoothing, and ignore_index for indices
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 4, 5, generator=gen, dtype=dtype) * 3
    if targets == "indices":
        target = torch.randint(0, 7, (3, 4, 5), generator=gen)
        target[0, 1] = 2
        kwargs = {"ignore_index": 2}
    else:
        target = torch.softmax(torch.randn(3, 7, 4, 5, generator=gen, dtype=dtype), 1)
        kwargs = {}
    kwargs.update(weight=torch.rand(7, generator=gen, dtype=dtype) + 0.1,
                  label_smoothing=0.2, reduction=reduction)
    upstream = torch.rand((3, 4, 5) if reduction == "none" else (), dtype=dtype) + 0.5
    want_loss, want_grad = loss_and_grad(F.cross_entropy, x, target, kwargs, upstream)
    loss, grad = loss_and_grad(cross_entropy, x, target, kwargs, upstream)
    tol = TOLERANCE[np.float32 if dtype is torch.float32 else np.float64]
    assert_close(loss.numpy(), want_loss.numpy(), tol, "loss")
    assert_close(grad.numpy(), want_grad.numpy(), tol, "grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_logits(reduction):
    x = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    for target in (torch.tensor(2), probs):
        want = loss_and_grad(F.cross_entropy, x, target, {"reduction": reduction})
        got = loss_and_grad(cross_entropy, x, target, {"reduction": reduction})
        assert got[0].shape == want[0].shape == ()
        for ours, theirs in zip(got, want):
            assert_close(ours.numpy(), theirs.numpy(), TOLERANCE[np.float64], reduction)


# float16 and bfloat16 are computed in float32 and rounded once: within an ULP
# of torch in float64 on the same values (rounded to the dtype), and within a
# few of torch's own computation in the dtype, which rounds more often.
HALF_EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_half_precisions_are_computed_in_float32(dtype, reduction, targets):
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(16, 33, 3, generator=gen) * 4).to(dtype)
    if targets == "indices":
        target = torch.randint(0, 33, (16, 3), generator=gen)
    else:
        target = torch.softmax(torch.randn(16, 33, 3, generator=gen), 1).to(dtype)
    kwargs = {"reduction": reduction, "label_smoothing": 0.1,
              "weight": (torch.rand(33, generator=gen) + 0.5).to(dtype)}
    loss, grad = loss_and_grad(cross_entropy, x, target, kwargs)
    assert loss.dtype == grad.dtype == dtype
    wide = {**kwargs, "weight": kwargs["weight"].double()}
    exact_loss, exact_grad = loss_and_grad(F.cross_entropy, x.double(),
                                           target.double() if targets != "indices"
                                           else target, wide)
    eps = HALF_EPS[dtype]
    np.testing.assert_allclose(as_numpy(loss), as_numpy(exact_loss.to(dtype)),
                               rtol=eps, atol=eps * 1e-3)
    np.testing.assert_allclose(as_numpy(grad), as_numpy(exact_grad.to(dtype)),
                               rtol=eps, atol=eps * 1e-3)
    native_loss, native_grad = loss_and_grad(F.cross_entropy, x, target, kwargs)
    assert native_loss.dtype == dtype
    scale = float(exact_grad.abs().max())
    np.testing.assert_allclose(as_numpy(loss), as_numpy(native_loss), rtol=8 * eps)
    np.testing.assert_allclose(as_numpy(grad), as_numpy(native_grad), rtol=8 * eps,
                               atol=8 * eps * scale)


def test_threads_give_the_same_bits():
    x = torch.randn(600, 1000) * 4          # 600k logits: two threads' worth
    target = torch.randint(0, 1000, (600,))
    results = []
    try:
        for threads in (1, 2):
            pysafemax.set_num_threads(threads)
            results.append(loss_and_grad(cross_entropy, x, target, {}))
    finally:
        pysafemax.set_num_threads(None)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_threads_of_the_caller_each_get_their_own_results():
    # The kernel keeps no state and autograd runs each thread's graph:
    # concurrent calls from Python threads give what serial ones give.
    from concurrent.futures import ThreadPoolExecutor
    gen = torch.Generator().manual_seed(7)
    cases = [(torch.randn(64, 500, generator=gen),
              torch.randint(0, 500, (64,), generator=gen)) for _ in range(8)]
    serial = [loss_and_grad(cross_entropy, x, t, {}) for x, t in cases]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda c: loss_and_grad(cross_entropy, *c, {}),
                                   cases * 4))
    for (loss, grad), (want_loss, want_grad) in zip(concurrent, serial * 4):
        assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)


# -- gradients ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["plain", "weight+ignore", "smoothing",
                                  "probabilities", "spatial"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_in_float64(case, reduction):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.tensor([0, 4, 2, 1])
    kwargs = {"reduction": reduction}
    if case == "weight+ignore":
        kwargs.update(weight=torch.rand(5, dtype=torch.float64, generator=gen) + 0.1,
                      ignore_index=2)
    elif case == "smoothing":
        kwargs.update(label_smoothing=0.3)
    elif case == "probabilities":
        target = torch.softmax(torch.randn(4, 5, dtype=torch.float64, generator=gen), 1)
    elif case == "spatial":
        x = torch.randn(2, 5, 3, 2, dtype=torch.float64, generator=gen,
                        requires_grad=True)
        target = torch.randint(0, 5, (2, 3, 2), generator=gen)
    assert torch.autograd.gradcheck(lambda a: cross_entropy(a, target, **kwargs), (x,))


def test_backward_twice_with_retain_graph_accumulates():
    # loss.backward() returns the kept gradient itself: a second backward
    # through the retained graph, and .grad's accumulation, must not touch it.
    x = torch.randn(8, 6, requires_grad=True)
    target = torch.randint(0, 6, (8,))
    (want,) = torch.autograd.grad(F.cross_entropy(x, target), x)
    loss = cross_entropy(x, target)
    for times in (1, 2, 3):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, times * want)
    (again,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(again, want)


def test_a_returned_gradient_written_in_place_is_caught():
    # The kept gradient itself may reach the caller (retain_graph=True):
    # writing it in place must not change what a second backward returns
    # unnoticed; autograd's version check refuses it.
    x = torch.randn(4, 3, requires_grad=True)
    loss = cross_entropy(x, torch.tensor([0, 1, 2, 0]))
    (grad,) = torch.autograd.grad(loss, x, retain_graph=True)
    grad.mul_(100)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(loss, x)


def test_an_input_used_twice_sums_both_gradients():
    x = torch.randn(8, 6, requires_grad=True)
    target = torch.randint(0, 6, (8,))
    (cross_entropy(x, target) + 3 * cross_entropy(x, target, reduction="sum")).backward()
    xw = x.detach().clone().requires_grad_(True)
    (F.cross_entropy(xw, target)
     + 3 * F.cross_entropy(xw, target, reduction="sum")).backward()
    torch.testing.assert_close(x.grad, xw.grad)


def test_gradients_flow_on_to_the_layers_before():
    torch.manual_seed(6)
    layer = torch.nn.Linear(5, 3)
    x, target = torch.randn(8, 5), torch.randint(0, 3, (8,))
    grads = []
    for function in (cross_entropy, F.cross_entropy):
        layer.zero_grad()
        function(layer(x), target, label_smoothing=0.1).backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)


def test_double_backward_is_refused():
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "sum", "none"):
        loss = cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction=reduction)
        with pytest.raises(RuntimeError, match="no second derivative.*create_graph"):
            torch.autograd.grad(loss.sum(), x, create_graph=True)
        # the graph is still there for a first derivative
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert grad.shape == x.shape


def test_no_gradient_needed_computes_the_loss_only(monkeypatch):
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs.get("return_grad", False))
        return pysafemax.softmax_loss(*args, **kwargs)

    monkeypatch.setattr(psm_torch, "softmax_loss", recording)
    x = torch.randn(5, 4)
    target = torch.tensor([0, 1, 2, 3, 0])
    want = F.cross_entropy(x, target)
    plain = cross_entropy(x, target)
    with torch.no_grad():
        unrecorded = cross_entropy(x.requires_grad_(True), target)
    with torch.inference_mode():
        inference = cross_entropy(x, target)
    assert calls == [False, False, False]
    for loss in (plain, unrecorded, inference):
        assert loss.grad_fn is None and not loss.requires_grad
        torch.testing.assert_close(loss, want)
    recorded = cross_entropy(x, target)
    assert calls[-1] is True and recorded.requires_grad


def test_plain_calls_pass_no_option_that_would_skip_the_cheap_path(monkeypatch):
    # softmax_loss's cheap path takes method, reduction, return_grad, out and
    # threads alone: cross_entropy leaves out the options at their defaults
    # (torch's ignore_index of -100 where no label is -100), and passes on
    # the others, with their values
    passed = []

    def recording(*args, **kwargs):
        passed.append(dict(kwargs))
        return pysafemax.softmax_loss(*args, **kwargs)

    monkeypatch.setattr(psm_torch, "softmax_loss", recording)
    x = torch.randn(6, 5, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    weight = torch.rand(5) + 0.5
    for kwargs, extra in [({}, {}), ({"label_smoothing": 0}, {}),
                          ({"label_smoothing": 0.0, "ignore_index": 7}, {}),
                          ({"reduction": "sum"}, {}),
                          ({"label_smoothing": 0.25}, {"label_smoothing": 0.25}),
                          ({"ignore_index": 3}, {"ignore_index": 3}),
                          ({"z_loss": 1e-4}, {"z_loss": 1e-4})]:
        for grad_enabled in (True, False):
            passed.clear()
            with torch.set_grad_enabled(grad_enabled):
                got = cross_entropy(x, target, **kwargs)
            cheap = {"reduction": kwargs.get("reduction", "mean")}
            if grad_enabled:
                cheap["return_grad"] = True
            assert passed == [{**cheap, **extra}], (kwargs, grad_enabled)
            if "z_loss" not in kwargs:
                torch.testing.assert_close(got, F.cross_entropy(x, target, **kwargs))
    passed.clear()
    cross_entropy(x, target, weight=weight)
    assert list(passed[0]) == ["reduction", "return_grad", "weight"]


# -- layouts and the caller's tensors ----------------------------------------

def test_non_contiguous_tensors_work_and_are_left_unchanged():
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(10, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    column_major = torch.randn(6, 10, generator=gen, dtype=torch.float64).t()
    layouts = {
        # views of a leaf, passed as they are (a clone would make most of
        # them contiguous), their gradients taken with respect to the views
        "column-major": column_major.requires_grad_(True),
        "strided": base[::2, :, 1],
        "class-sliced": base[:5, ::2, 2],
        "permuted 4-d": base.view(10, 6, 2, 4).permute(0, 1, 3, 2),
        "expanded": base[:1, :, 3].expand(7, 6),                 # stride 0
    }
    for name, x in layouts.items():
        assert not x.is_contiguous(), name
        positions = (x.shape[0],) + tuple(x.shape[2:])
        target = torch.randint(0, x.shape[1], positions, generator=gen)
        weight = torch.rand(x.shape[1] * 2, dtype=torch.float64, generator=gen)[::2]
        kwargs = {"weight": weight, "label_smoothing": 0.1}
        copies = [t.detach().clone() for t in (x, target, weight)]
        want = loss_and_grad(F.cross_entropy, x.detach().contiguous(), target, kwargs)
        loss = cross_entropy(x, target, **kwargs)
        (grad,) = torch.autograd.grad(loss, x)
        for ours, theirs in zip((loss.detach(), grad), want):
            assert_close(ours.numpy(), theirs.numpy(), TOLERANCE[np.float64], name)
        for before, after in zip(copies, (x, target, weight)):
            assert torch.equal(before, after.detach()), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_callers_tensors_are_never_written(dtype):
    x = (torch.randn(6, 5) * 3).to(dtype).requires_grad_(True)
    probs = torch.softmax(torch.randn(6, 5), 1).to(dtype)
    labels = torch.tensor([0, 1, 2, 3, 4, -100])
    weight = (torch.rand(5) + 0.5).to(dtype)
    copies = [t.detach().clone() for t in (x, probs, labels, weight)]
    for target in (labels, probs):
        for reduction in ("mean", "none"):
            loss = cross_entropy(x, target, weight=weight, reduction=reduction,
                                 label_smoothing=0.2)
            loss.sum().backward()
    for before, after in zip(copies, (x, probs, labels, weight)):
        assert torch.equal(before, after.detach())


def test_a_lazily_negated_view_is_read_as_its_values():
    x = torch.randn(5, 4, dtype=torch.float64)
    negated = torch._neg_view(x)        # what numpy() refuses to read as is
    assert negated.is_neg()
    target = torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(cross_entropy(negated, target),
                               F.cross_entropy(-x, target))


def test_a_sum_beyond_float32_is_inf_as_in_torch():
    # each loss 2e38, finite; their sum, taken in double, rounds to inf
    x = torch.tensor([[1e38, -1e38]] * 4)
    target = torch.tensor([1, 1, 1, 1])
    want = F.cross_entropy(x, target, reduction="sum")
    assert torch.isinf(want)
    assert torch.isfinite(cross_entropy(x, target, reduction="none")).all()
    assert torch.equal(cross_entropy(x, target, reduction="sum"), want)


def test_results_own_their_memory():
    x = torch.randn(4, 3)
    losses = cross_entropy(x, torch.tensor([0, 1, 2, 0]), reduction="none")
    assert losses.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


# -- special values, as pysafemax's stable method documents -----------------

def test_special_values():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[0.0, -inf, 1.0],       # -inf masks its class
                      [0.0, -inf, 1.0],       # the label on a -inf logit: +inf
                      [0.0, inf, 1.0],        # +inf: nan
                      [nan, 0.0, 1.0],        # nan anywhere: nan
                      [1e30, 1e30, -1e30]],   # huge but finite: exact
                     requires_grad=True)
    target = torch.tensor([2, 1, 0, 2, 0])
    losses = cross_entropy(x, target, reduction="none")
    expected = pysafemax.softmax_loss(x.detach().numpy(), target.numpy(),
                                      reduction="none")
    np.testing.assert_array_equal(losses.detach().numpy(), expected)
    assert losses[1] == inf and losses[2].isnan() and losses[3].isnan()
    torch.testing.assert_close(losses[4], torch.tensor(np.log(2.0), dtype=torch.float32))
    # torch agrees on these rows, gradients included
    want = F.cross_entropy(x.detach(), target, reduction="none")
    torch.testing.assert_close(losses.detach(), want, equal_nan=True)
    losses[[0, 4]].sum().backward()
    xw = x.detach().clone().requires_grad_(True)
    F.cross_entropy(xw, target, reduction="none")[[0, 4]].sum().backward()
    torch.testing.assert_close(x.grad, xw.grad, equal_nan=True)
    # and only the rows that hold them are touched
    assert torch.isfinite(x.grad[[0, 4]]).all()


# -- z_loss -------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_z_loss_adds_the_squared_log_sum_exp(reduction, targets):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(12, 9, dtype=torch.float64, generator=gen) * 3
    weight = torch.rand(9, dtype=torch.float64, generator=gen) + 0.1
    if targets == "indices":
        target = torch.randint(0, 9, (12,), generator=gen)
        target[3] = -100
        # each position's z-term weighs what its loss weighs in torch's mean:
        # its class weight, 0 where ignored
        kept = target != -100
        position_weight = torch.where(kept, weight[target.clamp(min=0)],
                                      torch.zeros((), dtype=x.dtype))
    else:
        drawn = torch.randn(12, 9, dtype=torch.float64, generator=gen)
        target = torch.softmax(drawn, 1)
        position_weight = torch.ones(12, dtype=x.dtype)   # torch's mean: over N
    z = 1e-2

    def torch_z_loss(a, t, reduction, **kwargs):
        per_position = (F.cross_entropy(a, t, reduction="none", **kwargs)
                        + z * position_weight * torch.logsumexp(a, 1) ** 2)
        if reduction == "none":
            return per_position
        mean = reduction == "mean"
        return per_position.sum() / (position_weight.sum() if mean else 1)

    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": 0.1}
    want = loss_and_grad(torch_z_loss, x, target, kwargs)
    got = loss_and_grad(cross_entropy, x, target, {**kwargs, "z_loss": z})
    for ours, theirs in zip(got, want):
        assert_close(ours.numpy(), theirs.numpy(), TOLERANCE[np.float64], reduction)
    assert torch.autograd.gradcheck(
        lambda a: cross_entropy(a, target, z_loss=z, **kwargs),
        (x.clone().requires_grad_(True),))


# -- bad inputs ----------------------------------------------------------------

X, T = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("call, error, match", [
    (lambda: cross_entropy(X.numpy(), T), TypeError, "input must be a torch.Tensor"),
    (lambda: cross_entropy(X, [0, 1, 2, 0]), TypeError, "target must be a torch.Tensor"),
    (lambda: cross_entropy(X, T, weight=np.ones(3)), TypeError,
     "weight must be a torch.Tensor"),
    (lambda: cross_entropy(X.long(), T), TypeError,
     "float16, bfloat16, float32 or float64, got torch.int64"),
    (lambda: cross_entropy(X.to(torch.complex64), T), TypeError, "got torch.complex64"),
    (lambda: cross_entropy(X.to("meta"), T), ValueError, "on meta.*CPU only.*cpu()"),
    (lambda: cross_entropy(X, T.to("meta")), ValueError, "target is on meta"),
    (lambda: cross_entropy(X, T, weight=torch.ones(3, device="meta")), ValueError,
     "weight is on meta"),
    (lambda: cross_entropy(X.to_sparse(), T), ValueError, "sparse.*to_dense"),
    (lambda: cross_entropy(X, T, reduction="avg"), ValueError, "reduction must be one"),
    (lambda: cross_entropy(X, T, reduction="valid"), ValueError, "reduction must be one"),
    (lambda: cross_entropy(X, T, reduction=None), TypeError, "reduction must be a str"),
    (lambda: cross_entropy(X, T, label_smoothing=1.5), ValueError, r"\[0, 1\]"),
    (lambda: cross_entropy(X, T, ignore_index=1.5), TypeError, "ignore_index must be an"),
    (lambda: cross_entropy(X, T[:3]), ValueError, "labels must have shape"),
    (lambda: cross_entropy(X, torch.tensor([0, 1, 3, 0])), ValueError,
     r"labels\[2\] = 3 is out of range"),
    (lambda: cross_entropy(X, T.bool()), TypeError, "labels must be integer"),
    (lambda: cross_entropy(X, T, weight=torch.ones(4)), ValueError, r"shape \(3,\)"),
    (lambda: cross_entropy(X, torch.rand(4, 3), ignore_index=0), ValueError,
     "probability targets take the default -100"),
    (lambda: cross_entropy(X, T, z_loss=-1e-4), ValueError, "z_loss must be a finite"),
    (lambda: cross_entropy(X, T, z_loss="1e-4"), TypeError, "z_loss must be a real"),
    (lambda: cross_entropy(X, T, weight=torch.ones(3, requires_grad=True)), ValueError,
     "weight requires grad.*weight.detach()"),
    (lambda: cross_entropy(X, torch.rand(4, 3, requires_grad=True)), ValueError,
     "target requires grad"),
])
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_weight_that_requires_grad_is_fine_without_a_graph():
    with torch.no_grad():
        loss = cross_entropy(X, T, weight=torch.ones(3, requires_grad=True))
    torch.testing.assert_close(loss, F.cross_entropy(X, T))


# -- optional torch ----------------------------------------------------------

def child(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_importing_pysafemax_does_not_import_torch():
    done = child("import sys, pysafemax, pysafemax.reference, pysafemax.tools.diagnose; "
                 "print('torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_without_torch_the_import_error_says_how_to_install_it():
    # sys.modules["torch"] = None makes `import torch` fail as if absent
    done = child("import sys; sys.modules['torch'] = None\n"
                 "import pysafemax\n"
                 "try:\n    import pysafemax.torch\n"
                 "except ImportError as e:\n    print(e)\n")
    assert done.returncode == 0, done.stderr
    assert "pysafemax.torch needs PyTorch" in done.stdout
    assert "pip install torch" in done.stdout
