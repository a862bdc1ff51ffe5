/*
 * The double accumulation every float sum of the kernel shares: a group of 8
 * float terms joins 4 double lanes (psm_add_wide_avx2), which are read out
 * at the end (psm_hsum_pd_avx2).  rows_avx2.h's loops and testing.c's
 * exp+sum probe use both, so that the probe sums as the loss does.
 */
#ifndef PYSAFEMAX_LANES_AVX2_H
#define PYSAFEMAX_LANES_AVX2_H

#include "exp_f32.h"    /* immintrin.h, PSM_AVX2 */

#ifdef PSM_HAVE_AVX2

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

#endif /* PSM_HAVE_AVX2 */

#endif /* PYSAFEMAX_LANES_AVX2_H */
