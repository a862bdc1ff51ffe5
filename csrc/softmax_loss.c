/* Instantiates softmax_loss_impl.h for float and double. */
#include "softmax_loss.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

/* Arguments every entry point checks; the Python layer validates first, this
 * only keeps a direct C caller from walking off its arrays. */
static int shape_ok(const void *logits, int64_t outer, int64_t classes,
                    int64_t inner, int method)
{
    if (outer < 0 || classes < 1 || inner < 0)
        return 0;
    if (method != PSM_NAIVE && method != PSM_MAXSUB && method != PSM_STABLE)
        return 0;
    return outer == 0 || inner == 0 || logits != NULL;
}

static int options_ok(const void *logits, int64_t outer, int64_t classes,
                      int64_t inner, const int64_t *labels,
                      const void *target_probs, const psm_options *opt)
{
    if (opt == NULL || !shape_ok(logits, outer, classes, inner, opt->method))
        return 0;
    if (opt->reduction < PSM_NONE || opt->reduction > PSM_BATCH_SIZE)
        return 0;
    if (!(opt->label_smoothing >= 0.0 && opt->label_smoothing <= 1.0))
        return 0;
    /* exactly one kind of target, unless there is nothing to compute */
    return outer == 0 || inner == 0 || (labels == NULL) != (target_probs == NULL);
}

#define REAL float
#define FN(name) name##_f32
#define EXP expf
#define LOG logf
#define TINY FLT_MIN
#include "softmax_loss_impl.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef TINY

#define REAL double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define TINY DBL_MIN
#include "softmax_loss_impl.h"
#undef REAL
#undef FN
#undef EXP
#undef LOG
#undef TINY
