"""z_loss: PaLM's z * lse**2 per counted position, on softmax_loss and the
partial states.

Against torch (F.cross_entropy plus the z-term through autograd) where it is
installed, against pysafemax.reference (check=True and the twin) for every
method, and the partials against one call.
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import reference

Z = 1e-2


def torch_loss_and_grad(torch, x, labels, z, reduction, weight=None, ignore_index=-100,
                        label_smoothing=0.0):
    """F.cross_entropy plus z * v * logsumexp**2, v the position's weight in
    the mean (w[label], or 1; 0 if ignored), reduced as torch reduces; the
    gradient of its sum by autograd, in float64."""
    F = torch.nn.functional
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    yt = torch.tensor(labels)
    wt = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    probabilities = np.asarray(labels).dtype.kind == "f"
    main = F.cross_entropy(xt, yt, weight=wt, reduction=reduction,
                           label_smoothing=label_smoothing,
                           **({} if probabilities else {"ignore_index": ignore_index}))
    lse = torch.logsumexp(xt, 1)
    if probabilities:
        v = torch.ones(lse.shape, dtype=torch.float64)
    else:
        counted = yt != ignore_index
        w = torch.ones(xt.shape[1], dtype=torch.float64) if wt is None else wt
        v = torch.where(counted, w[torch.where(counted, yt, 0)], 0.0)
    term = z * v * lse ** 2
    if reduction == "mean":
        total = main + term.sum() / (v.sum() if not probabilities else lse[..., 0].numel())
    elif reduction == "sum":
        total = main + term.sum()
    else:
        total = main + term
    grad, = torch.autograd.grad(total.sum(), xt)
    return total.detach().numpy(), grad.numpy()


TORCH_CASES = [
    {"reduction": "mean"}, {"reduction": "sum"}, {"reduction": "none"},
    {"reduction": "mean", "weight": "random"}, {"reduction": "none", "weight": "random"},
    {"reduction": "mean", "label_smoothing": 0.1},
    {"reduction": "mean", "weight": "random", "label_smoothing": 0.3},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [1, 3, 10, 16, 17, 100, 2049])
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_matches_torch_cross_entropy_plus_the_z_term(dtype, classes, case):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(classes)
    x = (rng.standard_normal((41, classes)) * 4).astype(dtype)
    labels = rng.integers(0, classes, 41)
    labels[::7] = -100
    case = dict(case)
    if case.get("weight") == "random":
        case["weight"] = rng.random(classes) + 0.1
    loss, grad = pysafemax.softmax_loss(x, labels, z_loss=Z, ignore_index=-100,
                                        return_grad=True, **case)
    want_loss, want_grad = torch_loss_and_grad(torch, x, labels, Z, **case)
    tol = {np.float32: 2e-5, np.float64: 1e-11}[dtype]
    np.testing.assert_allclose(np.asarray(loss, np.float64), want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_targets_and_extra_axes_match_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9, 4)) * 3
    probs = rng.random((5, 9, 4))
    probs /= probs.sum(axis=1, keepdims=True)
    loss, grad = pysafemax.softmax_loss(x, probs, z_loss=0.5, reduction=reduction,
                                        return_grad=True)
    F = torch.nn.functional
    xt = torch.tensor(x, requires_grad=True)
    main = F.cross_entropy(xt, torch.tensor(probs), reduction=reduction)
    term = 0.5 * torch.logsumexp(xt, 1) ** 2
    total = main + (term.mean() if reduction == "mean" else term)
    want_grad, = torch.autograd.grad(total.sum(), xt)
    np.testing.assert_allclose(loss, total.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad.numpy(), rtol=1e-11, atol=1e-14)


OPTION_SETS = [{}, {"weight": "random"}, {"ignore_index": 1}, {"label_smoothing": 0.2},
               {"reduction": "none"}, {"reduction": "valid"}, {"reduction": "batch_size"}]


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTION_SETS, ids=str)
def test_every_method_agrees_with_the_reference(method, dtype, options):
    rng = np.random.default_rng(2)
    for classes in (2, 9, 33, 1000):
        x = (rng.standard_normal((19, classes)) * 6).astype(dtype)
        x[3] = 60.0                     # naive's exp stays finite in float32
        x[4, 0] = 100.0                 # naive's does not: inf lse
        x[5] = -np.inf
        labels = rng.integers(0, classes, 19)
        opts = dict(options)
        if opts.get("weight") == "random":
            opts["weight"] = rng.random(classes)
        got = pysafemax.softmax_loss(x, labels, method=method, z_loss=0.25,
                                     return_grad=True, check=True, **opts)
        want = reference.softmax_loss(x, labels, method=method, z_loss=0.25,
                                      return_grad=True, **opts)
        tol = pysafemax.check_tolerance(x.dtype, classes)
        for ours, theirs in zip(got, want):
            ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
            finite = np.isfinite(theirs)
            np.testing.assert_array_equal(ours[~finite & ~np.isnan(theirs)],
                                          theirs[~finite & ~np.isnan(theirs)])
            assert np.all(np.abs(ours[finite] - theirs[finite])
                          <= tol * (1 + np.abs(theirs[finite])))


def test_naives_z_loss_is_inf_once_its_sum_overflows():
    # row 0: exp(100) is inf in float32, so naive's p[1] = 1 / inf = 0 (its
    # main term clamps at 87.3365) and its lse is inf
    x = np.array([[100.0, 0.0], [1.0, 2.0]], np.float32)
    labels = np.array([1, 1])
    losses = pysafemax.softmax_loss(x, labels, method="naive", z_loss=Z, reduction="none")
    assert losses[0] == np.inf and np.isfinite(losses[1])
    stable = pysafemax.softmax_loss(x, labels, z_loss=Z, reduction="none")
    lse = 100 + np.log1p(np.exp(-100.0))
    assert stable[0] == pytest.approx(lse + Z * lse ** 2, rel=1e-6)


def test_zero_z_loss_changes_no_bit():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 50)) * 5).astype(np.float32)
    labels = rng.integers(0, 50, 64)
    for method in pysafemax.METHODS:
        plain = pysafemax.softmax_loss(x, labels, method=method, return_grad=True)
        for zero in (0, 0.0, np.float32(0.0)):
            same = pysafemax.softmax_loss(x, labels, method=method, return_grad=True,
                                          z_loss=zero)
            assert same[0] == plain[0]
            np.testing.assert_array_equal(same[1], plain[1])


def test_ignored_positions_and_zero_weights_add_no_z_term():
    # (an ignored row is not read: its inf lse adds nothing)
    x = np.array([[np.inf, 0.0], [1.0, 2.0], [50.0, 1.0]])
    labels = np.array([-100, 1, 0])
    weight = np.array([0.0, 1.0])        # label 0 weighs nothing
    loss, grad = pysafemax.softmax_loss(x, labels, ignore_index=-100, weight=weight,
                                        z_loss=Z, reduction="sum", return_grad=True)
    lse = np.log(np.exp(1.0) + np.exp(2.0))
    assert loss == pytest.approx(lse - 2.0 + Z * lse ** 2, rel=1e-14)
    np.testing.assert_array_equal(grad[0], [0.0, 0.0])
    np.testing.assert_array_equal(grad[2], [0.0, 0.0])


@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_partials_carry_the_z_loss_of_whole_rows(method):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((23, 70)) * 5
    labels = rng.integers(0, 70, 23)
    cuts = [0, 13, 40, 70]
    parts = [pysafemax.softmax_partials(x[:, a:b], labels, class_offset=a, num_classes=70,
                                        method=method, z_loss=Z)
             for a, b in zip(cuts, cuts[1:])]
    whole = pysafemax.combine_partials(*parts)
    want_loss, want_grad = pysafemax.softmax_loss(x, labels, method=method, z_loss=Z,
                                                  return_grad=True)
    assert pysafemax.loss_from_partials(whole) == pytest.approx(want_loss, rel=1e-13)
    grads = [pysafemax.grad_from_partials(whole, x[:, a:b], labels, class_offset=a)
             for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_allclose(np.concatenate(grads, axis=1), want_grad, rtol=1e-12,
                               atol=1e-16)
    with pytest.raises(ValueError, match="differs from parts\\[0\\] in its z_loss"):
        pysafemax.combine_partials(parts[0], pysafemax.softmax_partials(
            x[:, 13:40], labels, class_offset=13, num_classes=70, method=method))
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        pysafemax.softmax_partials(x, labels, z_loss=-1.0)
