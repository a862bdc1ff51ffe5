/*
 * The softmax, log-softmax and loss gradient of 8 rows of at most
 * PSM_SMALL_CLASSES contiguous floats, written out.  rows_small_avx2.h leaves the rows' exps a
 * class per vector (row r in lane r): each such column is scaled by its
 * rows' factors in one operation, and 8 x 8 transposes put the rows back,
 * so that 8 rows cost a few vector stores rather than 8 n scalar ones or 8
 * passes of scale_row, whose per-row tail dominates a row of ten floats.
 *
 * Elementwise: every y_j is rounded as scale_row or log_softmax_row (row.h)
 * rounds it alone, so the portable twins of this file are those loops, and
 * a row's bits do not depend on the batch it lands in.  The stable loss and
 * gradient of such rows (psm_small_stable_grads_avx2) also finishes each
 * row four to a vector, as exp_state, grad_factors, label_grad and
 * one_hot_loss (row.h, its twins) finish it alone.
 */
#ifndef PYSAFEMAX_ROWS_SMALL_OUT_AVX2_H
#define PYSAFEMAX_ROWS_SMALL_OUT_AVX2_H

#include <float.h>
#include <string.h>

#include "internal.h"   /* PSM_SMALL_CLASSES, PSM_FINISH_ROWS */
#include "rows_small_avx2.h"   /* psm_transpose8_avx2 */

#ifdef PSM_HAVE_AVX2

/* 8 rows of n <= PSM_SMALL_CLASSES floats, row r at y + r n, from their
 * columns: y[r n + j] = col[j] lane r. */
static inline PSM_AVX2 void psm_small_store_rows_avx2(const __m256 *col, int n, float *y)
{
    __m256 t[8];
    if (n < 8) {
        /* the rows, 8n contiguous floats, through a buffer: each row's
         * store spills into the next row's place, which that row's store
         * then overwrites, and nothing is written past y's 8n floats */
        float rows[7 * 7 + 8];
        for (int j = 0; j < 8; j++)
            t[j] = _mm256_setzero_ps();
        for (int j = 0; j < n; j++)
            t[j] = col[j];
        psm_transpose8_avx2(t);
        for (int r = 0; r < 8; r++)
            _mm256_storeu_ps(rows + r * n, t[r]);
        memcpy(y, rows, sizeof(float) * 8 * (size_t)n);
        return;
    }
    /* classes 0-7, then the last 8 (8-15 for n = 16; 2-9 for n = 10, the
     * same values written twice) */
    for (int g = 0; g < n; g += 8) {
        int first = g + 8 <= n ? g : n - 8;
        for (int j = 0; j < 8; j++)
            t[j] = col[first + j];
        psm_transpose8_avx2(t);
        for (int r = 0; r < 8; r++)
            _mm256_storeu_ps(y + r * n + first, t[r]);
    }
}

/* 8 rows scaled as scale_row scales each (a softmax, or a gradient), from
 * their exps e_j of row r at e[j * 8 + r] (psm_small_exps_avx2): with
 * divide y_j = ((e_j / divisor[r]) * factor[r]) * scale[r], else y_j = e_j *
 * factor[r], into row r at y + r n. */
static PSM_AVX2 void psm_small_scale_rows_avx2(const float *e, int n, int divide,
                                               const float divisor[8], const float factor[8],
                                               const float scale[8], float *y)
{
    __m256 col[PSM_SMALL_CLASSES];
    const __m256 d = _mm256_loadu_ps(divisor), f = _mm256_loadu_ps(factor);
    const __m256 c = _mm256_loadu_ps(scale);
    for (int j = 0; j < n; j++) {
        __m256 v = _mm256_loadu_ps(e + 8 * j);
        col[j] = divide ? _mm256_mul_ps(_mm256_mul_ps(_mm256_div_ps(v, d), f), c)
                        : _mm256_mul_ps(v, f);
    }
    psm_small_store_rows_avx2(col, n, y);
}

/* small_softmax_rows' (row.h) factors of 8 stable rows from their maxima
 * and sums of every exp: by[r] = 1 / sum[r] rounded to float, four rows a
 * vector (the same double division, so the same bits); returns the bits of
 * the rows with no softmax (a max that is not finite, or a NaN sum).  Row by
 * row, those tests and divisions took a sixth of a softmax row of ten
 * floats (callgrind, (65536, 10)). */
