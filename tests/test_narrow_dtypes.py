"""bfloat16 (ml_dtypes', when installed) and float16 logits, computed in
float32 and returned in their own dtype, and loss_dtype= for per-position
results in another float dtype."""
import numpy as np
import pytest

import pysafemax

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
OPTIONS = [{}, {"reduction": "sum"}, {"weight": "random", "ignore_index": 1},
           {"label_smoothing": 0.1, "z_loss": 1e-3}]


def problem(dtype, shape=(23, 37), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 6).astype(dtype)
    x.reshape(-1)[::41] = np.inf
    x.reshape(-1)[3::43] = -np.inf
    return x, rng.integers(0, shape[1], shape[0])


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_bfloat16_is_float32_arithmetic_rounded_once(method, options):
    x, labels = problem(BF16)
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = np.random.default_rng(1).random(x.shape[1])
    wide = x.astype(np.float32)          # exact: bfloat16 is float32's top half
    for reduction in ("none", options.pop("reduction", "mean")):
        got = pysafemax.softmax_loss(x, labels, method=method, reduction=reduction,
                                     return_grad=True, return_lse=True, **options)
        want = pysafemax.softmax_loss(wide, labels, method=method, reduction=reduction,
                                      return_grad=True, return_lse=True, **options)
        if reduction == "none":
            assert got[0].dtype == BF16
            assert got[0].tobytes() == want[0].astype(BF16).tobytes()
        else:
            assert got[0] == want[0] or (np.isnan(got[0]) and np.isnan(want[0]))
        for ours, theirs in zip(got[1:], want[1:]):
            assert ours.dtype == BF16
            assert ours.tobytes() == theirs.astype(BF16).tobytes()


def test_bfloat16_probability_targets_softmax_and_logsumexp():
    x, _ = problem(BF16, seed=2)
    rng = np.random.default_rng(3)
    probs = rng.random(x.shape).astype(BF16)
    loss, grad = pysafemax.softmax_loss(x, probs, return_grad=True)
    want = pysafemax.softmax_loss(x.astype(np.float32), probs.astype(np.float32),
                                  return_grad=True)
    assert loss == want[0] or (np.isnan(loss) and np.isnan(want[0]))
    assert grad.tobytes() == want[1].astype(BF16).tobytes()
    for function in (pysafemax.softmax, pysafemax.log_softmax):
        ours = function(x)
        assert ours.dtype == BF16
        assert ours.tobytes() == function(x.astype(np.float32)).astype(BF16).tobytes()
    lse = pysafemax.logsumexp(x)
    assert lse.dtype == BF16
    assert lse.tobytes() == pysafemax.logsumexp(x.astype(np.float32)).astype(BF16).tobytes()


def test_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((64, 100)) * 3).astype(BF16)
    labels = torch.tensor(rng.integers(0, 100, 64))
    losses, grad = pysafemax.softmax_loss(x, labels.numpy(), reduction="none",
                                          return_grad=True)
    # torch in float32 on the same values, rounded to bfloat16 once, as
    # pysafemax computes: within one bfloat16 ulp (a float32 difference can
    # straddle a rounding boundary)
    xt = torch.tensor(x.astype(np.float32), requires_grad=True)
    want = F.cross_entropy(xt, labels, reduction="none")
    want_grad, = torch.autograd.grad(want.sum(), xt)
    ulp = 2.0 ** -7
    np.testing.assert_allclose(losses.astype(np.float32),
                               want.detach().numpy().astype(BF16).astype(np.float32),
                               rtol=ulp, atol=0)
    np.testing.assert_allclose(grad.astype(np.float32),
                               want_grad.numpy().astype(BF16).astype(np.float32),
                               rtol=ulp, atol=1e-30)
    # torch's own bfloat16 path rounds its log-softmax to bfloat16 before the
    # exp: a few of its ulps from the once-rounded result
    xb = torch.tensor(x.astype(np.float32)).to(torch.bfloat16).requires_grad_(True)
    own = F.cross_entropy(xb, labels, reduction="none")
    own_grad, = torch.autograd.grad(own.sum(), xb)
    np.testing.assert_allclose(grad.astype(np.float32), own_grad.float().numpy(),
                               rtol=8 * ulp, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_loss_dtype_keeps_narrow_losses_as_computed(dtype):
    x, labels = problem(dtype, seed=5)
    wide = x.astype(np.float32)
    losses, lse = pysafemax.softmax_loss(x, labels, reduction="none", return_lse=True,
                                         loss_dtype=np.float32)
    want_losses, want_lse = pysafemax.softmax_loss(wide, labels, reduction="none",
                                                   return_lse=True)
    assert losses.dtype == np.float32 and lse.dtype == np.float32
    assert losses.tobytes() == want_losses.tobytes()
    assert lse.tobytes() == want_lse.tobytes()
    narrow = pysafemax.softmax_loss(x, labels, reduction="none")
    assert narrow.dtype == dtype


def test_loss_dtype_of_every_float_kind():
    x, labels = problem(np.float32, seed=6)
    plain = pysafemax.softmax_loss(x, labels, reduction="none")
    for dtype in (np.float16, np.float64, "float32", ">f8", BF16):
        got = pysafemax.softmax_loss(x, labels, reduction="none", loss_dtype=dtype)
        assert got.dtype == np.dtype(dtype).newbyteorder("=") or got.dtype == BF16
        with np.errstate(over="ignore"):
            assert got.tobytes() == plain.astype(got.dtype).tobytes()
