"""The cheap paths for tiny calls: softmax_loss on plain (N, C) logits with
(N,) int64 labels (with or without a gradient, any reduction), softmax and
log_softmax on plain (N, C) logits.

They must give the general path's bits, types and errors (axis=-1 names the
same axis but takes the general path), use the thread count that
set_num_threads, threads= and PYSAFEMAX_NUM_THREADS choose, and never let two
calls share the cell the kernel writes the reduced loss into: not two
threads, and not a call nested inside another on one thread.
"""
import inspect
import os
import subprocess
import sys
import threading
import typing

import numpy as np
import pytest

import pysafemax
from pysafemax import _bindings, _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def same(got, expected):
    """The same type, dtype, shape and bytes (pairs element by element)."""
    assert type(got) is type(expected)
    if isinstance(expected, tuple):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            same(g, e)
    elif isinstance(expected, np.ndarray):
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
        assert got.flags.c_contiguous and got.flags.owndata and got.flags.writeable
        assert got.tobytes() == expected.tobytes()
    else:
        assert np.asarray(got).tobytes() == np.asarray(expected).tobytes()


def logits(shape, dtype, seed=0, specials=(np.inf, -np.inf, np.nan), cap=np.inf):
    """Random logits no larger than cap, and beyond 8 of them, the three
    special values at every 7th, 11th and 13th place."""
    rng = np.random.default_rng(seed)
    x = np.minimum(rng.standard_normal(shape) * 20, cap).astype(dtype)
    if x.size > 8:
        for start, step, value in zip((0, 3, 5), (7, 11, 13), specials):
            x.reshape(-1)[start::step] = value
    return x


SHAPES = [(0, 3), (1, 1), (1, 10), (32, 10), (7, 1000), (3, 4099)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("return_grad", [False, True])
@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "readonly"])
def test_the_cheap_loss_gives_the_general_paths_results(dtype, method, return_grad,
                                                        writeable):
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        x = logits(shape, dtype)
        y = rng.integers(0, shape[1], shape[0])
        x.flags.writeable = y.flags.writeable = writeable
        for reduction in pysafemax.REDUCTIONS:
            for threads in (None, 1, 2, 300):
                kwargs = dict(method=method, reduction=reduction, threads=threads,
                              return_grad=return_grad)
                same(pysafemax.softmax_loss(x, y, **kwargs),
                     pysafemax.softmax_loss(x, y, axis=-1, **kwargs))


def finite_logits(shape, dtype, seed=0, huge=None):
    """Logits whose losses are numbers or +inf (a label on -inf), so that
    the cheap loss keeps the kernel's value rather than falling back; huge
    (by default a quarter of the dtype's max) must be one whose exp the
    method can sum, and no logit exceeds it."""
    if huge is None:
        return logits(shape, dtype, seed, (-np.inf, np.finfo(dtype).max / 4,
                                           np.finfo(dtype).tiny))
    return logits(shape, dtype, seed, (-np.inf, huge, np.finfo(dtype).tiny), cap=huge)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "readonly"])
