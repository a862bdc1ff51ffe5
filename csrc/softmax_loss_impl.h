/*
 * The kernel body, written once and instantiated per floating type by
 * softmax_loss.c, which defines before including it:
 *   REAL      float or double
 *   FN(name)  name with the type's suffix appended (name##_f32)
 *   EXP, LOG  REAL's exp and log (psm_expf and logf for float)
 *   TINY      REAL's smallest normal number (FLT_MIN, DBL_MIN)
 *   BIG       REAL's largest finite number (FLT_MAX, DBL_MAX)
 *   FLOAT_ROWS 1 where rows_avx2.h serves contiguous rows (float on x86-64)
 *   LANE_SUMS  1 to sum in the 8-lane order of rows_avx2.h (float), 0 to sum
 *              in index order (double, which has no vector path)
 *
 * One pass.  Every position's logits are read once, in blocks of PSM_BLOCK:
 * the block's max, then, from L1, the sum of exp(x_j - max) over the x_j
 * below it ("rest") and the count of x_j equal to it ("ties", each term
 * exactly 1).  When a block raises the running max, what was summed so far
 * is rescaled once, in double: Milakov and Gimelshein's online normalizer,
 * per block rather than per element, so each logit costs one exp.  For a
 * non-one-hot target (smoothing or probabilities) the stable method also
 * keeps sum_j q_j (max - x_j), shifted the same way.  A second pass, over
 * the row just read, writes the gradient; naive and maxsub with non-one-hot
 * targets also need one for their clamped per-class logs (the clamp needs
 * the finished sum).
 *
 * The float instance runs contiguous rows through the AVX2 loops of
 * rows_avx2.h where the CPU has them; block_max, block_sum and grad_row
 * below are their portable twins (same operations, same order, 8 emulated
 * lanes, any stride), so every path gives the same bits.
 *
 * Precision.  Sums are kept in double.  naive and maxsub round the total
 * (rest + ties) to REAL once, which is the float sum their formulas describe
 * (it is inf exactly when the rounded float sum overflows) without depending
 * on the order of the additions; the rest of their arithmetic is REAL, as in
 * Caffe.  stable uses s = rest + (ties - 1), the sum without the max's own
 * term, so log1p(s) keeps small losses to full relative precision: a
 * confident, correct prediction with loss 1e-30 reads 1e-30, not 0.  Its
 * error is that of exp (<= 0.603 ULP per term for float, exp_f32.h), the
 * rounding of x_j - max in REAL (<= |x_j - max| 2^-24 relative for float),
 * the vector loop's float partial sums (<= 2^-23 relative, rows_avx2.h), and
 * the final rounding; tests/test_oracle.py and tests/test_properties.py check
 * this bound against wider oracles.
 */

