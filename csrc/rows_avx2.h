/*
 * AVX2+FMA loops over contiguous float logits: the hot path of the float
 * entry points (included by softmax_loss_f32.c only).  Compiled for AVX2
 * through target attributes only, and called only when the CPU has AVX2 and
 * FMA (psm_simd_level, softmax_loss.c) and the calling thread has not asked
 * for the portable twins, so the build itself needs no -mavx2.  (The test
 * hooks' own loops, the exp over an array and the read probe, are
 * testing.c's.)
 *
 * Each loop has a portable twin in row.h (block_max, block_sum, grad_row,
 * exp_store_sum, scale_row, log_softmax_row) that performs the same float operations in the same
 * order on 8 emulated lanes, for any stride: both give the same bits, so
 * results do not depend on the CPU, the layout or the path, and the tests
 * hold them to that.
 */
#ifndef PYSAFEMAX_ROWS_AVX2_H
#define PYSAFEMAX_ROWS_AVX2_H

#include "exp_f32.h"
#include "internal.h"   /* PSM_BLOCK */
#include "lanes_avx2.h"

#ifdef PSM_HAVE_AVX2

static inline PSM_AVX2 float psm_hmax_avx2(__m256 v)
{
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

static inline PSM_AVX2 float psm_hmin_avx2(__m256 v)
{
    __m128 a = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_min_ps(a, _mm_movehl_ps(a, a));
    a = _mm_min_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

/* The max of n floats, NaN skipped as `x > max` skips it; -inf if none;
 * with low (not NULL) also their min, NaN skipped alike; +inf if none.
 * max_ps(v, m) and min_ps(v, m) return m when v is NaN. */
static PSM_ALWAYS_INLINE PSM_AVX2 float psm_block_extremes_avx2(const float *x, int64_t n,
                                                              float *low)
{
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    __m256 l0 = _mm256_set1_ps(INFINITY), l1 = l0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        m0 = _mm256_max_ps(v0, m0);
        m1 = _mm256_max_ps(v1, m1);
        if (low) {
            l0 = _mm256_min_ps(v0, l0);
            l1 = _mm256_min_ps(v1, l1);
        }
    }
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        m0 = _mm256_max_ps(v, m0);
        if (low)
            l0 = _mm256_min_ps(v, l0);
    }
    float m = psm_hmax_avx2(_mm256_max_ps(m0, m1));
    float l = low ? psm_hmin_avx2(_mm256_min_ps(l0, l1)) : 0.0f;
    for (; j < n; j++) {
        if (x[j] > m)
            m = x[j];
        if (low && x[j] < l)
            l = x[j];
    }
    if (low)
        *low = l;
    return m;
}

static PSM_AVX2 float psm_block_max_avx2(const float *x, int64_t n)
{
    return psm_block_extremes_avx2(x, n, NULL);
}

/* psm_block_max_avx2, and the min in *low. */
static PSM_AVX2 float psm_block_range_avx2(const float *x, int64_t n, float *low)
{
    return psm_block_extremes_avx2(x, n, low);
}

/* All ones in the lanes below count (0..8). */
static inline PSM_AVX2 __m256 psm_lanes_below_avx2(int64_t count)
{
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32((int)count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* The last group of a block of n floats, of which the first j are done
 * (0 < n - j < 8), and its valid lanes.  With n >= 8 it is the block's last
 * 8 floats, the lanes already done masked out; a shorter block is copied into
 * lanes 0..n-1 of a buffer padded with pad.  Nothing past the block is read.
 * The portable twins place the lanes the same way. */
static inline PSM_AVX2 __m256 psm_load_tail_avx2(const float *x, int64_t n, int64_t j,
                                                 float pad, __m256 *valid)
{
    if (n >= 8) {
        *valid = _mm256_andnot_ps(psm_lanes_below_avx2(8 - (n - j)),
                                  _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        return _mm256_loadu_ps(x + n - 8);
    }
    float tail[8];
    int64_t k = 0;
    for (; k < n; k++)
        tail[k] = x[k];
    for (; k < 8; k++)
        tail[k] = pad;
    *valid = psm_lanes_below_avx2(n);
    return _mm256_loadu_ps(tail);
}

static inline PSM_AVX2 int32_t psm_hsum_epi32_avx2(__m256i v)
{
    __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4E));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xB1));
    return _mm_cvtsi128_si32(a);
}

