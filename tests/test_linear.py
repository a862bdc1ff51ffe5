"""linear_cross_entropy (issue 15): the loss of hidden @ weight.T + bias from
chunks of the vocabulary equals that of the materialized logits through
softmax_loss, for every option, and never holds the N x V logits.

The materialized call (softmax_loss on the float64 logits, and its gradient
pushed through the linear layer in float64) is the oracle.
"""
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pysafemax
from pysafemax import _linear, check_tolerance

RNG = np.random.default_rng(15)
IGNORE = -100

try:
    import ml_dtypes
except ImportError:
    ml_dtypes = None


def _problem(rows, features, classes, dtype=np.float64, bias=True, ignored=(), seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((rows, features)).astype(dtype)
    weight = (rng.standard_normal((classes, features)) / np.sqrt(features)).astype(dtype)
    b = rng.standard_normal(classes).astype(dtype) if bias else None
    labels = rng.integers(0, classes, rows)
    labels[list(ignored)] = IGNORE
    return hidden, weight, b, labels


def _oracle(hidden, weight, bias, labels, /, **options):
    """softmax_loss on the materialized float64 logits, and its gradient
    through the linear layer: (loss, (d_hidden, d_weight[, d_bias]))."""
    h, w = hidden.astype(np.float64), weight.astype(np.float64)
    logits = h @ w.T
    if bias is not None:
        logits += bias.astype(np.float64)
    loss, g = pysafemax.softmax_loss(logits, labels, return_grad=True, **options)
    grads = (g @ w, g.T @ h) + (() if bias is None else (g.sum(axis=0),))
    return loss, grads


def _close(got, expected, rtol, what=""):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = 1.0 + np.max(np.abs(expected), initial=0.0, where=np.isfinite(expected))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def _check(hidden, weight, bias, labels, rtol, options, chunk_size):
    oracle_loss, oracle_grads = _oracle(hidden, weight, bias, labels, **options)
    loss = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                          chunk_size=chunk_size, **options)
    _close(loss, oracle_loss, rtol, "forward loss")
    loss, grads = pysafemax.linear_cross_entropy(
        hidden, weight, labels, bias=bias, chunk_size=chunk_size, return_grad=True,
        **options)
    _close(loss, oracle_loss, rtol, "loss with the gradient")
    assert len(grads) == len(oracle_grads)
    for name, got, expected, source in zip(("d_hidden", "d_weight", "d_bias"), grads,
                                           oracle_grads, (hidden, weight, bias)):
        assert got.dtype == source.dtype and got.shape == source.shape, name
        _close(got, expected, rtol, name)
    return loss


OPTIONS = [dict(), dict(ignore_index=IGNORE), dict(label_smoothing=0.1),
           dict(class_weight=True), dict(class_weight=True, ignore_index=IGNORE,
                                         label_smoothing=0.3)]


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_the_materialized_logits(method, reduction, options, dtype):
    hidden, weight, bias, labels = _problem(13, 7, 37, dtype, ignored=[2, 5], seed=1)
    options = dict(options, method=method, reduction=reduction)
    if options.pop("class_weight", None):
        options["weight"] = RNG.uniform(0.2, 2.0, 37)
    if "ignore_index" not in options:
        labels[[2, 5]] = [0, 36]
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    # the oracle names class weights weight=, linear_cross_entropy class_weight=
    ours = dict(options)
    if "weight" in ours:
        ours["class_weight"] = ours.pop("weight")
    oracle_loss, oracle_grads = _oracle(hidden, weight, bias, labels, **options)
    for chunk_size in (1, 5, 37, 100):
        loss, grads = pysafemax.linear_cross_entropy(
            hidden, weight, labels, bias=bias, chunk_size=chunk_size, return_grad=True,
            **ours)
        forward = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                                 chunk_size=chunk_size, **ours)
        if reduction == "none":
            assert loss.dtype == dtype and forward.dtype == dtype
        else:
            assert type(loss) is float and type(forward) is float
        _close(forward, oracle_loss, rtol, f"loss, chunk_size {chunk_size}")
        _close(loss, oracle_loss, rtol, f"loss with grad, chunk_size {chunk_size}")
        for got, expected in zip(grads, oracle_grads):
            assert got.dtype == dtype
            _close(got, expected, rtol, f"gradient, chunk_size {chunk_size}")


