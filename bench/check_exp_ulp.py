"""Check the kernel's float exp (psm_exp_f32) against exp in float64.

By default every float32 bit pattern in [-104, 89] (about 2.24e9 inputs) goes
through the SIMD path, in chunks of 2**24 patterns spread over worker
processes, and a random sample checks that the portable twin, and the scalar
exp compiled for FMA that the SIMD path's scalar exps use, give the same
bits; so must the SIMD exp without its range check (which loops take where
a row's min and max bound every argument) on every float32 in [-87, 87] and
every NaN.  --portable checks the portable twin exhaustively instead; --sample N
checks N random inputs of the range only (seconds; the test suite uses it);
--all-bits covers all 2**32 patterns (beyond the range exp must be inf or 0).
NaNs, infinities and a few directed inputs are checked in every mode.

Error measures:
  normal results    |got - exact| / ulp, exact = exp(x) in float64 and ulp
                    the spacing of exact rounded to float32 (np.spacing)
  subnormal results |got - exact| in steps of the smallest subnormal, 2**-149
  specials          got must be inf exactly when exact rounded to float32 is
                    inf, 0 exactly when it rounds to 0, and NaN for NaN

Exit status 1 if the max ULP error of normal results exceeds 1.0 or any
special is wrong, else 0.  csrc/exp_f32.h quotes this script's figures.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

LOW, HIGH = -104.0, 89.0
CHUNK = 2 ** 24
TINY = float(np.finfo(np.float32).tiny)
SUBNORMAL_STEP = 2.0 ** -149
MAX_ULP_ALLOWED = 1.0


def _bits(value):
    return int(np.float32(value).view(np.uint32))


# Bit patterns of [-104, 89] as half-open [start, stop) ranges: +0 .. 89 and
# -0 .. -104 (the sign bit set; magnitude grows with the pattern).
RANGE = [(0, _bits(HIGH) + 1), (0x80000000, _bits(LOW) + 1)]
ALL_BITS = [(0, 2 ** 32)]
# [-87, 87], where the vector exp may skip its range check (psm_expf_near_avx2,
# portable 3): it must give the checked vector exp's bits there.
NEAR_LIMIT = 87.0
NEAR_RANGE = [(0, _bits(NEAR_LIMIT) + 1), (0x80000000, _bits(-NEAR_LIMIT) + 1)]


def kernel_exp(x, portable):
    from pysafemax import _bindings
    return _bindings.exp_f32(np.ascontiguousarray(x, dtype=np.float32), portable)


def hex_float(x):
    """C's %a for a float: 0x1.4ca93ap-1."""
    x = float(x)
    if x != x or x in (float("inf"), float("-inf")):
        return repr(x)
    text = float.hex(x)                       # 0x1.4ca93a0000000p-1
    mantissa, exponent = text.split("p")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}"


BLOCK = 2 ** 16   # elements per numpy step: temporaries stay in cache


def check(x, portable):
    """Statistics of psm_exp_f32 over the float32 array x (a dict)."""
    got = kernel_exp(x, portable)
    stats = None
    for first in range(0, x.size, BLOCK):
        part = _check_block(x[first:first + BLOCK], got[first:first + BLOCK])
        stats = merge(stats, part)
    return stats


def _check_block(x, got):
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.exp(x.astype(np.float64))
        rounded = exact.astype(np.float32)
        error = np.abs(got.astype(np.float64) - exact)   # inf - inf: nan
        ulp = error / np.spacing(rounded)
    nan_in = np.isnan(x)
    stats = {
        "count": int(x.size),
        "nan_inputs": int(np.count_nonzero(nan_in)),
        # inf exactly when exact rounds to inf in float32, 0 when it rounds
        # to 0, NaN exactly for NaN inputs
        "wrong_inf": int(np.count_nonzero(np.isinf(got) != np.isinf(rounded))),
        "wrong_zero": int(np.count_nonzero((got == 0) != (rounded == 0))),
        "wrong_nan": int(np.count_nonzero(np.isnan(got) != nan_in)),
    }
    # Finite results only: a wrong special is counted above, not here.
    finite = np.isfinite(rounded) & np.isfinite(got)
    normal = finite & (exact >= TINY)
    subnormal = finite & (exact < TINY)
    stats["normal"] = int(np.count_nonzero(normal))
    stats["subnormal"] = int(np.count_nonzero(subnormal))
    for mask, value, where, measure in (
            (normal, "max_ulp", "worst_x", ulp),
            (subnormal, "max_subnormal_steps", "worst_subnormal_x",
             error / SUBNORMAL_STEP)):
        stats[value], stats[where] = 0.0, None
        if mask.any():
            masked = np.where(mask, measure, -1.0)
            k = int(np.argmax(masked))
            stats[value], stats[where] = float(masked[k]), float(x[k])
    return stats