/* The lanes where v == m, counted into ties (a true compare is -1 as an
 * integer). */
static inline PSM_AVX2 __m256 psm_tie_avx2(__m256 v, __m256 m, __m256i *ties)
{
    __m256 tie = _mm256_cmp_ps(v, m, _CMP_EQ_OQ);
    *ties = _mm256_sub_epi32(*ties, _mm256_castps_si256(tie));
    return tie;
}

/* exp(v - shift) for the loops below: with near, every v - shift is known
 * to be in [-87, 87] or NaN, and psm_expf_near_avx2 gives the same bits
 * with no check per vector (whose branch cost the loop about 9% on
 * (8192, 1000) with the gradient). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_shifted_exp_avx2(__m256 v, __m256 shift,
                                                             int near)
{
    __m256 d = _mm256_sub_ps(v, shift);
    return near ? psm_expf_near_avx2(d) : psm_expf_avx2(d);
}

/* exp(v - m) where v != m, else 0; counts the v == m lanes into ties. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_term_avx2(__m256 v, __m256 m, __m256i *ties,
                                                      int near)
{
    return _mm256_andnot_ps(psm_tie_avx2(v, m, ties), psm_shifted_exp_avx2(v, m, near));
}

/* The sum of exp(x_j - shift) over n floats: per lane, groups of 4 terms
 * are added in float as a tree (relative error <= 2u) before joining a
 * double accumulator.  The last n % 8 floats: see psm_load_tail_avx2.  With
 * e (non-NULL), each exp(x_j - shift) is also stored to e (n floats; e may
 * be x itself: every x_j is read before its e_j is written, and the tail
 * stores only its new lanes).  Always inlined, so that block_total's NULL e
 * folds away. */
static PSM_ALWAYS_INLINE PSM_AVX2 double psm_exp_sum_avx2(const float *x, int64_t n,
                                                          float shift, float *e, int near)
{
    const __m256 sv = _mm256_set1_ps(shift);
    __m256d acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        /* While this block is summed from L1, fetch the next one (the rest
         * of the row, or the next row) from memory: a prefetch never faults,
         * even past the end of the array. */
        _mm_prefetch((const char *)(x + j + PSM_BLOCK), _MM_HINT_T0);
        _mm_prefetch((const char *)(x + j + PSM_BLOCK + 16), _MM_HINT_T0);
        __m256 e0 = psm_shifted_exp_avx2(_mm256_loadu_ps(x + j), sv, near);
        __m256 e1 = psm_shifted_exp_avx2(_mm256_loadu_ps(x + j + 8), sv, near);
        __m256 e2 = psm_shifted_exp_avx2(_mm256_loadu_ps(x + j + 16), sv, near);
        __m256 e3 = psm_shifted_exp_avx2(_mm256_loadu_ps(x + j + 24), sv, near);
        if (e) {
            _mm256_storeu_ps(e + j, e0);
            _mm256_storeu_ps(e + j + 8, e1);
            _mm256_storeu_ps(e + j + 16, e2);
            _mm256_storeu_ps(e + j + 24, e3);
        }
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(_mm256_add_ps(e0, e1),
                                                   _mm256_add_ps(e2, e3)));
    }
    for (; j + 8 <= n; j += 8) {
        __m256 ex = psm_shifted_exp_avx2(_mm256_loadu_ps(x + j), sv, near);
        if (e)
            _mm256_storeu_ps(e + j, ex);
        acc = psm_add_wide_avx2(acc, ex);
    }
    if (j < n) {
        __m256 valid;
        __m256 v = psm_load_tail_avx2(x, n, j, shift, &valid);
        __m256 ex = psm_shifted_exp_avx2(v, sv, near);
        acc = psm_add_wide_avx2(acc, _mm256_and_ps(valid, ex));
        if (e) {
            /* the lanes psm_load_tail_avx2 placed: the block's last 8, or
             * its first n */
            float lanes[8];
            _mm256_storeu_ps(lanes, ex);
            int64_t first = n >= 8 ? n - 8 : 0, done = n >= 8 ? 8 - (n - j) : 0;
            for (int64_t l = done; first + l < n && l < 8; l++)
                e[first + l] = lanes[l];
        }
    }
    return psm_hsum_pd_avx2(acc);
}