def test_float32_agrees_with_softmax_loss_on_its_own_logits_within_check_tolerance():
    # H = 1: each logit is one product and one sum, rounded the same way
    # whether the logits are made whole or a chunk at a time, so only the
    # merge of the partials may differ.
    hidden, weight, bias, labels = _problem(50, 1, 301, np.float32, ignored=[3])
    hidden *= 20
    for method in pysafemax.METHODS:
        for smoothing in (0.0, 0.25):
            options = dict(method=method, ignore_index=IGNORE, label_smoothing=smoothing,
                           reduction="none")
            expected = pysafemax.softmax_loss(hidden @ weight.T + bias, labels, **options)
            got = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                                 chunk_size=64, **options)
            tol = check_tolerance(np.float32, 301)
            np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(1, 3, 5), (1, 1, 1), (3, 1, 2), (5, 2, 1),
                                   (17, 9, 64), (17, 9, 63), (2, 33, 97)])
@pytest.mark.parametrize("chunk_size", [1, 2, 7, 64, 10**6, None])
def test_odd_sizes_and_chunks(shape, chunk_size):
    rows, features, classes = shape
    hidden, weight, bias, labels = _problem(rows, features, classes, seed=rows * classes)
    _check(hidden, weight, bias, labels, 1e-12, dict(reduction="mean"), chunk_size)
    _check(hidden, weight, None, labels, 1e-12, dict(reduction="sum"), chunk_size)


def test_all_ignored():
    hidden, weight, bias, labels = _problem(4, 3, 10, ignored=[0, 1, 2, 3])
    for method in pysafemax.METHODS:
        for smoothing in (0.0, 0.2):
            options = dict(method=method, ignore_index=IGNORE, label_smoothing=smoothing)
            mean, grads = pysafemax.linear_cross_entropy(
                hidden, weight, labels, bias=bias, return_grad=True, chunk_size=3,
                **options)
            assert np.isnan(mean)
            assert np.isnan(pysafemax.softmax_loss(hidden @ weight.T + bias, labels,
                                                   **options))
            for g in grads:
                assert not np.any(g)   # ignored positions add no gradient
            assert pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                                  reduction="sum", **options) == 0.0


def test_no_positions():
    hidden, weight, bias, labels = _problem(0, 3, 10)
    loss, (d_hidden, d_weight, d_bias) = pysafemax.linear_cross_entropy(
        hidden, weight, labels, bias=bias, return_grad=True)
    assert np.isnan(loss)
    assert d_hidden.shape == (0, 3) and not d_weight.any() and not d_bias.any()


@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_special_values_as_softmax_loss(method):
    # A -inf bias masks classes out; large logits make naive overflow and
    # maxsub clamp.  H = 1 keeps the logits bit-identical both ways.
    hidden, weight, bias, labels = _problem(8, 1, 40, np.float32)
    hidden[:4] *= 1000
    bias[::3] = -np.inf
    labels[5] = 3    # a masked-out label: an infinite loss
    for smoothing in (0.0, 0.1):
        options = dict(method=method, label_smoothing=smoothing, reduction="none")
        with np.errstate(all="ignore"):
            logits = hidden @ weight.T + bias
        expected, g = pysafemax.softmax_loss(logits, labels, return_grad=True, **options)
        got, (d_hidden, d_weight, d_bias) = pysafemax.linear_cross_entropy(
            hidden, weight, labels, bias=bias, chunk_size=7, return_grad=True, **options)
        tol = check_tolerance(np.float32, 40)
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
        np.testing.assert_array_equal(np.isnan(d_bias), np.isnan(g.sum(axis=0)))


