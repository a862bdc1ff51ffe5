/*
 * Threads for the kernel's jobs: a pool of threads (POSIX or Win32, through
 * sys_threads.h), started the first time a call wants them and parked
 * between calls.  No OpenMP (absent from Apple's clang and from some
 * toolchains).
 *
 * Starting and joining threads per call cost 55-71 us on the benchmark
 * machine; a parked helper is woken in a few.  The pool is the kernel's one
 * piece of shared state, so everything about it is under one mutex but the
 * chunk counter and two words that parked threads watch while they spin:
 *
 *   - one call at a time owns the pool; a call that finds it owned starts
 *     threads of its own for that call and joins them (the pool's cost, not
 *     its results, depends on who else is calling);
 *   - a run's chunks are claimed one at a time from an atomic counter by
 *     the caller and the helpers that take a seat in it (at most the
 *     caller's thread count less one); which thread runs a chunk never
 *     changes its bits, since each chunk writes only its own slots and the
 *     caller sums them in order;
 *   - helpers spin briefly after a run (so that calls made back to back
 *     find them awake), then sleep on a condition variable, so an idle
 *     process burns no CPU;
 *   - on POSIX, at exit a destructor stops and joins them: a thread still
 *     parked at exit leaves its thread-local block where valgrind reports it
 *     "possibly lost" (glibc's allocate_dtv); later calls, if any, start
 *     threads of their own.  Not on Windows, where the process's other
 *     threads are gone by the time a DLL's destructors run, perhaps
 *     leaving the mutex held;
 *   - fork (POSIX): pthread_atfork handlers, registered when the library
 *     is loaded, hold the mutex across the fork, and the child, which has
 *     none of the parent's helpers, forgets them and starts its own when it
 *     needs them.
 *
 * A thread that cannot be started leaves its share to the caller.  Without
 * threads (or C11 atomics) the kernel runs on the calling thread, and
 * psm_max_threads says so.
 */
#if defined(__unix__) || defined(__APPLE__)
/* clock_gettime, pthread_sigmask under -std=c11 */
#define _POSIX_C_SOURCE 200809L
#endif

#include "chunks.h"

#include <stddef.h>

#include "sys_threads.h"

#ifdef PSM_HAVE_THREADS
#include <stdatomic.h>
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

#ifndef PSM_HAVE_THREADS

int psm_max_threads(void)
{
    return 1;
}

int psm_run_chunks(psm_chunk_fn fn, const void *job, int64_t chunks, int threads)
{
    (void)threads;
    for (int64_t c = 0; c < chunks; c++)
        fn(job, c);
    return PSM_OK;
}

#else

int psm_max_threads(void)
{
    return PSM_MAX_THREADS;
}

/* One call's chunks, on the caller's stack until every thread in it has
 * left. */
typedef struct {
    psm_chunk_fn fn;
    const void *job;
    int64_t chunks;
    atomic_int_fast64_t next;   /* the next chunk to claim */
} run;

/* Runs chunks of r until none is left.  The counter needs no ordering: the
 * job was published to the helpers under the pool's mutex, and their
 * results come back through it (or through `active`). */
static void claim_chunks(run *r)
{
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&r->next, 1, memory_order_relaxed);
        if (c >= r->chunks)
            return;
        r->fn(r->job, c);
    }
}

/* ---- the fallback: threads of this call's own ---------------------------- */

static PSM_THREAD_ENTRY claim_thread(void *r)
{
    claim_chunks(r);
    return 0;
}

static void run_on_new_threads(run *r, int helpers)
{
    psm_thread ids[PSM_MAX_THREADS];
    int started = 0;
    while (started < helpers && thread_start(&ids[started], claim_thread, r) == 0)
        started++;
    claim_chunks(r);
    for (int t = 0; t < started; t++)
        thread_join(ids[t]);
}

/* ---- the pool ------------------------------------------------------------- */

