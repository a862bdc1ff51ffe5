/*
 * Rows of at most PSM_SMALL_CLASSES floats, eight at a time: row r of the
 * eight in lane r of every vector (rows loaded and transposed, or gathered),
 * so that a row's max, its exps and its sums cost a few vector operations
 * rather than a pass of its own, whose per-row start-up (the tail loads,
 * the horizontal max and sums, each a chain of dependent steps) dominates a
 * row of ten floats.
 *
 * Each row's result is row_pass's for that row alone, bit for bit: its max
 * as psm_block_max_avx2 finds it, and its sum as psm_block_sums_avx2 or
 * psm_block_total_avx2 (rows_avx2.h) adds it, the same float terms joining
 * the same four double lanes in the same order.  So the portable twin of
 * this file is row_pass's (block_max and lane_sum in row.h), and a row gives
 * the same loss whichever path, batch or thread computes it.
 */
#ifndef PYSAFEMAX_ROWS_SMALL_AVX2_H
#define PYSAFEMAX_ROWS_SMALL_AVX2_H

#include <float.h>
#include <math.h>

#include "exp_f32.h"
#include "internal.h"   /* PSM_SMALL_CLASSES, PSM_FINISH_ROWS */
#include "log1p_f64.h"
#include "rows_avx2.h"      /* psm_tie_avx2 */
#include "softmax_loss.h"   /* PSM_STABLE, PSM_NAIVE */

#ifdef PSM_HAVE_AVX2

/* The class whose term lane l of group g of a block of n floats adds, or -1
 * for a lane that adds nothing: psm_load_tail_avx2's placement.  Groups of 8
 * floats, and for n % 8 a last group holding the block's last 8 floats with
 * the lanes already summed masked out (the first n, padded, when n < 8). */
static inline int psm_small_lane_class(int n, int g, int l)
{
    if (n < 8)
        return l < n ? l : -1;
    if (g < n / 8)
        return 8 * g + l;
    return l >= 8 - n % 8 ? n - 8 + l : -1;
}

/* t[k] lane j = c[j] lane k, in place: columns to rows, and back. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_transpose8_avx2(__m256 t[8])
{
    __m256 a[8], b[8];
    for (int k = 0; k < 8; k += 2) {
        a[k] = _mm256_unpacklo_ps(t[k], t[k + 1]);
        a[k + 1] = _mm256_unpackhi_ps(t[k], t[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        b[k] = _mm256_shuffle_ps(a[k], a[k + 2], 0x44);
        b[k + 1] = _mm256_shuffle_ps(a[k], a[k + 2], 0xEE);
        b[k + 2] = _mm256_shuffle_ps(a[k + 1], a[k + 3], 0x44);
        b[k + 3] = _mm256_shuffle_ps(a[k + 1], a[k + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        t[k] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x20);
        t[k + 4] = _mm256_permute2f128_ps(b[k], b[k + 4], 0x31);
    }
}

/* Column j of 8 rows of n contiguous floats (row r at x + r n) into col[j],
 * and the rows' max (track_max; else 0) as psm_block_max_avx2 finds it,
 * +0 for a zero max.  Rows of 8 floats or more are loaded 8 floats at a
 * time and transposed: a gather per column cost about half of the loop on
 * the AMD EPYC VM.  Shorter rows are gathered, which was faster there than
 * a copy to a padded buffer to load from (thread CPU time on (131072, 5):
 * forward 2.5 against 2.9-3.5 ms, softmax 1.67 against 2.09; on
 * (65536, 10): forward 1.53 against 1.31, softmax 1.13 against 0.81). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_small_columns_avx2(const float *x, int n,
                                                               int track_max,
                                                               __m256 col[PSM_SMALL_CLASSES])
{
    const __m256 zero = _mm256_setzero_ps();
    if (n < 8) {
        const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                _mm256_set1_epi32(n));
        for (int j = 0; j < n; j++)
            col[j] = _mm256_i32gather_ps(x + j, rows, 4);
    } else {
        /* classes 0-7, then the last 8 (8-15 for n = 16; 2-9 for n = 10,
         * the same values read twice); nothing past the 8 n floats */
        for (int g = 0; g < n; g += 8) {
            int first = g + 8 <= n ? g : n - 8;
            __m256 t[8];
            for (int r = 0; r < 8; r++)
                t[r] = _mm256_loadu_ps(x + r * n + first);
            psm_transpose8_avx2(t);
            for (int j = 0; j < 8; j++)
                col[first + j] = t[j];
        }
    }
    __m256 m = track_max ? _mm256_set1_ps(-INFINITY) : zero;
    if (track_max)   /* max_ps(v, m) returns m when v is NaN */
        for (int j = 0; j < n; j++)
            m = _mm256_max_ps(col[j], m);
    return _mm256_andnot_ps(_mm256_cmp_ps(m, zero, _CMP_EQ_OQ), m);
}

