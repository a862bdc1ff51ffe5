/*
 * The kernel body, written once and instantiated per floating type by
 * softmax_loss.c, which defines before including it:
 *   REAL      float or double
 *   FN(name)  name with the type's suffix appended (name##_f32)
 *   EXP, LOG  REAL's exp and log (expf and logf for float)
 *   TINY      REAL's smallest normal number (FLT_MIN, DBL_MIN)
 *
 * Precision.  Every method sums exp() in double.  naive and maxsub then round
 * the sum to REAL once, which is the float sum their formulas describe (it is
 * inf exactly when the rounded float sum overflows) without depending on the
 * order of the additions; the rest of their arithmetic is REAL, as in Caffe.
 * stable keeps everything after exp() in double and leaves the argmax term
 * (exactly 1) out of the sum, so log1p() keeps small losses to full relative
 * precision: a confident, correct prediction with loss 1e-30 reads 1e-30, not 0.
 * The stable loss's error is that of exp() (<= 1 ULP per term) plus the
 * rounding of x_j - m in REAL (<= |x_j - m| * 2^-24 relative for float), plus
 * the final rounding to REAL; tests/test_oracle.py checks this bound against
 * a float64 oracle.
 */

/* What one position's logits reduce to. */
typedef struct {
    REAL shift;       /* subtracted before exp: 0 for naive, the max otherwise */
    int64_t excluded; /* stable: the argmax, left out of sum; -1 otherwise */
    double sum;       /* sum of exp(x_j - shift) over j != excluded */
} FN(row_stats);

static FN(row_stats) FN(reduce_row)(const REAL *x, int64_t classes,
                                    int64_t stride, int method)
{
    FN(row_stats) st = {0, -1, 0.0};
    if (method != PSM_NAIVE) {
        /* NaN never compares greater, so it does not become the max; it still
         * reaches the sum below and makes the position NaN there. */
        REAL max = -INFINITY;
        int64_t argmax = 0;
        for (int64_t j = 0; j < classes; j++) {
            if (x[j * stride] > max) {
                max = x[j * stride];
                argmax = j;
            }
        }
        st.shift = max;
        if (method == PSM_STABLE)
            st.excluded = argmax;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < classes; j++) {
        if (j != st.excluded)
            sum += (double)EXP(x[j * stride] - st.shift);
    }
    st.sum = sum;
    return st;
}

/* naive and maxsub: p_j = exp(x_j - shift) / s, all in REAL. */
static REAL FN(float_prob)(const FN(row_stats) *st, REAL x)
{
    return EXP(x - st->shift) / (REAL)st->sum;
}

/* stable: p_j in double.  A position whose max is not finite (a +inf logit,
 * or every logit -inf or NaN) has no defined softmax: NaN. */
static double FN(stable_prob)(const FN(row_stats) *st, REAL x, int64_t j)
{
    if (!isfinite(st->shift))
        return NAN;
    double e = (j == st->excluded) ? 1.0 : (double)EXP(x - st->shift);
    return e / (1.0 + st->sum);
}

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

/* stable: loss = sum_c q_c (m - x_c) + Q log1p(s), with Q = sum_c q_c.  For
 * a plain label this is (m - x_y) + log1p(s), in that order: for logits
 * {1e8, 1e8} (m - x_y) is 0 and the loss ln 2. */
static double FN(stable_position)(const FN(row_stats) *st, const REAL *x,
                                  int64_t classes, int64_t stride,
                                  const FN(target) *t, double scale, REAL *grad)
{
    int64_t argmax = st->excluded;
    if (!isfinite(st->shift)) {
        for (int64_t j = 0; grad && j < classes; j++)
            grad[j * stride] = (REAL)NAN;
        return NAN;
    }
    double m = (double)st->shift, s = st->sum;
    double cross = 0.0, mass = 0.0, rest = 0.0; /* rest: Q without q_argmax */
    if (FN(is_one_hot)(t)) {
        if (t->label_part != 0.0)
            cross = t->label_part * (m - (double)x[t->label * stride]);
        mass = t->label_part;
        rest = t->label == argmax ? 0.0 : mass;
    } else {
        for (int64_t j = 0; j < classes; j++) {
            double q = FN(target_mass)(t, j, stride);
            if (q != 0.0) {  /* NaN passes, and poisons the loss */
                cross += q * (m - (double)x[j * stride]);
                mass += q;
                if (j != argmax)
                    rest += q;
            }
        }
    }
    if (grad) {
        double denom = 1.0 + s;
        for (int64_t j = 0; j < classes; j++) {
            double g;
            if (j != argmax)
                g = mass * ((double)EXP(x[j * stride] - st->shift) / denom)
                    - FN(target_mass)(t, j, stride);
            else if (s < 1.0)
                /* p_argmax Q - q_argmax = rest - Q s / (1 + s): no
                 * cancellation when p_argmax is close to 1 */
                g = rest - mass * (s / denom);
            else
                g = mass / denom - FN(target_mass)(t, j, stride);
            grad[j * stride] = (REAL)(g * scale);
        }
    }
    return cross + mass * log1p(s);
}

