/*
 * The driver, written once per floating type: a call's jobs (loss,
 * partials, grad-from-partials, softmax), their chunks
 * of positions, and the entry points of softmax_loss.h that run them on
 * chunks.c's threads.  The per-position math is row.h's, included before
 * this file by softmax_loss_f32.c and softmax_loss_f64.c, with the same
 * macros (REAL, FN, EXP, LOG, BIG, VECTOR_ROWS, LANE_SUMS; see row.h).
 *
 * Chunks are cut by the shape alone and their losses summed in order, so
 * every thread count gives the same bits.  Every entry point checks all its
 * labels before it writes anything (psm_call_normalizer), and every label is
 * bounded again where a job reads it (target_at): one that another thread
 * changed meanwhile stops its chunk, and the call reports 1 + the first such
 * position.
 */

/* What every job of a call shares: its logits, targets and options, how
 * its positions are cut into chunks, and where each chunk records its first
 * bad label.  A call reads classes [class_offset, class_offset +
 * classes) of total_classes: all of them but for the partials' calls.
 * Read-only to the threads but for each chunk's own first_bad slot. */
typedef struct {
    const REAL *logits;
    int64_t classes, inner, class_offset, total_classes;
    const int64_t *labels;
    const REAL *probs;
    const psm_options *opt;
    int fast;                /* contiguous rows may take the AVX2 loops: read
                                once, on the calling thread (psm_use_simd) */
    int64_t positions, chunk_positions;
    int64_t *first_bad;      /* each chunk's first label out of range, or -1 */
} FN(call);

/* The three jobs, one per kind of result, each a call and its outputs. */

/* Losses and, optionally, the gradient (psm_softmax_loss). */
typedef struct {
    FN(call) call;
    double scale;            /* every loss's gradient is multiplied by this */
    double weight_total;     /* the class weights' sum, or the class count */
    REAL *losses, *grad;     /* either may be NULL */
    REAL *lse;               /* each position's log-sum-exp, or NULL */
    double *chunk_loss;      /* each chunk's summed loss */
} FN(loss_job);

/* The partial state of every position over a block of classes
 * (psm_softmax_partials). */
typedef struct {
    FN(call) call;
    psm_partial *state;
} FN(partials_job);

/* A block's gradient from whole, merged states (psm_grad_from_partials). */
typedef struct {
    FN(call) call;
    double scale;
    const psm_partial *state;
    REAL *grad;
} FN(grad_job);

/* Softmax or log-softmax, written to out (psm_softmax, psm_log_softmax). */
typedef struct {
    FN(call) call;
    int method;              /* enum psm_method, or -1 for log-softmax */
    REAL *out;
} FN(softmax_job);

/* The positions [*first, *last) of a chunk, which has found no bad label
 * yet. */
static void FN(chunk_span)(const FN(call) *c, int64_t chunk, int64_t *first,
                           int64_t *last)
{
    *first = chunk * c->chunk_positions;
    *last = *first + c->chunk_positions;
    if (*last > c->positions)
        *last = c->positions;
    c->first_bad[chunk] = -1;
}

/* Position pos of a call: the offset of its first logit (and of its first
 * probability and gradient entry; the next class is inner further on) and
 * its target.  Returns target_at's 1, or 0 for an ignored label; -1 is a
 * label out of range where it was read, recorded as the chunk's first bad
 * position, at which the chunk stops. */
static int FN(position)(const FN(call) *c, int64_t chunk, int64_t pos, int64_t *base,
                        FN(target) *t)
{
    int64_t inner = c->inner;
    int64_t o = inner == 1 ? pos : pos / inner, i = inner == 1 ? 0 : pos % inner;
    *base = o * c->classes * inner + i;
    int counts = FN(target_at)(c->opt, c->labels, pos, c->probs ? c->probs + *base : NULL,
                               c->class_offset, c->total_classes, t);
    if (counts < 0)
        c->first_bad[chunk] = pos;
    return counts;
}

