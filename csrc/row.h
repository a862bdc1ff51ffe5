/*
 * The row math, written once per floating type: a position's target, the
 * one pass over its logits (block max, block sums, the online normalizer),
 * its loss and gradient, and a block of its classes' partial state.  It
 * knows nothing of jobs, chunks or threads (driver.h runs it over a call's
 * positions), so each function here takes one position and can be read and
 * tested on its own.
 *
 * Instantiated by softmax_loss_f32.c and softmax_loss_f64.c, which define
 * before including it (and then driver.h):
 *   REAL      float or double
 *   FN(name)  name with the type's suffix appended (name##_f32)
 *   EXP, LOG  REAL's exp and log (psm_expf and logf for float, psm_exp and log
 *             for double)
 *   BIG       REAL's largest finite number (FLT_MAX, DBL_MAX)
 *   VECTOR_ROWS 1 where AVX2 loops serve contiguous rows (x86-64):
 *              rows_avx2.h for float, rows_avx2_f64.h for double
 *   VEC(name)  the AVX2 loop named name of those (psm_##name##_avx2 for float,
 *              psm_##name##_f64_avx2 for double)
 *   LANE_SUMS  1 to sum in the 8-float-lane order of rows_avx2.h (float), 0
 *              in the 4-double-lane order of rows_avx2_f64.h (double)
 *   SMALL_ROWS 1 where rows of at most PSM_SMALL_CLASSES are read eight at a
 *              time by VEC(small_rows) and VEC(small_exps) (x86-64):
 *              rows_small_avx2.h for float, rows_small_avx2_f64.h for double
 *   SMALL_OUT_ROWS 1 where softmax and log-softmax write such rows eight at
 *              a time too (rows_small_out_avx2.h: float on x86-64)
 *   NEAR_EXPS  1 where the vector path has VEC(block_range) and _near
 *              variants of VEC(block_sums), VEC(block_total) and
 *              VEC(exp_store_sum), whose exps skip their range check
 *              (near_exps: float on x86-64)
 *   ONLINE_ROWS 1 where the stable forward takes the one-pass sweep
 *              (rows_online_avx2.h and its twin: float, on every CPU)
 * and after internal.h (PSM_BLOCK, read_label) and the type's AVX2 loops.
 *
 * One pass.  Every position's logits are read once, in blocks of PSM_BLOCK:
 * the block's max, then, from L1, the sum of exp(x_j - max) over the x_j
 * below it ("rest") and the count of x_j equal to it ("ties", each term
 * exactly 1).  When a block raises the running max, what was summed so far
 * is rescaled once, in double: Milakov and Gimelshein's online normalizer,
 * per block rather than per element, so each logit costs one exp.  Where it
 * matters most the passes are leaner:
 *   - float rows of the stable method with one-hot targets (more than
 *     PSM_SMALL_CLASSES classes): one sweep, with no max sweep and no tie
 *     counting (rows_online_avx2.h, twin online_lanes below); confident,
 *     NaN and non-finite rows fall back to the blocks;
 *   - rows of at most PSM_SMALL_CLASSES classes: eight rows at once, with
 *     the blocks' states bit for bit (rows_small_avx2.h and its double
 *     twin rows_small_avx2_f64.h), for the loss, and for float softmax and
 *     log-softmax (small_softmax_rows);
 *   - a one-hot loss with its gradient (every method): the max, then each
 *     exp stored into the gradient while it is summed, then scaled in place
 *     (stored_exps, finish_loss_grad): one exp per logit.  Its loss comes
 *     from those sums, not the sweep's, and may differ from a forward-only
 *     call's in the last bit;
 *   - label smoothing over labels (stable): the same, plus the cross term in
 *     one vector pass (smoothed_cross, smoothed_grad).
 * Probability targets keep sum_j q_j (max - x_j), shifted as the sums are,
 * and a second pass writes their gradient; naive and maxsub with non-one-hot
 * targets also need one for their clamped per-class logs (the clamp needs
 * the finished sum).
 *
 * Each vector loop (rows_avx2.h, rows_avx2_f64.h, rows_online_avx2.h,
 * rows_small_avx2.h, rows_small_avx2_f64.h) has its portable twin here
 * (same operations, same order, emulated lanes, any stride), so every path,
 * CPU and thread count gives the same bits.
 *
 * Precision.  Sums are kept in double (those of a call's losses compensated:
 * psm_sum).  naive and maxsub round the total (rest + ties) to REAL once,
 * which is the float sum their formulas describe (it is inf exactly when the
 * rounded float sum overflows) without depending on the order of the
 * additions; the rest of their arithmetic is REAL, as in Caffe.  stable uses
 * s, the sum without the max's own term, so log1p(s) keeps small losses to
 * full relative precision: a confident, correct prediction with loss 1e-30
 * reads 1e-30, not 0.  Its error is that of exp (<= 0.603 ULP per term for
 * float, exp_f32.h; 0.511 for double, exp_f64.h), the rounding of x_j - max
 * in REAL (<= |x_j - max| 2^-24 relative for float), the vector loops'
 * float partial sums (<= 2^-23 relative), s taken as S - 1 where s >= 1
 * (one-hot gradient, the sweep: <= 2^-22 relative), log1p's 0.840 ULP
 * (log1p_f64.h), and the final rounding; tests/test_oracle.py and
 * tests/test_properties.py check this bound against wider oracles.
 */

/* One position's target distribution q (see psm_options in the header). */
typedef struct {
    const double *weight; /* class weights, or NULL */
    const REAL *probs;    /* t_c at probs[c * stride], or NULL for a label */
    int64_t label;        /* y, or -1 with probabilities */
    double label_part;    /* (1 - eps) w_y */
    double keep;          /* 1 - eps */
    double smooth;        /* eps / C */
    double z_scale;       /* z v: the z-loss's weight (psm_options.z_loss) */
} FN(target);

static double FN(target_mass)(const FN(target) *t, int64_t c, int64_t stride)
{
    double w = t->weight ? t->weight[c] : 1.0;
    if (t->probs)
        return w * (t->keep * (double)t->probs[c * stride] + t->smooth);
    return (c == t->label ? t->label_part : 0.0) + t->smooth * w;
}

/* q is all on the label: only its term is needed, no pass over classes. */
static int FN(is_one_hot)(const FN(target) *t)
{
    return t->probs == NULL && t->smooth == 0.0;
}

/* The target of the position with label y, or (probs non-NULL) with
 * probability targets at probs, over a block of classes starting at class
 * class_offset of total_classes (class c of the block is class_offset + c of
 * the position).  Returns 1, 0 for a label to ignore, or -1 for a label
 * outside [0, total_classes): the label is bounded here, where it is read
 * for use as an index, whatever an earlier check of the array saw. */
static int FN(target_at)(const psm_options *opt, const int64_t *labels, int64_t pos,
                         const REAL *probs, int64_t class_offset,
                         int64_t total_classes, FN(target) *t)
{
    const double *w = opt->class_weight;
    double eps = opt->label_smoothing;
    FN(target) at = {w ? w + class_offset : NULL, probs, -1, 0.0, 1.0 - eps,
                     eps / (double)total_classes, opt->z_loss};
    if (!probs) {
        int64_t y = read_label(labels, pos);
        if (opt->use_ignore_index && y == opt->ignore_index)
            return 0;
        if (y < 0 || y >= total_classes)
            return -1;
        at.label = y - class_offset;
        at.label_part = (1.0 - eps) * (w ? w[y] : 1.0);
        at.z_scale *= w ? w[y] : 1.0;
    }
    *t = at;
    return 1;
}

/* What one pass over a position's logits leaves. */
typedef struct {
    REAL max;        /* the shift: the running max, or 0 for naive */
    double rest;     /* sum of exp(x_j - max) over x_j != max */
    double ties;     /* how many x_j == max */
    double cross;    /* stable, non-one-hot: sum over q_j != 0 of q_j (max - x_j) */
    double cross_mass; /* ... the q_j of its finite x_j, summed */
    double mass;     /* ... and sum of q_j */
    int cross_inf;   /* ... some q_j > 0 on x_j = -inf: the cross term is +inf */
} FN(row_state);

#if VECTOR_ROWS
/* VEC(name), or with near (NEAR_EXPS) its variant whose exps skip their
 * range check, every argument being known to lie in [-87, 87] or be NaN. */
#if NEAR_EXPS
#define VEC_EXPS(name, near) ((near) ? VEC(name##_near) : VEC(name))
#else
#define VEC_EXPS(name, near) ((void)(near), VEC(name))
#endif

/* The max of a contiguous row (VEC(block_max)), +0 for a zero max; with
 * NEAR_EXPS its min too, from the same pass (VEC(block_range)), else
 * *low = -inf, which near_exps refuses. */
static REAL FN(vec_row_max)(const REAL *x, int64_t n, REAL *low)
{
#if NEAR_EXPS
    REAL m = VEC(block_range)(x, n, low);
#else
    REAL m = VEC(block_max)(x, n);
    *low = (REAL)-INFINITY;
#endif
    return m == 0 ? 0 : m;
}
#endif

