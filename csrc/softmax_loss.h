/*
 * pysafemax kernel: softmax cross-entropy computed three ways.
 *
 * Logits are seen in Caffe's layout, outer x classes x inner, C-contiguous:
 * logit (o, c, i) sits at logits[(o * classes + c) * inner + i].  A plain
 * (N, C) row-major array is outer = N, inner = 1.  Labels and per-position
 * losses are outer x inner, label (o, i) at labels[o * inner + i].
 *
 * Methods (the float behaviour of each is part of the contract):
 *   PSM_NAIVE   e_j = exp(x_j); s = sum e_j rounded to REAL; p = e_y / s;
 *               loss = -log(max(p, TINY))        (overflows for x_j > ~88.7)
 *   PSM_MAXSUB  the same with the position's max subtracted first; this is
 *               Caffe's SoftmaxWithLoss, which clamps every loss above
 *               -log(TINY) (87.3365 for float)
 *   PSM_STABLE  loss = (m - x_y) + log(sum_j exp(x_j - m)), no clamp
 * TINY is FLT_MIN for float and DBL_MIN for double.
 *
 * The kernel never touches Python state and keeps no globals: every call is
 * reentrant and may run concurrently with any other.
 *
 * The block between cdef-begin and cdef-end is fed verbatim to cffi's cdef,
 * so it must stay free of preprocessor lines.
 */
#ifndef PYSAFEMAX_SOFTMAX_LOSS_H
#define PYSAFEMAX_SOFTMAX_LOSS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */
enum psm_method { PSM_NAIVE = 0, PSM_MAXSUB = 1, PSM_STABLE = 2 };

/*
 * How per-position losses become the result, and so the gradient's scale.
 * A normalizer is what the summed loss is divided by.
 */
enum psm_reduction {
    PSM_NONE = 0,       /* per-position losses; the gradient is their sum's */
    PSM_SUM = 1,
    PSM_MEAN = 2,       /* PyTorch: the sum of w[label] over non-ignored
                           positions (their count without weights; with
                           probability targets, all positions).  0 gives NaN */
    PSM_VALID = 3,      /* Caffe: max(1, non-ignored positions) */
    PSM_FULL = 4,       /* Caffe: max(1, outer * inner) */
    PSM_BATCH_SIZE = 5  /* Caffe: max(1, outer) */
};

/* Status codes.  A positive status is 1 + the flat position (o * inner + i)
 * of the first label outside [0, classes) that is not ignored. */
enum psm_status { PSM_OK = 0, PSM_BAD_ARGUMENT = -1, PSM_NO_MEMORY = -2 };

/*
 * Options with PyTorch's semantics.  Each position has a target distribution
 *   hard label y:       q_c = (1 - eps) w_y [c == y] + (eps / C) w_c
 *   probabilities t_c:  q_c = w_c ((1 - eps) t_c + eps / C)
 * with eps the label smoothing and w_c the class weight (1 without weights),
 * and its loss is sum_c q_c * -log p_c.  Classes with q_c = 0 add nothing,
 * even on a -inf logit.
 */
typedef struct {
    int method;                 /* enum psm_method */
    int reduction;              /* enum psm_reduction */
    int use_ignore_index;       /* hard labels equal to ignore_index add no */
    int64_t ignore_index;       /* loss and get an all-zero gradient */
    const double *class_weight; /* classes of them, or NULL */
    double label_smoothing;     /* eps, in [0, 1] */
    int threads;                /* at most this many threads (< 1: one) */
    int portable;               /* 1: no CPU-specific code (the scalar twin) */
} psm_options;

/*
 * Softmax loss and, optionally, its gradient.  Targets are either labels
 * (hard class indices, outer x inner) or target_probs (the logits' shape);
 * the other is NULL.
 *   losses  per-position losses (outer x inner), or NULL
 *   loss    the reduced loss, accumulated in double (the sum for PSM_NONE)
 *   grad    d loss / d logits (the logits' shape), or NULL
 * Labels are all checked before anything is written.
 */
int64_t psm_softmax_loss_f32(const float *logits, int64_t outer,
                             int64_t classes, int64_t inner,
                             const int64_t *labels, const float *target_probs,
                             const psm_options *options, float *losses,
                             double *loss, float *grad);
int64_t psm_softmax_loss_f64(const double *logits, int64_t outer,
                             int64_t classes, int64_t inner,
                             const int64_t *labels, const double *target_probs,
                             const psm_options *options, double *losses,
                             double *loss, double *grad);

/* Softmax probabilities by the given method, written to out (logits' shape). */
int64_t psm_softmax_f32(const float *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, float *out);
int64_t psm_softmax_f64(const double *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, double *out);

/* Log-softmax in the log domain (the stable method only). */
int64_t psm_log_softmax_f32(const float *logits, int64_t outer,
                            int64_t classes, int64_t inner, float *out);
int64_t psm_log_softmax_f64(const double *logits, int64_t outer,
                            int64_t classes, int64_t inner, double *out);
/* 1 when this CPU runs the AVX2+FMA paths, 0 when only the portable ones. */
int psm_simd_level(void);

/* The kernel's own float exp of each element (for tests and the exhaustive
 * accuracy check in bench/check_exp_ulp.py). */
void psm_exp_f32(const float *in, int64_t n, int portable, float *out);

/* The sum of n floats, read with the kernel's SIMD and threads: the
 * read-bandwidth probe the benchmarks compare the loss against. */
double psm_read_probe_f32(const float *x, int64_t n, int threads, int portable);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYSAFEMAX_SOFTMAX_LOSS_H */