/* One position's target distribution q (see psm_options in the header). */
typedef struct {
    const double *weight; /* class weights, or NULL */
    const REAL *probs;    /* t_c at probs[c * stride], or NULL for a label */
    int64_t label;        /* y, or -1 with probabilities */
    double label_part;    /* (1 - eps) w_y */
    double keep;          /* 1 - eps */
    double smooth;        /* eps / C */
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

/* What one pass over a position's logits leaves. */
typedef struct {
    REAL max;        /* the shift: the running max, or 0 for naive */
    double rest;     /* sum of exp(x_j - max) over x_j != max */
    double ties;     /* how many x_j == max */
    double cross;    /* stable, non-one-hot: sum over q_j != 0 of q_j (max - x_j) */
    double mass;     /* ... and sum of q_j */
    int cross_inf;   /* ... some q_j > 0 on x_j = -inf: the cross term is +inf */
} FN(row_state);

/* The max of n logits, NaN skipped; -inf if none. */
static REAL FN(block_max)(const REAL *x, int64_t n, int64_t stride, int fast)
{
#if FLOAT_ROWS
    if (fast && stride == 1)
        return psm_block_max_avx2(x, n);
#else
    (void)fast;
#endif
    REAL m = (REAL)-INFINITY;
    for (int64_t j = 0; j < n; j++)
        if (x[j * stride] > m)
            m = x[j * stride];
    return m;
}

/* exp(v - shift); with ties, v == shift is counted there and adds 0. */
static REAL FN(term)(REAL v, REAL shift, double *ties)
{
    if (ties && v == shift) {
        *ties += 1.0;
        return 0;
    }
    return EXP(v - shift);
}

#if LANE_SUMS
/* acc[k] += s[k], then s[k + 4]: one vector's lanes joining 4 double lanes */
static void FN(add_wide)(double acc[4], const REAL s[8])
{
    for (int k = 0; k < 4; k++)
        acc[k] = (acc[k] + (double)s[k]) + (double)s[k + 4];
}
#endif

/* The sum of exp(x_j - shift) over n logits, or with ties, over the x_j !=
 * shift, counting those into *ties: for float, psm_block_total_avx2 and
 * psm_block_sums_avx2 on 8 emulated lanes. */
static double FN(block_sum)(const REAL *x, int64_t n, int64_t stride, REAL shift,
                            int fast, double *ties)
{
#if FLOAT_ROWS
    if (fast && stride == 1) {
        if (!ties)
            return psm_block_total_avx2(x, n, shift);
        double rest = 0.0;
        psm_block_sums_avx2(x, n, shift, &rest, ties);
        return rest;
    }
#else
    (void)fast;
#endif
#if LANE_SUMS
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    REAL s[8];
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        for (int l = 0; l < 8; l++) {
            REAL e0 = FN(term)(x[(j + l) * stride], shift, ties);
            REAL e1 = FN(term)(x[(j + 8 + l) * stride], shift, ties);
            REAL e2 = FN(term)(x[(j + 16 + l) * stride], shift, ties);
            REAL e3 = FN(term)(x[(j + 24 + l) * stride], shift, ties);
            s[l] = (e0 + e1) + (e2 + e3);
        }
        FN(add_wide)(acc, s);
    }
    for (; j + 8 <= n; j += 8) {
        for (int l = 0; l < 8; l++)
            s[l] = FN(term)(x[(j + l) * stride], shift, ties);
        FN(add_wide)(acc, s);
    }
    if (j < n) {   /* the lanes of psm_load_tail_avx2; the others add +0 */
        int64_t first = n >= 8 ? n - 8 : 0, done = n >= 8 ? 8 - (n - j) : 0;
        for (int l = 0; l < 8; l++)
            s[l] = l >= done && first + l < n ? FN(term)(x[(first + l) * stride], shift, ties)
                                              : 0;
        FN(add_wide)(acc, s);
    }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
#else
    /* one sum in index order, so a -inf class (a 0 term) changes nothing */
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++)
        sum += (double)FN(term)(x[j * stride], shift, ties);
    return sum;
#endif
}

/* One block of a row, contiguous: strided blocks are copied when the vector
 * loops will read them. */
