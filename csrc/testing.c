/*
 * The test-only hooks of testing.h: the thread-local flag that sends a
 * thread's calls down the portable twins, the kernel's float exp and double
 * log1p over an array, and the machine-limit probes of the benchmarks (read,
 * exp+sum, exp+store, copy), each with its AVX2 loop and the scalar twin.
 * They share exp_f32.h and chunks.c with the kernel, so they measure the
 * code the kernel runs.
 */
#include "testing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"
#include "exp_f32.h"
#include "exp_f64.h"
#include "internal.h"
#include "lanes_avx2.h"
#include "log1p_f64.h"

/* C11's thread-local storage, or MSVC's. */
#if defined(_MSC_VER)
#define PSM_THREAD_LOCAL __declspec(thread)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define PSM_THREAD_LOCAL _Thread_local
#elif defined(__GNUC__)
#define PSM_THREAD_LOCAL __thread
#else
#error "no thread-local storage: psm_testing_set_portable needs it"
#endif

/* A thread's own flag (the kernel's only other state outside a call is
 * chunks.c's thread pool): set by tests, read by the entry points through
 * psm_use_simd. */
static PSM_THREAD_LOCAL int portable_here;

void psm_testing_set_portable(int portable)
{
    portable_here = portable != 0;
}

int psm_testing_portable(void)
{
    return portable_here;
}

#ifdef PSM_HAVE_AVX2
static inline PSM_AVX2 float psm_hsum_ps_avx2(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(a, _mm_shuffle_ps(a, a, 1)));
}

static PSM_AVX2 void psm_exp_array_avx2(const float *in, int64_t n, float *out)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, psm_expf_avx2(_mm256_loadu_ps(in + j)));
    for (; j < n; j++)
        out[j] = psm_expf(in[j]);
}

/* psm_expf_near_avx2, the exp with no range check, of every element (the
 * last n % 8 through a padded copy): only for inputs in [-87, 87] or NaN. */
static PSM_AVX2 void psm_exp_near_array_avx2(const float *in, int64_t n, float *out)
{
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, psm_expf_near_avx2(_mm256_loadu_ps(in + j)));
    if (j < n) {
        float lanes[8] = {0};
        for (int64_t k = j; k < n; k++)
            lanes[k - j] = in[k];
        _mm256_storeu_ps(lanes, psm_expf_near_avx2(_mm256_loadu_ps(lanes)));
        for (int64_t k = j; k < n; k++)
            out[k] = lanes[k - j];
    }
}

/* The last n % 4 through a masked load and store: every element takes the
 * vector exp, and nothing past the array is touched. */
static PSM_AVX2 void psm_exp_array_f64_avx2(const double *in, int64_t n, double *out)
{
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(out + j, psm_exp_avx2(_mm256_loadu_pd(in + j)));
    if (j < n) {
        __m256i valid = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - j),
                                           _mm256_setr_epi64x(0, 1, 2, 3));
        __m256d v = _mm256_maskload_pd(in + j, valid);
        _mm256_maskstore_pd(out + j, valid, psm_exp_avx2(v));
    }
}

/* The read-bandwidth probe: a plain sum, four accumulators. */
static PSM_AVX2 double psm_sum_avx2(const float *x, int64_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + j));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + j + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + j + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + j + 24));
    }
    double s = psm_hsum_ps_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1),
                                              _mm256_add_ps(a2, a3)));
    for (; j < n; j++)
        s += x[j];
    return s;
}
/* exp(v) for the probe loops: the kernel's, or with unchecked its
 * unchecked one (psm_expf_near_avx2: the same bits for v in [-87, 87]). */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_probe_exp_avx2(__m256 v, int unchecked)
{
    return unchecked ? psm_expf_near_avx2(v) : psm_expf_avx2(v);
}

/* The exp+sum probe: the loss's exp and its sum, without the max.  With out
 * (non-NULL), each exp is also stored there: the exp+store probe's first
 * pass.  unchecked: the exp without its range check, for x in [-87, 87]
 * (bench/exp_sum_bound.py's second loop).  Always inlined, so that the
 * probe without out has no stores. */