/* Whether n labels are all plain: in range and not ignored. */
static int FN(plain_labels)(const FN(call) *c, const int64_t *y, int n)
{
    if (psm_labels_outside(y, n, c->classes))
        return 0;
    for (int r = 0; c->opt->use_ignore_index && r < n; r++)
        if (y[r] == c->opt->ignore_index)
            return 0;
    return 1;
}

/* Positions from pos, pos + 8 <= last, of a loss job whose targets are
 * plain labels (loss_chunk's plain): PSM_FINISH_ROWS of them where the
 * chunk has that many and their labels are all plain, else 8 where the
 * first 8 are.  Their losses (and gradients) in one batch (plain_losses),
 * stored and added to *total in order.  Returns how many positions it
 * took, or 0, having done nothing, if some label of the first 8 is ignored
 * or out of range: those positions take the general path, which records a
 * bad label. */
static int FN(plain_batch)(const FN(loss_job) *job, int64_t pos, int64_t last,
                           psm_lanes *total)
{
    const FN(call) *c = &job->call;
    int rows = pos + PSM_FINISH_ROWS <= last ? PSM_FINISH_ROWS : 8;
    int64_t y[PSM_FINISH_ROWS];
    for (int r = 0; r < rows; r++)
        y[r] = read_label(c->labels, pos + r);
    if (!FN(plain_labels)(c, y, 8))
        return 0;
    if (rows > 8 && !FN(plain_labels)(c, y + 8, rows - 8))
        rows = 8;
    double loss[PSM_FINISH_ROWS];
    int64_t base = pos * c->classes;
    FN(plain_losses)(c->logits + base, c->classes, rows, y, c->opt->method, job->scale,
                     c->fast, job->grad ? job->grad + base : NULL, loss);
    REAL *losses = job->losses;
    for (int r = 0; losses && r < rows; r++)
        losses[pos + r] = (REAL)loss[r];
#ifdef PSM_HAVE_AVX2
    if (c->fast && total->next == 0) {
        for (int b = 0; b < rows; b += PSM_LANES)
            psm_lanes_add8_avx2(total, loss + b);
        return rows;
    }
#endif
    for (int r = 0; r < rows; r++)
        psm_lanes_add(total, loss[r]);
    return rows;
}

/* A chunk of a loss job, summing its losses in order (compensated:
 * psm_lanes) into chunk_loss[chunk]. */
