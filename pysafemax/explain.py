"""`python -m pysafemax explain VALUE`: name the constant a stuck loss comes from.

A training loss that sits at 87.3365, 103.279 or 708.396 is not a
coincidence: it is -ln of a floating-point limit that a clamp or an underflow
put into the loss.  explain() recognises these values as they are printed.
87.3365 = -ln(FLT_MIN) is Caffe's clamp in float and in double alike
(SoftmaxWithLoss clamps at FLT_MIN for either Dtype; double prints
87.3365447505531); 708.396 = -ln(DBL_MIN) is a clamp at float64's own
smallest normal, which Caffe does not use.

A value is a decimal float written with ASCII digits ("87.3365",
"8.73365e+01") or a spelling of nan or inf (NUMBER_SPELLING); anything else
is not a number, including what float() or Decimal would take but no
program prints a loss as: other scripts' digits ("\u0661\u0662", Arabic-Indic
12), "1_000", and hex floats ("0x1p3").  Messages quote at most ECHO_LIMIT
characters of the input.

Matching rule (tolerant to print rounding).  A printed value v matches a
constant c when either
  (a) v has at least 3 significant digits and c, rounded to the last digit v
      was printed with, gives v back: |v - c| <= half a unit in v's last
      place ("87.3", "87.34", "87.3365", "8.73365e+01", "87.33655"); or
  (b) |v - c| <= 5e-5 * |c|, for values printed with more digits than the
      computation that produced them kept (a float32 result printed as a
      float64, a smoothed average of clamped losses).
c is tried as a float64 and rounded to float32 (and to float16 for the
float16 limits), since the loss may have been computed in any of these: the
float16 -ln(2^-14) is 9.703125 and prints "9.703".  Fewer than 3 significant
digits ("87", "9.7") are consistent with too many values to name one.

Every constant is computed from numpy's finfo or math, never typed in: the
decimals in the text below are for the reader.
"""
import decimal
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from ._constants import DBL_MIN_LOSS, FLT_MIN, FLT_MIN_LOSS, FLT_MIN_LOSS_F64

__all__ = ["explain", "cli_explain", "Explanation", "StuckValue", "CONSTANTS",
           "CONSTANT_BY_KEY", "parse_value", "matches", "match_constant",
           "uniform_classes", "abbreviate", "NUMBER_SPELLING", "REL_TOL",
           "MIN_DIGITS", "MAX_CLASSES", "ECHO_LIMIT"]

REL_TOL = 5e-5      # rule (b)
MIN_DIGITS = 3      # rule (a) needs at least this many significant digits
MAX_CLASSES = 10 ** 6
ECHO_LIMIT = 40     # characters of the input a message quotes
WIDTH = 79

_F16 = np.finfo(np.float16)
_F32 = np.finfo(np.float32)
_F64 = np.finfo(np.float64)
# bfloat16 keeps float32's exponent range with 7 stored mantissa bits.
_BF16_SMALLEST_SUBNORMAL = math.ldexp(1.0, int(_F32.minexp) - 7)
KERAS_EPSILON = 1e-7        # keras.backend.epsilon()'s default
BCE_LOG_FLOOR = -100.0      # torch.nn.BCELoss clamps log(p) at -100

_CHECKS = ("lower the learning rate, check the data and the labels (nan or "
           "inf in the inputs, labels out of range), use smaller initial "
           "weights, and don't freeze BatchNorm statistics when fine-tuning")
_DIAGNOSE = ("`python -m pysafemax diagnose LOGITS.npy LABELS.npy` says which "
             "remedy the evidence points to.")
_REMEDIES = "then the usual remedies: " + _CHECKS + ".  " + _DIAGNOSE