/* The shift of a row's exps: its max m, or for naive and maxsub (not
 * stable) -BIG for a max of -inf, so that a -inf logit gives exp(-inf) = 0
 * rather than NaN while no finite logit has come. */
static REAL FN(exp_shift)(REAL m, int stable)
{
    return stable || m != (REAL)-INFINITY ? m : -BIG;
}

/* Whether every exp(x_j - shift) of a row whose x_j other than NaN lie in
 * [low, max] may skip the range check (NEAR_EXPS): x_j - shift lies in
 * [low - shift, max - shift], rounding being monotonic, and a NaN bound
 * fails. */
static int FN(near_exps)(REAL low, REAL max, REAL shift)
{
#if NEAR_EXPS
    return low - shift >= -PSM_EXP_FAST_LIMIT && max - shift <= PSM_EXP_FAST_LIMIT;
#else
    (void)low;
    (void)max;
    (void)shift;
    return 0;
#endif
}

/* The max of n logits, NaN skipped; -inf if none. */
static REAL FN(block_max)(const REAL *x, int64_t n, int64_t stride, int fast)
{
#if VECTOR_ROWS
    if (fast && stride == 1)
        return VEC(block_max)(x, n);
#else
    (void)fast;
#endif
    REAL m = (REAL)-INFINITY;
    for (int64_t j = 0; j < n; j++)
        if (x[j * stride] > m)
            m = x[j * stride];
    return m;
}

/* exp(v - shift), also stored to *e when e is not NULL (softmax's one exp
 * per element); with ties, v == shift is counted there and adds 0. */
static REAL FN(term)(REAL v, REAL shift, double *ties, REAL *e)
{
    if (e)
        *e = EXP(v - shift);
    if (ties && v == shift) {
        *ties += 1.0;
        return 0;
    }
    return e ? *e : EXP(v - shift);
}

/* &e[k], or NULL when nothing is stored. */
static REAL *FN(store_at)(REAL *e, int64_t k)
{
    return e ? e + k : NULL;
}

#if LANE_SUMS
/* acc[k] += s[k], then s[k + 4]: one vector's lanes joining 4 double lanes */
static void FN(add_wide)(double acc[4], const REAL s[8])
{
    for (int k = 0; k < 4; k++)
        acc[k] = (acc[k] + (double)s[k]) + (double)s[k + 4];
}
#endif

/* The portable twin of the vector sums: the sum of exp(x_j - shift) over n
 * logits, or with ties, over the x_j != shift, counting those into *ties;
 * with e, each exp(x_j - shift) is also stored to e (x's stride).  For
 * float, psm_block_total_avx2, psm_block_sums_avx2 and
 * psm_exp_store_sum_avx2 on 8 emulated lanes.  Always inlined, so that
 * block_sum's NULL e folds away: a test per element costs float64 (which
 * runs this loop) a tenth of its time. */
static PSM_ALWAYS_INLINE double FN(lane_sum)(const REAL *x, int64_t n,
                                             int64_t stride, REAL shift,
                                             double *ties, REAL *e)
{
#if LANE_SUMS
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    REAL s[8];
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        for (int l = 0; l < 8; l++) {
            int64_t k = j + l;
            REAL e0 = FN(term)(x[k * stride], shift, ties, FN(store_at)(e, k * stride));
            REAL e1 = FN(term)(x[(k + 8) * stride], shift, ties,
                               FN(store_at)(e, (k + 8) * stride));
            REAL e2 = FN(term)(x[(k + 16) * stride], shift, ties,
                               FN(store_at)(e, (k + 16) * stride));
            REAL e3 = FN(term)(x[(k + 24) * stride], shift, ties,
                               FN(store_at)(e, (k + 24) * stride));
            s[l] = (e0 + e1) + (e2 + e3);
        }
        FN(add_wide)(acc, s);
    }
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++)
            s[l] = FN(term)(x[(j + l) * stride], shift, ties,
                            FN(store_at)(e, (j + l) * stride));
        FN(add_wide)(acc, s);
    }
    if (j < n) {   /* the lanes of psm_load_tail_avx2; the others add +0 */
        int64_t first = n >= 8 ? n - 8 : 0, done = n >= 8 ? 8 - (n - j) : 0;
        for (int l = 0; l < 8; l++) {
            int64_t k = first + l;
            s[l] = l >= done && k < n
                       ? FN(term)(x[k * stride], shift, ties, FN(store_at)(e, k * stride))
                       : 0;
        }
        FN(add_wide)(acc, s);
    }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
#else
    /* 4 double lanes: each 16 terms as (e0 + e1) + (e2 + e3) per lane, then
     * groups of 4, then the last n % 4 in lanes 0.., the others adding +0 */
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 4; l++) {
            int64_t k = j + l;
            REAL e0 = FN(term)(x[k * stride], shift, ties, FN(store_at)(e, k * stride));
            REAL e1 = FN(term)(x[(k + 4) * stride], shift, ties,
                               FN(store_at)(e, (k + 4) * stride));
            REAL e2 = FN(term)(x[(k + 8) * stride], shift, ties,
                               FN(store_at)(e, (k + 8) * stride));
            REAL e3 = FN(term)(x[(k + 12) * stride], shift, ties,
                               FN(store_at)(e, (k + 12) * stride));
            acc[l] = acc[l] + ((e0 + e1) + (e2 + e3));
        }
    for (; j < n; j += 4)
        for (int l = 0; l < 4; l++) {
            int64_t k = j + l;
            acc[l] = acc[l] + (k < n ? FN(term)(x[k * stride], shift, ties,
                                                FN(store_at)(e, k * stride))
                                     : 0);
        }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
#endif
}

/* The sum of exp(x_j - shift) over n logits, or with ties, over the x_j !=
 * shift, counting those into *ties: the vector loops, or their twin. */
static double FN(block_sum)(const REAL *x, int64_t n, int64_t stride, REAL shift,
                            int fast, int near, double *ties)
{
#if VECTOR_ROWS
    if (fast && stride == 1) {
        if (!ties)
            return VEC_EXPS(block_total, near)(x, n, shift);
        double rest = 0.0;
        VEC_EXPS(block_sums, near)(x, n, shift, &rest, ties);
        return rest;
    }
#else
    (void)fast;
    (void)near;
#endif
    return FN(lane_sum)(x, n, stride, shift, ties, NULL);
}

/* One block of a row, contiguous: strided blocks are copied when the vector
 * loops will read them. */
static const REAL *FN(block_values)(const REAL *b, int64_t len, int64_t stride,
                                    int fast, REAL *copy, int64_t *step)
{
    *step = stride;
#if VECTOR_ROWS
    if (fast && stride != 1) {
        for (int64_t j = 0; j < len; j++)
            copy[j] = b[j * stride];
        *step = 1;
        return copy;
    }
#else
    (void)fast;
    (void)len;
    (void)copy;
#endif
    return b;
}


#if ONLINE_ROWS
/* max_ps(a, b): a if a > b, else b (so b when either is NaN) */
static inline float FN(lane_max)(float a, float b)
{
    return a > b ? a : b;
}

/* The portable twin of psm_online_sums_avx2 (rows_online_avx2.h): the same
 * groups of 32, lanes, compares, clamp, exp and sums, for any stride. */
static void FN(online_lanes)(const REAL *x, int64_t n, int64_t stride,
                             psm_online_state *st)
{
    for (int64_t j = 0; j < n; j += 32) {
        float v[4][8], s[8];
        int over = 0;
        for (int l = 0; l < 8; l++) {
            for (int i = 0; i < 4; i++) {
                int64_t k = j + 8 * i + l;
                v[i][l] = k < n ? x[k * stride] : (REAL)-INFINITY;
            }
            float g = FN(lane_max)(FN(lane_max)(v[0][l], v[1][l]),
                                   FN(lane_max)(v[2][l], v[3][l]));
            st->max[l] = FN(lane_max)(g, st->max[l]);
            over |= st->max[l] > st->thr;
        }
        if (over) {
            psm_online_rescale(st);
            if (st->special)
                return;
        }
        for (int l = 0; l < 8; l++) {
            float e[4];
            for (int i = 0; i < 4; i++) {
                float d = v[i][l] - st->ref;
                e[i] = j + 8 * i + l < n ? EXP(FN(lane_max)(PSM_ONLINE_FLOOR, d)) : 0.0f;
            }
            s[l] = (e[0] + e[1]) + (e[2] + e[3]);
        }
        FN(add_wide)(st->acc, s);
    }
}

/* The first j with x_j == m, or -1, and whether another follows (*more):
 * psm_find_max_avx2, or this loop. */