static PSM_AVX2 double psm_block_total_avx2(const float *x, int64_t n, float shift)
{
    return psm_exp_sum_avx2(x, n, shift, NULL, 0);
}

/* psm_block_total_avx2 where every x_j - shift is in [-87, 87] or NaN, as
 * the caller has checked (row.h's row_pass). */
static PSM_AVX2 double psm_block_total_near_avx2(const float *x, int64_t n, float shift)
{
    return psm_exp_sum_avx2(x, n, shift, NULL, 1);
}

/* Adds the sum of exp(x_j - m) over x_j != m to *rest and the count of
 * x_j == m to *ties, in the same order as psm_block_total_avx2: the stable
 * method's sum without the max's own terms, exact however small.  With
 * near, as psm_exp_sum_avx2's. */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_block_sums_in_avx2(const float *x, int64_t n,
                                                             float m, double *rest,
                                                             double *ties, int near)
{
    const __m256 mv = _mm256_set1_ps(m);
    __m256d acc = _mm256_setzero_pd();
    __m256i tie_count = _mm256_setzero_si256();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        _mm_prefetch((const char *)(x + j + PSM_BLOCK), _MM_HINT_T0);
        _mm_prefetch((const char *)(x + j + PSM_BLOCK + 16), _MM_HINT_T0);
        __m256 e0 = psm_term_avx2(_mm256_loadu_ps(x + j), mv, &tie_count, near);
        __m256 e1 = psm_term_avx2(_mm256_loadu_ps(x + j + 8), mv, &tie_count, near);
        __m256 e2 = psm_term_avx2(_mm256_loadu_ps(x + j + 16), mv, &tie_count, near);
        __m256 e3 = psm_term_avx2(_mm256_loadu_ps(x + j + 24), mv, &tie_count, near);
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(_mm256_add_ps(e0, e1),
                                                   _mm256_add_ps(e2, e3)));
    }
    for (; j + 8 <= n; j += 8)
        acc = psm_add_wide_avx2(acc, psm_term_avx2(_mm256_loadu_ps(x + j), mv, &tie_count,
                                                   near));
    if (j < n) {
        __m256 valid;
        __m256 v = psm_load_tail_avx2(x, n, j, m, &valid);
        __m256 tie = _mm256_and_ps(_mm256_cmp_ps(v, mv, _CMP_EQ_OQ), valid);
        tie_count = _mm256_sub_epi32(tie_count, _mm256_castps_si256(tie));
        __m256 e = _mm256_andnot_ps(tie, psm_shifted_exp_avx2(v, mv, near));
        acc = psm_add_wide_avx2(acc, _mm256_and_ps(valid, e));
    }
    *rest += psm_hsum_pd_avx2(acc);
    *ties += psm_hsum_epi32_avx2(tie_count);
}

static PSM_AVX2 void psm_block_sums_avx2(const float *x, int64_t n, float m, double *rest,
                                         double *ties)
{
    psm_block_sums_in_avx2(x, n, m, rest, ties, 0);
}

/* psm_block_sums_avx2 where every x_j - m is in [-87, 87] or NaN, as the
 * caller has checked (row.h's row_pass). */
static PSM_AVX2 void psm_block_sums_near_avx2(const float *x, int64_t n, float m,
                                              double *rest, double *ties)
{
    psm_block_sums_in_avx2(x, n, m, rest, ties, 1);
}

/* psm_block_sums_avx2 on exps already computed: e_j = exp(x_j - m), as
 * psm_exp_store_sum_avx2 stored them, summed over x_j != m in the same order
 * (so with the same bits), the x_j == m counted into *ties. */
