"""Hostile inputs (issue 11): aliases, races, partial states that must own
their data, thread counts of any size, masked arrays, a mean over no weight,
and Caffe's float64 clamp.  Nothing here may crash the interpreter or give a
silently wrong answer: each case gets a result or a precise exception.
"""
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pysafemax
from pysafemax import _bindings, _core, reference
from pysafemax._bindings import ffi, lib

FLOATS = [np.float32, np.float64]
CTYPE = {np.float32: "float[]", np.float64: "double[]"}
KERNEL = {np.float32: lib.psm_softmax_loss_f32, np.float64: lib.psm_softmax_loss_f64}


def run_python(code, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=timeout)


# --- the reproducers ----------------------------------------------------

def test_out_sharing_the_labels_is_refused_not_a_crash():
    x = np.zeros((6, 5), np.float32)
    buf = np.zeros(30, np.float32)
    labels = buf[:12].view(np.int64)
    with pytest.raises(ValueError, match="^out must not overlap the labels"):
        pysafemax.softmax_loss(x, labels, return_grad=True, out=buf.reshape(6, 5))
    assert not buf.any()      # nothing was written


def test_out_sharing_the_weight_is_refused_not_a_wrong_answer():
    x = np.random.default_rng(0).normal(size=(4, 8))
    y = np.array([0, 1, 2, 3])
    buf = np.zeros(40)
    w = buf[:8]
    w[:] = 1.0
    with pytest.raises(ValueError, match="^out must not overlap the weight"):
        pysafemax.softmax_loss(x, y, weight=w, return_grad=True,
                               out=buf[:32].reshape(4, 8), label_smoothing=0.1)
    expected = pysafemax.softmax_loss(x, y, weight=np.ones(8), label_smoothing=0.1)
    assert expected == pytest.approx(2.5143, abs=1e-4)
    assert pysafemax.softmax_loss(x, y, weight=w, label_smoothing=0.1) == expected


@pytest.mark.parametrize("dtype", FLOATS)
def test_out_sharing_probability_targets_is_refused(dtype):
    buf = np.full((2, 4, 3), 1 / 3, dtype)
    x = np.zeros((4, 3), dtype)
    with pytest.raises(ValueError, match="^out must not overlap the labels"):
        pysafemax.softmax_loss(x, buf[0], return_grad=True, out=buf[0])


def test_out_next_to_its_inputs_is_accepted():
    # Adjacent, not overlapping: one buffer cut in three.
    buf = np.zeros(4 * 3 + 4 + 3)
    out = buf[:12].reshape(4, 3)
    labels = buf[12:16].view(np.int64)
    labels[:] = [0, 1, 2, 0]
    weight = buf[16:19]
    weight[:] = [1.0, 2.0, 3.0]
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    loss, grad = pysafemax.softmax_loss(x, labels, weight=weight, return_grad=True,
                                        out=out)
    expected = pysafemax.softmax_loss(x, np.array([0, 1, 2, 0]),
                                      weight=np.array([1.0, 2.0, 3.0]), return_grad=True)
    assert grad is out and loss == expected[0]
    np.testing.assert_array_equal(grad, expected[1])


def test_out_overlap_is_refused_on_the_streamed_path(monkeypatch):
    # float16 logits are converted block by block: the streamed path.
    monkeypatch.setattr(_core, "_STREAM_BYTES", 64)
    x = np.zeros((8, 8), np.float16)
    buf = np.zeros(64, np.float16)
    labels = buf[:32].view(np.int64)
    with pytest.raises(ValueError, match="^out must not overlap the labels"):
        pysafemax.softmax_loss(x, labels, return_grad=True, out=buf.reshape(8, 8))


