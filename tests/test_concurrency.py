"""Threads and determinism.

cffi releases the GIL around every kernel call, so calls from several Python
threads really run at once; the kernel shares only its thread pool between
calls, so each result must be bit-identical to the same call made alone
(tests/test_pool.py tests the pool itself).  Every call must also be
deterministic, for every thread count the library offers.
"""
import inspect
import threading

import numpy as np
import pytest

import pysafemax

# The thread counts to check determinism over: whatever the library offers.
if "threads" in inspect.signature(pysafemax.softmax_loss).parameters:
    THREAD_COUNTS = [1, 2, 3, 4]
else:
    THREAD_COUNTS = [None]


def workload():
    """Calls of different shapes, methods and options, with their arguments."""
    rng = np.random.default_rng(0)
    calls = []
    for k, method in enumerate(pysafemax.METHODS * 3):
        shape = [(3000, 7), (400, 333), (64, 3, 20, 5), (9, 1000)][k % 4]
        x = (rng.standard_normal(shape) * [1, 30, 100][k % 3]).astype(
            [np.float32, np.float64][k % 2])
        labels = rng.integers(0, shape[1], shape[:1] + shape[2:])
        options = [dict(reduction="none"),
                   dict(reduction="mean", weight=rng.random(shape[1]), label_smoothing=0.1),
                   dict(reduction="valid", ignore_index=0),
                   dict(reduction="sum")][k % 4]
        calls.append((x, labels, dict(method=method, return_grad=True, **options)))
    return calls


def as_bytes(result):
    loss, grad = result
    return np.asarray(loss).tobytes(), grad.tobytes()


def test_eight_threads_give_the_results_of_calls_made_alone():
    calls = workload()
    alone = [as_bytes(pysafemax.softmax_loss(x, y, **kw)) for x, y, kw in calls]
    barrier = threading.Barrier(8)
    mismatches, errors = [], []

    def worker(offset):
        try:
            barrier.wait()
            for round_ in range(6):
                for k in range(len(calls)):
                    index = (k + offset + round_) % len(calls)
                    x, y, kw = calls[index]
                    if as_bytes(pysafemax.softmax_loss(x, y, **kw)) != alone[index]:
                        mismatches.append((offset, index))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} results differ from the same call alone"


def test_threads_mixing_all_entry_points():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 129)).astype(np.float32)
    expected = (pysafemax.softmax(x).tobytes(), pysafemax.log_softmax(x).tobytes())
    results = []

    def worker():
        for _ in range(20):
            results.append((pysafemax.softmax(x).tobytes(),
                            pysafemax.log_softmax(x).tobytes()))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 160 and all(r == expected for r in results)


@pytest.mark.parametrize("index", range(len(pysafemax.METHODS) * 3))
def test_every_call_is_deterministic_over_thread_counts(index):
    x, y, kw = workload()[index]
    results = []
    for count in THREAD_COUNTS:
        extra = {} if count is None else {"threads": count}
        for _ in range(3):
            results.append(as_bytes(pysafemax.softmax_loss(x, y, **kw, **extra)))
    assert all(r == results[0] for r in results)
