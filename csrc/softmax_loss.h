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

/* Status codes.  A positive status is 1 + the flat position (o * inner + i)
 * of the first label outside [0, classes). */
enum psm_status { PSM_OK = 0, PSM_BAD_ARGUMENT = -1 };

/*
 * Softmax loss and, optionally, its gradient.
 *   losses    per-position losses, outer * inner of them, or NULL
 *   loss_sum  the sum of the per-position losses accumulated in double, or NULL
 *   grad      d loss / d logits, the logits' shape, or NULL; each entry is
 *             (p_j - [j == y]) * grad_scale with p from the same method
 */
int64_t psm_softmax_loss_f32(const float *logits, const int64_t *labels,
                             int64_t outer, int64_t classes, int64_t inner,
                             int method, float *losses, double *loss_sum,
                             float *grad, double grad_scale);
int64_t psm_softmax_loss_f64(const double *logits, const int64_t *labels,
                             int64_t outer, int64_t classes, int64_t inner,
                             int method, double *losses, double *loss_sum,
                             double *grad, double grad_scale);

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
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYSAFEMAX_SOFTMAX_LOSS_H */
