/*
 * The stable method's one-pass forward for float rows: each logit is read
 * once, in groups of 32, and costs one max, one subtract, one clamp and one
 * exp, with no per-element range check and no tie counting.  The AVX2 loop
 * is psm_online_sums_avx2; its portable twin is online_lanes in row.h (the
 * same float operations in the same order on 8 emulated lanes, any
 * stride); the state they share, its cold rescale and its finish are here,
 * plain C, called by both, so both give the same bits.  Included by
 * softmax_loss_f32.c only.
 *
 * The sweep.  Per lane a running max; for the row a reference r and the
 * sum S of exp(x_j - r) in 4 double lanes (each group of 32 terms added as
 * a float tree of 4 per lane, then joined in double, as rows_avx2.h does).
 * The invariant: every logit seen is <= thr = r + 20 (PSM_ONLINE_MARGIN).
 * Per group: the max of its 4 vectors joins the running max, one compare
 * against thr, one never-taken branch; only when some lane passed thr does
 * the cold psm_online_rescale move r up to the running max G and scale S by
 * exp(r_old - G) (one libm exp, in double, on both paths).  Terms are
 * exp(max(x - r, -87)): x - r <= 20 and the clamp keep the fast exp's result
 * normal, so it needs no range check.
 *
 * The reference.  r starts at 0, so a row whose max lies in (-40, 20]
 * (most logits) is never rescaled; a rescale sets r = G > 20.  So x - r is
 * exact for every x >= r (r = 0: x - 0; r >= 20: x <= r + 20 <= 2r,
 * Sterbenz), and below r its rounding is <= |x - r| 2^-24 <= (m - x) 2^-24
 * (m >= r): no term is rounded worse than exp(x - m)'s argument.  A row
 * with r = 0 and a max <= -40 (PSM_ONLINE_LOWEST) is the exact path's; so a
 * clamped term (a -inf logit, or one more than 87 below r) stands for less
 * than e^(-87+40) = e^-47 of the max's term: with C < 2^31 classes, far
 * below the rounding of any s the finish accepts (s >= (C/8 + 8) 2^-27).
 *
 * The finish (psm_online_finish).  m = the max of the lanes, E =
 * psm_expf(m - r), the float the max's own term added, and
 * s = (S - E) exp(r - m): the stable sum without the max's own term (every
 * other tie still counts, near 1 each).  Subtracting the very float that was
 * added leaves of the max's term only the float rounding of its group
 * (<= 2 2^-24 of it, that is of 1 in units of s), which is <= 2^-24
 * relative when s >= 1.  Below 1 (a confident row: the max dominates, and
 * log1p(s) needs s to full relative precision) psm_online_fixed_rest takes
 * the max's lane out of S; below its floor, or with ties at the max, row.h
 * sums again with the ties counted.  Rows whose max is not finite (a +inf,
 * or every logit -inf or NaN) and rows with a NaN take the exact two-sweep
 * path: the clamp max_ps(-87, d) passes a NaN d through, the exp's scaling
 * by a float multiply keeps it NaN, and so is S.
 */
#ifndef PYSAFEMAX_ROWS_ONLINE_AVX2_H
#define PYSAFEMAX_ROWS_ONLINE_AVX2_H

#include <float.h>
#include <math.h>

#include "exp_f32.h"
#include "internal.h"   /* PSM_BLOCK, PSM_NOINLINE */
#include "lanes_avx2.h"
#include "rows_avx2.h"  /* psm_lanes_below_avx2 */

#define PSM_ONLINE_MARGIN 20.0f    /* thr = r + 20: terms <= e^20 */
#define PSM_ONLINE_LOWEST -40.0f   /* with r = 0, a lower max is the exact path's */
#define PSM_ONLINE_FLOOR -87.0f    /* -PSM_EXP_FAST_LIMIT: exp stays normal */
#define PSM_ONLINE_MIN_REST 1.0    /* below it, psm_online_fixed_rest */

/* What the sweep carries from group to group (and block to block). */
typedef struct {
    float max[8];     /* per lane, the max so far (NaN skipped) */
    double acc[4];    /* sum of exp(x_j - ref), 4 double lanes */
    float ref;        /* r */
    float thr;        /* r + PSM_ONLINE_MARGIN: a logit above it moves r */
    int special;      /* a +inf logit: the row is the exact path's */
} psm_online_state;

static inline void psm_online_start(psm_online_state *st)
{
    for (int l = 0; l < 8; l++)
        st->max[l] = -INFINITY;
    for (int k = 0; k < 4; k++)
        st->acc[k] = 0.0;
    st->ref = 0.0f;
    st->thr = PSM_ONLINE_MARGIN;
    st->special = 0;
}

