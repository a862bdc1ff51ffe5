"""Class-sharded logits (issue 7): per-block partial states, merged in any
grouping and order, give the loss and gradient of one call over all the
classes, to float rounding.

The single call (pysafemax.softmax_loss, itself checked against the numpy
references and the float64 oracles) is the oracle here; the blocks' states
are checked against pysafemax.reference.softmax_partials.
"""
import contextlib
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pysafemax
from pysafemax import _bindings, reference

RNG = np.random.default_rng(7)
REDUCTIONS = pysafemax.REDUCTIONS


def _blocks(classes, cuts):
    """[(start, stop)] covering range(classes), split at `cuts`."""
    edges = [0] + sorted(set(c for c in cuts if 0 < c < classes)) + [classes]
    return list(zip(edges, edges[1:]))


def _take(a, axis, start, stop):
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def _block_labels(labels, axis, start, stop, probabilities):
    return _take(labels, axis, start, stop) if probabilities else labels


def _sharded(logits, labels, blocks, *, axis=1, order=None, reduction="mean",
             probabilities=False, grad=True, **options):
    """The loss (and gradient) through softmax_partials, combine_partials
    (merged in `order`, pairwise as a tree), loss_from_partials and
    grad_from_partials."""
    classes = logits.shape[axis]
    parts = [pysafemax.softmax_partials(
        _take(logits, axis, a, b), _block_labels(labels, axis, a, b, probabilities),
        class_offset=a, num_classes=classes, axis=axis, **options)
        for a, b in blocks]
    order = range(len(parts)) if order is None else order
    states = [parts[k] for k in order]
    while len(states) > 1:   # a merge tree: neighbours, level by level
        states = [pysafemax.combine_partials(*states[k:k + 2])
                  for k in range(0, len(states), 2)]
    state = states[0]
    loss = pysafemax.loss_from_partials(state, reduction=reduction)
    if not grad:
        return loss
    pieces = [pysafemax.grad_from_partials(
        state, _take(logits, axis, a, b), _block_labels(labels, axis, a, b, probabilities),
        class_offset=a, reduction=reduction) for a, b in blocks]
    return loss, np.concatenate(pieces, axis=axis)


def _assert_close(got, expected, dtype, classes):
    """Equal special values, and finite values within check_tolerance()
    (relative and absolute), as check=True holds the kernel to."""
    tol = pysafemax.check_tolerance(dtype, classes)
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    error = np.abs(got[finite] - expected[finite])
    assert np.all(error <= tol * (1 + np.abs(expected[finite]))), error.max(initial=0)


def _problem(dtype, shape, axis, probabilities, scale=20.0):
    logits = (RNG.standard_normal(shape) * scale).astype(dtype)
    classes = shape[axis]
    position_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    if probabilities:
        labels = RNG.random(shape).astype(dtype)
        labels /= labels.sum(axis=axis, keepdims=True)
    else:
        labels = RNG.integers(0, classes, size=position_shape)
    return logits, labels


OPTION_SETS = {
    "plain": {},
    "weight": {"weight": "w"},
    "ignore": {"ignore_index": 2},
    "smoothing": {"label_smoothing": 0.15},
    "weight+smoothing+ignore": {"weight": "w", "label_smoothing": 0.3, "ignore_index": 0},
    "probabilities": {"probabilities": True},
    "probabilities+weight+smoothing": {"probabilities": True, "weight": "w",
                                       "label_smoothing": 0.2},
}


def _options(name, classes):
    options = dict(OPTION_SETS[name])
    if options.get("weight") == "w":
        options["weight"] = RNG.random(classes) + 0.25
    return options


def _decomposable(method, options):
    return method == "stable" or not (options.get("probabilities")
                                      or options.get("label_smoothing"))