def merge(a, b):
    if a is None:
        return b
    out = {key: a[key] + b[key] for key in
           ("count", "wrong_inf", "wrong_zero", "wrong_nan", "nan_inputs",
            "normal", "subnormal")}
    for value, where in (("max_ulp", "worst_x"),
                         ("max_subnormal_steps", "worst_subnormal_x")):
        # Ties keep the first (smallest pattern) so the worst input is stable.
        take_b = b[where] is not None and (a[where] is None or b[value] > a[value])
        best = b if take_b else a
        out[value], out[where] = best[value], best[where]
    return out


def check_bit_range(args):
    start, stop, portable = args
    bits = np.arange(start, stop, dtype=np.uint32)
    return check(bits.view(np.float32), portable)


def near_differences(args):
    """How many float32 of the bit patterns [start, stop) the unchecked
    vector exp (3) gives other bits than the checked one (0)."""
    start, stop = args
    x = np.arange(start, stop, dtype=np.uint32).view(np.float32)
    return int(np.count_nonzero(kernel_exp(x, 3).view(np.uint32)
                                != kernel_exp(x, 0).view(np.uint32)))


def chunks_of(ranges):
    for start, stop in ranges:
        for first in range(start, stop, CHUNK):
            yield first, min(first + CHUNK, stop)


def directed_inputs():
    """NaNs (every payload, both signs), infinities and values around the
    limits of the range and of exp's normal and finite results."""
    nan_bits = np.concatenate([np.arange(0x7F800001, 0x80000000, dtype=np.uint64),
                               np.arange(0xFF800001, 0x100000000, dtype=np.uint64)])
    nans = nan_bits.astype(np.uint32).view(np.float32)
    f32 = np.finfo(np.float32)
    edges = np.float32([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, f32.max, -f32.max,
                        1e10, -1e10, 89.0, 89.5, -104.0, -104.5, 88.72283, 88.72284,
                        -87.33654, -87.33655, -103.27893, -103.97208, -103.98,
                        0.6497286])
    with np.errstate(over="ignore"):     # nextafter(FLT_MAX, inf) is inf
        around = np.concatenate([np.nextafter(edges, np.float32(np.inf)),
                                 np.nextafter(edges, np.float32(-np.inf))])
    return np.concatenate([nans, edges, around.astype(np.float32)])


def sample_inputs(n, seed):
    rng = np.random.default_rng(seed)
    sizes = [stop - start for start, stop in RANGE]
    index = rng.integers(0, sum(sizes), n, dtype=np.int64)
    bits = np.where(index < sizes[0], RANGE[0][0] + index,
                    RANGE[1][0] + (index - sizes[0]))
    return bits.astype(np.uint32).view(np.float32)


