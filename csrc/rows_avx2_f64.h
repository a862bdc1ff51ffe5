/*
 * AVX2+FMA loops over contiguous double logits, 4 lanes: rows_avx2.h for
 * the double entry points (included by softmax_loss_f64.c only), with the
 * kernel's double exp (exp_f64.h).  Compiled through target attributes
 * only, and called only when the CPU has AVX2 and FMA and the calling thread
 * has not asked for the portable twins.
 *
 * Each loop has a portable twin in row.h (block_max, lane_sum for
 * block_sum and exp_store_sum, stored_sums, scale_row, smoothed_gaps,
 * smoothed_grad, grad_row, log_softmax_row) that performs the
 * same double operations in the same order on 4 emulated lanes, for any
 * stride, so both give the same bits.  A sum adds each 16 terms as a tree,
 * (e0 + e1) + (e2 + e3) per lane, into 4 double accumulators, read out as
 * (acc0 + acc2) + (acc1 + acc3); the last n % 4 terms take lanes 0..n%4-1 of
 * one more group, whose other lanes add +0.
 */
#ifndef PYSAFEMAX_ROWS_AVX2_F64_H
#define PYSAFEMAX_ROWS_AVX2_F64_H

#include "exp_f64.h"
#include "internal.h"   /* PSM_BLOCK */
#include "lanes_avx2.h"   /* label smoothing's steps */

#ifdef PSM_HAVE_AVX2

static inline PSM_AVX2 double psm_hsum_f64_avx2(__m256d v)
{
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

static inline PSM_AVX2 double psm_hmax_f64_avx2(__m256d v)
{
    __m128d a = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(a, _mm_unpackhi_pd(a, a)));
}

/* The max of n doubles, NaN skipped as `x > max` skips it; -inf if none.
 * max_pd(v, m) returns m when v is NaN. */
static PSM_AVX2 double psm_block_max_f64_avx2(const double *x, int64_t n)
{
    __m256d m0 = _mm256_set1_pd(-INFINITY), m1 = m0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        m0 = _mm256_max_pd(_mm256_loadu_pd(x + j), m0);
        m1 = _mm256_max_pd(_mm256_loadu_pd(x + j + 4), m1);
    }
    for (; j + 4 <= n; j += 4)
        m0 = _mm256_max_pd(_mm256_loadu_pd(x + j), m0);
    double m = psm_hmax_f64_avx2(_mm256_max_pd(m0, m1));
    for (; j < n; j++)
        if (x[j] > m)
            m = x[j];
    return m;
}

/* All ones in the lanes below count (0..4). */
static inline PSM_AVX2 __m256i psm_lanes_below_f64_avx2(int64_t count)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
}

/* x[0..count) in lanes 0..count-1 (0 < count < 4), pad in the others: a
 * masked load, which reads nothing past the block. */
static inline PSM_AVX2 __m256d psm_load_tail_f64_avx2(const double *x, int64_t count,
                                                      double pad, __m256i *valid)
{
    *valid = psm_lanes_below_f64_avx2(count);
    return _mm256_blendv_pd(_mm256_set1_pd(pad), _mm256_maskload_pd(x, *valid),
                            _mm256_castsi256_pd(*valid));
}

static inline PSM_AVX2 int64_t psm_hsum_epi64_avx2(__m256i v)
{
    __m128i a = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(_mm_add_epi64(a, _mm_unpackhi_epi64(a, a)));
}

/* e = exp(v - shift), stored to e when it is not NULL; the term it adds to
 * the sum: e, or with ties (non-NULL), 0 where v == shift, those lanes
 * counted into *ties (a true compare is -1 as an integer).  Only the lanes
 * of valid count, and only they are stored when tail is set (a masked
 * store, which costs several times a plain one on Zen 3). */
