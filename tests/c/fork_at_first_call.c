/*
 * A fork whose prepare phase overlaps the pool's first threaded call.
 *
 * glibc >= 2.36 runs each pthread_atfork prepare handler with its
 * registration lock released, and skips in that fork the handlers registered
 * meanwhile.  A pool that registered its handlers at its first use could so
 * miss a fork that came during that use while holding its mutex: the child
 * inherited the mutex locked and hung.  This program forces that
 * interleaving.  Its prepare handler, registered in main (so after the
 * pool's, if the pool registers at load, and run before them), lets a second
 * thread make the process's first threaded call and returns once that
 * thread is inside pthread_create under the pool's mutex: the pool starts
 * its helpers there.  The wrapped pthread_create (ld's --wrap) then waits
 * for the fork to finish in the parent, up to half a second: a pool whose
 * prepare handler waits for its mutex lets that time pass, and its child
 * gets a fresh pool; a pool without handlers in this fork lets the fork
 * through with the mutex held, and the child's threaded call hangs until
 * its alarm kills it.
 *
 *   gcc -std=c11 -O2 -Icsrc tests/c/fork_at_first_call.c csrc/chunks.c \
 *       -lpthread -Wl,--wrap=pthread_create
 *   ./a.out         (prints "fork at first call: the child ran threaded")
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chunks.h"

#define CHUNKS 8

static atomic_int caller_may_start;    /* set by the prepare handler */
static atomic_int inside_create;       /* the caller's pool is starting a helper */
static atomic_int held_once;           /* the one pthread_create this test holds */
static atomic_int forked;              /* the fork finished, in the parent */

/* Waits up to `ms` for *flag to be set; 1 if it was. */
static int wait_for(atomic_int *flag, int ms)
{
    struct timespec tick = {0, 1000000};
    for (int waited = 0; waited < ms; waited++) {
        if (atomic_load(flag))
            return 1;
        nanosleep(&tick, NULL);
    }
    return atomic_load(flag);
}

int __real_pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *attr,
                          void *(*entry)(void *), void *arg)
{
    if (atomic_load(&caller_may_start) && !atomic_exchange(&held_once, 1)) {
        atomic_store(&inside_create, 1);
        wait_for(&forked, 500);
    }
    return __real_pthread_create(t, attr, entry, arg);
}

typedef struct {
    int64_t *slot;
} job;

static void chunk_square(const void *job_, int64_t chunk)
{
    const job *j = job_;
    j->slot[chunk] = chunk * chunk;
}

static int threaded_call_right(void)
{
    int64_t slot[CHUNKS];
    job j = {slot};
    psm_run_chunks(chunk_square, &j, CHUNKS, 2);
    for (int64_t c = 0; c < CHUNKS; c++)
        if (slot[c] != c * c)
            return 0;
    return 1;
}

static void *first_caller(void *unused)
{
    (void)unused;
    wait_for(&caller_may_start, 10000);
    return (void *)(long)threaded_call_right();
}

static void prepare(void)
{
    atomic_store(&caller_may_start, 1);
    if (!wait_for(&inside_create, 10000)) {
        fprintf(stderr, "the first call never started a helper\n");
        _exit(2);
    }
}

static void parent_after(void)
{
    atomic_store(&forked, 1);
}

int main(void)
{
    pthread_t caller;
    if (pthread_create(&caller, NULL, first_caller, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_atfork(prepare, parent_after, NULL);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        alarm(10);   /* a hung child dies (SIGALRM) and fails the test */
        _exit(threaded_call_right() ? 0 : 3);
    }
    int status;
    if (waitpid(child, &status, 0) != child) {
        perror("waitpid");
        return 1;
    }
    void *caller_right;
    pthread_join(caller, &caller_right);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "the child was killed by signal %d%s\n", WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? ": it hung in its threaded call" : "");
        return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !caller_right) {
        fprintf(stderr, "a threaded call gave wrong results (child status %d)\n", status);
        return 1;
    }
    printf("fork at first call: the child ran threaded\n");
    return 0;
}