def report(title, stats, seconds):
    print(title)
    print(f"  inputs checked      {stats['count']:,} ({stats['normal']:,} normal results, "
          f"{stats['subnormal']:,} subnormal, {stats['nan_inputs']:,} NaN inputs)")
    if stats["worst_x"] is not None:
        print(f"  max ULP error       {stats['max_ulp']:.4f} (normal results) at x = "
              f"{hex_float(stats['worst_x'])} = {stats['worst_x']:.9g}")
    if stats["worst_subnormal_x"] is not None:
        print(f"  subnormal results   max error {stats['max_subnormal_steps']:.4f} "
              f"subnormal steps (2^-149) at x = {hex_float(stats['worst_subnormal_x'])} "
              f"= {stats['worst_subnormal_x']:.9g}")
    print(f"  wrong specials      inf {stats['wrong_inf']}, 0 {stats['wrong_zero']}, "
          f"nan {stats['wrong_nan']}")
    print(f"  time                {seconds:.1f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, metavar="N",
                        help="check N random inputs of [-104, 89] instead of all")
    parser.add_argument("--portable", action="store_true",
                        help="check the portable scalar twin instead of the SIMD path")
    parser.add_argument("--all-bits", action="store_true",
                        help="every float32 bit pattern, not just [-104, 89]")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                        help="worker processes for the exhaustive check (default: cores)")
    parser.add_argument("--twin-sample", type=int, default=2 ** 22, metavar="N",
                        help="random inputs on which the two paths must agree bit "
                             "for bit (default 2**22)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pysafemax
    from pysafemax import _bindings
    simd = bool(_bindings.simd_level())
    portable = 1 if args.portable else 0
    path = "portable" if portable or not simd else "avx2+fma"
    print(f"pysafemax {pysafemax.__version__}, numpy {np.__version__}, CPU SIMD "
          f"{'avx2+fma' if simd else 'none (both paths run the portable code)'}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")

    start = time.perf_counter()
    if args.sample is not None:
        what = f"{args.sample:,} random inputs of [-104, 89]"
        stats = check(sample_inputs(args.sample, args.seed), portable)
    else:
        ranges = ALL_BITS if args.all_bits else RANGE
        what = ("every float32 bit pattern" if args.all_bits
                else "every float32 in [-104, 89]")
        work = [(a, b, portable) for a, b in chunks_of(ranges)]
        stats = None
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                for part in pool.map(check_bit_range, work):
                    stats = merge(stats, part)
        else:
            for item in work:
                stats = merge(stats, check_bit_range(item))
    report(f"psm_exp_f32, {path} path, {what}:", stats, time.perf_counter() - start)

    start = time.perf_counter()
    directed = check(directed_inputs(), portable)
    report("directed inputs (every NaN payload, +-inf, range and overflow edges):",
           directed, time.perf_counter() - start)

    # The other paths must give the same bits (on a sample and the directed
    # inputs): the twin, and the scalar exp compiled for FMA (2).
    twin_n = args.twin_sample if args.sample is None else min(args.twin_sample, args.sample)
    twin_x = np.concatenate([sample_inputs(twin_n, args.seed + 1), directed_inputs()])
    a = kernel_exp(twin_x, portable).view(np.uint32)
    nan_a = np.isnan(a.view(np.float32))
    differ = 0
    for other_path, other in ((1 - portable, "avx2+fma" if portable else "portable"),
                              (2, "scalar fma")):
        b = kernel_exp(twin_x, other_path).view(np.uint32)
        nan_b = np.isnan(b.view(np.float32))
        # any NaN matches any NaN
        path_differ = int(np.count_nonzero((a != b) & ~(nan_a & nan_b)))
        differ += path_differ
        print(f"{path} and {other} paths: {path_differ} of {twin_x.size:,} inputs give "
              f"different bits{' (both run the portable code on this CPU)' if not simd else ''}")

    # The vector exp without its range check, where it serves: every float
    # of [-87, 87] (a sample with --sample), and NaN, whose bits it keeps
    # as the checked exp's cold path does.
    if simd and not portable:
        start = time.perf_counter()
        if args.sample is None:
            work = list(chunks_of(NEAR_RANGE))
            if args.jobs > 1:
                with ProcessPoolExecutor(args.jobs) as pool:
                    near_differ = sum(pool.map(near_differences, work))
            else:
                near_differ = sum(map(near_differences, work))
            near_what = "every float32 in [-87, 87]"
        else:
            near_x = twin_x[~(np.abs(twin_x) > NEAR_LIMIT)]
            near_differ = int(np.count_nonzero(kernel_exp(near_x, 3).view(np.uint32)
                                               != kernel_exp(near_x, 0).view(np.uint32)))
            near_what = f"{near_x.size:,} sampled inputs in [-87, 87]"
        nan_x = directed_inputs()
        nan_x = nan_x[np.isnan(nan_x)]
        near_differ += int(np.count_nonzero(kernel_exp(nan_x, 3).view(np.uint32)
                                            != kernel_exp(nan_x, 0).view(np.uint32)))
        print(f"avx2+fma and its unchecked exp: {near_differ} of {near_what} and "
              f"{nan_x.size:,} NaNs give different bits ({time.perf_counter() - start:.1f} s)")
        differ += near_differ

    failures = []
    for name, s in (("range", stats), ("directed", directed)):
        if s["max_ulp"] > MAX_ULP_ALLOWED:
            failures.append(f"{name}: max ULP error {s['max_ulp']:.4f} > {MAX_ULP_ALLOWED}")
        wrong = s["wrong_inf"] + s["wrong_zero"] + s["wrong_nan"]
        if wrong:
            failures.append(f"{name}: {wrong} wrong special value(s)")
    if differ:
        failures.append(f"{differ} input(s) where the two paths differ")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print(f"PASS: max ULP error {max(stats['max_ulp'], directed['max_ulp']):.4f} <= "
          f"{MAX_ULP_ALLOWED} on normal results; every special value exact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
