"""The stable method's one-pass forward for float rows (csrc/rows_online_avx2.h
and its twin online_lanes in csrc/row.h), on the rows that take each of its
paths: the sweep alone (s >= 1), rows that move its reference r (rescales),
confident rows (s < 1) with the max's lane fixed, or summed again with the
ties counted (s below the fix's floor, or ties at the max), and rows left to
the exact two-sweep path (NaN, +inf, every logit -inf, a max <= -40).

Each is checked three ways: the AVX2 loop against its portable twin and the
strided layouts (the same bits), every thread count (the same bits), and the
float64 oracle (the loss to float precision; a loss of 1e-30 reads 1e-30).
"""
import numpy as np
import pytest

import pysafemax
from pysafemax import _bindings, reference

needs_simd = pytest.mark.skipif(not _bindings.simd_level(), reason="no AVX2+FMA here")
# around the vector (8), group (32) and block (2048) sizes, and a vocabulary;
# rows of up to 512 classes (PSM_ONLINE_MIN_CLASSES) take two sweeps instead,
# so every tail of a group is also tried just above it
WIDTHS = (list(range(1, 71)) + list(range(511, 548))
          + [2047, 2048, 2049, 2050, 4095, 4096, 4097, 32001])
inf, nan = np.inf, np.nan