@dataclass(frozen=True)
class StuckValue:
    """A loss value that some clamp or floating-point limit produces."""

    key: str            # short identifier, e.g. "flt_min"
    name: str           # e.g. "-ln(FLT_MIN)"
    value: float        # the constant, in float64
    formula: Optional[str]  # how it is computed, e.g. "-ln(2^-126)"
    what: str           # what the underlying limit is
    why: str            # why a loss sticks there
    advice: str         # what to do
    dtypes: Tuple[type, ...] = (np.float32,)   # roundings a program may print
    # The value as float64, then rounded to each of `dtypes` where that
    # differs: (dtype name, value) pairs, and the bare values.
    rounded: Tuple[Tuple[str, float], ...] = field(init=False)
    representations: Tuple[float, ...] = field(init=False)

    def __post_init__(self):
        rounded = []
        for dtype in self.dtypes:
            r = float(dtype(self.value))
            if r != self.value and r not in (v for _, v in rounded):
                rounded.append((np.dtype(dtype).name, r))
        object.__setattr__(self, "rounded", tuple(rounded))
        object.__setattr__(self, "representations",
                           (float(self.value),) + tuple(v for _, v in rounded))


def _fill(text, **kwargs):
    return textwrap.fill(text, WIDTH, break_on_hyphens=False,
                         break_long_words=False, **kwargs)


def _neg_ln(x):
    return -math.log(float(x))


def _g(x, digits=6):
    return f"{float(x):.{digits}g}"