static int64_t FN(find_max)(const REAL *x, int64_t n, int64_t stride, int fast, REAL m,
                            int *more)
{
#if VECTOR_ROWS
    if (fast && stride == 1)
        return psm_find_max_avx2(x, n, m, more);
#else
    (void)fast;
#endif
    int64_t first = -1;
    *more = 0;
    for (int64_t j = 0; j < n; j++)
        if (x[j * stride] == m) {
            if (first >= 0) {
                *more = 1;
                return first;
            }
            first = j;
        }
    return first;
}

/* The stable method's one pass over a position's logits (one-hot targets):
 * 1 with *st filled (max m, rest s, ties 1: stable_rest gives s), or 0 when
 * the row needs the exact path (see rows_online_avx2.h). */
static int FN(online_pass)(const REAL *x, int64_t classes, int64_t stride, int fast,
                           FN(row_state) *st)
{
    psm_online_state o;
    psm_online_start(&o);
#if VECTOR_ROWS
    if (fast && stride == 1) {
        psm_online_sums_avx2(x, classes, &o);
    } else if (fast) {   /* strided: the vector loop on copies, block by block */
        REAL copy[PSM_BLOCK];
        for (int64_t start = 0; start < classes && !o.special; start += PSM_BLOCK) {
            int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK;
            for (int64_t j = 0; j < len; j++)
                copy[j] = x[(start + j) * stride];
            psm_online_sums_avx2(copy, len, &o);
        }
    } else
#else
    (void)fast;
#endif
    {
        FN(online_lanes)(x, classes, stride, &o);
    }
    float m;
    double s;
    int done = psm_online_finish(&o, fast, &m, &s);
    if (done == PSM_ONLINE_EXACT)
        return 0;
    if (done == PSM_ONLINE_DONE) {
        FN(row_state) one = {m, s, 1.0, 0.0, 0.0, 0.0, 0};
        *st = one;
        return 1;
    }
    /* A confident row, whose max m is known: where the max is unique, the
     * sweep's sum with its lane fixed (psm_online_fixed_rest); else the
     * sums with the ties counted, against m for every block (no
     * rescaling), from the cache the sweep just filled. */
    int more;
    int64_t p = FN(find_max)(x, classes, stride, fast, m, &more);
    if (p >= 0 && !more) {
        s = psm_online_fixed_rest(&o, fast, m, x, classes, stride, p);
        if (s >= 0.0) {
            FN(row_state) fixed = {m, s, 1.0, 0.0, 0.0, 0.0, 0};
            *st = fixed;
            return 1;
        }
    }
    REAL copy[PSM_BLOCK];
    double rest = 0.0, ties = 0.0;
    for (int64_t start = 0; start < classes; start += PSM_BLOCK) {
        int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK, step;
        const REAL *values = FN(block_values)(x + start * stride, len, stride, fast, copy,
                                              &step);
        rest += FN(block_sum)(values, len, step, m, fast, 0, &ties);
    }
    FN(row_state) exact = {m, rest, ties, 0.0, 0.0, 0.0, 0};
    *st = exact;
    return 1;
}
#endif

/* One pass over a position's logits; t is NULL unless the stable cross term
 * is wanted, exact_rest asks for the sum without the max's own term to full
 * relative precision (stable).  NaN never compares greater, so it lands in
 * the sum and makes the position NaN. */
static void FN(row_pass)(const REAL *x, int64_t classes, int64_t stride,
                         int track_max, int exact_rest, int fast,
                         const FN(target) *t, FN(row_state) *st)
{
#if ONLINE_ROWS
    /* stable, one-hot: one sweep, unless the row is confident or special;
     * rows of up to PSM_ONLINE_MIN_CLASSES keep the blocks (cheaper there;
     * the eight-row loop of rows_small_avx2.h reproduces their states) */
    if (exact_rest && track_max && t == NULL && classes > PSM_ONLINE_MIN_CLASSES &&
        FN(online_pass)(x, classes, stride, fast, st))
        return;
#endif
    REAL m = track_max ? (REAL)-INFINITY : (REAL)0;
    double rest = 0.0, ties = 0.0, cross = 0.0, cross_mass = 0.0, mass = 0.0;
    int cross_inf = 0;
#if VECTOR_ROWS
    if (fast && stride == 1 && classes <= PSM_BLOCK && t == NULL) {
        /* one contiguous block: the loop below, without its bookkeeping */
        REAL low = (REAL)-INFINITY;
        if (track_max)
            m = FN(vec_row_max)(x, classes, &low);
        REAL shift = FN(exp_shift)(m, exact_rest);
        int near = FN(near_exps)(low, m, shift);
        if (exact_rest)
            VEC_EXPS(block_sums, near)(x, classes, m, &rest, &ties);
        else
            rest = VEC_EXPS(block_total, near)(x, classes, shift);
        FN(row_state) one = {m, rest, ties, 0.0, 0.0, 0.0, 0};
        *st = one;
        return;
    }
#endif
    REAL copy[PSM_BLOCK];
    for (int64_t start = 0; start < classes; start += PSM_BLOCK) {
        int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK, step;
        const REAL *b = x + start * stride;
        const REAL *values = FN(block_values)(b, len, stride, fast, copy, &step);
        REAL low = (REAL)-INFINITY;   /* the block's min, where known */
        if (track_max) {
            REAL block_max;
#if VECTOR_ROWS
            if (fast && step == 1)
                block_max = FN(vec_row_max)(values, len, &low);
            else
#endif
                block_max = FN(block_max)(values, len, step, fast);
            if (block_max == 0)
                block_max = 0;   /* +0, whichever zero the lanes kept */
            if (block_max > m) {
                /* what was summed against m now counts against block_max
                 * (against -inf it was 0, or NaN, which must stay) */
                rest = (rest + ties) *
                       (m == (REAL)-INFINITY ? 0.0 : exp((double)m - (double)block_max));
                ties = 0.0;
                if (cross_mass != 0.0)
                    cross += cross_mass * ((double)block_max - (double)m);
                m = block_max;
            }
        }
        REAL shift = FN(exp_shift)(m, exact_rest);
        /* the block's values lie in [low, m] */
        int near = FN(near_exps)(low, m, shift);
        if (exact_rest)
            /* stable: the max's own terms are counted, not summed, so that the
             * sum of the others keeps its relative precision however small */
            rest += FN(block_sum)(values, len, step, m, fast, near, &ties);
        else
            /* naive, maxsub: only the total matters */
            rest += FN(block_sum)(values, len, step, shift, fast, near, NULL);
        for (int64_t j = 0; t && j < len; j++) {
            double q = FN(target_mass)(t, start + j, stride);
            if (q != 0.0) {  /* NaN passes, and poisons the loss */
                REAL v = b[j * stride];
                mass += q;
                if (v == (REAL)-INFINITY) {
                    cross_inf = 1;
                } else {
                    cross += q * ((double)m - (double)v);
                    cross_mass += q;
                }
            }
        }
    }
    st->max = m;
    st->rest = rest;
    st->ties = ties;
    st->cross = cross;
    st->cross_mass = cross_mass;
    st->mass = mass;
    st->cross_inf = cross_inf;
}

/* Eight rows at once: row_pass(t = NULL) of rows x, x + classes, ...,
 * x + 7 classes, contiguous, classes <= PSM_SMALL_CLASSES, on the vector
 * path (VEC(small_rows)), with the same states, bit for bit.  Returns 0
 * where there is no such path: the caller passes the rows one by one. */
static int FN(small_row_passes)(const REAL *x, int64_t classes, int track_max,
                                int exact_rest, int fast, FN(row_state) st[8])
{
#if SMALL_ROWS
    if (fast && classes <= PSM_SMALL_CLASSES) {
        REAL max[8];
        double rest[8], ties[8];
        VEC(small_rows)(x, (int)classes, track_max, exact_rest, BIG, max, rest, ties);
        for (int r = 0; r < 8; r++) {
            FN(row_state) one = {max[r], rest[r], ties[r], 0.0, 0.0, 0.0, 0};
            st[r] = one;
        }
        return 1;
    }
#else
    (void)x;
    (void)classes;
    (void)track_max;
    (void)exact_rest;
    (void)fast;
    (void)st;
#endif
    return 0;
}

/* g_j = exp(x_j - shift) * factor, or with divide ((exp(x_j - shift) /
 * divisor) * factor) * scale, in REAL: psm_grad_row_avx2's twin. */
static void FN(grad_row)(const REAL *x, int64_t n, int64_t stride, int fast,
                         REAL shift, int divide, REAL divisor, REAL factor,
                         REAL scale, REAL *g)
{
#if VECTOR_ROWS
    if (fast && stride == 1) {
        VEC(grad_row)(x, n, shift, divide, divisor, factor, scale, g);
        return;
    }
    if (fast) {   /* strided: the vector loop on copies, block by block */
        REAL in[PSM_BLOCK], out[PSM_BLOCK];
        for (int64_t start = 0; start < n; start += PSM_BLOCK) {
            int64_t len = n - start < PSM_BLOCK ? n - start : PSM_BLOCK;
            for (int64_t j = 0; j < len; j++)
                in[j] = x[(start + j) * stride];
            VEC(grad_row)(in, len, shift, divide, divisor, factor, scale, out);
            for (int64_t j = 0; j < len; j++)
                g[(start + j) * stride] = out[j];
        }
        return;
    }
#else
    (void)fast;
#endif
    for (int64_t j = 0; j < n; j++) {
        REAL e = EXP(x[j * stride] - shift);
        g[j * stride] = divide ? ((e / divisor) * factor) * scale : e * factor;
    }
}

