/*
 * The double lanes the kernel's loops share: the accumulation every float
 * sum uses (a group of 8 float terms joins 4 double lanes,
 * psm_add_wide_avx2, read out at the end by psm_hsum_pd_avx2; rows_avx2.h's
 * loops and testing.c's exp+sum probe use both, so that the probe sums as
 * the loss does), and label smoothing's steps on 4 doubles, which the float
 * loops (rows_avx2.h) and the double ones (rows_avx2_f64.h) take alike once
 * their values are in double lanes.
 */
#ifndef PYSAFEMAX_LANES_AVX2_H
#define PYSAFEMAX_LANES_AVX2_H

#include "internal.h"   /* PSM_HAVE_AVX2, PSM_AVX2 */

#ifdef PSM_HAVE_AVX2
#include <immintrin.h>

static inline PSM_AVX2 double psm_hsum_pd_avx2(__m256d v)
{
    __m128d a = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(a, _mm_unpackhi_pd(a, a)));
}

/* acc[k] += s[k], then s[k + 4]: one vector's lanes joining 4 double lanes */
static inline PSM_AVX2 __m256d psm_add_wide_avx2(__m256d acc, __m256 s)
{
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
}

/* One step of smoothed_gaps (row.h) on 4 lanes: q (m - x), q = smooth w
 * (w NULL: all smooth), added to *acc where q != 0 and x != -inf; returns
 * the bits of the lanes with q != 0 and x = -inf. */
static inline PSM_AVX2 int psm_smoothed_gap_pd(__m256d x, __m256d m, __m256d smooth,
                                               const double *w, __m256d *acc)
{
    const __m256d zero = _mm256_setzero_pd();
    __m256d q = w ? _mm256_mul_pd(smooth, _mm256_loadu_pd(w)) : smooth;
    __m256d d = _mm256_mul_pd(q, _mm256_sub_pd(m, x));
    __m256d neg_inf = _mm256_cmp_pd(x, _mm256_set1_pd(-INFINITY), _CMP_EQ_OQ);
    __m256d skip = _mm256_cmp_pd(q, zero, _CMP_EQ_OQ);
    *acc = _mm256_add_pd(*acc, _mm256_andnot_pd(_mm256_or_pd(skip, neg_inf), d));
    return _mm256_movemask_pd(_mm256_andnot_pd(skip, neg_inf));
}

/* One step of smoothed_grad (row.h) on 4 lanes: (mass (e / denom) - q)
 * scale, q = smooth w (w NULL: all smooth). */
static inline PSM_AVX2 __m256d psm_smoothed_grad_pd(__m256d e, __m256d mass, __m256d denom,
                                                    __m256d smooth, const double *w,
                                                    __m256d scale)
{
    __m256d q = w ? _mm256_mul_pd(smooth, _mm256_loadu_pd(w)) : smooth;
    return _mm256_mul_pd(_mm256_sub_pd(_mm256_mul_pd(mass, _mm256_div_pd(e, denom)), q),
                         scale);
}

#endif /* PSM_HAVE_AVX2 */

#endif /* PYSAFEMAX_LANES_AVX2_H */
