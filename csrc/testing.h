/*
 * The kernel's test-only hooks: not part of the contract of
 * softmax_loss.h, for the tests (tests/, tests/c) and the benchmarks
 * (bench/) only.  They are compiled into pysafemax._kernel all the same:
 * ffi_build.py feeds this file's cdef block to cffi after the public one.
 *
 * The block between cdef-begin and cdef-end is fed verbatim to cffi's cdef,
 * so it must stay free of preprocessor lines.
 */
#ifndef PYSAFEMAX_TESTING_H
#define PYSAFEMAX_TESTING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */
/*
 * 1: later calls on this thread run no CPU-specific code, only the portable
 * scalar twins of the AVX2 loops (which give the same bits), so that tests
 * can compare the two; 0: the default, the CPU's best path.  The flag is the
 * calling thread's own (thread-local): it has no effect on other threads,
 * and the entry points read it once, on the calling thread, when they start,
 * so a call's worker threads follow its caller's flag.
 */
void psm_testing_set_portable(int portable);
/* This thread's flag: 1 after psm_testing_set_portable(1), else 0. */
int psm_testing_portable(void);

/* The kernel's own float exp of each element (for tests and the exhaustive
 * accuracy check in bench/check_exp_ulp.py); portable 1: the scalar twin.
 * This and the probe take their path from their argument alone, not from
 * psm_testing_set_portable's flag. */
void psm_exp_f32(const float *in, int64_t n, int portable, float *out);

/* The sum of n floats, read with the kernel's SIMD and threads: the
 * read-bandwidth probe the benchmarks compare the loss against. */
double psm_read_probe_f32(const float *x, int64_t n, int threads, int portable);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYSAFEMAX_TESTING_H */
