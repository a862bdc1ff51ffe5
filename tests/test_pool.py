"""The kernel's thread pool (csrc/chunks.c): helpers started on first need and
parked between calls, shared by every call of the process.

Each call's chunks are cut by its shape alone and summed in order, so every
thread count gives the same bits, on shapes either side of the point where a
call starts taking a second, third ... thread.  The pool is state shared by
the whole process, so it must also survive several Python threads calling at
once (one owns the pool, the others start threads of their own), fork (the
child has none of the parent's helpers), an idle process (parked helpers
burn no CPU), and exit while a call is running.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import pysafemax

THREAD_COUNTS = [1, 2, 3, 4, 8]
# chunks.h's PSM_ELEMENTS_PER_THREAD: a call takes min(threads, logits //
# this) threads.  The shapes below sit one position either side of k times
# it for k = 2, 3, 4 and 8, and either side of the old value (1 << 21).
ELEMENTS_PER_THREAD = 1 << 17


def _either_side(classes, per_thread, counts=(2, 3, 4, 8)):
    shapes = []
    for k in counts:
        edge = k * per_thread // classes
        shapes += [(edge, classes), (edge + 1, classes)]
    return shapes


SHAPES = (_either_side(1000, ELEMENTS_PER_THREAD) + _either_side(10, ELEMENTS_PER_THREAD, (2, 4))
          + _either_side(1000, 1 << 21, (2,)))


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 8).astype(dtype)
    y = rng.integers(0, shape[1], shape[0])
    return x, y


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_thread_count_gives_the_same_bits_either_side_of_the_threshold(shape):
    x, y = _data(shape, np.float32, shape[0])
    results = {}
    for threads in THREAD_COUNTS:
        loss, grad = pysafemax.softmax_loss(x, y, threads=threads, return_grad=True)
        losses = pysafemax.softmax_loss(x, y, method="maxsub", reduction="none",
                                        threads=threads)
        probs = pysafemax.softmax(x, threads=threads)
        state = pysafemax.softmax_partials(x, y, threads=threads)
        results[threads] = (np.float32(loss).tobytes(), grad.tobytes(), losses.tobytes(),
                            probs.tobytes(),
                            np.float32(pysafemax.loss_from_partials(state)).tobytes())
    for threads in THREAD_COUNTS[1:]:
        assert results[threads] == results[1], f"threads={threads} differs from threads=1"


def test_float64_over_thread_counts():
    x, y = _data((1049, 1000), np.float64, 3)
    expected = pysafemax.softmax_loss(x, y, threads=1, return_grad=True)
    for threads in THREAD_COUNTS[1:]:
        loss, grad = pysafemax.softmax_loss(x, y, threads=threads, return_grad=True)
        assert np.float64(loss).tobytes() == np.float64(expected[0]).tobytes()
        assert grad.tobytes() == expected[1].tobytes()


def test_many_python_threads_calling_with_two_threads_each():
    # cffi releases the GIL: these calls really overlap, and all but one at a
    # time find the pool owned.  Each must give the single-threaded bits.
    cases = [_data(shape, np.float32, k)
             for k, shape in enumerate([(600, 1000), (300, 1000), (65536, 10), (2048, 300)])]
    alone = [(np.float32(pysafemax.softmax_loss(x, y, threads=1)).tobytes(),
              pysafemax.softmax(x, threads=1).tobytes()) for x, y in cases]
    barrier = threading.Barrier(8)
    mismatches, errors = [], []

    def worker(offset):
        try:
            barrier.wait()
            for round_ in range(10):
                index = (offset + round_) % len(cases)
                x, y = cases[index]
                got = (np.float32(pysafemax.softmax_loss(x, y, threads=2)).tobytes(),
                       pysafemax.softmax(x, threads=2).tobytes())
                if got != alone[index]:
                    mismatches.append((offset, index))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches, f"{len(mismatches)} results differ from threads=1"


def test_an_idle_pool_burns_no_cpu():
    x, y = _data((4400, 1000), np.float32, 4)
    pysafemax.softmax_loss(x, y, threads=4)     # helpers started, now parked
    time.sleep(0.1)                             # past their spin
    before = time.process_time()                # CPU time of every thread
    time.sleep(0.5)
    spent = time.process_time() - before
    # a helper spinning the whole time would spend about 0.5 s
    assert spent < 0.1, f"{spent:.3f} s of CPU over 0.5 s idle"


def _run(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout)


COMMON = """
import os, sys, threading
import numpy as np
import pysafemax
rng = np.random.default_rng(0)
x = rng.standard_normal((4400, 1000)).astype(np.float32)   # enough for 2 threads
y = rng.integers(0, 1000, 4400)
expected = pysafemax.softmax_loss(x, y, threads=1, return_grad=True)