static PSM_ALWAYS_INLINE PSM_AVX2 double psm_exp_sum_avx2(const float *x, int64_t n,
                                                          float *out, int unchecked)
{
    __m256d acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256 e0 = psm_probe_exp_avx2(_mm256_loadu_ps(x + j), unchecked);
        __m256 e1 = psm_probe_exp_avx2(_mm256_loadu_ps(x + j + 8), unchecked);
        __m256 e2 = psm_probe_exp_avx2(_mm256_loadu_ps(x + j + 16), unchecked);
        __m256 e3 = psm_probe_exp_avx2(_mm256_loadu_ps(x + j + 24), unchecked);
        if (out) {
            _mm256_storeu_ps(out + j, e0);
            _mm256_storeu_ps(out + j + 8, e1);
            _mm256_storeu_ps(out + j + 16, e2);
            _mm256_storeu_ps(out + j + 24, e3);
        }
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(_mm256_add_ps(e0, e1),
                                                         _mm256_add_ps(e2, e3)));
    }
    for (; j + 8 <= n; j += 8) {
        __m256 e = psm_probe_exp_avx2(_mm256_loadu_ps(x + j), unchecked);
        if (out)
            _mm256_storeu_ps(out + j, e);
        acc = psm_add_wide_avx2(acc, e);
    }
    double s = psm_hsum_pd_avx2(acc);
    for (; j < n; j++) {
        float e = psm_expf(x[j]);
        if (out)
            out[j] = e;
        s += e;
    }
    return s;
}

static PSM_AVX2 double psm_exp_sum_only_avx2(const float *x, int64_t n)
{
    return psm_exp_sum_avx2(x, n, NULL, 0);
}

static PSM_AVX2 double psm_exp_store_sum_avx2(const float *x, int64_t n, float *out)
{
    return psm_exp_sum_avx2(x, n, out, 0);
}

/* The loops bench/exp_sum_bound.py compares with the exp+sum probe's, on
 * n floats (a multiple of 16) in [-87, 87]: what a forward pass's exps and
 * sum could cost if they were written otherwise.  Measurement only: the
 * kernel sums neither in float groups nor with this exp. */

/* exp(x) by a degree-6 polynomial on [-ln2/2, ln2/2] without a table
 * (Cephes' expf coefficients, about 1 ulp; checked only to 1e-6 relative by
 * tests/test_bench.py), for x in [-87, 87]. */
static PSM_ALWAYS_INLINE PSM_AVX2 __m256 psm_poly6_expf_avx2(__m256 x)
{
    const __m256 shifter = _mm256_set1_ps(PSM_SHIFTER);
    __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p0f), shifter);
    __m256 k = _mm256_sub_ps(z, shifter);
    __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* z's low bits hold k: add it to y's exponent */
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y),
                                                _mm256_slli_epi32(_mm256_castps_si256(z), 23)));
}

/* The sum of exp(x_j), two vectors a step into two float accumulators,
 * joined into double lanes every 256 floats: the accumulation in float
 * groups with a double combine that issue 13 proposes.  poly: the
 * polynomial exp above, else the kernel's exp without its range check. */
static PSM_ALWAYS_INLINE PSM_AVX2 double psm_float_groups_exp_sum_avx2(const float *x,
                                                                       int64_t n, int poly)
{
    __m256d acc = _mm256_setzero_pd();
    for (int64_t g = 0; g < n; g += 256) {
        int64_t end = g + 256 < n ? g + 256 : n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;
        for (int64_t j = g; j < end; j += 16) {
            __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
            a0 = _mm256_add_ps(a0, poly ? psm_poly6_expf_avx2(v0) : psm_expf_near_avx2(v0));
            a1 = _mm256_add_ps(a1, poly ? psm_poly6_expf_avx2(v1) : psm_expf_near_avx2(v1));
        }
        acc = psm_add_wide_avx2(acc, _mm256_add_ps(a0, a1));
    }
    return psm_hsum_pd_avx2(acc);
}

static PSM_AVX2 double psm_exp_sum_loop_avx2(const float *x, int64_t n, int loop)
{
    switch (loop) {
    case PSM_EXP_SUM_PROBE_LOOP:
        return psm_exp_sum_only_avx2(x, n);
    case PSM_EXP_SUM_UNCHECKED:
        return psm_exp_sum_avx2(x, n, NULL, 1);
    case PSM_EXP_SUM_FLOAT_GROUPS:
        return psm_float_groups_exp_sum_avx2(x, n, 0);
    case PSM_EXP_SUM_POLY6_FLOAT_GROUPS:
        return psm_float_groups_exp_sum_avx2(x, n, 1);
    default:
        return NAN;
    }
}

