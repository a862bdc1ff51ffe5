"""softmax_loss on arrays larger than memory: whatever needs converting
(float16, byte-swapped, another layout, probability targets of another dtype)
is converted a block of whole positions at a time, and the results are those
of one call on the whole batch.

The first test runs the call in a subprocess whose private memory is capped
(RLIMIT_DATA) well below the size of the np.memmap files it reads; the others
make the block budget tiny so that every layout and option runs in many
blocks, and compare with the unstreamed call.
"""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import pysafemax
from pysafemax import _core

MiB = 1 << 20

# The subprocess: memmaps opened, then private memory capped at what it uses
# now plus BUDGET.  RLIMIT_DATA counts private writable memory (heap,
# anonymous mmaps, thread stacks), not shared file mappings, so the memmaps
# (read-only, and the writable gradient files) cost nothing against it.
_LIMITED_CALLS = r"""
import json, resource, sys
import numpy as np
import pysafemax
from pysafemax import _core

a = json.loads(sys.argv[1])
half = np.memmap(a["half"], np.float16, "r", shape=tuple(a["half_shape"]))
half_labels = np.memmap(a["half_labels"], np.int64, "r", shape=(a["half_shape"][0],))
half_grad = np.memmap(a["half_grad"], np.float16, "r+", shape=tuple(a["half_shape"]))
fortran = np.memmap(a["fortran"], np.float32, "r", shape=tuple(a["fortran_shape"]),
                    order="F")
fortran_labels = np.memmap(a["fortran_labels"], np.int64, "r",
                           shape=(a["fortran_shape"][0],))
fortran_grad = np.memmap(a["fortran_grad"], np.float32, "r+",
                         shape=tuple(a["fortran_shape"]))
_core._STREAM_BYTES = a["stream_bytes"]

def vm_data():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
resource.setrlimit(resource.RLIMIT_DATA, (vm_data() + a["budget"], hard))

# The control: converting either memmap whole does not fit.
controls = []
for convert in (lambda: np.asarray(half, dtype=np.float32),
                lambda: np.ascontiguousarray(fortran)):
    try:
        convert()
        controls.append("fitted")
    except MemoryError:
        controls.append("MemoryError")

losses, grad = pysafemax.softmax_loss(half, half_labels, reduction="none",
                                      return_grad=True, out=half_grad)
assert grad is half_grad
np.save(a["half_losses"], losses)
loss, grad = pysafemax.softmax_loss(fortran, fortran_labels, return_grad=True,
                                    out=fortran_grad)
assert grad is fortran_grad
half_grad.flush()
fortran_grad.flush()
print(json.dumps({"controls": controls, "loss": loss}))
"""


def _memmap(path, dtype, shape, fill, order="C"):
    """A file of `shape` filled by fill(rows) one block of rows at a time."""
    mm = np.memmap(path, dtype, "w+", shape=shape, order=order)
    step = 1 << 14
    for start in range(0, shape[0], step):
        mm[start:start + step] = fill(min(step, shape[0] - start))
    mm.flush()
    return np.memmap(path, dtype, "r", shape=shape, order=order)


