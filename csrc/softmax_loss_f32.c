/*
 * The float entry points: row.h and driver.h instantiated for float, whose
 * contiguous rows take the AVX2 loops of rows_avx2.h where the CPU has
 * them, and whose exp is the kernel's own (exp_f32.h).  The template's
 * macros (see row.h) are defined here, once.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "chunks.h"
#include "exp_f32.h"
#include "internal.h"
#include "log1p_f64.h"
#include "rows_avx2.h"
#include "rows_online_avx2.h"
#include "rows_small_avx2.h"
#include "rows_small_out_avx2.h"

#define REAL float
#define FN(name) name##_f32
#define EXP psm_expf
#define LOG logf
#define BIG FLT_MAX
#ifdef PSM_HAVE_AVX2
#define VECTOR_ROWS 1
#define VEC(name) psm_##name##_avx2
#define SMALL_ROWS 1
#define SMALL_OUT_ROWS 1
#define NEAR_EXPS 1
#else
#define VECTOR_ROWS 0
#define SMALL_ROWS 0
#define SMALL_OUT_ROWS 0
#define NEAR_EXPS 0
#endif
#define LANE_SUMS 1
#define ONLINE_ROWS 1

#include "row.h"
#include "driver.h"