static void FN(loss_chunk)(const void *job_, int64_t chunk)
{
    const FN(loss_job) *job = job_;
    const FN(call) *c = &job->call;
    int method = c->opt->method;
    int64_t classes = c->classes, inner = c->inner, first, last;
    FN(chunk_span)(c, chunk, &first, &last);
    psm_lanes total = {{0.0}, {0.0}, 0, 0};
    /* rows of a few classes: eight at once, [batch, batch + 8), their
     * row_pass (no gradient) or stored_exps (a one-hot gradient) */
    FN(row_state) batch_state[8] = {{0}};
    double batch_log_norm[8] = {0};
    int64_t batch = -8;
    int batches = SMALL_ROWS && c->fast && inner == 1 && classes <= PSM_SMALL_CLASSES;
    int extras = job->lse != NULL || c->opt->z_loss != 0.0;
    int plain = inner == 1 && classes <= PSM_PLAIN_BATCH_CLASSES && !extras && !c->probs &&
                !c->opt->class_weight && c->opt->label_smoothing == 0.0 &&
                c->class_offset == 0 && c->total_classes == classes;
    for (int64_t pos = first; pos < last; pos++) {
        int rows = plain && pos + 8 <= last ? FN(plain_batch)(job, pos, last, &total) : 0;
        if (rows) {
            pos += rows - 1;
            continue;
        }
        int64_t base;
        FN(target) t;
        int counts = FN(position)(c, chunk, pos, &base, &t);
        if (counts < 0)
            break;
        const REAL *x = c->logits + base;
        if (!counts) {
            for (int64_t j = 0; job->grad && j < classes; j++)
                job->grad[base + j * inner] = 0;
            if (job->losses)
                job->losses[pos] = 0;
            if (job->lse)   /* an ignored position's too: the logits have one */
                job->lse[pos] = FN(position_lse)(x, classes, inner, method, c->fast);
            continue;
        }
        /* the log-sum-exp, where the call returns it or has a z-loss; its
         * z-term, added to the loss, and z_mass, to the gradient's p-term */
        double loss, lse = 0.0, z_part = 0.0, z_mass = 0.0;
        if (job->grad && FN(is_one_hot)(&t)) {
            REAL *g = job->grad + base;
            if (batches && pos >= batch + 8 && pos + 8 <= last &&
                FN(small_stored_exps)(x, classes, method, c->fast, g, batch_state)) {
                batch = pos;
                if (method == PSM_STABLE)
                    FN(log_norms)(batch_state, 8, c->fast, batch_log_norm);
            }
            FN(row_state) own;
            const FN(row_state) *st = &own;
            double log_norm;
            if (pos < batch + 8) {
                st = &batch_state[pos - batch];
                log_norm = batch_log_norm[pos - batch];
            } else {
                FN(stored_exps)(x, classes, inner, method, c->fast, g, &own);
                log_norm = method == PSM_STABLE ? FN(log_norm)(&own) : 0.0;
            }
            if (extras) {
                lse = FN(stored_lse)(st, log_norm, method, x, classes, inner, c->fast);
                z_part = FN(z_term)(&t, lse, &z_mass);
            }
            loss = FN(finish_loss_grad)(st, log_norm, x, classes, inner, &t, z_mass, method,
                                        job->scale, c->fast, g);
        } else if (method == PSM_STABLE && FN(smoothed_label)(&t)) {
            /* the max, sums and exps as for a label, then the smoothing's
             * cross term in one vector pass */
            FN(row_state) st;
            if (job->grad)
                FN(stored_exps)(x, classes, inner, method, c->fast, job->grad + base, &st);
            else
                FN(row_pass)(x, classes, inner, 1, 1, c->fast, NULL, &st);
            FN(smoothed_cross)(x, classes, inner, &t, job->weight_total, c->fast, &st);
            double log_norm = FN(log_norm)(&st);
            if (extras) {
                lse = FN(stored_lse)(&st, log_norm, method, x, classes, inner, c->fast);
                z_part = FN(z_term)(&t, lse, &z_mass);
            }
            loss = FN(position_loss_given)(&st, log_norm, 0, x, classes, inner, &t, method);
            if (job->grad)
                FN(smoothed_grad)(&st, x, classes, inner, &t, job->weight_total, z_mass,
                                  job->scale, c->fast, job->grad + base);
        } else {
            FN(row_state) st;
            int want_cross = method == PSM_STABLE && !FN(is_one_hot)(&t);
            if (batches && !want_cross && pos >= batch + 8 && pos + 8 <= last &&
                FN(small_row_passes)(x, classes, method != PSM_NAIVE, method == PSM_STABLE,
                                     c->fast, batch_state)) {
                batch = pos;
                if (method == PSM_STABLE)
                    FN(log_norms)(batch_state, 8, c->fast, batch_log_norm);
            }
            double log_norm;
            if (!want_cross && pos < batch + 8) {
                st = batch_state[pos - batch];
                log_norm = batch_log_norm[pos - batch];
            } else {
                FN(row_pass)(x, classes, inner, method != PSM_NAIVE, method == PSM_STABLE,
                             c->fast, want_cross ? &t : NULL, &st);
                log_norm = method == PSM_STABLE ? FN(log_norm)(&st) : 0.0;
            }
            REAL x_y = FN(is_one_hot)(&t) ? x[t.label * inner] : 0;
            if (extras) {
                lse = FN(state_lse)(&st, log_norm, method);
                z_part = FN(z_term)(&t, lse, &z_mass);
            }
            loss = FN(position_loss_given)(&st, log_norm, x_y, x, classes, inner, &t, method);
            if (job->grad)
                FN(position_grad)(&st, x, classes, inner, &t, method, job->scale, c->fast,
                                  FN(target_total)(&t, classes, inner), z_mass,
                                  job->grad + base);
        }
        if (z_part != 0.0)   /* (+0 would turn a -0 loss into +0) */
            loss += z_part;
        if (job->lse)
            job->lse[pos] = (REAL)lse;
        if (job->losses)
            job->losses[pos] = (REAL)loss;
        psm_lanes_add(&total, loss);
    }
    job->chunk_loss[chunk] = psm_lanes_value(&total);
}