static inline PSM_AVX2 __m256d psm_term_f64_avx2(__m256d v, __m256d sv, __m256i valid,
                                                 int tail, __m256i *ties, double *e)
{
    __m256d ex = psm_exp_avx2(_mm256_sub_pd(v, sv));
    if (e && tail)
        _mm256_maskstore_pd(e, valid, ex);
    else if (e)
        _mm256_storeu_pd(e, ex);
    if (ties) {
        __m256d tie = _mm256_and_pd(_mm256_cmp_pd(v, sv, _CMP_EQ_OQ),
                                    _mm256_castsi256_pd(valid));
        *ties = _mm256_sub_epi64(*ties, _mm256_castpd_si256(tie));
        ex = _mm256_andnot_pd(tie, ex);
    }
    return _mm256_and_pd(_mm256_castsi256_pd(valid), ex);
}

/* exp(v - m) where v != m (e, already computed), else 0; the v == m lanes
 * counted into ties. */
static inline PSM_AVX2 __m256d psm_untied_f64_avx2(__m256d v, __m256d mv, __m256d e,
                                                   __m256i *ties)
{
    __m256d tie = _mm256_cmp_pd(v, mv, _CMP_EQ_OQ);
    *ties = _mm256_sub_epi64(*ties, _mm256_castpd_si256(tie));
    return _mm256_andnot_pd(tie, e);
}

/* The sum of exp(x_j - shift) over n doubles, or with ties (non-NULL), over
 * the x_j != shift, those counted into *ties; with e, each exp(x_j - shift)
 * is also stored to e (n doubles; e may be x itself: every x_j is read
 * before its e_j is written).  One loop for block_total, block_sums and
 * exp_store_sum: always inlined, so that their NULL arguments fold away. */
static PSM_ALWAYS_INLINE PSM_AVX2 double psm_lane_sum_f64_avx2(const double *x, int64_t n,
                                                               double shift, double *ties,
                                                               double *e)
{
    const __m256d sv = _mm256_set1_pd(shift);
    const __m256i all = _mm256_set1_epi64x(-1);
    __m256d acc = _mm256_setzero_pd();
    __m256i tie_count = _mm256_setzero_si256();
    __m256i *tc = ties ? &tie_count : NULL;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        /* While this block is summed from L1, fetch the next one (the rest
         * of the row, or the next row) from memory: a prefetch never faults,
         * even past the end of the array. */
        _mm_prefetch((const char *)(x + j + PSM_BLOCK), _MM_HINT_T0);
        _mm_prefetch((const char *)(x + j + PSM_BLOCK + 8), _MM_HINT_T0);
        __m256d v0 = _mm256_loadu_pd(x + j), v1 = _mm256_loadu_pd(x + j + 4);
        __m256d v2 = _mm256_loadu_pd(x + j + 8), v3 = _mm256_loadu_pd(x + j + 12);
        __m256d e0 = psm_term_f64_avx2(v0, sv, all, 0, tc, e ? e + j : NULL);
        __m256d e1 = psm_term_f64_avx2(v1, sv, all, 0, tc, e ? e + j + 4 : NULL);
        __m256d e2 = psm_term_f64_avx2(v2, sv, all, 0, tc, e ? e + j + 8 : NULL);
        __m256d e3 = psm_term_f64_avx2(v3, sv, all, 0, tc, e ? e + j + 12 : NULL);
        acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_add_pd(e0, e1), _mm256_add_pd(e2, e3)));
    }
    for (; j + 4 <= n; j += 4)
        acc = _mm256_add_pd(acc, psm_term_f64_avx2(_mm256_loadu_pd(x + j), sv, all, 0, tc,
                                                   e ? e + j : NULL));
    if (j < n) {
        __m256i valid;
        __m256d v = psm_load_tail_f64_avx2(x + j, n - j, shift, &valid);
        acc = _mm256_add_pd(acc, psm_term_f64_avx2(v, sv, valid, 1, tc, e ? e + j : NULL));
    }
    if (ties)
        *ties += (double)psm_hsum_epi64_avx2(tie_count);
    return psm_hsum_f64_avx2(acc);
}

/* The sum of exp(x_j - shift) over n doubles. */
static PSM_AVX2 double psm_block_total_f64_avx2(const double *x, int64_t n, double shift)
{
    return psm_lane_sum_f64_avx2(x, n, shift, NULL, NULL);
}