def _build_constants():
    dbl_min = float(_F64.tiny)
    flt_den = float(_F32.smallest_subnormal)
    dbl_den = float(_F64.smallest_subnormal)
    half_min = float(_F16.tiny)
    half_den = float(_F16.smallest_subnormal)
    flt_max, dbl_max, half_max = float(_F32.max), float(_F64.max), float(_F16.max)
    flt_eps = float(_F32.eps)
    diverged = ("The logits have grown so large that the network is "
                "confidently wrong on every sample: the run has diverged.")
    return (
        StuckValue(
            "flt_min", "-ln(FLT_MIN)", FLT_MIN_LOSS_F64, "-ln(2^-126)",
            f"FLT_MIN = 2^-126 = {_g(FLT_MIN)} is the smallest normal float32 "
            "(bfloat16 has the same one).",
            "Caffe's SoftmaxWithLoss computes -log(max(p[label], "
            "Dtype(FLT_MIN))) in float and in double alike, so a sample whose "
            "label probability fell below FLT_MIN reports exactly "
            f"{_g(FLT_MIN_LOSS_F64)} ({_g(FLT_MIN_LOSS, 9)} in "
            f"float, {FLT_MIN_LOSS_F64!r} in double): the probability fell "
            f"below FLT_MIN (a logit gap above {_g(FLT_MIN_LOSS_F64)}) or came "
            "out 0 because another logit overflowed exp() to inf (in float32 "
            f"above ln(FLT_MAX) = {_g(math.log(flt_max))}) and x/inf = 0.  A "
            "batch loss of exactly this value means every sample in the batch "
            "was clamped, so the clamp also hides how large the true loss is. "
            + diverged,
            "Lower the learning rate (try 10x lower) and consider gradient "
            "clipping; check the data and the labels (nan or inf in the "
            "inputs, labels out of range); use smaller initial weights; "
            "don't freeze BatchNorm statistics when fine-tuning.  " + _DIAGNOSE
            + "  pysafemax.softmax_loss(..., method=\"stable\") computes the "
            "true loss that the clamp hides."),
        StuckValue(
            "flt_denorm", "-ln(smallest float32 denormal)", _neg_ln(flt_den),
            "-ln(2^-149)",
            f"2^-149 = {_g(flt_den)} is the smallest positive float32 (a "
            "denormal).",
            "It is the largest finite value -log(p) can take for a float32 "
            "probability p > 0: the label probability sits on the last "
            "denormal before 0 (a probability computed in float32 without "
            "Caffe's FLT_MIN clamp, or clamped at the smallest subnormal). "
            "One step further and p is 0 and the loss inf. " + diverged,
            "Compute the loss from the logits in the log domain "
            "(log_softmax / cross-entropy on logits) instead of taking the "
            "log of a probability; " + _REMEDIES),
        StuckValue(
            "dbl_min", "-ln(DBL_MIN)", DBL_MIN_LOSS, "-ln(2^-1022)",
            f"DBL_MIN = 2^-1022 = {_g(dbl_min)} is the smallest normal float64.",
            "Code that clamps the label probability at float64's own smallest "
            "normal (numpy's finfo(float64).tiny, sys.float_info.min, a "
            "hand-written max(p, DBL_MIN)) reports it once the probability "
            "fell below DBL_MIN.  It is not Caffe's clamp: "
            "SoftmaxWithLossLayer<double> clamps at FLT_MIN too and reports "
            f"{FLT_MIN_LOSS_F64!r}, and no pysafemax method reports it. "
            + diverged,
            "Compute the loss in the log domain instead of clamping; "
            + _REMEDIES),
        StuckValue(
            "dbl_denorm", "-ln(smallest float64 denormal)", _neg_ln(dbl_den),
            "-ln(2^-1074)",
            f"2^-1074 = {_g(dbl_den)} is the smallest positive float64 (a "
            "denormal).",
            "It is the largest finite -log(p) for a float64 probability "
            "p > 0: the label probability sits on the last denormal before "
            "0, so the loss is clamped by the number format itself. "
            + diverged,
            "Compute the loss from the logits in the log domain; " + _REMEDIES),
        StuckValue(
            "half_min", "-ln(float16 smallest normal)", _neg_ln(half_min),
            "-ln(2^-14)",
            f"2^-14 = {_g(half_min)} is the smallest normal float16.",
            "The probability was computed or stored in half precision and "
            "clamped at (or flushed below) float16's smallest normal number; "
            "in float16 this loss itself rounds to "
            f"{_g(np.float16(_neg_ln(half_min)), 7)}.  Mixed-precision training "
            "that takes softmax and log in float16 hits it as soon as a "
            "label probability drops below 6.1e-05.",
            "Keep softmax, log and the loss in float32 (autocast does this "
            "for cross-entropy on logits) or use log_softmax; use loss "
            "scaling for the gradients; " + _REMEDIES,
            dtypes=(np.float32, np.float16)),
        StuckValue(
            "half_denorm", "-ln(float16 smallest denormal)", _neg_ln(half_den),
            "-ln(2^-24)",
            f"2^-24 = {_g(half_den)} is the smallest positive float16 (a "
            "denormal).",
            "It is the largest finite -log(p) for a float16 probability "
            "p > 0: a label probability held in half precision sits on its "
            "last denormal before 0 (in float16 the loss rounds to "
            f"{_g(np.float16(_neg_ln(half_den)), 7)}).",
            "Keep softmax, log and the loss in float32 or use log_softmax on "
            "the logits; " + _REMEDIES,
            dtypes=(np.float32, np.float16)),
        StuckValue(
            "bf16_denorm", "-ln(smallest bfloat16 denormal)",
            _neg_ln(_BF16_SMALLEST_SUBNORMAL), "-ln(2^-133)",
            f"2^-133 = {_g(_BF16_SMALLEST_SUBNORMAL)} is the smallest positive "
            "bfloat16 (a denormal; its smallest normal is FLT_MIN, the "
            "87.3365 clamp).",
            "It is the largest finite -log(p) for a bfloat16 probability "
            "p > 0: the label probability sits on the last denormal before 0.",
            "Keep softmax, log and the loss in float32 or use log_softmax on "
            "the logits; " + _REMEDIES),
        StuckValue(
            "flt_max", "ln(FLT_MAX)", math.log(flt_max), "ln((2 - 2^-23) 2^127)",
            f"FLT_MAX = {_g(flt_max)} is the largest float32, and ln(FLT_MAX) "
            "is where float32 exp() overflows: exp(x) is inf for every x "
            "above it.",
            "A loss reading ln(FLT_MAX) took the log of a quantity capped at "
            "FLT_MAX: a sum of exp(logits) or a 1/p clamped to the largest "
            "float32 instead of going to inf.  The logits are past the point "
            "where the textbook softmax overflows.",
            "Subtract the row max before exp (or use log-sum-exp); "
            + _REMEDIES),
        StuckValue(
            "dbl_max", "ln(DBL_MAX)", math.log(dbl_max), "ln((2 - 2^-52) 2^1023)",
            f"DBL_MAX = {_g(dbl_max)} is the largest float64; float64 exp() "
            "overflows to inf above ln(DBL_MAX).",
            "A loss reading ln(DBL_MAX) took the log of a quantity capped at "
            "DBL_MAX (a sum of exps or 1/p clamped to the largest float64): "
            "the logits are past the point where a float64 softmax without "
            "max subtraction overflows.",
            "Subtract the row max before exp (or use log-sum-exp); "
            + _REMEDIES),
        StuckValue(
            "half_max", "ln(float16 max)", math.log(half_max), "ln(65504)",
            f"{_g(half_max)} is the largest float16; float16 exp() overflows "
            "to inf above ln(65504).",
            "A loss reading ln(65504) took the log of a quantity capped at "
            "float16's largest value: in half precision a logit of only 11.1 "
            "already overflows exp().",
            "Keep softmax, log-sum-exp and the loss in float32 (autocast "
            "does this for cross-entropy on logits); " + _REMEDIES,
            dtypes=(np.float32, np.float16)),
        StuckValue(
            "flt_eps", "-ln(FLT_EPSILON)", _neg_ln(flt_eps), "-ln(2^-23)",
            f"FLT_EPSILON = 2^-23 = {_g(flt_eps)} is float32's machine epsilon.",
            "Probabilities were clipped to [eps, 1 - eps] with eps = float32's "
            "machine epsilon (np.finfo(np.float32).eps, "
            "torch.finfo(torch.float32).eps) before the log; a batch loss of "
            "exactly this value means every label probability sits on the "
            "lower clip: confidently wrong on every sample.",
            "Compute the loss from the logits (log_softmax, or from_logits="
            "True) instead of clipping probabilities; " + _REMEDIES),
        StuckValue(
            "keras_eps", "-ln(1e-7)", _neg_ln(KERAS_EPSILON), "-ln(1e-7)",
            "1e-7 is Keras's default epsilon (keras.backend.epsilon()); its "
            "cross-entropy losses clip probabilities to [eps, 1 - eps] before "
            "the log.",
            "A batch loss of exactly this value means every label probability "
            "sits on the lower clip: the model is confidently wrong on every "
            "sample, typically after a divergence or with labels that do not "
            "match the outputs.",
            "Pass from_logits=True and drop the final softmax so the loss is "
            "computed in the log domain; " + _REMEDIES),
        StuckValue(
            "bce_floor", "-max(log(p), -100), torch.nn.BCELoss's clamp",
            -BCE_LOG_FLOOR, None,
            "PyTorch's torch.nn.BCELoss clamps log(p) and log(1 - p) at -100 "
            "so that its loss stays finite.",
            "A loss of exactly 100 means every element hit that clamp: "
            "sigmoid outputs of exactly 0 or 1 on the wrong side, i.e. "
            "saturated, confidently wrong predictions.",
            "Use BCEWithLogitsLoss on the logits instead of BCELoss on "
            "sigmoid outputs; " + _REMEDIES),
    )


