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

static double FN(position_loss)(const FN(row_stats) *st, const REAL *x,
                                int64_t stride, int64_t label, int method)
{
    if (method == PSM_STABLE) {
        if (!isfinite(st->shift))
            return NAN;
        /* (m - x_y) first: for logits {1e8, 1e8} it is 0 and the loss ln 2. */
        return ((double)st->shift - (double)x[label * stride]) + log1p(st->sum);
    }
    REAL p = FN(float_prob)(st, x[label * stride]);
    /* Caffe's loss -= log(std::max(p, TINY)): a NaN p stays NaN, and a
     * certain prediction gives +0, not -0. */
    return (REAL)0 - LOG(p < TINY ? TINY : p);
}

static void FN(position_grad)(const FN(row_stats) *st, const REAL *x,
                              int64_t classes, int64_t stride, int64_t label,
                              int method, double scale, REAL *grad)
{
    if (method == PSM_STABLE) {
        for (int64_t j = 0; j < classes; j++) {
            double g;
            if (j == label && j == st->excluded && isfinite(st->shift))
                /* p_y - 1 = -s / (1 + s) without cancelling when s is tiny */
                g = -st->sum / (1.0 + st->sum);
            else
                g = FN(stable_prob)(st, x[j * stride], j) - (j == label);
            grad[j * stride] = (REAL)(g * scale);
        }
        return;
    }
    /* Caffe: diff = prob; diff[label] -= 1; diff *= scale; all in REAL. */
    REAL rscale = (REAL)scale;
    for (int64_t j = 0; j < classes; j++) {
        REAL g = FN(float_prob)(st, x[j * stride]);
        if (j == label)
            g -= 1;
        grad[j * stride] = g * rscale;
    }
}

int64_t FN(psm_softmax_loss)(const REAL *logits, const int64_t *labels,
                             int64_t outer, int64_t classes, int64_t inner,
                             int method, REAL *losses, double *loss_sum,
                             REAL *grad, double grad_scale)
{
    if (!shape_ok(logits, outer, classes, inner, method))
        return PSM_BAD_ARGUMENT;
    if (outer > 0 && inner > 0 && labels == NULL)
        return PSM_BAD_ARGUMENT;
    double total = 0.0;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            int64_t pos = o * inner + i;
            int64_t base = o * classes * inner + i;
            int64_t label = labels[pos];
            if (label < 0 || label >= classes)
                return pos + 1;
            FN(row_stats) st = FN(reduce_row)(logits + base, classes, inner, method);
            double loss = FN(position_loss)(&st, logits + base, inner, label, method);
            if (losses)
                losses[pos] = (REAL)loss;
            total += loss;
            if (grad)
                FN(position_grad)(&st, logits + base, classes, inner, label,
                                  method, grad_scale, grad + base);
        }
    }
    if (loss_sum)
        *loss_sum = total;
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
