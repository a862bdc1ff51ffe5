/*
 * exp for float, as a scalar function and an 8-lane AVX2+FMA twin that give
 * bit-identical results: the kernel's vector loops use one and their scalar
 * tails and portable paths the other, so every method and path sees the
 * same exp.
 *
 * exp(x) = 2^e 2^(j/8) exp(r),  k = round(8 x / ln2) = 8 e + j,
 *          r = x - k ln2/8 in [-ln2/16, ln2/16]
 * exp(r) ~= 1 + q,  q = r + r^2 (1/2 + r/6 + r^2/24)   (truncation < 0.02 ULP)
 * 2^(j/8) comes from an 8-entry table held as hi + lo floats (a register
 * permute in AVX2), and the result is T_hi + (T_hi q + T_lo), rounded once at
 * the end.  For |x| <= 87 the result is normal and 2^e is added to its
 * exponent bits; beyond (and for NaN) a cold path clamps x to [-104, 89]
 * (exp is 0 below and inf above; NaN passes) and applies 2^e as
 * 2^(e/2) 2^(e - e/2), so overflow gives inf and a subnormal result is
 * rounded once.
 *
 * ULP error: at most 0.603 for every float x in [-104, 89] whose exp is a
 * normal float (worst input 0x1.4ca93ap-1 = 0.6497286); subnormal results
 * are within 0.763 of a subnormal step; inf, 0 and NaN are exact, and the
 * scalar and AVX2 versions agree bit for bit.  Measured over all 2^31 such
 * inputs by bench/check_exp_ulp.py.  Both assume the C library's fmaf
 * rounds once, as C99 requires: glibc's does, and UCRT's as wine has it
 * (Microsoft's is not checked here); mingw-w64 10's msvcrt build's does
 * not, and there the scalar results differ from the AVX2 ones
 * (.ci/cross.sh links UCRT).
 */
#ifndef PYSAFEMAX_EXP_F32_H
#define PYSAFEMAX_EXP_F32_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"   /* PSM_HAVE_AVX2, PSM_AVX2 */

#define PSM_EXP_MIN_ARG -104.0f          /* exp below rounds to 0 */
#define PSM_EXP_MAX_ARG 89.0f            /* exp above is inf (ln FLT_MAX ~= 88.72) */
#define PSM_EXP_FAST_LIMIT 87.0f         /* below it 2^e y is a normal float */
#define PSM_8_OVER_LN2 0x1.715476p3f
#define PSM_LN2_8_HI 0x1.62e43p-4f       /* ln2/8 rounded to float */
#define PSM_LN2_8_LO -0x1.05c610p-32f    /* ln2/8 - PSM_LN2_8_HI */
#define PSM_SHIFTER 0x1.8p23f            /* adding it rounds to an integer */

/* 2^(j/8) = PSM_EXP_TABLE_HI[j] + PSM_EXP_TABLE_LO[j] to about 2^-48 */
#define PSM_EXP_TABLE_HI                                                    \
    0x1p+0f, 0x1.172b84p+0f, 0x1.306fe0p+0f, 0x1.4bfdaep+0f,                \
    0x1.6a09e6p+0f, 0x1.8ace54p+0f, 0x1.ae89fap+0f, 0x1.d5818ep+0f
#define PSM_EXP_TABLE_LO                                                    \
    0.0f, -0x1.c15742p-27f, 0x1.4636e2p-25f, -0x1.593abcp-25f,              \
    0x1.9fcef4p-26f, 0x1.15506ep-27f, -0x1.a94b14p-26f, -0x1.822dbcp-27f

