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
 *               loss = -log(max(p, FLT_MIN))     (overflows for x_j > ~88.7)
 *   PSM_MAXSUB  the same with the position's max subtracted first; this is
 *               Caffe's SoftmaxWithLoss, which clamps every loss above
 *               -log(FLT_MIN) (87.3365)
 *   PSM_STABLE  loss = (m - x_y) + log(sum_j exp(x_j - m)), no clamp
 * The clamp is FLT_MIN for double too, as in Caffe's SoftmaxWithLoss<double>
 * (std::max(prob, Dtype(FLT_MIN))): a clamped double loss reads
 * 87.3365447505531, -log(FLT_MIN) rounded to double.
 *
 * The kernel never touches Python state and keeps no globals (but for the
 * thread-local test flag of testing.h, chunks.c's thread pool and the CPU's
 * features, asked once): every call is reentrant and may run concurrently
 * with any other.
 *
 * The kernel's files (csrc/):
 *   softmax_loss.h     this contract: the entry points and their types
 *   testing.h          test-only hooks: the portable-path flag, the float
 *                      exp over an array, the benchmarks' read, exp+sum
 *                      and copy probes
 *   softmax_loss.c     the entry points that do not depend on the dtype
 *                      (label summary, normalizer, reduce, combine, SIMD
 *                      level) and the checks the others share
 *   softmax_loss_f32.c the float entry points: the dtype's macros, defined
 *   softmax_loss_f64.c once, then row.h and driver.h; likewise for double
 *   row.h              template: one position's math (target, one pass,
 *                      block sums, loss, gradient, partial state)
 *   driver.h           template: the loss, partials, grad-from-partials and
 *                      softmax jobs, their chunks, and the typed entry points
 *   chunks.c, .h       chunks of whole positions run on a thread pool
 *   sys_threads.h      the pool's primitives, on POSIX or Win32 threads
 *   internal.h         what the .c files share privately (PSM_BLOCK,
 *                      read_label, argument checks, the SIMD choice)
 *   exp_f32.h          the float exp and its AVX2 twin, with its error bound
 *   lanes_avx2.h       the float-group-to-double-lanes sum every AVX2 sum
 *                      shares (the loops and the exp+sum probe)
 *   rows_avx2.h        the AVX2 loops over float rows (twins in row.h)
 *   testing.c          testing.h's hooks
 *   ffi_build.py       the cffi build: cdef from this header, then testing.h
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
                           probability targets, all positions).  0 gives a
                           NaN loss and gradient (ignored positions keep a
                           zero gradient), as PyTorch's 0 / 0 */
    PSM_VALID = 3,      /* Caffe: max(1, non-ignored positions) */
    PSM_FULL = 4,       /* Caffe: max(1, outer * inner) */
    PSM_BATCH_SIZE = 5  /* Caffe: max(1, outer) */
};

/* Status codes.  A positive status is 1 + the flat position (o * inner + i)
 * of the first label outside [0, classes) that is not ignored.  Every label
 * is bounded where it is read as an index, not only when first checked: one
 * changed meanwhile (another thread's write to the caller's array) gives
 * that status too, never a read outside the arrays. */
enum psm_status {
    PSM_OK = 0,
    PSM_BAD_ARGUMENT = -1,
    PSM_NO_MEMORY = -2,
    PSM_NOT_DECOMPOSABLE = -3   /* partials: naive and maxsub with targets that
                                   are not one-hot clamp every class's p after
                                   the whole sum is known, which no per-block
                                   state can carry */
};

/* psm_options.threads above this is taken as this. */
enum { PSM_MAX_THREADS = 256 };

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
    int has_normalizer;         /* 1: divide by `normalizer` instead of the */
    double normalizer;          /* reduction's own, for a call that sees only
                                   part of a batch (the gradient's scale too) */
    double z_loss;              /* z >= 0: each counted position adds
                                   z v lse^2 (PaLM's z-loss), v its share of
                                   the mean's normalizer (w_y with labels, 1
                                   with probabilities), lse the method's own
                                   log-sum-exp (psm_softmax_loss_lse), and
                                   2 z v lse p_j to its gradient */
} psm_options;