/* A chunk of a partials job: each position's state over the block. */
static void FN(partials_chunk)(const void *job_, int64_t chunk)
{
    const FN(partials_job) *job = job_;
    const FN(call) *c = &job->call;
    int64_t first, last;
    FN(chunk_span)(c, chunk, &first, &last);
    for (int64_t pos = first; pos < last; pos++) {
        int64_t base;
        FN(target) t;
        int counts = FN(position)(c, chunk, pos, &base, &t);
        if (counts < 0)
            break;
        if (!counts)
            job->state[pos] = FN(no_state);
        else
            FN(block_partial)(c->logits + base, c->classes, c->inner, &t, c->opt->method,
                              c->fast, &job->state[pos]);
    }
}

/* A chunk of a grad-from-partials job: the block's gradient of each
 * position, from its whole state. */
static void FN(grad_chunk)(const void *job_, int64_t chunk)
{
    const FN(grad_job) *job = job_;
    const FN(call) *c = &job->call;
    int64_t classes = c->classes, inner = c->inner, first, last;
    FN(chunk_span)(c, chunk, &first, &last);
    for (int64_t pos = first; pos < last; pos++) {
        int64_t base;
        FN(target) t;
        int counts = FN(position)(c, chunk, pos, &base, &t);
        if (counts < 0)
            break;
        if (!counts) {
            for (int64_t j = 0; j < classes; j++)
                job->grad[base + j * inner] = 0;
            continue;
        }
        const psm_partial *whole = &job->state[pos];
        FN(row_state) st = FN(state_from)(whole);
        double mass = FN(is_one_hot)(&t) ? t.label_part : whole->mass, z_mass = 0.0;
        if (t.z_scale != 0.0)
            FN(z_term)(&t, FN(summed_lse)(&st, c->opt->method), &z_mass);
        FN(position_grad)(&st, c->logits + base, classes, inner, &t, c->opt->method,
                          job->scale, c->fast, mass, z_mass, job->grad + base);
    }
}

/* A chunk of a softmax job: each position's probabilities or
 * log-probabilities (no labels, so no position is ever bad). */
static void FN(softmax_chunk)(const void *job_, int64_t chunk)
{
    const FN(softmax_job) *job = job_;
    const FN(call) *c = &job->call;
    int64_t classes = c->classes, inner = c->inner, first, last;
    FN(chunk_span)(c, chunk, &first, &last);
    int64_t pos = first;
#if SMALL_ROWS
    /* rows of a few classes: eight at once (log-softmax sixteen, whose
     * finish is a log1p: PSM_FINISH_ROWS), the chunk's last (last - first)
     * % 8 one by one below */
    int rows = 8;
    for (; c->fast && inner == 1 && classes <= PSM_SMALL_CLASSES && pos + 8 <= last;
         pos += rows) {
        const REAL *x = c->logits + pos * classes;
        REAL *y = job->out + pos * classes;
        rows = job->method < 0 && pos + PSM_FINISH_ROWS <= last ? PSM_FINISH_ROWS : 8;
        if (job->method < 0)
            FN(small_log_softmax_rows)(x, classes, rows, y);
        else
            FN(small_softmax_rows)(x, classes, job->method, y);
    }
#endif
    for (; pos < last; pos++) {
        int64_t o = inner == 1 ? pos : pos / inner, i = inner == 1 ? 0 : pos % inner;
        int64_t base = o * classes * inner + i;
        if (job->method < 0)
            FN(log_softmax_row)(c->logits + base, classes, inner, c->fast, job->out + base);
        else
            FN(softmax_row)(c->logits + base, classes, inner, job->method, c->fast,
                            job->out + base);
    }
}

