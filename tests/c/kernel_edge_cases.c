/*
 * C-level edge cases of the kernel, for valgrind and the sanitizers (see
 * .ci/run): every entry point on the shapes and values where indexing and
 * special values go wrong.  Arrays are allocated at their exact size so that
 * any read or write past them is reported.  Exits non-zero on a wrong result.
 * Built for Windows (mingw-w64, run under wine) and aarch64 too: see
 * .ci/cross.sh.
 */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L   /* sys_threads.h's clock_gettime, pthread_sigmask */
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunks.h"   /* psm_run_chunks: the pool itself */
#include "softmax_loss.h"
#include "sys_threads.h"
#include "testing.h"

#ifdef PSM_HAVE_THREADS
#include <stdatomic.h>
#endif

static int failures = 0;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                \
            failures++;                                                    \
        }                                                                  \
    } while (0)

/* equal to within tol, relative and absolute, or both NaN */
static int agree(double a, double b, double tol)
{
    return (isnan(a) && isnan(b)) || fabs(a - b) <= tol * (1 + fabs(b));
}

static float *floats(int64_t n, unsigned seed)
{
    float *a = malloc((size_t)(n ? n : 1) * sizeof *a);
    for (int64_t k = 0; k < n; k++) {
        seed = seed * 1103515245u + 12345u;
        a[k] = (float)((int)(seed >> 16) % 2000 - 1000) / 37.0f;
    }
    return a;
}

static double *doubles(int64_t n, unsigned seed)
{
    double *a = malloc((size_t)(n ? n : 1) * sizeof *a);
    float *f = floats(n, seed);
    for (int64_t k = 0; k < n; k++)
        a[k] = f[k];
    free(f);
    return a;
}

static int64_t *labels_for(int64_t n, int64_t classes)
{
    int64_t *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    for (int64_t k = 0; k < n; k++)
        y[k] = (k * 7 + 3) % classes;
    return y;
}

static psm_options options(int method, int reduction)
{
    psm_options o;
    memset(&o, 0, sizeof o);
    o.method = method;
    o.reduction = reduction;
    return o;
}

/* Every method and reduction on one shape, with a gradient, in both types;
 * float and double must agree to float precision where both are finite. */
