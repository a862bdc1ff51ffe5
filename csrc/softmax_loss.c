/*
 * The entry points that do not depend on the floating type (the label
 * summary, the normalizer, psm_reduce, psm_combine_partials, the CPU's SIMD
 * level) and the checks every typed entry point shares (internal.h).  The
 * typed ones are softmax_loss_f32.c's and softmax_loss_f64.c's; threads are
 * chunks.c's.
 *
 * CPU dispatch: the AVX2+FMA code is compiled through target attributes and
 * chosen at run time from cpuid and xgetbv, so the build needs no
 * host-specific flags and runs on any x86-64 (or other) CPU.  Not
 * __builtin_cpu_supports: it reads libgcc's __cpu_model, which Apple's
 * toolchain and clang-cl do not provide.
 */
#include "softmax_loss.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

#include "internal.h"
#include "testing.h"   /* psm_testing_portable */

#ifdef PSM_HAVE_AVX2
#if defined(_MSC_VER)   /* clang-cl: MSVC's cpuid intrinsic, not <cpuid.h>'s */
#include <intrin.h>

static void cpuid(int leaf, unsigned r[4])
{
    int v[4];
    __cpuidex(v, leaf, 0);
    for (int k = 0; k < 4; k++)
        r[k] = (unsigned)v[k];
}
#else
#include <cpuid.h>

/* Leaves above the CPU's highest read as zeros: no feature. */
static void cpuid(int leaf, unsigned r[4])
{
    if (!__get_cpuid_count((unsigned)leaf, 0, &r[0], &r[1], &r[2], &r[3]))
        r[0] = r[1] = r[2] = r[3] = 0;
}
#endif

/* XCR0's low word.  xgetbv by its bytes (0f 01 d0), which any assembler
 * takes: the _xgetbv intrinsic would need the "xsave" target on its caller. */
