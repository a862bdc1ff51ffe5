/*
 * What the kernel's translation units share and its callers never see: the
 * block size of a row's pass, the one way a label is read, the argument
 * checks every entry point makes, the normalizer of a call and the choice of
 * code path.  No cdef reads this file.
 *
 * The functions declared here are defined in softmax_loss.c: real functions
 * rather than copies in every file, hidden from the shared library's
 * exported symbols where the compiler allows it (PSM_INTERNAL, which
 * chunks.h uses too).
 */
#ifndef PYSAFEMAX_INTERNAL_H
#define PYSAFEMAX_INTERNAL_H

#include <float.h>
#include <math.h>
#include <stdint.h>

#include "softmax_loss.h"

/* One .c file's function for another: not exported by the extension. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define PSM_INTERNAL __attribute__((visibility("hidden")))
#else
#define PSM_INTERNAL
#endif

/* Inlining that the hot loops' speed depends on (row.h's lane_sum: folded
 * into block_sum, kept out of softmax's exp_store_sum). */
#if defined(__GNUC__) || defined(__clang__)
#define PSM_ALWAYS_INLINE inline __attribute__((always_inline))
#define PSM_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define PSM_ALWAYS_INLINE __forceinline
#define PSM_NOINLINE __declspec(noinline)
#else
#define PSM_ALWAYS_INLINE inline
#define PSM_NOINLINE
#endif

/* The AVX2+FMA loops (the exps, rows_*avx2.h, log1p_f64.h) are compiled
 * wherever the compiler takes target attributes on x86-64, each function
 * marked PSM_AVX2, with no -mavx2 for the whole build; psm_simd_level says
 * at run time whether this CPU may run them. */
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define PSM_HAVE_AVX2 1
#define PSM_AVX2 __attribute__((target("avx2,fma")))
#endif

/* A row is read in blocks of this many logits: 8 KB of float, in L1. */
#define PSM_BLOCK 2048

/* Rows of at most this many classes are read eight at a time, where a
 * vector loop does so (rows_small_avx2.h, rows_small_avx2_f64.h). */
#define PSM_SMALL_CLASSES 16

/* call(n) for each class count n of a small row, for the switches that
 * give each count its own copy of an eight-row loop. */
#if PSM_SMALL_CLASSES != 16
#error "PSM_SMALL_CASES lists each count up to PSM_SMALL_CLASSES"
#endif
#define PSM_SMALL_CASES(call) \
    call(1) call(2) call(3) call(4) call(5) call(6) call(7) call(8) \
    call(9) call(10) call(11) call(12) call(13) call(14) call(15) call(16)

/* Rows of a few classes are swept eight at a time, and finished (their
 * log1p, divisions and losses) up to this many at a time, two sweeps'
 * worth: a finish is a chain of dependent steps (a log1p is two divisions
 * and a seven-step polynomial) longer than the out-of-order window reaches
 * past, and the finishes of sixteen rows overlap.  On (65536, 10), stable
 * forward, 1 thread, C harness best of 300-400: 735-739 us against 846
 * finishing eight at a time (600 with no log1p at all); a first version
 * took 711 for sixteen rows, 750 for 24 and 736 for 32. */
#define PSM_FINISH_ROWS 16

/* Positions with plain labels and rows of at most this many classes are
 * finished together (plain_losses in row.h; measured at eight a time).
 * Thread CPU time, 1 thread, best of 7, against finishing each row after
 * its sweep: 100 classes 17% faster forward and 20% with the gradient, 250
 * even and 8%, 500 9% slower forward and even, 1000 5% slower forward. */
#define PSM_PLAIN_BATCH_CLASSES 256

