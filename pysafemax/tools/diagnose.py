"""Why a batch's loss reads 87.3365 or nan: evidence from its logits and labels.

diagnose() walks the logits once, in blocks of at most 65536 positions (and
about 2M logits), so a memory-mapped .npy of any size is streamed, not
loaded.  For every position (one row of C logits along the class axis) it
checks the float conditions under which each method's reported loss stops
being the true loss, counts them, keeps the first positions of each, and
ranks the usual remedies by that evidence.  `python -m pysafemax diagnose`
is cli_diagnose().  (Moved from pysafemax.diagnostics, which re-exports it.)

The thresholds are those of the dtype the kernel computes in: float32 for
float16 and float32 logits, float64 for float64 logits.  The clamp is
Caffe's, at FLT_MIN in both dtypes (pysafemax._constants.clamp_loss).  The
blocks come from pysafemax._blocks.position_blocks, and each row's
log-sum-exp from the library (pysafemax.softmax_loss, method "stable").

                              float32   float64
  naive's exp overflows       88.7228   709.783   ln(max)
  naive's sum rounds to 0     -103.972  -745.133  ln(smallest subnormal / 2)
  maxsub's clamp fires        87.3365   87.3365   -ln(FLT_MIN)
  naive's label exp imprecise -94.961   -726.420  see DiagnosisReport

.npz members are memory-mapped too: a stored one (np.savez) in place, a
compressed one (np.savez_compressed) after streaming it into an anonymous
temporary file in TMPDIR, which needs room for the member uncompressed (on
a tmpfs, that room is memory).  No input is ever held in memory whole.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, List, Literal, Optional, TextIO, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import METHODS, softmax_loss
from .._blocks import position_blocks
from .._validation import (Logits, as_array, integer, labels_shape_error,
                           logits_array, out_of_range)
from .limits import clamp_loss, ln_denorm_min, ln_max, significand_bits
from .._types import Integer
from .text import number, wrap

__all__ = ["diagnose", "DiagnosisReport", "Thresholds", "thresholds",
           "cli_diagnose", "COUNT_KEYS", "MAX_POSITIONS"]

MAX_POSITIONS = 10      # positions kept per finding
_BLOCK_POSITIONS = 65536
_BLOCK_ELEMENTS = 1 << 21
_INT64_MAX = int(np.iinfo(np.int64).max)
_LN2 = math.log(2.0)
_COPY_CHUNK = 1 << 20   # bytes per step when decompressing an .npz member
# The report's columns, passed to every wrap: 80, not text.WIDTH (79), and
# lines that break after hyphens, as this report always has, so that its
# output stays what it was.
WIDTH = 80

# The findings, in the order str(report) lists them.  Each is a count of
# positions; to_dict() also gives its first positions (see DiagnosisReport).
COUNT_KEYS = (
    "nan_rows", "inf_rows", "out_of_range_labels", "all_neg_inf_rows",
    "label_on_neg_inf_rows", "naive_overflow_rows", "naive_underflow_rows",
    "naive_subnormal_rows", "clamped_rows",
)
# Details of a finding above: counted, with positions, but not a finding of
# their own (report.clean looks at COUNT_KEYS only).
_DETAIL_KEYS = ("clamped_without_overflow_rows",)
_DESCRIPTIONS = {
    "nan_rows": "rows holding nan",
    "inf_rows": "rows holding +inf",
    "out_of_range_labels": "labels out of range",
    "all_neg_inf_rows": "rows whose every logit is -inf",
    "label_on_neg_inf_rows": "labels on a -inf logit",
    "naive_overflow_rows": "naive: exp or its sum overflows",
    "naive_underflow_rows": "naive: sum underflows to 0 (0/0)",
    "naive_subnormal_rows": "naive: label's exp subnormal",
    "clamped_rows": "maxsub clamps (true loss > {clamp})",
    "clamped_without_overflow_rows": "  of which without naive overflow",
}


def _stem(key: str) -> str:
    """'nan_rows' -> 'nan', 'out_of_range_labels' -> 'out_of_range'."""
    return key.rsplit("_", 1)[0]


@dataclass(frozen=True)
class Thresholds:
    """Where each method's float arithmetic breaks, for one compute dtype."""
    dtype: str
    exp_overflow: float     # ln(max): naive's exp (or its sum) is inf above
    sum_underflow: float    # ln(smallest subnormal / 2): exp rounds to 0 below
    clamp: float            # -ln(FLT_MIN) in this dtype: maxsub and naive
                            # clamp losses above (Caffe's clamp, both dtypes)
    subnormal_label: float  # naive's exp of a label logit below keeps fewer
                            # than half the dtype's significant bits