/* The shift of naive and maxsub: the max, or -big for a max of -inf. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_small_shift_avx2(__m256 m, float big)
{
    return _mm256_blendv_ps(m, _mm256_set1_ps(-big),
                            _mm256_cmp_ps(m, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
}

/* Whether every x_j - shift of the 8 rows' n columns lies in [-87, 87] or
 * is NaN, row.h's near_exps for eight rows at once, from the columns' min
 * and max (hi: the rows' max where the caller has it, else NULL, and it is
 * taken here): then psm_expf_near_avx2 gives psm_expf_avx2's bits without
 * its range check.  min_ps and max_ps skip NaN; a row whose bounds are not
 * finite fails the test, and its batch takes the checked exps. */
static PSM_ALWAYS_INLINE PSM_AVX2 int psm_small_near_avx2(const __m256 *col, int n,
                                                        const __m256 *hi, __m256 shift)
{
    __m256 lo = _mm256_set1_ps(INFINITY), top = _mm256_set1_ps(-INFINITY);
    for (int j = 0; j < n; j++) {
        lo = _mm256_min_ps(col[j], lo);
        if (!hi)
            top = _mm256_max_ps(col[j], top);
    }
    if (hi)
        top = *hi;
    __m256 ok = _mm256_and_ps(
        _mm256_cmp_ps(_mm256_sub_ps(lo, shift), _mm256_set1_ps(-PSM_EXP_FAST_LIMIT),
                      _CMP_GE_OQ),
        _mm256_cmp_ps(_mm256_sub_ps(top, shift), _mm256_set1_ps(PSM_EXP_FAST_LIMIT),
                      _CMP_LE_OQ));
    return _mm256_movemask_ps(ok) == 0xFF;
}

/* The 8 rows' sums of their n terms term[j], into sum[8]: per row, the
 * terms join four double lanes as psm_add_wide_avx2 joins them,
 * acc[k] = (acc[k] + s[k]) + s[k + 4] per group, then (acc0 + acc2) +
 * (acc1 + acc3) as psm_hsum_pd_avx2.  A masked lane adds +0, which changes
 * no sum (never -0), so it is skipped. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_sums_avx2(const __m256 *term, int n,
                                                           double sum[8])
{
    __m256d lo[4], hi[4];   /* rows 0-3, rows 4-7 */
    for (int k = 0; k < 4; k++)
        lo[k] = hi[k] = _mm256_setzero_pd();
    int groups = n < 8 ? 1 : (n + 7) / 8;
    for (int g = 0; g < groups; g++)
        for (int k = 0; k < 4; k++)
            for (int l = k; l < 8; l += 4) {
                int c = psm_small_lane_class(n, g, l);
                if (c < 0)
                    continue;
                lo[k] = _mm256_add_pd(lo[k], _mm256_cvtps_pd(_mm256_castps256_ps128(term[c])));
                hi[k] = _mm256_add_pd(hi[k],
                                      _mm256_cvtps_pd(_mm256_extractf128_ps(term[c], 1)));
            }
    _mm256_storeu_pd(sum, _mm256_add_pd(_mm256_add_pd(lo[0], lo[2]),
                                        _mm256_add_pd(lo[1], lo[3])));
    _mm256_storeu_pd(sum + 4, _mm256_add_pd(_mm256_add_pd(hi[0], hi[2]),
                                            _mm256_add_pd(hi[1], hi[3])));
}