static inline float psm_pow2i(int32_t e) /* 2^e for e in [-126, 127] */
{
    uint32_t bits = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* 2^(j/8) exp(r), and e, for x = (8 e + j) ln2/8 + r; |x| <= 104. */
static inline float psm_expf_core(float x, int32_t *e)
{
    static const float table_hi[8] = {PSM_EXP_TABLE_HI};
    static const float table_lo[8] = {PSM_EXP_TABLE_LO};
    float k = fmaf(x, PSM_8_OVER_LN2, PSM_SHIFTER) - PSM_SHIFTER;
    float r = fmaf(k, -PSM_LN2_8_HI, x);
    r = fmaf(k, -PSM_LN2_8_LO, r);
    float p = fmaf(1.0f / 24, r, 1.0f / 6);
    p = fmaf(p, r, 0.5f);
    float q = fmaf(p, r * r, r);
    int32_t ki = isnan(k) ? 0 : (int32_t)k;
    int32_t j = ki & 7;
    *e = ki >> 3;                        /* floor division: j in 0..7 */
    return table_hi[j] + fmaf(table_hi[j], q, table_lo[j]);
}

static inline float psm_expf(float x)
{
    int32_t e;
    if (!(fabsf(x) <= PSM_EXP_FAST_LIMIT)) {   /* cold: also taken by NaN */
        /* compare, not fmaxf/fminf, so that NaN stays NaN */
        x = x < PSM_EXP_MIN_ARG ? PSM_EXP_MIN_ARG : x;
        x = x > PSM_EXP_MAX_ARG ? PSM_EXP_MAX_ARG : x;
        float y = psm_expf_core(x, &e);
        int32_t e1 = e >> 1;
        return (y * psm_pow2i(e1)) * psm_pow2i(e - e1);
    }
    return psm_expf_core(x, &e) * psm_pow2i(e);
}

#ifdef PSM_HAVE_AVX2
#include <immintrin.h>

/* psm_expf for the vector path's scalar exps (the online sweep's finish):
 * compiled for FMA, each fmaf is one instruction rather than the libm call
 * a portable build makes of it, seven an exp; a fused multiply-add is
 * exact either way, so the bits are psm_expf's. */
static PSM_AVX2 PSM_NOINLINE float psm_expf_fma(float x)
{
    return psm_expf(x);
}

static inline PSM_AVX2 __m256 psm_pow2i_avx2(__m256i k)
{
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

/* psm_expf_core on 8 lanes, leaving the bits z of x 8/ln2 + 1.5 2^23,
 * which are 0x4B400000 + k (k's low 3 bits pick the table entry; e is
 * (z - 0x4B400000) >> 3).  Always inlined: the eight-row loops of few
 * classes, one copy per class count, grew past gcc's inlining limits and
 * called it, and the call's spills cost (65536, 10) its gradient 1151 against
 * 1100 us and its softmax 750 against 661 (C harness, 1 thread). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_expf_core_bits_avx2(__m256 x, __m256i *z_bits)
{
    const __m256 table_hi = _mm256_setr_ps(PSM_EXP_TABLE_HI);
    const __m256 table_lo = _mm256_setr_ps(PSM_EXP_TABLE_LO);
    const __m256 shifter = _mm256_set1_ps(PSM_SHIFTER);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(PSM_8_OVER_LN2), shifter);
    __m256 k = _mm256_sub_ps(z, shifter);
    __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-PSM_LN2_8_HI), x);
    r = _mm256_fmadd_ps(k, _mm256_set1_ps(-PSM_LN2_8_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.0f / 24), r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    __m256 q = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    __m256i ki = _mm256_castps_si256(z);
    *z_bits = ki;
    __m256 t_hi = _mm256_permutevar8x32_ps(table_hi, ki);
    __m256 t_lo = _mm256_permutevar8x32_ps(table_lo, ki);
    return _mm256_add_ps(t_hi, _mm256_fmadd_ps(t_hi, q, t_lo));
}

/* psm_expf_core on 8 lanes: 2^(j/8) exp(r), and e. */
static inline PSM_AVX2 __m256 psm_expf_core_avx2(__m256 x, __m256i *e)
{
    __m256i ki;
    __m256 y = psm_expf_core_bits_avx2(x, &ki);
    *e = _mm256_srai_epi32(_mm256_sub_epi32(ki, _mm256_set1_epi32(0x4B400000)), 3);
    return y;
}

/* Some lane has |x| > 87 or NaN: clamp, and scale in two steps. */
static PSM_AVX2 __attribute__((noinline)) __m256 psm_expf_special_avx2(__m256 x)
{
    /* max_ps/min_ps return their second operand when one is NaN */
    x = _mm256_max_ps(_mm256_set1_ps(PSM_EXP_MIN_ARG), x);
    x = _mm256_min_ps(_mm256_set1_ps(PSM_EXP_MAX_ARG), x);
    __m256i e;
    __m256 y = psm_expf_core_avx2(x, &e);
    __m256i e1 = _mm256_srai_epi32(e, 1);
    __m256i e2 = _mm256_sub_epi32(e, e1);
    return _mm256_mul_ps(_mm256_mul_ps(y, psm_pow2i_avx2(e1)), psm_pow2i_avx2(e2));
}

static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_expf_avx2(__m256 x)
{
    __m256 abs_x = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    __m256 big = _mm256_cmp_ps(abs_x, _mm256_set1_ps(PSM_EXP_FAST_LIMIT), _CMP_NLE_UQ);
    if (__builtin_expect(_mm256_movemask_ps(big) != 0, 0))
        return psm_expf_special_avx2(x);
    __m256i e;
    __m256 y = psm_expf_core_avx2(x, &e);
    /* y 2^e is normal here: add e to the exponent bits */
    return _mm256_castsi256_ps(
        _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(e, 23)));
}

/* psm_expf_avx2 for x in [-87, 87], or NaN (which stays NaN), with no range
 * check: the core's y scaled by 2^e as a float product, exact for these x,
 * so psm_expf's bits.  (A NaN lane's bits are psm_expf_avx2's too: the same
 * core carries the NaN, and a product keeps its first operand's NaN, as
 * the cold path's two products do.  bench/check_exp_ulp.py compares the
 * two on every float in [-87, 87] and every NaN: no bit differs.)  For
 * loops that know their arguments' range before they start (the online
 * sweep's clamp, a row's min and max).  2^e's bits are
 * ((z - (0x4B400000 - 127 * 8)) >> 3) << 23: the exponent bias folded into
 * the integer that z carries (see psm_expf_core_bits_avx2). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_expf_near_avx2(__m256 x)
{
    __m256i z;
    __m256 y = psm_expf_core_bits_avx2(x, &z);
    __m256i k = _mm256_sub_epi32(z, _mm256_set1_epi32(0x4B400000 - 127 * 8));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(
                                _mm256_slli_epi32(_mm256_srai_epi32(k, 3), 23)));
}
#endif

/* psm_expf, by psm_expf_fma where the CPU runs the vector path (fast). */
static inline float psm_expf_on(int fast, float x)
{
#ifdef PSM_HAVE_AVX2
    if (fast)
        return psm_expf_fma(x);
#else
    (void)fast;
#endif
    return psm_expf(x);
}

#endif /* PYSAFEMAX_EXP_F32_H */
