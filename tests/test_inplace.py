"""out=logits: the gradient written over the logits, which are consumed.

The results must be those of a separate out= buffer, bit for bit, on every
method, option, dtype and layout, streamed or not; the extra memory must stay
one block of logits; every other overlap is still refused.
"""
import tracemalloc

import numpy as np
import pytest

import pysafemax
from pysafemax import _core

OPTIONS = [{}, {"reduction": "none"}, {"reduction": "sum", "label_smoothing": 0.2},
           {"weight": "random", "ignore_index": 2}, {"z_loss": 1e-3},
           {"reduction": "valid", "check": True}]


def problem(dtype, shape=(37, 41), axis=1, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    x.reshape(-1)[::97] = np.inf
    x.reshape(-1)[5::101] = -np.inf
    positions = shape[:axis] + shape[axis + 1:]
    labels = rng.integers(0, shape[axis], positions)
    return x, labels


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_out_logits_gives_the_separate_buffers_results(dtype, method, options):
    x, labels = problem(dtype)
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = np.random.default_rng(1).random(x.shape[1])
    if options.get("check") and dtype == np.float16:
        options.pop("check")
    want_loss, want_grad = pysafemax.softmax_loss(x, labels, method=method,
                                                  return_grad=True, **options)
    logits = x.copy()
    loss, grad = pysafemax.softmax_loss(logits, labels, method=method, return_grad=True,
                                        out=logits, **options)
    assert grad is logits
    np.testing.assert_array_equal(loss, want_loss)
    assert grad.tobytes() == want_grad.tobytes()


@pytest.mark.parametrize("shape, axis", [((6, 9, 5), 1), ((4, 3, 7), 2), ((11,), 0)])
def test_other_class_axes_and_a_view_of_the_same_memory(shape, axis):
    x, labels = problem(np.float32, shape, axis)
    want = pysafemax.softmax_loss(x, labels, axis=axis, return_grad=True)
    logits = x.copy()
    view = logits[...]                   # another object, the same memory
    loss, grad = pysafemax.softmax_loss(logits, labels, axis=axis, return_grad=True,
                                        out=view)
    assert grad is view
    np.testing.assert_array_equal(loss, want[0])
    assert logits.tobytes() == want[1].tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_streamed_blocks_copy_each_block_before_overwriting_it(monkeypatch, dtype):
    x, labels = problem(dtype, (300, 70), seed=3)
    want = pysafemax.softmax_loss(x, labels, return_grad=True, reduction="none",
                                  return_lse=True)
    monkeypatch.setattr(_core, "_STREAM_BYTES", 4096)
    logits = x.copy()
    losses, grad, lse = pysafemax.softmax_loss(logits, labels, return_grad=True,
                                               reduction="none", return_lse=True,
                                               out=logits)
    assert grad is logits
    for got, expected in zip((losses, grad, lse), want):
        assert got.tobytes() == expected.tobytes()


def test_the_extra_memory_is_one_block_not_a_second_array(monkeypatch):
    monkeypatch.setattr(_core, "_STREAM_BYTES", 1 << 20)
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2048, 2048), dtype=np.float32)    # 16 MiB
    labels = rng.integers(0, 2048, 2048)
    tracemalloc.start()
    try:
        pysafemax.softmax_loss(logits, labels, return_grad=True, out=logits)
        _, in_place = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pysafemax.softmax_loss(rng.standard_normal((2048, 2048), dtype=np.float32),
                               labels, return_grad=True)
        _, separate = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert in_place <= 2 * (1 << 20) + (1 << 16), in_place     # a block and change
    assert separate >= 2 * logits.nbytes                       # logits and gradient


def test_every_other_overlap_is_still_refused():
    n, c = 8, 5
    buffer = np.zeros(n * c + c, np.float32)
    logits = buffer[:n * c].reshape(n, c)
    shifted = buffer[c:].reshape(n, c)
    labels = np.zeros(n, np.int64)
    with pytest.raises(ValueError, match="out must not overlap the logits"):
        pysafemax.softmax_loss(logits, labels, return_grad=True, out=shifted)
    wide = np.zeros((n, c), np.float64)
    with pytest.raises(ValueError, match="out must not overlap the labels"):
        pysafemax.softmax_loss(wide, wide.view(np.int64)[:, 0], return_grad=True, out=wide)
    weight = np.ones(c)
    with pytest.raises(ValueError, match="out must not overlap the weight"):
        pysafemax.softmax_loss(wide, labels, weight=wide[0], return_grad=True, out=wide)
    with pytest.raises(ValueError, match="pass return_grad=True"):
        pysafemax.softmax_loss(logits, labels, out=logits)
    assert weight.sum() == c


def test_logits_it_cannot_overwrite_in_place_are_refused_as_before():
    x, labels = problem(np.float32)
    strided = np.zeros((x.shape[0], 2 * x.shape[1]), np.float32)[:, ::2]
    strided[...] = x
    with pytest.raises(ValueError, match="C-contiguous"):
        pysafemax.softmax_loss(strided, labels, return_grad=True, out=strided)
    swapped = x.astype(x.dtype.newbyteorder())
    with pytest.raises(TypeError, match="out must have the logits' dtype"):
        pysafemax.softmax_loss(swapped, labels, return_grad=True, out=swapped)


def test_the_gradient_over_the_logits_is_torchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 300)) * 4
    labels = rng.integers(0, 300, 64)
    xt = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.cross_entropy(xt, torch.tensor(labels),
                                             label_smoothing=0.1)
    want_grad, = torch.autograd.grad(want, xt)
    logits = x.copy()
    loss, grad = pysafemax.softmax_loss(logits, labels, label_smoothing=0.1,
                                        return_grad=True, out=logits)
    assert grad is logits
    assert loss == pytest.approx(want.item(), rel=1e-12)
    np.testing.assert_allclose(logits, want_grad.numpy(), rtol=1e-10, atol=1e-15)
