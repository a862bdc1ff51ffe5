/*
 * Rows of at most PSM_SMALL_CLASSES doubles, eight at a time: rows_small_avx2.h
 * for double.  Four rows fill a vector of doubles, so the eight are two
 * independent halves, rows 0-3 and rows 4-7, row r of a half in lane r of
 * every vector (the rows' loads transposed, 4 x 4).
 *
 * Each row's result is row_pass's for that row alone, bit for bit: its max
 * as psm_block_max_f64_avx2 finds it (the max is the same whatever the
 * order), and its sum as psm_lane_sum_f64_avx2 (rows_avx2_f64.h) adds it:
 * class j joins double lane j % 4, the first 16 terms as the tree
 * 0 + ((t0 + t4) + (t8 + t12)) per lane, each later group of 4 added in
 * turn, read out as (acc0 + acc2) + (acc1 + acc3).  A tail's unused lanes
 * add +0, which changes no sum (never -0), so they are skipped.  So the
 * portable twin of this file is row_pass's (block_max and lane_sum in
 * row.h), and a row gives the same loss whichever path, batch or thread
 * computes it.
 */
#ifndef PYSAFEMAX_ROWS_SMALL_AVX2_F64_H
#define PYSAFEMAX_ROWS_SMALL_AVX2_F64_H

#include "exp_f64.h"
#include "internal.h"   /* PSM_SMALL_CLASSES, PSM_SMALL_CASES */
#include "rows_avx2_f64.h"   /* psm_lanes_below_f64_avx2 */
#include "softmax_loss.h"   /* PSM_STABLE, PSM_NAIVE */

#ifdef PSM_HAVE_AVX2

