"""pysafemax: exact, fast softmax cross-entropy on numpy arrays.

Three methods side by side: "naive" (the textbook formula, which overflows),
"maxsub" (Caffe's SoftmaxWithLoss, which clamps at 87.3365) and "stable"
(log-sum-exp, exact).  pysafemax.reference holds numpy versions of each.
"""
import numpy as np

from ._core import (ReferenceMismatchError, check_tolerance, get_num_threads,
                    log_softmax, set_num_threads, simd_level, softmax,
                    softmax_loss)
from ._validation import METHODS, REDUCTIONS

__version__ = "0.1.0"

# What maxsub reports once the label's probability is below the smallest
# normal number: -ln(FLT_MIN) rounded to float32 (87.3365479), and -ln(DBL_MIN).
FLT_MIN_LOSS = float(-np.log(np.finfo(np.float32).tiny))
DBL_MIN_LOSS = float(-np.log(np.finfo(np.float64).tiny))

# After the constants: diagnostics reads them from the package.
from .diagnostics import DiagnosisReport, diagnose  # noqa: E402

__all__ = [
    "diagnose", "DiagnosisReport",
    "softmax_loss", "softmax", "log_softmax", "check_tolerance",
    "set_num_threads", "get_num_threads", "simd_level",
    "ReferenceMismatchError", "METHODS", "REDUCTIONS", "FLT_MIN_LOSS",
    "DBL_MIN_LOSS", "__version__",
]