/* stable: the softmax denominator is 1 + s, s the sum without the max's own
 * term.  A position whose max is not finite (a +inf logit, or every logit
 * -inf or NaN) has no defined softmax. */
static double FN(stable_rest)(const FN(row_state) *st)
{
    return isfinite(st->max) ? st->rest + (st->ties - 1.0) : NAN;
}

/* naive and maxsub: the sum of exp(x_j - shift) in REAL.  Under maxsub a
 * max that is not finite makes exp(max - max) NaN, and so the sum. */
static REAL FN(float_total)(const FN(row_state) *st, int method)
{
    if (method == PSM_MAXSUB && !isfinite(st->max))
        return (REAL)NAN;
    return (REAL)(st->rest + st->ties);
}

/* lane_sum with a store target, as a call of its own: inlined into
 * exp_store_sum it made float softmax's vector path 6-8% slower. */
static PSM_NOINLINE double FN(stored_lane_sum)(const REAL *x, int64_t n, int64_t stride,
                                               REAL shift, REAL *e)
{
    return FN(lane_sum)(x, n, stride, shift, NULL, e);
}

/* One exp per element: e_j = exp(x_j - shift) stored to e (the stride of x;
 * e may be x), and block_sum's total of them, in its order:
 * psm_exp_store_sum_avx2 (on a copy of a strided block), or the same twin.
 * n <= PSM_BLOCK. */
static double FN(exp_store_sum)(const REAL *x, int64_t n, int64_t stride, REAL shift,
                                int fast, int near, REAL *e)
{
#if VECTOR_ROWS
    if (fast && stride == 1)
        return VEC_EXPS(exp_store_sum, near)(x, n, shift, e);
    /* (n > 0: under -fwrapv, in Python's default CFLAGS, gcc could not
     * otherwise see that copy is written before it is read) */
    if (fast && n > 0) {
        REAL copy[PSM_BLOCK];
        for (int64_t j = 0; j < n; j++)
            copy[j] = x[j * stride];
        double sum = VEC(exp_store_sum)(copy, n, shift, copy);
        for (int64_t j = 0; j < n; j++)
            e[j * stride] = copy[j];
        return sum;
    }
#else
    (void)fast;
    (void)near;
#endif
    return FN(stored_lane_sum)(x, n, stride, shift, e);
}

/* The sum of e_j = exp(x_j - shift) over a whole position, each e_j stored
 * to e (the stride of x) once, block by block. */
static double FN(exp_store_total)(const REAL *x, int64_t classes, int64_t stride,
                                  REAL shift, int fast, int near, REAL *e)
{
    double total = 0.0;
    for (int64_t start = 0; start < classes; start += PSM_BLOCK) {
        int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK;
        total += FN(exp_store_sum)(x + start * stride, len, stride, shift, fast, near,
                                   e + start * stride);
    }
    return total;
}

/* g_j = ((g_j / divisor) * factor) * scale with divide, else g_j * factor,
 * in place (the stride of x): grad_row's arithmetic on exps already stored.
 * Elementwise, so psm_scale_row_avx2 rounds each g_j as this loop does. */
static void FN(scale_row)(REAL *g, int64_t n, int64_t stride, int fast, int divide,
                          REAL divisor, REAL factor, REAL scale)
{
#if VECTOR_ROWS
    if (fast && stride == 1) {
        VEC(scale_row)(g, n, divide, divisor, factor, scale);
        return;
    }
#else
    (void)fast;
#endif
    for (int64_t j = 0; j < n; j++) {
        REAL e = g[j * stride];
        g[j * stride] = divide ? ((e / divisor) * factor) * scale : e * factor;
    }
}

/* The max that a row's exps are shifted by: none for naive (0), and +0
 * for a zero max, whichever zero the lanes kept. */
static REAL FN(row_shift_max)(const REAL *x, int64_t classes, int64_t stride, int method,
                              int fast)
{
    if (method == PSM_NAIVE)
        return 0;
    REAL m = FN(block_max)(x, classes, stride, fast);
    return m == 0 ? 0 : m;
}

/* A row's exps e_j = exp(x_j - shift), stored to e (the stride of x), and
 * their sum (exp_store_total), with its max *max (row_shift_max), shifted
 * as row_pass shifts them (exp_shift).  On the float vector path
 * (NEAR_EXPS) the max pass takes the row's min as well, and when every
 * x_j - shift then lies in [-87, 87] (or is NaN) the exps skip their range
 * check: the same bits. */
static double FN(stored_row_exps)(const REAL *x, int64_t classes, int64_t stride,
                                  int method, int fast, REAL *e, REAL *max)
{
    REAL low = (REAL)-INFINITY, m;   /* -inf: unknown, which near_exps refuses */
#if VECTOR_ROWS
    if (fast && stride == 1 && method != PSM_NAIVE)
        m = FN(vec_row_max)(x, classes, &low);
    else
#endif
        m = FN(row_shift_max)(x, classes, stride, method, fast);
    REAL shift = FN(exp_shift)(m, method == PSM_STABLE);
    *max = m;
    return FN(exp_store_total)(x, classes, stride, shift, fast, FN(near_exps)(low, m, shift),
                               e);
}

/* The softmax of one position into y (the stride of x), one exp per logit:
 * e_j = exp(x_j - shift) is stored while it is summed, then scaled in place.
 *   stable         shift the max m; S the sum of every e_j (the max's own
 *                  terms are exp(0) = 1, so S = 1 + s >= 1 needs no tie
 *                  count); y_j = e_j * (1 / S), the factor rounded to REAL
 *                  once
 *   naive, maxsub  shift 0 or m; y_j = e_j / total, total the sum in REAL
 *                  (float_total's semantics)
 * The max is taken over the whole row first, so no sum is ever rescaled. */
static void FN(softmax_row)(const REAL *x, int64_t classes, int64_t stride, int method,
                            int fast, REAL *y)
{
    int stable = method == PSM_STABLE;
    REAL m;
    double sum = FN(stored_row_exps)(x, classes, stride, method, fast, y, &m);
    if (stable) {
        /* no softmax (a +inf logit, no finite one, or a NaN): NaN written,
         * not multiplied in, whose sign would depend on the operand order a
         * vectorizing compiler picks */
        if (!isfinite(m) || isnan(sum)) {
            for (int64_t j = 0; j < classes; j++)
                y[j * stride] = (REAL)NAN;
            return;
        }
        FN(scale_row)(y, classes, stride, fast, 0, 1, (REAL)(1.0 / sum), 1);
    } else {
        FN(row_state) st = {m, sum, 0.0, 0.0, 0.0, 0.0, 0};
        FN(scale_row)(y, classes, stride, fast, 1, FN(float_total)(&st, method), 1, 1);
    }
}

#if SMALL_ROWS
/* Eight rows' softmax_row at once: rows x, x + classes, ..., x + 7 classes,
 * contiguous, classes <= PSM_SMALL_CLASSES, into y alike, on the vector
 * path (VEC(small_exps); for float rows_small_out_avx2.h writes y: fast
 * only), with the same bits: the same max, exps and sums, each row's factor
 * rounded as softmax_row rounds it, each y_j as scale_row rounds it. */