def row_kinds(classes, rng):
    """Rows of every kind, float32, with a label each."""
    rows, labels = [], []

    def add(row, label):
        rows.append(np.asarray(row, np.float32))
        labels.append(label % classes)

    normal = rng.standard_normal(classes)
    add(normal * 0.5, 0)
    add(normal * 4, classes - 1)
    add(normal * 30, classes // 2)                        # several rescales
    add(np.linspace(-200, 200, classes), classes - 1)     # the max rises all along
    add(np.linspace(200, -200, classes), 0)
    huge = normal * 2
    huge[-1] = 1e4                                        # a huge max in the last lane
    add(huge, classes - 1)
    tail = normal * 2
    tail[classes - 1 - (classes % 32) // 2] = 25.0        # a max in the tail group
    add(tail, 3)
    add(normal - 60.0, 1)                                 # every logit below -40
    add(normal + 1e6, 2)                                  # r far from 0
    for gap in (3.0, 12.0, 40.0, 80.0):                   # confident: s < 1
        conf = normal.copy()
        conf[classes // 3] = conf.max() + gap
        add(conf, classes // 3)
    ties = np.full(classes, -100.0)
    ties[0] = ties[-1] = 5.0                              # two equal maxes
    add(ties, 0)
    add(np.full(classes, 7.0), 1)                         # all equal
    masked = normal * 3
    masked[::3] = -inf                                    # -inf masked classes
    add(masked, 1)
    for where in (0, classes // 2, classes - 1):
        for value in (nan, inf, -inf):
            special = normal * 3
            special[where] = value
            add(special, where + 1)
    add(np.full(classes, -inf), 0)
    return np.stack(rows), np.array(labels, np.int64)


def stable(x, labels, **kw):
    """The losses with the gradient (whose three passes share the exps they
    store), the forward-only losses (the one-pass sweep), the gradient and
    log_softmax (the sweep too)."""
    loss, grad = pysafemax.softmax_loss(x, labels, reduction="none", return_grad=True, **kw)
    forward = pysafemax.softmax_loss(x, labels, reduction="none", **kw)
    return loss, forward, grad, pysafemax.log_softmax(x, **kw)


def assert_same_bits(a, b):
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u.view(np.uint32), v.view(np.uint32))


@needs_simd
@pytest.mark.parametrize("classes", WIDTHS)
def test_vector_sweep_gives_the_portable_bits(classes):
    x, y = row_kinds(classes, np.random.default_rng(classes))
    fast = stable(x, y)
    with _bindings.portable_code():
        assert_same_bits(fast, stable(x, y))
    # a strided class axis: the vector loop on copies, block by block
    strided = stable(np.ascontiguousarray(x.T), y, axis=0)
    assert_same_bits(fast, [strided[0]] + [np.ascontiguousarray(a.T) for a in strided[1:]])
    with _bindings.portable_code():
        strided = stable(np.ascontiguousarray(x.T), y, axis=0)
    assert_same_bits(fast, [strided[0]] + [np.ascontiguousarray(a.T) for a in strided[1:]])


@pytest.mark.parametrize("classes", [5, 33, 1000, 2049, 32001])
def test_one_pass_losses_against_the_oracle(classes):
    x, y = row_kinds(classes, np.random.default_rng(classes + 1))
    loss = pysafemax.softmax_loss(x, y, reduction="none").astype(np.float64)
    want = reference.softmax_loss(x.astype(np.float64), y, reduction="none")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(loss), np.isnan(want))
    np.testing.assert_array_equal(loss[~finite & ~np.isnan(want)],
                                  want[~finite & ~np.isnan(want)])
    # tests/test_oracle.py's bound: float precision, relative, down to the
    # smallest loss; each term off the max adds its exp's and its argument's
    # rounding, (t_j + 2) u, t_j = max - x_j
    err = np.abs(loss - want)[finite]
    assert np.all(err <= oracle_bound(x, want)[finite]), err.max()


def oracle_bound(x, loss):
    u = 2.0 ** -24
    xw = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        m = xw.max(axis=1, keepdims=True)
        t = m - xw
        e = np.exp(-t)
        off = (t > 0) & np.isfinite(t)
        s = np.where(off, e, 0).sum(axis=1)
        spread = np.where(off, e * (t + 2) * u, 0).sum(axis=1) / (1 + s)
    classes = x.shape[1]
    return (2 * (u * np.abs(loss) + spread + classes * 2.0 ** -53 * s / (1 + s))
            + classes * 2.0 ** -149)


@pytest.mark.parametrize("gap", [20.0, 40.0, 69.0, 80.0])
@pytest.mark.parametrize("classes", [2, 40, 1000, 4097])
def test_a_confident_row_keeps_its_tiny_loss(gap, classes):
    # s = (C - 1) e^-gap: from ~1e-9 (the fixed lane) to ~1e-31 (tie-counting)
    x = np.zeros((3, classes), np.float32)
    x[:, 1] = gap
    x[1] -= 30.0                       # the same row with r = 0 and a max < 0
    x[2] += 1000.0                     # and with r moved to the max
    y = np.ones(3, np.int64)
    want = np.log1p((classes - 1) * np.exp(-np.float64(gap)))
    for portable in (False, True):
        with _bindings.portable_code() if portable else _nothing():
            loss = pysafemax.softmax_loss(x, y, reduction="none").astype(np.float64)
        np.testing.assert_allclose(loss, want, rtol=4e-7)
    if gap == 69.0 and classes == 2:
        assert 1e-30 < loss[0] < 1.1e-30


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("classes", [100, 1000, 4097])
def test_a_confident_row_in_every_lane_and_group(classes):
    # the fixed lane: the max in each position of a group, and near the end
    rng = np.random.default_rng(classes)
    base = (rng.standard_normal(classes) * 2).astype(np.float32)
    spots = list(range(0, 64)) + list(range(classes - 40, classes))
    x = np.repeat(base[None], len(spots), axis=0)
    y = np.array(spots, np.int64)
    x[np.arange(len(spots)), y] = base.max() + 6.0      # s ~ 1e-1 .. 1e-3
    loss = pysafemax.softmax_loss(x, y, reduction="none").astype(np.float64)
    want = reference.softmax_loss(x.astype(np.float64), y, reduction="none")
    np.testing.assert_allclose(loss, want, rtol=4e-7)
    with _bindings.portable_code():
        assert_same_bits([loss.astype(np.float32)],
                         [pysafemax.softmax_loss(x, y, reduction="none")])


def test_ties_at_the_max_count_one_each():
    for r_moves in (0.0, 1e8):
        x = np.full((2, 300), -100.0, np.float32) + np.float32(r_moves)
        x[0, [0, 299]] = 5.0 + r_moves              # two maxes: loss ln 2
        x[1, [3, 77, 150, 298]] = 5.0 + r_moves     # four: ln 4
        loss = pysafemax.softmax_loss(x, np.array([0, 3]), reduction="none")
        np.testing.assert_allclose(loss, [np.log(2), np.log(4)], rtol=2e-7)


def test_every_thread_count_and_block_of_positions_gives_the_same_bits():
    rng = np.random.default_rng(8)
    x, y = row_kinds(1000, rng)
    x = np.concatenate([x] * 40)
    y = np.concatenate([y] * 40)
    first = stable(x, y, threads=1)
    for threads in (2, 3):
        assert_same_bits(first, stable(x, y, threads=threads))
    # positions in two calls: each row's bits do not depend on its neighbours
    half = len(y) // 2
    a = pysafemax.softmax_loss(x[:half], y[:half], reduction="none")
    b = pysafemax.softmax_loss(x[half:], y[half:], reduction="none")
    assert_same_bits([first[1]], [np.concatenate([a, b])])


@pytest.mark.parametrize("classes", [70, 2050, 32001])
def test_partials_of_one_pass_rows_merge_to_the_whole(classes):
    x, y = row_kinds(classes, np.random.default_rng(9))
    keep = ~np.isnan(x).any(axis=1) & ~np.isinf(x).any(axis=1)   # finite rows
    x, y = x[keep], y[keep]
    cut = [0, classes // 3, classes // 3 + 33, classes]
    parts = [pysafemax.softmax_partials(x[:, a:b], y, class_offset=a, num_classes=classes)
             for a, b in zip(cut, cut[1:])]
    merged = pysafemax.combine_partials(*parts)
    got = pysafemax.loss_from_partials(merged, reduction="none").astype(np.float64)
    want = reference.softmax_loss(x.astype(np.float64), y, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-6)
