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

The constants and their texts are data, stuck_values.json beside this
module (its "about" says how it is read); their values are computed from the
float limits of pysafemax.tools.limits (numpy's finfo) or spelled as
decimals in it, never typed in as digits: the decimals in the texts are
printed from the values.  (Moved from pysafemax.explain, which re-exports it.)
"""
from __future__ import annotations

import decimal
import json
import math
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, TextIO, Tuple, Union

import numpy as np

from . import limits
from .text import abbreviate, fill, number

__all__ = ["explain", "cli_explain", "Explanation", "StuckValue", "CONSTANTS",
           "CONSTANT_BY_KEY", "parse_value", "matches", "match_constant",
           "uniform_classes", "NUMBER_SPELLING", "REL_TOL", "MIN_DIGITS",
           "MAX_CLASSES", "NAN_STORY", "NAN_ADVICE", "INF_STORY", "INF_ADVICE"]

REL_TOL = 5e-5      # rule (b)
MIN_DIGITS = 3      # rule (a) needs at least this many significant digits
MAX_CLASSES = 10 ** 6
DATA_FILE = "stuck_values.json"


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

    def __post_init__(self) -> None:
        rounded: List[Tuple[str, float]] = []
        for dtype in self.dtypes:
            r = float(dtype(self.value))
            if r != self.value and r not in (v for _, v in rounded):
                rounded.append((np.dtype(dtype).name, r))
        object.__setattr__(self, "rounded", tuple(rounded))
        object.__setattr__(self, "representations",
                           (float(self.value),) + tuple(v for _, v in rounded))


# The limits a value or a text of the data file may name.
_LIMITS = {name: getattr(limits, name) for name in limits.__all__
           if isinstance(getattr(limits, name), float)}


def _quantity(text: str) -> float:
    """A limit's name or a decimal, as the data file spells a quantity."""
    return _LIMITS[text] if text in _LIMITS else float(text)


def _value(spec: str) -> float:
    """A constant's value from the data file: a quantity, or ln(q) or
    -ln(q) of one."""
    m = re.fullmatch(r"(-?)ln\((.+)\)", spec)
    if m is None:
        return _quantity(spec)
    value = math.log(_quantity(m.group(2)))
    return -value if m.group(1) else value


def _text(item: Union[str, List[str]], names: Dict[str, Any]) -> str:
    """A text of the data file, its parts joined and its fields filled."""
    text = item if isinstance(item, str) else "".join(item)
    return text.format_map(names)


def _load() -> Tuple[Tuple[StuckValue, ...], Dict[str, str], Dict[str, str]]:
    """(constants, nan texts, inf texts) from the data file."""
    raw = resources.files(__package__).joinpath(DATA_FILE).read_text(
        encoding="utf-8")
    data = json.loads(raw)
    names = dict(_LIMITS)
    for name, item in data["fragments"].items():
        names[name] = _text(item, names)
    constants = []
    for entry in data["constants"]:
        value = _value(entry["value"])
        dtypes = tuple(np.dtype(name).type
                       for name in entry.get("dtypes", ["float32"]))
        own = dict(names, value=value)
        own.update((np.dtype(t).name, float(t(value))) for t in dtypes)
        constants.append(StuckValue(
            entry["key"], entry["name"], value, entry["formula"],
            _text(entry["what"], own), _text(entry["why"], own),
            _text(entry["advice"], own), dtypes=dtypes))
    nan, inf = ({key: _text(item, names) for key, item in data[special].items()}
                for special in ("nan", "inf"))
    return tuple(constants), nan, inf


CONSTANTS, _NAN_TEXTS, _INF_TEXTS = _load()
CONSTANT_BY_KEY = {c.key: c for c in CONSTANTS}
NAN_STORY, NAN_ADVICE = _NAN_TEXTS["what"], _NAN_TEXTS["advice"]
INF_STORY, INF_ADVICE = _INF_TEXTS["what"], _INF_TEXTS["advice"]

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


def parse_value(text: object) -> Tuple[float, Optional[decimal.Decimal]]:
    """The value of a printed number, and its printed digits.

    Accepts decimal and exponent notation in ASCII digits and the usual
    spellings of nan and inf ("nan", "-nan", "NaN", "nan(ind)", "1.#QNAN",
    "inf", "-Infinity", "1.#INF").

    Parameters
    ----------
    text : str
        The number as printed (anything else is read as its str()).

    Returns
    -------
    value : float
        The number.  A decimal beyond float64's range ("1e999") has the
        value inf.
    digits : decimal.Decimal or None
        The printed digits, which the matching rule needs; None for nan and
        inf.

    Raises
    ------
    ValueError
        If `text` is not a number.

    Examples
    --------
    >>> from pysafemax.tools.explain import parse_value
    >>> parse_value("87.3365")
    (87.3365, Decimal('87.3365'))
    >>> parse_value("-nan")
    (nan, None)
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


def _as_text(value: object) -> str:
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


def _half_ulp(d: decimal.Decimal) -> decimal.Decimal:
    """Half a unit in the last printed place of d, as a Decimal."""
    # the exponent of a finite Decimal is an int ('n', 'N' or 'F' otherwise)
    return decimal.Decimal(5).scaleb(int(d.as_tuple().exponent) - 1)


def _significant_digits(d: decimal.Decimal) -> int:
    digits = d.as_tuple().digits
    return len(digits) if any(digits) else 0


def matches(text: object, constant: Union[StuckValue, float]) -> bool:
    """Does the printed value `text` match `constant`?

    The rule is in the module docstring: (a) rounds back at the printed
    precision with >= 3 significant digits, or (b) relative difference
    <= 5e-5.  Compares magnitudes: nan and inf never match.

    Parameters
    ----------
    text : str
        The value as printed, read by parse_value().
    constant : StuckValue or float
        A StuckValue (each of its representations is tried) or a number.

    Returns
    -------
    bool
        Whether the value matches.

    Raises
    ------
    ValueError
        If `text` is not a number.

    Examples
    --------
    >>> from pysafemax.tools.explain import matches
    >>> matches("87.3365", 87.33654475), matches("-87.34", 87.33654475)
    (True, True)
    """
    reps = (constant.representations if isinstance(constant, StuckValue)
            else (float(constant),))
    return _matches(*parse_value(text), reps)


def _matches(value: float, d: Optional[decimal.Decimal],
             reps: Tuple[float, ...]) -> bool:
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


def match_constant(text: object) -> Optional[StuckValue]:
    """The constant a printed value matches (magnitude only).

    Parameters
    ----------
    text : str
        The value as printed, read by parse_value().

    Returns
    -------
    StuckValue or None
        The first of CONSTANTS the value matches, or None.

    Raises
    ------
    ValueError
        If `text` is not a number.

    Examples
    --------
    >>> from pysafemax.tools.explain import match_constant
    >>> match_constant("87.3365").name
    '-ln(FLT_MIN)'
    """
    value, d = parse_value(text)
    for constant in CONSTANTS:
        if _matches(value, d, constant.representations):
            return constant
    return None


def uniform_classes(text: object) -> Optional[int]:
    """C if the printed value is ln(C) for exactly one integer C in
    [2, 10^6] under the same rounding rule, else None.

    ln(C) is the loss of a uniform prediction over C classes.  The interval
    the print stands for, [v - h, v + h] with h half a unit in its last place
    (rule (a), at least 3 significant digits), is mapped through exp and must
    hold exactly one integer; when it holds none, the wider interval of rule
    (b), h = 5e-5 v, is tried the same way.  Several integers mean the print
    does not pin C down (ln(10^6) printed with 6 digits fits about 100 of
    them).

    Parameters
    ----------
    text : str
        The value as printed, read by parse_value().

    Returns
    -------
    int or None
        The class count C, or None.

    Raises
    ------
    ValueError
        If `text` is not a number.

    Examples
    --------
    >>> from pysafemax.tools.explain import uniform_classes
    >>> uniform_classes("2.30259"), uniform_classes("87.3365")
    (10, None)
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
    def headline(self) -> str:
        text = abbreviate(self.text)
        if self.kind == "constant":
            assert self.key is not None     # set with kind "constant"
            c = CONSTANT_BY_KEY[self.key]
            line = (f"{text} is the negative of {c.name}" if self.negated
                    else f"{text} = {c.name}")
            if c.formula and c.formula != c.name:
                line += f" = {c.formula}"
            line += f" = {c.value:.10g}"
            rounded = [f"{name}: {number(r, 8)}" for name, r in c.rounded]
            return line + (f" ({', '.join(rounded)})" if rounded else "")
        if self.kind == "uniform":
            return (f"{text} = ln({self.classes}) = {self.constant:.10g}: "
                    "the loss of a uniform prediction over "
                    f"{self.classes} classes")
        if self.kind in ("nan", "inf"):
            return f"{text}: {self.name}"
        return f"{text}: no known constant"

    def to_dict(self) -> Dict[str, Any]:
        """The explanation as a JSON-ready dict of its fields."""
        return {"text": self.text, "value": self.value, "known": self.known,
                "kind": self.kind, "name": self.name, "key": self.key,
                "constant": self.constant, "classes": self.classes,
                "negated": self.negated, "what": self.what, "why": self.why,
                "advice": self.advice}

    def __str__(self) -> str:
        paragraphs = [fill(self.headline, subsequent_indent="  ")]
        for label, body in (("", self.what),
                            ("Why a loss sticks there: ", self.why),
                            ("What to do: ", self.advice)):
            if body:
                paragraphs.append(fill(label + body))
        return "\n\n".join(paragraphs) + "\n"


def explain(value: Union[str, float, decimal.Decimal, np.generic]) -> Explanation:
    """Name the constant a stuck loss value comes from.

    Parameters
    ----------
    value : str or real number
        The loss as printed (a str, best: its digits carry the print
        precision) or a number.

    Returns
    -------
    Explanation
        What the value is; ``.known`` is False when it matches nothing, and
        str() of it is the paragraph the command line prints.

    Raises
    ------
    ValueError
        If a string is not a number.
    TypeError
        If `value` is neither a str nor a real number.

    Examples
    --------
    >>> from pysafemax.tools.explain import explain
    >>> found = explain("87.3365")
    >>> found.kind, found.key
    ('constant', 'flt_min')
    >>> found.headline
    '87.3365 = -ln(FLT_MIN) = -ln(2^-126) = 87.33654475 (float32: 87.336548)'
    >>> explain("1.234").known
    False
    """
    text = _as_text(value).strip()
    parsed, d = parse_value(text)
    if math.isnan(parsed):
        return Explanation(text, parsed, True, "nan", name="not a number",
                           what=NAN_STORY, advice=NAN_ADVICE)
    if d is None:               # an inf spelling; "1e999" is a decimal
        if parsed < 0:
            return Explanation(
                text, parsed, True, "inf",
                name="minus infinity: log(0), a log-likelihood rather than "
                     "a loss", what=INF_STORY, advice=INF_ADVICE)
        return Explanation(text, parsed, True, "inf",
                           name="infinity: -log(0)", what=INF_STORY,
                           advice=INF_ADVICE)
    constant = match_constant(text)
    if constant is not None:
        return Explanation(
            text, parsed, True, "constant", name=constant.name,
            constant=constant.value, key=constant.key, negated=parsed < 0,
            what=constant.what, why=constant.why, advice=constant.advice)
    classes = uniform_classes(text)
    if classes is not None:
        return Explanation(
            text, parsed, True, "uniform", name=f"ln({classes})",
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
        text, parsed, False, "unknown",
        what=("This value is not -ln of a floating-point limit, ln of a "
              "floating-point maximum, a known clamp (Keras's 1e-7, "
              "BCELoss's 100), or ln(C) of a class count C up to 10^6, at the "
              "precision it was printed with."),
        advice=("A loss stuck at a value like this is more likely a plateau "
                "of the optimisation than a numerical clamp; "
                "`python -m pysafemax explain` knows: " +
                ", ".join(f"{number(c.value)} ({c.name})" for c in CONSTANTS) +
                ", nan and inf."))


def cli_explain(text: str, out: Optional[TextIO] = None,
                err: Optional[TextIO] = None) -> int:
    """`python -m pysafemax explain VALUE`: print the explanation.

    Parameters
    ----------
    text : str
        The value as printed.
    out, err : text file, optional
        Where the explanation and the error line go (default: sys.stdout
        and sys.stderr).

    Returns
    -------
    int
        The exit code: 0 when the value is known, 1 when it is not, 2 when
        `text` is not a number.
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
