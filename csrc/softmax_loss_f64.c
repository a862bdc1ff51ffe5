/*
 * The double entry points: row.h and driver.h instantiated for double,
 * with the C library's exp and log, and no vector path: its portable loops
 * sum in index order.  The template's macros (see row.h) are defined here,
 * once.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "chunks.h"
#include "internal.h"

#define REAL double
#define FN(name) name##_f64
#define EXP exp
#define LOG log
#define BIG DBL_MAX
#define FLOAT_ROWS 0
#define LANE_SUMS 0
#define ONLINE_ROWS 0

#include "row.h"
#include "driver.h"