/* exp(v - m) where v != m, else 0, and the v == m counted into *ties: the
 * terms of psm_block_sums_avx2 from e = exp(v - m). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_small_untied_avx2(__m256 v, __m256 m,
                                                              __m256 e, __m256i *ties)
{
    return _mm256_andnot_ps(psm_tie_avx2(v, m, ties), e);
}

/* exp(v - shift), unchecked where near (psm_small_near_avx2): the same bits. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_small_exp_avx2(__m256 v, __m256 shift, int near)
{
    __m256 d = _mm256_sub_ps(v, shift);
    return near ? psm_expf_near_avx2(d) : psm_expf_avx2(d);
}

/* psm_small_rows_n_avx2's terms, in place of the columns: exp(x_j - shift),
 * without the x_j == m (counted, returned) where exact_rest.  Called with
 * near a constant, so that each copy has one exp. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256i psm_small_terms_avx2(__m256 *col, int n, __m256 m,
                                                              __m256 shift, int exact_rest,
                                                              int near)
{
    __m256i ties = _mm256_setzero_si256();
    for (int j = 0; j < n; j++) {
        __m256 e = psm_small_exp_avx2(col[j], shift, near);
        col[j] = exact_rest ? psm_small_untied_avx2(col[j], m, e, &ties) : e;
    }
    return ties;
}

/* psm_small_exps_n_avx2's terms: each exp stored to e and left in col,
 * and for stable (the x_j == m counted, returned) the untied ones; near as
 * in psm_small_terms_avx2. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256i psm_small_stored_terms_avx2(__m256 *col,
                                                                     __m256 *untied, int n,
                                                                     __m256 m, __m256 shift,
                                                                     int stable, float *e,
                                                                     int near)
{
    __m256i ties = _mm256_setzero_si256();
    for (int j = 0; j < n; j++) {
        __m256 ex = psm_small_exp_avx2(col[j], shift, near);
        _mm256_storeu_ps(e + 8 * j, ex);
        /* written either way, so that no compiler sees it read unset */
        untied[j] = stable ? psm_small_untied_avx2(col[j], m, ex, &ties) : ex;
        col[j] = ex;
    }
    return ties;
}

/* The 8 rows' tie counts (psm_tie_avx2's) as doubles. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_store_ties_avx2(__m256i ties, double out[8])
{
    _mm256_storeu_pd(out, _mm256_cvtepi32_pd(_mm256_castsi256_si128(ties)));
    _mm256_storeu_pd(out + 4, _mm256_cvtepi32_pd(_mm256_extracti128_si256(ties, 1)));
}

/* What row_pass leaves for each of 8 rows of n <= PSM_SMALL_CLASSES
 * contiguous floats (row r at x + r n): the max (track_max; else 0), and
 * the sum of exp(x_j - max) over x_j != max with the x_j == max counted
 * (exact_rest), or else the sum of every exp(x_j - shift), the shift being
 * the max, or -big for a max of -inf. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_rows_n_avx2(const float *x, int n,
                                                              int track_max, int exact_rest,
                                                              float big, float max[8],
                                                              double rest[8], double ties[8])
{
    __m256 col[PSM_SMALL_CLASSES];
    __m256 m = psm_small_columns_avx2(x, n, track_max, col);
    __m256 shift = exact_rest ? m : psm_small_shift_avx2(m, big);
    /* one copy of the loop for each exp: a choice per exp cost more than
     * the range checks it saved */
    __m256i tie_count = psm_small_near_avx2(col, n, track_max ? &m : NULL, shift)
                           ? psm_small_terms_avx2(col, n, m, shift, exact_rest, 1)
                           : psm_small_terms_avx2(col, n, m, shift, exact_rest, 0);
    psm_small_sums_avx2(col, n, rest);
    psm_small_store_ties_avx2(tie_count, ties);
    _mm256_storeu_ps(max, m);
}

