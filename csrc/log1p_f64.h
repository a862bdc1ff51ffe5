/*
 * log1p for double on s >= 0, as a scalar function and a 4-lane AVX2 twin
 * that give bit-identical results (the same additions, multiplications and
 * divisions in the same order; no fma, and the build's -ffp-contract=off
 * keeps the compiler from fusing any): the stable method's log(1 + s), the
 * log of a softmax denominator over exp(max), taken for eight or sixteen
 * rows at once by the rows of few classes (rows_small_avx2.h, PSM_FINISH_ROWS)
 * and one at a time elsewhere, with the same bits.
 *
 * fdlibm's log1p (Sun Microsystems, 1993), branch-free for s >= 0:
 *   u = 1 + s rounded, c = its rounding error (exact: Fast2Sum, larger
 *   operand first), u = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)),
 *   log1p(s) = k ln2 + log(1 + f) + c / u,
 *   log(1 + f) = f - hfsq + r (hfsq + R(r^2)), hfsq = f^2 / 2, r = f / (2 + f),
 * with R fdlibm's degree-7 polynomial in r^2 (error < 2^-58.45 on its
 * range) and ln2 split hi + lo so that k ln2_hi is exact.
 *
 * ULP error: at most 0.840 (worst input 0x1.9c4827e930e03p-2 = 0.40262),
 * over 2^26 inputs log-uniform in [2^-60, 2^40], 2^24 uniform in [0, 4],
 * every power of two in [2^-1074, 2^1000] and its neighbours, against long
 * double log1pl; the scalar and AVX2 versions agree bit for bit on all of
 * them (bench/check_log1p_ulp.py).  glibc's log1p is closer (under 0.6),
 * but its branches cost a row of ten classes a third of its time.
 * Beyond [0, 2^1000] (NaN, +inf, a negative s, which the kernel never
 * passes) both return the C library's log1p.
 */
#ifndef PYSAFEMAX_LOG1P_F64_H
#define PYSAFEMAX_LOG1P_F64_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"   /* PSM_HAVE_AVX2, PSM_AVX2 */

#define PSM_LOG1P_MAX 0x1p1000               /* the fast path's domain: [0, this] */
#define PSM_LN2_HI 0x1.62e42fee00000p-1      /* ln2, its low 32 bits zero */
#define PSM_LN2_LO 0x1.a39ef35793c76p-33     /* ln2 - PSM_LN2_HI */
#define PSM_SQRT_HALF_BITS 0x3fe6a09e00000000LL   /* ~sqrt(1/2): 1 + f >= it */
#define PSM_LP1 0x1.5555555555593p-1
#define PSM_LP2 0x1.999999997fa04p-2
#define PSM_LP3 0x1.2492494229359p-2
#define PSM_LP4 0x1.c71c51d8e78afp-3
#define PSM_LP5 0x1.7466496cb03dep-3
#define PSM_LP6 0x1.39a09d078c69fp-3
#define PSM_LP7 0x1.2f112df3e5244p-3

/* log1p(s) for s in [0, PSM_LOG1P_MAX]. */
static inline double psm_log1p_core(double s)
{
    double u = 1.0 + s;
    double c = s > 1.0 ? 1.0 - (u - s) : s - (u - 1.0);
    int64_t bits;
    memcpy(&bits, &u, sizeof bits);
    int64_t k = (bits - PSM_SQRT_HALF_BITS) >> 52;   /* u >= 1: k >= 0 */
    int64_t f_bits = bits - (k << 52);
    double one_f;
    memcpy(&one_f, &f_bits, sizeof one_f);
    double f = one_f - 1.0, kd = (double)k;
    double hfsq = (0.5 * f) * f;
    double r = f / (2.0 + f), z = r * r;
    double poly = z * (PSM_LP1 + z * (PSM_LP2 + z * (PSM_LP3 + z * (PSM_LP4 +
                  z * (PSM_LP5 + z * (PSM_LP6 + z * PSM_LP7))))));
    return kd * PSM_LN2_HI - ((hfsq - (r * (hfsq + poly) + (kd * PSM_LN2_LO + c / u))) - f);
}