/* How long a helper watches for the next run before it sleeps, and how long
 * the caller watches its last helpers finish: back-to-back calls (a loop of
 * small batches, a Python thread's next call) come within tens of
 * microseconds, and a futex wake costs a few more.  Short enough that a
 * pool left idle stops using CPU at once. */
#define PSM_SPIN_NS 50000

static struct {
    psm_mutex lock;
    psm_cond wake;             /* helpers: a run was opened */
    psm_cond done;             /* the owner: the last helper left its run */
    int owned;                 /* a call owns the pool */
    int helpers;               /* helpers started (and alive) */
    int sleeping;              /* helpers waiting on `wake` */
    int seats;                 /* helpers the open run still takes */
    int owner_waiting;         /* the owner waits on `done` */
    int stopping;              /* the process is exiting: no more runs */
    run *open;                 /* the run helpers may join, or NULL */
    atomic_int active;         /* helpers inside a run (changed under lock) */
    atomic_ulong opened;       /* runs opened so far (changed under lock) */
    psm_thread ids[PSM_MAX_THREADS - 1];
} pool = {.lock = PSM_MUTEX_INIT, .wake = PSM_COND_INIT, .done = PSM_COND_INIT};

/* Spins until `word` is no longer `value` (1) or PSM_SPIN_NS have passed
 * (0).  Reads only: a hint to take the mutex, never a synchronization. */
static int spin_while_equal(atomic_ulong *word, unsigned long value)
{
    int64_t deadline = now_ns() + PSM_SPIN_NS;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(word, memory_order_relaxed) != value)
            return 1;
        cpu_relax();
        if (i % 64 == 0 && now_ns() > deadline)
            return 0;
    }
}

static int run_open_to_helpers(void)
{
    return pool.open != NULL && pool.seats > 0;
}

static PSM_THREAD_ENTRY helper_main(void *unused)
{
    (void)unused;
    mutex_lock(&pool.lock);
    for (;;) {
        while (!pool.stopping && !run_open_to_helpers()) {
            unsigned long seen = atomic_load_explicit(&pool.opened, memory_order_relaxed);
            mutex_unlock(&pool.lock);
            int moved = spin_while_equal(&pool.opened, seen);
            mutex_lock(&pool.lock);
            if (!moved && !pool.stopping && !run_open_to_helpers()) {
                pool.sleeping++;
                cond_wait(&pool.wake, &pool.lock);
                pool.sleeping--;
            }
        }
        if (pool.stopping)
            break;
        run *r = pool.open;
        pool.seats--;
        atomic_fetch_add(&pool.active, 1);
        mutex_unlock(&pool.lock);
        claim_chunks(r);
        mutex_lock(&pool.lock);
        if (atomic_fetch_sub(&pool.active, 1) == 1 && pool.owner_waiting)
            cond_signal(&pool.done);
    }
    mutex_unlock(&pool.lock);
    return 0;
}

/* Starts helpers until there are `wanted` (under the lock). */
static void start_helpers(int wanted)
{
    while (pool.helpers < wanted &&
           thread_start(&pool.ids[pool.helpers], helper_main, NULL) == 0)
        pool.helpers++;
}

#ifdef PSM_HAVE_FORK

/* fork: no thread may be inside the pool's mutex when the process is copied,
 * and the child has only the forking thread: no helper, no owner (another
 * parent thread's run is not the child's), nobody waiting. */
static void before_fork(void)
{
    mutex_lock(&pool.lock);
}

static void after_fork_in_parent(void)
{
    mutex_unlock(&pool.lock);
}

static void after_fork_in_child(void)
{
    pool.stopping = pool.owned = pool.helpers = pool.sleeping = pool.seats = pool.owner_waiting = 0;
    pool.open = NULL;
    atomic_store(&pool.active, 0);
    /* fresh objects rather than the copies: the parent's helpers may have
     * been waiting on them */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
}

static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;

static void register_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

