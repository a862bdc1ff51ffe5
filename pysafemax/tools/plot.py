"""`python -m pysafemax demo --plot FILE.png`: reported loss against the true
loss as the logit gap grows, for the three methods, in one picture.

Two panels over the same float32 rows as the demo's tables
(pysafemax.tools.demo.loss_vs_gap: losses from the kernel, true losses
exact):

- confidently wrong, logits {0, gap} with label 0: the true loss grows like
  the gap; naive and maxsub stop at -ln(FLT_MIN) = 87.3365 once p[label]
  drops below FLT_MIN, stable follows the truth.
- confidently right, logits {gap, 0} with label 0, on a log scale: the true
  loss is about e^-gap; naive and maxsub round p[label] to 1 and read 0 past
  a gap of about 16.6, naive reads nan once exp(gap) overflows (inf/inf),
  stable follows the truth down through float32's denormals.

matplotlib is optional (pip install matplotlib, or the "plot" extra) and imported only
here, inside plot_loss_vs_gap.  The figure is drawn on an Agg canvas of its
own, without pyplot, so it neither needs a display nor changes the backend
or the figures of a session that calls it.  (Moved from pysafemax.plotting,
which re-exports it.)
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, Union

import numpy as np
from numpy.typing import NDArray

from .. import METHODS
from .demo import loss_vs_gap
from .limits import FLT_DENORM_MIN, FLT_EXP_OVERFLOW, FLT_MIN, FLT_MIN_LOSS

__all__ = ["plot_loss_vs_gap"]

# p[label] = 1 / (1 + e^-gap) rounds to 1 in float32 once e^-gap < 2^-24.
ROUNDS_TO_ONE = float(24 * np.log(2.0))
# Half the smallest denormal rounds to 0: stable's loss reads 0 past this.
STABLE_ZERO = float(-np.log(FLT_DENORM_MIN / 2))

GAP_MAX = 130.0
GAPS = np.arange(0.0, GAP_MAX + 0.05, 0.1)

# y of the "reads 0" strip under the log-scale panel (0 has no place on a
# log axis), one row per method so that overlapping zeros stay apart.
_ZERO_STRIP = (1e-52, 1e-47)
_ZERO_ROWS = {"naive": 10 ** -48.0, "maxsub": 10 ** -49.3, "stable": 10 ** -50.6}

_STYLE = {
    # Widest lowest (zorder), so that lines lying on each other all show.
    "naive": dict(color="#d62728", lw=6.0, alpha=0.35, zorder=2,
                  label="naive: exp(x) / sum(exp(x))"),
    "stable": dict(color="#2ca02c", lw=4.0, alpha=0.6, zorder=3,
                   label="stable: log-sum-exp (pysafemax default)"),
    "maxsub": dict(color="#1f77b4", lw=1.8, alpha=1.0, zorder=4,
                   label="maxsub: subtract max, clamp (Caffe)"),
}
_TRUE_STYLE = dict(color="black", lw=1.3, ls=(0, (4, 3)), zorder=5,
                   label="true loss (exact)")
_NAN_COLOR = "#d62728"


def plot_loss_vs_gap(path: Union[str, os.PathLike[str]]) -> int:
    """Draw the picture to `path` (`python -m pysafemax demo --plot`).

    Parameters
    ----------
    path : str or os.PathLike
        The file: a .png, or any format matplotlib knows.

    Returns
    -------
    int
        0 after printing "wrote PATH"; 2 without matplotlib, or when the
        file cannot be written, after printing one line to stderr.
    """
    try:
        import matplotlib  # noqa: F401  (is it installed at all?)
    except ImportError:
        print('pysafemax demo: --plot needs matplotlib: pip install matplotlib '
              '(the "plot" extra: pip install ".[plot]" in a source tree)', file=sys.stderr)
        return 2
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        # Installed but broken, e.g. a dependency missing: say what broke.
        print(f"pysafemax demo: --plot: matplotlib does not import: {exc}",
              file=sys.stderr)
        return 2

    fig = Figure(figsize=(13.0, 5.6), dpi=110)
    FigureCanvasAgg(fig)
    wrong, right = fig.subplots(1, 2)
    with np.errstate(all="ignore"):
        drawn = _draw_wrong(wrong, loss_vs_gap(GAPS, label_on_gap=False))
        _draw_right(right, loss_vs_gap(GAPS, label_on_gap=True))

    # The legend reads: truth, then the methods from trusted to naive.
    handles = [drawn["true"]] + [drawn[method] for method in reversed(METHODS)]
    handles.append(Patch(facecolor=_NAN_COLOR, alpha=0.12, hatch="//",
                         edgecolor=_NAN_COLOR, label="naive reads nan"))
    fig.legend(handles=handles, loc="upper center", ncol=5, frameon=False,
               bbox_to_anchor=(0.5, 0.935), fontsize=9.5)
    fig.suptitle("Softmax cross-entropy in float32: reported loss against "
                 "the true loss as the logit gap grows", fontsize=13, y=0.985)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.1, top=0.82,
                        wspace=0.17)
    try:
        fig.savefig(os.fspath(path), dpi=110)
    except (OSError, ValueError) as exc:
        print(f"pysafemax demo: --plot: cannot write {path}: {exc}",
              file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


# ax: a matplotlib Axes (matplotlib is optional, and imported only to draw)
def _lines(ax: Any, table: Dict[str, Any],
           values: Callable[[Any], NDArray[np.float64]]) -> Dict[str, Any]:
    """Draw each method's loss and the true loss; {name: its line}."""
    gaps = np.asarray(table["gap"], dtype=np.float64)
    drawn = {}
    for method in METHODS:
        (drawn[method],) = ax.plot(gaps, values(table[method]),
                                   solid_capstyle="butt", **_STYLE[method])
    (drawn["true"],) = ax.plot(gaps, values(table["true"]), **_TRUE_STYLE)
    ax.set_xlim(0, GAP_MAX)
    ax.set_xlabel("logit gap", fontsize=10)
    ax.grid(alpha=0.25)
    return drawn