static PSM_AVX2 unsigned psm_small_softmax_factors_avx2(const float max[8],
                                                        const double sum[8], float by[8])
{
    unsigned none = 0;
    for (int h = 0; h < 8; h += 4) {
        __m256d s = _mm256_loadu_pd(sum + h);
        _mm_storeu_ps(by + h, _mm256_cvtpd_ps(_mm256_div_pd(_mm256_set1_pd(1.0), s)));
        __m256d softmax = _mm256_andnot_pd(_mm256_cmp_pd(s, s, _CMP_UNORD_Q),
                                           psm_finite4_avx2(_mm256_cvtps_pd(
                                               _mm_loadu_ps(max + h))));
        none |= (~(unsigned)_mm256_movemask_pd(softmax) & 0xFu) << h;
    }
    return none;
}

/* The stable losses and gradients of `rows` rows (8 or PSM_FINISH_ROWS) of
 * n <= PSM_SMALL_CLASSES floats, row r at x + r n, whose labels y[r] are
 * plain (in [0, n), a share of 1, no z-loss), the gradient scaled by
 * `scale` into row r at grad + r n: row.h's exp_state, grad_factors,
 * label_grad and one_hot_loss of each row, four rows a vector in double,
 * the same operations in the same order and so the same bits, after every
 * row's exps.  Row by row those took more instructions than the rows' exps
 * (callgrind, (65536, 10): 100 of 267 a row). */
static PSM_ALWAYS_INLINE PSM_AVX2 void psm_small_stable_grads_n_avx2(const float *x, int n,
                                                                    int rows,
                                                                    const int64_t *y,
                                                                    double scale,
                                                                    float *grad, double *loss)
{
    /* the exps of rows b to b + 7, e_j of row b + r at e[8 b n + 8 j + r] */
    float e[PSM_FINISH_ROWS * PSM_SMALL_CLASSES];
    float max[PSM_FINISH_ROWS], x_y[PSM_FINISH_ROWS], factor[PSM_FINISH_ROWS];
    float label_grad[PSM_FINISH_ROWS];
    double sum[PSM_FINISH_ROWS], rest[PSM_FINISH_ROWS], ties[PSM_FINISH_ROWS];
    double s[PSM_FINISH_ROWS];
    for (int b = 0; b < rows; b += 8)
        psm_small_exps_avx2(x + b * n, n, PSM_STABLE, FLT_MAX, e + b * n, max + b, sum + b,
                            rest + b, ties + b);
    float e_y[PSM_FINISH_ROWS];
    for (int r = 0; r < rows; r++) {
        x_y[r] = x[r * n + y[r]];
        e_y[r] = e[(r & ~7) * n + y[r] * 8 + (r & 7)];
    }
    const __m256d one = _mm256_set1_pd(1.0), scale_v = _mm256_set1_pd(scale);
    unsigned no_softmax = 0;
    for (int h = 0; h < rows; h += 4) {
        __m256d m = _mm256_cvtps_pd(_mm_loadu_ps(max + h));
        __m256d finite = psm_finite4_avx2(m);
        /* exp_state: the sum of every exp less the max's own 1, or the
         * exact sums where a finite max leaves less than 1 */
        __m256d one_rest = _mm256_sub_pd(_mm256_loadu_pd(sum + h), one);
        __m256d exact = _mm256_and_pd(finite, _mm256_cmp_pd(one_rest, one, _CMP_LT_OQ));
        __m256d rest_h = _mm256_blendv_pd(one_rest, _mm256_loadu_pd(rest + h), exact);
        __m256d ties_h = _mm256_blendv_pd(one, _mm256_loadu_pd(ties + h), exact);
        __m256d s_h = psm_stable_rest4_avx2(rest_h, ties_h, finite);
        _mm256_storeu_pd(s + h, s_h);
        no_softmax |= (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(s_h, s_h, _CMP_UNORD_Q)) << h;
        /* grad_factors: (p_mass scale) / (1 + s), p_mass 1 */
        __m256d denom = _mm256_add_pd(one, s_h);
        _mm_storeu_ps(factor + h, _mm256_cvtpd_ps(_mm256_div_pd(scale_v, denom)));
        /* label_grad: p_mass (e_y / denom) - 1, or where y is the max,
         * -(s / denom) for s < 1 (the max is unique) and 1 / denom - 1 */
        __m256d g = _mm256_sub_pd(_mm256_div_pd(_mm256_cvtps_pd(_mm_loadu_ps(e_y + h)), denom),
                                  one);
        __m256d g_top = _mm256_blendv_pd(
            _mm256_sub_pd(_mm256_div_pd(one, denom), one),
            _mm256_mul_pd(_mm256_set1_pd(-1.0), _mm256_div_pd(s_h, denom)),
            _mm256_cmp_pd(s_h, one, _CMP_LT_OQ));
        __m256d top = _mm256_cmp_pd(_mm256_cvtps_pd(_mm_loadu_ps(x_y + h)), m, _CMP_EQ_OQ);
        g = _mm256_blendv_pd(g, g_top, top);
        _mm_storeu_ps(label_grad + h, _mm256_cvtpd_ps(_mm256_mul_pd(g, scale_v)));
    }
    for (int b = 0; b < rows; b += 8)
        psm_small_scale_rows_avx2(e + b * n, n, 0, factor + b, factor + b, factor + b,
                                  grad + b * n);
    for (int r = 0; r < rows; r++) {
        float *g = grad + r * n;
        if (no_softmax >> r & 1)
            for (int j = 0; j < n; j++)
                g[j] = NAN;
        else
            g[y[r]] = label_grad[r];
    }
    psm_log1p_avx2(s, rows);   /* log_norm */
    psm_small_one_hot_losses_avx2(max, x_y, s, rows, loss);
}