# naive and maxsub have no partial state with smoothing or probabilities
# (test_bad_inputs checks the error).
DECOMPOSABLE = [(method, name) for method in pysafemax.METHODS for name in OPTION_SETS
                if _decomposable(method, OPTION_SETS[name])]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method, option_set", DECOMPOSABLE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_merged_blocks_match_one_call(dtype, method, option_set, reduction):
    classes = 37   # blocks of odd widths: every SIMD tail
    options = _options(option_set, classes)
    probabilities = options.pop("probabilities", False)
    logits, labels = _problem(dtype, (23, classes), 1, probabilities)
    expected = pysafemax.softmax_loss(logits, labels, method=method, reduction=reduction,
                                      return_grad=True, **options)
    blocks = _blocks(classes, [1, 2, 10, 19])
    got = _sharded(logits, labels, blocks, order=[3, 0, 4, 2, 1], method=method,
                   reduction=reduction, probabilities=probabilities, **options)
    _assert_close(got[0], expected[0], dtype, classes)
    _assert_close(got[1], expected[1], dtype, classes)
    assert got[1].dtype == expected[1].dtype


@pytest.mark.parametrize("shape, axis", [
    ((3, 9, 4), 1),        # (N, C, d): strided classes, inner > 1
    ((2, 3, 11), -1),      # classes last on 3-D logits
    ((13, 5), 0),          # the class axis first
    ((29,), 0),            # one unbatched position
    ((5, 2, 3, 7), 2),
])
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_every_class_axis(shape, axis, method):
    logits, labels = _problem(np.float32, shape, axis, False)
    classes = shape[axis]
    expected = pysafemax.softmax_loss(logits, labels, axis=axis, method=method,
                                      return_grad=True)
    got = _sharded(logits, labels, _blocks(classes, [1, classes // 2]), axis=axis,
                   method=method)
    _assert_close(got[0], expected[0], np.float32, classes)
    _assert_close(got[1], expected[1], np.float32, classes)


def test_wide_rows_past_the_kernels_block():
    """Blocks wider than the kernel's 2048-float block, split off its edges."""
    classes = 5003
    logits, labels = _problem(np.float32, (6, classes), 1, False, scale=5.0)
    expected = pysafemax.softmax_loss(logits, labels, reduction="none", return_grad=True)
    got = _sharded(logits, labels, _blocks(classes, [2049, 4096, 4097]), reduction="none")
    _assert_close(got[0], expected[0], np.float32, classes)
    _assert_close(got[1], expected[1], np.float32, classes)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 40), max_size=8),
       order_seed=st.integers(0, 2**32 - 1),
       smoothing=st.sampled_from([0.0, 0.1]),
       scale=st.sampled_from([1.0, 30.0, 1e4]))
def test_any_grouping_and_order(cuts, order_seed, smoothing, scale):
    classes = 41
    logits, labels = _problem(np.float32, (7, classes), 1, False, scale=scale)
    expected = pysafemax.softmax_loss(logits, labels, reduction="none",
                                      label_smoothing=smoothing, return_grad=True)
    blocks = _blocks(classes, cuts)
    order = np.random.default_rng(order_seed).permutation(len(blocks))
    got = _sharded(logits, labels, blocks, order=order, reduction="none",
                   label_smoothing=smoothing)
    _assert_close(got[0], expected[0], np.float32, classes)
    _assert_close(got[1], expected[1], np.float32, classes)


def test_merge_is_exact_where_clamping_is_not():
    """The seed's failure, sharded: the label's class and the winning class in
    different blocks.  The true loss (1000) survives the merge; maxsub's
    sharded loss clamps at 87.3365 as Caffe's does."""
    logits = np.array([[0.0, 1000.0, -5.0, 3.0]], dtype=np.float32)
    labels = np.array([0])
    blocks = [(0, 1), (1, 3), (3, 4)]
    stable = _sharded(logits, labels, blocks, grad=False, method="stable")
    assert stable == pytest.approx(1000.0, rel=1e-12)
    maxsub = _sharded(logits, labels, blocks, grad=False, method="maxsub")
    assert maxsub == pysafemax.softmax_loss(logits, labels, method="maxsub")
    assert maxsub == pytest.approx(pysafemax.FLT_MIN_LOSS)
    # A confident, correct row keeps its tiny loss through the merge.
    tiny = _sharded(np.array([[60.0, 0.0]], dtype=np.float32), np.array([0]),
                    [(0, 1), (1, 2)], grad=False)
    assert tiny == pytest.approx(8.7565e-27, rel=1e-4)


