/*
 * Threads for the kernel's jobs: POSIX threads, started per call and joined
 * before it returns.  They need no OpenMP (absent from Apple's clang and from
 * some toolchains) and no state outside the call, so the kernel stays
 * reentrant; the start-up cost (tens of microseconds) is paid only by calls
 * with at least PSM_ELEMENTS_PER_THREAD logits for each thread.  Without
 * pthreads the kernel runs on the calling thread.
 */
#include "chunks.h"

#include <stddef.h>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define PSM_HAVE_PTHREADS 1
#endif

int64_t psm_chunk_positions(int64_t classes)
{
    int64_t positions = PSM_CHUNK_ELEMENTS / classes;
    return positions < 1 ? 1 : positions;
}

int psm_threads_for(int requested, int64_t elements)
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

typedef struct {
    psm_chunk_fn fn;
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

int psm_run_chunks(psm_chunk_fn fn, const void *job, int64_t chunks, int threads)
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