static PSM_AVX2 void psm_stored_sums_avx2(const float *x, const float *e, int64_t n,
                                          float m, double *rest, double *ties)
{
    const __m256 mv = _mm256_set1_ps(m);
    __m256d acc = _mm256_setzero_pd();
    __m256i tie_count = _mm256_setzero_si256();
    int64_t j = 0;
#define PSM_STORED_TERM(k)                                                          \
    _mm256_andnot_ps(psm_tie_avx2(_mm256_loadu_ps(x + j + (k)), mv, &tie_count),    \
                     _mm256_loadu_ps(e + j + (k)))
    for (; j + 32 <= n; j += 32)
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(_mm256_add_ps(PSM_STORED_TERM(0),
                                                                 PSM_STORED_TERM(8)),
                                                   _mm256_add_ps(PSM_STORED_TERM(16),
                                                                 PSM_STORED_TERM(24))));
    for (; j + 8 <= n; j += 8)
        acc = psm_add_wide_avx2(acc, PSM_STORED_TERM(0));
#undef PSM_STORED_TERM
    if (j < n) {
        __m256 valid, unused;
        __m256 v = psm_load_tail_avx2(x, n, j, m, &valid);
        __m256 ev = psm_load_tail_avx2(e, n, j, 0.0f, &unused);
        __m256 tie = _mm256_and_ps(_mm256_cmp_ps(v, mv, _CMP_EQ_OQ), valid);
        tie_count = _mm256_sub_epi32(tie_count, _mm256_castps_si256(tie));
        acc = psm_add_wide_avx2(acc, _mm256_and_ps(valid, _mm256_andnot_ps(tie, ev)));
    }
    *rest += psm_hsum_pd_avx2(acc);
    *ties += psm_hsum_epi32_avx2(tie_count);
}

/* One exp per element: e_j = exp(x_j - shift) stored to e, and their sum
 * in psm_block_total_avx2's order (psm_exp_sum_avx2).  Twin: exp_store_sum
 * in row.h. */
static PSM_AVX2 double psm_exp_store_sum_avx2(const float *x, int64_t n, float shift,
                                              float *e)
{
    return psm_exp_sum_avx2(x, n, shift, e, 0);
}

/* psm_exp_store_sum_avx2 where every x_j - shift is in [-87, 87] or NaN,
 * as the caller has checked (row.h's near_exps). */
static PSM_AVX2 double psm_exp_store_sum_near_avx2(const float *x, int64_t n, float shift,
                                                   float *e)
{
    return psm_exp_sum_avx2(x, n, shift, e, 1);
}

/* g_j = ((g_j / divisor) * factor) * scale with divide, else g_j * factor,
 * in place: the scaling of exps already stored.  Each element is rounded as
 * the scalar loop of scale_row (row.h) rounds it, so both give the same
 * bits. */
static PSM_AVX2 void psm_scale_row_avx2(float *g, int64_t n, int divide, float divisor,
                                        float factor, float scale)
{
    const __m256 dv = _mm256_set1_ps(divisor), fv = _mm256_set1_ps(factor);
    const __m256 cv = _mm256_set1_ps(scale);
    int64_t j = 0;
    if (divide)
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(g + j, _mm256_mul_ps(_mm256_mul_ps(
                                        _mm256_div_ps(_mm256_loadu_ps(g + j), dv), fv), cv));
    else
        for (; j + 8 <= n; j += 8)
            _mm256_storeu_ps(g + j, _mm256_mul_ps(_mm256_loadu_ps(g + j), fv));
    for (; j < n; j++)
        g[j] = divide ? ((g[j] / divisor) * factor) * scale : g[j] * factor;
}

/* sum_j q_j (m - x_j), q_j = smooth w_j (w NULL: all 1), over the x_j with
 * q_j != 0 and x_j != -inf, in double: lane l of 8 takes j = 8 g + l, the
 * lanes are combined as ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)),
 * and the last n % 8 are added in index order.  Each term is scaled before
 * it is summed, so that double logits near DBL_MAX sum no larger than the
 * cross term itself.  *neg_inf is set where some q_j != 0 has x_j = -inf.
 * Twin: smoothed_gaps in row.h. */