static unsigned xcr0(void)
{
    unsigned eax, edx;
    __asm__ __volatile__(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}

/* AVX2 and FMA in the CPU, and the OS saving the YMM registers on a context
 * switch: OSXSAVE (leaf 1 ECX bit 27) makes xgetbv legal, and XCR0 must have
 * the XMM and YMM state bits (1 and 2); then AVX (leaf 1 ECX bit 28), FMA
 * (leaf 1 ECX bit 12) and AVX2 (leaf 7 EBX bit 5). */
static int cpu_has_avx2_fma(void)
{
    unsigned r[4];
    cpuid(0, r);
    if (r[0] < 7)
        return 0;
    cpuid(1, r);
    unsigned ecx1 = r[2];
    if (!((ecx1 >> 27) & 1) || (xcr0() & 6u) != 6u)
        return 0;
    if (!((ecx1 >> 28) & 1) || !((ecx1 >> 12) & 1))
        return 0;
    cpuid(7, r);
    return (r[1] >> 5) & 1;
}
#endif /* PSM_HAVE_AVX2 */

int psm_simd_level(void)
{
#ifdef PSM_HAVE_AVX2
    /* cpuid traps to the hypervisor in a VM (64 us a cpuid on the CI
     * machine), and every entry point asks: the CPU is asked once, the
     * answer kept.  It is the same on every thread, so a race only asks
     * twice; relaxed atomics keep that race defined. */
    static int level = -1;
    int seen = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (seen < 0) {
        seen = cpu_has_avx2_fma();
        __atomic_store_n(&level, seen, __ATOMIC_RELAXED);
    }
    return seen;
#else
    return 0;
#endif
}

int psm_use_simd(void)
{
    return !psm_testing_portable() && psm_simd_level();
}

int psm_shape_ok(const void *logits, int64_t outer, int64_t classes, int64_t inner,
                 int method)
{
    if (outer < 0 || classes < 1 || inner < 0)
        return 0;
    if (method != PSM_NAIVE && method != PSM_MAXSUB && method != PSM_STABLE)
        return 0;
    return outer == 0 || inner == 0 || logits != NULL;
}

int psm_options_ok(const void *logits, int64_t outer, int64_t classes, int64_t inner,
                   const int64_t *labels, const void *target_probs,
                   const psm_options *opt)
{
    if (opt == NULL || !psm_shape_ok(logits, outer, classes, inner, opt->method))
        return 0;
    if (opt->reduction < PSM_NONE || opt->reduction > PSM_BATCH_SIZE)
        return 0;
    if (!(opt->label_smoothing >= 0.0 && opt->label_smoothing <= 1.0))
        return 0;
    if (!(opt->z_loss >= 0.0 && opt->z_loss <= DBL_MAX))
        return 0;
    /* exactly one kind of target, unless there is nothing to compute */
    return outer == 0 || inner == 0 || (labels == NULL) != (target_probs == NULL);
}

int64_t psm_label_summary(const int64_t *labels, int64_t positions,
                          int64_t classes, const psm_options *opt,
                          int64_t *valid, double *label_weight_sum)
{
    if (opt == NULL || valid == NULL || label_weight_sum == NULL ||
        positions < 0 || classes < 1)
        return PSM_BAD_ARGUMENT;
    if (labels == NULL) {
        *valid = positions;
        *label_weight_sum = (double)positions;
        return PSM_OK;
    }
    const double *w = opt->class_weight;
    if (!w && !opt->use_ignore_index && !psm_labels_outside(labels, positions, classes)) {
        /* every label counts, each weighing 1.0 (this scan takes about one
         * instruction a label, the loop below about nine; only a bad label
         * needs that loop, which names the first) */
        *valid = positions;
        *label_weight_sum = (double)positions;
        return PSM_OK;
    }
    int64_t count = 0;
    double weight_sum = 0.0;
    for (int64_t pos = 0; pos < positions; pos++) {
        int64_t y = read_label(labels, pos);
        if (opt->use_ignore_index && y == opt->ignore_index)
            continue;
        if (y < 0 || y >= classes)
            return pos + 1;
        count++;
        if (w)
            weight_sum += w[y];
    }
    *valid = count;
    /* Without weights every counted position weighs 1.0, and that sum in
     * double is the count (exact below 2^53): taking the count, the loop
     * carries no chain of dependent double additions, which made it 1 ns a
     * label, the whole of a (65536, 10) call's serial part. */
    *label_weight_sum = w ? weight_sum : (double)count;
    return PSM_OK;
}

double psm_normalizer(int reduction, int64_t valid, double label_weight_sum,
                      int64_t positions, int64_t outer)
{
    switch (reduction) {
    case PSM_MEAN:       return label_weight_sum;
    case PSM_VALID:      return fmax(1.0, (double)valid);
    case PSM_FULL:       return fmax(1.0, (double)positions);
    case PSM_BATCH_SIZE: return fmax(1.0, (double)outer);
    }
    return 1.0;
}

double psm_reduce(int reduction, double total, double normalizer)
{
    if (reduction == PSM_NONE || reduction == PSM_SUM)
        return total;
    /* a weighted mean over no weight: PyTorch's 0 / 0, even where label
     * smoothing made the total nonzero */
    return normalizer == 0.0 ? NAN : total / normalizer;
}

double psm_gradient_scale(double normalizer)
{
    return normalizer == 0.0 ? NAN : 1.0 / normalizer;
}

int64_t psm_call_normalizer(const int64_t *labels, int64_t outer, int64_t inner,
                            int64_t classes, const psm_options *opt, double *normalizer)
{
    int64_t valid;
    double label_weight_sum;
    int64_t status = psm_label_summary(labels, outer * inner, classes, opt, &valid,
                                       &label_weight_sum);
    if (status != PSM_OK)
        return status;
    *normalizer = opt->has_normalizer
        ? opt->normalizer
        : psm_normalizer(opt->reduction, valid, label_weight_sum, outer * inner, outer);
    return PSM_OK;
}

int psm_block_ok(int64_t classes, int64_t class_offset, int64_t total_classes)
{
    return class_offset >= 0 && total_classes >= classes &&
           class_offset <= total_classes - classes;
}

/* What a state summed, counted against a max at least its own (against -inf
 * it was 0, or NaN, which must stay): the online normalizer's rescaling. */
static double rest_against(const psm_partial *p, double max)
{
    if (p->max == max)
        return p->rest;
    return (p->rest + p->ties) * (p->max == -INFINITY ? 0.0 : exp(p->max - max));
}

static double cross_against(const psm_partial *p, double max)
{
    if (p->max == max || p->cross_mass == 0.0)
        return p->cross;
    return p->cross + p->cross_mass * (max - p->max);
}

void psm_combine_partials(int64_t positions, const psm_partial *part,
                          psm_partial *into)
{
    for (int64_t k = 0; k < positions; k++) {
        const psm_partial *a = &into[k], *b = &part[k];
        double max = a->max > b->max ? a->max : b->max;
        psm_partial merged = {
            max,
            rest_against(a, max) + rest_against(b, max),
            (a->max == max ? a->ties : 0.0) + (b->max == max ? b->ties : 0.0),
            cross_against(a, max) + cross_against(b, max),
            a->cross_mass + b->cross_mass,
            a->mass + b->mass,
            b->label_found ? b->label_logit : a->label_logit,
            a->label_found + b->label_found,
            a->cross_inf | b->cross_inf,
        };
        into[k] = merged;
    }
}

