/*
 * The driver, written once per floating type: a call's jobs, their chunks
 * of positions, and the entry points of softmax_loss.h that run them on
 * chunks.c's threads.  The per-position math is row.h's, included before
 * this file by softmax_loss_f32.c and softmax_loss_f64.c, with the same
 * macros (REAL, FN, EXP, LOG, BIG, FLOAT_ROWS, LANE_SUMS; see row.h).
 *
 * Chunks are cut by the shape alone and their losses summed in order, so
 * every thread count gives the same bits.  Every entry point checks all its
 * labels before it writes anything (psm_call_normalizer), and every label is
 * bounded again where a job reads it (target_at): one that another thread
 * changed meanwhile stops its chunk, and the call reports 1 + the first such
 * position.
 */

/* Everything one call needs, shared read-only by its threads.  A call reads
 * classes [class_offset, class_offset + classes) of total_classes: all of
 * them but for the partials' calls. */
typedef struct {
    const REAL *logits;
    int64_t classes, inner, class_offset, total_classes;
    const int64_t *labels;
    const REAL *probs;
    const psm_options *opt;
    double scale;
    int fast;                /* contiguous rows may take the AVX2 loops */
    int64_t positions, chunk_positions;
    REAL *losses, *grad;
    psm_partial *state_out;  /* write each position's partial state, or */
    const psm_partial *state_in; /* the gradient from these whole states */
    double *partials;        /* each chunk's summed loss */
    int64_t *first_bad;      /* each chunk's first label out of range, or -1 */
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
    double total = 0.0;
    job->first_bad[chunk] = -1;
    for (int64_t pos = first; pos < last; pos++) {
        int64_t o = inner == 1 ? pos : pos / inner, i = inner == 1 ? 0 : pos % inner;
        int64_t base = o * classes * inner + i;
        const REAL *x = job->logits + base;
        FN(target) t;
        int counts = FN(target_at)(opt, job->labels, pos,
                                   job->probs ? job->probs + base : NULL,
                                   job->class_offset, job->total_classes, &t);
        if (counts < 0) {
            job->first_bad[chunk] = pos;
            break;
        }
        if (!counts) {
            for (int64_t j = 0; job->grad && j < classes; j++)
                job->grad[base + j * inner] = 0;
            if (job->losses)
                job->losses[pos] = 0;
            if (job->state_out)
                job->state_out[pos] = FN(no_state);
            continue;
        }
        if (job->state_out) {
            FN(block_partial)(x, classes, inner, &t, opt->method, job->fast,
                              &job->state_out[pos]);
            continue;
        }
        if (job->state_in) {
            const psm_partial *whole = &job->state_in[pos];
            FN(row_state) st = FN(state_from)(whole);
            double mass = FN(is_one_hot)(&t) ? t.label_part : whole->mass;
            FN(position_grad)(&st, x, classes, inner, &t, opt->method, job->scale,
                              job->fast, mass, job->grad + base);
            continue;
        }
        FN(row_state) st;
        int want_cross = opt->method == PSM_STABLE && !FN(is_one_hot)(&t);
        FN(row_pass)(x, classes, inner, track_max, opt->method == PSM_STABLE, job->fast,
                     want_cross ? &t : NULL, &st);
        REAL x_y = FN(is_one_hot)(&t) ? x[t.label * inner] : 0;
        double loss = FN(position_loss)(&st, x_y, x, classes, inner, &t, opt->method);
        if (job->losses)
            job->losses[pos] = (REAL)loss;
        total += loss;
        if (job->grad)
            FN(position_grad)(&st, x, classes, inner, &t, opt->method, job->scale,
                              job->fast, FN(target_total)(&t, classes, inner),
                              job->grad + base);
    }
    job->partials[chunk] = total;
}

/* Runs a job over all its positions on the threads the options allow and
 * sums the chunks' losses in order into *total.  Returns 1 + the position
 * of the first label found out of range where it was used (the caller's
 * labels changed after they were checked), or a status. */
static int64_t FN(run_job)(FN(job) *job, double *total)
{
    int64_t chunk_positions = psm_chunk_positions(job->classes);
    int64_t chunks = (job->positions + chunk_positions - 1) / chunk_positions;
    double one_partial;
    int64_t one_bad;
    double *partials = &one_partial;
    int64_t *first_bad = &one_bad;
    if (chunks > 1) {
        partials = malloc((size_t)chunks * sizeof *partials);
        first_bad = malloc((size_t)chunks * sizeof *first_bad);
    }
    int64_t status = PSM_NO_MEMORY;
    if (partials != NULL && first_bad != NULL) {
        job->chunk_positions = chunk_positions;
        job->partials = partials;
        job->first_bad = first_bad;
        status = psm_run_chunks(FN(run_chunk), job, chunks,
                                psm_threads_for(job->opt->threads,
                                                job->positions * job->classes));
        double sum = 0.0;
        for (int64_t c = 0; c < chunks; c++) {
            if (first_bad[c] >= 0) {
                status = first_bad[c] + 1;
                break;
            }
            sum += partials[c];
        }
        *total = sum;
    }
    if (chunks > 1) {
        free(partials);
        free(first_bad);
    }
    return status;
}