/* The max of the lanes, in lane order (the same on both paths). */
static inline float psm_online_max(const psm_online_state *st)
{
    float g = st->max[0];
    for (int l = 1; l < 8; l++)
        g = st->max[l] > g ? st->max[l] : g;
    return g;
}

/* Cold: some lane's max passed thr.  r moves up to the max G and what was
 * summed against the old r is scaled to the new one; a +inf G marks the
 * row special. */
static PSM_NOINLINE void psm_online_rescale(psm_online_state *st)
{
    float g = psm_online_max(st);
    if (!(g <= FLT_MAX)) {
        st->special = 1;
        return;
    }
    double scale = exp((double)st->ref - (double)g);
    for (int k = 0; k < 4; k++)
        st->acc[k] *= scale;
    st->ref = g;
    st->thr = g + PSM_ONLINE_MARGIN;
}

/* The sweep's result: PSM_ONLINE_DONE with the row's max *m and s (see the
 * header); PSM_ONLINE_CONFIDENT with only *m, for a row with s < 1 and no
 * NaN; PSM_ONLINE_EXACT for a row with a NaN, whose max is not finite, or
 * (r = 0) is <= -40. */
enum { PSM_ONLINE_EXACT, PSM_ONLINE_DONE, PSM_ONLINE_CONFIDENT };

static inline int psm_online_finish(const psm_online_state *st, int fast, float *m,
                                    double *s)
{
    float max = psm_online_max(st);
    if (st->special || !(fabsf(max) <= FLT_MAX) || !(max > st->ref + PSM_ONLINE_LOWEST))
        return PSM_ONLINE_EXACT;
    if (max == 0)
        max = 0;   /* +0, whichever zero the lanes kept */
    double sum = (st->acc[0] + st->acc[2]) + (st->acc[1] + st->acc[3]);
    if (isnan(sum))
        return PSM_ONLINE_EXACT;
    *m = max;
    *s = (sum - (double)psm_expf_on(fast, max - st->ref)) *
         exp((double)st->ref - (double)max);
    return *s >= PSM_ONLINE_MIN_REST ? PSM_ONLINE_DONE : PSM_ONLINE_CONFIDENT;
}

/* A confident row's s to full relative precision, from the sweep and the
 * unique max's position p: the float tree its lane of its group summed
 * (e_0 + e_1) + (e_2 + e_3), in which the max's own term e_i sits (these
 * terms used the final r: once the max's group is seen no lane passes thr
 * again), is taken out of S and the other three are put back in double, so
 * that no rounding relative to the max's term is left but the double
 * additions' (each <= 2^-53 of S ~ 2^-53 (1 + s) in units of s; a lane
 * takes 2 per group, and the last sums 2 more).  Returns s, or -1 when
 * that absolute error, (C/16 + 4) 2^-52 for s < 1, could exceed 2^-26 s,
 * a quarter of the float's relative rounding: s >= (C/8 + 8) 2^-27. */
static inline double psm_online_fixed_rest(const psm_online_state *st, int fast, float m,
                                           const float *x, int64_t n, int64_t stride,
                                           int64_t p)
{
    int64_t group = p - p % 32, lane = p % 8;
    float e[4];
    double others = 0.0;
    for (int i = 0; i < 4; i++) {
        int64_t k = group + 8 * i + lane;
        float d = k < n ? x[k * stride] - st->ref : 0.0f;
        e[i] = k < n ? psm_expf_on(fast, PSM_ONLINE_FLOOR > d ? PSM_ONLINE_FLOOR : d) : 0.0f;
        if (k != p)
            others += (double)e[i];
    }
    float tree = (e[0] + e[1]) + (e[2] + e[3]);
    double sum = (st->acc[0] + st->acc[2]) + (st->acc[1] + st->acc[3]);
    double rest = ((sum - (double)tree) + others) * exp((double)st->ref - (double)m);
    double floor = ((double)n / 8.0 + 8.0) * 0x1p-27;
    return rest >= floor ? rest : -1.0;
}

#ifdef PSM_HAVE_AVX2

/* One group's terms: exp(max(-87, v - r)) (max_ps returns its second
 * operand when one is NaN: a NaN v - r passes). */
static inline PSM_AVX2 __m256 psm_online_term_avx2(__m256 v, __m256 rv, __m256 lo)
{
    return psm_expf_near_avx2(_mm256_max_ps(lo, _mm256_sub_ps(v, rv)));
}

/* The hot loop: whole groups of 32 from x + j while no lane's max passes
 * thr; returns where it stopped (the group that passed it, not summed, or
 * the last whole group's end).  No call inside, so that nothing is
 * spilled around one.  GCC 12 -O3 still keeps the running max, the double
 * lanes, thr and one constant on the stack: 109 instructions per group of
 * 32 (27.25 per 8 floats, objdump of the built module; today's
 * psm_block_sums_avx2: 155, 38.75). */
