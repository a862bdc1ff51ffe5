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

/* Less work than this per thread is not worth starting one: a thread costs
 * tens of microseconds to start (about 50 on the benchmark machine), this
 * much work about a millisecond. */
#define PSM_ELEMENTS_PER_THREAD (1 << 21)

/* The work of one chunk of a job; the job is shared, read-only but for the
 * chunk's own output slots. */
typedef void (*psm_chunk_fn)(const void *job, int64_t chunk);

/* How many whole positions of `classes` logits make a chunk (at least 1). */
PSM_INTERNAL int64_t psm_chunk_positions(int64_t classes);

/* How many threads `elements` logits are worth, at most `requested` (< 1:
 * one) and at most PSM_MAX_THREADS. */
PSM_INTERNAL int psm_threads_for(int requested, int64_t elements);

/* Runs fn on every chunk, on up to `threads` threads (the caller's among
 * them), and returns when all are done.  A thread that cannot be started
 * leaves its share to the caller.  Returns PSM_OK. */
PSM_INTERNAL int psm_run_chunks(psm_chunk_fn fn, const void *job, int64_t chunks,
                                int threads);

#endif /* PYSAFEMAX_CHUNKS_H */
