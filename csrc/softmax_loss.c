/*
 * The kernel's entry points: softmax_loss_impl.h instantiated for float
 * (with the AVX2 rows of rows_avx2.h) and for double, plus CPU dispatch and
 * threads.
 *
 * CPU dispatch: the AVX2+FMA code is compiled through target attributes and
 * chosen at run time with __builtin_cpu_supports, so the build needs no
 * host-specific flags and runs on any x86-64 (or other) CPU.
 *
 * Threads: POSIX threads, started per call and joined before it returns.
 * They need no OpenMP (absent from Apple's clang and from some toolchains)
 * and no state outside the call, so the kernel stays reentrant; the start-up
 * cost (tens of microseconds) is paid only by calls with at least
 * PSM_ELEMENTS_PER_THREAD logits for each thread.  Without pthreads the
 * kernel runs on the calling thread.
 */
#include "softmax_loss.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* A row is read in blocks of this many logits: 8 KB of float, in L1. */
#define PSM_BLOCK 2048

#include "exp_f32.h"
#include "rows_avx2.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define PSM_HAVE_PTHREADS 1
#endif

/* Work is split into chunks of whole positions holding about this many
 * logits; the chunking depends on the shape alone, never on the threads. */
#define PSM_CHUNK_ELEMENTS 32768
/* Less work than this per thread is not worth starting one: a thread costs
 * tens of microseconds to start (about 50 on the benchmark machine), this
 * much work about a millisecond. */
#define PSM_ELEMENTS_PER_THREAD (1 << 21)
#define PSM_MAX_THREADS 256

int psm_simd_level(void)
{
#ifdef PSM_HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int use_simd(const psm_options *opt)
{
    return !opt->portable && psm_simd_level();
}

static int threads_for(int requested, int64_t elements)
{
    int64_t useful = elements / PSM_ELEMENTS_PER_THREAD;
    if (useful < 1)
        useful = 1;
    if (requested < 1)
        requested = 1;
    if (requested > PSM_MAX_THREADS)
        requested = PSM_MAX_THREADS;
    return useful < requested ? (int)useful : requested;
}

typedef void (*chunk_fn)(const void *job, int64_t chunk);

typedef struct {
    chunk_fn fn;
    const void *job;
    int64_t chunks;
    int stride, first;   /* this worker takes chunks first, first + stride, ... */
} worker;

static void work(const worker *w)
{
    for (int64_t c = w->first; c < w->chunks; c += w->stride)
        w->fn(w->job, c);
}

#ifdef PSM_HAVE_PTHREADS
static void *work_thread(void *w)
{
    work(w);
    return NULL;
}
#endif

/* Runs fn on every chunk, on up to `threads` threads (the caller's among
 * them).  A thread that cannot be started leaves its share to the caller. */
static int run_chunks(chunk_fn fn, const void *job, int64_t chunks, int threads)
{
    if (threads > chunks)
        threads = (int)chunks;
    if (threads < 1)
        threads = 1;
    worker workers[PSM_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        workers[t].fn = fn;
        workers[t].job = job;
        workers[t].chunks = chunks;
        workers[t].stride = threads;
        workers[t].first = t;
    }
#ifdef PSM_HAVE_PTHREADS
    pthread_t ids[PSM_MAX_THREADS];
    int started[PSM_MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&ids[t], NULL, work_thread, &workers[t]) == 0;
    work(&workers[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(ids[t], NULL);
        else
            work(&workers[t]);
    }
#else
    for (int t = 0; t < threads; t++)
        work(&workers[t]);
#endif
    return PSM_OK;
}

/* Arguments every entry point checks; the Python layer validates first, this
 * only keeps a direct C caller from walking off its arrays. */
static int shape_ok(const void *logits, int64_t outer, int64_t classes,
                    int64_t inner, int method)
{
    if (outer < 0 || classes < 1 || inner < 0)
        return 0;
    if (method != PSM_NAIVE && method != PSM_MAXSUB && method != PSM_STABLE)
        return 0;
    return outer == 0 || inner == 0 || logits != NULL;
}

static int options_ok(const void *logits, int64_t outer, int64_t classes,
                      int64_t inner, const int64_t *labels,
                      const void *target_probs, const psm_options *opt)
{
    if (opt == NULL || !shape_ok(logits, outer, classes, inner, opt->method))
        return 0;
    if (opt->reduction < PSM_NONE || opt->reduction > PSM_BATCH_SIZE)
        return 0;
    if (!(opt->label_smoothing >= 0.0 && opt->label_smoothing <= 1.0))
        return 0;
    /* exactly one kind of target, unless there is nothing to compute */
    return outer == 0 || inner == 0 || (labels == NULL) != (target_probs == NULL);
}

#define REAL float
#define FN(name) name##_f32
#define LANE_SUMS 1
#define EXP psm_expf
#define LOG logf
#define TINY FLT_MIN
#define BIG FLT_MAX
#ifdef PSM_HAVE_AVX2
#define FLOAT_ROWS 1
#else
#define FLOAT_ROWS 0
#endif
#include "softmax_loss_impl.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef TINY
#undef BIG
#undef FLOAT_ROWS
#undef LANE_SUMS

#define REAL double
#define FN(name) name##_f64
#define LANE_SUMS 0
#define EXP exp
#define LOG log
#define TINY DBL_MIN
#define BIG DBL_MAX
#define FLOAT_ROWS 0
#include "softmax_loss_impl.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef TINY
#undef BIG
#undef FLOAT_ROWS
#undef LANE_SUMS

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
    run_chunks(probe_chunk, &job, chunks, threads_for(threads, n));
    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        total += partials[c];
    free(partials);
    return total;
}