static void FN(small_softmax_rows)(const REAL *x, int64_t classes, int method, REAL *y)
{
    REAL e[8 * PSM_SMALL_CLASSES], max[8], by[8];
    double sum[8], rest[8], ties[8];
    int stable = method == PSM_STABLE;
    /* stable shifts by the max as maxsub does wherever it has a softmax (a
     * finite max); asked as stable, the batch would also sum the exps
     * without the max's own terms, which only the loss needs */
    VEC(small_exps)(x, (int)classes, stable ? PSM_MAXSUB : method, BIG, e, max, sum, rest,
                    ties);
    unsigned no_softmax = 0;
#if SMALL_OUT_ROWS
    if (stable)
        no_softmax = psm_small_softmax_factors_avx2(max, sum, by);
    else
#endif
        for (int r = 0; r < 8; r++) {
            if (stable) {
                no_softmax |= (unsigned)(!isfinite(max[r]) || isnan(sum[r])) << r;
                by[r] = (REAL)(1.0 / sum[r]);
            } else {
                FN(row_state) st = {max[r], sum[r], 0.0, 0.0, 0.0, 0.0, 0};
                by[r] = FN(float_total)(&st, method);
            }
        }
#if SMALL_OUT_ROWS
    /* scale_row's factors of 1 change no bit of a product */
    const REAL one[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    psm_small_scale_rows_avx2(e, (int)classes, !stable, by, stable ? by : one, one, y);
#else
    /* scale_row's arithmetic, its factors of 1 left out (they change no
     * bit of a product) */
    for (int r = 0; r < 8; r++)
        for (int64_t j = 0; j < classes; j++)
            y[r * classes + j] = stable ? e[j * 8 + r] * by[r] : e[j * 8 + r] / by[r];
#endif
    for (int r = 0; no_softmax && r < 8; r++)   /* see softmax_row */
        if (no_softmax >> r & 1)
            for (int64_t j = 0; j < classes; j++)
                y[r * classes + j] = (REAL)NAN;
}
#endif

/* stable: log(1 + s), the log of a position's softmax denominator over
 * exp(max); NaN where it has none. */
static double FN(log_norm)(const FN(row_state) *st)
{
    return psm_log1p(FN(stable_rest)(st));
}

/* log_norm of `rows` rows (8 or PSM_FINISH_ROWS): four at a time where the
 * vector path runs. */
static void FN(log_norms)(const FN(row_state) *st, int rows, int fast, double *out)
{
    for (int r = 0; r < rows; r++)
        out[r] = FN(stable_rest)(&st[r]);
#if VECTOR_ROWS
    if (fast) {
        psm_log1p_avx2(out, rows);
        return;
    }
#else
    (void)fast;
#endif
    for (int r = 0; r < rows; r++)
        out[r] = psm_log1p(out[r]);
}

/* The log-softmax of one position into y: (x_j - m) - log1p(s) in double,
 * rounded to REAL, after one row_pass (psm_log_softmax_row_avx2's twin). */
static void FN(log_softmax_row)(const REAL *x, int64_t classes, int64_t stride, int fast,
                                REAL *y)
{
    FN(row_state) st;
    FN(row_pass)(x, classes, stride, 1, 1, fast, NULL, &st);
    double log_norm = FN(log_norm)(&st);
#if VECTOR_ROWS
    if (fast && stride == 1) {
        VEC(log_softmax_row)(x, classes, st.max, log_norm, y);
        return;
    }
#endif
    for (int64_t j = 0; j < classes; j++)
        y[j * stride] = (REAL)(((double)x[j * stride] - (double)st.max) - log_norm);
}

#if SMALL_ROWS
/* `rows` rows' (8 or PSM_FINISH_ROWS) log_softmax_row at once, as
 * small_softmax_rows: their row_pass states (VEC(small_rows), as
 * small_row_passes, eight at a time) and log_norms (as log_norms, without
 * the states' round trip through memory), then y written row by row with
 * log_softmax_row's arithmetic. */
static PSM_ALWAYS_INLINE void FN(small_log_softmax_rows_n)(const REAL *x, int64_t classes,
                                                          int rows, REAL *y)
{
    REAL max[PSM_FINISH_ROWS];
    double rest[PSM_FINISH_ROWS], ties[PSM_FINISH_ROWS], log_norm[PSM_FINISH_ROWS];
    for (int b = 0; b < rows; b += 8)
        VEC(small_rows)(x + b * classes, (int)classes, 1, 1, BIG, max + b, rest + b, ties + b);
#if SMALL_OUT_ROWS
    psm_small_log_norms_avx2(max, rest, ties, rows, log_norm);
    for (int b = 0; b < rows; b += 8)
        psm_small_log_softmax_avx2(x + b * classes, (int)classes, max + b, log_norm + b,
                                   y + b * classes);
#else
    for (int r = 0; r < rows; r++) {
        FN(row_state) st = {max[r], rest[r], ties[r], 0.0, 0.0, 0.0, 0};
        log_norm[r] = FN(stable_rest)(&st);
    }
    psm_log1p_avx2(log_norm, rows);
    for (int r = 0; r < rows; r++)
        for (int64_t j = 0; j < classes; j++)
            y[r * classes + j] = (REAL)(((double)x[r * classes + j] - (double)max[r]) -
                                        log_norm[r]);
#endif
}

/* small_log_softmax_rows_n, a copy for each row count, whose loops then
 * unroll (as psm_small_stable_losses_avx2; (65536, 10), C harness: 797
 * against 812 us with one copy). */
static void FN(small_log_softmax_rows)(const REAL *x, int64_t classes, int rows, REAL *y)
{
    if (rows == PSM_FINISH_ROWS)
        FN(small_log_softmax_rows_n)(x, classes, PSM_FINISH_ROWS, y);
    else
        FN(small_log_softmax_rows_n)(x, classes, 8, y);
}
#endif

/* naive and maxsub: loss_c = -log(max(p_c, FLT_MIN)) with p_c in REAL, as
 * Caffe's loss -= log(std::max(p, Dtype(FLT_MIN))), for double too: a NaN p
 * stays NaN, and a certain prediction gives +0, not -0. */
static REAL FN(clamped_nll)(REAL shift, REAL total, REAL x)
{
    const REAL tiny = (REAL)FLT_MIN;
    REAL p = EXP(x - shift) / total;
    return (REAL)0 - LOG(p < tiny ? tiny : p);
}

/* The loss of a one-hot position: x_y its label's logit, label_part its
 * share (1 - smoothing, times the label's weight). */
static double FN(one_hot_loss)(const FN(row_state) *st, double log_norm, REAL x_y,
                               double label_part, int method)
{
    if (method == PSM_STABLE) {
        double cross = 0.0;
        /* (m - x_y) first: for logits {1e8, 1e8} it is 0, the loss ln 2 */
        if (label_part != 0.0)
            cross = label_part * ((double)st->max - (double)x_y);
        /* both terms NaN (m = x_y = +inf): which NaN the sum returns
         * depends on the operand order the compiler picks, which differs
         * where label_part is a known 1, so the NaN is written, not summed */
        double loss = cross + label_part * log_norm;
        return isnan(loss) ? NAN : loss;
    }
    if (label_part == 0.0)
        return 0.0;
    return label_part * (double)FN(clamped_nll)(st->max, FN(float_total)(st, method), x_y);
}

/* One position's loss, given its log_norm (stable; unused otherwise); x_y
 * is the label's logit (one-hot targets), and x the logits, which only
 * naive and maxsub with other targets read. */
static double FN(position_loss_given)(const FN(row_state) *st, double log_norm, REAL x_y,
                                      const REAL *x, int64_t classes, int64_t stride,
                                      const FN(target) *t, int method)
{
    if (FN(is_one_hot)(t))
        return FN(one_hot_loss)(st, log_norm, x_y, t->label_part, method);
    if (method == PSM_STABLE) {
        if (isnan(log_norm))
            return NAN;
        return (st->cross_inf ? INFINITY : st->cross) + st->mass * log_norm;
    }
    REAL total = FN(float_total)(st, method);
    double loss = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        double q = FN(target_mass)(t, j, stride);
        if (q != 0.0)
            loss += q * (double)FN(clamped_nll)(st->max, total, x[j * stride]);
    }
    return loss;
}

/* position_loss_given, the log_norm computed here. */
static double FN(position_loss)(const FN(row_state) *st, REAL x_y, const REAL *x,
                                int64_t classes, int64_t stride,
                                const FN(target) *t, int method)
{
    double log_norm = method == PSM_STABLE ? FN(log_norm)(st) : 0.0;
    return FN(position_loss_given)(st, log_norm, x_y, x, classes, stride, t, method);
}

/* Q = sum_j q_j over a position's classes. */
static double FN(target_total)(const FN(target) *t, int64_t classes, int64_t stride)
{
    if (FN(is_one_hot)(t))
        return t->label_part;
    double mass = 0.0;
    for (int64_t j = 0; j < classes; j++)
        mass += FN(target_mass)(t, j, stride);
    return mass;
}

/* g plus a z-loss's share z (z_mass / denom): g itself without a z-loss,
 * so that a -0 stays -0 (g + 0.0 would be +0) and a gradient without a
 * z-loss keeps its bits. */
static double FN(plus_z)(double g, double z)
{
    return z != 0.0 ? g + z : g;
}

/* The gradient of one position, or of a block of its classes (whose label,
 * t->label, may lie outside [0, classes)): (p_j (Q + Z) - q_j) * scale,
 * with st the state of the whole position, mass its Q and z_mass its Z
 * (the z-loss's 2 z v lse, or 0). */