/*
 * Softmax loss and, optionally, its gradient.  Targets are either labels
 * (hard class indices, outer x inner) or target_probs (the logits' shape);
 * the other is NULL.
 *   losses  per-position losses (outer x inner), or NULL
 *   loss    the reduced loss, accumulated in double (the sum for PSM_NONE)
 *   grad    d loss / d logits (the logits' shape), or NULL
 * Labels are all checked before anything is written; one that another
 * thread changes to a bad value during the call stops it part way, with
 * that label's status.
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

/*
 * psm_softmax_loss, and each position's log-sum-exp written to lse (outer x
 * inner, or NULL: then it is psm_softmax_loss), ignored positions included:
 *   stable  log(sum_j exp(x_j)), exact: max + log1p(s) in double, rounded
 *           once; -inf where every logit is -inf, +inf where one is +inf,
 *           NaN where one is NaN (as scipy.special.logsumexp)
 *   maxsub  max + log of the sum of exp(x_j - max) that the method itself
 *           rounds to the logits' type (NaN where the max is not finite)
 *   naive   log of the method's own sum of exp(x_j) in the logits' type:
 *           +inf once that sum overflows
 */
int64_t psm_softmax_loss_lse_f32(const float *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 const int64_t *labels, const float *target_probs,
                                 const psm_options *options, float *losses,
                                 double *loss, float *grad, float *lse);
int64_t psm_softmax_loss_lse_f64(const double *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 const int64_t *labels, const double *target_probs,
                                 const psm_options *options, double *losses,
                                 double *loss, double *grad, double *lse);

/*
 * The reduced loss of (outer, classes) logits in rows and their labels, as
 * psm_softmax_loss_lse computes it (inner 1, no probabilities, nothing but
 * the loss written), returned rather than stored: a caller making many
 * small calls passes five arguments and reads no cell.  Only options of
 * method, reduction and threads are taken, under which no loss is -inf
 * (each position's is >= 0, or NaN): -inf stands for any other options
 * (class weights, ignore_index, label smoothing, a z-loss, a normalizer),
 * for every status but PSM_OK, and for logits or labels not aligned for
 * their type; psm_softmax_loss_lse then gives the status.
 */
double psm_softmax_loss_value_f32(const float *logits, int64_t outer, int64_t classes,
                                  const int64_t *labels, const psm_options *options);
double psm_softmax_loss_value_f64(const double *logits, int64_t outer, int64_t classes,
                                  const int64_t *labels, const psm_options *options);

/*
 * Class-sharded logits.  A position's classes may be split into blocks, each
 * read by its own call, possibly on another machine:
 *   psm_softmax_partials  the partial state of every position over one block
 *                         of classes [class_offset, class_offset + classes)
 *                         of total_classes
 *   psm_combine_partials  merges two states of the same positions (into =
 *                         into (+) part): exact up to rounding, associative
 *                         and commutative, so blocks merge in any grouping
 *   psm_loss_from_partials the losses from states covering every class
 *   psm_grad_from_partials one block's gradient from such a complete state
 * The state is Milakov and Gimelshein's online normalizer (the running max
 * and the sum of exp(x - max), rescaled when the max grows), plus what the
 * targets need; Megatron's vocab-parallel cross entropy merges the same.
 * Labels are global class indices; class_weight, if any, holds total_classes
 * weights.  Probability targets are the block's own (the logits' shape).
 * naive and maxsub need one-hot targets (no smoothing, no probabilities):
 * otherwise PSM_NOT_DECOMPOSABLE.
 */
typedef struct {
    double max;          /* the shift: the block's max, 0 for naive; -inf if
                            the block has no number above -inf */
    double rest;         /* sum of exp(x_j - max): stable over x_j != max,
                            naive and maxsub over all x_j */
    double ties;         /* stable: how many x_j == max (each term exactly 1) */
    double cross;        /* stable, targets not one-hot: sum of q_j (max - x_j)
                            over finite x_j with q_j != 0 */
    double cross_mass;   /* ... the sum of those q_j */
    double mass;         /* ... the sum of every q_j != 0 */
    double label_logit;  /* one-hot targets: x_y, where label_found */
    int32_t label_found; /* how many merged blocks held the label */
    int32_t cross_inf;   /* some q_j > 0 sits on x_j = -inf */
} psm_partial;