static const REAL *FN(block_values)(const REAL *b, int64_t len, int64_t stride,
                                    int fast, REAL *copy, int64_t *step)
{
    *step = stride;
#if FLOAT_ROWS
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

/* One pass over a position's logits; t is NULL unless the stable cross term
 * is wanted, exact_rest asks for the sum without the max's own term to full
 * relative precision (stable).  NaN never compares greater, so it lands in
 * the sum and makes the position NaN. */
static void FN(row_pass)(const REAL *x, int64_t classes, int64_t stride,
                         int track_max, int exact_rest, int fast,
                         const FN(target) *t, FN(row_state) *st)
{
    REAL m = track_max ? (REAL)-INFINITY : (REAL)0;
    double rest = 0.0, ties = 0.0, cross = 0.0, cross_mass = 0.0, mass = 0.0;
    int cross_inf = 0;
#if FLOAT_ROWS
    if (fast && stride == 1 && classes <= PSM_BLOCK && t == NULL) {
        /* one contiguous block: the loop below, without its bookkeeping */
        if (track_max) {
            m = psm_block_max_avx2(x, classes);
            if (m == 0)
                m = 0;
        }
        if (exact_rest)
            psm_block_sums_avx2(x, classes, m, &rest, &ties);
        else
            rest = psm_block_total_avx2(x, classes, m == (REAL)-INFINITY ? -BIG : m);
        FN(row_state) one = {m, rest, ties, 0.0, 0.0, 0};
        *st = one;
        return;
    }
#endif
    REAL copy[PSM_BLOCK];
    for (int64_t start = 0; start < classes; start += PSM_BLOCK) {
        int64_t len = classes - start < PSM_BLOCK ? classes - start : PSM_BLOCK, step;
        const REAL *b = x + start * stride;
        const REAL *values = FN(block_values)(b, len, stride, fast, copy, &step);
        if (track_max) {
            REAL block_max = FN(block_max)(values, len, step, fast);
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
        if (exact_rest)
            /* stable: the max's own terms are counted, not summed, so that the
             * sum of the others keeps its relative precision however small */
            rest += FN(block_sum)(values, len, step, m, fast, &ties);
        else
            /* naive, maxsub: only the total matters.  Shifted by -BIG instead
             * of -inf, a -inf logit gives exp(-inf) = 0 rather than NaN while
             * no finite logit has come. */
            rest += FN(block_sum)(values, len, step, m == (REAL)-INFINITY ? -BIG : m,
                                  fast, NULL);
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
    st->mass = mass;
    st->cross_inf = cross_inf;
}

/* g_j = exp(x_j - shift) * factor, or with divide ((exp(x_j - shift) /
 * divisor) * factor) * scale, in REAL: psm_grad_row_avx2's twin. */
static void FN(grad_row)(const REAL *x, int64_t n, int64_t stride, int fast,
                         REAL shift, int divide, REAL divisor, REAL factor,
                         REAL scale, REAL *g)
{
#if FLOAT_ROWS
    if (fast && stride == 1) {
        psm_grad_row_avx2(x, n, shift, divide, divisor, factor, scale, g);
        return;
    }
    if (fast) {   /* strided: the vector loop on copies, block by block */
        float in[PSM_BLOCK], out[PSM_BLOCK];
        for (int64_t start = 0; start < n; start += PSM_BLOCK) {
            int64_t len = n - start < PSM_BLOCK ? n - start : PSM_BLOCK;
            for (int64_t j = 0; j < len; j++)
                in[j] = x[(start + j) * stride];
            psm_grad_row_avx2(in, len, shift, divide, divisor, factor, scale, out);
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

/* naive and maxsub: loss_c = -log(max(p_c, TINY)) with p_c in REAL, as
 * Caffe's loss -= log(std::max(p, TINY)): a NaN p stays NaN, and a certain
 * prediction gives +0, not -0. */
static REAL FN(clamped_nll)(REAL shift, REAL total, REAL x)
{
    REAL p = EXP(x - shift) / total;
    return (REAL)0 - LOG(p < TINY ? TINY : p);
}

static double FN(position_loss)(const FN(row_state) *st, const REAL *x,
                                int64_t classes, int64_t stride,
                                const FN(target) *t, int method)
{
    if (method == PSM_STABLE) {
        double s = FN(stable_rest)(st);
        if (FN(is_one_hot)(t)) {
            double cross = 0.0;
            /* (m - x_y) first: for logits {1e8, 1e8} it is 0, the loss ln 2 */
            if (t->label_part != 0.0)
                cross = t->label_part * ((double)st->max - (double)x[t->label * stride]);
            return cross + t->label_part * log1p(s);
        }
        if (isnan(s))
            return NAN;
        return (st->cross_inf ? INFINITY : st->cross) + st->mass * log1p(s);
    }
    REAL total = FN(float_total)(st, method);
    if (FN(is_one_hot)(t)) {
        if (t->label_part == 0.0)
            return 0.0;
        return t->label_part * (double)FN(clamped_nll)(st->max, total, x[t->label * stride]);
    }
    double loss = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        double q = FN(target_mass)(t, j, stride);
        if (q != 0.0)
            loss += q * (double)FN(clamped_nll)(st->max, total, x[j * stride]);
    }
    return loss;
}

/* The gradient of one position: (p_j Q - q_j) * scale, Q = sum_j q_j. */
static void FN(position_grad)(const FN(row_state) *st, const REAL *x,
                              int64_t classes, int64_t stride,
                              const FN(target) *t, int method, double scale,
                              int fast, REAL *grad)
{
    int one_hot = FN(is_one_hot)(t);
    double mass = one_hot ? t->label_part : 0.0;   /* Q */
    for (int64_t j = 0; !one_hot && j < classes; j++)
        mass += FN(target_mass)(t, j, stride);
    if (method != PSM_STABLE) {
        /* Caffe: diff = prob; diff[label] -= 1; diff *= scale; in REAL */
        REAL total = FN(float_total)(st, method);
        REAL rmass = (REAL)mass, rscale = (REAL)scale;
        if (one_hot) {
            FN(grad_row)(x, classes, stride, fast, st->max, 1, total, rmass, rscale, grad);
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
        /* every class: Q p_j scale, in REAL; then the label's own entry */
        FN(grad_row)(x, classes, stride, fast, st->max, 0, 1, (REAL)(mass * scale / denom),
                     1, grad);
        REAL x_y = x[t->label * stride];
        double g = mass * ((double)EXP(x_y - st->max) / denom) - t->label_part;
        if (x_y == st->max)   /* s < 1: the max is unique, and it is y */
            g = s < 1.0 ? -mass * (s / denom) : mass / denom - t->label_part;
        grad[t->label * stride] = (REAL)(g * scale);
        return;
    }
    /* At the max, p Q - q = (Q - q) - Q s / (1 + s): without cancellation as
     * p -> 1.  s < 1 means the max is unique. */
    int64_t at_max = -1;
    double off_max_mass = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        REAL v = x[j * stride];
        double q = FN(target_mass)(t, j, stride);
        double e = v == st->max ? 1.0 : (double)EXP(v - st->max);
        grad[j * stride] = (REAL)((mass * (e / denom) - q) * scale);
        if (v == st->max && at_max < 0)
            at_max = j;
        else
            off_max_mass += q;
    }
    if (s < 1.0 && at_max >= 0)
        grad[at_max * stride] = (REAL)((off_max_mass - mass * (s / denom)) * scale);
}

/* Everything one call needs, shared read-only by its threads. */
typedef struct {
    const REAL *logits;
    int64_t classes, inner;
    const int64_t *labels;
    const REAL *probs;
    const psm_options *opt;
    double scale;
    int fast;                /* contiguous rows may take the AVX2 loops */
    int64_t positions, chunk_positions;
    REAL *losses, *grad;
    double *partials;        /* each chunk's summed loss */
} FN(job);

/* Positions [chunk * chunk_positions, ...) of a call, summing their losses
 * in order into partials[chunk]. */
static void FN(run_chunk)(const void *job_, int64_t chunk)
{
    const FN(job) *job = job_;
    const psm_options *opt = job->opt;
    int64_t classes = job->classes, inner = job->inner;
    int64_t first = chunk * job->chunk_positions;
    int64_t last = first + job->chunk_positions;
    if (last > job->positions)
        last = job->positions;
    int track_max = opt->method != PSM_NAIVE;
    double eps = opt->label_smoothing, total = 0.0;
    for (int64_t pos = first; pos < last; pos++) {
        int64_t o = inner == 1 ? pos : pos / inner, i = inner == 1 ? 0 : pos % inner;
        int64_t base = o * classes * inner + i;
        const REAL *x = job->logits + base;
        FN(target) t = {opt->class_weight, NULL, -1, 0.0, 1.0 - eps,
                        eps / (double)classes};
        if (job->probs) {
            t.probs = job->probs + base;
        } else if (opt->use_ignore_index && job->labels[pos] == opt->ignore_index) {
            for (int64_t j = 0; job->grad && j < classes; j++)
                job->grad[base + j * inner] = 0;
            if (job->losses)
                job->losses[pos] = 0;
            continue;
        } else {
            t.label = job->labels[pos];
            t.label_part = (1.0 - eps) * (t.weight ? t.weight[t.label] : 1.0);
        }
        FN(row_state) st;
        int want_cross = opt->method == PSM_STABLE && !FN(is_one_hot)(&t);
        FN(row_pass)(x, classes, inner, track_max, opt->method == PSM_STABLE, job->fast,
                     want_cross ? &t : NULL, &st);
        double loss = FN(position_loss)(&st, x, classes, inner, &t, opt->method);
        if (job->losses)
            job->losses[pos] = (REAL)loss;
        total += loss;
        if (job->grad)
            FN(position_grad)(&st, x, classes, inner, &t, opt->method, job->scale,
                              job->fast, job->grad + base);
    }
    job->partials[chunk] = total;
}

int64_t FN(psm_softmax_loss)(const REAL *logits, int64_t outer,
                             int64_t classes, int64_t inner,
                             const int64_t *labels, const REAL *target_probs,
                             const psm_options *opt, REAL *losses,
                             double *loss, REAL *grad)
{
    if (!options_ok(logits, outer, classes, inner, labels, target_probs, opt) ||
        loss == NULL)
        return PSM_BAD_ARGUMENT;
    const double *w = opt->class_weight;

    /* First pass, over the labels only: check them all before writing
     * anything, and find the normalizer. */
    int64_t positions = outer * inner, valid = positions;
    double label_weight_sum = (double)positions;
    if (labels) {
        valid = 0;
        label_weight_sum = 0.0;
        for (int64_t pos = 0; pos < positions; pos++) {
            int64_t y = labels[pos];
            if (opt->use_ignore_index && y == opt->ignore_index)
                continue;
            if (y < 0 || y >= classes)
                return pos + 1;
            valid++;
            label_weight_sum += w ? w[y] : 1.0;
        }
    }
    double normalizer = 1.0;
    switch (opt->reduction) {
    case PSM_MEAN:       normalizer = label_weight_sum; break;
    case PSM_VALID:      normalizer = fmax(1.0, (double)valid); break;
    case PSM_FULL:       normalizer = fmax(1.0, (double)positions); break;
    case PSM_BATCH_SIZE: normalizer = fmax(1.0, (double)outer); break;
    }

    /* Chunks of whole positions, sized by the shape alone, so the sum of
     * their partials, taken in order, is the same for every thread count. */
    int64_t chunk_positions = PSM_CHUNK_ELEMENTS / classes;
    if (chunk_positions < 1)
        chunk_positions = 1;
    int64_t chunks = (positions + chunk_positions - 1) / chunk_positions;
    double one_partial;
    double *partials = chunks > 1 ? malloc((size_t)chunks * sizeof *partials)
                                  : &one_partial;
    if (partials == NULL)
        return PSM_NO_MEMORY;
    FN(job) job = {logits, classes, inner, labels, target_probs, opt,
                   1.0 / normalizer, FLOAT_ROWS && use_simd(opt),
                   positions, chunk_positions, losses, grad, partials};
    int status = run_chunks(FN(run_chunk), &job, chunks,
                            threads_for(opt->threads, positions * classes));

    double total = 0.0;
    for (int64_t c = 0; c < chunks; c++)
        total += partials[c];
    if (partials != &one_partial)
        free(partials);
    *loss = (opt->reduction == PSM_NONE || opt->reduction == PSM_SUM)
        ? total : total / normalizer;
    return status;
}

int64_t FN(psm_softmax)(const REAL *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, REAL *out)
{
    if (!shape_ok(logits, outer, classes, inner, method))
        return PSM_BAD_ARGUMENT;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            int64_t base = o * classes * inner + i;
            const REAL *x = logits + base;
            FN(row_state) st;
            FN(row_pass)(x, classes, inner, method != PSM_NAIVE, method == PSM_STABLE, 0,
                         NULL, &st);
            REAL total = FN(float_total)(&st, method);
            double denom = 1.0 + FN(stable_rest)(&st);
            for (int64_t j = 0; j < classes; j++) {
                REAL v = x[j * inner];
                if (method != PSM_STABLE)
                    out[base + j * inner] = EXP(v - st.max) / total;
                else
                    out[base + j * inner] = (REAL)(
                        (v == st.max ? 1.0 : (double)EXP(v - st.max)) / denom);
            }
        }
    }
    return PSM_OK;
}

int64_t FN(psm_log_softmax)(const REAL *logits, int64_t outer,
                            int64_t classes, int64_t inner, REAL *out)
{
    if (!shape_ok(logits, outer, classes, inner, PSM_STABLE))
        return PSM_BAD_ARGUMENT;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            int64_t base = o * classes * inner + i;
            const REAL *x = logits + base;
            FN(row_state) st;
            FN(row_pass)(x, classes, inner, 1, 1, 0, NULL, &st);
            double log_norm = log1p(FN(stable_rest)(&st));
            for (int64_t j = 0; j < classes; j++) {
                double shifted = (double)x[j * inner] - (double)st.max;
                out[base + j * inner] = (REAL)(shifted - log_norm);
            }
        }
    }
    return PSM_OK;
}