static void FN(position_grad)(const FN(row_state) *st, const REAL *x,
                              int64_t classes, int64_t stride,
                              const FN(target) *t, int method, double scale,
                              int fast, double mass, double z_mass, REAL *grad)
{
    int one_hot = FN(is_one_hot)(t);
    int label_here = t->label >= 0 && t->label < classes;
    double p_mass = FN(plus_z)(mass, z_mass);
    if (method != PSM_STABLE) {
        /* Caffe: diff = prob; diff[label] -= 1; diff *= scale; in REAL */
        REAL total = FN(float_total)(st, method);
        REAL rmass = (REAL)p_mass, rscale = (REAL)scale;
        if (one_hot) {
            FN(grad_row)(x, classes, stride, fast, st->max, 1, total, rmass, rscale, grad);
            if (!label_here)
                return;
            REAL p = EXP(x[t->label * stride] - st->max) / total;
            grad[t->label * stride] = (p * rmass - (REAL)t->label_part) * rscale;
            return;
        }
        for (int64_t j = 0; j < classes; j++) {
            REAL p = EXP(x[j * stride] - st->max) / total;
            grad[j * stride] = (p * rmass - (REAL)FN(target_mass)(t, j, stride)) * rscale;
        }
        return;
    }
    double s = FN(stable_rest)(st);
    if (isnan(s)) {
        for (int64_t j = 0; j < classes; j++)
            grad[j * stride] = (REAL)NAN;
        return;
    }
    double denom = 1.0 + s;
    if (one_hot) {
        /* every class: (Q + Z) p_j scale, in REAL; then the label's own entry */
        FN(grad_row)(x, classes, stride, fast, st->max, 0, 1,
                     (REAL)(p_mass * scale / denom), 1, grad);
        if (!label_here)
            return;
        REAL x_y = x[t->label * stride];
        double g = p_mass * ((double)EXP(x_y - st->max) / denom) - t->label_part;
        if (x_y == st->max)   /* s < 1: the max is unique, and it is y */
            g = s < 1.0 ? FN(plus_z)(-mass * (s / denom), z_mass / denom)
                        : p_mass / denom - t->label_part;
        grad[t->label * stride] = (REAL)(g * scale);
        return;
    }
    /* At the max, p (Q + Z) - q = (Q - q) - Q s / (1 + s) + Z / (1 + s):
     * without cancellation as p -> 1.  s < 1 means the max is unique.
     * Q - q is the block's other q plus the mass outside the block (exactly
     * 0 for a whole position, whose Q was summed in the same order). */
    int64_t at_max = -1;
    double off_max_mass = 0.0, block_mass = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        REAL v = x[j * stride];
        double q = FN(target_mass)(t, j, stride);
        double e = v == st->max ? 1.0 : (double)EXP(v - st->max);
        grad[j * stride] = (REAL)((p_mass * (e / denom) - q) * scale);
        block_mass += q;
        if (v == st->max && at_max < 0)
            at_max = j;
        else
            off_max_mass += q;
    }
    if (s < 1.0 && at_max >= 0)
        grad[at_max * stride] = (REAL)(FN(plus_z)((off_max_mass + (mass - block_mass)) -
                                                  mass * (s / denom), z_mass / denom) *
                                       scale);
}

/* block_sum with ties (shift m), from e_j = exp(x_j - m) already stored
 * in e: psm_stored_sums_avx2 reads them; the twin computes them again, with
 * the same bits. */
static void FN(stored_sums)(const REAL *x, const REAL *e, int64_t n, int64_t stride,
                            REAL m, int fast, double *rest, double *ties)
{
#if VECTOR_ROWS
    if (fast && stride == 1) {
        VEC(stored_sums)(x, e, n, m, rest, ties);
        return;
    }
#else
    (void)e;
#endif
    REAL copy[PSM_BLOCK];
    int64_t step;
    const REAL *b = FN(block_values)(x, n, stride, fast, copy, &step);
    *rest += FN(block_sum)(b, n, step, m, fast, 0, ties);
}

/* A one-hot loss with its gradient, with one exp per logit: the max
 * (stable, maxsub); then e_j = exp(x_j - shift) written to grad while it is
 * summed (exp_store_total, as softmax); then the loss from that sum, and the
 * stored e_j scaled in place (from L2 for any row up to a few 100k
 * classes), the label's entry last.  The arithmetic of position_grad, which
 * computes each exp twice: the gradient has the same bits.
 *
 * stable sums every e_j, the max's own terms exp(0) = 1 among them, so
 * S = 1 + s with no tie count.  s = S - 1 keeps the relative precision of
 * the float sums while s >= 1 (the absolute error of S, ~2^-22 S, is at
 * most ~2^-21 s); a row whose max dominates (s < 1, where log1p(s) needs s
 * to full relative precision, e.g. a loss of 1e-30) sums its terms again
 * with the max's own counted, not added (block_sum's sum with ties, from
 * the stored e_j: no exp computed twice).
 *
 * exp_state: a row's state from its max m and the sum of its stored exps;
 * 0 when stable must also have the exact sums (exact_state). */
static int FN(exp_state)(REAL m, double sum, int method, FN(row_state) *st)
{
    FN(row_state) one = {m, sum, 0.0, 0.0, 0.0, 0.0, 0};
    if (method == PSM_STABLE) {
        one.rest = sum - 1.0;
        one.ties = 1.0;
    }
    *st = one;
    return method != PSM_STABLE || !(isfinite(m) && one.rest < 1.0);
}

static void FN(exact_state)(double rest, double ties, FN(row_state) *st)
{
    st->rest = rest;
    st->ties = ties;
}

/* The exps of a position stored to grad, and its state (see exp_state). */
static void FN(stored_exps)(const REAL *x, int64_t classes, int64_t stride, int method,
                            int fast, REAL *grad, FN(row_state) *st)
{
    REAL m;
    double sum = FN(stored_row_exps)(x, classes, stride, method, fast, grad, &m);
    if (FN(exp_state)(m, sum, method, st))
        return;
    double rest = 0.0, ties = 0.0;
    for (int64_t start = 0; start < classes; start += PSM_BLOCK) {
        int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK;
        FN(stored_sums)(x + start * stride, grad + start * stride, len, stride, m, fast,
                        &rest, &ties);
    }
    FN(exact_state)(rest, ties, st);
}

#if SMALL_ROWS
/* The exps of eight contiguous rows of classes <= PSM_SMALL_CLASSES, e_j
 * of row r at e[j * 8 + r] (VEC(small_exps)), and the states stored_exps
 * gives each row. */
static void FN(small_exp_states)(const REAL *x, int64_t classes, int method, REAL *e,
                                 FN(row_state) st[8])
{
    REAL max[8];
    double sum[8], rest[8], ties[8];
    VEC(small_exps)(x, (int)classes, method, BIG, e, max, sum, rest, ties);
    for (int r = 0; r < 8; r++)
        if (!FN(exp_state)(max[r], sum[r], method, &st[r]))
            FN(exact_state)(rest[r], ties[r], &st[r]);
}
#endif

/* Eight rows' stored_exps at once: rows x, x + classes, ..., x + 7 classes,
 * contiguous, classes <= PSM_SMALL_CLASSES, their exps stored to the rows
 * of grad alike, on the vector path (small_exp_states), with the same bits
 * and states.  Returns 0 where there is no such path. */
static int FN(small_stored_exps)(const REAL *x, int64_t classes, int method, int fast,
                                 REAL *grad, FN(row_state) st[8])
{
#if SMALL_ROWS
    if (fast && classes <= PSM_SMALL_CLASSES) {
        REAL e[8 * PSM_SMALL_CLASSES];
        FN(small_exp_states)(x, classes, method, e, st);
        for (int r = 0; r < 8; r++)
            for (int64_t j = 0; j < classes; j++)
                grad[r * classes + j] = e[j * 8 + r];
        return 1;
    }
#else
    (void)x;
    (void)classes;
    (void)method;
    (void)fast;
    (void)grad;
    (void)st;
#endif
    return 0;
}

/* How finish_grad scales a row's stored exps e_j, as scale_row's divide
 * (naive and maxsub: ((e_j / divisor) * factor) * scale; stable: e_j *
 * factor), divisor, factor and scale; 0 for a stable row with no softmax
 * (s NaN), whose gradient is NaN. */
static int FN(grad_factors)(const FN(row_state) *st, const FN(target) *t, double z_mass,
                            int method, double scale, REAL *divisor, REAL *factor,
                            REAL *rscale)
{
    double p_mass = FN(plus_z)(t->label_part, z_mass);
    if (method != PSM_STABLE) {
        /* Caffe: diff = prob; diff[label] -= 1; diff *= scale; in REAL */
        *divisor = FN(float_total)(st, method);
        *factor = (REAL)p_mass;
        *rscale = (REAL)scale;
        return 1;
    }
    double s = FN(stable_rest)(st);
    if (isnan(s))
        return 0;
    *divisor = 1;
    *factor = (REAL)(p_mass * scale / (1.0 + s));
    *rscale = 1;
    return 1;
}

/* The label's entry of such a row's gradient (grad_factors gave it one),
 * from e_y, its exp before scaling; x_y is the label's logit. */