static FN(job) FN(job_for)(const REAL *logits, int64_t outer, int64_t classes,
                           int64_t inner, int64_t class_offset,
                           int64_t total_classes, const int64_t *labels,
                           const REAL *target_probs, const psm_options *opt)
{
    FN(job) job = {logits, classes, inner, class_offset, total_classes, labels,
                   target_probs, opt, 1.0, FLOAT_ROWS && psm_use_simd(opt),
                   outer * inner, 0, NULL, NULL, NULL, NULL, NULL, NULL};
    return job;
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
    if (!psm_options_ok(logits, outer, classes, inner, labels, target_probs, opt) ||
        loss == NULL)
        return PSM_BAD_ARGUMENT;
    double normalizer;
    int64_t status = psm_call_normalizer(labels, outer, inner, classes, opt, &normalizer);
    if (status != PSM_OK)
        return status;
    FN(job) job = FN(job_for)(logits, outer, classes, inner, 0, classes, labels,
                              target_probs, opt);
    job.scale = psm_gradient_scale(normalizer);
    job.losses = losses;
    job.grad = grad;
    double total;
    status = FN(run_job)(&job, &total);
    if (status != PSM_OK)
        return status;
    *loss = psm_reduce(opt->reduction, total, normalizer);
    return PSM_OK;
}

/* What the calls on one block of classes share: their checks (outputs_ok
 * says the caller's outputs are there), the labels' check, and the job,
 * scaled by the reduction's normalizer. */
static int64_t FN(block_job)(const REAL *logits, int64_t outer, int64_t classes,
                             int64_t inner, int64_t class_offset,
                             int64_t total_classes, const int64_t *labels,
                             const REAL *target_probs, const psm_options *opt,
                             int outputs_ok, FN(job) *job)
{
    if (!psm_options_ok(logits, outer, classes, inner, labels, target_probs, opt) ||
        !psm_block_ok(classes, class_offset, total_classes) ||
        (!outputs_ok && outer * inner > 0))
        return PSM_BAD_ARGUMENT;
    if (!FN(decomposable)(opt, labels))
        return PSM_NOT_DECOMPOSABLE;
    double normalizer;
    int64_t status = psm_call_normalizer(labels, outer, inner, total_classes, opt,
                                         &normalizer);
    if (status != PSM_OK)
        return status;
    *job = FN(job_for)(logits, outer, classes, inner, class_offset, total_classes,
                       labels, target_probs, opt);
    job->scale = psm_gradient_scale(normalizer);
    return PSM_OK;
}

int64_t FN(psm_softmax_partials)(const REAL *logits, int64_t outer,
                                 int64_t classes, int64_t inner,
                                 int64_t class_offset, int64_t total_classes,
                                 const int64_t *labels, const REAL *target_probs,
                                 const psm_options *opt, psm_partial *state)
{
    FN(job) job;
    int64_t status = FN(block_job)(logits, outer, classes, inner, class_offset,
                                   total_classes, labels, target_probs, opt,
                                   state != NULL, &job);
    if (status != PSM_OK)
        return status;
    job.state_out = state;
    double unused;
    return FN(run_job)(&job, &unused);
}

int64_t FN(psm_grad_from_partials)(const REAL *logits, int64_t outer,
                                   int64_t classes, int64_t inner,
                                   int64_t class_offset, int64_t total_classes,
                                   const int64_t *labels, const REAL *target_probs,
                                   const psm_options *opt,
                                   const psm_partial *state, REAL *grad)
{
    FN(job) job;
    int64_t status = FN(block_job)(logits, outer, classes, inner, class_offset,
                                   total_classes, labels, target_probs, opt,
                                   state != NULL && grad != NULL, &job);
    if (status != PSM_OK)
        return status;
    job.state_in = state;
    job.grad = grad;
    double unused;
    return FN(run_job)(&job, &unused);
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
    if (!FN(decomposable)(opt, labels))
        return PSM_NOT_DECOMPOSABLE;
    double normalizer;
    int64_t status = psm_call_normalizer(labels, outer, inner, total_classes, opt,
                                         &normalizer);
    if (status != PSM_OK)
        return status;
    /* summed as psm_softmax_loss sums: by chunks, in order */
    int64_t chunk_positions = psm_chunk_positions(total_classes);
    double total = 0.0, chunk_total = 0.0;
    for (int64_t pos = 0; pos < outer * inner; pos++) {
        if (pos % chunk_positions == 0) {
            total += chunk_total;
            chunk_total = 0.0;
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
        double l = FN(position_loss)(&st, x_y, NULL, total_classes, 1, &t, opt->method);
        if (losses)
            losses[pos] = (REAL)l;
        chunk_total += l;
    }
    total += chunk_total;
    *loss = psm_reduce(opt->reduction, total, normalizer);
    return PSM_OK;
}

int64_t FN(psm_softmax)(const REAL *logits, int64_t outer, int64_t classes,
                        int64_t inner, int method, REAL *out)
{
    if (!psm_shape_ok(logits, outer, classes, inner, method))
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
    if (!psm_shape_ok(logits, outer, classes, inner, PSM_STABLE))
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