/* Runs a job's chunk function over all its call's positions, on the threads
 * the options allow.  chunk_loss: where the job's chunk losses go (NULL for
 * a job without losses), summed in order into *total.  Returns PSM_OK,
 * PSM_NO_MEMORY, or 1 + the position of the first label found out of range
 * where it was used (the caller's labels changed after they were checked). */
static int64_t FN(run_job)(psm_chunk_fn chunk_fn, const void *job, FN(call) *c,
                           double **chunk_loss, double *total)
{
    int64_t chunk_positions = psm_chunk_positions(c->classes);
    int64_t chunks = (c->positions + chunk_positions - 1) / chunk_positions;
    double one_loss;
    int64_t one_bad;
    double *losses = &one_loss;
    int64_t *first_bad = &one_bad;
    if (chunks > 1) {
        first_bad = malloc((size_t)chunks * sizeof *first_bad);
        if (chunk_loss)
            losses = malloc((size_t)chunks * sizeof *losses);
    }
    int64_t status = PSM_NO_MEMORY;
    if (losses != NULL && first_bad != NULL) {
        c->chunk_positions = chunk_positions;
        c->first_bad = first_bad;
        if (chunk_loss)
            *chunk_loss = losses;
        status = psm_run_chunks(chunk_fn, job, chunks,
                                psm_threads_for(c->opt->threads, c->positions * c->classes));
        psm_sum sum = {0.0, 0.0};
        for (int64_t k = 0; k < chunks; k++) {
            if (first_bad[k] >= 0) {
                status = first_bad[k] + 1;
                break;
            }
            if (chunk_loss)
                psm_sum_add(&sum, losses[k]);
        }
        if (total)
            *total = psm_sum_value(&sum);
    }
    if (chunks > 1) {
        free(first_bad);
        if (chunk_loss)
            free(losses);
    }
    return status;
}

/* A call over classes [class_offset, class_offset + classes) of
 * total_classes.  Whether its rows take the AVX2 loops is decided here, on
 * the calling thread, before any worker starts. */
static FN(call) FN(call_for)(const REAL *logits, int64_t outer, int64_t classes,
                             int64_t inner, int64_t class_offset, int64_t total_classes,
                             const int64_t *labels, const REAL *target_probs,
                             const psm_options *opt)
{
    FN(call) c = {logits, classes, inner, class_offset, total_classes, labels,
                  target_probs, opt, VECTOR_ROWS && psm_use_simd(), outer * inner, 0,
                  NULL};
    return c;
}

/* naive and maxsub clamp each class's p, which needs the finished sum: with
 * a target that is not one-hot, only the stable method decomposes. */
static int FN(decomposable)(const psm_options *opt, const int64_t *labels)
{
    return opt->method == PSM_STABLE || (labels != NULL && opt->label_smoothing == 0.0);
}

int64_t FN(psm_softmax_loss)(const REAL *logits, int64_t outer,
                             int64_t classes, int64_t inner,
                             const int64_t *labels, const REAL *target_probs,
                             const psm_options *opt, REAL *losses,
                             double *loss, REAL *grad)
{
    return FN(psm_softmax_loss_lse)(logits, outer, classes, inner, labels, target_probs,
                                    opt, losses, loss, grad, NULL);
}

int64_t FN(psm_softmax_loss_lse)(const REAL *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 const int64_t *labels, const REAL *target_probs,
                                 const psm_options *opt, REAL *losses,
                                 double *loss, REAL *grad, REAL *lse)
{
    if (!psm_options_ok(logits, outer, classes, inner, labels, target_probs, opt) ||
        loss == NULL)
        return PSM_BAD_ARGUMENT;
    double normalizer;
    int64_t status = psm_call_normalizer(labels, outer, inner, classes, opt, &normalizer);
    if (status != PSM_OK)
        return status;
    double weight_total = (double)classes;   /* only label smoothing reads it */
    if (opt->class_weight && opt->label_smoothing != 0.0) {
        weight_total = 0.0;
        for (int64_t k = 0; k < classes; k++)
            weight_total += opt->class_weight[k];
    }
    FN(loss_job) job = {FN(call_for)(logits, outer, classes, inner, 0, classes, labels,
                                     target_probs, opt),
                        psm_gradient_scale(normalizer), weight_total, losses, grad, lse,
                        NULL};
    double total;
    status = FN(run_job)(FN(loss_chunk), &job, &job.call, &job.chunk_loss, &total);
    if (status != PSM_OK)
        return status;
    *loss = psm_reduce(opt->reduction, total, normalizer);
    return PSM_OK;
}