CONSTANTS = _build_constants()
CONSTANT_BY_KEY = {c.key: c for c in CONSTANTS}

NAN_STORY = (
    "nan is not a number: something upstream of the loss produced one.  In "
    "softmax cross-entropy the usual source is overflow: exp() of a logit "
    f"above ln(FLT_MAX) = {_g(math.log(float(_F32.max)))} is inf in float32, "
    "the sum is inf, and inf/inf = nan (the label held the big logit; any "
    "other label reads -ln(FLT_MIN) = "
    f"{_g(FLT_MIN_LOSS_F64)} in Caffe).  Other sources: weights that became "
    "inf after exploding gradients (inf - inf = nan), nan or inf in the "
    "input data, 0 * log(0), or a division by zero in a custom layer.  Once "
    "a weight is nan every later loss is nan.")
NAN_ADVICE = ("Lower the learning rate and clip gradients; subtract the row "
              "max (or use log-sum-exp) so exp cannot overflow; check the "
              "inputs and labels (numpy.isfinite, labels in range); use "
              "smaller initial weights; don't freeze BatchNorm statistics "
              "when fine-tuning.  " + _DIAGNOSE)
INF_STORY = (
    "inf is -log(0): a probability reached exactly 0 and nothing clamped it "
    "(log taken of a softmax output instead of log_softmax of the logits), "
    "or the loss summed an overflowed value.  Caffe would have printed "
    f"-ln(FLT_MIN) = {_g(FLT_MIN_LOSS_F64)} here instead.")