static PSM_AVX2 PSM_NOINLINE int64_t psm_online_run_avx2(const float *x, int64_t n,
                                                          int64_t j, psm_online_state *st)
{
    const __m256 lo = _mm256_set1_ps(PSM_ONLINE_FLOOR);
    const __m256 rv = _mm256_set1_ps(st->ref), thr = _mm256_set1_ps(st->thr);
    __m256 mx = _mm256_loadu_ps(st->max);
    __m256d acc = _mm256_loadu_pd(st->acc);
    for (; j + 32 <= n; j += 32) {
        __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
        __m256 g = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
        g = _mm256_max_ps(g, mx);
        if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(g, thr, _CMP_GT_OQ)) != 0, 0)) {
            mx = g;
            break;
        }
        mx = g;
        __m256 e01 = _mm256_add_ps(psm_online_term_avx2(v0, rv, lo),
                                   psm_online_term_avx2(v1, rv, lo));
        /* an empty asm that "changes" v2 and v3 after e01: the second pair
         * is computed after the first, and register pressure halves */
        __asm__("" : "+x"(v2), "+x"(v3), "+x"(e01));
        __m256 e23 = _mm256_add_ps(psm_online_term_avx2(v2, rv, lo),
                                   psm_online_term_avx2(v3, rv, lo));
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(e01, e23));
    }
    _mm256_storeu_ps(st->max, mx);
    _mm256_storeu_pd(st->acc, acc);
    return j;
}

/* The sweep over n contiguous floats, continuing st: whole groups of 32,
 * then (only at the end of a row) the last n % 32 floats as one group
 * padded with -inf, whose padding lanes add +0.  A group whose max passes
 * thr is summed after the rescale (taking its max again changes nothing).
 * Stops early on a special row. */
static PSM_AVX2 void psm_online_sums_avx2(const float *x, int64_t n, psm_online_state *st)
{
    int64_t j = 0;
    while ((j = psm_online_run_avx2(x, n, j, st)) + 32 <= n) {
        psm_online_rescale(st);
        if (st->special)
            return;
    }
    if (j < n) {
        const __m256 lo = _mm256_set1_ps(PSM_ONLINE_FLOOR);
        const __m256 pad = _mm256_set1_ps(-INFINITY);
        __m256 v[4], e[4], valid[4];
        for (int i = 0; i < 4; i++) {   /* masked lanes are not read */
            valid[i] = psm_lanes_below_avx2(n - j - 8 * i);
            v[i] = _mm256_blendv_ps(pad, _mm256_maskload_ps(x + j + 8 * i,
                                                            _mm256_castps_si256(valid[i])),
                                    valid[i]);
        }
        __m256 g = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
        __m256 mx = _mm256_max_ps(g, _mm256_loadu_ps(st->max));
        _mm256_storeu_ps(st->max, mx);
        if (_mm256_movemask_ps(_mm256_cmp_ps(mx, _mm256_set1_ps(st->thr), _CMP_GT_OQ)) != 0) {
            psm_online_rescale(st);
            if (st->special)
                return;
        }
        __m256 rv = _mm256_set1_ps(st->ref);
        for (int i = 0; i < 4; i++)
            e[i] = _mm256_and_ps(valid[i], psm_online_term_avx2(v[i], rv, lo));
        __m256d acc = psm_add_wide_avx2(_mm256_loadu_pd(st->acc),
                                        _mm256_add_ps(_mm256_add_ps(e[0], e[1]),
                                                      _mm256_add_ps(e[2], e[3])));
        _mm256_storeu_pd(st->acc, acc);
    }
}

/* The first j with x_j == m among n floats, or -1, and whether another
 * follows it (*more): an exact result, so the portable loop (find_max in
 * row.h) gives the same. */
static PSM_AVX2 int64_t psm_find_max_avx2(const float *x, int64_t n, float m, int *more)
{
    const __m256 mv = _mm256_set1_ps(m);
    int64_t first = -1;
    int64_t j = 0;
    *more = 0;
    for (; j + 8 <= n; j += 8) {
        unsigned bits = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x + j), mv, _CMP_EQ_OQ));
        if (__builtin_expect(bits != 0, 0)) {
            if (first >= 0 || (bits & (bits - 1)) != 0) {
                *more = 1;
                return first >= 0 ? first : j + __builtin_ctz(bits);
            }
            first = j + __builtin_ctz(bits);
        }
    }
    for (; j < n; j++)
        if (x[j] == m) {
            if (first >= 0) {
                *more = 1;
                return first;
            }
            first = j;
        }
    return first;
}

#endif /* PSM_HAVE_AVX2 */
#endif /* PYSAFEMAX_ROWS_ONLINE_AVX2_H */
