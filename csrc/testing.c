/*
 * The test-only hooks of testing.h: the thread-local flag that sends a
 * thread's calls down the portable twins, the kernel's float exp over an
 * array, and the read-bandwidth probe, each with its AVX2 loop and the
 * scalar twin.  They share exp_f32.h and chunks.c with the kernel, so they measure
 * the code the kernel runs.
 */
#include "testing.h"

#include <math.h>
#include <stdlib.h>

#include "chunks.h"
#include "exp_f32.h"
#include "internal.h"

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

/* The kernel's only variable outside a call, and a thread's own: set by
 * tests, read by the entry points through psm_use_simd. */
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
#endif /* PSM_HAVE_AVX2 */

void psm_exp_f32(const float *in, int64_t n, int portable, float *out)
{
#ifdef PSM_HAVE_AVX2
    if (!portable && psm_simd_level()) {
        psm_exp_array_avx2(in, n, out);
        return;
    }
#else
    (void)portable;
#endif
    for (int64_t j = 0; j < n; j++)
        out[j] = psm_expf(in[j]);
}

typedef struct {
    const float *x;
    int64_t n;
    int simd;
    double *partials;
} probe_job;

static void probe_chunk(const void *job_, int64_t chunk)
{
    const probe_job *job = job_;
    int64_t first = chunk * PSM_CHUNK_ELEMENTS;
    int64_t len = job->n - first < PSM_CHUNK_ELEMENTS ? job->n - first : PSM_CHUNK_ELEMENTS;
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

double psm_read_probe_f32(const float *x, int64_t n, int threads, int portable)
{
    int64_t chunks = (n + PSM_CHUNK_ELEMENTS - 1) / PSM_CHUNK_ELEMENTS;
    double *partials = malloc((size_t)(chunks ? chunks : 1) * sizeof *partials);
    if (partials == NULL)
        return NAN;
    probe_job job = {x, n, !portable && psm_simd_level(), partials};
    psm_run_chunks(probe_chunk, &job, chunks, psm_threads_for(threads, n));
    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        total += partials[c];
    free(partials);
    return total;
}