static REAL FN(label_grad)(const FN(row_state) *st, REAL x_y, REAL e_y, const FN(target) *t,
                           double z_mass, int method, double scale)
{
    double mass = t->label_part, p_mass = FN(plus_z)(mass, z_mass);
    if (method != PSM_STABLE) {
        REAL total = FN(float_total)(st, method);
        REAL rmass = (REAL)p_mass, rscale = (REAL)scale;
        return ((e_y / total) * rmass - (REAL)t->label_part) * rscale;
    }
    double s = FN(stable_rest)(st);
    double denom = 1.0 + s;
    double g = p_mass * ((double)e_y / denom) - t->label_part;
    if (x_y == st->max)   /* s < 1: the max is unique, and it is y */
        g = s < 1.0 ? FN(plus_z)(-mass * (s / denom), z_mass / denom)
                    : p_mass / denom - t->label_part;
    return (REAL)(g * scale);
}

/* The gradient of a position whose exps stored_exps left in grad, with
 * its state, scaled in place; x_y is its label's logit. */
static void FN(finish_grad)(const FN(row_state) *st, REAL x_y, int64_t classes,
                            int64_t stride, const FN(target) *t, double z_mass, int method,
                            double scale, int fast, REAL *grad)
{
    int64_t y = t->label;
    REAL e_y = grad[y * stride], divisor, factor, rscale;
    if (!FN(grad_factors)(st, t, z_mass, method, scale, &divisor, &factor, &rscale)) {
        for (int64_t j = 0; j < classes; j++)
            grad[j * stride] = (REAL)NAN;
        return;
    }
    FN(scale_row)(grad, classes, stride, fast, method != PSM_STABLE, divisor, factor, rscale);
    grad[y * stride] = FN(label_grad)(st, x_y, e_y, t, z_mass, method, scale);
}

/* The loss of a position whose exps stored_exps left in grad, with its
 * state and log_norm (stable), and its gradient (finish_grad). */
static double FN(finish_loss_grad)(const FN(row_state) *st, double log_norm,
                                   const REAL *x, int64_t classes, int64_t stride,
                                   const FN(target) *t, double z_mass, int method,
                                   double scale, int fast, REAL *grad)
{
    REAL x_y = x[t->label * stride];
    double loss = FN(position_loss_given)(st, log_norm, x_y, x, classes, stride, t, method);
    FN(finish_grad)(st, x_y, classes, stride, t, z_mass, method, scale, fast, grad);
    return loss;
}

/* plain_losses's gradients of eight rows of classes <= PSM_SMALL_CLASSES
 * on the vector path (fast; else 0, having done nothing), with their
 * states: the exps and states of small_exp_states, kept a class per vector
 * instead of stored row by row as small_stored_exps stores them, scaled as
 * finish_grad scales each row (grad_factors; for float, written by
 * rows_small_out_avx2.h's writer, not by a scale_row per row, whose per-row
 * tail dominated a row of ten floats), then each label's entry
 * (label_grad).  The same bits as stored_exps and finish_grad row by row. */
static int FN(small_grads)(const REAL *x, int64_t classes, const int64_t y[8],
                           const REAL x_y[8], int method, double scale, int fast,
                           REAL *grad, FN(row_state) st[8])
{
#if SMALL_ROWS
    if (!fast || classes > PSM_SMALL_CLASSES)
        return 0;
    REAL e[8 * PSM_SMALL_CLASSES], divisor[8], factor[8], rscale[8];
    unsigned no_softmax = 0;
    FN(small_exp_states)(x, classes, method, e, st);
    for (int r = 0; r < 8; r++) {
        FN(target) t = {NULL, NULL, y[r], 1.0, 1.0, 0.0, 0.0};
        if (!FN(grad_factors)(&st[r], &t, 0.0, method, scale, &divisor[r], &factor[r],
                              &rscale[r])) {
            no_softmax |= 1u << r;
            divisor[r] = factor[r] = rscale[r] = 1;   /* written over below */
        }
    }
    int divide = method != PSM_STABLE;
#if SMALL_OUT_ROWS
    psm_small_scale_rows_avx2(e, (int)classes, divide, divisor, factor, rscale, grad);
#else
    for (int r = 0; r < 8; r++)   /* scale_row's arithmetic */
        for (int64_t j = 0; j < classes; j++) {
            REAL v = e[j * 8 + r];
            grad[r * classes + j] = divide ? ((v / divisor[r]) * factor[r]) * rscale[r]
                                           : v * factor[r];
        }
#endif
    for (int r = 0; r < 8; r++) {
        REAL *g = grad + r * classes;
        if (no_softmax >> r & 1) {
            for (int64_t j = 0; j < classes; j++)
                g[j] = (REAL)NAN;
            continue;
        }
        FN(target) t = {NULL, NULL, y[r], 1.0, 1.0, 0.0, 0.0};
        g[y[r]] = FN(label_grad)(&st[r], x_y[r], e[y[r] * 8 + r], &t, 0.0, method, scale);
    }
    return 1;
#else
    (void)x;
    (void)classes;
    (void)y;
    (void)x_y;
    (void)method;
    (void)scale;
    (void)fast;
    (void)grad;
    (void)st;
    return 0;
#endif
}

/* naive's and maxsub's one_hot_loss of eight positions with a label share
 * of 1, from their states: clamped_nll's exps, divisions and clamps eight
 * to a vector where the float loops run (psm_clamped_nll8_avx2), with the
 * same bits. */
static void FN(clamped_losses8)(const FN(row_state) st[8], const REAL x_y[8], int method,
                                int fast, double loss[8])
{
#if SMALL_OUT_ROWS
    if (fast) {
        REAL shift[8], total[8];
        for (int r = 0; r < 8; r++) {
            shift[r] = st[r].max;
            total[r] = FN(float_total)(&st[r], method);
        }
        psm_clamped_nll8_avx2(shift, total, x_y, loss);
        return;
    }
#else
    (void)fast;
#endif
    for (int r = 0; r < 8; r++)
        loss[r] = FN(one_hot_loss)(&st[r], 0.0, x_y[r], 1.0, method);
}

/* `rows` positions (8 or PSM_FINISH_ROWS) whose targets are plain labels
 * (no weight, no smoothing), contiguous rows x, x + classes, ..., label
 * y[r] in [0, classes): their losses, and with grad (rows alike) their
 * gradients, each with the bits the position-by-position path gives it,
 * a label share of 1.  Many at once, for rows of up to
 * PSM_PLAIN_BATCH_CLASSES, for two reasons:
 *   - a row's finish (its horizontal sums, log1p and loss) is a chain of
 *     dependent steps which, on a short row, costs about as much as the
 *     sweep; here the sweeps run first, then their independent finishes,
 *     the log1p four lanes at a time (log_norms), sixteen rows' chains
 *     overlapping (PSM_FINISH_ROWS);
 *   - rows of at most PSM_SMALL_CLASSES take one vector sweep for eight
 *     (small_row_passes, small_grads), and skip the per-position target
 *     and state bookkeeping, which cost twice a row's own arithmetic at ten
 *     classes; for float, stable's finish, loss and gradient, runs four
 *     rows a vector too (psm_small_stable_losses_avx2,
 *     psm_small_stable_grads_avx2).
 * With grad, each row's exps are scaled as soon as they are stored, while
 * they are in cache; only the losses wait for the rest. */
static void FN(plain_losses)(const REAL *x, int64_t classes, int rows, const int64_t *y,
                             int method, double scale, int fast, REAL *grad, double *loss)
{
#if SMALL_OUT_ROWS
    if (method == PSM_STABLE && fast && classes <= PSM_SMALL_CLASSES) {
        if (grad)
            psm_small_stable_grads_avx2(x, (int)classes, rows, y, scale, grad, loss);
        else
            psm_small_stable_losses_avx2(x, (int)classes, rows, y, loss);
        return;
    }
#endif
    FN(row_state) st[PSM_FINISH_ROWS];
    double log_norm[PSM_FINISH_ROWS];
    REAL x_y[PSM_FINISH_ROWS];
    for (int r = 0; r < rows; r++)
        x_y[r] = x[r * classes + y[r]];
    int track_max = method != PSM_NAIVE, exact_rest = method == PSM_STABLE;
    for (int b = 0; b < rows; b += 8) {   /* eight rows' sweeps */
        const REAL *xb = x + b * classes;
        REAL *gb = grad ? grad + b * classes : NULL;
        if (grad) {
            if (!FN(small_grads)(xb, classes, y + b, x_y + b, method, scale, fast, gb, st + b))
                for (int r = 0; r < 8; r++) {
                    FN(target) t = {NULL, NULL, y[b + r], 1.0, 1.0, 0.0, 0.0};
                    REAL *g = gb + r * classes;
                    FN(stored_exps)(xb + r * classes, classes, 1, method, fast, g,
                                    &st[b + r]);
                    FN(finish_grad)(&st[b + r], x_y[b + r], classes, 1, &t, 0.0, method,
                                    scale, fast, g);
                }
        } else if (!FN(small_row_passes)(xb, classes, track_max, exact_rest, fast, st + b)) {
            for (int r = 0; r < 8; r++)
                FN(row_pass)(xb + r * classes, classes, 1, track_max, exact_rest, fast, NULL,
                             &st[b + r]);
        }
    }
    if (method != PSM_STABLE) {
        for (int b = 0; b < rows; b += 8)
            FN(clamped_losses8)(st + b, x_y + b, method, fast, loss + b);
        return;
    }
    FN(log_norms)(st, rows, fast, log_norm);
    for (int r = 0; r < rows; r++)
        loss[r] = FN(one_hot_loss)(&st[r], log_norm[r], x_y[r], 1.0, method);
}