def thresholds(dtype: DTypeLike) -> Thresholds:
    """The Thresholds for logits of `dtype` (float16 computes in float32).

    Parameters
    ----------
    dtype : dtype
        The logits' dtype: float16, float32 or float64.

    Returns
    -------
    Thresholds
        Those of the dtype the kernel computes in.

    Examples
    --------
    >>> from pysafemax.tools.diagnose import thresholds
    >>> t = thresholds("float16")
    >>> t.dtype, round(t.exp_overflow, 4), round(t.clamp, 4)
    ('float32', 88.7228, 87.3365)
    """
    compute = np.dtype(np.float64 if np.dtype(dtype).itemsize == 8 else np.float32)
    ln_subnormal = ln_denorm_min(compute)
    return Thresholds(
        dtype=str(compute),
        exp_overflow=ln_max(compute),
        sum_underflow=ln_subnormal - _LN2,
        clamp=clamp_loss(compute),
        subnormal_label=ln_subnormal + (significand_bits(compute) // 2) * _LN2,
    )


@dataclass
class DiagnosisReport:
    """What diagnose() found.  A row is one position: the C logits along the
    class axis that one label scores; `rows` counts them all.

    Positions whose label equals ignore_index are skipped entirely (they add
    nothing to any method's loss) and counted in `ignored_rows`.  Of the rest:

    nan_rows, inf_rows   rows holding a nan, a +inf logit (a row with both
                         counts in both).  There is no true loss; every
                         method reports nan (naive 87.3365 on a +inf row
                         whose label is elsewhere).
    out_of_range_labels  labels outside 0..C-1; every method raises on them.
    all_neg_inf_rows     rows (without nan or +inf) whose every logit is
                         -inf: no class is possible, and every method's
                         loss is nan.
    The remaining findings count only rows with a finite max (no nan, no
    +inf, not all -inf):
    label_on_neg_inf_rows  in-range labels whose logit is -inf: the true loss
                         is +inf; stable says so, naive and maxsub read
                         87.3365.
    naive_overflow_rows  a logit above ln(max) (naive's exp is inf), or the
                         logits' log-sum-exp above it (its sum is inf).
    naive_underflow_rows every logit below ln(smallest subnormal / 2), so
                         naive's sum is 0 and its loss 0/0 = nan.
    naive_subnormal_rows the label's logit is below `subnormal_label`: naive's
                         exp of it is subnormal with fewer than half the
                         dtype's bits, and its loss is off in the 4th digit
                         or worse.  Not counted where the row over- or
                         underflows or is clamped.
    clamped_rows         the true loss exceeds -ln(FLT_MIN), so maxsub (and
                         naive) report 87.3365 instead, in float64 as in
                         float32 (Caffe clamps at FLT_MIN in both).  Rows
                         with a label on -inf are not counted here.

    `positions[key]` holds the first MAX_POSITIONS positions of each finding
    as flat indices into the logits' shape without the class axis
    (`position_shape`, row-major); index_tuples(key) unravels them.
    `out_of_range_values` holds the first out-of-range labels themselves.

    Statistics, None when no row qualifies:
    max_abs_logit   the largest |logit| among finite logits (not ignored).
    max_gap         the largest (row max - label logit), and
    true_loss_mean, true_loss_max  the true loss (pysafemax.softmax_loss,
                    method "stable", computed in float64), over `loss_rows`:
                    rows with an in-range label on a finite logit and no nan
                    or +inf.  nan and +inf rows are left out of these
                    statistics, as are labels on -inf (their loss is +inf).

    trusted_methods: the methods whose reported loss equals the true loss
    for this batch (to the dtype's rounding):
      stable  unless any row holds nan or +inf, any label is out of range,
              or any row is all -inf (stable reports nan; no loss is defined)
      maxsub  if stable is, and no row is clamped and no label sits on -inf
      naive   if maxsub is, and no row overflows, underflows or is subnormal.

    advice: the remedies that fit, most likely first (see _advice()).
    """
    shape: Tuple[int, ...]
    axis: int
    dtype: str
    ignore_index: Optional[int]
    thresholds: Thresholds
    rows: int = 0           # 0 when any axis but the class axis is empty
    ignored_rows: int = 0
    counts: Dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(COUNT_KEYS + _DETAIL_KEYS, 0))
    positions: Dict[str, List[int]] = field(
        default_factory=lambda: {key: [] for key in COUNT_KEYS + _DETAIL_KEYS})
    out_of_range_values: List[int] = field(default_factory=list)
    max_abs_logit: Optional[float] = None
    max_gap: Optional[float] = None
    true_loss_mean: Optional[float] = None
    true_loss_max: Optional[float] = None
    loss_rows: int = 0
    misreported_rows: int = 0
    trusted_methods: List[str] = field(default_factory=list)
    advice: List[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> int:
        # report.nan_rows etc.: the counts as attributes
        counts = self.__dict__.get("counts")
        if counts is not None and name in counts:
            return counts[name]
        raise AttributeError(name)

    @property
    def classes(self) -> int:
        return self.shape[self.axis]

    @property
    def position_shape(self) -> Tuple[int, ...]:
        return self.shape[:self.axis] + self.shape[self.axis + 1:]

    @property
    def clean(self) -> bool:
        """True when nothing was found: every count is 0 (and so every method
        is trusted)."""
        return not any(self.counts[key] for key in COUNT_KEYS)

    def index_tuples(self, key: str) -> List[Tuple[int, ...]]:
        """The first positions of finding `key` as index tuples into the
        logits' shape without the class axis.

        Parameters
        ----------
        key : str
            A finding: one of COUNT_KEYS, e.g. "nan_rows".

        Returns
        -------
        list of tuple of int
            Up to MAX_POSITIONS index tuples into `position_shape`.
        """
        shape = self.position_shape
        return [tuple(int(k) for k in np.unravel_index(p, shape))
                for p in self.positions[key]]

    def to_dict(self) -> Dict[str, Any]:
        """The report as a JSON-ready dict of plain Python types.

        Returns
        -------
        dict
            Besides the counts (the COUNT_KEYS) it holds, for each finding,
            "<stem>_positions" (flat position indices) and "<stem>_indices"
            (index lists into position_shape), e.g. nan_positions /
            nan_indices.  A statistic is None when no row qualifies for it
            (or, in float64, when it is not finite).
        """
        out = {
            "shape": list(self.shape), "axis": self.axis, "classes": self.classes,
            "dtype": self.dtype, "position_shape": list(self.position_shape),
            "ignore_index": self.ignore_index,
            "thresholds": dataclasses.asdict(self.thresholds),
            "rows": self.rows, "ignored_rows": self.ignored_rows,
        }
        out.update((key, int(self.counts[key])) for key in COUNT_KEYS + _DETAIL_KEYS)
        for key in ("max_abs_logit", "max_gap", "true_loss_mean", "true_loss_max"):
            out[key] = _plain_float(getattr(self, key))
        out["loss_rows"] = self.loss_rows
        out["misreported_rows"] = self.misreported_rows
        for key in COUNT_KEYS + _DETAIL_KEYS:
            out[_stem(key) + "_positions"] = [int(p) for p in self.positions[key]]
            out[_stem(key) + "_indices"] = [list(t) for t in self.index_tuples(key)]
        out["out_of_range_values"] = [int(v) for v in self.out_of_range_values]
        out["clean"] = self.clean
        out["trusted_methods"] = list(self.trusted_methods)
        out["advice"] = list(self.advice)
        return out

    def __str__(self) -> str:
        t = self.thresholds
        shape = "x".join(str(n) for n in self.shape)
        head = [f"pysafemax diagnose: {self.rows} rows of {self.classes} classes; "
                f"logits {shape} {self.dtype}, axis {self.axis}"]
        if self.ignore_index is not None:
            head.append(f"ignore_index {self.ignore_index}: {self.ignored_rows} "
                        f"rows skipped")
        head.append(f"thresholds ({t.dtype}): exp overflows above "
                    f"{t.exp_overflow:.6g}, sum underflows below "
                    f"{t.sum_underflow:.6g}, maxsub clamps above {t.clamp:.6g}")
        lines = _wrap(head)
        lines.append("")
        lines.append(f"  {'finding':<40}{'rows':>8}   first positions")
        for key in COUNT_KEYS + _DETAIL_KEYS:
            label = _DESCRIPTIONS[key].format(clamp=f"{t.clamp:.6g}")
            count = self.counts[key]
            text = f"  {label:<40}{count:>8}"
            if count:
                text += "   " + _position_list(self, key, WIDTH - len(text) - 3)
            lines.append(text)
        lines.append("")
        untrusted = [m for m in METHODS if m not in self.trusted_methods]
        lines.extend(_wrap([
            f"max |logit| {number(self.max_abs_logit)}, largest gap (max - label "
            f"logit) {number(self.max_gap)}",
            f"true loss: mean {number(self.true_loss_mean)}, max "
            f"{number(self.true_loss_max)} over {self.loss_rows} rows (rows with "
            f"nan or +inf and labels on -inf left out)",
            f"trusted: {', '.join(self.trusted_methods) or 'none'}"
            + (f"; untrusted: {', '.join(untrusted)}" if untrusted else ""),
        ]))
        lines.append("")
        lines.append("advice, most likely first:")
        for n, item in enumerate(self.advice, 1):
            lines.extend(wrap(item, WIDTH, initial_indent=f"  {n}. ",
                              subsequent_indent="     ", split_words=True))
        return "\n".join(lines)


def _wrap(paragraphs: List[str]) -> List[str]:
    lines = []
    for text in paragraphs:
        lines.extend(wrap(text, WIDTH, subsequent_indent="  ", split_words=True))
    return lines


def _plain_float(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _position_list(report: DiagnosisReport, key: str, room: int) -> str:
    items = _where(report, key)
    more = report.counts[key] > len(items)
    text = ""
    for i, item in enumerate(items):
        candidate = item if not text else f"{text}, {item}"
        tail = ", ..." if (more or i < len(items) - 1) else ""
        if len(candidate) + len(tail) > room and text:
            return text + ", ..."
        text = candidate
    return text + (", ..." if more else "")


class _Counter:
    """Counts and first positions of one finding, across blocks."""

    def __init__(self, report: DiagnosisReport, key: str) -> None:
        self.report, self.key = report, key

    def add(self, mask: NDArray[np.bool_], flat: NDArray[np.intp]) -> None:
        count = int(np.count_nonzero(mask))
        if not count:
            return
        self.report.counts[self.key] += count
        kept = self.report.positions[self.key]
        if len(kept) < MAX_POSITIONS:
            kept.extend(int(p) for p in flat[mask][:MAX_POSITIONS - len(kept)])


def _logits(logits: ArrayLike, axis: Integer) -> Tuple[NDArray[Any], Logits]:
    """(array, Logits info) with logits_array's checks and errors, without
    copying an array that is big (a memmap) just to convert its dtype or
    layout: the blocks are converted one at a time instead."""
    x = as_array(logits, "logits")
    info = logits_array(x, axis, convert=x.size <= _BLOCK_ELEMENTS)
    return info.array, info


def _labels(labels: ArrayLike, info: Logits) -> NDArray[np.integer[Any]]:
    given = as_array(labels, "labels")
    if given.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {given.dtype}")
    if given.shape != info.position_shape:
        raise labels_shape_error(given.shape, info.array.shape, info.axis)
    return given


def _label_masks(raw: NDArray[Any], classes: int, ignore_index: Optional[int]
                 ) -> Tuple[NDArray[np.bool_], NDArray[np.bool_], NDArray[np.int64]]:
    """(ignored, in range and not ignored, int64 labels with 0 where out of
    range) of a block's labels, flat.  ignore_index may be any int: a value
    no label of the dtype can hold ignores nothing."""
    in_range = ~out_of_range(raw, classes)
    if raw.dtype.kind == "u" and raw.dtype.itemsize == 8:
        # uint64 beyond int64 would wrap to a negative int64: compare as uint64
        if ignore_index is not None and 0 <= ignore_index <= 2 * _INT64_MAX + 1:
            ignored = raw == np.uint64(ignore_index)
        else:
            ignored = np.zeros(raw.shape, dtype=bool)
    elif ignore_index is not None and -_INT64_MAX - 1 <= ignore_index <= _INT64_MAX:
        ignored = raw.astype(np.int64) == ignore_index
    else:
        ignored = np.zeros(raw.shape, dtype=bool)
    values = np.where(in_range, raw, 0).astype(np.int64)
    return ignored, in_range & ~ignored, values


def diagnose(logits: ArrayLike, labels: ArrayLike, *, axis: Integer = 1,
             ignore_index: Optional[Integer] = None) -> DiagnosisReport:
    """Look for the float failure modes of softmax cross-entropy in a batch.

    Memory: the logits are read in blocks, so a memory-mapped array is
    streamed; a C-contiguous float32/float64 array is never copied whole.

    Parameters
    ----------
    logits : array_like of float16, float32 or float64
        Shaped (C,), (N, C) or (N, C, d1, ...); `axis` is the class axis.
        Same checks and errors as pysafemax.softmax_loss.
    labels : array_like of int
        Class indices shaped like logits without the class axis.
        Out-of-range labels are counted, not raised.
    axis : int, default 1
        The class axis.
    ignore_index : int, optional
        A label value whose positions are skipped.

    Returns
    -------
    DiagnosisReport
        What was found (see there for what each count means).

    Raises
    ------
    TypeError
        For logits that are not float16/32/64, labels that are not integer,
        or a masked array.
    ValueError
        For labels of the wrong shape, an axis out of range, or no classes.

    Examples
    --------
    >>> import numpy as np
    >>> import pysafemax
    >>> report = pysafemax.diagnose(np.array([[100.0, 0.0], [1.0, 2.0]],
    ...                                      dtype=np.float32), np.array([1, 0]))
    >>> report.clamped_rows, report.positions["clamped_rows"]
    (1, [0])
    >>> report.trusted_methods
    ['stable']
    """
    x, info = _logits(logits, axis)
    if ignore_index is not None:
        ignore_index = integer(ignore_index, "ignore_index")
    labels = _labels(labels, info)
    t = thresholds(info.compute_dtype)
    report = DiagnosisReport(shape=tuple(int(n) for n in x.shape), axis=info.axis,
                             dtype=str(info.result_dtype),
                             ignore_index=ignore_index, thresholds=t)
    report.rows = info.outer * info.inner
    counters = {key: _Counter(report, key) for key in COUNT_KEYS + _DETAIL_KEYS}
    classes = info.classes
    # blocks of at most _BLOCK_POSITIONS positions and about _BLOCK_ELEMENTS
    # logits, read at call time (the tests shrink them)
    max_positions = max(1, min(_BLOCK_POSITIONS, _BLOCK_ELEMENTS // classes))
    loss_sum = 0.0
    with np.errstate(all="ignore"):
        for block in position_blocks(x.shape, info.axis, max_positions):
            # rows in the positions' C order: flat indices first, first + 1, ...
            xd = np.moveaxis(x[block.index], info.axis, -1).reshape(
                -1, classes).astype(np.float64)
            flat = np.arange(block.first, block.first + block.count)
            raw = labels[block.positions].reshape(-1)
            ignored, in_range, lab = _label_masks(raw, classes, ignore_index)
            scan = _scan_block(report, counters, xd, flat, ignored, in_range,
                               raw, t)
            loss_sum += _loss_block(report, counters, xd, flat, in_range, lab, t,
                                    *scan)
    if report.loss_rows:
        report.true_loss_mean = loss_sum / report.loss_rows
    report.trusted_methods = _trusted(report.counts)
    report.advice = _advice(report)
    return report


def _scan_block(report: DiagnosisReport, counters: Dict[str, _Counter],
                xd: NDArray[np.float64], flat: NDArray[Any], ignored: NDArray[np.bool_],
                in_range: NDArray[np.bool_], raw_labels: NDArray[Any],
                t: Thresholds) -> Tuple[NDArray[Any], ...]:
    """The findings that need no label logit; returns (usable: the rows with
    a finite max, row max, overflow, underflow) for _loss_block."""
    keep = ~ignored
    report.ignored_rows += int(np.count_nonzero(ignored))
    has_nan = np.isnan(xd).any(axis=1)
    has_pinf = (xd == np.inf).any(axis=1)
    counters["nan_rows"].add(keep & has_nan, flat)
    counters["inf_rows"].add(keep & has_pinf, flat)
    out = keep & ~in_range
    if out.any() and len(report.out_of_range_values) < MAX_POSITIONS:
        room = MAX_POSITIONS - len(report.out_of_range_values)
        values = raw_labels[out][:room]
        report.out_of_range_values.extend(int(v) for v in values)
    counters["out_of_range_labels"].add(out, flat)

    finite_logits = np.isfinite(xd) & keep[:, None]
    if finite_logits.any():
        biggest = float(np.abs(xd[finite_logits]).max())
        if report.max_abs_logit is None or biggest > report.max_abs_logit:
            report.max_abs_logit = biggest

    usable = keep & ~has_nan & ~has_pinf
    m = xd.max(axis=1)
    all_neg_inf = usable & (m == -np.inf)
    counters["all_neg_inf_rows"].add(all_neg_inf, flat)
    usable &= ~all_neg_inf     # the rest need a finite row max
    lse = _log_sum_exp(xd, m, usable)
    overflow = usable & ((m > t.exp_overflow) | (lse > t.exp_overflow))
    underflow = usable & (m < t.sum_underflow)
    counters["naive_overflow_rows"].add(overflow, flat)
    counters["naive_underflow_rows"].add(underflow, flat)
    return usable, m, overflow, underflow


def _log_sum_exp(xd: NDArray[np.float64], m: NDArray[np.float64],
                 rows: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Each row's log-sum-exp where `rows` holds (rows with a finite max m),
    -inf elsewhere, from the library: the stable loss of the label at the
    row max is log(sum(exp(x - m))), computed here in float64 as xd is."""
    lse = np.full(xd.shape[0], -np.inf)
    where = np.flatnonzero(rows)
    if where.size:
        picked = xd[where]
        lse[where] = m[where] + softmax_loss(
            picked, np.argmax(picked, axis=1), method="stable", reduction="none")
    return lse


def _loss_block(report: DiagnosisReport, counters: Dict[str, _Counter],
                xd: NDArray[np.float64], flat: NDArray[Any], in_range: NDArray[np.bool_],
                lab: NDArray[np.int64], t: Thresholds, usable: NDArray[np.bool_],
                m: NDArray[np.float64], overflow: NDArray[np.bool_],
                underflow: NDArray[np.bool_]) -> float:
    """The findings that need the label's logit or the true loss; returns the
    block's sum of true losses."""
    labelled = usable & in_range
    label_logit = xd[np.arange(xd.shape[0]), lab]
    on_neg_inf = labelled & (label_logit == -np.inf)
    counters["label_on_neg_inf_rows"].add(on_neg_inf, flat)
    measured = labelled & ~on_neg_inf
    if not measured.any():
        report.misreported_rows += int(np.count_nonzero(
            overflow | underflow | on_neg_inf))
        return 0.0
    rows = np.flatnonzero(measured)
    gaps = m[rows] - label_logit[rows]
    losses = softmax_loss(xd[rows], lab[rows], axis=1, method="stable",
                          reduction="none")
    gap_max, loss_max = float(gaps.max()), float(losses.max())
    if report.max_gap is None or gap_max > report.max_gap:
        report.max_gap = gap_max
    if report.true_loss_max is None or loss_max > report.true_loss_max:
        report.true_loss_max = loss_max
    report.loss_rows += rows.size

    clamped = np.zeros(xd.shape[0], dtype=bool)
    clamped[rows] = losses > t.clamp
    counters["clamped_rows"].add(clamped, flat)
    counters["clamped_without_overflow_rows"].add(clamped & ~overflow, flat)
    subnormal = (measured & ~clamped & ~overflow & ~underflow
                 & (label_logit < t.subnormal_label))
    counters["naive_subnormal_rows"].add(subnormal, flat)
    # rows where naive or maxsub misreport a loss that stable gets right
    report.misreported_rows += int(np.count_nonzero(
        overflow | underflow | subnormal | clamped | on_neg_inf))
    return float(losses.sum())


def _trusted(counts: Dict[str, int]) -> List[str]:
    """trusted_methods from the counts; see DiagnosisReport."""
    if (counts["nan_rows"] or counts["inf_rows"] or counts["out_of_range_labels"]
            or counts["all_neg_inf_rows"]):
        return []
    if counts["clamped_rows"] or counts["label_on_neg_inf_rows"]:
        return ["stable"]
    if (counts["naive_overflow_rows"] or counts["naive_underflow_rows"]
            or counts["naive_subnormal_rows"]):
        return ["maxsub", "stable"]
    return list(METHODS)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _where(report: DiagnosisReport, key: str) -> List[str]:
    """The first positions of a finding as strings: 17, or (0, 3, 4)."""
    if len(report.position_shape) > 1:
        return ["(" + ", ".join(map(str, t)) + ")" for t in report.index_tuples(key)]
    return [str(p) for p in report.positions[key]]


def _first(report: DiagnosisReport, key: str) -> str:
    """' (at 3, 17)' or ' (first at 3, 17, 20, ...)' for advice text."""
    items = _where(report, key)[:3]
    if report.counts[key] <= len(items):
        return f" (at {', '.join(items)})"
    return f" (first at {', '.join(items)}, ...)"


def _advice(report: DiagnosisReport) -> List[str]:
    """The remedies that fit, ranked by evidence.

    Each remedy gets a score: a tier for how directly the evidence implicates
    it, plus the fraction of (non-ignored) rows that show the evidence.
      tier 4  labels out of range: certain, and no method can compute
      tier 3  nan or +inf logits; labels on -inf, rows of all -inf: the data
              (or the mask) first, since no loss is defined there
      tier 1  huge logits (over/underflow, subnormal label exp, or
              |logit| > ln(max)): smaller initial weights, lower the
              learning rate; and, less likely, the fine-tuning BatchNorm hint
              (only when every label is valid);
              a clamp without overflow: a confidently wrong model
      tier 0.5  use method='stable', whenever naive or maxsub misreport
                finite rows
    """
    c, t = report.counts, report.thresholds
    considered = max(1, report.rows - report.ignored_rows)
    items: List[Tuple[float, int, str]] = []

    def add(tier: float, evidence: float, text: str) -> None:
        items.append((tier + evidence / considered, len(items), text))

    if report.rows == 0:
        return ["The batch has no positions: there is nothing to diagnose."]
    if c["out_of_range_labels"]:
        bad = c["out_of_range_labels"]
        pairs = [f"{v} at {w}" for v, w in zip(report.out_of_range_values,
                                                _where(report, "out_of_range_labels"))]
        listed = ", ".join(pairs[:3]) + (", ..." if bad > 3 else "")
        void = ""
        if any(v < 0 or v == 255 for v in report.out_of_range_values):
            void = (" A 'void' label such as -1 or 255 needs ignore_index "
                    "(--ignore-index).")
        add(4, bad,
            f"Check the labels first: {_n(bad, 'label')} {'is' if bad == 1 else 'are'} "
            f"outside 0..{report.classes - 1} ({listed}); no method computes a "
            f"loss for {'it' if bad == 1 else 'them'}.{void} Otherwise check the "
            f"class count (num_output) and off-by-one label files.")
    if c["nan_rows"] or c["inf_rows"]:
        parts = []
        if c["nan_rows"]:
            parts.append(f"{_n(c['nan_rows'], 'row')} with nan"
                         f"{_first(report, 'nan_rows')}")
        if c["inf_rows"]:
            parts.append(f"{_n(c['inf_rows'], 'row')} with +inf"
                         f"{_first(report, 'inf_rows')}")
        add(3, c["nan_rows"] + c["inf_rows"],
            f"Check the input data first: the logits have {' and '.join(parts)}. "
            f"No loss is defined there (the methods read nan"
            f"{f', or naive {t.clamp:.6g}' if c['inf_rows'] else ''}). "
            f"Look for nan or inf in the inputs "
            f"and labels; if they are clean, the weights have diverged: "
            f"restart from an earlier snapshot with a lower learning rate.")
    if c["label_on_neg_inf_rows"] or c["all_neg_inf_rows"]:
        parts = []
        if c["label_on_neg_inf_rows"]:
            parts.append(f"{_n(c['label_on_neg_inf_rows'], 'label')} on a -inf "
                         f"logit{_first(report, 'label_on_neg_inf_rows')}, so "
                         f"the true loss is infinite (naive and maxsub hide "
                         f"it as {t.clamp:.6g})")
        if c["all_neg_inf_rows"]:
            parts.append(f"{_n(c['all_neg_inf_rows'], 'row')} with every logit -inf"
                         f"{_first(report, 'all_neg_inf_rows')}, so no class is "
                         f"possible and every method reads nan")
        add(3, c["label_on_neg_inf_rows"] + c["all_neg_inf_rows"],
            f"Check the labels against the mask: {'; '.join(parts)}.")

    huge_rows = (c["naive_overflow_rows"] + c["naive_underflow_rows"]
                 + c["naive_subnormal_rows"])
    huge = huge_rows > 0 or (not report.clean
                             and (report.max_abs_logit or 0) > t.exp_overflow)
    if huge:
        parts = [f"max |logit| {number(report.max_abs_logit)}"]
        if c["naive_overflow_rows"]:
            parts.append(f"{_n(c['naive_overflow_rows'], 'row')} overflowing "
                         f"naive's exp (above {t.exp_overflow:.6g})")
        if c["naive_underflow_rows"]:
            parts.append(f"{_n(c['naive_underflow_rows'], 'row')} with every "
                         f"logit below {t.sum_underflow:.6g}")
        if report.max_gap is not None:
            parts.append(f"largest gap {number(report.max_gap)}")
        add(1, huge_rows,
            f"The logits are huge ({', '.join(parts)}): the network's outputs "
            f"have blown up. Use smaller initial weights (e.g. a smaller std "
            f"for the last layer's filler) or lower the learning rate.")
        if not c["out_of_range_labels"]:
            add(1, huge_rows * 0.5,
                "If you are fine-tuning: don't freeze BatchNorm. With "
                "use_global_stats: true (Caffe) or BatchNorm left in eval mode "
                "while training, statistics from the old data can blow the "
                "activations up; let BatchNorm update its statistics while "
                "training.")
    if c["clamped_without_overflow_rows"]:
        k = c["clamped_without_overflow_rows"]
        add(1, k,
            f"The model is confidently wrong: {_n(k, 'row')} "
            f"{'has' if k == 1 else 'have'} a true loss above {t.clamp:.6g} "
            f"(largest gap {number(report.max_gap)}) with no logit overflowing"
            f"{_first(report, 'clamped_without_overflow_rows')}. Lower the "
            f"learning rate, and check that these labels are right.")
    misreported = report.misreported_rows
    if misreported:
        untrusted = [m for m in ("naive", "maxsub") if m not in report.trusted_methods]
        add(0.5, misreported,
            f"Use method='stable' (log-sum-exp): {' and '.join(untrusted)} "
            f"misreport {_n(misreported, 'row')} of this batch, which stable "
            f"gets right.")
    if not items:
        return [f"Nothing is wrong with this batch: every method's loss equals "
                f"the true loss (max |logit| {number(report.max_abs_logit)}, true "
                f"loss mean {number(report.true_loss_mean)})."]
    items.sort(key=lambda item: (-item[0], item[1]))
    return [text for _, _, text in items]


class _Unusable(Exception):
    """An input the CLI cannot diagnose; its message is one line."""


def _load(path: Union[str, os.PathLike[str]], role: str) -> NDArray[Any]:
    """The array in a .npy or .npz file, memory-mapped; `role` is 'logits'
    or 'labels', the name looked for in an .npz of several arrays."""
    if not os.path.exists(path):
        raise _Unusable(f"{role} file {path} does not exist")
    if os.path.isdir(path):
        raise _Unusable(f"{role} file {path} is a directory")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise _Unusable(f"cannot read {role} file {path}: "
                        f"{exc.strerror or exc}") from None
    try:
        if magic == b"\x93NUMPY":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if magic[:2] == b"PK":      # a zip archive: .npz
            return _from_npz(path, role)
    except _Unusable:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error is unusable input
        raise _Unusable(f"cannot read {role} file {path}: {_one_line(exc)}") from None
    raise _Unusable(f"{role} file {path} is not a .npy or .npz file")


def _from_npz(path: Union[str, os.PathLike[str]], role: str) -> NDArray[Any]:
    """The member named `role`, or the only member, of an .npz, memory-mapped
    read-only; the other members are not read."""
    with zipfile.ZipFile(path) as archive:
        # np.load's names: the member's file name without ".npy"
        members = {name[:-4] if name.endswith(".npy") else name: name
                   for name in archive.namelist()}
        if role in members:
            name = role
        elif len(members) == 1:
            (name,) = members
        elif not members:
            raise _Unusable(f"{role} file {path} holds no arrays")
        else:
            raise _Unusable(f"{role} file {path} holds several arrays "
                            f"({', '.join(members)}) and none is named '{role}'")
        member = archive.getinfo(members[name])
        if member.flag_bits & 0x1:
            raise ValueError(f"member {member.filename} is encrypted")
        if member.compress_type == zipfile.ZIP_STORED:
            return _map_stored(path, member)
        with tempfile.TemporaryFile() as spool:
            with archive.open(member) as source:
                shutil.copyfileobj(source, spool, _COPY_CHUNK)
            spool.seek(0)
            # the map keeps the (already unlinked) file alive after close
            return _map_npy(spool, member.file_size)


def _map_stored(path: Union[str, os.PathLike[str]], member: zipfile.ZipInfo) -> NDArray[Any]:
    """An uncompressed .npz member, mapped where it lies in the zip file."""
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        local_header = f.read(30)
        if len(local_header) < 30 or local_header[:4] != b"PK\x03\x04":
            raise ValueError(f"member {member.filename} has no local file header")
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        start = member.header_offset + 30 + name_length + extra_length
        f.seek(start)
        return _map_npy(f, start + member.file_size)


def _map_npy(f: BinaryIO, end: int) -> NDArray[Any]:
    """The .npy that starts at f's position and ends by file offset `end`,
    memory-mapped read-only."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        # 3.0 is 2.0 with the header in UTF-8, which only structured dtypes'
        # field names need (and diagnose refuses those whatever their names)
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} "
                         f"is not read here")
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    offset = f.tell()
    count = math.prod(shape)
    if offset + count * dtype.itemsize > end:
        raise ValueError(f"the array of shape {shape} is truncated")
    order: Literal["C", "F"] = "F" if fortran_order else "C"
    if count == 0:
        return np.empty(shape, dtype, order=order)   # nothing to map
    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order=order)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def cli_diagnose(logits_path: Union[str, os.PathLike[str]],
                 labels_path: Union[str, os.PathLike[str]], *, axis: int = 1,
                 ignore_index: Optional[int] = None, as_json: bool = False,
                 out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """`python -m pysafemax diagnose`: print the report (or its JSON).

    Parameters
    ----------
    logits_path, labels_path : str or os.PathLike
        .npy or .npz files (memory-mapped); in an .npz of several arrays,
        the member named "logits" or "labels".
    axis, ignore_index
        As diagnose().
    as_json : bool, default False
        Print the report as JSON (DiagnosisReport.to_dict()).
    out, err : text file, optional
        Where the report and the error line go (default: sys.stdout and
        sys.stderr).

    Returns
    -------
    int
        0 if the batch is clean, 1 if issues were found, 2 on unusable
        input, which gets one line on `err` and no traceback.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        logits = _load(logits_path, "logits")
        labels = _load(labels_path, "labels")
        report = diagnose(logits, labels, axis=axis, ignore_index=ignore_index)
    except (_Unusable, TypeError, ValueError) as exc:
        # the files, or diagnose's checks of the arrays in them
        err.write(f"pysafemax diagnose: {_one_line(exc)}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - MemoryError, or a bug: still exit 2
        name, detail = type(exc).__name__, _one_line(exc)
        text = name if detail == name else f"{name}: {detail}"
        err.write(f"pysafemax diagnose: {text}\n")
        return 2
    if as_json:
        out.write(json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")
    else:
        out.write(str(report) + "\n")
    return 0 if report.clean else 1