/* The exp+store probe's second pass: out_j *= factor from cache. */
static PSM_AVX2 void psm_scale_avx2(float *out, int64_t n, float factor)
{
    const __m256 f = _mm256_set1_ps(factor);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_loadu_ps(out + j), f));
    for (; j < n; j++)
        out[j] *= factor;
}

/* The copy probe: four loads, then four stores. */
static PSM_AVX2 void psm_copy_avx2(const float *x, int64_t n, float *out)
{
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
        _mm256_storeu_ps(out + j, v0);
        _mm256_storeu_ps(out + j + 8, v1);
        _mm256_storeu_ps(out + j + 16, v2);
        _mm256_storeu_ps(out + j + 24, v3);
    }
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, _mm256_loadu_ps(x + j));
    for (; j < n; j++)
        out[j] = x[j];
}
#endif /* PSM_HAVE_AVX2 */

void psm_exp_f32(const float *in, int64_t n, int portable, float *out)
{
    int simd = psm_simd_level();
#ifdef PSM_HAVE_AVX2
    if ((!portable || portable == 3) && simd) {
        (portable ? psm_exp_near_array_avx2 : psm_exp_array_avx2)(in, n, out);
        return;
    }
#endif
    for (int64_t j = 0; j < n; j++)
        out[j] = psm_expf_on(portable == 2 && simd, in[j]);
}

void psm_exp_f64(const double *in, int64_t n, int portable, double *out)
{
#ifdef PSM_HAVE_AVX2
    if (!portable && psm_simd_level()) {
        psm_exp_array_f64_avx2(in, n, out);
        return;
    }
#else
    (void)portable;
#endif
    for (int64_t j = 0; j < n; j++)
        out[j] = psm_exp(in[j]);
}

/* psm_exp_sum_avx2's twin: 8 emulated lanes, the same float and double
 * additions in the same order (so the same bits), each exp stored to out
 * when out is non-NULL. */
static double exp_sum_portable(const float *x, int64_t n, float *out)
{
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    float e[32], s[8];
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        for (int k = 0; k < 32; k++)
            e[k] = psm_expf(x[j + k]);
        if (out)
            memcpy(out + j, e, sizeof e);
        for (int l = 0; l < 8; l++)
            s[l] = (e[l] + e[8 + l]) + (e[16 + l] + e[24 + l]);
        for (int k = 0; k < 4; k++)
            acc[k] = (acc[k] + (double)s[k]) + (double)s[k + 4];
    }
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++)
            s[l] = psm_expf(x[j + l]);
        if (out)
            memcpy(out + j, s, sizeof s);
        for (int k = 0; k < 4; k++)
            acc[k] = (acc[k] + (double)s[k]) + (double)s[k + 4];
    }
    double total = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (; j < n; j++) {
        float ej = psm_expf(x[j]);
        if (out)
            out[j] = ej;
        total += ej;
    }
    return total;
}

typedef struct {
    const float *x;
    int64_t n;
    int simd;
    float *out;          /* the copy probe's */
    double *partials;    /* one per chunk */
} probe_job;

/* The first element and the length of a chunk of a probe. */
static int64_t probe_span(const probe_job *job, int64_t chunk, int64_t *len)
{
    int64_t first = chunk * PSM_CHUNK_ELEMENTS;
    *len = job->n - first < PSM_CHUNK_ELEMENTS ? job->n - first : PSM_CHUNK_ELEMENTS;
    return first;
}

static void read_chunk(const void *job_, int64_t chunk)
{
    const probe_job *job = job_;
    int64_t len, first = probe_span(job, chunk, &len);
    double s = 0.0;
#ifdef PSM_HAVE_AVX2
    if (job->simd) {
        job->partials[chunk] = psm_sum_avx2(job->x + first, len);
        return;
    }
#endif
    for (int64_t j = 0; j < len; j++)
        s += job->x[first + j];
    job->partials[chunk] = s;
}

static void exp_sum_chunk(const void *job_, int64_t chunk)
{
    const probe_job *job = job_;
    int64_t len, first = probe_span(job, chunk, &len);
#ifdef PSM_HAVE_AVX2
    if (job->simd) {
        job->partials[chunk] = psm_exp_sum_only_avx2(job->x + first, len);
        return;
    }
#endif
    job->partials[chunk] = exp_sum_portable(job->x + first, len, NULL);
}