/* Adds the sum of exp(x_j - m) over x_j != m to *rest and the count of
 * x_j == m to *ties, in psm_block_total_f64_avx2's order. */
static PSM_AVX2 void psm_block_sums_f64_avx2(const double *x, int64_t n, double m,
                                             double *rest, double *ties)
{
    *rest += psm_lane_sum_f64_avx2(x, n, m, ties, NULL);
}

/* Softmax's one exp per element: e_j = exp(x_j - shift) stored to e, and the
 * sum of the terms in psm_block_total_f64_avx2's order (with ties, over
 * x_j != shift). */
static PSM_AVX2 double psm_exp_store_sum_f64_avx2(const double *x, int64_t n, double shift,
                                                  double *e)
{
    return psm_lane_sum_f64_avx2(x, n, shift, NULL, e);
}

/* psm_block_sums_f64_avx2 on exps already computed: e_j = exp(x_j - m), as
 * psm_exp_store_sum_f64_avx2 stored them, summed over x_j != m in the same
 * order (so with the same bits), the x_j == m counted into *ties. */
static PSM_AVX2 void psm_stored_sums_f64_avx2(const double *x, const double *e, int64_t n,
                                              double m, double *rest, double *ties)
{
    const __m256d mv = _mm256_set1_pd(m);
    __m256d acc = _mm256_setzero_pd();
    __m256i tie_count = _mm256_setzero_si256();
    int64_t j = 0;
#define PSM_STORED_TERM_F64(k)                                                         \
    psm_untied_f64_avx2(_mm256_loadu_pd(x + j + (k)), mv, _mm256_loadu_pd(e + j + (k)), \
                        &tie_count)
    for (; j + 16 <= n; j += 16)
        acc = _mm256_add_pd(acc, _mm256_add_pd(_mm256_add_pd(PSM_STORED_TERM_F64(0),
                                                             PSM_STORED_TERM_F64(4)),
                                               _mm256_add_pd(PSM_STORED_TERM_F64(8),
                                                             PSM_STORED_TERM_F64(12))));
    for (; j + 4 <= n; j += 4)
        acc = _mm256_add_pd(acc, PSM_STORED_TERM_F64(0));
#undef PSM_STORED_TERM_F64
    if (j < n) {
        __m256i valid;
        __m256d v = psm_load_tail_f64_avx2(x + j, n - j, m, &valid);
        __m256d ev = _mm256_maskload_pd(e + j, valid);
        __m256d tie = _mm256_and_pd(_mm256_cmp_pd(v, mv, _CMP_EQ_OQ),
                                    _mm256_castsi256_pd(valid));
        tie_count = _mm256_sub_epi64(tie_count, _mm256_castpd_si256(tie));
        acc = _mm256_add_pd(acc, _mm256_and_pd(_mm256_castsi256_pd(valid),
                                               _mm256_andnot_pd(tie, ev)));
    }
    *rest += psm_hsum_f64_avx2(acc);
    *ties += (double)psm_hsum_epi64_avx2(tie_count);
}

/* g_j = ((g_j / divisor) * factor) * scale with divide, else g_j * factor,
 * in place: scale_row's loop (row.h), elementwise, so the same bits. */
static PSM_AVX2 void psm_scale_row_f64_avx2(double *g, int64_t n, int divide, double divisor,
                                            double factor, double scale)
{
    const __m256d dv = _mm256_set1_pd(divisor), fv = _mm256_set1_pd(factor);
    const __m256d cv = _mm256_set1_pd(scale);
    int64_t j = 0;
    if (divide)
        for (; j + 4 <= n; j += 4)
            _mm256_storeu_pd(g + j, _mm256_mul_pd(_mm256_mul_pd(
                                        _mm256_div_pd(_mm256_loadu_pd(g + j), dv), fv), cv));
    else
        for (; j + 4 <= n; j += 4)
            _mm256_storeu_pd(g + j, _mm256_mul_pd(_mm256_loadu_pd(g + j), fv));
    for (; j < n; j++)
        g[j] = divide ? ((g[j] / divisor) * factor) * scale : g[j] * factor;
}