def test_float64_oracle_on_huge_gaps():
    """Merged stable losses against exact arithmetic in long double (numpy's
    float128 where the platform has it) on logits far apart."""
    logits = np.array([[-3e4, 2e4, 5.0, 7.5], [1e30, -1e30, 0.0, 1e30],
                       [88.0, 89.0, 90.0, 91.0]], dtype=np.float64)
    labels = np.array([0, 2, 1])
    got = _sharded(logits, labels, _blocks(4, [1, 2, 3]), reduction="none", grad=False)
    wide = logits.astype(np.longdouble)
    m = wide.max(axis=1)
    exact = (m - wide[np.arange(3), labels]) + np.log(np.exp(wide - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(got, exact.astype(np.float64), rtol=1e-15)


SPECIAL_ROWS = [
    [np.nan, 1.0, 2.0, 3.0],
    [np.inf, 1.0, 2.0, 3.0],
    [-np.inf, -np.inf, 2.0, 3.0],     # the label's block all -inf: loss +inf
    [-np.inf, -np.inf, -np.inf, -np.inf],
    [1.0, 1.0, 1.0, 1.0],             # ties across blocks
    [3e38, 3e38, -3e38, 0.0],
    [1e-45, -1e-45, 0.0, -0.0],
]


@pytest.mark.parametrize("method, smoothing", [("naive", 0.0), ("maxsub", 0.0),
                                               ("stable", 0.0), ("stable", 0.2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values_merge_like_one_call(method, dtype, smoothing):
    logits = np.array(SPECIAL_ROWS, dtype=dtype)
    labels = np.zeros(len(SPECIAL_ROWS), dtype=np.int64)
    with np.errstate(all="ignore"):
        expected = pysafemax.softmax_loss(logits, labels, method=method, reduction="none",
                                          label_smoothing=smoothing, return_grad=True)
    for blocks in ([(0, 2), (2, 4)], [(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 3), (3, 4)]):
        got = _sharded(logits, labels, blocks, method=method, reduction="none",
                       label_smoothing=smoothing)
        _assert_close(got[0], expected[0], dtype, 4)
        _assert_close(got[1], expected[1], dtype, 4)


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("shape, axis", [((9, 21), 1), ((2, 21, 3), 1)])
def test_block_states_match_the_reference(method, shape, axis):
    logits, labels = _problem(np.float32, shape, axis, False)
    logits[0, 3] = np.nan
    logits[1, :5] = -np.inf
    for a, b in _blocks(21, [5, 6, 14]):
        block = _take(logits, axis, a, b)
        state = pysafemax.softmax_partials(block, labels, class_offset=a, num_classes=21,
                                           axis=axis, method=method, ignore_index=4)
        expected = reference.softmax_partials(block, labels, class_offset=a,
                                              num_classes=21, axis=axis, method=method,
                                              ignore_index=4)
        np.testing.assert_array_equal(state.max, expected["max"])
        np.testing.assert_allclose(state.sum_exp, expected["sum_exp"], rtol=2**-21,
                                   equal_nan=True)
        found = state.state["label_found"] == 1
        np.testing.assert_array_equal(found, ~np.isnan(expected["label_logit"]))
        np.testing.assert_array_equal(state.state["label_logit"][found],
                                      expected["label_logit"][found])


def test_threads_and_portable_code_give_the_same_bits(monkeypatch):
    logits, labels = _problem(np.float32, (3000, 1500), 1, False)
    results = []
    for portable in (False, True):
        with _bindings.portable_code() if portable else contextlib.nullcontext():
            for threads in (1, 2, 3):
                state = pysafemax.softmax_partials(logits[:, 700:], labels,
                                                   class_offset=700, threads=threads)
                results.append(state.state.tobytes())
    assert all(r == results[0] for r in results)


def test_states_pickle_and_inputs_are_left_alone():
    logits, labels = _problem(np.float32, (5, 12), 1, False)
    weight = RNG.random(12)
    saved = [logits.copy(), labels.copy(), weight.copy()]
    parts = [pysafemax.softmax_partials(logits[:, a:b], labels, class_offset=a,
                                        weight=weight, label_smoothing=0.1)
             for a, b in [(0, 7), (7, 12)]]
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]
    state = pysafemax.combine_partials(parts)
    assert state.complete and state.classes_covered == ((0, 12),)
    assert "classes [0, 12) of 12" in repr(state)
    expected = pysafemax.softmax_loss(logits, labels, weight=weight, label_smoothing=0.1)
    assert pysafemax.loss_from_partials(state) == pytest.approx(expected, rel=1e-6)
    for original, now in zip(saved, [logits, labels, weight]):
        np.testing.assert_array_equal(original, now)
    with pytest.raises(ValueError):
        state.state["max"][0] = 0.0     # states are read-only


def test_num_classes_can_be_left_to_the_merge():
    """The issue's call: blocks given only their class_offset.  The classes
    merged from 0 are all the classes; labels are checked against them when
    the loss is taken."""
    logits, labels = _problem(np.float32, (9, 30), 1, False)
    expected = pysafemax.softmax_loss(logits, labels, reduction="none", return_grad=True)
    blocks = [(0, 11), (11, 12), (12, 30)]
    parts = [pysafemax.softmax_partials(logits[:, a:b], labels, class_offset=a)
             for a, b in blocks]
    # alone, the first block's classes are all there are: its labels beyond
    # them are out of range when the loss is taken
    assert parts[0].num_classes is None and parts[0].total_classes == 11
    assert "of ?" in repr(parts[0])
    with pytest.raises(ValueError, match=r"is out of range for C = 11 classes"):
        pysafemax.loss_from_partials(parts[0])
    state = pysafemax.combine_partials(parts[2], parts[0], parts[1])
    assert state.complete and state.total_classes == 30
    _assert_close(pysafemax.loss_from_partials(state, reduction="none"), expected[0],
                  np.float32, 30)
    grad = np.concatenate([pysafemax.grad_from_partials(
        state, logits[:, a:b], labels, class_offset=a, reduction="none")
        for a, b in blocks], axis=1)
    _assert_close(grad, expected[1], np.float32, 30)
    # one block told the count: the merge takes it, and knows what is missing
    told = pysafemax.softmax_partials(logits[:, 12:], labels, class_offset=12,
                                      num_classes=40)
    merged = pysafemax.combine_partials(parts[0], parts[1], told)
    assert merged.num_classes == 40 and not merged.complete
    with pytest.raises(ValueError, match=r"classes \[30, 40\) of 40 are missing"):
        pysafemax.loss_from_partials(merged)
    gap = pysafemax.combine_partials(parts[0], parts[2])
    assert gap.total_classes is None
    with pytest.raises(ValueError, match=r"classes \[11, 12\) are missing"):
        pysafemax.loss_from_partials(gap)


def test_float16_results_stay_float16():
    logits, labels = _problem(np.float16, (4, 6), 1, False, scale=3.0)
    parts = [pysafemax.softmax_partials(logits[:, a:b], labels, class_offset=a,
                                        num_classes=6) for a, b in [(0, 3), (3, 6)]]
    state = pysafemax.combine_partials(*parts)
    losses = pysafemax.loss_from_partials(state, reduction="none")
    grad = pysafemax.grad_from_partials(state, logits[:, :3], labels, reduction="none")
    expected, expected_grad = pysafemax.softmax_loss(logits, labels, reduction="none",
                                                     return_grad=True)
    assert losses.dtype == np.float16 and grad.dtype == np.float16
    np.testing.assert_array_equal(losses, expected)
    np.testing.assert_array_equal(grad, expected_grad[:, :3])


# Bad inputs: each names the argument and, where it helps, the value.
X = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
Y = np.array([0, 4, 2, 7])          # classes 0..7: the blocks below cover 0..7


def _part(a, b, **options):
    logits = np.linspace(-1, 1, 4 * (b - a), dtype=np.float32).reshape(4, b - a)
    return pysafemax.softmax_partials(logits, Y, class_offset=a, num_classes=8, **options)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: pysafemax.softmax_partials(X, Y, class_offset=-1, num_classes=8),
     ValueError, r"class_offset must be >= 0, got -1"),
    (lambda: pysafemax.softmax_partials(X, Y, class_offset=4, num_classes=8),
     ValueError, r"ends at class 9, past num_classes = 8"),
    (lambda: pysafemax.softmax_partials(X, Y, class_offset=1.5, num_classes=8),
     TypeError, r"class_offset must be an int, got 1.5"),
    (lambda: pysafemax.softmax_partials(X, Y, num_classes="8"),
     TypeError, r"num_classes must be an int"),
    (lambda: pysafemax.softmax_partials(X, Y, num_classes=5),
     ValueError, r"labels\[3\] = 7 is out of range for C = 5 classes"),
    (lambda: pysafemax.softmax_partials(X, np.array([0, -1, 2, 3])),
     ValueError, r"labels\[1\] = -1 is out of range \(class indices are 0 or more\); "
                 r"to skip positions labelled -1, pass ignore_index=-1"),
    (lambda: pysafemax.softmax_partials(X, Y, label_smoothing=0.1),
     ValueError, r"label_smoothing spreads over every class: pass num_classes"),
    (lambda: pysafemax.loss_from_partials(pysafemax.softmax_partials(X, Y)),
     ValueError, r"labels\[3\] = 7 is out of range for C = 5 classes"),
    (lambda: pysafemax.combine_partials(_part(0, 5), pysafemax.softmax_partials(
        np.ones((4, 4), np.float32), Y, class_offset=5)),
     ValueError, r"classes up to 9 merged, past num_classes = 8"),
    (lambda: pysafemax.softmax_partials(X, Y, num_classes=8, weight=np.ones(5)),
     ValueError, r"weight must have shape \(8,\)"),
    (lambda: pysafemax.softmax_partials(X, Y, num_classes=8, method="maxsub",
                                        label_smoothing=0.1),
     ValueError, r"method='maxsub' has no partial state with label smoothing"),
    (lambda: pysafemax.softmax_partials(X, np.full((4, 5), 0.2), method="naive"),
     ValueError, r"method='naive' has no partial state"),
    (lambda: pysafemax.softmax_partials(X, Y[:3], num_classes=8),
     ValueError, r"labels must have shape \(4,\)"),
    (lambda: pysafemax.softmax_partials(X.astype(int), Y, num_classes=8),
     TypeError, r"logits must be float16, float32 or float64"),
    (lambda: pysafemax.softmax_partials(X, Y, num_classes=8, threads=0),
     ValueError, r"threads must be >= 1, got 0"),
    (lambda: pysafemax.combine_partials(),
     TypeError, r"needs at least one SoftmaxPartials"),
    (lambda: pysafemax.combine_partials(_part(0, 5), "state"),
     TypeError, r"parts\[1\] must be a SoftmaxPartials"),
    (lambda: pysafemax.combine_partials(_part(0, 5), _part(3, 8)),
     ValueError, r"class ranges \[0, 5\) and \[3, 8\) overlap"),
    (lambda: pysafemax.combine_partials(_part(0, 5), _part(5, 8, ignore_index=4)),
     ValueError, r"parts\[1\] differs from parts\[0\] in its ignore_index"),
    (lambda: pysafemax.combine_partials(_part(0, 5), _part(5, 8, method="naive")),
     ValueError, r"parts\[1\] differs from parts\[0\] in its method"),
    (lambda: pysafemax.loss_from_partials(pysafemax.combine_partials(_part(0, 2),
                                                                     _part(5, 8))),
     ValueError, r"classes \[2, 5\) of 8 are missing"),
    (lambda: pysafemax.loss_from_partials(_part(0, 5)),
     ValueError, r"classes \[5, 8\) of 8 are missing"),
    (lambda: pysafemax.loss_from_partials(X),
     TypeError, r"state must be a SoftmaxPartials, got ndarray"),
    (lambda: pysafemax.loss_from_partials(_complete(), reduction="avg"),
     ValueError, r"reduction must be one of"),
    (lambda: pysafemax.grad_from_partials(_complete(), X, Y[::-1].copy()),
     ValueError, r"labels differ from those the partials were computed with"),
    (lambda: pysafemax.grad_from_partials(_complete(), X, Y, class_offset=4),
     ValueError, r"ends at class 9, past num_classes = 8"),
    (lambda: pysafemax.grad_from_partials(_complete(), X[:3], Y),
     ValueError, r"logits_block has positions \(3,\), the state \(4,\)"),
    (lambda: pysafemax.grad_from_partials(_complete(), X.astype(np.float64), Y),
     TypeError, r"logits_block must have the state's dtype float32, got float64"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _complete():
    return pysafemax.combine_partials(_part(0, 5), _part(5, 8))