# --- the kernel bounds every label where it reads it --------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("method", ["naive", "maxsub", "stable"])
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_bounds_labels_its_own_gradient_overwrote(dtype, method, threads):
    # A C caller may alias as Python refuses to: the gradient of row 0 is
    # written over the labels of rows 1 and 2 after they were checked.  The
    # kernel reads each label again when it uses it, and must bound it then.
    x = np.zeros((6, 5), dtype)
    buf = np.zeros(30, dtype)
    labels = buf[:6 * 8 // buf.itemsize].view(np.int64)
    assert labels.shape == (6,) and not labels.any()
    options = _bindings.options(method, "mean", threads).struct
    loss = ffi.new("double *")
    status = KERNEL[dtype](ffi.from_buffer(CTYPE[dtype], x), 6, 5, 1,
                           ffi.from_buffer("int64_t[]", labels), ffi.NULL, options,
                           ffi.NULL, loss, ffi.from_buffer(CTYPE[dtype], buf))
    # Row 0's label was read before its gradient overwrote it; row 1's after.
    assert not 0 <= labels[1] < 5
    assert status == 1 + 1     # position 1, the first bad label read


@pytest.mark.parametrize("dtype", FLOATS)
def test_partial_gradient_bounds_labels_too(dtype):
    x = np.zeros((6, 5), dtype)
    labels = np.zeros(6, np.int64)
    state = pysafemax.softmax_partials(x, labels, num_classes=5)
    buf = np.zeros(30, dtype)
    aliased = buf[:6 * 8 // buf.itemsize].view(np.int64)
    options = _bindings.options("stable", "mean", 1).struct
    kernel = {np.float32: lib.psm_grad_from_partials_f32,
              np.float64: lib.psm_grad_from_partials_f64}[dtype]
    status = kernel(ffi.from_buffer(CTYPE[dtype], x), 6, 5, 1, 0, 5,
                    ffi.from_buffer("int64_t[]", aliased), ffi.NULL, options,
                    ffi.from_buffer("psm_partial[]", state.state.reshape(-1),
                                    require_writable=False),
                    ffi.from_buffer(CTYPE[dtype], buf))
    assert status == 2


RACE = """
import sys, threading, time, re
import numpy as np
import pysafemax

threads, method, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
x = np.zeros((1_000_000, 10), np.float32)
if path == "float16":     # converted block by block: the streamed path
    x = x.astype(np.float16)
y = np.zeros(len(x), np.int64)
stop = False

def flip():
    while not stop:
        y[:] = 0
        time.sleep(0.0005)
        y[:] = 1 << 40

flipper = threading.Thread(target=flip)
flipper.start()
results = errors = 0
message = re.compile(r"^labels\\[\\d+\\] (= 1099511627776 is out of range|was out of "
                     r"range when it was read, and is 0 now)")
deadline = time.monotonic() + float(sys.argv[4])
try:
    while time.monotonic() < deadline:
        try:
            if path == "partials":
                state = pysafemax.softmax_partials(x, y, num_classes=10, threads=threads)
                pysafemax.loss_from_partials(state)
            else:
                pysafemax.softmax_loss(x, y, method=method, threads=threads,
                                       return_grad=path == "grad")
            results += 1
        except ValueError as exc:
            assert message.match(str(exc)), str(exc)
            errors += 1
finally:
    stop = True
    flipper.join()
print(results, errors)
"""


@pytest.mark.parametrize("threads, method, path", [
    (1, "stable", "plain"), (2, "maxsub", "plain"), (1, "naive", "grad"),
    (2, "stable", "float16"), (1, "stable", "partials")])
def test_labels_rewritten_during_calls_never_crash(threads, method, path):
    # The caller's race, but the answer must be a result or a ValueError:
    # before the kernel bounded labels at the point of use this was SIGSEGV
    # within a second.
    done = run_python(RACE.replace("sys.argv[1]", repr(str(threads)))
                      .replace("sys.argv[2]", repr(method))
                      .replace("sys.argv[3]", repr(path))
                      .replace("float(sys.argv[4])", "1.5"))
    assert done.returncode == 0, done.stderr[-2000:]
    results, errors = map(int, done.stdout.split())
    assert results + errors > 0


# --- partial states own their data ----------------------------------------------

def _partials_case():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    weight = rng.uniform(0.5, 2.0, 10)
    return x, labels, weight


def test_a_partial_state_keeps_its_own_labels_and_weights():
    x, labels, weight = _partials_case()
    given_labels, given_weight = labels.copy(), weight.copy()
    parts = [pysafemax.softmax_partials(x[:, :4], labels, class_offset=0,
                                        weight=weight, label_smoothing=0.1),
             pysafemax.softmax_partials(x[:, 4:], labels, class_offset=4,
                                        weight=weight, label_smoothing=0.1)]
    state = pysafemax.combine_partials(parts)
    before = pysafemax.loss_from_partials(state)
    labels[:] = 0
    weight[:] = 7.0
    assert pysafemax.loss_from_partials(state) == before
    assert before == pytest.approx(pysafemax.softmax_loss(
        x, given_labels, weight=given_weight, label_smoothing=0.1), rel=1e-12)
    for array in (state.labels, state.weight, state.state):
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[...] = 0


def test_grad_from_partials_compares_label_contents_not_identity():
    x, labels, _ = _partials_case()
    state = pysafemax.softmax_partials(x, labels)
    pysafemax.grad_from_partials(state, x, labels)       # the same labels: fine
    labels[0] = (labels[0] + 1) % 10                      # edited in place
    with pytest.raises(ValueError, match="labels differ"):
        pysafemax.grad_from_partials(state, x, labels)


def test_an_unpickled_state_is_read_only_and_equal():
    x, labels, weight = _partials_case()
    state = pysafemax.softmax_partials(x, labels, weight=weight)
    copy = pickle.loads(pickle.dumps(state))
    for array in (copy.labels, copy.weight, copy.state):
        assert not array.flags.writeable
    assert pysafemax.loss_from_partials(copy) == pysafemax.loss_from_partials(state)


# --- thread counts ----------------------------------------------------------------

@pytest.mark.parametrize("threads", [2**31, 2**63, 2**200, np.int64(2**40)])
def test_thread_counts_past_a_c_int_are_capped(threads):
    x = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    y = np.arange(50) % 7
    expected = pysafemax.softmax_loss(x, y, threads=1, return_grad=True)
    got = pysafemax.softmax_loss(x, y, threads=threads, return_grad=True)
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    state = pysafemax.softmax_partials(x, y, threads=threads)
    assert pysafemax.loss_from_partials(state) == pytest.approx(expected[0], rel=1e-6)
    pysafemax.grad_from_partials(state, x, y, threads=threads)


def test_set_num_threads_caps_at_the_kernels_maximum(monkeypatch):
    monkeypatch.setattr(_core, "_num_threads", None)
    pysafemax.set_num_threads(2**31)
    assert pysafemax.get_num_threads() == lib.PSM_MAX_THREADS == 256
    assert pysafemax.softmax_loss(np.zeros((2, 3), np.float32), [0, 1]) > 0
    pysafemax.set_num_threads(None)


@pytest.mark.parametrize("value", [-1, 0, -2**70])
def test_thread_counts_below_one_are_refused(value):
    with pytest.raises(ValueError, match=f"^threads must be >= 1, got {value}$"):
        pysafemax.softmax_loss(np.zeros((2, 3), np.float32), [0, 1], threads=value)
    with pytest.raises(ValueError, match=f"^n must be >= 1, got {value}$"):
        pysafemax.set_num_threads(value)


THREADS_FROM_ENVIRONMENT = """
import os, warnings
import numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pysafemax
    for _ in range(3):
        assert pysafemax.softmax_loss(np.zeros((2, 3), np.float32), [0, 1]) > 0
    print(pysafemax.get_num_threads(), len(os.sched_getaffinity(0)))
    for w in caught:
        print(w.category.__name__, w.message)
"""


@pytest.mark.parametrize("value", ["", " ", "-1", "0", "abc", "2.5", "1e3", "\u0663",
                                   "x" * 200])
def test_an_invalid_environment_thread_count_warns_once_and_is_ignored(value):
    import os
    done = run_python(THREADS_FROM_ENVIRONMENT,
                      env={**os.environ, "PYSAFEMAX_NUM_THREADS": value})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    count, cores = map(int, lines[0].split())
    assert count == cores
    assert len(lines) == 2, lines
    assert lines[1].startswith("RuntimeWarning PYSAFEMAX_NUM_THREADS=")
    assert "ignored" in lines[1] and len(lines[1]) < 200


@pytest.mark.parametrize("value, expected", [("99999999999", 256), ("3", 3), (" 2 ", 2)])
def test_a_huge_environment_thread_count_is_capped(value, expected):
    import os
    done = run_python(THREADS_FROM_ENVIRONMENT,
                      env={**os.environ, "PYSAFEMAX_NUM_THREADS": value})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert int(lines[0].split()[0]) == expected and len(lines) == 1, lines


# --- class offsets and counts past int64 ---------------------------------------

def test_a_class_block_ending_past_int64_is_a_value_error():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="^a block of 5 classes at class_offset "
                                         "9223372036854775805 ends past class"):
        pysafemax.softmax_partials(x, [0, 1], class_offset=2**63 - 3)
    with pytest.raises(ValueError, match="^num_classes must fit in int64"):
        pysafemax.softmax_partials(x, [0, 1], num_classes=2**64)
    state = pysafemax.softmax_partials(x, [2**63 - 2, 2**63 - 3],
                                       class_offset=2**63 - 6)
    assert state.classes_covered == ((2**63 - 6, 2**63 - 1),)


# --- masked arrays are refused --------------------------------------------------

MASKED = np.ma.masked_array(np.zeros((3, 4)), mask=np.eye(3, 4, dtype=bool))
MASKED_LABELS = np.ma.masked_array([0, 1, 2], mask=[0, 1, 0])


@pytest.mark.parametrize("call", [
    lambda: pysafemax.softmax_loss(MASKED, [0, 1, 2]),
    lambda: pysafemax.softmax_loss(MASKED.astype(np.float32), [0, 1, 2]),
    lambda: pysafemax.softmax(MASKED),
    lambda: pysafemax.log_softmax(MASKED),
    lambda: pysafemax.softmax_partials(MASKED, [0, 1, 2]),
    lambda: pysafemax.grad_from_partials(
        pysafemax.softmax_partials(MASKED.data, [0, 1, 2]), MASKED, [0, 1, 2]),
    lambda: reference.softmax_loss(MASKED, [0, 1, 2]),
    lambda: pysafemax.diagnose(MASKED, [0, 1, 2]),
], ids=["loss", "loss-float32", "softmax", "log_softmax", "partials",
        "grad_from_partials", "reference", "diagnose"])
def test_masked_logits_are_refused(call):
    with pytest.raises(TypeError, match="^logits is a masked array; pysafemax does "
                                        "not read masks: fill the masked logits "
                                        r"with -inf \(logits.filled\(-np.inf\)\)$"):
        call()


@pytest.mark.parametrize("call", [
    lambda: pysafemax.softmax_loss(MASKED.data, MASKED_LABELS),
    lambda: pysafemax.softmax_loss(MASKED.data, MASKED_LABELS, ignore_index=-100,
                                   return_grad=True),
    lambda: pysafemax.softmax_partials(MASKED.data, MASKED_LABELS),
    lambda: reference.softmax_loss(MASKED.data, MASKED_LABELS),
    lambda: pysafemax.diagnose(MASKED.data, MASKED_LABELS),
], ids=["loss", "loss-grad", "partials", "reference", "diagnose"])
def test_masked_labels_are_refused(call):
    with pytest.raises(TypeError, match=r"^labels is a masked array; pysafemax does "
                                        r"not read masks: fill the masked labels "
                                        r"with an ignore_index value"):
        call()


def test_masked_labels_filled_as_the_message_says_are_ignored():
    x = np.random.default_rng(3).normal(size=(3, 4))
    filled = MASKED_LABELS.filled(-100)
    got = pysafemax.softmax_loss(x, filled, ignore_index=-100, reduction="none")
    assert got[1] == 0
    assert got[0] == pysafemax.softmax_loss(x[:1], [0], reduction="none")[0]


# --- a mean over no weight is NaN, as PyTorch's 0 / 0 -------------------------

def _zero_weight_case(dtype):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 4)).astype(dtype)
    y = np.array([0, -100, 1, 0, 1])
    w = np.array([0.0, 0.0, 1.0, 2.0])    # no weight on any label present
    return x, y, w


