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
/* Chunks of whole positions, sized by the shape alone, so that the sum of
 * their losses, taken in order, is the same for every thread count. */
static int64_t chunk_positions_for(int64_t classes)
{
    int64_t positions = PSM_CHUNK_ELEMENTS / classes;
    return positions < 1 ? 1 : positions;
}

/* Less work than this per thread is not worth starting one: a thread costs
 * tens of microseconds to start (about 50 on the benchmark machine), this
 * much work about a millisecond. */
#define PSM_ELEMENTS_PER_THREAD (1 << 21)

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

/* A label, read exactly once: the caller's labels may change under a call
 * (another thread writing the array), so the value that is bounded must be
 * the value that is used as an index, never a second load of it. */
static int64_t read_label(const int64_t *labels, int64_t pos)
{
    return ((const volatile int64_t *)labels)[pos];
}

int64_t psm_label_summary(const int64_t *labels, int64_t positions,
                          int64_t classes, const psm_options *opt,
                          int64_t *valid, double *label_weight_sum)
{
    if (opt == NULL || valid == NULL || label_weight_sum == NULL ||
        positions < 0 || classes < 1)
        return PSM_BAD_ARGUMENT;
    if (labels == NULL) {
        *valid = positions;
        *label_weight_sum = (double)positions;
        return PSM_OK;
    }
    const double *w = opt->class_weight;
    int64_t count = 0;
    double weight_sum = 0.0;
    for (int64_t pos = 0; pos < positions; pos++) {
        int64_t y = read_label(labels, pos);
        if (opt->use_ignore_index && y == opt->ignore_index)
            continue;
        if (y < 0 || y >= classes)
            return pos + 1;
        count++;
        weight_sum += w ? w[y] : 1.0;
    }
    *valid = count;
    *label_weight_sum = weight_sum;
    return PSM_OK;
}

double psm_normalizer(int reduction, int64_t valid, double label_weight_sum,
                      int64_t positions, int64_t outer)
{
    switch (reduction) {
    case PSM_MEAN:       return label_weight_sum;
    case PSM_VALID:      return fmax(1.0, (double)valid);
    case PSM_FULL:       return fmax(1.0, (double)positions);
    case PSM_BATCH_SIZE: return fmax(1.0, (double)outer);
    }
    return 1.0;
}

double psm_reduce(int reduction, double total, double normalizer)
{
    if (reduction == PSM_NONE || reduction == PSM_SUM)
        return total;
    /* a weighted mean over no weight: PyTorch's 0 / 0, even where label
     * smoothing made the total nonzero */
    return normalizer == 0.0 ? NAN : total / normalizer;
}

/* What each loss's gradient is multiplied by: NaN where the loss is. */
static double gradient_scale(double normalizer)
{
    return normalizer == 0.0 ? NAN : 1.0 / normalizer;
}

/* Checks every label (before anything is written) and finds what the call's
 * reduction divides by: the caller's normalizer, or the reduction's own. */
static int64_t call_normalizer(const int64_t *labels, int64_t outer,
                               int64_t inner, int64_t classes,
                               const psm_options *opt, double *normalizer)
{
    int64_t valid;
    double label_weight_sum;
    int64_t status = psm_label_summary(labels, outer * inner, classes, opt, &valid,
                                       &label_weight_sum);
    if (status != PSM_OK)
        return status;
    *normalizer = opt->has_normalizer
        ? opt->normalizer
        : psm_normalizer(opt->reduction, valid, label_weight_sum, outer * inner, outer);
    return PSM_OK;
}

/* A block of [class_offset, class_offset + classes) within total_classes. */
static int block_ok(int64_t classes, int64_t class_offset, int64_t total_classes)
{
    return class_offset >= 0 && total_classes >= classes &&
           class_offset <= total_classes - classes;
}

/* What a state summed, counted against a max at least its own (against -inf
 * it was 0, or NaN, which must stay): the online normalizer's rescaling. */
static double rest_against(const psm_partial *p, double max)
{
    if (p->max == max)
        return p->rest;
    return (p->rest + p->ties) * (p->max == -INFINITY ? 0.0 : exp(p->max - max));
}

static double cross_against(const psm_partial *p, double max)
{
    if (p->max == max || p->cross_mass == 0.0)
        return p->cross;
    return p->cross + p->cross_mass * (max - p->max);
}

void psm_combine_partials(int64_t positions, const psm_partial *part,
                          psm_partial *into)
{
    for (int64_t k = 0; k < positions; k++) {
        const psm_partial *a = &into[k], *b = &part[k];
        double max = a->max > b->max ? a->max : b->max;
        psm_partial merged = {
            max,
            rest_against(a, max) + rest_against(b, max),
            (a->max == max ? a->ties : 0.0) + (b->max == max ? b->ties : 0.0),
            cross_against(a, max) + cross_against(b, max),
            a->cross_mass + b->cross_mass,
            a->mass + b->mass,
            b->label_found ? b->label_logit : a->label_logit,
            a->label_found + b->label_found,
            a->cross_inf | b->cross_inf,
        };
        into[k] = merged;
    }
}

#define REAL float
#define FN(name) name##_f32
#define LANE_SUMS 1
#define EXP psm_expf
#define LOG logf
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
#undef BIG
#undef FLOAT_ROWS
#undef LANE_SUMS

#define REAL double
#define FN(name) name##_f64
#define LANE_SUMS 0
#define EXP exp
#define LOG log
#define BIG DBL_MAX
#define FLOAT_ROWS 0
#include "softmax_loss_impl.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
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