/* What a gradient with one exp per element must do at the least: each exp
 * stored while it is summed, then the stored values scaled by one factor
 * from cache (a chunk, 128 KiB, stays in L2), without the max pass. */
static void exp_store_chunk(const void *job_, int64_t chunk)
{
    const probe_job *job = job_;
    int64_t len, first = probe_span(job, chunk, &len);
    const float *x = job->x + first;
    float *out = job->out + first;
    double total;
#ifdef PSM_HAVE_AVX2
    if (job->simd) {
        total = psm_exp_store_sum_avx2(x, len, out);
        psm_scale_avx2(out, len, (float)(1.0 / total));
        job->partials[chunk] = total;
        return;
    }
#endif
    total = exp_sum_portable(x, len, out);
    float factor = (float)(1.0 / total);
    for (int64_t j = 0; j < len; j++)
        out[j] *= factor;
    job->partials[chunk] = total;
}

static void copy_chunk(const void *job_, int64_t chunk)
{
    const probe_job *job = job_;
    int64_t len, first = probe_span(job, chunk, &len);
    const float *x = job->x + first;
    float *out = job->out + first;
#ifdef PSM_HAVE_AVX2
    if (job->simd)
        psm_copy_avx2(x, len, out);
    else
#endif
        for (int64_t j = 0; j < len; j++)
            out[j] = x[j];
    /* read back through volatile: the value the store left in memory */
    job->partials[chunk] = ((const volatile float *)out)[len - 1];
}

/* Runs a probe's chunks on the kernel's threads and adds their results in
 * order (so the sum does not depend on the thread count); NaN if its work
 * space cannot be allocated. */
static double run_probe(psm_chunk_fn fn, const float *x, int64_t n, float *out,
                        int threads, int portable)
{
    int64_t chunks = (n + PSM_CHUNK_ELEMENTS - 1) / PSM_CHUNK_ELEMENTS;
    double *partials = malloc((size_t)(chunks ? chunks : 1) * sizeof *partials);
    if (partials == NULL)
        return NAN;
    probe_job job = {x, n, !portable && psm_simd_level(), out, partials};
    psm_run_chunks(fn, &job, chunks, psm_threads_for(threads, n));
    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        total += partials[c];
    free(partials);
    return total;
}

double psm_read_probe_f32(const float *x, int64_t n, int threads, int portable)
{
    return run_probe(read_chunk, x, n, NULL, threads, portable);
}

double psm_exp_sum_probe_f32(const float *x, int64_t n, int threads, int portable)
{
    return run_probe(exp_sum_chunk, x, n, NULL, threads, portable);
}

double psm_exp_store_probe_f32(const float *x, int64_t n, float *out, int threads,
                               int portable)
{
    return run_probe(exp_store_chunk, x, n, out, threads, portable);
}

double psm_copy_probe_f32(const float *x, int64_t n, float *out, int threads, int portable)
{
    return run_probe(copy_chunk, x, n, out, threads, portable);
}

double psm_exp_sum_loop_f32(const float *x, int64_t n, int loop)
{
#ifdef PSM_HAVE_AVX2
    if (psm_simd_level() && n % 16 == 0)
        return psm_exp_sum_loop_avx2(x, n, loop);
#else
    (void)x;
    (void)loop;
#endif
    (void)n;
    return NAN;
}

void psm_log1p_f64(const double *in, int64_t n, int portable, double *out)
{
    int64_t j = 0;
#ifdef PSM_HAVE_AVX2
    if (!portable && psm_simd_level())
        while (j + 4 <= n) {
            /* as many as a finish takes at once (one lane out of range
             * sends them all to the scalar path), else one vector */
            int count = n - j >= PSM_FINISH_ROWS ? PSM_FINISH_ROWS : 4;
            double lanes[PSM_FINISH_ROWS];
            memcpy(lanes, in + j, sizeof(double) * (size_t)count);
            psm_log1p_avx2(lanes, count);
            memcpy(out + j, lanes, sizeof(double) * (size_t)count);
            j += count;
        }
#else
    (void)portable;
#endif
    for (; j < n; j++)
        out[j] = psm_log1p(in[j]);
}