/* What stored_exps (row.h) leaves for each of 8 rows of n <=
 * PSM_SMALL_CLASSES contiguous floats: e_j = exp(x_j - shift) of row r at
 * e[j * 8 + r], the rows' max (stable, maxsub; 0 for naive) and the sum of
 * their e_j in psm_exp_store_sum_avx2's order; for stable also the sum
 * over x_j != max with the x_j == max counted, in psm_stored_sums_avx2's
 * order, which stored_exps takes for a row that needs it. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_exps_n_avx2(const float *x, int n,
                                                              int method, float big, float *e,
                                                              float max[8], double sum[8],
                                                              double rest[8], double ties[8])
{
    __m256 col[PSM_SMALL_CLASSES], untied[PSM_SMALL_CLASSES];
    __m256 m = psm_small_columns_avx2(x, n, method != PSM_NAIVE, col);
    int stable = method == PSM_STABLE;
    __m256 shift = stable ? m : psm_small_shift_avx2(m, big);
    __m256i tie_count = psm_small_near_avx2(col, n, method != PSM_NAIVE ? &m : NULL, shift)
                           ? psm_small_stored_terms_avx2(col, untied, n, m, shift, stable, e, 1)
                           : psm_small_stored_terms_avx2(col, untied, n, m, shift, stable, e, 0);
    psm_small_sums_avx2(col, n, sum);
    if (stable) {
        psm_small_sums_avx2(untied, n, rest);
        psm_small_store_ties_avx2(tie_count, ties);
    }
    _mm256_storeu_ps(max, m);
}

/* Each class count its own copy of the two functions above (PSM_SMALL_CASES):
 * with n a constant the loops unroll, and which class each lane of each
 * group adds (psm_small_lane_class) is settled at compile time, not branched
 * on per lane.  On (65536, 10) the generic loops ran about 100 instructions
 * a row, most of them that bookkeeping. */

/* psm_small_rows_n_avx2 for n <= PSM_SMALL_CLASSES. */
static PSM_AVX2 void psm_small_rows_avx2(const float *x, int n, int track_max,
                                         int exact_rest, float big, float max[8],
                                         double rest[8], double ties[8])
{
    switch (n) {
#define PSM_SMALL_ROWS_CASE(k) \
    case k: psm_small_rows_n_avx2(x, k, track_max, exact_rest, big, max, rest, ties); return;
    PSM_SMALL_CASES(PSM_SMALL_ROWS_CASE)
#undef PSM_SMALL_ROWS_CASE
    }
}

/* psm_small_exps_n_avx2 for n <= PSM_SMALL_CLASSES. */
static PSM_AVX2 void psm_small_exps_avx2(const float *x, int n, int method, float big,
                                         float *e, float max[8], double sum[8],
                                         double rest[8], double ties[8])
{
    switch (n) {
#define PSM_SMALL_EXPS_CASE(k) \
    case k: psm_small_exps_n_avx2(x, k, method, big, e, max, sum, rest, ties); return;
    PSM_SMALL_CASES(PSM_SMALL_EXPS_CASE)
#undef PSM_SMALL_EXPS_CASE
    }
}

/* All ones in the lanes of m that are finite. */
static inline PSM_AVX2 __m256d psm_finite4_avx2(__m256d m)
{
    return _mm256_cmp_pd(_mm256_andnot_pd(_mm256_set1_pd(-0.0), m), _mm256_set1_pd(DBL_MAX),
                         _CMP_LE_OQ);
}

/* row.h's stable_rest of four rows: rest + (ties - 1), NaN where the max
 * is not finite (finite: psm_finite4_avx2 of the maxima). */
static inline PSM_AVX2 __m256d psm_stable_rest4_avx2(__m256d rest, __m256d ties,
                                                     __m256d finite)
{
    return _mm256_blendv_pd(_mm256_set1_pd(NAN),
                            _mm256_add_pd(rest, _mm256_sub_pd(ties, _mm256_set1_pd(1.0))),
                            finite);
}

/* row.h's log_norm of `rows` rows (8 or PSM_FINISH_ROWS) from their
 * psm_small_rows_avx2 states, four rows a vector: log1p of their
 * stable_rest. */
static inline PSM_AVX2 void psm_small_log_norms_avx2(const float *max, const double *rest,
                                                    const double *ties, int rows,
                                                    double *log_norm)
{
    for (int h = 0; h < rows; h += 4) {
        __m256d finite = psm_finite4_avx2(_mm256_cvtps_pd(_mm_loadu_ps(max + h)));
        _mm256_storeu_pd(log_norm + h,
                         psm_stable_rest4_avx2(_mm256_loadu_pd(rest + h),
                                               _mm256_loadu_pd(ties + h), finite));
    }
    psm_log1p_avx2(log_norm, rows);
}