static void shape_sweep(int64_t outer, int64_t classes, int64_t inner)
{
    int64_t n = outer * classes * inner, positions = outer * inner;
    float *x = floats(n, (unsigned)(outer * 131 + classes * 7 + inner));
    double *xd = doubles(n, (unsigned)(outer * 131 + classes * 7 + inner));
    int64_t *y = labels_for(positions, classes);
    float *losses = malloc((size_t)(positions ? positions : 1) * sizeof *losses);
    double *losses_d = malloc((size_t)(positions ? positions : 1) * sizeof *losses_d);
    float *grad = malloc((size_t)(n ? n : 1) * sizeof *grad);
    double *grad_d = malloc((size_t)(n ? n : 1) * sizeof *grad_d);
    double *weight = malloc((size_t)classes * sizeof *weight);
    float *probs = malloc((size_t)(n ? n : 1) * sizeof *probs);
    float *lse = malloc((size_t)(positions ? positions : 1) * sizeof *lse);
    double *lse_d = malloc((size_t)(positions ? positions : 1) * sizeof *lse_d);
    for (int64_t c = 0; c < classes; c++)
        weight[c] = 0.5 + (double)c / (double)classes;
    for (int64_t k = 0; k < n; k++)
        probs[k] = 1.0f / (float)classes;

    for (int method = PSM_NAIVE; method <= PSM_STABLE; method++) {
        for (int reduction = PSM_NONE; reduction <= PSM_BATCH_SIZE; reduction++) {
            psm_options o = options(method, reduction);
            double loss = 0, loss_d = 0;
            CHECK(psm_softmax_loss_f32(x, outer, classes, inner, y, NULL, &o,
                                       losses, &loss, grad) == PSM_OK);
            CHECK(psm_softmax_loss_f64(xd, outer, classes, inner, y, NULL, &o,
                                       losses_d, &loss_d, grad_d) == PSM_OK);
            if (method == PSM_STABLE) {
                CHECK(agree(loss, loss_d, 1e-5));
                for (int64_t k = 0; k < n; k++)
                    CHECK(agree(grad[k], grad_d[k], 1e-6));
            }
            if (inner == 1) {   /* the loss alone, by value: its bits */
                double plain, plain_d;
                CHECK(psm_softmax_loss_f32(x, outer, classes, 1, y, NULL, &o, NULL, &plain,
                                           NULL) == PSM_OK);
                CHECK(psm_softmax_loss_f64(xd, outer, classes, 1, y, NULL, &o, NULL, &plain_d,
                                           NULL) == PSM_OK);
                double value = psm_softmax_loss_value_f32(x, outer, classes, y, &o);
                double value_d = psm_softmax_loss_value_f64(xd, outer, classes, y, &o);
                CHECK(isnan(plain) ? isnan(value) : memcmp(&value, &plain, sizeof plain) == 0);
                CHECK(isnan(plain_d) ? isnan(value_d)
                                     : memcmp(&value_d, &plain_d, sizeof plain_d) == 0);
            }
            /* every option at once, and probability targets */
            o.class_weight = weight;
            o.label_smoothing = 0.25;
            o.z_loss = 0.5;
            o.use_ignore_index = 1;
            o.ignore_index = 1;
            CHECK(psm_softmax_loss_f32(x, outer, classes, inner, y, NULL, &o,
                                       losses, &loss, grad) == PSM_OK);
            /* the log-sum-exp of every position, ignored ones too */
            CHECK(psm_softmax_loss_lse_f32(x, outer, classes, inner, y, NULL, &o,
                                           NULL, &loss, grad, lse) == PSM_OK);
            CHECK(psm_softmax_loss_lse_f64(xd, outer, classes, inner, y, NULL, &o,
                                           NULL, &loss_d, NULL, lse_d) == PSM_OK);
            for (int64_t k = 0; method == PSM_STABLE && k < positions; k++)
                CHECK(agree(lse[k], lse_d[k], 1e-6));
            o.use_ignore_index = 0;
            CHECK(psm_softmax_loss_f32(x, outer, classes, inner, NULL, probs, &o,
                                       NULL, &loss, grad) == PSM_OK);
        }
        CHECK(psm_softmax_f32(x, outer, classes, inner, method, 2, grad) == PSM_OK);
        CHECK(psm_softmax_f64(xd, outer, classes, inner, method, 2, grad_d) == PSM_OK);
    }
    CHECK(psm_log_softmax_f32(x, outer, classes, inner, 2, grad) == PSM_OK);
    CHECK(psm_log_softmax_f64(xd, outer, classes, inner, 2, grad_d) == PSM_OK);
    free(x); free(xd); free(y); free(losses); free(losses_d); free(grad);
    free(grad_d); free(weight); free(probs); free(lse); free(lse_d);
}

static void special_values(void)
{
    /* rows: {100, 20} (naive overflows), {nan, 1}, {+inf, 1}, {-inf, 1} label 0,
     * {-inf, -inf} */
    float x[10] = {100, 20, NAN, 1, INFINITY, 1, -INFINITY, 1, -INFINITY, -INFINITY};
    int64_t y[5] = {1, 1, 1, 0, 0};
    float losses[5];
    double loss;
    psm_options o = options(PSM_NAIVE, PSM_NONE);
    CHECK(psm_softmax_loss_f32(x, 5, 2, 1, y, NULL, &o, losses, &loss, NULL) == PSM_OK);
    CHECK(losses[0] == -logf(1.17549435e-38f));   /* 87.3365 */
    o.method = PSM_STABLE;
    CHECK(psm_softmax_loss_f32(x, 5, 2, 1, y, NULL, &o, losses, &loss, NULL) == PSM_OK);
    CHECK(losses[0] == 80.0f);
    CHECK(isnan(losses[1]) && isnan(losses[2]) && isnan(losses[4]));
    CHECK(isinf(losses[3]) && losses[3] > 0);
    /* the log-sum-exps, with the loss alone and with the gradient (whose
     * pass tells a NaN row from a +inf one by a row_pass of its own) */
    float lse[5], grad[10];
    for (int with_grad = 0; with_grad < 2; with_grad++) {
        CHECK(psm_softmax_loss_lse_f32(x, 5, 2, 1, y, NULL, &o, NULL, &loss,
                                       with_grad ? grad : NULL, lse) == PSM_OK);
        CHECK(agree(lse[0], 100.0 + log1p(exp(-80.0)), 1e-7));
        CHECK(isnan(lse[1]) && lse[2] == INFINITY && lse[4] == -INFINITY);
        CHECK(lse[3] == 1.0f);
    }
}