def test_the_loss_by_value_gives_the_general_paths_bits(dtype, method, writeable):
    rng = np.random.default_rng(6)
    for shape in [(1, 1), (1, 10), (9, 3), (32, 10), (17, 17), (7, 1000), (3, 4099),
                  (40000, 2)]:
        # naive's exp overflows past 88 (float) and its sum is NaN
        x = finite_logits(shape, dtype, huge=80 if method == "naive" else None)
        y = rng.integers(0, shape[1], shape[0])
        x.flags.writeable = y.flags.writeable = writeable
        for reduction in ("mean", "sum", "valid", "full", "batch_size"):
            for threads in (None, 1, 2):
                kwargs = dict(method=method, reduction=reduction, threads=threads)
                value = _bindings.KERNELS[x.dtype].loss_value(
                    x, shape[0], shape[1], y, _bindings.options(method, reduction, threads or 1))
                assert value is not None and not np.isnan(value), (shape, kwargs)
                # the general path's, checked against the numpy reference
                same(pysafemax.softmax_loss(x, y, **kwargs),
                     pysafemax.softmax_loss(x, y, axis=-1, check=True, **kwargs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_loss_by_value_refuses_what_it_cannot_take(dtype):
    # the binding takes no layout on trust: it gives None, and the cheap
    # path then the general one, for every array the kernel cannot read
    k = _bindings.KERNELS[np.dtype(dtype)]
    opts = _bindings.options("stable", "mean", 1)
    x = finite_logits((6, 5), dtype)
    y = np.array([0, 4, 1, 2, 3, 0])
    assert k.loss_value(x, 6, 5, y, opts) == \
        pysafemax.softmax_loss(x, y, axis=-1)
    # a NaN loss is a value: -inf, never a loss, stands for none
    nan_loss = k.loss_value(np.where(x == x.max(), np.nan, x), 6, 5, y, opts)
    assert nan_loss is not None and np.isnan(nan_loss)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    misaligned = np.frombuffer(raw.data, dtype, count=x.size, offset=1).reshape(6, 5)
    misaligned[...] = x
    raw_labels = np.zeros(y.nbytes + 4, np.uint8)
    misaligned_labels = np.frombuffer(raw_labels.data, np.int64, count=6, offset=4)
    misaligned_labels[...] = y
    for logits_, labels_ in [(np.asfortranarray(x), y), (x[:, ::-1], y),
                             (np.broadcast_to(x[:1], (6, 5)), y),
                             (misaligned, y), (x, misaligned_labels),
                             (x, np.repeat(y, 2)[::2]), (x, _with_label(1, 5)[:6])]:
        assert k.loss_value(logits_, 6, 5, labels_, opts) is None
        if labels_.max() >= 5:
            with pytest.raises(ValueError, match=r"^labels\[1\] = 5 is out of range"):
                pysafemax.softmax_loss(logits_, labels_)
        else:
            same(pysafemax.softmax_loss(logits_, labels_),
                 pysafemax.softmax_loss(np.ascontiguousarray(logits_),
                                        np.ascontiguousarray(labels_), axis=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", pysafemax.METHODS)
def test_a_plain_out_buffer_takes_the_cheap_path_with_the_general_paths_results(dtype,
                                                                               method):
    rng = np.random.default_rng(4)
    for shape in SHAPES:
        x = logits(shape, dtype)
        y = rng.integers(0, shape[1], shape[0])
        for reduction in ("mean", "none"):
            out = np.full(shape, np.nan, dtype)
            got = pysafemax.softmax_loss(x, y, method=method, reduction=reduction,
                                         return_grad=True, out=out)
            assert got[1] is out
            same(got, pysafemax.softmax_loss(x, y, axis=-1, method=method,
                                             reduction=reduction, return_grad=True))
    # buffers it cannot take fall through to the general path and its checks
    x = logits((4, 5), dtype)
    y = np.zeros(4, np.int64)
    for out, error in ((np.empty((4, 5), np.float16), TypeError),
                       (np.empty((5, 4), dtype), ValueError),
                       (np.empty((4, 10), dtype)[:, ::2], ValueError),
                       (np.zeros(20, dtype)[:, None].reshape(4, 5)[::-1], ValueError)):
        with pytest.raises(error):
            pysafemax.softmax_loss(x, y, return_grad=True, out=out)
    with pytest.raises(ValueError, match="pass return_grad=True"):
        pysafemax.softmax_loss(x, y, out=np.empty((4, 5), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("writeable", [True, False], ids=["writeable", "readonly"])
def test_cheap_softmax_and_log_softmax_give_the_general_paths_results(dtype, writeable):
    for shape in SHAPES:
        x = logits(shape, dtype)
        x.flags.writeable = writeable
        for threads in (None, 1, 2, 300):
            for method in pysafemax.METHODS:
                same(pysafemax.softmax(x, method=method, threads=threads),
                     pysafemax.softmax(x, axis=-1, method=method, threads=threads))
            same(pysafemax.log_softmax(x, threads=threads),
                 pysafemax.log_softmax(x, axis=-1, threads=threads))


X = logits((6, 4), np.float32)
Y = np.array([0, 3, 1, 2, 2, 0])


def _with_label(position, value):
    y = Y.copy()
    y[position] = value
    return y


# (function, args, kwargs) that the general path rejects; every one looks
# plain enough to reach a cheap path first.
BAD_CALLS = [
    ("softmax_loss", (X, _with_label(5, 4)), {}),
    ("softmax_loss", (X, _with_label(0, -1)), {"return_grad": True}),
    ("softmax_loss", (X, _with_label(2, -2**63)), {"reduction": "none"}),
    ("softmax_loss", (X, _with_label(3, 2**40)), {"return_grad": True,
                                                  "reduction": "sum", "threads": 2}),
    ("softmax_loss", (X, Y.reshape(6, 1)), {}),
    ("softmax_loss", (X, Y[:5]), {"return_grad": True}),
    ("softmax_loss", (X, Y), {"method": "fast"}),
    ("softmax_loss", (X, Y), {"method": 2}),
    ("softmax_loss", (X, Y), {"reduction": "avg", "return_grad": True}),
    ("softmax_loss", (X, Y), {"reduction": None}),
    ("softmax_loss", (X, Y), {"return_grad": 1}),
    ("softmax_loss", (X, Y), {"return_grad": None}),
    ("softmax_loss", (X, Y), {"label_smoothing": False}),
    ("softmax_loss", (X, Y), {"label_smoothing": np.zeros(2)}),
    ("softmax_loss", (X[:, :0], Y), {}),
    ("softmax_loss", (X, Y.astype(np.float64)), {}),
    ("softmax_loss", (np.zeros((6, 4), np.int64), Y), {}),
    ("softmax_loss", (np.ma.masked_array(X), Y), {}),
    ("softmax_loss", (X, np.ma.masked_array(Y)), {}),
    ("softmax", (X[:, :0],), {}),
    ("softmax", (X,), {"method": "fast"}),
    ("softmax", (X,), {"method": ["stable"]}),
    ("softmax", (np.ma.masked_array(X),), {}),
    ("log_softmax", (X[:, :0],), {}),
    ("log_softmax", (np.zeros((6, 4), np.int8),), {}),
]
for _threads in (0, -1, 2.0, True, "2", np.float64(2)):
    BAD_CALLS += [("softmax_loss", (X, Y), {"threads": _threads}),
                  ("softmax_loss", (X, Y), {"threads": _threads, "return_grad": True}),
                  ("softmax", (X,), {"threads": _threads}),
                  ("log_softmax", (X,), {"threads": _threads})]


def raised(function, args, kwargs):
    with pytest.raises((TypeError, ValueError)) as error:
        getattr(pysafemax, function)(*args, **kwargs)
    return type(error.value), str(error.value)


@pytest.mark.parametrize("function, args, kwargs", BAD_CALLS)
def test_bad_input_raises_what_the_general_path_raises(function, args, kwargs):
    assert raised(function, args, kwargs) == raised(function, args, {**kwargs, "axis": -1})


def test_odd_but_legal_spellings_give_the_general_paths_results():
    for kwargs in ({"threads": np.int64(2)}, {"label_smoothing": 0},
                   {"label_smoothing": -0.0}, {"return_grad": np.True_},
                   {"method": np.str_("naive")}, {"check": np.False_}):
        same(pysafemax.softmax_loss(X, Y, **kwargs),
             pysafemax.softmax_loss(X, Y, axis=-1, **kwargs))
    for kwargs in ({"threads": np.int64(2)}, {"method": np.str_("maxsub")}):
        same(pysafemax.softmax(X, **kwargs), pysafemax.softmax(X, axis=-1, **kwargs))


def test_softmax_loss_shows_and_enforces_its_whole_signature():
    # softmax_loss names only the cheap path's options and takes the rest as
    # **options: callers must still see every option, keyword-only and
    # annotated, and get a TypeError naming softmax_loss for a call that
    # signature does not allow
    signature = inspect.signature(pysafemax.softmax_loss)
    assert list(signature.parameters) == [
        "logits", "labels", "axis", "method", "reduction", "weight", "ignore_index",
        "label_smoothing", "z_loss", "return_grad", "return_lse", "loss_dtype", "out",
        "threads", "check"]
    options = {name: p for name, p in signature.parameters.items()
               if name not in ("logits", "labels")}
    assert all(p.kind is p.KEYWORD_ONLY for p in options.values())
    assert set(typing.get_type_hints(pysafemax.softmax_loss)) == \
        set(signature.parameters) | {"return"}
    for args, kwargs, message in [
            ((X, Y), {"methd": "naive"}, "got an unexpected keyword argument 'methd'"),
            ((X, Y, "naive"), {}, "takes 2 positional arguments but 3 were given"),
            ((X, Y), {"logits": X}, "got multiple values for argument 'logits'"),
            ((X,), {}, "missing 1 required positional argument: 'labels'")]:
        # (Python 3.13 adds a suggestion: "Did you mean 'method'?")
        with pytest.raises(TypeError,
                           match=rf"^softmax_loss\(\) {message}(\. Did you mean '\w+'\?)?$"):
            pysafemax.softmax_loss(*args, **kwargs)
    # every option spelt out at its default: the general path, the same bits
    x = finite_logits((32, 10), np.float32)
    y = np.arange(32) % 10
    defaults = {name: p.default for name, p in options.items()}
    same(pysafemax.softmax_loss(x, y, **defaults), pysafemax.softmax_loss(x, y))
    same(pysafemax.softmax_loss(logits=x, labels=y), pysafemax.softmax_loss(x, y))


# --- thread counts ---------------------------------------------------------------

@pytest.fixture
def kernel_calls(monkeypatch):
    """(wrapper, thread count) of each call into the kernel, in call order:
    the wrappers the fast paths call (through which the general paths' go
    too)."""
    seen = []
    real_loss, real_softmax = _bindings.softmax_loss_by, _bindings.softmax_by
    real_log_softmax = _bindings.log_softmax_by

    def softmax_loss_by(*args):
        seen.append(("softmax_loss_by", args[7].struct.threads))
        return real_loss(*args)

    def recording_loss_value(real):
        def loss_value(*args):
            seen.append(("loss_value", args[4].struct.threads))
            return real(*args)
        return loss_value

    def softmax_by(*args):
        seen.append(("softmax_by", min(args[6], _bindings.MAX_THREADS)))
        return real_softmax(*args)

    def log_softmax_by(*args):
        seen.append(("log_softmax_by", min(args[5], _bindings.MAX_THREADS)))
        return real_log_softmax(*args)

    monkeypatch.setattr(_bindings, "softmax_loss_by", softmax_loss_by)
    for dtype, k in list(_bindings.KERNELS.items()):
        monkeypatch.setitem(_bindings.KERNELS, dtype,
                            k._replace(loss_value=recording_loss_value(k.loss_value)))
    monkeypatch.setattr(_bindings, "softmax_by", softmax_by)
    monkeypatch.setattr(_bindings, "log_softmax_by", log_softmax_by)
    monkeypatch.setattr(_core, "_num_threads", None)
    yield seen
    pysafemax.set_num_threads(None)


CHEAP_CALLS = [  # (kwargs, the wrapper the call goes through)
    ({}, "loss_value"),
    ({"reduction": "sum", "method": "naive"}, "loss_value"),
    ({"return_grad": True}, "softmax_loss_by"),
    ({"reduction": "none"}, "softmax_loss_by"),
]


def _every_cheap_call(**kwargs):
    for extra, _ in CHEAP_CALLS:
        pysafemax.softmax_loss(X, Y, **extra, **kwargs)
    pysafemax.softmax(X, **kwargs)
    pysafemax.log_softmax(X, **kwargs)


def test_cheap_calls_follow_set_num_threads_and_threads(kernel_calls):
    default = pysafemax.get_num_threads()
    wrappers = [name for _, name in CHEAP_CALLS] + ["softmax_by", "log_softmax_by"]
    for setting, threads, expected in [(3, None, 3), (1, None, 1), (5, 2, 2),
                                       (None, None, default), (None, 7, 7),
                                       (None, 2**40, 256), (2**31, None, 256),
                                       (4, None, 4)]:
        pysafemax.set_num_threads(setting)
        kernel_calls.clear()
        _every_cheap_call(threads=threads)
        assert kernel_calls == [(name, expected) for name in wrappers], (setting, threads)


def test_a_nan_loss_comes_by_value_and_a_bad_label_takes_the_general_path(kernel_calls):
    # X's loss is NaN, a loss like any other; a bad label makes the kernel
    # give no value, and the general path, with one more kernel call, finds
    # which label it was
    threads = pysafemax.get_num_threads()
    assert np.isnan(pysafemax.softmax_loss(X, Y))
    assert kernel_calls == [("loss_value", threads)]
    kernel_calls.clear()
    with pytest.raises(ValueError, match=r"^labels\[4\] = 9 is out of range"):
        pysafemax.softmax_loss(X, _with_label(4, 9))
    assert kernel_calls == [("loss_value", threads), ("softmax_loss_by", threads)]


ENVIRONMENT_THREADS = """
import numpy as np
import pysafemax
from pysafemax import _bindings
seen = []
real = _bindings.softmax_loss_by
def recording(*args):
    seen.append(args[7].struct.threads)
    return real(*args)
def recording_value(real_value):
    def loss_value(*args):
        seen.append(args[4].struct.threads)
        return real_value(*args)
    return loss_value
_bindings.softmax_loss_by = recording
k = _bindings.KERNELS[np.dtype(np.float32)]
_bindings.KERNELS[np.dtype(np.float32)] = k._replace(loss_value=recording_value(k.loss_value))
x = np.zeros((3, 4), np.float32)
y = np.array([0, 1, 2])
pysafemax.softmax_loss(x, y)
pysafemax.softmax_loss(x, y, return_grad=True)
pysafemax.set_num_threads(1)
pysafemax.softmax_loss(x, y)
pysafemax.set_num_threads(None)
pysafemax.softmax_loss(x, y)
print(*seen)
"""


@pytest.mark.parametrize("value, expected", [("3", [3, 3, 1, 3]),
                                             ("1", [1, 1, 1, 1])])
def test_cheap_calls_follow_the_environment_thread_count(value, expected):
    done = subprocess.run([sys.executable, "-c", ENVIRONMENT_THREADS], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYSAFEMAX_NUM_THREADS": value})
    assert done.returncode == 0, done.stderr
    assert list(map(int, done.stdout.split())) == expected


# --- the reused loss cells ---------------------------------------------------------

def _distinct_problems(count):
    """count (x, y) pairs whose losses all differ, and their losses alone."""
    rng = np.random.default_rng(11)
    problems = [((rng.standard_normal((4, 3)) * (k + 1)).astype(np.float32),
                 rng.integers(0, 3, 4)) for k in range(count)]
    alone = [pysafemax.softmax_loss(x, y) for x, y in problems]
    assert len(set(alone)) == count
    return problems, alone


def test_threads_never_read_each_others_loss():
    # Tiny calls spend most of their time in the kernel, without the GIL: a
    # loss cell shared between threads would be overwritten between one
    # thread's kernel call and its read of the cell.
    problems, alone = _distinct_problems(8)
    barrier = threading.Barrier(8)
    wrong, errors = [], []

    def worker(k):
        x, y = problems[k]
        try:
            barrier.wait()
            for _ in range(4000):
                loss = pysafemax.softmax_loss(x, y)
                if loss != alone[k]:
                    wrong.append((k, loss))
                loss, _ = pysafemax.softmax_loss(x, y, return_grad=True)
                if loss != alone[k]:
                    wrong.append((k, loss))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    assert not wrong, f"{len(wrong)} losses were another thread's, e.g. {wrong[:3]}"


def test_a_call_nested_at_any_point_of_another_keeps_both_losses():
    # A signal handler (or a finalizer) can run Python between any two lines
    # of the wrapper, on the same thread, and call softmax_loss: a trace
    # function does so here at every line of the wrapper.
    problems, alone = _distinct_problems(2)
    (x, y), (inner_x, inner_y) = problems
    wrapper = _bindings.softmax_loss_by.__code__
    nested = []

    def trace(frame, event, arg):
        if event == "call":
            return trace if frame.f_code is wrapper and not nested_running else None
        if event == "line":
            nested_running.append(True)
            try:
                nested.append((frame.f_lineno, pysafemax.softmax_loss(inner_x, inner_y)))
            finally:
                nested_running.pop()
        return trace

    nested_running = []
    sys.settrace(trace)
    try:
        outer = pysafemax.softmax_loss(x, y)
        outer_with_grad, _ = pysafemax.softmax_loss(x, y, return_grad=True)
    finally:
        sys.settrace(None)
    assert len(nested) > 10    # a nested call at each line of both calls
    assert all(loss == alone[1] for _, loss in nested), nested
    assert outer == outer_with_grad == alone[0]


def test_a_failed_call_leaves_later_calls_right():
    problems, alone = _distinct_problems(3)
    for k, (x, y) in enumerate(problems):
        bad = y.copy()
        bad[1] = 3
        with pytest.raises(ValueError, match=r"^labels\[1\] = 3 is out of range"):
            pysafemax.softmax_loss(x, bad, return_grad=True)
        assert pysafemax.softmax_loss(x, y) == alone[k]


def test_the_tiny_call_benchmark_runs():
    # against this checkout itself: the results must agree, every call printed
    done = subprocess.run([sys.executable, "bench/tiny_calls.py", "--against", ROOT,
                           "--no-torch", "--rounds", "1", "--repeats", "1",
                           "--calls", "50"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "old and new results: identical" in done.stdout
    for name in ("loss (32,10)", "loss+grad (32,10)", "softmax (32,10)",
                 "softmax out= (32,10)", "log_softmax (32,10)", "loss (1,10)",
                 "cffi floor (32,10)", "loop overhead"):
        assert any(line.startswith(name + " ") for line in done.stdout.splitlines()), name
