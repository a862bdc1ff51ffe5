"""Check the kernel's double exp (psm_exp_f64) against an 80-bit reference.

2**64 inputs cannot all be tried, so the check samples (10**8 inputs by
default, --count), in chunks of 2**20 spread over worker processes:
  value     uniform in value over [-746, 710], the range where exp is
            neither 0 nor inf, plus a margin on each side (half the count)
  range     uniform over the bit patterns of [-746, 710]: every binade, down
            to the tiniest |x| (a quarter)
  bits      uniform over all 2**64 bit patterns: huge inputs, infinities and
            NaNs with random payloads (a quarter)
plus directed inputs: +-0, +-inf, NaNs, the smallest and largest doubles, the
limits of the fast path (+-708), of the range (-746, 710), of exp's normal,
subnormal and finite results, 64 neighbours on each side of each, and the
points where the reduction switches table entry ((k + 1/2) ln2/128).

Each input goes through the AVX2 path and the portable scalar twin, which
must agree bit for bit, and is checked against numpy's longdouble exp (80-bit
x87 on x86-64: 64-bit mantissa, so the reference errs by ~2**-11 ULP of the
double result; --mpmath N rechecks the N worst inputs with mpmath at 200 bits).

Error measures:
  normal results    |got - exact| / ulp, ulp = np.spacing(exact rounded to double)
  subnormal results |got - exact| in steps of the smallest subnormal, 2**-1074
  specials          got must be inf exactly when exact rounds to inf in double,
                    0 exactly when it rounds to 0, and NaN exactly for NaN

Exit status 1 if the max ULP error of normal results exceeds 1.0, a subnormal
result is off by a step or more, a special is wrong or the two paths differ,
else 0.  csrc/exp_f64.h quotes this script's figures.
"""
import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

LOW, HIGH = -746.0, 710.0
CHUNK = 2 ** 20
TINY = float(np.finfo(np.float64).tiny)
SUBNORMAL_STEP = 2.0 ** -1074
MAX_ULP_ALLOWED = 1.0


def kernel_exp(x, portable):
    from pysafemax import _bindings
    return _bindings.exp_f64(np.ascontiguousarray(x, dtype=np.float64), portable)


def sample(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "value":
        return rng.uniform(LOW, HIGH, n)
    if kind == "range":
        # bit patterns of [0, 710] and of [-746, -0]: magnitude grows with the pattern
        pos = int(np.float64(HIGH).view(np.uint64)) + 1
        neg = int(np.float64(-LOW).view(np.uint64)) + 1
        index = rng.integers(0, pos + neg, n, dtype=np.uint64)
        bits = np.where(index < pos, index, (index - np.uint64(pos)) | np.uint64(1 << 63))
        return bits.view(np.float64)
    return rng.integers(0, 2 ** 64, n, dtype=np.uint64, endpoint=False).view(np.float64)


def directed_inputs():
    f = np.finfo(np.float64)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 5e-324, -5e-324,
                      f.tiny, -f.tiny, f.max, -f.max, 1e-300, -1e-300, 1e-20, -1e-20,
                      708.0, -708.0, 746.0, -746.0, 710.0, -710.0, 709.782712893384,
                      -708.3964185322641, -744.4400719213812, -745.1332191019412,
                      -745.1332191019411, -1022 * np.log(2), 1023 * np.log(2),
                      1024 * np.log(2), -1075 * np.log(2), -1074 * np.log(2)])
    nan_payloads = np.array([0x7FF0000000000001, 0x7FF8000000000001, 0x7FFFFFFFFFFFFFFF,
                             0xFFF0000000000001, 0xFFFFFFFFFFFFFFFF],
                            dtype=np.uint64).view(np.float64)
    near = [edges]
    up, down = edges.copy(), edges.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(64):
            up, down = np.nextafter(up, np.inf), np.nextafter(down, -np.inf)
            near += [up, down]
    # (k + 1/2) ln2/128: r at its largest, the table index about to change
    k = np.arange(-137800, 131200, 97, dtype=np.float64)
    switch = (k + 0.5) * (np.log(2) / 128)
    around = [switch, np.nextafter(switch, np.inf), np.nextafter(switch, -np.inf)]
    return np.concatenate(near + around + [nan_payloads])


def check_block(x):
    """Statistics of psm_exp_f64 over the float64 array x (a dict)."""
    got = kernel_exp(x, 0)
    twin = kernel_exp(x, 1)
    same = got.view(np.uint64) == twin.view(np.uint64)
    same |= np.isnan(got) & np.isnan(twin)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        exact = np.exp(x.astype(np.longdouble))
        rounded = exact.astype(np.float64)
        error = np.abs(got.astype(np.longdouble) - exact)
        ulp = (error / np.spacing(rounded).astype(np.longdouble)).astype(np.float64)
        steps = (error / np.longdouble(SUBNORMAL_STEP)).astype(np.float64)
    nan_in = np.isnan(x)
    stats = {
        "count": int(x.size),
        "differ": int(np.count_nonzero(~same)),
        "nan_inputs": int(np.count_nonzero(nan_in)),
        "wrong_inf": int(np.count_nonzero(np.isinf(got) != np.isinf(rounded))),
        "wrong_zero": int(np.count_nonzero((got == 0) != (rounded == 0))),
        "wrong_nan": int(np.count_nonzero(np.isnan(got) != nan_in)),
    }
    finite = np.isfinite(rounded) & np.isfinite(got) & (rounded != 0)
    normal = finite & (np.abs(rounded) >= TINY)
    subnormal = finite & (np.abs(rounded) < TINY)
    stats["normal"] = int(np.count_nonzero(normal))
    stats["subnormal"] = int(np.count_nonzero(subnormal))
    for mask, value, where, measure in ((normal, "max_ulp", "worst_x", ulp),
                                        (subnormal, "max_steps", "worst_sub_x", steps)):
        stats[value], stats[where] = 0.0, None
        if mask.any():
            masked = np.where(mask, measure, -1.0)
            i = int(np.argmax(masked))
            stats[value], stats[where] = float(masked[i]), float(x[i])
    # the inputs above 0.5 ULP, for a recheck with mpmath
    stats["worst"] = x[normal & (ulp > 0.5)][:64].tolist()
    return stats