int64_t psm_softmax_partials_f32(const float *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 int64_t class_offset, int64_t total_classes,
                                 const int64_t *labels, const float *target_probs,
                                 const psm_options *options, psm_partial *state);
int64_t psm_softmax_partials_f64(const double *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 int64_t class_offset, int64_t total_classes,
                                 const int64_t *labels, const double *target_probs,
                                 const psm_options *options, psm_partial *state);
void psm_combine_partials(int64_t positions, const psm_partial *part,
                          psm_partial *into);
/* labels NULL: the states came from probability targets. */
int64_t psm_loss_from_partials_f32(const psm_partial *state, int64_t outer,
                                   int64_t inner, int64_t total_classes,
                                   const int64_t *labels,
                                   const psm_options *options, float *losses,
                                   double *loss);
int64_t psm_loss_from_partials_f64(const psm_partial *state, int64_t outer,
                                   int64_t inner, int64_t total_classes,
                                   const int64_t *labels,
                                   const psm_options *options, double *losses,
                                   double *loss);
int64_t psm_grad_from_partials_f32(const float *logits, int64_t outer,
                                   int64_t classes, int64_t inner,
                                   int64_t class_offset, int64_t total_classes,
                                   const int64_t *labels, const float *target_probs,
                                   const psm_options *options,
                                   const psm_partial *state, float *grad);
int64_t psm_grad_from_partials_f64(const double *logits, int64_t outer,
                                   int64_t classes, int64_t inner,
                                   int64_t class_offset, int64_t total_classes,
                                   const int64_t *labels, const double *target_probs,
                                   const psm_options *options,
                                   const psm_partial *state, double *grad);

/*
 * What a reduction divides by, from a summary of the labels: the count of
 * positions that are not ignored (`valid`) and the sum of their class
 * weights.  Row blocks of one batch add their summaries up, then take the
 * normalizer once.  labels NULL (probability targets): every position counts,
 * with weight 1.  Returns 0, or 1 + the position of the first bad label.
 */
int64_t psm_label_summary(const int64_t *labels, int64_t positions,
                          int64_t classes, const psm_options *options,
                          int64_t *valid, double *label_weight_sum);
double psm_normalizer(int reduction, int64_t valid, double label_weight_sum,
                      int64_t positions, int64_t outer);
/* The reduced loss from the summed losses: the sum itself for PSM_NONE and
 * PSM_SUM, else total / normalizer, NaN for a normalizer of 0. */
double psm_reduce(int reduction, double total, double normalizer);

/* Softmax probabilities by the given method, written to out (logits' shape),
 * on at most `threads` threads (< 1: one; as psm_options.threads: fewer for
 * small inputs, and every count gives the same bits).  stable: e_j =
 * exp(x_j - max) is stored while it is summed, then scaled by 1 / (1 + s);
 * naive and maxsub: exp(x_j - shift) / total in REAL. */
int64_t psm_softmax_f32(const float *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, int threads, float *out);
int64_t psm_softmax_f64(const double *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, int threads, double *out);

/* Log-softmax in the log domain (the stable method only): (x_j - max) -
 * log1p(s); threads and out as psm_softmax. */
int64_t psm_log_softmax_f32(const float *logits, int64_t outer,
                            int64_t classes, int64_t inner, int threads, float *out);
int64_t psm_log_softmax_f64(const double *logits, int64_t outer,
                            int64_t classes, int64_t inner, int threads, double *out);
/* 1 when this CPU runs the AVX2+FMA paths, 0 when only the portable ones. */
int psm_simd_level(void);
/* How many threads a call may run on: PSM_MAX_THREADS, or 1 where the kernel
 * was built without threads (no POSIX or Win32 threads, or no C11 atomics),
 * and runs every call on the calling thread whatever its thread count. */
int psm_max_threads(void);
/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* PYSAFEMAX_SOFTMAX_LOSS_H */