/* sum_j q_j (m - x_j), q_j = smooth w_j (w NULL: all 1), over the x_j with
 * q_j != 0 and x_j != -inf, in smoothed_gaps' order (row.h): lane l of 8
 * takes j = 8 g + l (two vectors of 4), combined as ((l0 + l4) + (l2 + l6))
 * + ((l1 + l5) + (l3 + l7)), the last n % 8 in index order; *neg_inf set
 * where some q_j != 0 has x_j = -inf. */
static PSM_AVX2 double psm_smoothed_gaps_f64_avx2(const double *x, int64_t n, double m,
                                                  double smooth, const double *w,
                                                  int *neg_inf)
{
    const __m256d md = _mm256_set1_pd(m), sv = _mm256_set1_pd(smooth);
    __m256d lo = _mm256_setzero_pd(), hi = lo;
    int found = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        found |= psm_smoothed_gap_pd(_mm256_loadu_pd(x + j), md, sv, w ? w + j : NULL, &lo);
        found |= psm_smoothed_gap_pd(_mm256_loadu_pd(x + j + 4), md, sv,
                                     w ? w + j + 4 : NULL, &hi);
    }
    double total = psm_hsum_f64_avx2(_mm256_add_pd(lo, hi));
    for (; j < n; j++) {
        double q = smooth * (w ? w[j] : 1.0);
        if (q == 0.0)
            continue;
        if (x[j] == -INFINITY)
            found = 1;
        else
            total += q * (m - x[j]);
    }
    if (found)
        *neg_inf = 1;
    return total;
}

/* g_j = (mass (e_j / denom) - smooth w_j) scale in place (w NULL: all 1):
 * smoothed_grad's loop (row.h), elementwise, so the same bits. */
static PSM_AVX2 void psm_smoothed_grad_f64_avx2(double *g, int64_t n, const double *w,
                                                double mass, double denom, double smooth,
                                                double scale)
{
    const __m256d mv = _mm256_set1_pd(mass), dv = _mm256_set1_pd(denom);
    const __m256d sv = _mm256_set1_pd(smooth), cv = _mm256_set1_pd(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(g + j, psm_smoothed_grad_pd(_mm256_loadu_pd(g + j), mv, dv, sv,
                                                     w ? w + j : NULL, cv));
    for (; j < n; j++)
        g[j] = (mass * (g[j] / denom) - smooth * (w ? w[j] : 1.0)) * scale;
}

/* log-softmax of a row: y_j = (x_j - m) - log_norm, as the portable loop of
 * log_softmax_row (row.h). */
static PSM_AVX2 void psm_log_softmax_row_f64_avx2(const double *x, int64_t n, double m,
                                                  double log_norm, double *y)
{
    const __m256d mv = _mm256_set1_pd(m), lv = _mm256_set1_pd(log_norm);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(y + j, _mm256_sub_pd(_mm256_sub_pd(_mm256_loadu_pd(x + j), mv), lv));
    for (; j < n; j++)
        y[j] = (x[j] - m) - log_norm;
}

/* g_j = exp(x_j - shift) * factor, or with divide: ((exp(x_j - shift) /
 * divisor) * factor) * scale, the operations of the portable loop in the
 * same order. */
static PSM_AVX2 void psm_grad_row_f64_avx2(const double *x, int64_t n, double shift,
                                           int divide, double divisor, double factor,
                                           double scale, double *g)
{
    const __m256d sv = _mm256_set1_pd(shift), dv = _mm256_set1_pd(divisor);
    const __m256d fv = _mm256_set1_pd(factor), cv = _mm256_set1_pd(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256d e = psm_exp_avx2(_mm256_sub_pd(_mm256_loadu_pd(x + j), sv));
        __m256d v = divide ? _mm256_mul_pd(_mm256_mul_pd(_mm256_div_pd(e, dv), fv), cv)
                           : _mm256_mul_pd(e, fv);
        _mm256_storeu_pd(g + j, v);
    }
    for (; j < n; j++) {
        double e = psm_exp(x[j] - shift);
        g[j] = divide ? ((e / divisor) * factor) * scale : e * factor;
    }
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_AVX2_F64_H */