double FN(psm_softmax_loss_value)(const REAL *logits, int64_t outer, int64_t classes,
                                  const int64_t *labels, const psm_options *opt)
{
    double loss;
    if (opt == NULL || opt->class_weight || opt->use_ignore_index ||
        opt->label_smoothing != 0.0 || opt->z_loss != 0.0 || opt->has_normalizer ||
        (uintptr_t)logits % _Alignof(REAL) != 0 || (uintptr_t)labels % _Alignof(int64_t) != 0 ||
        FN(psm_softmax_loss_lse)(logits, outer, classes, 1, labels, NULL, opt, NULL, &loss,
                                 NULL, NULL) != PSM_OK)
        return -INFINITY;
    return loss;
}

/* The partials' checks past the arguments: a state exists for these
 * options, and the labels (checked against total_classes) give what the
 * reduction divides by. */
static int64_t FN(partials_normalizer)(const int64_t *labels, int64_t outer,
                                       int64_t inner, int64_t total_classes,
                                       const psm_options *opt, double *normalizer)
{
    if (!FN(decomposable)(opt, labels))
        return PSM_NOT_DECOMPOSABLE;
    return psm_call_normalizer(labels, outer, inner, total_classes, opt, normalizer);
}

/* What the calls on one block of classes share: their checks (outputs_ok
 * says the caller's outputs are there), the labels' check, the call, and
 * the scale of its gradient (by the reduction's normalizer). */
static int64_t FN(block_call)(const REAL *logits, int64_t outer, int64_t classes,
                              int64_t inner, int64_t class_offset,
                              int64_t total_classes, const int64_t *labels,
                              const REAL *target_probs, const psm_options *opt,
                              int outputs_ok, FN(call) *call, double *scale)
{
    if (!psm_options_ok(logits, outer, classes, inner, labels, target_probs, opt) ||
        !psm_block_ok(classes, class_offset, total_classes) ||
        (!outputs_ok && outer * inner > 0))
        return PSM_BAD_ARGUMENT;
    double normalizer;
    int64_t status = FN(partials_normalizer)(labels, outer, inner, total_classes, opt,
                                             &normalizer);
    if (status != PSM_OK)
        return status;
    *call = FN(call_for)(logits, outer, classes, inner, class_offset, total_classes,
                         labels, target_probs, opt);
    *scale = psm_gradient_scale(normalizer);
    return PSM_OK;
}

int64_t FN(psm_softmax_partials)(const REAL *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 int64_t class_offset, int64_t total_classes,
                                 const int64_t *labels, const REAL *target_probs,
                                 const psm_options *opt, psm_partial *state)
{
    FN(partials_job) job;
    double unused_scale;
    int64_t status = FN(block_call)(logits, outer, classes, inner, class_offset,
                                    total_classes, labels, target_probs, opt,
                                    state != NULL, &job.call, &unused_scale);
    if (status != PSM_OK)
        return status;
    job.state = state;
    return FN(run_job)(FN(partials_chunk), &job, &job.call, NULL, NULL);
}

int64_t FN(psm_grad_from_partials)(const REAL *logits, int64_t outer,
                                   int64_t classes, int64_t inner,
                                   int64_t class_offset, int64_t total_classes,
                                   const int64_t *labels, const REAL *target_probs,
                                   const psm_options *opt,
                                   const psm_partial *state, REAL *grad)
{
    FN(grad_job) job;
    int64_t status = FN(block_call)(logits, outer, classes, inner, class_offset,
                                    total_classes, labels, target_probs, opt,
                                    state != NULL && grad != NULL, &job.call, &job.scale);
    if (status != PSM_OK)
        return status;
    job.state = state;
    job.grad = grad;
    return FN(run_job)(FN(grad_chunk), &job, &job.call, NULL, NULL);
}