/* one_hot_loss (row.h) of `rows` rows (a multiple of 4) with plain labels
 * (a share of 1), from their maxima, label logits x_y and log norms:
 * (m - x_y) + log_norm in double, a NaN written as +NaN. */
static inline PSM_AVX2 void psm_small_one_hot_losses_avx2(const float *max, const float *x_y,
                                                         const double *log_norm, int rows,
                                                         double *loss)
{
    for (int h = 0; h < rows; h += 4) {
        __m256d gap = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(max + h)),
                                    _mm256_cvtps_pd(_mm_loadu_ps(x_y + h)));
        __m256d l = _mm256_add_pd(gap, _mm256_loadu_pd(log_norm + h));
        __m256d nan = _mm256_cmp_pd(l, l, _CMP_UNORD_Q);
        _mm256_storeu_pd(loss + h, _mm256_blendv_pd(l, _mm256_set1_pd(NAN), nan));
    }
}

/* The stable losses of `rows` rows (8 or PSM_FINISH_ROWS) of n <=
 * PSM_SMALL_CLASSES floats, row r at x + r n, whose labels y[r] are plain
 * (in [0, n), a share of 1): each row's one_hot_loss from
 * psm_small_rows_avx2's states, four rows a vector, after every row's
 * sweep.  The same operations as the row-by-row finish, without its
 * states' round trip through memory: on (65536, 10) that finish took more
 * instructions than the rows' sweep. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_stable_losses_n_avx2(const float *x, int n,
                                                                     int rows,
                                                                     const int64_t *y,
                                                                     double *loss)
{
    float max[PSM_FINISH_ROWS], x_y[PSM_FINISH_ROWS];
    double rest[PSM_FINISH_ROWS], ties[PSM_FINISH_ROWS], log_norm[PSM_FINISH_ROWS];
    for (int b = 0; b < rows; b += 8)
        psm_small_rows_avx2(x + b * n, n, 1, 1, FLT_MAX, max + b, rest + b, ties + b);
    psm_small_log_norms_avx2(max, rest, ties, rows, log_norm);
    for (int r = 0; r < rows; r++)
        x_y[r] = x[r * n + y[r]];
    psm_small_one_hot_losses_avx2(max, x_y, log_norm, rows, loss);
}

/* psm_small_stable_losses_n_avx2, a copy for each row count: with `rows` a
 * constant the finish's loops unroll (on (65536, 10), C harness, 732 us
 * against 792 with one copy for both). */
static PSM_AVX2 void psm_small_stable_losses_avx2(const float *x, int n, int rows,
                                                  const int64_t *y, double *loss)
{
    if (rows == PSM_FINISH_ROWS)
        psm_small_stable_losses_n_avx2(x, n, PSM_FINISH_ROWS, y, loss);
    else
        psm_small_stable_losses_n_avx2(x, n, 8, y, loss);
}

/* Caffe's loss -log(max(exp(x_y - shift) / total, FLT_MIN)), in float,
 * of eight positions (row.h's clamped_nll, for naive and maxsub): the exps,
 * divisions and clamps as one vector (psm_expf_avx2 gives psm_expf's
 * bits), the logs by logf, as clamped_nll takes them.  For plain_losses's
 * eight rows of any length: clamped_nll's scalar psm_expf, whose fmaf a
 * portable build calls in libm, was half a naive row's cost on (65536, 10). */
static PSM_AVX2 void psm_clamped_nll8_avx2(const float shift[8], const float total[8],
                                           const float x_y[8], double loss[8])
{
    const __m256 tiny = _mm256_set1_ps(FLT_MIN);
    float p[8];
    __m256 e = psm_expf_avx2(_mm256_sub_ps(_mm256_loadu_ps(x_y), _mm256_loadu_ps(shift)));
    __m256 q = _mm256_div_ps(e, _mm256_loadu_ps(total));
    /* q < tiny ? tiny : q, a NaN q kept */
    _mm256_storeu_ps(p, _mm256_blendv_ps(q, tiny, _mm256_cmp_ps(q, tiny, _CMP_LT_OQ)));
    for (int r = 0; r < 8; r++)
        loss[r] = (double)(0.0f - logf(p[r]));
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_SMALL_AVX2_H */