@pytest.mark.parametrize("narrow", ["float16", "bfloat16"])
def test_narrow_dtypes_compute_in_float32(narrow):
    if narrow == "bfloat16":
        if ml_dtypes is None:
            pytest.skip("ml_dtypes is not installed")
        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(np.float16)
    hidden, weight, bias, labels = _problem(9, 6, 30, np.float32)
    hidden, weight, bias = (a.astype(dtype) for a in (hidden, weight, bias))
    # the oracle from the same rounded inputs, in float64
    oracle_loss, oracle_grads = _oracle(hidden, weight, bias, labels, reduction="none")
    loss, grads = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                                 reduction="none", chunk_size=8,
                                                 return_grad=True)
    assert loss.dtype == dtype
    rtol = 1e-2
    _close(loss, oracle_loss, rtol)
    for got, expected in zip(grads, oracle_grads):
        assert got.dtype == dtype
        _close(got, expected, rtol)
    mean = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias)
    _close(mean, np.mean(oracle_loss), 1e-5)   # computed in float32, a float


def test_mixed_dtypes_compute_in_the_wider():
    hidden, weight, bias, labels = _problem(6, 4, 11)
    hidden32 = hidden.astype(np.float32)
    loss, (d_hidden, d_weight, d_bias) = pysafemax.linear_cross_entropy(
        hidden32, weight, labels, bias=bias, reduction="none", return_grad=True)
    assert loss.dtype == np.float64
    assert (d_hidden.dtype, d_weight.dtype, d_bias.dtype) == (np.float32, np.float64,
                                                              np.float64)
    oracle_loss, _ = _oracle(hidden32, weight, bias, labels, reduction="none")
    _close(loss, oracle_loss, 1e-12)


def test_lists_and_other_layouts():
    hidden, weight, bias, labels = _problem(5, 4, 9)
    expected = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias)
    assert pysafemax.linear_cross_entropy(hidden.tolist(), weight.tolist(),
                                          labels.tolist(), bias=bias.tolist()) \
        == pytest.approx(expected, rel=1e-14)
    # a transposed (H, V) array's view as weight, Fortran-order hidden,
    # big-endian bias, int8 labels
    got = pysafemax.linear_cross_entropy(
        np.asfortranarray(hidden), np.ascontiguousarray(weight.T).T, labels.astype(np.int8),
        bias=bias.astype(">f8"), chunk_size=4)
    assert got == pytest.approx(expected, rel=1e-14)


def test_inputs_are_not_written():
    hidden, weight, bias, labels = _problem(6, 4, 11, np.float32, ignored=[1])
    class_weight = RNG.uniform(0.5, 2, 11)
    arrays = (hidden, weight, bias, labels, class_weight)
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False      # a write raises
    for method in pysafemax.METHODS:
        pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                       class_weight=class_weight, ignore_index=IGNORE,
                                       label_smoothing=0.1, method=method,
                                       return_grad=True, chunk_size=3)
    for a, copy in zip(arrays, copies):
        np.testing.assert_array_equal(a, copy)


def test_threads_give_the_same_loss():
    hidden, weight, bias, labels = _problem(64, 8, 300, np.float32)
    one = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias, threads=1)
    two = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias, threads=2)
    assert one == two


def test_z_loss():
    hidden, weight, bias, labels = _problem(6, 4, 11, ignored=[2])
    assert pysafemax.linear_cross_entropy(hidden, weight, labels, z_loss=0.0,
                                          ignore_index=IGNORE) == \
        pysafemax.linear_cross_entropy(hidden, weight, labels, ignore_index=IGNORE)
    weights = RNG.uniform(0.5, 2.0, 11)
    for method in pysafemax.METHODS:
        for reduction in ("mean", "none", "sum"):
            for smoothing in (0.0, 0.2):
                if method != "stable" and smoothing:
                    continue
                options = dict(z_loss=1e-2, method=method, reduction=reduction,
                               label_smoothing=smoothing, ignore_index=IGNORE)
                _check(hidden, weight, bias, labels, 1e-12, options, 4)
                loss = pysafemax.linear_cross_entropy(
                    hidden, weight, labels, bias=bias, class_weight=weights,
                    chunk_size=3, **options)
                oracle, _ = _oracle(hidden, weight, bias, labels, weight=weights,
                                    **options)
                _close(loss, oracle, 1e-12)
    # naive and maxsub with smoothing take their own second pass, which has
    # no z-term
    with pytest.raises(ValueError, match=r"z_loss=0.1 with method='maxsub' and "
                                         r"label_smoothing=0.2 is not supported"):
        pysafemax.linear_cross_entropy(hidden, weight, labels, z_loss=0.1,
                                       method="maxsub", label_smoothing=0.2,
                                       ignore_index=IGNORE)