def merge(a, b):
    if a is None:
        return b
    out = {key: a[key] + b[key] for key in ("count", "differ", "nan_inputs", "wrong_inf",
                                            "wrong_zero", "wrong_nan", "normal",
                                            "subnormal")}
    for value, where in (("max_ulp", "worst_x"), ("max_steps", "worst_sub_x")):
        take_b = b[where] is not None and (a[where] is None or b[value] > a[value])
        best = b if take_b else a
        out[value], out[where] = best[value], best[where]
    out["worst"] = (a["worst"] + b["worst"])[:4096]
    return out


def check_chunk(job):
    kind, n, seed = job
    return check_block(sample(kind, n, seed))


def mpmath_recheck(xs):
    """The max ULP error over xs against mpmath's exp at 200 bits."""
    import mpmath
    mpmath.mp.prec = 200
    got = kernel_exp(np.array(xs, dtype=np.float64), 0)
    worst, at = 0.0, None
    for x, g in zip(xs, got):
        exact = mpmath.exp(mpmath.mpf(x))
        ulp = float(np.spacing(np.float64(float(exact))))
        e = float(abs(mpmath.mpf(float(g)) - exact) / ulp)
        if e > worst:
            worst, at = e, x
    return worst, at


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10 ** 8,
                        help="random inputs in all (default 10**8)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    parser.add_argument("--mpmath", type=int, default=2000, metavar="N",
                        help="recheck up to N inputs above 0.5 ULP with mpmath")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import pysafemax
    from pysafemax import _bindings
    simd = bool(_bindings.simd_level())
    print(f"pysafemax {pysafemax.__version__}, numpy {np.__version__}, CPU SIMD "
          f"{'avx2+fma' if simd else 'none (both paths run the portable code)'}; "
          f"reference numpy longdouble ({np.finfo(np.longdouble).nmant + 1}-bit mantissa)")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    shares = {"value": args.count // 2, "range": args.count // 4}
    shares["bits"] = args.count - shares["value"] - shares["range"]
    jobs, seed = [], args.seed * 100003
    for kind, n in shares.items():
        for first in range(0, n, CHUNK):
            seed += 1
            jobs.append((kind, min(CHUNK, n - first), seed))
    start = time.perf_counter()
    stats = check_block(directed_inputs())
    print(f"directed inputs: {stats['count']:,}, max ULP {stats['max_ulp']:.4f}")
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for part in pool.map(check_chunk, jobs):
                stats = merge(stats, part)
    else:
        for job in jobs:
            stats = merge(stats, check_chunk(job))
    seconds = time.perf_counter() - start

    def show(x):
        return "none" if x is None else f"{float.hex(x)} = {x!r}"

    print(f"inputs checked      {stats['count']:,} ({shares['value']:,} uniform in value, "
          f"{shares['range']:,} uniform over the bits of [{LOW:g}, {HIGH:g}], "
          f"{shares['bits']:,} over all bits, and the directed ones)")
    print(f"  results           {stats['normal']:,} normal, {stats['subnormal']:,} "
          f"subnormal, {stats['nan_inputs']:,} NaN inputs")
    print(f"  max ULP error     {stats['max_ulp']:.5f} (normal results) at x = "
          f"{show(stats['worst_x'])}")
    print(f"  subnormal results max error {stats['max_steps']:.5f} steps (2^-1074) at x = "
          f"{show(stats['worst_sub_x'])}")
    print(f"  wrong specials    inf {stats['wrong_inf']}, 0 {stats['wrong_zero']}, "
          f"nan {stats['wrong_nan']}")
    print(f"  avx2 vs portable  {stats['differ']} input(s) with different bits"
          f"{' (both run the portable code on this CPU)' if not simd else ''}")
    print(f"  time              {seconds:.1f} s")
    if args.mpmath and stats["worst"]:
        others = sorted(set(stats["worst"]) - {stats["worst_x"]})
        xs = [stats["worst_x"]] + others[:args.mpmath - 1]
        worst, at = mpmath_recheck(xs)
        print(f"  mpmath recheck    {len(xs)} inputs above 0.5 ULP: max {worst:.5f} ULP "
              f"at x = {show(at)}")

    failures = []
    if stats["max_ulp"] > MAX_ULP_ALLOWED:
        failures.append(f"max ULP error {stats['max_ulp']:.4f} > {MAX_ULP_ALLOWED}")
    if stats["max_steps"] >= 1.0:
        failures.append(f"subnormal error {stats['max_steps']:.4f} steps")
    wrong = stats["wrong_inf"] + stats["wrong_zero"] + stats["wrong_nan"]
    if wrong:
        failures.append(f"{wrong} wrong special value(s)")
    if stats["differ"]:
        failures.append(f"{stats['differ']} input(s) where the two paths differ")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print(f"PASS: max ULP error {stats['max_ulp']:.4f} <= {MAX_ULP_ALLOWED}; every special "
          "value exact; both paths agree bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
