"""The losses a clamped method reports: -ln of the smallest normal number.

Once the label's probability is below it, maxsub (Caffe) reads -ln(FLT_MIN)
rounded to float32, 87.3365479, for float32, and -ln(DBL_MIN) for float64.
"""
import numpy as np

FLT_MIN_LOSS = float(-np.log(np.finfo(np.float32).tiny))
DBL_MIN_LOSS = float(-np.log(np.finfo(np.float64).tiny))
