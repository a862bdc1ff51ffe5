"""The float limits the tools name, computed from numpy's finfo here, once.

FLT_MIN and the losses of Caffe's clamp at it are the library's
(pysafemax._constants) and are re-exported from there; everything else a
tool prints, matches or draws is computed below.  Exponents in the comments
are for the reader; the values come from finfo.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

from .._constants import (DBL_MIN_LOSS, FLT_MIN, FLT_MIN_LOSS,
                          FLT_MIN_LOSS_F64, clamp_loss)

__all__ = ["FLT_MIN", "FLT_MIN_LOSS", "FLT_MIN_LOSS_F64", "DBL_MIN_LOSS",
           "clamp_loss", "HALF_MIN", "HALF_DENORM_MIN", "HALF_MAX",
           "FLT_DENORM_MIN", "FLT_MAX", "FLT_EPSILON", "FLT_EXP_OVERFLOW",
           "DBL_MIN", "DBL_DENORM_MIN", "DBL_MAX", "BF16_DENORM_MIN",
           "ln_max", "ln_denorm_min", "significand_bits"]

_F16, _F32, _F64 = (np.finfo(t) for t in (np.float16, np.float32, np.float64))

HALF_MIN = float(_F16.tiny)                         # 2^-14
HALF_DENORM_MIN = float(_F16.smallest_subnormal)    # 2^-24
HALF_MAX = float(_F16.max)                          # 65504
FLT_DENORM_MIN = float(_F32.smallest_subnormal)     # 2^-149
FLT_MAX = float(_F32.max)                           # (2 - 2^-23) 2^127
FLT_EPSILON = float(_F32.eps)                       # 2^-23
DBL_MIN = float(_F64.tiny)                          # 2^-1022
DBL_DENORM_MIN = float(_F64.smallest_subnormal)     # 2^-1074
DBL_MAX = float(_F64.max)                           # (2 - 2^-52) 2^1023
# bfloat16 keeps float32's exponent range with 7 stored mantissa bits.
BF16_DENORM_MIN = math.ldexp(1.0, int(_F32.minexp) - 7)     # 2^-133


def ln_max(dtype: DTypeLike) -> float:
    """ln of dtype's largest finite value: its exp() is inf above.

    Parameters
    ----------
    dtype : dtype
        A floating dtype.

    Returns
    -------
    float
        ln(numpy.finfo(dtype).max): 88.7228 for float32.
    """
    return math.log(float(np.finfo(dtype).max))


def ln_denorm_min(dtype: DTypeLike) -> float:
    """ln of dtype's smallest positive (subnormal) value.

    Parameters
    ----------
    dtype : dtype
        A floating dtype.

    Returns
    -------
    float
        ln(numpy.finfo(dtype).smallest_subnormal): -103.279 for float32.
    """
    return math.log(float(np.finfo(dtype).smallest_subnormal))


def significand_bits(dtype: DTypeLike) -> int:
    """The bits of dtype's significand, the implicit one included.

    Parameters
    ----------
    dtype : dtype
        A floating dtype.

    Returns
    -------
    int
        numpy.finfo(dtype).nmant + 1: 24 for float32.
    """
    return int(np.finfo(dtype).nmant) + 1


FLT_EXP_OVERFLOW = ln_max(np.float32)   # 88.7228: float32 exp() is inf above