#if defined(__GNUC__) || defined(__clang__)
#define PSM_FORK_HANDLERS_AT_LOAD 1
/* Registered when the library is loaded, before any thread can call it, not
 * at the pool's first use.  glibc >= 2.36 runs each prepare handler with its
 * registration lock released and skips, in that fork, the handlers
 * registered meanwhile.  A thread making the pool's first call while another
 * thread forked could register these handlers too late for that fork and
 * hold the mutex as it happened: the child inherited the mutex locked and
 * hung at its first threaded call (1 run in 20-40 of the fork test under
 * load; tests/c/fork_at_first_call.c forces it).  Python imports the module
 * under the GIL, which os.fork holds. */
__attribute__((constructor)) static void register_fork_handlers_at_load(void)
{
    pthread_once(&fork_handlers_once, register_fork_handlers);
}
#endif
#endif /* PSM_HAVE_FORK */

/* Runs r on the pool with up to `helpers` helpers; 0 if another call owns
 * the pool (r untouched). */
static int run_on_pool(run *r, int helpers)
{
#if defined(PSM_HAVE_FORK) && !defined(PSM_FORK_HANDLERS_AT_LOAD)
    /* at first use, for a compiler without constructors */
    pthread_once(&fork_handlers_once, register_fork_handlers);
#endif
    mutex_lock(&pool.lock);
    if (pool.owned || pool.stopping) {
        mutex_unlock(&pool.lock);
        return 0;
    }
    pool.owned = 1;
    start_helpers(helpers);
    pool.open = r;
    pool.seats = helpers;
    atomic_fetch_add(&pool.opened, 1);
    for (int k = 0; k < pool.sleeping && k < helpers; k++)
        cond_signal(&pool.wake);
    mutex_unlock(&pool.lock);

    claim_chunks(r);

    /* Closed to late helpers; then wait for those inside (each finishing
     * its last chunk), spinning first since that is usually short. */
    mutex_lock(&pool.lock);
    pool.open = NULL;
    pool.seats = 0;
    if (atomic_load(&pool.active) > 0) {
        mutex_unlock(&pool.lock);
        int64_t deadline = now_ns() + PSM_SPIN_NS;
        for (unsigned i = 1; atomic_load(&pool.active) > 0; i++) {
            cpu_relax();
            if (i % 64 == 0 && now_ns() > deadline)
                break;
        }
        mutex_lock(&pool.lock);
        pool.owner_waiting = 1;
        while (atomic_load(&pool.active) > 0)
            cond_wait(&pool.done, &pool.lock);
        pool.owner_waiting = 0;
    }
    pool.owned = 0;
    mutex_unlock(&pool.lock);
    return 1;
}

#if (defined(__GNUC__) || defined(__clang__)) && defined(PSM_HAVE_FORK)
/* At exit (or unload): each helper leaves at its next look at the pool,
 * after the chunk it is running if any, and is joined.  A run still open
 * (a thread calling the kernel as the process exits) is finished by its
 * owner. */
__attribute__((destructor)) static void stop_helpers(void)
{
    mutex_lock(&pool.lock);
    pool.stopping = 1;
    int helpers = pool.helpers;
    pool.helpers = 0;
    cond_broadcast(&pool.wake);
    mutex_unlock(&pool.lock);
    for (int t = 0; t < helpers; t++)
        thread_join(pool.ids[t]);
}
#endif

int psm_run_chunks(psm_chunk_fn fn, const void *job, int64_t chunks, int threads)
{
    run r;
    r.fn = fn;
    r.job = job;
    r.chunks = chunks;
    atomic_init(&r.next, 0);
    if (threads > PSM_MAX_THREADS)   /* the pool's and the fallback's arrays */
        threads = PSM_MAX_THREADS;
    if (threads > chunks)
        threads = (int)chunks;
    if (threads <= 1)
        claim_chunks(&r);
    else if (!run_on_pool(&r, threads - 1))
        run_on_new_threads(&r, threads - 1);
    return PSM_OK;
}

#endif /* PSM_HAVE_THREADS */