static PSM_AVX2 double psm_smoothed_gaps_avx2(const float *x, int64_t n, float m,
                                              double smooth, const double *w,
                                              int *neg_inf)
{
    const __m256d md = _mm256_set1_pd((double)m), sv = _mm256_set1_pd(smooth);
    __m256d lo = _mm256_setzero_pd(), hi = lo;
    int found = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        found |= psm_smoothed_gap_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), md, sv,
                                     w ? w + j : NULL, &lo);
        found |= psm_smoothed_gap_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), md, sv,
                                     w ? w + j + 4 : NULL, &hi);
    }
    double total = psm_hsum_pd_avx2(_mm256_add_pd(lo, hi));
    for (; j < n; j++) {
        double q = smooth * (w ? w[j] : 1.0);
        if (q == 0.0)
            continue;
        if (x[j] == -INFINITY)
            found = 1;
        else
            total += q * ((double)m - (double)x[j]);
    }
    if (found)
        *neg_inf = 1;
    return total;
}

/* g_j = (mass (e_j / denom) - smooth w_j) scale in double, rounded to float,
 * in place over the stored e_j (w NULL: all 1): label smoothing's gradient
 * but for the label's own entry.  Elementwise, so the twin's loop
 * (smoothed_grad in row.h) gives the same bits. */
static PSM_AVX2 void psm_smoothed_grad_avx2(float *g, int64_t n, const double *w,
                                            double mass, double denom, double smooth,
                                            double scale)
{
    const __m256d mv = _mm256_set1_pd(mass), dv = _mm256_set1_pd(denom);
    const __m256d sv = _mm256_set1_pd(smooth), cv = _mm256_set1_pd(scale);
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm_storeu_ps(g + j, _mm256_cvtpd_ps(psm_smoothed_grad_pd(
                                 _mm256_cvtps_pd(_mm_loadu_ps(g + j)), mv, dv, sv,
                                 w ? w + j : NULL, cv)));
    for (; j < n; j++)
        g[j] = (float)((mass * ((double)g[j] / denom) - smooth * (w ? w[j] : 1.0)) * scale);
}

/* log-softmax of a row: y_j = (x_j - m) - log_norm in double, rounded to
 * float, as the portable loop of log_softmax_row (row.h). */
static PSM_AVX2 void psm_log_softmax_row_avx2(const float *x, int64_t n, float m,
                                              double log_norm, float *y)
{
    const __m256d mv = _mm256_set1_pd((double)m), lv = _mm256_set1_pd(log_norm);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        lo = _mm256_sub_pd(_mm256_sub_pd(lo, mv), lv);
        hi = _mm256_sub_pd(_mm256_sub_pd(hi, mv), lv);
        _mm256_storeu_ps(y + j, _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)));
    }
    for (; j < n; j++)
        y[j] = (float)(((double)x[j] - (double)m) - log_norm);
}

/* g_j = exp(x_j - shift) * factor, or with divide: ((exp(x_j - shift) /
 * divisor) * factor) * scale, the float operations of the portable loop in
 * the same order, so both give the same bits. */
static PSM_AVX2 void psm_grad_row_avx2(const float *x, int64_t n, float shift,
                                       int divide, float divisor, float factor,
                                       float scale, float *g)
{
    const __m256 sv = _mm256_set1_ps(shift), dv = _mm256_set1_ps(divisor);
    const __m256 fv = _mm256_set1_ps(factor), cv = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 e = psm_expf_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), sv));
        __m256 v = divide ? _mm256_mul_ps(_mm256_mul_ps(_mm256_div_ps(e, dv), fv), cv)
                          : _mm256_mul_ps(e, fv);
        _mm256_storeu_ps(g + j, v);
    }
    for (; j < n; j++) {
        float e = psm_expf(x[j] - shift);
        g[j] = divide ? ((e / divisor) * factor) * scale : e * factor;
    }
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_AVX2_H */
