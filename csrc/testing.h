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
 * accuracy check in bench/check_exp_ulp.py); portable 1: the scalar twin;
 * portable 2: that scalar exp compiled for FMA, as the vector path's scalar
 * exps take it (psm_expf_fma; the twin on a CPU without the vector path);
 * portable 3: the vector exp without its range check (psm_expf_near_avx2),
 * defined only for inputs in [-87, 87] or NaN (the scalar twin on a CPU
 * without the vector path).  This and the probe take their path from their argument alone, not from
 * psm_testing_set_portable's flag. */
void psm_exp_f32(const float *in, int64_t n, int portable, float *out);
/* The same for the kernel's double exp (exp_f64.h; bench/check_exp_f64_ulp.py). */
void psm_exp_f64(const double *in, int64_t n, int portable, double *out);

/* The kernel's own double log1p (log1p_f64.h) of each element, 4 lanes at a
 * time unless portable (the scalar twin): for tests and
 * bench/check_log1p_ulp.py. */
void psm_log1p_f64(const double *in, int64_t n, int portable, double *out);

/* The sum of n floats, read with the kernel's SIMD and threads: the
 * read-bandwidth probe the benchmarks compare the loss against. */
double psm_read_probe_f32(const float *x, int64_t n, int threads, int portable);

/* The sum of the kernel's float exp (exp_f32.h, the one the loss uses) of n
 * floats, on the kernel's chunks and threads: the compute floor of a forward
 * pass.  Per chunk, the vector path adds each 32 floats' exps as a float
 * tree into double lanes, as the loss sums its terms; the scalar twin
 * (portable 1) does the same operations in the same order, and the chunks'
 * sums are added in order, so the result has the same bits on both paths
 * and at every thread count. */
double psm_exp_sum_probe_f32(const float *x, int64_t n, int threads, int portable);

/* out_j = exp(x_j) / (the sum of the exps of x_j's chunk), each exp stored
 * to out (n floats, not overlapping x) while it is summed as
 * psm_exp_sum_probe_f32 sums it, then scaled in place from cache, on the
 * kernel's chunks and threads: the floor of a gradient that computes each
 * exp once (it skips the max pass).  Returns the exp+sum probe's value,
 * with its bits on both paths and at every thread count. */
double psm_exp_store_probe_f32(const float *x, int64_t n, float *out, int threads,
                               int portable);

/* The sum of exp(x_j) over n floats in [-87, 87] (n a multiple of 16) on
 * the calling thread, by one of the loops bench/exp_sum_bound.py times
 * against each other (NaN without the vector path, for another n, or for
 * an unknown loop):
 *   PSM_EXP_SUM_PROBE_LOOP          the exp+sum probe's loop (the kernel's
 *                                   exp, each 32 floats' exps a float tree
 *                                   added to double lanes)
 *   PSM_EXP_SUM_UNCHECKED           the same with the kernel's exp
 *                                   without its range check (as the
 *                                   loss's loops take it where a block's
 *                                   min and max allow)
 *   PSM_EXP_SUM_FLOAT_GROUPS        the kernel's exp without its range
 *                                   check, summed in float, each 256 floats'
 *                                   sum added to double lanes
 *   PSM_EXP_SUM_POLY6_FLOAT_GROUPS  the same with a degree-6 polynomial exp
 *                                   without a table (about 1 ulp)
 * Measurement only: the kernel's sums use none but the first two. */
enum {
    PSM_EXP_SUM_PROBE_LOOP = 0,
    PSM_EXP_SUM_UNCHECKED = 1,
    PSM_EXP_SUM_FLOAT_GROUPS = 2,
    PSM_EXP_SUM_POLY6_FLOAT_GROUPS = 3
};
double psm_exp_sum_loop_f32(const float *x, int64_t n, int loop);

/* Copies n floats from x to out (not overlapping) with vector loads and
 * stores on the kernel's chunks and threads: the floor of anything that
 * reads the logits and writes an array of their size (a gradient).  Returns
 * the sum of the last float each chunk wrote, read back from out, so that
 * the copy is observed. */
double psm_copy_probe_f32(const float *x, int64_t n, float *out, int threads, int portable);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYSAFEMAX_TESTING_H */
