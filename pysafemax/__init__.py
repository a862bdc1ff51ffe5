"""pysafemax: exact, fast softmax cross-entropy on numpy arrays.

Three methods side by side: "naive" (the textbook formula, which overflows),
"maxsub" (Caffe's SoftmaxWithLoss, which clamps at 87.3365) and "stable"
(log-sum-exp, exact).  pysafemax.reference holds numpy versions of each.
"""
# The compiled kernel, pysafemax._kernel, is installed into site-packages'
# pysafemax/.  Run from a source checkout (python -m pytest at its root), this
# package is the checkout's, which holds no compiled module: extend_path adds
# the installed pysafemax/ directory to where submodules are looked for, so
# the checkout's Python files run with the installed kernel.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

from ._constants import DBL_MIN_LOSS, FLT_MIN_LOSS  # noqa: E402
from ._core import (ReferenceMismatchError, check_tolerance,  # noqa: E402
                    get_num_threads, log_softmax, logsumexp, set_num_threads,
                    simd_level, softmax, softmax_loss)
from ._linear import linear_cross_entropy  # noqa: E402
from ._partials import (SoftmaxPartials, combine_partials, grad_from_partials,
                        loss_from_partials, softmax_partials)
from ._validation import METHODS, REDUCTIONS
from .tools.diagnose import DiagnosisReport, diagnose  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "diagnose", "DiagnosisReport",
    "softmax_loss", "softmax", "log_softmax", "logsumexp", "check_tolerance",
    "softmax_partials", "combine_partials", "loss_from_partials",
    "grad_from_partials", "SoftmaxPartials", "linear_cross_entropy",
    "set_num_threads", "get_num_threads", "simd_level",
    "ReferenceMismatchError", "METHODS", "REDUCTIONS", "FLT_MIN_LOSS",
    "DBL_MIN_LOSS", "__version__",
]