INF_ADVICE = ("Compute the loss from the logits in the log domain "
              "(log_softmax / cross-entropy on logits); " + _REMEDIES)

# Printed numbers, as re patterns for re.IGNORECASE.  Digits are [0-9]: re's
# \d also takes other scripts' digits.  An exponent has at most 9 digits
# (printf writes at most 4); Decimal rejects one beyond 18.
DECIMAL_SPELLING = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]{1,9})?"
# nan and inf as C/C++ (glibc, MSVC), Python, numpy, JavaScript print them.
NAN_SPELLING = r"[+-]?(?:nan(?:\([0-9a-z_]*\))?|1\.#(?:qnan|snan|ind)0*)"
INF_SPELLING = r"[+-]?(?:inf(?:inity)?|1\.#inf0*)"
# nan and inf first: the decimal would read "1.#INF" as "1.".
NUMBER_SPELLING = f"(?:{NAN_SPELLING}|{INF_SPELLING}|{DECIMAL_SPELLING})"
_DECIMAL = re.compile(DECIMAL_SPELLING, re.IGNORECASE)
_NAN = re.compile(NAN_SPELLING, re.IGNORECASE)
_INF = re.compile(INF_SPELLING, re.IGNORECASE)


def abbreviate(text, quote=False):
    """`text` as a message quotes it: whole up to ECHO_LIMIT characters,
    else its first ECHO_LIMIT, "..." and its length, so that a pathological
    input is not echoed whole.  quote=True puts the text in repr()'s quotes.
    """
    head = text[:ECHO_LIMIT]
    shown = repr(head) if quote else head
    if len(text) <= ECHO_LIMIT:
        return shown
    return f"{shown}... ({len(text)} characters)"


def parse_value(text):
    """(float value, Decimal or None) of a printed number, or ValueError.

    Accepts decimal and exponent notation in ASCII digits and the usual
    spellings of nan and inf ("nan", "-nan", "NaN", "nan(ind)", "1.#QNAN",
    "inf", "-Infinity", "1.#INF").  The Decimal, None for nan and inf, keeps
    the printed digits, which the matching rule needs.  A decimal beyond
    float64's range ("1e999") has the float value inf and a finite Decimal.
    """
    s = str(text).strip()
    if _DECIMAL.fullmatch(s):
        d = decimal.Decimal(s)
        return float(d), d
    if _NAN.fullmatch(s):
        return math.nan, None
    if _INF.fullmatch(s):
        return (-math.inf if s.startswith("-") else math.inf), None
    raise ValueError(f"not a number: {abbreviate(str(text), quote=True)}")


def _as_text(value):
    if isinstance(value, str):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, np.generic):
        # The exact value: str() of a float16 is its shortest repr in
        # float16, "9.7" for 9.703125, too few digits for the rule.
        return repr(float(value))
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"value must be a str or a real number, got "
                    f"{type(value).__name__}")