/* psm_small_stable_grads_n_avx2, a copy for each row count (as
 * psm_small_stable_losses_avx2). */
static PSM_AVX2 void psm_small_stable_grads_avx2(const float *x, int n, int rows,
                                                 const int64_t *y, double scale, float *grad,
                                                 double *loss)
{
    if (rows == PSM_FINISH_ROWS)
        psm_small_stable_grads_n_avx2(x, n, PSM_FINISH_ROWS, y, scale, grad, loss);
    else
        psm_small_stable_grads_n_avx2(x, n, 8, y, scale, grad, loss);
}

/* 8 floats of a log-softmax: (x_j - m) - log_norm in double, rounded. */
static inline PSM_AVX2 __m256 psm_small_log_softmax8_avx2(__m256 v, __m256d m, __m256d l)
{
    __m256d lo = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m), l);
    __m256d hi = _mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m),
                               l);
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

/* 4 floats of a log-softmax, as psm_small_log_softmax8_avx2. */
static inline PSM_AVX2 __m128 psm_small_log_softmax4_avx2(__m128 v, __m256d m, __m256d l)
{
    return _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_sub_pd(_mm256_cvtps_pd(v), m), l));
}

/* The log-softmax of 8 rows of n <= PSM_SMALL_CLASSES floats, row r at
 * x + r n, into y alike, from their maxima and log_norms: row by row, its
 * first 8 floats, then its last 4 (n % 8 <= 4) or 8, overlapping those
 * (n < 16), both read before either is written, so that y may be x.  Rows
 * shorter than 8 go through buffers, as psm_small_store_rows_avx2 writes
 * them. */
static PSM_AVX2 void psm_small_log_softmax_avx2(const float *x, int n, const float max[8],
                                                const double log_norm[8], float *y)
{
    if (n < 8) {
        float in[7 * 7 + 8] = {0}, out[7 * 7 + 8];
        memcpy(in, x, sizeof(float) * 8 * (size_t)n);
        for (int r = 0; r < 8; r++)
            _mm256_storeu_ps(out + r * n,
                             psm_small_log_softmax8_avx2(_mm256_loadu_ps(in + r * n),
                                                         _mm256_set1_pd((double)max[r]),
                                                         _mm256_set1_pd(log_norm[r])));
        memcpy(y, out, sizeof(float) * 8 * (size_t)n);
        return;
    }
    int tail4 = n % 8 != 0 && n % 8 <= 4;   /* the last n % 8 fit in 4 lanes */
    for (int r = 0; r < 8; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        const __m256d m = _mm256_set1_pd((double)max[r]), l = _mm256_set1_pd(log_norm[r]);
        __m256 first = _mm256_loadu_ps(xr);
        if (tail4) {
            __m128 last = _mm_loadu_ps(xr + n - 4);
            _mm256_storeu_ps(yr, psm_small_log_softmax8_avx2(first, m, l));
            _mm_storeu_ps(yr + n - 4, psm_small_log_softmax4_avx2(last, m, l));
        } else {
            __m256 last = _mm256_loadu_ps(xr + n - 8);
            _mm256_storeu_ps(yr, psm_small_log_softmax8_avx2(first, m, l));
            _mm256_storeu_ps(yr + n - 8, psm_small_log_softmax8_avx2(last, m, l));
        }
    }
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_SMALL_OUT_AVX2_H */
