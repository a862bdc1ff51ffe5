/*
 * The thread pool of csrc/chunks.c under callers that race each other and a
 * process that forks meanwhile:
 *
 *   - four threads call psm_run_chunks at once, with 2 to 4 threads and 1 to
 *     64 chunks, so that the pool is owned, free, or refused (the refused
 *     call starts threads of its own) from one call to the next; each sum,
 *     taken in chunk order, must be the bits of the same chunks on one
 *     thread;
 *   - the main thread forks meanwhile, many times: the fork lands while a
 *     caller holds the pool's mutex, owns the pool or waits for its helpers,
 *     and the child, which has none of them, must still run threaded calls
 *     and exit.  Without the pool's pthread_atfork handlers a child sooner or
 *     later inherits a locked mutex and hangs, until its alarm kills it.
 *
 *   gcc -std=c11 -O2 -Icsrc tests/c/pool_stress.c csrc/chunks.c -lpthread
 *   ./a.out [forks]       (default 1000; prints "pool stress: all checks passed")
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chunks.h"

#define MAX_CHUNKS 64
#define PER_CHUNK 1000
#define CALLERS 4
#define CALLS 3000

typedef struct {
    const double *x;
    double *slot;
} job;

static double data[MAX_CHUNKS * PER_CHUNK];
static double alone[MAX_CHUNKS + 1];   /* the sum of c chunks on one thread */

static void chunk_sum(const void *job_, int64_t chunk)
{
    const job *j = job_;
    double s = 0.0;
    for (int64_t i = 0; i < PER_CHUNK; i++)
        s += j->x[chunk * PER_CHUNK + i];
    j->slot[chunk] = s;
}

static double run(int threads, int64_t chunks)
{
    double slot[MAX_CHUNKS];
    job j = {data, slot};
    psm_run_chunks(chunk_sum, &j, chunks, threads);
    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        total += slot[c];
    return total;
}

static void *caller(void *arg)
{
    long id = (long)arg;
    for (int r = 0; r < CALLS; r++) {
        int64_t chunks = 1 + (r * 7 + id) % MAX_CHUNKS;
        int threads = 2 + (int)((r + id) % 3);
        if (run(threads, chunks) != alone[chunks]) {
            fprintf(stderr, "caller %ld: %d threads over %lld chunks: a different sum\n",
                    id, threads, (long long)chunks);
            exit(1);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int forks = argc > 1 ? atoi(argv[1]) : 1000;
    for (int i = 0; i < MAX_CHUNKS * PER_CHUNK; i++)
        data[i] = (i % 97) * 0.25 + 1.0 / (1 + i % 13);
    for (int c = 1; c <= MAX_CHUNKS; c++)
        alone[c] = run(1, c);

    pthread_t callers[CALLERS];
    for (long t = 0; t < CALLERS; t++) {
        if (pthread_create(&callers[t], NULL, caller, (void *)t) != 0) {
            fprintf(stderr, "cannot start caller %ld\n", t);
            return 1;
        }
    }
    for (int f = 0; f < forks; f++) {
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            return 1;
        }
        if (child == 0) {
            alarm(20);   /* a hung child dies (SIGALRM) and fails the test */
            _exit(run(3, MAX_CHUNKS) == alone[MAX_CHUNKS] && run(2, 5) == alone[5] ? 0 : 3);
        }
        int status;
        if (waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0) {
            fprintf(stderr, "fork %d: the child failed\n", f);
            return 1;
        }
    }
    for (int t = 0; t < CALLERS; t++)
        pthread_join(callers[t], NULL);
    printf("pool stress: all checks passed\n");
    return 0;
}