def _half_ulp(d):
    """Half a unit in the last printed place of d, as a Decimal."""
    return decimal.Decimal(5).scaleb(d.as_tuple().exponent - 1)


def _significant_digits(d):
    digits = d.as_tuple().digits
    return len(digits) if any(digits) else 0


def matches(text, constant):
    """Does the printed value `text` match `constant` (a StuckValue or float)?

    The rule is in the module docstring: (a) rounds back at the printed
    precision with >= 3 significant digits, or (b) relative difference
    <= 5e-5.  Compares magnitudes: nan and inf never match.
    """
    reps = (constant.representations if isinstance(constant, StuckValue)
            else (float(constant),))
    return _matches(*parse_value(text), reps)


def _matches(value, d, reps):
    """Does the magnitude of a parsed value (value, d) match one of reps?"""
    if d is None or math.isinf(value):
        # nan and inf match nothing; nor does a decimal beyond float64's
        # range, whose Decimal would overflow the context below.
        return False
    value, d = abs(value), abs(d)
    half = _half_ulp(d)
    enough_digits = _significant_digits(d) >= MIN_DIGITS
    for c in reps:
        if enough_digits and abs(d - decimal.Decimal(c)) <= half:
            return True
        if abs(value - c) <= REL_TOL * abs(c):
            return True
    return False


def match_constant(text):
    """The StuckValue the printed value matches, or None (magnitude only)."""
    value, d = parse_value(text)
    for constant in CONSTANTS:
        if _matches(value, d, constant.representations):
            return constant
    return None


def uniform_classes(text):
    """C if the printed value is ln(C) for exactly one integer C in
    [2, 10^6] under the same rounding rule, else None.

    ln(C) is the loss of a uniform prediction over C classes.  The interval
    the print stands for, [v - h, v + h] with h half a unit in its last place
    (rule (a), at least 3 significant digits), is mapped through exp and must
    hold exactly one integer; when it holds none, the wider interval of rule
    (b), h = 5e-5 v, is tried the same way.  Several integers mean the print
    does not pin C down (ln(10^6) printed with 6 digits fits about 100 of
    them).
    """
    value, d = parse_value(text)
    if d is None or value <= 0 or value > math.log(MAX_CLASSES) + 1:
        return None
    halves = [REL_TOL * value]
    if _significant_digits(d) >= MIN_DIGITS:
        halves.insert(0, float(_half_ulp(d)))
    for half in halves:
        # Widen by a few float64 ulps so exp's rounding cannot drop an endpoint.
        lo = math.exp(value - half) * (1 - 1e-12)
        hi = math.exp(value + half) * (1 + 1e-12)
        first, last = max(2, math.ceil(lo)), min(MAX_CLASSES, math.floor(hi))
        if first == last:
            return first
        if first < last:
            return None
    return None


@dataclass
class Explanation:
    """What explain() found; str() is the paragraph the CLI prints."""

    text: str                      # the value as given
    value: float
    known: bool
    kind: str                      # "constant", "nan", "inf", "uniform", "unknown"
    name: Optional[str] = None     # e.g. "-ln(FLT_MIN)", "ln(10)", "nan"
    constant: Optional[float] = None
    key: Optional[str] = None      # StuckValue.key for kind "constant"
    classes: Optional[int] = None  # C for kind "uniform"
    negated: bool = False          # the printed value was -constant
    what: str = ""
    why: str = ""
    advice: str = ""

    @property
    def headline(self):
        text = abbreviate(self.text)
        if self.kind == "constant":
            c = CONSTANT_BY_KEY[self.key]
            line = (f"{text} is the negative of {c.name}" if self.negated
                    else f"{text} = {c.name}")
            if c.formula and c.formula != c.name:
                line += f" = {c.formula}"
            line += f" = {c.value:.10g}"
            rounded = [f"{name}: {_g(r, 8)}" for name, r in c.rounded]
            return line + (f" ({', '.join(rounded)})" if rounded else "")
        if self.kind == "uniform":
            return (f"{text} = ln({self.classes}) = {self.constant:.10g}: "
                    "the loss of a uniform prediction over "
                    f"{self.classes} classes")
        if self.kind in ("nan", "inf"):
            return f"{text}: {self.name}"
        return f"{text}: no known constant"

    def to_dict(self):
        return {"text": self.text, "value": self.value, "known": self.known,
                "kind": self.kind, "name": self.name, "key": self.key,
                "constant": self.constant, "classes": self.classes,
                "negated": self.negated, "what": self.what, "why": self.why,
                "advice": self.advice}

    def __str__(self):
        paragraphs = [_fill(self.headline, subsequent_indent="  ")]
        for label, body in (("", self.what),
                            ("Why a loss sticks there: ", self.why),
                            ("What to do: ", self.advice)):
            if body:
                paragraphs.append(_fill(label + body))
        return "\n\n".join(paragraphs) + "\n"


