"""Is the exp+sum probe the machine's floor? Four ways to sum exps, timed.

    python bench/exp_sum_bound.py [--floats 32768] [--rounds 15]

bench/run.py measures the stable forward against an exp+sum probe: the
kernel's exp of every logit, each 32 floats' exps added as a float tree to
double lanes, as the loss sums them.  This times that loop against three
others on the same block, one thread, through the test hooks
(psm_exp_sum_loop_f32 in csrc/testing.c):

  probe loop        the exp+sum probe's loop
  unchecked exp     the same with the exp that skips its range check, as the
                    loss's loops take it where a block's min and max allow
  float groups      the kernel's exp without its range check, summed in two
                    float accumulators, each 256 floats' sum added to double
                    lanes (accumulation in float groups with a double combine)
  poly6, float groups  the same with a degree-6 polynomial exp without a
                    table (Cephes' coefficients, about 1 ulp)

The block (default 32768 floats, 128 KiB: the size of a chunk of the
probe, resident in L2) holds -|N(0, 4)|, a row less its max.  Rounds are
interleaved; each timing loops the call for at least 20 ms; the median and
the fastest round are printed with each loop's rate over the probe loop's.
Each call's fixed cost (cffi, about 0.3 us) is in every loop's time, so the
ratios understate the differences slightly.  Needs the AVX2+FMA path.
"""
import argparse
import statistics
import sys
import time

import numpy as np

from pysafemax._kernel import ffi, lib

LOOPS = (("probe loop", lib.PSM_EXP_SUM_PROBE_LOOP),
         ("unchecked exp", lib.PSM_EXP_SUM_UNCHECKED),
         ("float groups", lib.PSM_EXP_SUM_FLOAT_GROUPS),
         ("poly6, float groups", lib.PSM_EXP_SUM_POLY6_FLOAT_GROUPS))


def block(floats, seed=0):
    """-|N(0, 4)| floats: the arguments of a row's exps once its max is
    subtracted."""
    return -np.abs(np.random.default_rng(seed).standard_normal(floats) * 4).astype(np.float32)


def sums(x):
    """Each loop's sum of exp(x), by name."""
    buf = ffi.from_buffer("float[]", x)
    return {name: lib.psm_exp_sum_loop_f32(buf, x.size, loop) for name, loop in LOOPS}


def seconds_per_call(call, target=0.02):
    """The time of one call, from a loop of enough calls to take `target` s."""
    k = 1
    while True:
        start = time.perf_counter()
        for _ in range(k):
            call()
        elapsed = time.perf_counter() - start
        if elapsed >= target:
            return elapsed / k
        k *= 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--floats", type=int, default=32768,
                        help="block size, a multiple of 16")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    if args.floats <= 0 or args.floats % 16:
        parser.error("--floats must be a positive multiple of 16")
    x = block(args.floats)
    got = sums(x)
    if any(np.isnan(v) for v in got.values()):
        print("needs the AVX2+FMA path (pysafemax._bindings.simd_level() is 0)")
        return 1
    buf = ffi.from_buffer("float[]", x)
    times = {name: [] for name, _ in LOOPS}
    for _ in range(args.rounds):
        for name, loop in LOOPS:
            times[name].append(seconds_per_call(
                lambda loop=loop: lib.psm_exp_sum_loop_f32(buf, args.floats, loop)))
    exact = float(np.exp(x.astype(np.float64)).sum())
    print(f"{args.floats} floats ({args.floats * 4 / 1024:g} KiB), 1 thread, "
          f"{args.rounds} interleaved rounds")
    print(f"{'loop':<22}{'median ns/float':>16}{'best':>8}{'G/s':>7}"
          f"{'over probe loop':>17}{'sum rel. error':>16}")
    probe = statistics.median(times[LOOPS[0][0]])
    for name, _ in LOOPS:
        median = statistics.median(times[name])
        print(f"{name:<22}{median / args.floats * 1e9:>16.3f}"
              f"{min(times[name]) / args.floats * 1e9:>8.3f}"
              f"{args.floats / median * 1e-9:>7.2f}{probe / median:>16.2f}x"
              f"{abs(got[name] - exact) / exact:>16.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