def test_memory_stays_within_two_chunks():
    # numpy reports its allocations to tracemalloc.  The N x V logits would
    # be 16 MB; two N x chunk float32 buffers are 1 MB.
    rows, features, classes, chunk = 512, 32, 8192, 256
    hidden, weight, bias, labels = _problem(rows, features, classes, np.float32)
    labels[::7] = IGNORE
    bound_chunks = 2 * rows * chunk * 4
    small = 128 * (rows + classes)   # states, labels, class weights: O(N + V)
    outputs = hidden.nbytes + weight.nbytes + bias.nbytes
    for method, smoothing in (("stable", 0.0), ("stable", 0.1), ("maxsub", 0.1)):
        for return_grad in (False, True):
            options = dict(bias=bias, chunk_size=chunk, ignore_index=IGNORE,
                           method=method, label_smoothing=smoothing,
                           return_grad=return_grad, class_weight=np.ones(classes))
            pysafemax.linear_cross_entropy(hidden, weight, labels, **options)  # warm
            tracemalloc.start()
            try:
                result = pysafemax.linear_cross_entropy(hidden, weight, labels, **options)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            extra = peak - (outputs if return_grad else 0)
            assert extra <= bound_chunks + small, (method, smoothing, return_grad, extra)
            del result


def test_default_chunk_size_keeps_buffers_within_64_mb():
    # one buffer of logits, or with the gradient two
    assert _linear.default_chunk_size(4096, 32000, 4, 1) == 4096
    assert _linear.default_chunk_size(4096, 32000, 4, 2) == 2048
    assert _linear.default_chunk_size(2048, 128256, 4, 2) == 4096
    assert _linear.default_chunk_size(4096, 32000, 8, 2) == 1024
    assert _linear.default_chunk_size(10, 100, 4, 2) == 100
    assert _linear.default_chunk_size(10**8, 100, 4, 2) == 1
    assert _linear.default_chunk_size(0, 100, 4, 1) == 100


def _bad(match, error=ValueError, **changes):
    hidden, weight, bias, labels = _problem(4, 3, 10)
    call = dict(hidden=hidden, weight=weight, labels=labels, bias=bias)
    call.update(changes)
    with pytest.raises(error, match=match):
        pysafemax.linear_cross_entropy(call.pop("hidden"), call.pop("weight"),
                                       call.pop("labels"), **call)


def test_bad_inputs_name_the_argument_and_value():
    hidden, weight, bias, labels = _problem(4, 3, 10)
    _bad(r"hidden must be 2-D \(N, H\), got shape \(4, 3, 1\)", hidden=hidden[..., None])
    _bad(r"hidden must be a float dtype.*got int64", TypeError,
         hidden=hidden.astype(np.int64))
    _bad(r"weight must be 2-D", weight=weight[0])
    _bad(r"weight must have shape \(V, 3\) to match hidden's \(N, H\) = \(4, 3\), "
         r"got \(10, 2\)", weight=weight[:, :2])
    _bad(r"weight must be a float dtype.*complex128", TypeError, weight=weight + 0j)
    _bad(r"weight has no rows", weight=weight[:0], bias=None)
    _bad(r"bias must have shape \(10,\), one per class, got \(9,\)", bias=bias[:9])
    _bad(r"bias must be 1-D", bias=bias[None])
    _bad(r"bias must be a float dtype.*int", TypeError, bias=np.arange(10))
    _bad(r"labels must have shape \(4,\)", labels=labels[:3])
    _bad(r"labels must be integer class indices, got dtype float64", TypeError,
         labels=labels.astype(float))
    _bad(r"labels\[2\] = 10 is out of range for C = 10 classes",
         labels=np.array([0, 1, 10, 2]))
    _bad(r"labels\[1\] = -1 is out of range.*ignore_index=-1",
         labels=np.array([0, -1, 1, 2]))
    _bad(r"class_weight must have shape \(10,\)", class_weight=np.ones(3))
    _bad(r"class_weight must be a floating array", TypeError, class_weight=np.ones(10, int))
    _bad(r"chunk_size must be >= 1, got 0", chunk_size=0)
    _bad(r"chunk_size must be an int, got 2.5", TypeError, chunk_size=2.5)
    _bad(r"chunk_size must be an int, got True", TypeError, chunk_size=True)
    _bad(r"threads must be >= 1, got 0", threads=0)
    _bad(r"method must be one of", method="fast")
    _bad(r"reduction must be one of", reduction="avg")
    _bad(r"label_smoothing must be in \[0, 1\], got 1.5", label_smoothing=1.5)
    _bad(r"ignore_index must be an int", TypeError, ignore_index=1.5)
    _bad(r"return_grad must be True or False", TypeError, return_grad=1)
    _bad(r"z_loss must be a finite number >= 0, got -1.0", z_loss=-1.0)
    _bad(r"z_loss must be a real number >= 0, got 'x'", TypeError, z_loss="x")
    _bad(r"hidden is a masked array", TypeError, hidden=np.ma.masked_array(hidden))


