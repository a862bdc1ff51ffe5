"""`python -m pysafemax demo`: the seed's example, step by step, then the
reported loss of each method against the true loss as the logit gap grows.

Every loss and softmax row printed comes from the kernel
(pysafemax.softmax_loss with reduction="none", pysafemax.softmax).  The
intermediate steps (exp, sum, log-sum-exp) are recomputed here in numpy
float32 after the formulas in csrc/softmax_loss.h, sums in double rounded as
the kernel rounds them.  The true losses come from an exact decimal
computation, so they stay right where float64 itself would underflow.
(Moved from pysafemax.demo, which re-exports it.)
"""
from __future__ import annotations

import decimal
import sys
from typing import Any, Dict, Iterable, List, Optional, SupportsFloat, TextIO

import numpy as np
from numpy.typing import NDArray

from .. import METHODS, softmax, softmax_loss
from .limits import FLT_DENORM_MIN, FLT_EXP_OVERFLOW, FLT_MIN, FLT_MIN_LOSS
from .text import number

__all__ = ["run_demo", "SEED_LOGITS", "GAPS", "true_loss", "loss_vs_gap"]

SEED_LOGITS = (100.0, 20.0)
GAPS = (10, 50, 87, 88, 89, 100, 1000)


def true_loss(logits: Iterable[SupportsFloat], label: int) -> decimal.Decimal:
    """The exact softmax cross-entropy of one row of logits, as a Decimal.

    (m - x[label]) + log1p(sum of exp(x_j - m) over j != argmax), in 40-digit
    decimal arithmetic: exact to far more digits than any float shows, and it
    does not underflow (e^-1000 is about 5e-435, below float64's range).

    Parameters
    ----------
    logits : iterable of float
        One row of finite logits.
    label : int
        The label's class.

    Returns
    -------
    decimal.Decimal
        The loss, to 40 significant digits.

    Examples
    --------
    >>> from pysafemax.tools.demo import true_loss
    >>> float(true_loss([100.0, 20.0], 1))
    80.0
    >>> f"{true_loss([1000.0, 0.0], 0):.3e}"    # e^-1000: below float64's range
    '5.076e-435'
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        x = [decimal.Decimal(float(v)) for v in logits]
        top = max(range(len(x)), key=lambda j: x[j])
        m = x[top]
        rest = sum(((x[j] - m).exp() for j in range(len(x)) if j != top),
                   decimal.Decimal(0))
        if rest < decimal.Decimal("1e-12"):
            # log1p by its series; the next term, rest**4/4, is below 1e-48.
            log_norm = rest - rest ** 2 / 2 + rest ** 3 / 3
        else:
            log_norm = (1 + rest).ln()
        return (m - x[label]) + log_norm


def loss_vs_gap(gaps: Iterable[float] = GAPS,
                label_on_gap: bool = False) -> Dict[str, Any]:
    """Reported and true losses for float32 rows of logits as the gap grows.

    Parameters
    ----------
    gaps : iterable of float
        The gaps, one row each.
    label_on_gap : bool, default False
        False: logits {0, gap}, label 0, true loss about gap.
        True: logits {gap, 0}, label 0, true loss about e^-gap.

    Returns
    -------
    dict
        ``{"gap": [...], "true": [Decimal, ...], method: float32 array}``,
        one array for each of METHODS.

    Examples
    --------
    >>> from pysafemax.tools.demo import loss_vs_gap
    >>> table = loss_vs_gap([100])     # logits {0, 100}, label 0
    >>> float(table["true"][0]), float(table["stable"][0]), float(table["maxsub"][0])
    (100.0, 100.0, 87.3365478515625)
    """
    gaps = list(gaps)
    column = np.asarray(gaps, dtype=np.float32)[:, None]
    zeros = np.zeros_like(column)
    logits = np.hstack([column, zeros] if label_on_gap else [zeros, column])
    labels = np.zeros(len(gaps), dtype=np.int64)
    table = {"gap": gaps, "true": [true_loss(row, 0) for row in logits]}
    for method in METHODS:
        table[method] = softmax_loss(logits, labels, method=method,
                                     reduction="none")
    return table


def _vec(values: Iterable[Any]) -> str:
    return "{" + ", ".join(number(v) for v in values) + "}"


class _Writer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def step(self, name: str, value: Any, note: str = "") -> None:
        text = f"  {name:<15} {value}"
        if note:
            text = f"{text:<38} {note}"
        self.line(text.rstrip())


def _clamp_note(p: float) -> str:
    """What -log(max(p, FLT_MIN)) does with this probability."""
    if np.isnan(p):
        return "-log(max(nan, FLT_MIN)): nan stays nan"
    if p < FLT_MIN:
        return f"-log(max({number(p)}, FLT_MIN)) = -ln(FLT_MIN)"
    return f"-log({number(p)})"


def _seed_method(w: _Writer, x: NDArray[np.float32], method: str,
                 truths: List[decimal.Decimal]) -> None:
    row = x[None, :]
    labels = np.arange(x.size, dtype=np.int64)
    both = np.repeat(row, x.size, axis=0)
    losses = softmax_loss(both, labels, method=method, reduction="none")
    probs = softmax(row, method=method)[0]
    m = x.max()
    shifted = x - (np.float32(0) if method == "naive" else m)
    e = np.exp(shifted)

    if method == "naive":
        w.line("naive: p = exp(x) / sum(exp(x)), loss = -log(max(p[label], "
               "FLT_MIN))")
        w.step("exp(x)", _vec(e), f"expf(v) is inf for v > {FLT_EXP_OVERFLOW:.6g}")
    elif method == "maxsub":
        w.line("maxsub: the same after subtracting the row max m (Caffe's "
               "SoftmaxWithLoss)")
    else:
        w.line("stable: loss = (m - x[label]) + log(sum(exp(x - m))), "
               "no clamp")
    if method != "naive":
        w.step("m", number(m))
        w.step("x - m", _vec(shifted))
        w.step("exp(x - m)", _vec(e))

    if method == "stable":
        # The max's own term is exactly 1 and stays out of the double sum, so
        # log(1 + rest) is log1p(rest): tiny losses keep their digits.
        top = int(np.argmax(x))
        rest = float(np.delete(e, top).astype(np.float64).sum())
        log_norm = np.log1p(rest)
        w.step("log-sum-exp", number(log_norm), f"= log(1 + {number(rest)})")
        w.step("softmax", _vec(probs))
        for label, loss in enumerate(losses):
            w.step(f"loss, label {label}", number(loss),
                   f"= ({number(m)} - {number(x[label])}) + {number(log_norm)}")
    else:
        total = np.float32(e.astype(np.float64).sum())
        w.step("sum", number(total))
        w.step("softmax", _vec(probs),
               ", ".join(f"{number(a)}/{number(total)} = {number(b)}"
                         for a, b in zip(e, probs)))
        for label, loss in enumerate(losses):
            w.step(f"loss, label {label}", number(loss),
                   _clamp_note(probs[label]))
    w.step("true loss", _vec(truths), f"reported: {_vec(losses)}")
    w.line()


def _gap_table(w: _Writer, label_on_gap: bool) -> Dict[str, Any]:
    table = loss_vs_gap(GAPS, label_on_gap=label_on_gap)
    if label_on_gap:
        w.line("Logits {gap, 0}, label 0, confidently right: "
               "true loss = log(1 + e^-gap)")
    else:
        w.line("Logits {0, gap}, label 0, confidently wrong: "
               "true loss = gap + log(1 + e^-gap)")
    w.line(f"  {'gap':>5}  {'true loss':>13}" +
           "".join(f"  {m:>13}" for m in METHODS))
    for i, gap in enumerate(table["gap"]):
        w.line(f"  {gap:>5}  {number(table['true'][i]):>13}" +
               "".join(f"  {number(table[m][i]):>13}" for m in METHODS))
    return table


def run_demo(out: Optional[TextIO] = None) -> None:
    """Print the walk-through (`python -m pysafemax demo`).

    Parameters
    ----------
    out : text file, optional
        Where to print it (default sys.stdout).
    """
    w = _Writer(sys.stdout if out is None else out)
    x = np.asarray(SEED_LOGITS, dtype=np.float32)
    truths = [true_loss(x, label) for label in range(x.size)]

    w.line("pysafemax demo: softmax cross-entropy three ways, in float32")
    w.line()
    w.line("Caffe's loss is -log(max(p[label], FLT_MIN)).  FLT_MIN = "
           f"{FLT_MIN:g} is the")
    w.line("smallest normal float32, so a label probability below it - one "
           "that underflowed")
    w.line(f"or was divided by inf - reads -ln(FLT_MIN) = {FLT_MIN_LOSS:g}.")
    w.line()
    w.line(f"The seed example: logits x = {_vec(x)}, with label 0 and with "
           "label 1.")
    w.line()
    for method in METHODS:
        with np.errstate(all="ignore"):
            _seed_method(w, x, method, truths)

    w.line("Reported loss against the true loss as the logit gap grows")
    w.line()
    _gap_table(w, label_on_gap=False)
    w.line(f"Once gap > -ln(FLT_MIN) = {FLT_MIN_LOSS:g}, p[label] < FLT_MIN: "
           "naive and maxsub clamp.")
    w.line()
    _gap_table(w, label_on_gap=True)
    w.line(f"naive: exp(gap) is inf past {FLT_EXP_OVERFLOW:.6g}, and inf/inf = nan."
           "  naive and maxsub")
    w.line("round p near 1 in float32: small losses lose digits, then read 0."
           "  stable")
    w.line("keeps them as far as float32 can: below FLT_MIN it has fewer digits,"
           " and it")
    w.line("holds nothing between 0 and its smallest denormal, "
           f"{number(FLT_DENORM_MIN)}.")
    w.line()
    w.line('stable is the default: pysafemax.softmax_loss(logits, labels) '
           'uses it.')
