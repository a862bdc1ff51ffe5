"""method="stable" against torch.nn.functional.cross_entropy, forward and
backward, on random combinations of every option.  Skipped without torch."""
import numpy as np
import pytest

import pysafemax

torch = pytest.importorskip("torch")
F = torch.nn.functional

# float32 results may differ by torch's own float32 rounding (its log_softmax
# works in float32); float64 results by accumulated double rounding.
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-11}


def random_case(seed):
    rng = np.random.default_rng(seed)
    dtype = [np.float32, np.float64][seed % 2]
    classes = int(rng.choice([1, 2, 3, 5, 8, 17, 33]))
    spatial = [tuple(), tuple(), (int(rng.integers(1, 4)),),
               (int(rng.integers(1, 4)), int(rng.integers(1, 3)))][seed % 4]
    batched = not (seed % 7 == 3 and not spatial)
    shape = ((int(rng.integers(0 if seed % 11 == 0 else 1, 6)),) if batched else ()) \
        + (classes,) + spatial
    x = (rng.standard_normal(shape) * rng.choice([0.1, 3.0, 30.0])).astype(dtype)
    options = {"reduction": str(rng.choice(["none", "sum", "mean"]))}
    if rng.random() < 0.5:
        options["weight"] = rng.uniform(0.1, 2.0, classes)
    if rng.random() < 0.4:
        options["label_smoothing"] = float(rng.choice([0.0, 0.1, 0.5, 1.0]))
    position_shape = shape[:1] + shape[2:] if batched else ()
    if rng.random() < 0.25:
        probs = rng.random(shape)
        labels = (probs / probs.sum(axis=1 if batched else 0, keepdims=True)).astype(dtype)
    else:
        labels = rng.integers(0, classes, position_shape)
        if rng.random() < 0.5:
            ignore = int(rng.choice([-100, 0, classes - 1]))
            options["ignore_index"] = ignore
            mask = rng.random(position_shape) < (1.0 if seed % 13 == 0 else 0.3)
            labels = np.where(mask, ignore, labels)
    return x, labels, options


def torch_cross_entropy(x, labels, options):
    xt = torch.tensor(x, requires_grad=True)
    target = torch.tensor(labels)
    kwargs = {"reduction": options["reduction"],
              "label_smoothing": options.get("label_smoothing", 0.0)}
    if "weight" in options:
        kwargs["weight"] = torch.tensor(options["weight"], dtype=xt.dtype)
    if "ignore_index" in options:
        kwargs["ignore_index"] = options["ignore_index"]
    loss = F.cross_entropy(xt, target, **kwargs)
    loss.backward(torch.ones_like(loss))
    return loss.detach().numpy(), xt.grad.numpy()


def assert_close(ours, theirs, tol, what):
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, what
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=what)
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, equal_nan=True,
                               err_msg=what)


@pytest.mark.parametrize("seed", range(0, 240, 2))
def test_float32_is_within_float32_rounding_of_torch_in_float64(seed):
    # torch in float64 on the same float32 values is the exact answer to a
    # few 1e-16; ours, in float32, must be within a few float32 roundings.
    x, labels, options = random_case(seed)
    assert x.dtype == np.float32
    wide_labels = labels.astype(np.float64) if labels.dtype.kind == "f" else labels
    want_loss, want_grad = torch_cross_entropy(x.astype(np.float64), wide_labels, options)
    loss, grad = pysafemax.softmax_loss(x, labels, return_grad=True, **options)
    tol = 2.0 ** -22
    assert_close(loss, want_loss, tol, f"{x.shape} {options} loss")
    assert_close(grad, want_grad, tol, f"{x.shape} {options} grad")


@pytest.mark.parametrize("seed", range(240))
def test_stable_matches_torch_cross_entropy(seed):
    x, labels, options = random_case(seed)
    want_loss, want_grad = torch_cross_entropy(x, labels, options)
    loss, grad = pysafemax.softmax_loss(x, labels, return_grad=True, **options)
    what = f"shape {x.shape} {x.dtype} {options}"
    tol = TOLERANCE[x.dtype.type]
    assert_close(loss, want_loss, tol, what + " loss")
    assert_close(grad, want_grad, tol, what + " grad")
    assert grad.dtype == x.dtype


@pytest.mark.parametrize("seed", range(0, 240, 7))
def test_any_class_axis_matches_torch_with_that_axis_moved(seed):
    x, labels, options = random_case(seed)
    if x.ndim < 2:
        pytest.skip("one axis only")
    want_loss, want_grad = torch_cross_entropy(x, labels, options)
    tol = TOLERANCE[x.dtype.type]
    for axis in range(-x.ndim, x.ndim):
        # Moving the class axis leaves the position axes in order, so class
        # indices and per-position losses keep their layout.
        moved = np.moveaxis(x, 1, axis)
        if labels.dtype.kind == "f":
            labels_for_axis = np.moveaxis(labels, 1, axis)
        else:
            labels_for_axis = labels
        loss, grad = pysafemax.softmax_loss(moved, labels_for_axis, axis=axis,
                                            return_grad=True, **options)
        assert_close(loss, want_loss, tol, f"axis {axis} loss")
        assert_close(np.moveaxis(grad, axis, 1), want_grad, tol, f"axis {axis} grad")