def _assert_nan_where_counted(grad, y):
    counted = y != -100
    assert np.isnan(grad[counted]).all()
    assert (grad[~counted] == 0).all()
    assert not np.isinf(grad).any()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("method", ["naive", "maxsub", "stable"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2, 1.0])
def test_zero_total_weight_gives_nan_not_inf(dtype, method, smoothing):
    x, y, w = _zero_weight_case(dtype)
    kwargs = dict(method=method, weight=w, ignore_index=-100,
                  label_smoothing=smoothing, return_grad=True)
    for module in (pysafemax, reference):
        loss, grad = module.softmax_loss(x, y, **kwargs)
        assert np.isnan(loss)
        _assert_nan_where_counted(grad, y)
    loss, grad = pysafemax.softmax_loss(x, y, check=True, **kwargs)
    assert np.isnan(loss)
    _assert_nan_where_counted(grad, y)
    # sum has no normalizer: finite
    assert np.isfinite(pysafemax.softmax_loss(x, y, method=method, weight=w,
                                              ignore_index=-100, reduction="sum",
                                              label_smoothing=smoothing))


def test_zero_total_weight_on_the_streamed_and_partial_paths(monkeypatch):
    x, y, w = _zero_weight_case(np.float64)
    monkeypatch.setattr(_core, "_STREAM_BYTES", 40)
    loss, grad = pysafemax.softmax_loss(np.asfortranarray(x), y, weight=w,
                                        ignore_index=-100, label_smoothing=0.2,
                                        return_grad=True)
    assert np.isnan(loss)
    _assert_nan_where_counted(grad, y)
    parts = [pysafemax.softmax_partials(x[:, :2], y, weight=w, ignore_index=-100,
                                        label_smoothing=0.2),
             pysafemax.softmax_partials(x[:, 2:], y, class_offset=2, weight=w,
                                        ignore_index=-100, label_smoothing=0.2)]
    state = pysafemax.combine_partials(parts)
    assert np.isnan(pysafemax.loss_from_partials(state))
    _assert_nan_where_counted(pysafemax.grad_from_partials(state, x[:, 2:], y,
                                                           class_offset=2), y)