def _draw_wrong(ax: Any, table: Dict[str, Any]) -> Dict[str, Any]:
    drawn = _lines(ax, table, lambda v: np.asarray(v, dtype=np.float64))
    ax.set_title("Confidently wrong: logits {0, gap}, label 0", fontsize=11)
    ax.set_ylabel("loss", fontsize=10)
    ax.set_ylim(0, GAP_MAX + 5)
    ax.axhline(FLT_MIN_LOSS, color="0.35", lw=0.9, ls=":", zorder=1)
    ax.text(3, FLT_MIN_LOSS + 2.0, f"-ln(FLT_MIN) = {FLT_MIN_LOSS:.4f}",
            fontsize=9.5, color="0.2", va="bottom")
    ax.annotate("naive and maxsub stop at 87.3365:\n"
                "p[label] < FLT_MIN is clamped\n"
                f"(naive: 1 / inf = 0 past {FLT_EXP_OVERFLOW:.2f})",
                xy=(112, FLT_MIN_LOSS), xytext=(127, 52), fontsize=9,
                ha="right", va="top", multialignment="left",
                arrowprops=dict(arrowstyle="->", color="0.3", lw=0.8))
    ax.annotate("stable follows the truth:\nloss = gap + log1p(e^-gap)",
                xy=(118, 118), xytext=(62, 118), fontsize=9, va="center",
                arrowprops=dict(arrowstyle="->", color="0.3", lw=0.8))
    return drawn


def _draw_right(ax: Any, table: Dict[str, Any]) -> None:
    def nonzero(v: Any) -> NDArray[np.float64]:
        v = np.asarray(v, dtype=np.float64)
        return np.where(v > 0, v, np.nan)

    def drawable(v: Any) -> NDArray[np.float64]:
        # A true loss below the strip's top would run into the "reads 0" rows.
        v = nonzero(v)
        return np.where(v >= _ZERO_STRIP[1], v, np.nan)

    _lines(ax, table, drawable)
    gaps = np.asarray(table["gap"], dtype=np.float64)
    ax.set_yscale("log")
    ax.set_ylim(_ZERO_STRIP[0], 10.0)
    ax.set_title("Confidently right: logits {gap, 0}, label 0  (log scale)",
                 fontsize=11)

    # The strip where a method reads exactly 0.
    ax.axhspan(*_ZERO_STRIP, color="0.93", zorder=0)
    ax.axhline(_ZERO_STRIP[1], color="0.6", lw=0.8)
    for method in METHODS:
        zero = np.asarray(table[method], dtype=np.float64) == 0
        style = dict(_STYLE[method], label=None)
        ax.plot(gaps, np.where(zero, _ZERO_ROWS[method], np.nan),
                solid_capstyle="butt", **style)
    ticks = [1e0, 1e-10, 1e-20, 1e-30, 1e-40]
    ax.set_yticks(ticks + [_ZERO_ROWS["maxsub"]])
    ax.set_yticklabels([f"1e{int(np.log10(t))}" if t != 1 else "1"
                        for t in ticks] + ["0"])
    ax.minorticks_off()
    ax.set_ylabel("loss", fontsize=10)
    ax.text(1.5, _ZERO_ROWS["maxsub"], "reads 0", fontsize=8.5,
            color="0.3", va="center")

    # naive's nan region: inf / inf once exp(gap) overflows; nan isn't drawn.
    ax.axvspan(FLT_EXP_OVERFLOW, GAP_MAX, facecolor=_NAN_COLOR, alpha=0.12,
               hatch="//", edgecolor=_NAN_COLOR, lw=0, zorder=0)
    ax.text(FLT_EXP_OVERFLOW + 1.5, 0.6,
            f"naive: nan\nexp(gap) = inf past\ngap = {FLT_EXP_OVERFLOW:.2f},"
            "\ninf / inf = nan", fontsize=8.5, color="#a01010", va="top")

    for value, text in ((FLT_MIN, f"FLT_MIN = {FLT_MIN:.3g}"),
                        (FLT_DENORM_MIN,
                         f"smallest denormal = {FLT_DENORM_MIN:.3g}")):
        ax.axhline(value, color="0.35", lw=0.9, ls=":", zorder=1)
        ax.text(3, value * 4, text, fontsize=8.5, color="0.2", va="bottom")

    ax.annotate(f"naive, maxsub: p rounds to 1,\nloss reads 0 past gap "
                f"= {ROUNDS_TO_ONE:.1f}",
                xy=(ROUNDS_TO_ONE, 1.2e-7), xytext=(25, 1e-4), fontsize=9,
                arrowprops=dict(arrowstyle="->", color="0.3", lw=0.8))
    ax.annotate("stable follows the truth\ninto the denormals, then 0\n"
                f"past gap = {STABLE_ZERO:.2f}",
                xy=(STABLE_ZERO, 1.4e-45), xytext=(38, 1e-30), fontsize=9,
                arrowprops=dict(arrowstyle="->", color="0.3", lw=0.8))
