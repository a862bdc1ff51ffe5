/*
 * The double entry points: row.h and driver.h instantiated for double,
 * whose contiguous rows take the AVX2 loops of rows_avx2_f64.h (and, rows of
 * few classes, rows_small_avx2_f64.h) where the CPU has them, and whose exp
 * is the kernel's own (exp_f64.h; the same bits on every path, within 0.51
 * ULP).  The template's macros (see row.h) are defined here, once.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "chunks.h"
#include "exp_f64.h"
#include "internal.h"
#include "log1p_f64.h"
#include "rows_avx2_f64.h"
#include "rows_small_avx2_f64.h"

#define REAL double
#define FN(name) name##_f64
#define EXP psm_exp
#define LOG log
#define BIG DBL_MAX
#ifdef PSM_HAVE_AVX2
#define VECTOR_ROWS 1
#define VEC(name) psm_##name##_f64_avx2
#define SMALL_ROWS 1
#define SMALL_OUT_ROWS 0
#else
#define VECTOR_ROWS 0
#define SMALL_ROWS 0
#define SMALL_OUT_ROWS 0
#endif
#define NEAR_EXPS 0
#define LANE_SUMS 0
#define ONLINE_ROWS 0

#include "row.h"
#include "driver.h"