/* The stable forward takes its one-sweep online loop (rows_online_avx2.h)
 * on rows of more classes than this; shorter rows, read from L1 anyway,
 * take a max sweep and a sum sweep, whose finish is cheaper than the
 * online one's (a libm exp, and for a confident row a search for the max).
 * Thread CPU time, 1 thread, best of 7, online against two sweeps: 100
 * classes 15.1 against 7.7 ms, 300 8.3 against 7.1-8.4, 500 6.6 against
 * 6.2-7.9, 700 and 900 even, 1000 5.35 against 5.5, 2000 4.7 against 5.2,
 * on 8.2M logits. */
#define PSM_ONLINE_MIN_CLASSES 512

/* A label, read exactly once: the caller's labels may change under a call
 * (another thread writing the array), so the value that is bounded must be
 * the value that is used as an index, never a second load of it. */
static inline int64_t read_label(const int64_t *labels, int64_t pos)
{
    return ((const volatile int64_t *)labels)[pos];
}

/* Nonzero if some of n labels lies outside [0, classes): the sign bit of
 * y | (classes - 1 - y), in unsigned arithmetic, OR-ed over them.  No
 * branch per label, so the loop vectorizes: psm_label_summary's labels,
 * and plain_batch's eight (driver.h), which read each label once into an
 * array of their own before they pass it here. */
static inline int psm_labels_outside(const int64_t *labels, int64_t n, int64_t classes)
{
    uint64_t last = (uint64_t)classes - 1, any = 0;
    for (int64_t pos = 0; pos < n; pos++)
        any |= (uint64_t)labels[pos] | (last - (uint64_t)labels[pos]);
    return (int)(any >> 63);
}

/* A sum of doubles with Neumaier's compensation: psm_sum_value is the sum
 * of every term added to within about one rounding, however many terms, so
 * that the same losses summed in other groups (one call's chunks, or its
 * positions streamed in blocks, as _core.py's _run_blocks does) agree to an
 * ulp or two, where a plain sum's difference grows with the count. */
typedef struct {
    double sum, comp;
} psm_sum;

static inline void psm_sum_add(psm_sum *s, double x)
{
    double t = s->sum + x;
    if (isfinite(t))   /* inf or NaN: no rounding to carry, and (s - t) + x is NaN */
        s->comp += fabs(s->sum) >= fabs(x) ? (s->sum - t) + x : (x - t) + s->sum;
    s->sum = t;
}

/* A NaN total is written +NaN: which of two NaNs a sum keeps depends on
 * the operand order the compiler picks, which differs between inlined
 * copies of psm_sum_add. */
static inline double psm_sum_value(const psm_sum *s)
{
    if (isnan(s->sum))
        return NAN;
    return s->comp == 0.0 ? s->sum : s->sum + s->comp;   /* a -0.0 sum stays -0.0 */
}

/* A chunk's losses, summed in eight compensated lanes: its k-th loss joins
 * lane k % 8 as psm_sum_add would, and psm_lanes_value joins the lanes
 * used: their sums in one psm_sum, their compensations (each a few
 * roundings of its lane's sum) added to its compensation.  Still within
 * about one rounding of the exact sum, as psm_sum is; but eight losses
 * that start at lane 0 (a batch of small rows) join their lanes in one
 * vector step (psm_lanes_add8_avx2), where a single psm_sum's eight
 * dependent additions took about 20 instructions a row of 123 on
 * (65536, 10).  Every path of a call sums through these, in position
 * order, so that the lanes, like the losses, are the same whichever path,
 * CPU or thread count computes them. */
#define PSM_LANES 8
typedef struct {
    double sum[PSM_LANES], comp[PSM_LANES];
    int next;   /* the lane the next loss joins */
    int used;   /* how many lanes a loss has joined */
} psm_lanes;

/* psm_sum_add of x to one lane, written without a branch as the vector
 * step computes it (the compensation of a sum that is not finite is skipped
 * by adding +0: a zero compensation of either sign leaves every later sum
 * alike). */
