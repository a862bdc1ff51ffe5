"""Check the kernel's double log1p (psm_log1p_f64) against long double log1pl.

The stable method takes log1p(s) of s >= 0, a row's sum of exps without the
max's own term: from 0 (a certain prediction) through tiny (a confident one)
to about the number of classes.  This samples that domain: --count inputs
(default 2**26) log-uniform in [2**-60, 2**40], a quarter as many uniform in
[0, 4] (where the reduction's cases meet: u = 1 + s around sqrt(2)/2 * 2**k),
every power of two and its neighbours in [2**-1074, 2**1000], and the specials
(0, -0, NaN, +inf, and beyond the fast path's domain).  Each is computed by
the AVX2 path and by the portable twin; the two must agree bit for bit, and
the error is |got - exact| / ulp(exact), exact = log1p in long double (64-bit
mantissa, so the reference's own error is about 2**-11 ulp of a double).

Exit status 1 if the max error exceeds 1 ulp or the paths disagree, else 0.
csrc/log1p_f64.h quotes this script's figures.
"""
import argparse
import sys

import numpy as np

from pysafemax import _bindings

MAX_ULP_ALLOWED = 1.0


CHUNK = 2 ** 22


def inputs(count, seed):
    """The sample, in chunks of at most CHUNK inputs."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, CHUNK):
        yield np.exp2(rng.uniform(-60.0, 40.0, min(CHUNK, count - start)))
    for start in range(0, count // 4, CHUNK):
        yield rng.uniform(0.0, 4.0, min(CHUNK, count // 4 - start))
    powers = np.exp2(np.arange(-1074, 1001, dtype=np.float64))
    yield np.concatenate([np.nextafter(powers, 0), powers, np.nextafter(powers, np.inf),
                          [0.0, 5e-324, 2.0 ** 1000, np.sqrt(0.5) - 1 + 1e-17, 1.0]])


def ulp_error(got, x):
    exact = np.log1p(x.astype(np.longdouble))
    ulp = np.spacing(exact.astype(np.float64)).astype(np.longdouble)
    # the spacing above |exact| rounded to double; at a power of two the one
    # below is half as large, so the error is not understated
    return np.abs(got.astype(np.longdouble) - exact) / np.abs(ulp)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2 ** 26)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    total = disagree = 0
    worst_error, worst_input = -1.0, None
    for x in inputs(args.count, args.seed):
        vector = _bindings.log1p_f64(x, portable=False)
        twin = _bindings.log1p_f64(x, portable=True)
        disagree += int(np.count_nonzero(vector.view(np.uint64) != twin.view(np.uint64)))
        errors = ulp_error(vector, x)
        at = int(np.argmax(errors))
        if errors[at] > worst_error:
            worst_error, worst_input = float(errors[at]), float(x[at])
        total += x.size
    specials = np.array([np.nan, np.inf, -0.0, -0.5, -1.0, -2.0, 2.0 ** 1001, 1e308])
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log1p(specials)
    special_ok = all((np.isnan(a) and np.isnan(b)) or a == b
                     for a, b in zip(_bindings.log1p_f64(specials, portable=False), expected))
    print(f"{total} inputs: max error {worst_error:.4f} ulp at {worst_input.hex()} "
          f"= {worst_input!r}; AVX2 and twin disagree on {disagree}; "
          f"specials as log1p: {special_ok}")
    ok = worst_error <= MAX_ULP_ALLOWED and disagree == 0 and special_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
