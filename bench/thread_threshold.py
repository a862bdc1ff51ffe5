"""Where a second thread starts to pay: threads=1 against threads=2 per call.

    python bench/thread_threshold.py [--shapes 65536x10,...,32x10] [--rounds 41]

The kernel gives a call min(threads, logits // PSM_ELEMENTS_PER_THREAD)
threads (csrc/chunks.h), so measuring that constant needs a kernel built
without it, into a directory of its own:

    rm -rf build     # else setuptools reuses objects built without the flag
    PYSAFEMAX_CFLAGS=-DPSM_ELEMENTS_PER_THREAD=1 \\
        pip install --no-build-isolation --no-deps --target /tmp/uncapped .
    rm -rf build
    PYTHONPATH=/tmp/uncapped python bench/thread_threshold.py

For each shape (float32 logits, random normal * 4, int64 labels), the loss
alone and with its gradient (reduction "mean", method "stable", out= a
preallocated gradient), two ways:

  warm   calls back to back, k per measurement (at least 2 ms): the pool's
         helpers are still spinning when the next call comes
  cold   one call after 2 ms asleep: the helpers are parked on their
         condition variable and must be woken

Rounds alternate the order of threads=1 and threads=2; each figure is the
median and the minimum over the rounds.  On a shared machine the medians
carry other people's jobs; the minima are what the hardware allows.
"""
import argparse
import statistics
import time

import numpy as np

import pysafemax

SHAPES = "65536x10,16384x100,2048x1000,512x1000,256x1000,128x1000,64x1000,32x10"


def measure(call, rounds):
    call(1)
    call(2)
    k = 1
    while True:
        start = time.perf_counter()
        for _ in range(k):
            call(1)
        if time.perf_counter() - start > 0.002:
            break
        k *= 2
    warm = {1: [], 2: []}
    cold = {1: [], 2: []}
    for r in range(rounds):
        for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
            start = time.perf_counter()
            for _ in range(k):
                call(threads)
            warm[threads].append((time.perf_counter() - start) / k)
            time.sleep(0.002)
            start = time.perf_counter()
            call(threads)
            cold[threads].append(time.perf_counter() - start)
    return warm, cold


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'shape':>10} {'':4} {'logits/thr':>10} |"
          f" {'warm: median 1':>14} {'2':>8} {'1/2':>5} {'min 1':>8} {'2':>8} {'1/2':>5} |"
          f" {'cold: median 1':>14} {'2':>8} {'1/2':>5} {'min 1':>8} {'2':>8} {'1/2':>5}"
          "   (us per call)")
    for shape in args.shapes.split(","):
        n, c = map(int, shape.split("x"))
        x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
        y = rng.integers(0, c, n)
        grad = np.empty_like(x)
        for with_grad in (False, True):
            extra = dict(return_grad=True, out=grad) if with_grad else {}

            def call(threads):
                return pysafemax.softmax_loss(x, y, threads=threads, **extra)

            line = f"{shape:>10} {'grad' if with_grad else 'loss':4} {n * c // 2:>10} |"
            for times in measure(call, args.rounds):
                one, two = statistics.median(times[1]), statistics.median(times[2])
                best_one, best_two = min(times[1]), min(times[2])
                line += (f" {one * 1e6:14.1f} {two * 1e6:8.1f} {one / two:5.2f}"
                         f" {best_one * 1e6:8.1f} {best_two * 1e6:8.1f} {best_one / best_two:5.2f} |")
            print(line.rstrip(" |"), flush=True)


if __name__ == "__main__":
    main()
