/*
 * A call's positions cut into chunks and run on threads (chunks.c).
 *
 * Chunks hold whole positions and are sized by the shape alone, never by the
 * thread count, so that the sum of their losses, taken in order, is the same
 * for every thread count: threads change how fast, never which bits.
 *
 * (Not named threads.h: with -Icsrc it would shadow C11's <threads.h>.)
 */
#ifndef PYSAFEMAX_CHUNKS_H
#define PYSAFEMAX_CHUNKS_H

#include <stdint.h>

#include "internal.h"

/* A chunk holds about this many logits. */
#define PSM_CHUNK_ELEMENTS 32768

/* Less work than this per thread is not worth waking one from the pool
 * (chunks.c).  At this much a second thread pays even when it was parked on
 * its condition variable; half of it pays only when the helper is still
 * spinning from the call before.  Measured by bench/thread_threshold.py on a
 * kernel built with -DPSM_ELEMENTS_PER_THREAD=1 (its docstring has the
 * build), 2-core AMD EPYC (Zen 3) VM shared with other jobs, so the figures
 * are the minimum over 41 interleaved rounds, us per call, threads=1 / 2
 * (loss, stable, mean; +grad into out=):
 *
 *   shape      logits/thread   warm (back to back)    cold (after 2 ms idle)
 *   64x1000     32000 loss     35.5 / 20.6  1.72x     52.7 / 81.3  0.65x
 *                     +grad    67.0 / 80.4  0.83x    106.3 / 171.5 0.62x
 *   128x1000    64000 loss     68.3 / 37.3  1.83x     71.8 / 77.1  0.93x
 *                     +grad   123.2 / 72.9  1.69x    150.3 / 142.0 1.06x
 *   256x1000   128000 loss    136.0 / 71.5  1.90x    139.6 / 100.0 1.40x
 *                     +grad   234.8 / 133.1 1.76x    241.7 / 146.6 1.65x
 *   65536x10   327680 loss   3213.7 / 1697.7 1.89x  3219.3 / 1742.6 1.85x
 *
 * With threads started per call (before the pool) the break-even was about
 * 16 times higher, 1 << 21: 55-71 us to start and join a thread. */
#ifndef PSM_ELEMENTS_PER_THREAD
#define PSM_ELEMENTS_PER_THREAD (1 << 17)
#endif

/* The work of one chunk of a job; the job is shared, read-only but for the
 * chunk's own output slots. */
typedef void (*psm_chunk_fn)(const void *job, int64_t chunk);

/* How many whole positions of `classes` logits make a chunk (at least 1). */
PSM_INTERNAL int64_t psm_chunk_positions(int64_t classes);

/* How many threads `elements` logits are worth, at most `requested` (< 1:
 * one) and at most PSM_MAX_THREADS. */
PSM_INTERNAL int psm_threads_for(int requested, int64_t elements);

/* Runs fn on every chunk, on up to `threads` threads (the caller's and the
 * pool's helpers, or threads of its own when another call has the pool),
 * and returns when all are done.  Any thread may run any chunk: fn must
 * write only the chunk's own slots.  A thread that cannot be started leaves
 * its share to the caller.  Reentrant and fork-safe.  Returns PSM_OK. */
PSM_INTERNAL int psm_run_chunks(psm_chunk_fn fn, const void *job, int64_t chunks,
                                int threads);

#endif /* PYSAFEMAX_CHUNKS_H */