/* psm_softmax_loss_value's -inf for every failure: a bad label, bad
 * arguments, logits or labels not aligned for their type, options beyond
 * method, reduction and threads; and its NaN loss, which is a loss. */
static void loss_by_value_failures(void)
{
    static float x[3 * 2 + 1] = {1, 2, 3, 4, 5, 6, 7};
    static double xd[3 * 2 + 1] = {1, 2, 3, 4, 5, 6, 7};
    static int64_t y[3 + 1] = {0, 1, 1, 0};
    static const double weight[2] = {1.0, 2.0};
    psm_options o = options(PSM_STABLE, PSM_MEAN);
    CHECK(isfinite(psm_softmax_loss_value_f32(x, 3, 2, y, &o)));
    CHECK(isfinite(psm_softmax_loss_value_f64(xd, 3, 2, y, &o)));
    CHECK(psm_softmax_loss_value_f32((const float *)((const char *)x + 1), 3, 2, y, &o) ==
          -INFINITY);
    CHECK(psm_softmax_loss_value_f64((const double *)((const char *)xd + 4), 3, 2, y, &o) ==
          -INFINITY);
    CHECK(psm_softmax_loss_value_f32(x, 3, 2, (const int64_t *)((const char *)y + 4), &o) ==
          -INFINITY);
    y[2] = 2;
    CHECK(psm_softmax_loss_value_f32(x, 3, 2, y, &o) == -INFINITY);
    CHECK(psm_softmax_loss_value_f64(xd, 3, 2, y, &o) == -INFINITY);
    y[2] = 1;
    CHECK(psm_softmax_loss_value_f32(x, 3, 0, y, &o) == -INFINITY);
    CHECK(psm_softmax_loss_value_f32(NULL, 3, 2, y, &o) == -INFINITY);
    CHECK(psm_softmax_loss_value_f32(x, 3, 2, NULL, &o) == -INFINITY);
    CHECK(psm_softmax_loss_value_f32(x, 3, 2, y, NULL) == -INFINITY);
    for (int option = 0; option < 5; option++) {
        psm_options more = o;
        if (option == 0)
            more.class_weight = weight;
        else if (option == 1)
            more.use_ignore_index = 1;
        else if (option == 2)
            more.label_smoothing = 0.5;
        else if (option == 3)
            more.z_loss = 0.5;
        else {
            more.has_normalizer = 1;
            more.normalizer = 2.0;
        }
        CHECK(psm_softmax_loss_value_f32(x, 3, 2, y, &more) == -INFINITY);
        CHECK(psm_softmax_loss_value_f64(xd, 3, 2, y, &more) == -INFINITY);
    }
    x[2] = NAN;
    xd[2] = NAN;
    CHECK(isnan(psm_softmax_loss_value_f32(x, 3, 2, y, &o)));
    CHECK(isnan(psm_softmax_loss_value_f64(xd, 3, 2, y, &o)));
    x[2] = 3;
    xd[2] = 3;
}