/* naive and maxsub: loss = sum_c q_c * -log(max(p_c, TINY)), each term in
 * REAL as Caffe computes it; the gradient is (p_j Q - q_j) * scale in REAL,
 * which for a plain label is Caffe's diff = prob; diff[label] -= 1; scale. */
static REAL FN(clamped_nll)(const FN(row_stats) *st, REAL x)
{
    REAL p = FN(float_prob)(st, x);
    /* loss -= log(std::max(p, TINY)): a NaN p stays NaN, and a certain
     * prediction gives +0, not -0. */
    return (REAL)0 - LOG(p < TINY ? TINY : p);
}

static double FN(float_position)(const FN(row_stats) *st, const REAL *x,
                                 int64_t classes, int64_t stride,
                                 const FN(target) *t, double scale, REAL *grad)
{
    double loss = 0.0, mass = 0.0;
    if (FN(is_one_hot)(t)) {
        mass = t->label_part;
        if (mass != 0.0)
            loss = mass * (double)FN(clamped_nll)(st, x[t->label * stride]);
    } else {
        for (int64_t j = 0; j < classes; j++) {
            double q = FN(target_mass)(t, j, stride);
            if (q != 0.0) {
                loss += q * (double)FN(clamped_nll)(st, x[j * stride]);
                mass += q;
            }
        }
    }
    if (grad) {
        REAL rmass = (REAL)mass, rscale = (REAL)scale;
        for (int64_t j = 0; j < classes; j++) {
            REAL g = FN(float_prob)(st, x[j * stride]) * rmass
                     - (REAL)FN(target_mass)(t, j, stride);
            grad[j * stride] = g * rscale;
        }
    }
    return loss;
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
    double eps = opt->label_smoothing;

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
    double scale = 1.0 / normalizer;

    double total = 0.0;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            int64_t pos = o * inner + i;
            int64_t base = o * classes * inner + i;
            const REAL *x = logits + base;
            double position_loss = 0.0;
            FN(target) t = {w, NULL, -1, 0.0, 1.0 - eps, eps / (double)classes};
            if (target_probs) {
                t.probs = target_probs + base;
            } else if (opt->use_ignore_index && labels[pos] == opt->ignore_index) {
                for (int64_t j = 0; grad && j < classes; j++)
                    grad[base + j * inner] = 0;
                if (losses)
                    losses[pos] = 0;
                continue;
            } else {
                t.label = labels[pos];
                t.label_part = (1.0 - eps) * (w ? w[t.label] : 1.0);
            }
            FN(row_stats) st = FN(reduce_row)(x, classes, inner, opt->method);
            REAL *g = grad ? grad + base : NULL;
            if (opt->method == PSM_STABLE)
                position_loss = FN(stable_position)(&st, x, classes, inner, &t, scale, g);
            else
                position_loss = FN(float_position)(&st, x, classes, inner, &t, scale, g);
            if (losses)
                losses[pos] = (REAL)position_loss;
            total += position_loss;
        }
    }
    *loss = (opt->reduction == PSM_NONE || opt->reduction == PSM_SUM)
        ? total : total / normalizer;
    return PSM_OK;
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
            FN(row_stats) st = FN(reduce_row)(x, classes, inner, method);
            for (int64_t j = 0; j < classes; j++) {
                out[base + j * inner] = method == PSM_STABLE
                    ? (REAL)FN(stable_prob)(&st, x[j * inner], j)
                    : FN(float_prob)(&st, x[j * inner]);
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
            FN(row_stats) st = FN(reduce_row)(x, classes, inner, PSM_STABLE);
            double log_norm = isfinite(st.shift) ? log1p(st.sum) : NAN;
            for (int64_t j = 0; j < classes; j++) {
                double shifted = (double)x[j * inner] - (double)st.shift;
                out[base + j * inner] = (REAL)(shifted - log_norm);
            }
        }
    }
    return PSM_OK;
}