static inline double psm_log1p(double s)
{
    if (!(s >= 0.0 && s <= PSM_LOG1P_MAX))   /* cold: NaN, inf, negative */
        return log1p(s);
    return psm_log1p_core(s);
}

#ifdef PSM_HAVE_AVX2
#include <immintrin.h>

/* psm_log1p_core on 4 lanes. */
static inline PSM_AVX2 __m256d psm_log1p_core_avx2(__m256d s)
{
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d u = _mm256_add_pd(one, s);
    __m256d c = _mm256_blendv_pd(_mm256_sub_pd(s, _mm256_sub_pd(u, one)),
                                 _mm256_sub_pd(one, _mm256_sub_pd(u, s)),
                                 _mm256_cmp_pd(s, one, _CMP_GT_OQ));
    __m256i bits = _mm256_castpd_si256(u);
    /* k >= 0, so the logical shift is the arithmetic one */
    __m256i k = _mm256_srli_epi64(
        _mm256_sub_epi64(bits, _mm256_set1_epi64x(PSM_SQRT_HALF_BITS)), 52);
    __m256d one_f = _mm256_castsi256_pd(_mm256_sub_epi64(bits, _mm256_slli_epi64(k, 52)));
    /* k (< 2^11) as a double: the bits of 2^52 + k, less 2^52, exactly */
    const __m256d two52 = _mm256_set1_pd(0x1p52);
    __m256d kd = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_or_si256(k, _mm256_castpd_si256(two52))), two52);
    __m256d f = _mm256_sub_pd(one_f, one);
    __m256d hfsq = _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(0.5), f), f);
    __m256d r = _mm256_div_pd(f, _mm256_add_pd(_mm256_set1_pd(2.0), f));
    __m256d z = _mm256_mul_pd(r, r);
    __m256d poly = _mm256_set1_pd(PSM_LP7);
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP6), _mm256_mul_pd(z, poly));
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP5), _mm256_mul_pd(z, poly));
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP4), _mm256_mul_pd(z, poly));
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP3), _mm256_mul_pd(z, poly));
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP2), _mm256_mul_pd(z, poly));
    poly = _mm256_add_pd(_mm256_set1_pd(PSM_LP1), _mm256_mul_pd(z, poly));
    poly = _mm256_mul_pd(z, poly);
    __m256d tail = _mm256_add_pd(_mm256_mul_pd(kd, _mm256_set1_pd(PSM_LN2_LO)),
                                 _mm256_div_pd(c, u));
    __m256d inner = _mm256_add_pd(_mm256_mul_pd(r, _mm256_add_pd(hfsq, poly)), tail);
    return _mm256_sub_pd(_mm256_mul_pd(kd, _mm256_set1_pd(PSM_LN2_HI)),
                         _mm256_sub_pd(_mm256_sub_pd(hfsq, inner), f));
}

/* psm_log1p of count doubles (a multiple of 4), in place: every lane's
 * range checked first, then the vectors' cores, which depend on none of
 * each other, so that their chains (two divisions and a seven-step
 * polynomial each) overlap (see PSM_FINISH_ROWS). */
static inline PSM_AVX2 void psm_log1p_avx2(double *s, int count)
{
    __m256d in = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
    for (int h = 0; h < count; h += 4) {
        __m256d v = _mm256_loadu_pd(s + h);
        in = _mm256_and_pd(in, _mm256_and_pd(
                                   _mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_GE_OQ),
                                   _mm256_cmp_pd(v, _mm256_set1_pd(PSM_LOG1P_MAX), _CMP_LE_OQ)));
    }
    if (__builtin_expect(_mm256_movemask_pd(in) != 0xF, 0)) {
        for (int l = 0; l < count; l++)
            s[l] = psm_log1p(s[l]);
        return;
    }
    for (int h = 0; h < count; h += 4)
        _mm256_storeu_pd(s + h, psm_log1p_core_avx2(_mm256_loadu_pd(s + h)));
}
#endif

#endif /* PYSAFEMAX_LOG1P_F64_H */