def same(threads):
    loss, grad = pysafemax.softmax_loss(x, y, threads=threads, return_grad=True)
    return loss == expected[0] and grad.tobytes() == expected[1].tobytes()

def forked_child_ok(check=lambda: same(2) and same(4)):
    pid = os.fork()
    if pid == 0:
        os._exit(0 if check() else 3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_after_a_threaded_call_can_call_with_threads():
    # The child has none of the parent's helpers: before the pool forgot them
    # at fork, its first threaded call would wait for them for ever (hence
    # the timeout, which fails the test instead of hanging it).
    done = _run(COMMON + """
assert same(2) and same(4)
print(forked_child_ok(), forked_child_ok())
assert same(2)       # the parent's pool still works
""", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_fork_while_another_thread_runs_threaded_calls():
    # The fork can come while another thread owns the pool, holds its mutex
    # or waits for its helpers: the child must still run threaded calls.
    # Short calls, so that many forks land inside one.
    done = _run(COMMON + """
small_x, small_y = x[:300], y[:300]        # just enough for 2 threads
small = pysafemax.softmax_loss(small_x, small_y, threads=1)
def small_same():
    return pysafemax.softmax_loss(small_x, small_y, threads=2) == small
stop = False
def busy():
    while not stop:
        assert small_same()
caller = threading.Thread(target=busy)
caller.start()
codes = [forked_child_ok(small_same) for _ in range(200)]
stop = True
caller.join()
print(sum(codes), forked_child_ok())
""", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_multiprocessing_fork_pool_calling_with_two_threads():
    done = _run(COMMON + """
import multiprocessing
def work(_):
    return same(2)
with multiprocessing.get_context("fork").Pool(2) as workers:
    print(all(workers.map(work, range(8))))
""", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_COMPILER = shutil.which("gcc") or shutil.which("cc")


# No sanitizer in these C programs, nor ASan preloaded (CI's sanitizer step
# sets LD_PRELOAD): gcc 12's ASan itself hangs a child forked while another
# thread starts a thread (its thread registry's lock), with or without the
# pool.
WITHOUT_PRELOAD = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _build_with_the_pool(tmp_path, test_source, *link_flags):
    binary = tmp_path / os.path.splitext(test_source)[0]
    build = subprocess.run(
        [C_COMPILER, "-std=c11", "-O2", "-I", os.path.join(ROOT, "csrc"),
         os.path.join(ROOT, "tests", "c", test_source),
         os.path.join(ROOT, "csrc", "chunks.c"), "-lpthread", *link_flags,
         "-o", str(binary)],
        capture_output=True, text=True, timeout=120, env=WITHOUT_PRELOAD)
    assert build.returncode == 0, build.stderr[-2000:]
    return str(binary)


@pytest.mark.skipif(C_COMPILER is None or not hasattr(os, "fork"),
                    reason="needs a C compiler and fork")
def test_the_pool_in_c_under_racing_callers_and_forks(tmp_path):
    # tests/c/pool_stress.c: four threads race for the pool while the main
    # thread forks 1000 times, at a rate Python cannot reach.  With the
    # pthread_atfork handlers removed, a child inherits the pool's mutex
    # locked and hangs until its 20 s alarm kills it: within 1000 forks in
    # each of 4 tries on the 2-core test machine.
    binary = _build_with_the_pool(tmp_path, "pool_stress.c")
    done = subprocess.run([binary, "1000"], capture_output=True, text=True,
                          timeout=120, env=WITHOUT_PRELOAD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "pool stress: all checks passed\n"


@pytest.mark.skipif(C_COMPILER is None or not sys.platform.startswith("linux"),
                    reason="needs a C compiler and GNU ld's --wrap")
def test_a_fork_during_the_pools_first_call(tmp_path):
    # tests/c/fork_at_first_call.c: a fork's prepare phase lets another
    # thread make the pool's first call and returns while that thread holds
    # the pool's mutex.  With the fork handlers registered at the first call
    # (as before), glibc 2.36 skipped them in that fork and the child hung:
    # every run of this program, and 1 run in 20-40 of
    # test_fork_while_another_thread_runs_threaded_calls under load.
    binary = _build_with_the_pool(tmp_path, "fork_at_first_call.c",
                                  "-Wl,--wrap=pthread_create")
    done = subprocess.run([binary], capture_output=True, text=True,
                          timeout=60, env=WITHOUT_PRELOAD)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "fork at first call: the child ran threaded\n"


def test_exit_while_a_daemon_thread_is_inside_a_threaded_call():
    # At exit the helpers are stopped and joined (else valgrind reports their
    # thread blocks lost) while the daemon thread may still own the pool.
    done = _run(COMMON + """
import time
def busy():
    while True:
        pysafemax.softmax_loss(x, y, threads=2, return_grad=True)
threading.Thread(target=busy, daemon=True).start()
time.sleep(0.3)
print("exiting")
""", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["exiting"]