def _bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="RLIMIT_DATA and /proc/self/status are Linux's")
def test_memmaps_larger_than_the_memory_budget(tmp_path):
    budget = 64 * MiB
    classes = 64
    rng = np.random.default_rng(11)

    # Rows of normal numbers read from random offsets of a pool: drawing all
    # 72 million would take longer than the rest of the test.
    pool = rng.standard_normal(2 << 20, dtype=np.float32)

    def normal(scale):
        def rows_of(rows):
            start = rng.integers(0, pool.size - rows * classes)
            return pool[start:start + rows * classes].reshape(rows, classes) * scale
        return rows_of

    def labels(rows):
        return rng.integers(0, classes, rows)

    # 96 MiB of float16 logits (192 MiB as float32) and 96 MiB of
    # Fortran-order float32 ones: each bigger than the budget.
    half_shape = (96 * MiB // (2 * classes), classes)
    fortran_shape = (96 * MiB // (4 * classes), classes)
    # Logits of spread 1.5 keep most unscaled float16 gradients normal
    # numbers, which a float16 comparison can tell apart.
    half = _memmap(tmp_path / "half.bin", np.float16, half_shape, normal(1.5))
    half_labels = _memmap(tmp_path / "half_labels.bin", np.int64, half_shape[:1], labels)
    fortran = _memmap(tmp_path / "fortran.bin", np.float32, fortran_shape, normal(3.0),
                      order="F")
    fortran_labels = _memmap(tmp_path / "fortran_labels.bin", np.int64,
                             fortran_shape[:1], labels)
    for name, dtype, shape in (("half_grad", np.float16, half_shape),
                               ("fortran_grad", np.float32, fortran_shape)):
        np.memmap(tmp_path / f"{name}.bin", dtype, "w+", shape=shape).flush()
    assert half.nbytes > budget and fortran.nbytes > budget

    args = {name: str(tmp_path / f"{name}.bin")
            for name in ("half", "half_labels", "half_grad", "fortran",
                         "fortran_labels", "fortran_grad")}
    # Blocks of 16 MiB of copies: the default 64 MiB would not leave room
    # under the cap for the kernel's second thread's stack and numpy's own.
    args.update(half_losses=str(tmp_path / "half_losses.npy"), budget=budget,
                half_shape=half_shape, fortran_shape=fortran_shape,
                stream_bytes=16 * MiB)
    package_root = os.path.dirname(os.path.dirname(pysafemax.__file__))
    env = dict(os.environ, PYSAFEMAX_NUM_THREADS="2",   # each thread's stack counts
               PYTHONPATH=package_root)
    done = subprocess.run([sys.executable, "-c", _LIMITED_CALLS, json.dumps(args)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["controls"] == ["MemoryError", "MemoryError"]

    # The same data in memory, each in one kernel call.
    x = np.array(half, dtype=np.float32)
    losses, grad = pysafemax.softmax_loss(x, np.array(half_labels), reduction="none",
                                          return_grad=True)
    half_grad = np.memmap(args["half_grad"], np.float16, "r", shape=half_shape)
    # Each position is computed alone, in float32 both ways: the same bits.
    assert _bits_equal(np.load(args["half_losses"]), losses.astype(np.float16))
    assert _bits_equal(half_grad, grad.astype(np.float16))
    assert np.count_nonzero(half_grad) > half_grad.size // 2
    del x, losses, grad, half_grad

    x = np.ascontiguousarray(fortran)
    loss, grad = pysafemax.softmax_loss(x, np.array(fortran_labels), return_grad=True)
    fortran_grad = np.memmap(args["fortran_grad"], np.float32, "r", shape=fortran_shape)
    assert _bits_equal(fortran_grad, grad)
    # Only the grouping of the double additions differs, both compensated
    # (psm_sum in csrc/internal.h, _core._CompensatedSum), so a few ULP at
    # most whatever the block count (2**-52 relative).
    assert result["loss"] == pytest.approx(loss, rel=1e-15, abs=0)


# ---------------------------------------------------------------- in process

# (shape, class axis): the class axis in the middle, last, first, of a
# matrix, and 1-D logits (one position, which is never cut).
LAYOUTS = [((5, 4, 6), 1), ((5, 6, 4), -1), ((4, 6, 5), 0), ((30, 4), 1), ((4,), 0)]


def _logits(rng, shape, kind):
    """Logits of every kind: the kernel reads the native ones in place."""
    values = rng.standard_normal(shape) * 3
    if kind in ("float32", "float64"):
        return values.astype(kind)
    if kind == "float16":
        return values.astype(np.float16)
    if kind == "byteswapped":
        return values.astype(np.dtype(np.float32).newbyteorder())
    if kind == "strided":
        wide = np.zeros(shape + (2,))
        wide[..., 0] = values
        return wide[..., 0]
    if kind == "fortran":
        return np.asfortranarray(values.astype(np.float32))
    assert kind == "unaligned"
    buffer = bytearray(values.size * 8 + 1)
    x = np.frombuffer(buffer, dtype=np.float64, offset=1, count=values.size)
    x = x.reshape(shape)
    x[...] = values
    return x


KINDS = ["float32", "float64", "float16", "byteswapped", "strided", "fortran",
         "unaligned"]


def _targets(rng, x, axis, option):
    """(labels, keyword arguments) for one of the options."""
    classes = x.shape[axis]
    position_shape = x.shape[:axis % x.ndim] + x.shape[axis % x.ndim + 1:]
    labels = rng.integers(0, classes, position_shape)
    if option == "plain":
        return labels, {}
    if option == "weight_ignore":
        labels = np.where(rng.random(position_shape) < 0.3, -100, labels)
        return labels.astype(np.int32), dict(weight=rng.random(classes) + 0.5,
                                             ignore_index=-100)
    if option == "all_ignored":   # a mean over no weight: NaN
        return np.full(position_shape, 7), dict(ignore_index=7)
    if option == "smoothing":
        return labels, dict(label_smoothing=0.2, weight=rng.random(classes) + 0.5)
    assert option == "probabilities"   # float64 and Fortran-order: converted too
    p = rng.random(x.shape)
    return np.asfortranarray(p / p.sum(axis=axis, keepdims=True)), {}


OPTIONS = ["plain", "weight_ignore", "all_ignored", "smoothing", "probabilities"]


def _unstreamed(monkeypatch, *args, **kwargs):
    monkeypatch.setattr(_core, "_STREAM_BYTES", 1 << 62)
    return pysafemax.softmax_loss(*args, **kwargs)


def _streamed(monkeypatch, *args, **kwargs):
    """softmax_loss with a budget of 64 bytes (a position or three a block),
    and how many blocks it ran."""
    monkeypatch.setattr(_core, "_STREAM_BYTES", 64)
    blocks = []
    real_blocks = _core._blocks

    def counted(*a):
        for block in real_blocks(*a):
            blocks.append(block)
            yield block

    monkeypatch.setattr(_core, "_blocks", counted)
    try:
        return pysafemax.softmax_loss(*args, **kwargs), len(blocks)
    finally:
        monkeypatch.setattr(_core, "_blocks", real_blocks)


def _same_loss(got, expected, reduction):
    if reduction == "none":
        assert _bits_equal(got, expected)
    elif np.isnan(expected):
        assert np.isnan(got)
    else:
        # The block sums are grouped otherwise, both compensated: 63 of the
        # 2530 reduced cases differ, by at most 1.15 ULP (2**-52 relative;
        # 2.8 before the sums were compensated).
        assert got == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("reduction", pysafemax.REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_streamed_matches_one_call(monkeypatch, shape, axis, kind, reduction, option):
    rng = np.random.default_rng([len(shape), axis % len(shape), KINDS.index(kind)])
    x = _logits(rng, shape, kind)
    labels, options = _targets(rng, x, axis, option)
    given = [np.copy(a) for a in (x, labels, options.get("weight", 0))]
    options.update(axis=axis, reduction=reduction)

    expected = _unstreamed(monkeypatch, x, labels, **options)
    got, blocks = _streamed(monkeypatch, x, labels, **options)
    # Native logits and class indices are read in place, in one call (0
    # blocks: the plain path's).
    native = kind in ("float32", "float64") and option != "probabilities"
    assert blocks <= 1 if native or len(shape) == 1 else blocks > 1
    _same_loss(got, expected, reduction)

    expected_loss, expected_grad = _unstreamed(monkeypatch, x, labels,
                                               return_grad=True, **options)
    (loss, grad), _ = _streamed(monkeypatch, x, labels, return_grad=True, **options)
    _same_loss(loss, expected_loss, reduction)
    assert _bits_equal(grad, expected_grad)

    out = np.full(shape, np.nan, dtype=expected_grad.dtype)
    (loss, grad), _ = _streamed(monkeypatch, x, labels, return_grad=True, out=out,
                                **options)
    assert grad is out
    _same_loss(loss, expected_loss, reduction)
    assert _bits_equal(out, expected_grad)

    # The caller's arrays are read, never written.
    for before, after in zip(given, (x, labels, options.get("weight", 0))):
        assert _bits_equal(before, after)


@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("option", ["plain", "smoothing", "probabilities"])
def test_streamed_methods_pass_check(monkeypatch, method, option):
    rng = np.random.default_rng(5)
    x = _logits(rng, (6, 5, 4), "float16")
    labels, options = _targets(rng, x, 1, option)
    expected = _unstreamed(monkeypatch, x, labels, method=method, return_grad=True,
                           **options)
    (loss, grad), blocks = _streamed(monkeypatch, x, labels, method=method,
                                     return_grad=True, check=True, **options)
    assert blocks > 1
    _same_loss(loss, expected[0], "mean")
    assert _bits_equal(grad, expected[1])


def test_check_names_the_position_in_the_whole_batch(monkeypatch):
    """A disagreement in a late block is reported at its global position."""
    x = np.zeros((6, 5, 4), dtype=np.float16)
    x[4, 2, 3] = 7          # the position [4, 3]
    labels = np.zeros((6, 4), dtype=np.int64)
    real = _core.reference.softmax_loss

    def skewed(logits, *args, **kwargs):
        losses = real(logits, *args, **kwargs)
        losses[np.any(np.moveaxis(logits, kwargs["axis"], -1) == 7, axis=-1)] += 1e-3
        return losses

    monkeypatch.setattr(_core.reference, "softmax_loss", skewed)
    with pytest.raises(pysafemax.ReferenceMismatchError,
                       match=r"loss disagrees .* at position \[4, 3\]:"):
        _streamed(monkeypatch, x, labels, check=True)


@pytest.mark.parametrize("shape, axis", LAYOUTS[:4])
def test_a_bad_label_in_a_late_block_names_its_position(monkeypatch, shape, axis):
    rng = np.random.default_rng(3)
    x = _logits(rng, shape, "float16")
    labels, _ = _targets(rng, x, axis, "plain")
    labels[(-1,) * labels.ndim] = 99
    with pytest.raises(ValueError) as single:
        _unstreamed(monkeypatch, x, labels, axis=axis, return_grad=True)
    with pytest.raises(ValueError) as streamed:
        _streamed(monkeypatch, x, labels, axis=axis, return_grad=True)
    assert str(streamed.value) == str(single.value)
    assert "= 99 is out of range for C = " in str(single.value)


@pytest.mark.parametrize("shape, axis", LAYOUTS[:4])
@pytest.mark.parametrize("block_positions", [1, 3, 7, 1000])
def test_blocks_cover_every_position_once_in_order(shape, axis, block_positions):
    x = _core._validation.logits_array(np.zeros(shape, np.float16), axis, convert=False)
    order = np.arange(np.prod(x.position_shape)).reshape(x.position_shape)
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_core, "_STREAM_BYTES", block_positions * 10)
        for index, positions, _, _ in _core._blocks(x, 10):
            block = order[positions]
            assert block.size <= block_positions
            assert x.array[index].shape[x.axis] == x.classes
            seen.extend(block.reshape(-1))
    assert seen == list(range(order.size))


def test_memory_stays_within_the_block_budget(monkeypatch):
    """float16 logits and probabilities, and a float16 gradient: all three
    need converting (12 MiB as float32), yet only one block's copies are
    alive at a time."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((32768, 32)).astype(np.float16)
    probs = rng.random(x.shape).astype(np.float16)
    budget = 256 << 10
    monkeypatch.setattr(_core, "_STREAM_BYTES", budget)
    expected = pysafemax.softmax_loss(x.astype(np.float32), probs.astype(np.float32),
                                      reduction="sum", return_grad=True)
    out = np.empty_like(x)
    tracemalloc.start()
    try:
        loss, _ = pysafemax.softmax_loss(x, probs, reduction="sum", return_grad=True,
                                         out=out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Beyond the blocks: numpy's cast buffer (16 KiB) and a few small objects.
    assert peak < budget + (24 << 10), peak
    assert _bits_equal(out, expected[1].astype(np.float16))
    _same_loss(loss, expected[0], "sum")


@pytest.mark.parametrize("shape, axis", LAYOUTS[:4])
@pytest.mark.parametrize("block_positions", [1, 3, 7, 1000])
def test_position_blocks_name_their_first_position_and_count(shape, axis, block_positions):
    from pysafemax._blocks import position_blocks
    axis %= len(shape)
    position_shape = shape[:axis] + shape[axis + 1:]
    order = np.arange(np.prod(position_shape)).reshape(position_shape)
    for block in position_blocks(shape, axis, block_positions):
        flat = order[block.positions].reshape(-1)
        assert list(flat) == list(range(block.first, block.first + block.count))