static inline void psm_lane_add(double *sum, double *comp, double x)
{
    double s = *sum, t = s + x;
    double c = fabs(s) >= fabs(x) ? (s - t) + x : (x - t) + s;
    *comp += fabs(t) <= DBL_MAX ? c : 0.0;
    *sum = t;
}

static inline void psm_lanes_add(psm_lanes *l, double x)
{
    psm_lane_add(&l->sum[l->next], &l->comp[l->next], x);
    l->next = (l->next + 1) % PSM_LANES;
    if (l->used < PSM_LANES)
        l->used++;
}

#ifdef PSM_HAVE_AVX2
#include <immintrin.h>

/* Eight losses that start at lane 0 (l->next == 0): psm_lane_add of x[k]
 * to lane k, four lanes a vector, the same operations in the same order, so
 * the same bits as eight psm_lanes_add. */
static inline PSM_AVX2 void psm_lanes_add8_avx2(psm_lanes *l, const double x[PSM_LANES])
{
    const __m256d sign = _mm256_set1_pd(-0.0), big = _mm256_set1_pd(DBL_MAX);
    for (int h = 0; h < PSM_LANES; h += 4) {
        __m256d s = _mm256_loadu_pd(l->sum + h), v = _mm256_loadu_pd(x + h);
        __m256d t = _mm256_add_pd(s, v);
        __m256d s_larger = _mm256_cmp_pd(_mm256_andnot_pd(sign, s), _mm256_andnot_pd(sign, v),
                                         _CMP_GE_OQ);
        __m256d c = _mm256_blendv_pd(_mm256_add_pd(_mm256_sub_pd(v, t), s),
                                     _mm256_add_pd(_mm256_sub_pd(s, t), v), s_larger);
        __m256d finite = _mm256_cmp_pd(_mm256_andnot_pd(sign, t), big, _CMP_LE_OQ);
        _mm256_storeu_pd(l->comp + h, _mm256_add_pd(_mm256_loadu_pd(l->comp + h),
                                                    _mm256_and_pd(c, finite)));
        _mm256_storeu_pd(l->sum + h, t);
    }
    l->used = PSM_LANES;
}
#endif

static inline double psm_lanes_value(const psm_lanes *l)
{
    psm_sum total = {0.0, 0.0};
    double comp = 0.0;
    for (int k = 0; k < l->used; k++) {
        psm_sum_add(&total, l->sum[k]);
        comp += l->comp[k];
    }
    total.comp += comp;
    return psm_sum_value(&total);
}

/* Arguments every entry point checks; the Python layer validates first,
 * these only keep a direct C caller from walking off its arrays. */
PSM_INTERNAL int psm_shape_ok(const void *logits, int64_t outer, int64_t classes,
                              int64_t inner, int method);
PSM_INTERNAL int psm_options_ok(const void *logits, int64_t outer, int64_t classes,
                                int64_t inner, const int64_t *labels,
                                const void *target_probs, const psm_options *opt);
/* A block of [class_offset, class_offset + classes) within total_classes. */
PSM_INTERNAL int psm_block_ok(int64_t classes, int64_t class_offset,
                              int64_t total_classes);

/* Checks every label (before anything is written) and finds what the call's
 * reduction divides by: the caller's normalizer, or the reduction's own.
 * Returns PSM_OK, or 1 + the position of the first bad label. */
PSM_INTERNAL int64_t psm_call_normalizer(const int64_t *labels, int64_t outer,
                                         int64_t inner, int64_t classes,
                                         const psm_options *opt, double *normalizer);
/* What each loss's gradient is multiplied by: NaN where the loss is. */
PSM_INTERNAL double psm_gradient_scale(double normalizer);

/* 1 when this call may take the AVX2 loops: the CPU has them and the calling
 * thread has not asked for the portable twins (psm_testing_set_portable).
 * Entry points ask once, on the calling thread, before any worker starts,
 * and hand the answer to their workers. */
PSM_INTERNAL int psm_use_simd(void);

#endif /* PYSAFEMAX_INTERNAL_H */