int64_t FN(psm_loss_from_partials)(const psm_partial *state, int64_t outer,
                                   int64_t inner, int64_t total_classes,
                                   const int64_t *labels, const psm_options *opt,
                                   REAL *losses, double *loss)
{
    /* the states stand in for logits: only their presence is checked */
    if (!psm_options_ok(state, outer, total_classes, inner, labels,
                    labels ? NULL : (const void *)state, opt) || loss == NULL)
        return PSM_BAD_ARGUMENT;
    double normalizer;
    int64_t status = FN(partials_normalizer)(labels, outer, inner, total_classes, opt,
                                             &normalizer);
    if (status != PSM_OK)
        return status;
    /* summed as psm_softmax_loss sums: by chunks, in order */
    int64_t chunk_positions = psm_chunk_positions(total_classes);
    psm_sum total = {0.0, 0.0};
    psm_lanes chunk_total = {{0.0}, {0.0}, 0, 0};
    for (int64_t pos = 0; pos < outer * inner; pos++) {
        if (pos % chunk_positions == 0) {
            psm_sum_add(&total, psm_lanes_value(&chunk_total));
            chunk_total = (psm_lanes){{0.0}, {0.0}, 0, 0};
        }
        const psm_partial *p = &state[pos];
        REAL x_y = 0;
        FN(target) t;
        /* probability targets are marked by any pointer: never read here */
        int counts = FN(target_at)(opt, labels, pos, labels ? NULL : &x_y, 0,
                                   total_classes, &t);
        if (counts < 0)
            return pos + 1;
        if (!counts) {
            if (losses)
                losses[pos] = 0;
            continue;
        }
        if (FN(is_one_hot)(&t)) {
            if (p->label_found != 1)   /* the label's block is missing, or twice */
                return PSM_BAD_ARGUMENT;
            x_y = (REAL)p->label_logit;
        }
        FN(row_state) st = FN(state_from)(p);
        double z_mass, l = FN(position_loss)(&st, x_y, NULL, total_classes, 1, &t,
                                             opt->method);
        if (t.z_scale != 0.0)
            l += FN(z_term)(&t, FN(summed_lse)(&st, opt->method), &z_mass);
        if (losses)
            losses[pos] = (REAL)l;
        psm_lanes_add(&chunk_total, l);
    }
    psm_sum_add(&total, psm_lanes_value(&chunk_total));
    *loss = psm_reduce(opt->reduction, psm_sum_value(&total), normalizer);
    return PSM_OK;
}

/* Softmax (method) or log-softmax (method -1) of every position of a call
 * without targets, on the threads `threads` allows. */
static int64_t FN(run_softmax)(const REAL *logits, int64_t outer, int64_t classes,
                               int64_t inner, int method, int threads, REAL *out)
{
    psm_options opt = {0};
    opt.method = method < 0 ? PSM_STABLE : method;
    opt.threads = threads;
    FN(softmax_job) job = {FN(call_for)(logits, outer, classes, inner, 0, classes, NULL,
                                        NULL, &opt),
                           method, out};
    return FN(run_job)(FN(softmax_chunk), &job, &job.call, NULL, NULL);
}

int64_t FN(psm_softmax)(const REAL *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, int threads, REAL *out)
{
    if (!psm_shape_ok(logits, outer, classes, inner, method) ||
        (out == NULL && outer * inner > 0))
        return PSM_BAD_ARGUMENT;
    return FN(run_softmax)(logits, outer, classes, inner, method, threads, out);
}

int64_t FN(psm_log_softmax)(const REAL *logits, int64_t outer,
                            int64_t classes, int64_t inner, int threads, REAL *out)
{
    if (!psm_shape_ok(logits, outer, classes, inner, PSM_STABLE) ||
        (out == NULL && outer * inner > 0))
        return PSM_BAD_ARGUMENT;
    return FN(run_softmax)(logits, outer, classes, inner, -1, threads, out);
}