/* Columns start..start+3 of 4 rows of n contiguous doubles (row r at
 * x + r n) into col[0..3]: a 4 x 4 transpose of the rows' loads, for
 * start + 4 <= n, or for n < 4 (start 0) of masked loads, which read
 * nothing past a row (the columns from n on are 0). */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_transpose_f64_avx2(const double *x, int n,
                                                                   int start, __m256d col[4])
{
    __m256d r[4];
    for (int k = 0; k < 4; k++)
        r[k] = n < 4 ? _mm256_maskload_pd(x + k * n, psm_lanes_below_f64_avx2(n))
                     : _mm256_loadu_pd(x + k * n + start);
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    col[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    col[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    col[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    col[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* Column j of 4 rows of n contiguous doubles (row r at x + r n) into
 * col[j], and the rows' max (track_max; else 0) as psm_block_max_f64_avx2
 * finds it, +0 for a zero max.  The columns come from 4 x 4 transposes,
 * the last one overlapping the one before where 4 does not divide n:
 * faster than a gather per column (the stable forward on (65536, 10) in
 * 2.17 ms against 2.35, on (65536, 16) 3.2 against 4.1, one thread, a
 * shared 2-core AMD EPYC VM). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256d psm_small_columns_f64_avx2(
    const double *x, int n, int track_max, __m256d col[PSM_SMALL_CLASSES])
{
    const __m256d zero = _mm256_setzero_pd();
    __m256d four[4];
    int j = 0;
    for (; j + 4 <= n; j += 4)
        psm_small_transpose_f64_avx2(x, n, j, col + j);
    if (j < n) {
        int first = n < 4 ? 0 : n - 4;
        psm_small_transpose_f64_avx2(x, n, first, four);
        for (; j < n; j++)
            col[j] = four[j - first];
    }
    __m256d m = track_max ? _mm256_set1_pd(-INFINITY) : zero;
    for (j = 0; track_max && j < n; j++)   /* max_pd(v, m) returns m when v is NaN */
        m = _mm256_max_pd(col[j], m);
    return _mm256_andnot_pd(_mm256_cmp_pd(m, zero, _CMP_EQ_OQ), m);
}

/* The shift of naive and maxsub: the max, or -big for a max of -inf. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256d psm_small_shift_f64_avx2(__m256d m, double big)
{
    return _mm256_blendv_pd(m, _mm256_set1_pd(-big),
                            _mm256_cmp_pd(m, _mm256_set1_pd(-INFINITY), _CMP_EQ_OQ));
}

/* The 4 rows' sums of their n terms term[j], in psm_lane_sum_f64_avx2's
 * order (see the top of this file). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256d psm_small_sums_f64_avx2(const __m256d *term, int n)
{
    __m256d acc[4];
    int j = 0;
    for (int k = 0; k < 4; k++)
        acc[k] = _mm256_setzero_pd();
    if (n >= 16) {
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_add_pd(acc[k],
                                   _mm256_add_pd(_mm256_add_pd(term[k], term[4 + k]),
                                                 _mm256_add_pd(term[8 + k], term[12 + k])));
        j = 16;
    }
    for (; j < n; j++)
        acc[j % 4] = _mm256_add_pd(acc[j % 4], term[j]);
    return _mm256_add_pd(_mm256_add_pd(acc[0], acc[2]), _mm256_add_pd(acc[1], acc[3]));
}

/* exp(v - m) where v != m (e), else 0, and the v == m counted into *ties:
 * the terms of psm_block_sums_f64_avx2 from e = exp(v - m). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256d psm_small_untied_f64_avx2(__m256d v, __m256d m,
                                                                   __m256d e, __m256d *ties)
{
    __m256d tie = _mm256_cmp_pd(v, m, _CMP_EQ_OQ);
    *ties = _mm256_add_pd(*ties, _mm256_and_pd(tie, _mm256_set1_pd(1.0)));
    return _mm256_andnot_pd(tie, e);
}

/* What row_pass leaves for each of 4 rows of n <= PSM_SMALL_CLASSES
 * contiguous doubles (row r at x + r n): the max (track_max; else 0), and
 * the sum of exp(x_j - max) over x_j != max with the x_j == max counted
 * (exact_rest), or else the sum of every exp(x_j - shift), the shift being
 * the max, or -big for a max of -inf. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_rows4_f64_avx2(const double *x, int n,
                                                                int track_max,
                                                                int exact_rest, double big,
                                                                double max[4],
                                                                double rest[4],
                                                                double ties[4])
{
    __m256d col[PSM_SMALL_CLASSES];
    __m256d m = psm_small_columns_f64_avx2(x, n, track_max, col);
    __m256d shift = exact_rest ? m : psm_small_shift_f64_avx2(m, big);
    __m256d tie_count = _mm256_setzero_pd();
    for (int j = 0; j < n; j++) {
        __m256d e = psm_exp_avx2(_mm256_sub_pd(col[j], shift));
        col[j] = exact_rest ? psm_small_untied_f64_avx2(col[j], m, e, &tie_count) : e;
    }
    _mm256_storeu_pd(rest, psm_small_sums_f64_avx2(col, n));
    _mm256_storeu_pd(ties, tie_count);
    _mm256_storeu_pd(max, m);
}

/* What stored_exps (row.h) leaves for each of 4 rows of n <=
 * PSM_SMALL_CLASSES contiguous doubles: e_j = exp(x_j - shift) of row r at
 * e[j * 8 + r] (a half of the eight rows' layout), the rows' max (stable,
 * maxsub; 0 for naive) and the sum of their e_j in
 * psm_exp_store_sum_f64_avx2's order; for stable also the sum over x_j !=
 * max with the x_j == max counted, in psm_stored_sums_f64_avx2's order,
 * which stored_exps takes for a row that needs it. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_exps4_f64_avx2(const double *x, int n,
                                                                int method, double big,
                                                                double *e, double max[4],
                                                                double sum[4],
                                                                double rest[4],
                                                                double ties[4])
{
    __m256d col[PSM_SMALL_CLASSES], untied[PSM_SMALL_CLASSES];
    __m256d m = psm_small_columns_f64_avx2(x, n, method != PSM_NAIVE, col);
    int stable = method == PSM_STABLE;
    __m256d shift = stable ? m : psm_small_shift_f64_avx2(m, big);
    __m256d tie_count = _mm256_setzero_pd();
    for (int j = 0; j < n; j++) {
        __m256d ex = psm_exp_avx2(_mm256_sub_pd(col[j], shift));
        _mm256_storeu_pd(e + 8 * j, ex);
        /* (unused unless stable: set anyway, since gcc -O3 could not see that
         * stable guards both its writes and its reads) */
        untied[j] = stable ? psm_small_untied_f64_avx2(col[j], m, ex, &tie_count) : ex;
        col[j] = ex;
    }
    _mm256_storeu_pd(sum, psm_small_sums_f64_avx2(col, n));
    if (stable) {
        _mm256_storeu_pd(rest, psm_small_sums_f64_avx2(untied, n));
        _mm256_storeu_pd(ties, tie_count);
    }
    _mm256_storeu_pd(max, m);
}

/* psm_small_rows4_f64_avx2 of 8 rows (rows_small_avx2.h's
 * psm_small_rows_avx2 for double), one copy per class count. */
static PSM_AVX2 void psm_small_rows_f64_avx2(const double *x, int n, int track_max,
                                             int exact_rest, double big, double max[8],
                                             double rest[8], double ties[8])
{
    switch (n) {
#define PSM_SMALL_ROWS_F64_CASE(k)                                                       \
    case k:                                                                              \
        psm_small_rows4_f64_avx2(x, k, track_max, exact_rest, big, max, rest, ties);     \
        psm_small_rows4_f64_avx2(x + 4 * k, k, track_max, exact_rest, big, max + 4,      \
                                 rest + 4, ties + 4);                                    \
        return;
    PSM_SMALL_CASES(PSM_SMALL_ROWS_F64_CASE)
#undef PSM_SMALL_ROWS_F64_CASE
    }
}

/* psm_small_exps4_f64_avx2 of 8 rows, e_j of row r at e[j * 8 + r]
 * (psm_small_exps_avx2 for double), one copy per class count. */
static PSM_AVX2 void psm_small_exps_f64_avx2(const double *x, int n, int method, double big,
                                             double *e, double max[8], double sum[8],
                                             double rest[8], double ties[8])
{
    switch (n) {
#define PSM_SMALL_EXPS_F64_CASE(k)                                                       \
    case k:                                                                              \
        psm_small_exps4_f64_avx2(x, k, method, big, e, max, sum, rest, ties);            \
        psm_small_exps4_f64_avx2(x + 4 * k, k, method, big, e + 4, max + 4, sum + 4,     \
                                 rest + 4, ties + 4);                                    \
        return;
    PSM_SMALL_CASES(PSM_SMALL_EXPS_F64_CASE)
#undef PSM_SMALL_EXPS_F64_CASE
    }
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_SMALL_AVX2_F64_H */
