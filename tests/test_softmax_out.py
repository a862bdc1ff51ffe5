"""softmax and log_softmax with out=: the very bits of a call without it,
written into the caller's array whatever its layout, and whether or not it
overlaps the logits (numpy's ufunc rule: as if the inputs were read first).
Bad `out` arguments are in tests/test_bad_inputs.py."""
import numpy as np
import pytest

import pysafemax

FUNCTIONS = {
    "softmax-stable": lambda x, **kw: pysafemax.softmax(x, method="stable", **kw),
    "softmax-maxsub": lambda x, **kw: pysafemax.softmax(x, method="maxsub", **kw),
    "softmax-naive": lambda x, **kw: pysafemax.softmax(x, method="naive", **kw),
    "log_softmax": lambda x, **kw: pysafemax.log_softmax(x, **kw),
}
DTYPES = [np.float16, np.float32, np.float64]
# (shape, axis): rows of the eight-row paths, SIMD tails, the online sweep,
# a class axis that is not the last, and 1-D logits
SHAPES = [((9, 1), 1), ((13, 7), 1), ((16, 10), 1), ((5, 17), 1), ((3, 100), 1),
          ((2, 1000), 1), ((4, 6, 3), 1), ((6, 5), 0), ((11,), 0)]
SENTINEL = 12345.0


def _logits(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 6
    flat = x.reshape(-1)
    flat[::7] = 120.0      # overflows naive's exp in float32
    flat[3::11] = -np.inf
    return x.astype(dtype)


def _outs(shape, dtype):
    """(layout name, out, the buffer behind it, the buffer's entries out
    does not cover) for each layout an out can have."""
    c = np.empty(shape, dtype)
    yield "c", c, c, np.zeros(c.shape, bool)
    f = np.empty(shape, dtype, order="F")
    yield "fortran", f, f, np.zeros(f.shape, bool)
    wide = np.full(shape[:-1] + (2 * shape[-1],), SENTINEL, dtype)
    untouched = np.ones(wide.shape, bool)
    untouched[..., ::2] = False
    yield "strided", wide[..., ::2], wide, untouched
    reversed_ = np.empty(shape, dtype)
    yield "reversed", reversed_[::-1], reversed_, np.zeros(shape, bool)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=str)
def test_out_gets_the_bits_of_a_new_result(name, dtype, shape, axis):
    function = FUNCTIONS[name]
    x = _logits(shape, dtype)
    before = x.copy()
    expected = function(x, axis=axis)
    for layout, out, buffer, untouched in _outs(shape, dtype):
        with np.errstate(over="ignore", invalid="ignore"):
            result = function(x, axis=axis, out=out)
        assert result is out, layout
        assert result.dtype == expected.dtype
        assert np.array_equal(result, expected, equal_nan=True), layout
        # the same bits, -0.0 and NaN included
        assert (np.ascontiguousarray(result).tobytes()
                == np.ascontiguousarray(expected).tobytes()), layout
        assert np.all(buffer[untouched] == SENTINEL), layout
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", SHAPES, ids=str)
def test_out_over_the_logits_reads_them_first(name, dtype, shape, axis):
    """out=logits, and out on memory the logits partly share, give what the
    logits as they were give."""
    function = FUNCTIONS[name]
    x = _logits(shape, dtype, seed=1)
    expected = function(x, axis=axis)
    in_place = x.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        result = function(in_place, axis=axis, out=in_place)
    assert result is in_place
    assert result.tobytes() == expected.tobytes()
    # out one element before, and one after, the logits in one buffer
    for logits_at, out_at in ((1, 0), (0, 1)):
        buffer = np.zeros(x.size + 1, dtype)
        buffer[logits_at:logits_at + x.size] = x.reshape(-1)
        logits = buffer[logits_at:logits_at + x.size].reshape(shape)
        out = buffer[out_at:out_at + x.size].reshape(shape)
        with np.errstate(over="ignore", invalid="ignore"):
            result = function(logits, axis=axis, out=out)
        assert result is out
        assert result.tobytes() == expected.tobytes(), (logits_at, out_at)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("threads", [1, 2])
def test_out_on_threads_and_special_rows(name, threads):
    """A shape large enough for several threads, with rows of special
    values, written into the same out twice."""
    function = FUNCTIONS[name]
    x = _logits((4096, 300), np.float32, seed=2)
    x[5] = np.inf
    x[6, 3] = np.nan
    x[7] = -np.inf
    x[8, :2] = np.inf
    x[9] = np.float32(3.0e38)
    expected = function(x, threads=1)
    out = np.full(x.shape, SENTINEL, np.float32)
    for _ in range(2):
        with np.errstate(over="ignore", invalid="ignore"):
            result = function(x, threads=threads, out=out)
        assert result is out
        assert result.tobytes() == expected.tobytes()


def test_out_of_another_shape_is_not_broadcast():
    """numpy would broadcast (1, C) logits into an (N, C) out; a softmax
    result has the logits' shape, so that out is refused."""
    x = _logits((1, 10), np.float32)
    out = np.full((4, 10), SENTINEL, np.float32)
    with pytest.raises(ValueError, match="^out must have the logits' shape"):
        pysafemax.softmax(x, out=out)
    assert np.all(out == SENTINEL)