def explain(value):
    """Name the constant a stuck loss value comes from.

    `value` is the loss as printed (a str, best: its digits carry the print
    precision) or a number.  Returns an Explanation; .known is False when
    the value matches nothing.  Raises ValueError when a string is not a
    number.
    """
    text = _as_text(value).strip()
    number, d = parse_value(text)
    if math.isnan(number):
        return Explanation(text, number, True, "nan", name="not a number",
                           what=NAN_STORY, advice=NAN_ADVICE)
    if d is None:               # an inf spelling; "1e999" is a decimal
        if number < 0:
            return Explanation(
                text, number, True, "inf",
                name="minus infinity: log(0), a log-likelihood rather than "
                     "a loss", what=INF_STORY, advice=INF_ADVICE)
        return Explanation(text, number, True, "inf",
                           name="infinity: -log(0)", what=INF_STORY,
                           advice=INF_ADVICE)
    constant = match_constant(text)
    if constant is not None:
        return Explanation(
            text, number, True, "constant", name=constant.name,
            constant=constant.value, key=constant.key, negated=number < 0,
            what=constant.what, why=constant.why, advice=constant.advice)
    classes = uniform_classes(text)
    if classes is not None:
        return Explanation(
            text, number, True, "uniform", name=f"ln({classes})",
            constant=math.log(classes), classes=classes,
            what=(f"ln({classes}) is the cross-entropy of a prediction that "
                  f"gives each of {classes} classes probability 1/{classes}."),
            why=("A loss that sits at ln(C) means the network outputs the "
                 "same score for every class: it has not started learning "
                 "(normal only at the very first iterations), or it "
                 "collapsed, e.g. dead ReLUs, a zero or saturated last layer, "
                 "a learning rate too high or too low, or labels that carry "
                 "no signal."),
            advice=("Check that the labels match the inputs and that the "
                    "gradients reach the last layer; try a different learning "
                    "rate and initialization.  If the network has a different "
                    "number of classes, this reading is a coincidence."))
    return Explanation(
        text, number, False, "unknown",
        what=("This value is not -ln of a floating-point limit, ln of a "
              "floating-point maximum, a known clamp (Keras's 1e-7, "
              "BCELoss's 100), or ln(C) of a class count C up to 10^6, at the "
              "precision it was printed with."),
        advice=("A loss stuck at a value like this is more likely a plateau "
                "of the optimisation than a numerical clamp; "
                "`python -m pysafemax explain` knows: " +
                ", ".join(f"{_g(c.value)} ({c.name})" for c in CONSTANTS) +
                ", nan and inf."))


def cli_explain(text, out=None, err=None):
    """`python -m pysafemax explain VALUE`: print the explanation.

    Exit code 0 when the value is known, 1 when it is not, 2 when `text`
    is not a number.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        result = explain(text)
    except ValueError as exc:
        err.write(f"pysafemax explain: {exc} (give the loss value as printed, "
                  "e.g. 87.3365 or nan)\n")
        return 2
    out.write(str(result))
    return 0 if result.known else 1