def test_zero_total_weight_matches_torch():
    torch = pytest.importorskip("torch")
    x, y, w = _zero_weight_case(np.float64)
    tx = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(tx, torch.tensor(y), weight=torch.tensor(w),
                                             label_smoothing=0.2)
    loss.backward()
    ours = pysafemax.softmax_loss(x, y, weight=w, ignore_index=-100,
                                  label_smoothing=0.2, return_grad=True)
    assert np.isnan(loss.item()) and np.isnan(ours[0])
    np.testing.assert_array_equal(ours[1], tx.grad.numpy())


# --- every check holds on the oldest numpy declared --------------------------

@pytest.mark.parametrize("module", [pysafemax, reference])
def test_uint64_labels_past_int64_never_pass_for_ignore_index(module):
    labels = np.array([0, 2**63, 1, 2], np.uint64)
    with pytest.raises(ValueError, match=r"^labels\[1\] = 9223372036854775808 is out "
                                         r"of range for C = 3 classes"):
        module.softmax_loss(np.zeros((4, 3), np.float32), labels, ignore_index=-2**63)


def test_a_bfloat16_tensor_is_a_type_error():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="^logits could not be read as an array"):
        pysafemax.softmax_loss(torch.zeros((2, 3), dtype=torch.bfloat16), [0, 1])