/* A position's log-sum-exp from its state of row_pass (see
 * psm_softmax_loss_lse): stable's exact one, from log_norm = log1p(s);
 * naive's and maxsub's from the sum they round to REAL.  A state whose max
 * is not finite has no log1p(s): its log-sum-exp is that max, or NaN where
 * a NaN logit made rest NaN (block_max skips NaN, the sums do not). */
static double FN(state_lse)(const FN(row_state) *st, double log_norm, int method)
{
    if (method != PSM_STABLE)
        return (double)st->max + (double)LOG(FN(float_total)(st, method));
    if (!isfinite(st->max))
        return isnan(st->rest) ? NAN : (double)st->max;
    return (double)st->max + log_norm;
}

/* state_lse of a state of block sums (row_pass's, or a whole position's
 * merged partial state), its log_norm taken here. */
static double FN(summed_lse)(const FN(row_state) *st, int method)
{
    return FN(state_lse)(st, method == PSM_STABLE ? FN(log_norm)(st) : 0.0, method);
}

/* The log-sum-exp of a position no loss needed (an ignored one): its state
 * from one row_pass. */
static double FN(position_lse)(const REAL *x, int64_t classes, int64_t stride, int method,
                               int fast)
{
    FN(row_state) st;
    FN(row_pass)(x, classes, stride, method != PSM_NAIVE, method == PSM_STABLE, fast, NULL,
                 &st);
    return FN(summed_lse)(&st, method);
}

/* state_lse for a state of stored_exps, whose sum counts every e_j, the
 * max's own among them: where the max is not finite, exp(inf - inf) is NaN
 * there, with or without a NaN logit, so one row_pass tells them apart
 * (a row no finite number tops: rare). */
static double FN(stored_lse)(const FN(row_state) *st, double log_norm, int method,
                             const REAL *x, int64_t classes, int64_t stride, int fast)
{
    if (method == PSM_STABLE && !isfinite(st->max))
        return FN(position_lse)(x, classes, stride, method, fast);
    return FN(state_lse)(st, log_norm, method);
}

/* The z-loss of a counted position with log-sum-exp lse: z v lse^2, its
 * addition to the loss, and *z_mass = 2 z v lse, the extra weight its
 * gradient gives each p_j.  Both 0 without a z-loss, whatever lse is (an
 * infinite one would make 0 * inf NaN). */
static double FN(z_term)(const FN(target) *t, double lse, double *z_mass)
{
    if (t->z_scale == 0.0) {
        *z_mass = 0.0;
        return 0.0;
    }
    *z_mass = 2.0 * t->z_scale * lse;
    return t->z_scale * lse * lse;
}

/* Label smoothing over a label: q_j = smooth w_j + [j == y] label_part, the
 * stable method's commonest target but one-hot. */
static int FN(smoothed_label)(const FN(target) *t)
{
    return t->probs == NULL && t->smooth != 0.0;
}

/* sum_j q_j (m - x_j), q_j = smooth w_j (w NULL: all 1), over the x_j with
 * q_j != 0 and x_j != -inf, *neg_inf set where some q_j != 0 has x_j = -inf:
 * psm_smoothed_gaps_avx2, or its twin (8 double lanes, the last n % 8 in
 * index order). */
static double FN(smoothed_gaps)(const REAL *x, int64_t n, int64_t stride, REAL m,
                                double smooth, const double *w, int fast, int *neg_inf)
{
#if VECTOR_ROWS
    if (fast && stride == 1)
        return VEC(smoothed_gaps)(x, n, m, smooth, w, neg_inf);
#else
    (void)fast;
#endif
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0}, total;
    int found = 0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) {
            double q = smooth * (w ? w[j + l] : 1.0);
            REAL v = x[(j + l) * stride];
            if (q == 0.0)
                continue;
            if (v == (REAL)-INFINITY)
                found = 1;
            else
                acc[l] += q * ((double)m - (double)v);
        }
    total = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; j < n; j++) {
        double q = smooth * (w ? w[j] : 1.0);
        if (q == 0.0)
            continue;
        if (x[j * stride] == (REAL)-INFINITY)
            found = 1;
        else
            total += q * ((double)m - (double)x[j * stride]);
    }
    if (found)
        *neg_inf = 1;
    return total;
}

/* A smoothed label's cross term and mass, for a whole position whose max
 * st->max is final: sum_j q_j (m - x_j) = sum_j smooth w_j (m - x_j) +
 * label_part (m - x_y), and Q = smooth W + label_part, W the sum of the
 * class weights (or the class count).  One vector pass, where row_pass
 * computed each q_j in the loop that follows its blocks' max. */
static void FN(smoothed_cross)(const REAL *x, int64_t classes, int64_t stride,
                               const FN(target) *t, double weight_total, int fast,
                               FN(row_state) *st)
{
    int neg_inf = 0;
    double cross = FN(smoothed_gaps)(x, classes, stride, st->max, t->smooth, t->weight,
                                     fast, &neg_inf);
    if (t->label_part != 0.0) {
        REAL x_y = x[t->label * stride];
        if (x_y == (REAL)-INFINITY)
            neg_inf = 1;
        else
            cross += t->label_part * ((double)st->max - (double)x_y);
    }
    st->cross = cross;
    st->cross_inf = neg_inf;
    st->mass = t->smooth * weight_total + t->label_part;
}

/* A smoothed label's gradient, (p_j Q - q_j) scale, over the exps that
 * stored_exps left in grad: position_grad's arithmetic, elementwise
 * (psm_smoothed_grad_avx2 or this loop), then the label's entry and, where
 * s < 1, the max's without cancellation, (Q - q_max) - Q s / (1 + s). */
static void FN(smoothed_grad)(const FN(row_state) *st, const REAL *x, int64_t classes,
                              int64_t stride, const FN(target) *t, double weight_total,
                              double z_mass, double scale, int fast, REAL *grad)
{
    double s = FN(stable_rest)(st);
    if (isnan(s)) {
        for (int64_t j = 0; j < classes; j++)
            grad[j * stride] = (REAL)NAN;
        return;
    }
    double denom = 1.0 + s, mass = st->mass, p_mass = FN(plus_z)(mass, z_mass);
    const double *w = t->weight;
    int64_t y = t->label;
    double e_y = (double)grad[y * stride];
#if VECTOR_ROWS
    if (fast && stride == 1)
        VEC(smoothed_grad)(grad, classes, w, p_mass, denom, t->smooth, scale);
    else
#else
    (void)fast;
#endif
        for (int64_t j = 0; j < classes; j++)
            grad[j * stride] = (REAL)((p_mass * ((double)grad[j * stride] / denom) -
                                       t->smooth * (w ? w[j] : 1.0)) * scale);
    grad[y * stride] = (REAL)((p_mass * (e_y / denom) - FN(target_mass)(t, y, stride)) *
                              scale);
    if (s < 1.0) {   /* the max is unique */
        int64_t at = 0;
        while (at < classes - 1 && !(x[at * stride] == st->max))
            at++;
        double off_max_mass = t->smooth * (weight_total - (w ? w[at] : 1.0)) +
                              (at == y ? 0.0 : t->label_part);
        grad[at * stride] = (REAL)(FN(plus_z)(off_max_mass - mass * (s / denom),
                                              z_mass / denom) * scale);
    }
}

/* The partial state of a position over a block of its classes. */
static void FN(block_partial)(const REAL *x, int64_t classes, int64_t stride,
                              const FN(target) *t, int method, int fast,
                              psm_partial *out)
{
    FN(row_state) st;
    int one_hot = FN(is_one_hot)(t);
    FN(row_pass)(x, classes, stride, method != PSM_NAIVE, method == PSM_STABLE, fast,
                 method == PSM_STABLE && !one_hot ? t : NULL, &st);
    psm_partial p = {st.max, st.rest, st.ties, st.cross, st.cross_mass, st.mass,
                     0.0, 0, st.cross_inf};
    if (one_hot && t->label >= 0 && t->label < classes) {
        p.label_logit = x[t->label * stride];
        p.label_found = 1;
    }
    *out = p;
}

static FN(row_state) FN(state_from)(const psm_partial *p)
{
    FN(row_state) st = {(REAL)p->max, p->rest, p->ties, p->cross, p->cross_mass,
                        p->mass, p->cross_inf};
    return st;
}

/* A position none of whose classes counts (an ignored label). */
static const psm_partial FN(no_state) = {-INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0};