def test_position_scaled_grads_is_the_backward_of_weighted_losses():
    # what autograd asks of reduction="none": d sum(scale * losses)
    hidden, weight, bias, labels = _problem(9, 5, 21, ignored=[4])
    scale = np.linspace(-1.0, 3.0, 9)
    options = dict(ignore_index=IGNORE, label_smoothing=0.1, reduction="none")
    logits = hidden @ weight.T + bias
    for method in pysafemax.METHODS:
        _, g = pysafemax.softmax_loss(logits, labels, return_grad=True, method=method,
                                      **options)
        g = g * scale[:, None]
        grads = _linear.position_scaled_grads(hidden, weight, labels, scale, bias=bias,
                                              method=method, chunk_size=4, **options)
        for got, expected in zip(grads, (g @ weight, g.T @ hidden, g.sum(axis=0))):
            _close(got, expected, 1e-12, method)
    with pytest.raises(ValueError, match=r"position_scale must have shape \(9,\)"):
        _linear.position_scaled_grads(hidden, weight, labels, scale[:3],
                                      ignore_index=IGNORE)


@given(rows=st.integers(1, 9), features=st.integers(1, 6), classes=st.integers(1, 40),
       chunk=st.integers(1, 45), method=st.sampled_from(pysafemax.METHODS),
       reduction=st.sampled_from(pysafemax.REDUCTIONS),
       smoothing=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**32 - 1))
def test_any_shape_and_chunk_agrees_with_the_materialized_logits(
        rows, features, classes, chunk, method, reduction, smoothing, seed):
    hidden, weight, bias, labels = _problem(rows, features, classes, seed=seed)
    labels[::3] = IGNORE
    options = dict(method=method, reduction=reduction, label_smoothing=smoothing,
                   ignore_index=IGNORE)
    oracle_loss, oracle_grads = _oracle(hidden, weight, bias, labels, **options)
    loss, grads = pysafemax.linear_cross_entropy(hidden, weight, labels, bias=bias,
                                                 chunk_size=chunk, return_grad=True,
                                                 **options)
    _close(loss, oracle_loss, 1e-12)
    for got, expected in zip(grads, oracle_grads):
        _close(got, expected, 1e-12)


def test_threads_at_once():
    # each call owns its buffers and states: calls from many threads at once
    # give each its own answer
    problems = [_problem(40, 8, 500, np.float32, seed=k) for k in range(4)]
    expected = [pysafemax.linear_cross_entropy(h, w, y, bias=b, chunk_size=64,
                                               return_grad=True)
                for h, w, b, y in problems]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda p: pysafemax.linear_cross_entropy(
            p[0], p[1], p[3], bias=p[2], chunk_size=64, return_grad=True),
            problems * 3))
    for k, (loss, grads) in enumerate(got):
        want_loss, want_grads = expected[k % 4]
        assert loss == want_loss
        for a, b in zip(grads, want_grads):
            np.testing.assert_array_equal(a, b)