def test_a_label_found_bad_in_a_later_block_is_named_in_the_whole_batch(monkeypatch):
    # A streamed call checks every label first; a label another thread
    # changes afterwards is found by its block's kernel call, which counts
    # positions from the block's start: the error must count from the batch's.
    monkeypatch.setattr(_core, "_STREAM_BYTES", 64)
    x = np.zeros((10, 3), np.float16)            # converted: streamed
    y = np.arange(10) % 3
    calls = []
    real = _bindings.softmax_loss

    def second_block_finds_position_1(*args):
        calls.append(args[0].shape)
        if len(calls) == 2:
            raise _bindings.BadLabel(1)
        return real(*args)

    monkeypatch.setattr(_bindings, "softmax_loss", second_block_finds_position_1)
    with pytest.raises(ValueError) as error:
        pysafemax.softmax_loss(x, y)
    first_block = calls[0][0]
    assert str(error.value).startswith(f"labels[{first_block + 1}] was out of range when "
                                       f"it was read, and is {y[first_block + 1]} now")


# --- the label summary's scan ---------------------------------------------------

@pytest.mark.parametrize("positions", [1, 7, 8, 9, 33, 1000])
@pytest.mark.parametrize("bad", [-1, 10, -2**63, 2**63 - 1, -2**62, 2**62])
def test_label_summary_names_the_first_bad_label_wherever_it_is(positions, bad):
    # Without ignore_index or weights, psm_label_summary scans the labels
    # with no branch per label, then looks for the first bad one only if
    # that scan saw one: it must still name the first, and count all.
    classes = 10
    opts = _bindings.options("stable", "mean", 1)
    labels = np.arange(positions, dtype=np.int64) % classes
    assert _bindings.label_summary(labels, positions, classes, opts) == (positions,
                                                                         float(positions))
    for first in sorted({0, positions // 2, positions - 1}):
        spoiled = labels.copy()
        spoiled[first] = bad
        spoiled[first + 1:][::3] = -5        # later bad labels do not matter
        with pytest.raises(_bindings.BadLabel) as caught:
            _bindings.label_summary(spoiled, positions, classes, opts)
        assert caught.value.position == first
    # the last class and class 0 are in range; one class is only 0
    edge = np.where(np.arange(positions) % 2 == 0, classes - 1, 0).astype(np.int64)
    assert _bindings.label_summary(edge, positions, classes, opts)[0] == positions
    assert _bindings.label_summary(np.zeros(positions, np.int64), positions, 1,
                                   opts)[0] == positions
