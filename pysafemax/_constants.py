"""The clamp of naive and maxsub, and the losses it reports.

Caffe's SoftmaxWithLoss computes loss -= log(std::max(p, Dtype(FLT_MIN))) for
float and double alike, so once the label's probability is below FLT_MIN
both report -ln(FLT_MIN), rounded in their dtype: 87.3365479 for float32,
87.3365447505531 for float64 (measured with BVLC Caffe's
SoftmaxWithLossLayer<double>).  DBL_MIN_LOSS, -ln(DBL_MIN) = 708.396, is what
a clamp at float64's own smallest normal number would read (numpy's
finfo(float64).tiny); pysafemax.explain names it, no method reports it.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import DTypeLike

FLT_MIN = float(np.finfo(np.float32).tiny)
FLT_MIN_LOSS = float(-np.log(np.float32(FLT_MIN)))
FLT_MIN_LOSS_F64 = -math.log(FLT_MIN)
DBL_MIN_LOSS = float(-np.log(np.finfo(np.float64).tiny))


def clamp_loss(dtype: DTypeLike) -> float:
    """The loss naive and maxsub report for a clamped position.

    Parameters
    ----------
    dtype : dtype
        The logits' dtype (float16 computes in float32).

    Returns
    -------
    float
        -ln(FLT_MIN) rounded in the dtype computed in: FLT_MIN_LOSS
        (87.3365479) for float16 and float32, FLT_MIN_LOSS_F64
        (87.3365447505531) for float64.
    """
    return FLT_MIN_LOSS_F64 if np.dtype(dtype) == np.float64 else FLT_MIN_LOSS