static void bad_arguments(void)
{
    float x[6] = {0, 1, 2, 3, 4, 5};
    int64_t y[3] = {0, 2, 1};
    float losses[3], grad[6];
    double loss;
    psm_options o = options(PSM_STABLE, PSM_MEAN);
    /* the first out-of-range label is reported, and nothing is written */
    memset(grad, 0x7f, sizeof grad);
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == 2);
    for (int k = 0; k < 6; k++)
        CHECK(grad[k] != 0);
    y[1] = -1;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == 2);
    o.use_ignore_index = 1;
    o.ignore_index = -1;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_OK);
    CHECK(losses[1] == 0 && grad[2] == 0 && grad[3] == 0);
    /* arguments a direct C caller could get wrong */
    CHECK(psm_softmax_loss_f32(x, 3, 0, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(x, -1, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(NULL, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, NULL, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, x, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, NULL, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, NULL, grad) == PSM_BAD_ARGUMENT);
    o.method = 7;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.method = PSM_STABLE;
    o.reduction = 9;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.reduction = PSM_SUM;
    o.label_smoothing = NAN;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.label_smoothing = 0;
    o.z_loss = -1;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.z_loss = NAN;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.z_loss = INFINITY;
    CHECK(psm_softmax_loss_f32(x, 3, 2, 1, y, NULL, &o, losses, &loss, grad) == PSM_BAD_ARGUMENT);
    o.z_loss = 0;
    o.label_smoothing = NAN;
    CHECK(psm_softmax_f32(x, 3, 2, 1, 3, 1, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_log_softmax_f32(x, 3, 0, 1, 1, grad) == PSM_BAD_ARGUMENT);
    CHECK(psm_softmax_f32(x, 3, 2, 1, PSM_STABLE, 1, NULL) == PSM_BAD_ARGUMENT);
    CHECK(psm_log_softmax_f64(NULL, 3, 2, 1, 1, NULL) == PSM_BAD_ARGUMENT);
    /* empty: nothing is read, the mean is nan, the sum 0 */
    o.label_smoothing = 0;
    o.reduction = PSM_MEAN;
    CHECK(psm_softmax_loss_f32(NULL, 0, 2, 1, NULL, NULL, &o, NULL, &loss, NULL) == PSM_OK);
    CHECK(isnan(loss));
    o.reduction = PSM_SUM;
    CHECK(psm_softmax_loss_f32(NULL, 0, 2, 1, NULL, NULL, &o, NULL, &loss, NULL) == PSM_OK);
    CHECK(loss == 0);
}

/* Threads and the portable twin: the same bits as one thread on the vector
 * path, over a shape big enough to be split (and with a strided class axis). */
static void threads_and_twins(void)
{
    /* 4.4M logits: enough for two threads */
    const int64_t outer = 2200, classes = 1000, inner = 2, n = outer * classes * inner;
    float *x = floats(n, 7u);
    int64_t *y = labels_for(outer * inner, classes);
    float *g1 = malloc((size_t)n * sizeof *g1), *g2 = malloc((size_t)n * sizeof *g2);
    float *l1 = malloc((size_t)(outer * inner) * sizeof *l1);
    float *l2 = malloc((size_t)(outer * inner) * sizeof *l2);
    for (int64_t inner_used = 1; inner_used <= 2; inner_used++) {
        int64_t used_outer = outer * inner / inner_used;
        for (int method = PSM_NAIVE; method <= PSM_STABLE; method++) {
            psm_options one = options(method, PSM_MEAN), other = one;
            double a, b;
            one.threads = 1;
            other.threads = 2;
            CHECK(psm_softmax_loss_f32(x, used_outer, classes, inner_used, y, NULL,
                                       &one, l1, &a, g1) == PSM_OK);
            psm_testing_set_portable(1);   /* the workers follow this thread */
            CHECK(psm_softmax_loss_f32(x, used_outer, classes, inner_used, y, NULL,
                                       &other, l2, &b, g2) == PSM_OK);
            psm_testing_set_portable(0);
            CHECK(memcmp(&a, &b, sizeof a) == 0);
            CHECK(memcmp(l1, l2, (size_t)(outer * inner) * sizeof *l1) == 0);
            CHECK(memcmp(g1, g2, (size_t)n * sizeof *g1) == 0);
            /* softmax: 1 thread on the vector path, 2 and 3 on the portable */
            CHECK(psm_softmax_f32(x, used_outer, classes, inner_used, method, 1, g1) ==
                  PSM_OK);
            psm_testing_set_portable(1);
            CHECK(psm_softmax_f32(x, used_outer, classes, inner_used, method, 2, g2) ==
                  PSM_OK);
            psm_testing_set_portable(0);
            CHECK(memcmp(g1, g2, (size_t)n * sizeof *g1) == 0);
            CHECK(psm_softmax_f32(x, used_outer, classes, inner_used, method, 3, g2) ==
                  PSM_OK);
            CHECK(memcmp(g1, g2, (size_t)n * sizeof *g1) == 0);
        }
        CHECK(psm_log_softmax_f32(x, used_outer, classes, inner_used, 1, g1) == PSM_OK);
        psm_testing_set_portable(1);
        CHECK(psm_log_softmax_f32(x, used_outer, classes, inner_used, 2, g2) == PSM_OK);
        psm_testing_set_portable(0);
        CHECK(memcmp(g1, g2, (size_t)n * sizeof *g1) == 0);
        CHECK(psm_log_softmax_f32(x, used_outer, classes, inner_used, 3, g2) == PSM_OK);
        CHECK(memcmp(g1, g2, (size_t)n * sizeof *g1) == 0);
    }
    float e[3], in[3] = {0.5f, -90.0f, 88.0f};
    psm_exp_f32(in, 3, 0, e);
    CHECK(fabsf(e[0] - 1.6487213f) < 1e-6f && e[1] > 0 && e[2] > 1e38f);
    /* the double exp at every tail length (masked loads and stores), on
     * arrays of exactly that size, fast and cold lanes mixed */
    for (int64_t len = 1; len <= 9; len++) {
        double *din = malloc((size_t)len * sizeof *din);
        double *d1 = malloc((size_t)len * sizeof *d1), *d2 = malloc((size_t)len * sizeof *d2);
        for (int64_t k = 0; k < len; k++)
            din[k] = k % 3 == 0 ? -750.0 + 100.0 * (double)k : 0.25 * (double)k;
        psm_exp_f64(din, len, 0, d1);
        psm_exp_f64(din, len, 1, d2);
        CHECK(memcmp(d1, d2, (size_t)len * sizeof *d1) == 0 && d1[0] == 0);
        free(din); free(d1); free(d2);
    }
    /* double: the vector path on 1 thread, the portable twins on 2 */
    {
        double *xd = malloc((size_t)n * sizeof *xd), *gd1 = malloc((size_t)n * sizeof *gd1);
        double *gd2 = malloc((size_t)n * sizeof *gd2);
        for (int64_t k = 0; k < n; k++)
            xd[k] = (double)x[k] * 10.0;
        psm_options one = options(PSM_STABLE, PSM_MEAN), other = one;
        double a, b;
        one.threads = 1;
        other.threads = 2;
        CHECK(psm_softmax_loss_f64(xd, outer * inner, classes, 1, y, NULL, &one, NULL, &a,
                                   gd1) == PSM_OK);
        psm_testing_set_portable(1);
        CHECK(psm_softmax_loss_f64(xd, outer * inner, classes, 1, y, NULL, &other, NULL, &b,
                                   gd2) == PSM_OK);
        psm_testing_set_portable(0);
        CHECK(memcmp(&a, &b, sizeof a) == 0 && memcmp(gd1, gd2, (size_t)n * sizeof *gd1) == 0);
        free(xd); free(gd1); free(gd2);
    }
    double exact = 0;   /* the probe's float lanes are near this */
    for (int64_t k = 0; k < n; k++)
        exact += x[k];
    CHECK(fabs(psm_read_probe_f32(x, n, 2, 0) - exact) < 1e-4 * (double)n);
    CHECK(fabs(psm_read_probe_f32(x, n, 1, 1) - exact) < 1e-4 * (double)n);
    double exp_sum = psm_exp_sum_probe_f32(x, n, 2, 0);   /* the same bits on both paths */
    CHECK(exp_sum > 0 && exp_sum == psm_exp_sum_probe_f32(x, n, 1, 1));
    CHECK(psm_copy_probe_f32(x, n, g1, 2, 0) == psm_copy_probe_f32(x, n, g2, 1, 1));
    CHECK(memcmp(g1, x, (size_t)n * sizeof *x) == 0 && memcmp(g2, x, (size_t)n * sizeof *x) == 0);
    free(x); free(y); free(g1); free(g2); free(l1); free(l2);
}

#ifdef PSM_HAVE_THREADS
static PSM_THREAD_ENTRY portable_flag_of_a_new_thread(void *seen)
{
    *(int *)seen = psm_testing_portable();
    psm_testing_set_portable(1);   /* its own: the caller's stays as it was */
    return 0;
}
#endif

/* psm_testing_set_portable is the calling thread's alone. */
static void portable_flag_is_per_thread(void)
{
    CHECK(psm_testing_portable() == 0);
    psm_testing_set_portable(5);
    CHECK(psm_testing_portable() == 1);
#ifdef PSM_HAVE_THREADS
    int seen = -1;
    psm_thread other;
    psm_testing_set_portable(0);
    CHECK(thread_start(&other, portable_flag_of_a_new_thread, &seen) == 0);
    thread_join(other);
    CHECK(seen == 0 && psm_testing_portable() == 0);
    psm_testing_set_portable(1);
    CHECK(thread_start(&other, portable_flag_of_a_new_thread, &seen) == 0);
    thread_join(other);
    CHECK(seen == 0 && psm_testing_portable() == 1);
#endif
    psm_testing_set_portable(0);
    CHECK(psm_testing_portable() == 0);
}

#ifdef PSM_HAVE_THREADS
typedef struct {
    atomic_int *arrived;
    int *met;
} rendezvous;

/* Each chunk waits (10 s at most) for the other to start: both meet only
 * if two threads run them at once. */
static void meet(const void *job, int64_t chunk)
{
    const rendezvous *r = job;
    atomic_fetch_add(r->arrived, 1);
    int64_t deadline = now_ns() + 10000000000;
    while (atomic_load(r->arrived) < 2 && now_ns() < deadline)
        cpu_relax();
    r->met[chunk] = atomic_load(r->arrived) == 2;
}
#endif

/* The pool runs a call's chunks on more than one thread (threads=2 above
 * would pass on one thread too): with its helper just started, spinning,
 * and asleep on its condition variable.  A build without threads says so. */
static void pool_runs_two_threads_at_once(void)
{
#ifdef PSM_HAVE_THREADS
    CHECK(psm_max_threads() == PSM_MAX_THREADS);
    for (int round = 0; round < 3; round++) {
        atomic_int arrived;
        int met[2] = {0, 0};
        rendezvous r = {&arrived, met};
        atomic_init(&arrived, 0);
        if (round == 2)   /* past the helper's spin (50 us): it sleeps */
            for (int64_t idle = now_ns() + 2000000; now_ns() < idle;)
                cpu_relax();
        psm_run_chunks(meet, &r, 2, 2);
        CHECK(met[0] && met[1]);
    }
#else
    CHECK(psm_max_threads() == 1);
#endif
}

/* Class blocks: every block's partial state, merged, gives the single call's
 * loss and gradient; a block reads and writes only its own classes. */
static void class_blocks(int64_t outer, int64_t classes, int64_t inner)
{
    const int64_t positions = outer * inner, n = positions * classes;
    float *x = floats(n, 11u);
    int64_t *y = labels_for(positions, classes);
    float *g = malloc((size_t)(n ? n : 1) * sizeof *g);
    float *block_g = malloc((size_t)(n ? n : 1) * sizeof *block_g);
    float *block_x = malloc((size_t)(n ? n : 1) * sizeof *block_x);
    psm_partial *state = malloc((size_t)(positions ? positions : 1) * sizeof *state);
    psm_partial *part = malloc((size_t)(positions ? positions : 1) * sizeof *part);
    for (int method = PSM_NAIVE; method <= PSM_STABLE; method++) {
        psm_options o = options(method, PSM_MEAN);
        double whole, merged;
        CHECK(psm_softmax_loss_f32(x, outer, classes, inner, y, NULL, &o, NULL, &whole,
                                   g) == PSM_OK);
        /* blocks [0, 1), [1, half), [half, classes), as (outer, width, inner) copies */
        int64_t edges[4] = {0, 1, classes / 2 > 1 ? classes / 2 : 1, classes};
        for (int pass = 0; pass < 2; pass++) {
            for (int b = 0; b < 3; b++) {
                int64_t start = edges[b], width = edges[b + 1] - start;
                if (width < 1)
                    continue;
                for (int64_t k = 0; k < outer; k++)
                    memcpy(block_x + k * width * inner, x + (k * classes + start) * inner,
                           (size_t)(width * inner) * sizeof *x);
                if (pass == 0) {
                    psm_partial *into = start == 0 ? state : part;
                    CHECK(psm_softmax_partials_f32(block_x, outer, width, inner, start,
                                                   classes, y, NULL, &o, into) == PSM_OK);
                    if (start != 0)
                        psm_combine_partials(positions, part, state);
                    continue;
                }
                CHECK(psm_grad_from_partials_f32(block_x, outer, width, inner, start,
                                                 classes, y, NULL, &o, state,
                                                 block_g) == PSM_OK);
                for (int64_t k = 0; k < outer * width * inner; k++) {
                    int64_t o_ = k / (width * inner), c = k / inner % width, i = k % inner;
                    float want = g[(o_ * classes + start + c) * inner + i];
                    CHECK(fabsf(block_g[k] - want) <= 1e-6f * (1 + fabsf(want)));
                }
            }
            if (pass == 0) {
                CHECK(psm_loss_from_partials_f32(state, outer, inner, classes, y, &o,
                                                 NULL, &merged) == PSM_OK);
                CHECK(fabs(merged - whole) <= 1e-6 * (1 + fabs(whole)));
            }
        }
        if (method != PSM_STABLE) {   /* a smoothed target clamps per class */
            o.label_smoothing = 0.1;
            CHECK(psm_softmax_partials_f32(x, outer, classes, inner, 0, classes, y, NULL,
                                           &o, state) == PSM_NOT_DECOMPOSABLE);
        }
    }
    psm_options o = options(PSM_STABLE, PSM_MEAN);
    CHECK(psm_softmax_partials_f32(x, outer, classes, inner, 1, classes, y, NULL, &o,
                                   state) == PSM_BAD_ARGUMENT);   /* past the end */
    free(x); free(y); free(g); free(block_g); free(block_x); free(state); free(part);
}

/* A caller whose gradient buffer holds its labels: the gradient of
 * position 0 overwrites labels 1.. after the kernel checked them.  Each is
 * bounded again where it is read, so the call stops with position 1's status
 * instead of indexing with it (every method, both types, 1 and 2 threads;
 * under the sanitizers any out-of-bounds read is a report). */
static void labels_bounded_where_read(void)
{
    const int64_t outer = 6, classes = 5;
    for (int method = PSM_NAIVE; method <= PSM_STABLE; method++) {
        for (int threads = 1; threads <= 2; threads++) {
            psm_options o = options(method, PSM_MEAN);
            o.threads = threads;
            double loss;
            float *xf = calloc((size_t)(outer * classes), sizeof *xf);
            float *gf = calloc((size_t)(outer * classes), sizeof *gf);
            CHECK(psm_softmax_loss_f32(xf, outer, classes, 1, (const int64_t *)gf, NULL,
                                       &o, NULL, &loss, gf) == 2);
            double *xd = calloc((size_t)(outer * classes), sizeof *xd);
            double *gd = calloc((size_t)(outer * classes), sizeof *gd);
            CHECK(psm_softmax_loss_f64(xd, outer, classes, 1, (const int64_t *)gd, NULL,
                                       &o, NULL, &loss, gd) == 2);
            free(xf);
            free(gf);
            free(xd);
            free(gd);
        }
    }
}

/* The stable one-pass forward's paths on heap rows of exactly their size
 * (the tail group's masked loads, the confident row's second reads), laid
 * out contiguously and strided (inner 3): a row with s >= 1, a confident
 * row with its max's lane fixed, one summed again with ties counted (s ~
 * 1e-30), two maxes, and a max <= -40. */
static void one_pass_rows(int64_t classes, int64_t inner)
{
    enum { ROWS = 5 };
    int64_t n = ROWS * classes * inner;
    float *x = malloc((size_t)n * sizeof *x);
    float *losses = malloc((size_t)(ROWS * inner) * sizeof *losses);
    int64_t *y = malloc((size_t)(ROWS * inner) * sizeof *y);
    double want[ROWS];
    for (int64_t r = 0; r < ROWS; r++)
        for (int64_t c = 0; c < classes; c++)
            for (int64_t i = 0; i < inner; i++)
                x[(r * classes + c) * inner + i] = r == 4 ? -50.0f : 0.0f;
    for (int64_t i = 0; i < inner; i++) {
        x[(1 * classes + classes - 1) * inner + i] = 10.0f;  /* s = (C-1) e^-10 */
        x[(2 * classes + classes / 2) * inner + i] = 69.0f;  /* s = (C-1) e^-69 */
        x[(3 * classes) * inner + i] = 1.0f;                 /* two maxes */
        x[(3 * classes + classes - 1) * inner + i] = 1.0f;
    }
    double cm1 = (double)(classes - 1);
    want[0] = log((double)classes);
    want[1] = log1p(cm1 * exp(-10.0));
    want[2] = log1p(cm1 * exp(-69.0));
    want[3] = classes > 1 ? log1p(1.0 + (cm1 - 1.0) * exp(-1.0)) : 0.0;
    want[4] = log((double)classes);
    int64_t label[ROWS] = {0, classes - 1, classes / 2, 0, classes - 1};
    for (int64_t r = 0; r < ROWS; r++)
        for (int64_t i = 0; i < inner; i++)
            y[r * inner + i] = label[r];
    psm_options o = options(PSM_STABLE, PSM_NONE);
    double loss;
    CHECK(psm_softmax_loss_f32(x, ROWS, classes, inner, y, NULL, &o, losses, &loss,
                               NULL) == PSM_OK);
    for (int64_t r = 0; r < ROWS; r++)
        for (int64_t i = 0; i < inner; i++)
            CHECK(fabs(losses[r * inner + i] - want[r]) <= 1e-6 * want[r] + 1e-45);
    free(x); free(losses); free(y);
}

int main(void)
{
    static const int64_t outers[] = {0, 1, 2, 5};
    static const int64_t classes[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 65, 1000};
    static const int64_t inners[] = {0, 1, 3};
    for (size_t a = 0; a < sizeof outers / sizeof *outers; a++)
        for (size_t b = 0; b < sizeof classes / sizeof *classes; b++)
            for (size_t c = 0; c < sizeof inners / sizeof *inners; c++)
                shape_sweep(outers[a], classes[b], inners[c]);
    /* rows of few classes eight at a time (rows_small_avx2.h): two batches
     * and a row left over */
    for (size_t b = 0; b < sizeof classes / sizeof *classes && classes[b] <= 17; b++)
        shape_sweep(17, classes[b], 1);
    special_values();
    bad_arguments();
    loss_by_value_failures();
    threads_and_twins();
    portable_flag_is_per_thread();
    pool_runs_two_threads_at_once();
    labels_bounded_where_read();
    for (size_t b = 0; b < sizeof classes / sizeof *classes; b++) {
        one_pass_rows(classes[b], 1);
        one_pass_rows(classes[b], 3);
    }
    for (size_t b = 0; b < sizeof classes / sizeof *classes; b++) {
        class_blocks(3, classes[b], 1);
        class_blocks(2, classes[b], 3);
    }
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("kernel edge cases (SIMD level %d, threads up to %d): all checks passed\n",
           psm_simd_level(), psm_max_threads());
    return 0;
}
