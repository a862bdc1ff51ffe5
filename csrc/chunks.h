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
 * (chunks.c): from here on a second thread pays even when it was parked on
 * its condition variable; at half of it two threads still win on the loss
 * alone but not on the loss with its gradient (0.99x warm, 0.94x cold).
 *
 *   PYTHONPATH=/tmp/uncapped python bench/thread_threshold.py --rounds 101
 *
 * on a kernel built with -DPSM_ELEMENTS_PER_THREAD=1 (the script's docstring
 * has the build); 2-core AMD EPYC (Zen 3) VM shared with other jobs (load
 * average 7), so the figures are the minimum over 101 interleaved rounds,
 * us per call, threads=1 / threads=2 (stable, mean; +grad into out=):
 *
 *   shape     logits/thread     warm (back to back)     cold (after 2 ms idle)
 *   64x1000      32000  loss     35.7 /   35.9  0.99x     42.0 /   68.5  0.61x
 *                       +grad    67.2 /   42.0  1.60x     85.6 /   95.5  0.90x
 *   128x1000     64000  loss     68.0 /   36.0  1.89x     72.6 /   56.7  1.28x
 *                       +grad   122.6 /  123.2  0.99x    132.2 /  140.7  0.94x
 *   256x1000    128000  loss    134.2 /   68.8  1.95x    140.7 /   89.9  1.57x
 *                       +grad   231.8 /  124.6  1.86x    246.1 /  148.5  1.66x
 *   512x1000    256000  loss    264.8 /  135.8  1.95x    267.9 /  156.9  1.71x
 *   65536x10    327680  loss   3157.2 / 1671.1  1.89x   3163.1 / 1753.0  1.80x
 *
 * The threads started and joined per call before the pool (55-71 us each)
 * were given 16 times as much, 1 << 21. */
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
