"""`python -m pysafemax scan-log FILE`: find where a training loss got stuck.

Reads Caffe training logs (glog lines from solver.cpp and sgd_solver.cpp):

  I1126 10:11:12.345678 12345 solver.cpp:218] Iteration 100 (1.23 iter/s, 8.1s/20 iters), loss = 87.3365
  I1126 10:11:12.345701 12345 solver.cpp:237]     Train net output #0: loss = 87.3365 (* 1 = 87.3365 loss)
  I1126 10:11:12.345720 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.01

(older Caffe prints "Iteration 100, loss = X"; the test phase's "Test net
output" and "Test loss" lines are not training readings), and plain lines from
other frameworks: "loss = X", "loss: X", "loss=X", "'loss': X", with an
optional "step N" / "iter N" and "lr"/"learning_rate" on the same line;
"val_loss", "test loss" and the like are skipped.  A value is read as
tools.explain reads one: a decimal in ASCII digits, nan or inf ("0x1p3" and
other scripts' digits are no reading).

Each display step is one reading: Caffe's "loss =" (averaged over
average_loss iterations) together with the raw value of each loss output
("Train net output #k: NAME = X (* w = y loss)"), since a clamped output
shows in its raw value before it shows in the average.  A reading hits when
one of its values is nan or inf, or matches -ln(FLT_MIN) = 87.3365 or
-ln(DBL_MIN) = 708.396 within print rounding (the rule of tools.explain).
87.3365 is Caffe's clamp in float and in double alike (SoftmaxWithLoss clamps
at FLT_MIN for either Dtype; double prints 87.3365447505531); 708.396 is not
Caffe's: it comes from code that clamps at float64's own smallest normal
(numpy's finfo(float64).tiny, sys.float_info.min).  A value matching another
constant explain knows (Keras's -ln(1e-7), BCELoss's 100, the float16
limits...) hits only when printed identically in at least PLATEAU readings in
a row, since one reading of a three-digit number can be a coincidence.  A
loss sitting at ln(C), a uniform prediction over C classes, for PLATEAU
readings in a row is noted, and counts as stuck only when it lasts to the end
of the log.

The scan streams: it keeps counters and the readings the report quotes (the
first, the first hit, the TREND_WINDOW before it, the last LAST_KEPT...), so
its memory does not grow with the number of readings.  (Moved from
pysafemax.logscan, which re-exports it.)
"""
from __future__ import annotations

import io
import math
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, TextIO, Tuple, Union

from .explain import (CONSTANT_BY_KEY, NAN_STORY, NUMBER_SPELLING,
                      match_constant, parse_value, uniform_classes)
from .limits import FLT_MIN
from .text import abbreviate, fill

__all__ = ["scan_log", "cli_scan_log", "LogReport", "Reading", "Episode",
           "UniformPlateau", "PLATEAU", "TREND_WINDOW", "LAST_KEPT",
           "EPISODES_KEPT"]

PLATEAU = 3         # identical readings in a row that make a plateau
TREND_WINDOW = 5    # finite readings shown before the first hit
LAST_KEPT = 10      # the last readings a LogReport keeps
EPISODES_KEPT = 10  # the episodes of hits a LogReport lists
# Constants that hit on a single reading: -ln of the smallest normal float32
# (Caffe's clamp) and float64.
_CLAMPS = ("flt_min", "dbl_min")
_FLT_MIN = CONSTANT_BY_KEY["flt_min"]
_FLT_MAX = CONSTANT_BY_KEY["flt_max"]

# A printed number, as explain spells one, that ends where no letter, digit
# or "." + letter or digit follows: "0x1p3" and "1_000" are no readings of 0
# and 1.
_NUM = NUMBER_SPELLING + r"(?!\w|\.\w)"
# An iteration fits an int64: more digits are no iteration (and int() refuses
# more than 4300).
_ITERATION = r"[0-9]{1,18}(?![0-9])"

# A glog line (severity, [YYYY]MMDD, time, thread id, file:line]) and, when
# its message is one, the Caffe training message it carries: a loss, a loss
# output or a learning rate.
_GLOG_PREFIX = (r"\s*[IWEF][0-9]{4}(?:[0-9]{4})? [0-9]{2}:[0-9]{2}:[0-9]{2}"
                r"\.[0-9]+\s+[0-9]+\s+\S+:[0-9]+\]\s*")
# "Iteration N, loss = X", "Iteration N (r iter/s, ts/D iters), loss = X";
# forks add fields (NVIDIA's Caffe appends ", lr = X, ...").
_CAFFE_LOSS = (r"Iteration (?P<it>" + _ITERATION + r")\b.*?\bloss = "
               r"(?P<loss>" + _NUM + r")(?:.*?\blr = (?P<same_line_lr>"
               + _NUM + "))?")
# A net has a handful of outputs: an index of 4 digits is no output (and,
# the index rising within a reading, a reading holds at most 1000).
_CAFFE_OUTPUT = (r"Train net output #(?P<k>[0-9]{1,3}): (?P<name>\S+) = "
                 r"(?P<output>" + _NUM + r")(?P<weighted> \(\* )?")
_CAFFE_LR = (r"Iteration (?P<lr_it>" + _ITERATION + "), lr = (?P<lr>"
             + _NUM + ")")
_GLOG = re.compile(_GLOG_PREFIX + "(?i:" + _CAFFE_LOSS + "|" + _CAFFE_OUTPUT
                   + "|" + _CAFFE_LR + ")?")

_PLAIN_LOSS = re.compile(r"(?<![\w.])(?P<prefix>(?:[A-Za-z]+[ _\-/])?)loss"
                         r"['\"]?\s*[:=]\s*(?:tensor\()?(?P<num>" + _NUM + ")",
                         re.IGNORECASE)
_PLAIN_ITER = re.compile(r"\b(?:iter(?:ation)?s?|(?:global[ _])?step)\b"
                         r"['\"]?\s*[:=#]?\s*\[?\s*(?P<it>" + _ITERATION + ")",
                         re.IGNORECASE)
_PLAIN_LR = re.compile(r"(?<![\w.])(?:lr|learning[ _]rate)['\"]?\s*[:=]\s*"
                       r"(?P<num>" + _NUM + ")", re.IGNORECASE)
# Losses of a validation or test pass, not of training.
_HELD_OUT = re.compile(r"\b(?:val|valid|validation|test|testing|eval|"
                       r"evaluation|dev)\b|(?:val|valid|test|eval|dev)_",
                       re.IGNORECASE)
# Settings that end in "loss", not readings: Caffe's solver parameter.
_SETTINGS = ("average_",)
_PREFERRED_PREFIXES = ("", "train", "training", "total", "avg", "average",
                       "mean", "running", "batch")


@dataclass
class Reading:
    """One loss reading: a display step of the log."""

    line: int                       # 1-based line of the loss value
    iteration: Optional[int]
    text: Optional[str] = None      # the loss as printed (Caffe: smoothed)
    value: float = math.nan
    outputs: List[Tuple[str, str, float]] = field(default_factory=list)
    lr: Optional[str] = None        # learning rate as printed, if logged
    status: str = "ok"              # "ok", "nan", "inf", "clamp"
    hit_text: Optional[str] = None  # the value that hit
    hit_source: Optional[str] = None   # "loss" or "output #k: NAME"
    constant: Optional[str] = None  # the StuckValue key of a clamp

    @property
    def hit(self) -> bool:
        return self.status != "ok"

    @property
    def where(self) -> str:
        if self.iteration is None:
            return f"line {self.line}"
        return f"iteration {self.iteration} (line {self.line})"

    @property
    def short_where(self) -> str:
        return (f"line {self.line}" if self.iteration is None
                else f"iteration {self.iteration}")

    def values(self) -> List[Tuple[str, str, float]]:
        """(source, text, value) of the total and of each loss output."""
        found = []
        if self.text is not None:
            found.append(("loss", self.text, self.value))
        found.extend(self.outputs)
        return found

    @property
    def main(self) -> Tuple[str, float]:
        """(text, value) that represents this reading in a trend."""
        if self.text is not None:
            return self.text, self.value
        return self.outputs[0][1], self.outputs[0][2]


class _CaffeReadings:
    """Groups Caffe's glog messages into readings, one per display step, and
    passes each to `emit` when the next one starts: the lr line of a step
    comes after its loss."""

    def __init__(self, emit):
        self.emit = emit
        self.found = False          # a reading was seen
        self.lr_logged = False
        self.current = None         # the reading of the latest display step
        self.last_output = -1       # k of its latest "Train net output #k"
        self.iteration = None       # of the latest "Iteration N, loss" line
        self.early_lr = None        # (iteration, lr) logged before its loss

    def _start(self, reading):
        self.close()
        self.found = True
        self.current = reading
        self.last_output = -1

    def _take_early_lr(self, iteration):
        if self.early_lr is None or self.early_lr[0] != iteration:
            return None
        lr, self.early_lr = self.early_lr[1], None
        return lr

    def close(self):
        """Pass on the reading still open."""
        if self.current is not None:
            self.emit(self.current)
            self.current = None

    def feed(self, m, line_no):
        """Take a _GLOG match."""
        text = m.group("loss")
        if text is not None:
            it = int(m.group("it"))
            lr = m.group("same_line_lr")
            self.lr_logged = self.lr_logged or lr is not None
            self.iteration = it
            self._start(Reading(line_no, it, text, _float(text),
                                lr=lr or self._take_early_lr(it)))
            return
        text = m.group("output")
        if text is not None:
            name = m.group("name")
            # Loss outputs carry "(* weight = weighted loss)"; accuracy does not.
            if not m.group("weighted") and "loss" not in name.lower():
                return
            k = int(m.group("k"))
            # Caffe prints outputs #0, #1, ... once per display step: a
            # repeated index is the next step even without an Iteration line.
            if (self.current is None or self.current.iteration != self.iteration
                    or k <= self.last_output):
                self._start(Reading(line_no, self.iteration,
                                    lr=self._take_early_lr(self.iteration)))
            self.current.outputs.append((f"output #{k}: {name}", text,
                                         _float(text)))
            self.last_output = k
            return
        lr = m.group("lr")
        if lr is not None:
            it = int(m.group("lr_it"))
            if self.current is not None and self.current.iteration == it:
                self.current.lr = lr
            else:
                self.early_lr = (it, lr)
            self.lr_logged = True


def _plain_reading(text, line_no):
    """The Reading of a plain line, or None."""
    candidates = []
    for m in _PLAIN_LOSS.finditer(text):
        prefix = m.group("prefix").rstrip(" _-/").lower()
        if _HELD_OUT.search(text[:m.start("num")]):
            break       # everything from here on belongs to a held-out pass
        if m.group("prefix").lower() in _SETTINGS:
            continue
        candidates.append((prefix not in _PREFERRED_PREFIXES, m))
    if not candidates:
        return None
    m = min(candidates, key=lambda c: c[0])[1]
    it = _PLAIN_ITER.search(text[:m.start()]) or _PLAIN_ITER.search(text)
    lr = _PLAIN_LR.search(text)
    value_text = m.group("num")
    return Reading(line_no, int(it.group("it")) if it else None, value_text,
                   _float(value_text),
                   lr=lr.group("num") if lr else None)


def _ranges(keys):
    """(low, high) bounds of |value| within 1% of each constant in `keys`: a
    cheap filter before the exact rule, which never matches further away (3
    digits leave at most 0.5%)."""
    values = [CONSTANT_BY_KEY[key].value for key in keys]
    return tuple((0.99 * value, 1.01 * value) for value in values)


_CLAMP_RANGES = _ranges(_CLAMPS)
_FIRST_CLAMP = min(low for low, _ in _CLAMP_RANGES)
_CONSTANT_RANGES = _ranges(CONSTANT_BY_KEY)


def _near(value, ranges):
    value = abs(value)
    for low, high in ranges:        # a loop: any() on a generator is slower
        if low <= value <= high:
            return True
    return False


def _float(text):
    """The value of a number _NUM matched, as parse_value reads it: float()
    rounds its decimals as parse_value does, without building a Decimal, and
    parse_value reads the nan and inf spellings float() does not know."""
    try:
        return float(text)
    except ValueError:      # "1.#INF", "nan(ind)"
        return parse_value(text)[0]


def _set_hit(reading, status, text, source, constant=None):
    reading.status, reading.hit_text, reading.hit_source = status, text, source
    reading.constant = constant


def _mark_own_hit(reading):
    """The hit a reading shows by itself: nan, then inf or a clamp."""
    if not reading.outputs and 0 < reading.value < _FIRST_CLAMP:
        return None     # the usual reading: one value, below every clamp
    values = reading.values()
    for source, text, value in values:
        if math.isnan(value):
            return _set_hit(reading, "nan", text, source)
    for source, text, value in values:
        if math.isinf(value):
            return _set_hit(reading, "inf", text, source)
        if _near(value, _CLAMP_RANGES):
            constant = match_constant(text)
            if constant is not None and constant.key in _CLAMPS:
                return _set_hit(reading, "clamp", text, source, constant.key)
    return None


@dataclass
class Episode:
    """Consecutive readings that hit."""

    start: Reading      # the first of them
    length: int = 0     # how many


@dataclass
class UniformPlateau:
    """PLATEAU or more readings in a row printed at ln(C)."""

    first: Reading
    last: Reading
    length: int
    classes: int        # C
    to_end: bool        # it lasts to the end of the log


class _Scan:
    """Fills a LogReport from readings given in order, in memory independent
    of their number.  A reading's status is final once the run of identical
    prints it belongs to has reached PLATEAU or ended, so up to PLATEAU - 1
    readings wait in `run_waiting` before they are counted."""

    def __init__(self):
        self.report = LogReport()
        self.last = deque(maxlen=LAST_KEPT)
        self.before_hit = deque(maxlen=TREND_WINDOW)
        self.latest_lr = None       # the latest reading that logged an lr
        self.lowest_value = math.inf    # report.lowest's loss
        self.in_episode = False
        # The run of identical printed losses the latest reading is in.
        self.run_text = None
        self.run_first = self.run_last = None
        self.run_length = 0
        self.run_waiting = []
        self.run_constant = None    # the StuckValue the run's print matches

    def add(self, reading):
        _mark_own_hit(reading)
        text, value = reading.main
        if text != self.run_text:
            self._end_run(to_end=False)
            self.run_text, self.run_first = text, reading
        self.run_last = reading
        self.run_length += 1
        self.run_waiting.append(reading)
        if self.run_length < PLATEAU:
            return
        if self.run_length == PLATEAU and _near(value, _CONSTANT_RANGES):
            self.run_constant = match_constant(text)
        for waiting in self.run_waiting:
            if self.run_constant is not None and not waiting.hit:
                _set_hit(waiting, "clamp", text, "loss", self.run_constant.key)
            self._count(waiting)
        self.run_waiting = []

    def _end_run(self, to_end):
        for waiting in self.run_waiting:
            self._count(waiting)
        if self.run_length >= PLATEAU and not self.run_first.hit:
            classes = uniform_classes(self.run_text)
            if classes is not None:
                self.report.uniform = UniformPlateau(
                    self.run_first, self.run_last, self.run_length, classes,
                    to_end)
        self.run_waiting, self.run_length, self.run_constant = [], 0, None

    def _count(self, r):
        report = self.report
        if report.count == 0:
            report.first = r
        report.count += 1
        self.last.append(r)
        if r.iteration is not None:
            if report.first_iteration is None:
                report.first_iteration = r.iteration
            report.last_iteration = r.iteration
        if r.lr is not None:
            self.latest_lr = r
            if report.first_lr is None:
                report.first_lr = r
        if r.status != "ok":
            if report.first_hit is None:
                report.first_hit, report.lr_at_hit = r, self.latest_lr
            if not self.in_episode:
                self.in_episode = True
                report.episode_count += 1
                if report.episode_count <= EPISODES_KEPT:
                    report.episodes.append(Episode(r))
            if report.episode_count <= EPISODES_KEPT:
                report.episodes[-1].length += 1
            return
        if self.in_episode and report.recovered_at is None:
            report.recovered_at = r
        self.in_episode = False
        if report.first_hit is None:
            value = r.main[1]
            if math.isfinite(value):
                self.before_hit.append(r)
                if value < self.lowest_value:
                    report.lowest, self.lowest_value = r, value

    def finish(self, source, caffe, lr_logged):
        self._end_run(to_end=True)
        report = self.report
        report.source, report.caffe = source, caffe
        report.lr_logged = lr_logged
        report.last_readings = tuple(self.last)
        report.before_hit = tuple(self.before_hit)
        return report


@dataclass
class LogReport:
    """What scan_log found; str() is the report the CLI prints.

    It keeps counters and the readings the report quotes, not every
    reading: its size does not grow with the log.
    """

    source: Optional[str] = None
    caffe: bool = False             # a Caffe (glog) log, else plain lines
    lr_logged: bool = False
    count: int = 0                  # loss readings in the log
    first: Optional[Reading] = None
    last_readings: Tuple[Reading, ...] = ()     # the last LAST_KEPT
    first_iteration: Optional[int] = None
    last_iteration: Optional[int] = None
    first_hit: Optional[Reading] = None
    episode_count: int = 0          # runs of readings that hit
    # The first EPISODES_KEPT of them.
    episodes: List[Episode] = field(default_factory=list)
    recovered_at: Optional[Reading] = None  # the first reading after episode 1
    # The last TREND_WINDOW finite readings before the first hit, and the
    # lowest of all of them (of the whole log when none hits).
    before_hit: Tuple[Reading, ...] = ()
    lowest: Optional[Reading] = None
    first_lr: Optional[Reading] = None      # the first reading that logged lr
    lr_at_hit: Optional[Reading] = None     # the last such up to first_hit
    uniform: Optional[UniformPlateau] = None    # the last one

    # -- facts ---------------------------------------------------------
    @property
    def last(self) -> Optional[Reading]:
        return self.last_readings[-1] if self.last_readings else None

    @property
    def ends_stuck(self) -> bool:
        return self.last is not None and self.last.hit

    @property
    def stays(self) -> bool:
        """The first hit lasts to the end of the log."""
        return self.episode_count == 1 and self.ends_stuck

    @property
    def uniform_to_end(self) -> bool:
        return self.uniform is not None and self.uniform.to_end

    @property
    def stuck(self) -> bool:
        return self.episode_count > 0 or self.uniform_to_end

    @property
    def trend(self) -> str:
        """"none", "single", "rising", "falling" or "steady": the finite
        readings just before the first hit."""
        prior = self.before_hit
        if not prior:
            return "none"
        if len(prior) == 1:
            return "single"
        first, last = prior[0].main[1], prior[-1].main[1]
        if last > 1.2 * first:
            return "rising"
        if last < first / 1.2:
            return "falling"
        return "steady"

    def to_dict(self) -> Dict[str, Any]:
        """The report's facts as a JSON-ready dict."""
        hit, lr, rec = self.first_hit, self.lr_at_hit, self.recovered_at
        return {
            "source": self.source, "format": "caffe" if self.caffe else "plain",
            "readings": self.count, "stuck": self.stuck,
            "first_hit": None if hit is None else {
                "kind": hit.status, "value": hit.hit_text,
                "constant": hit.constant, "source": hit.hit_source,
                "iteration": hit.iteration, "line": hit.line},
            "stays": self.stays, "ends_stuck": self.ends_stuck,
            "recovered_at": None if rec is None else {
                "iteration": rec.iteration, "line": rec.line,
                "value": rec.main[0]},
            "episode_count": self.episode_count,
            "episodes": [{"start_iteration": e.start.iteration,
                          "start_line": e.start.line,
                          "readings": e.length} for e in self.episodes],
            "lr_at_hit": None if lr is None else lr.lr,
            "trend": self.trend if hit is not None else None,
            "uniform_classes": (None if self.uniform is None
                                else self.uniform.classes),
        }

    # -- words ---------------------------------------------------------
    def __str__(self) -> str:
        paragraphs = [self._summary()]
        if self.first_hit is not None:
            paragraphs.append(self._facts())
            paragraphs.append(fill("What it means: " + self._meaning()))
            paragraphs.append(fill("What to do: " + self._advice()))
        elif self.count:
            paragraphs.append(self._clean())
        if self.uniform is not None:
            paragraphs.append(fill(self._uniform_note()))
        return "\n\n".join(paragraphs) + "\n"

    def _summary(self):
        kind = "Caffe (glog)" if self.caffe else "plain-text"
        first, last = self.first_iteration, self.last_iteration
        span = ""
        if first is not None:
            span = (f", iteration {first}" if first == last
                    else f", iterations {first} to {last}")
        head = f"{self.source}: " if self.source else ""
        lr = "" if self.lr_logged else "; no learning rate logged"
        noun = "reading" if self.count == 1 else "readings"
        return fill(f"{head}{kind} log, {self.count} loss {noun}{span}{lr}.")

    def _clean(self):
        first, last, low = self.first, self.last, self.lowest
        text = (f"The loss never hit {_FLT_MIN.value:g} (-ln(FLT_MIN), "
                "Caffe's clamp), nan or inf: ")
        if first is last:
            return fill(text + f"its one reading is {_loss(first)} "
                                f"({first.where}).")
        text += (f"it went from {_loss(first)} ({first.short_where}) to "
                 f"{_loss(last)} ({last.short_where})")
        if low is not last:
            text += f", lowest {_loss(low)} at {low.short_where}"
        return fill(text + ".")

    def _hit_phrase(self, r):
        value = f"{abbreviate(r.hit_source)} = {abbreviate(r.hit_text)}"
        name = {"nan": "not a number", "inf": "-log(0)"}.get(r.status)
        if r.constant:
            name = CONSTANT_BY_KEY[r.constant].name
        return f"{value} ({name})"

    def _facts(self):
        hit = self.first_hit
        lines = [f"First hit: {self._hit_phrase(hit)} at {hit.where}."]
        if hit.hit_source != "loss" and hit.text is not None:
            lines[0] += (f"  The averaged 'loss =' line read {_loss(hit)} "
                         "there (Caffe averages it over average_loss "
                         "iterations).")
        n = self.episodes[0].length
        last = self.last
        if self.stays and n == 1:
            lines.append("Stays there: it is the last reading of the log.")
        elif self.stays:
            lines.append(
                f"Stays there: all {n} reading{'s' if n > 1 else ''} from "
                f"{hit.short_where} to the end of the log ({last.short_where}) "
                "hit it.")
        else:
            rec = self.recovered_at
            lines.append(
                f"Recovers: {n} reading{'s' if n > 1 else ''} hit, then the "
                f"loss reads {_loss(rec)} at {rec.where}.")
            if self.episode_count > 1:
                again = self.episodes[1].start
                more = self.episode_count - 1
                lines.append(
                    f"It hits again at {again.where}: "
                    f"{abbreviate(again.hit_text)}, "
                    f"{more} more episode{'s' if more > 1 else ''} in all"
                    + ("; it is stuck at the end of the log."
                       if self.ends_stuck else "; the log ends on a "
                       f"reading that does not hit ({last.short_where}, "
                       f"loss {_loss(last)})."))
            else:
                lines.append(f"No further hits up to the end of the log "
                             f"({last.short_where}, loss {_loss(last)}).")
        lines.append(self._trend_sentence())
        lines.append(self._lr_sentence())
        return "\n".join(fill(line, subsequent_indent="  ") for line in lines)

    def _trend_sentence(self):
        window, low = self.before_hit, self.lowest
        if not window:
            return ("Before it: no finite reading; it hit at the first "
                    "reading of the log.")
        values = " -> ".join(f"{r.main[1]:.4g}" for r in window)
        span = (f" ({window[0].short_where} to {window[-1].short_where})"
                if len(window) > 1 else f" ({window[0].short_where})")
        lowest = (f"; lowest {low.main[1]:.4g} at {low.short_where}"
                  if low is not window[-1] else "")
        if len(window) == 1:
            return f"Before it: one reading, {values}{span}."
        return f"Before it: the loss was {self.trend}: {values}{span}{lowest}."

    def _lr_sentence(self):
        at, first = self.lr_at_hit, self.first_lr
        if at is None:
            return "Learning rate: not logged."
        sentence = f"Learning rate: {abbreviate(at.lr)} at {at.short_where}"
        if first is not at:
            lr, first_lr = parse_value(at.lr)[0], parse_value(first.lr)[0]
            if lr == first_lr:
                sentence += f", unchanged since {first.short_where}"
            else:
                sentence += (f", was {abbreviate(first.lr)} at "
                             f"{first.short_where}")
                if lr > first_lr:
                    sentence += " (it rose before the hit)"
        return sentence + "."

    def _meaning(self):
        hit = self.first_hit
        if hit.status == "nan":
            text = NAN_STORY
        elif hit.status == "inf":
            text = ("inf is -log(0): a label probability reached exactly 0 "
                    "with nothing to clamp it (a log taken of a softmax "
                    "output), or the loss summed an overflowed value.")
        elif hit.constant == "flt_min":
            c = _FLT_MIN
            text = (f"{c.value:g} = {c.name}: Caffe's SoftmaxWithLoss clamps "
                    f"the label probability at FLT_MIN = {FLT_MIN:g}, the "
                    "smallest normal float32, in float and in double alike, "
                    "so each sample whose label probability fell below "
                    f"FLT_MIN adds exactly {c.value:g}; a reading of exactly "
                    "this value means every sample was clamped.  Their logits "
                    f"had a gap above {c.value:.4g} (the probability fell "
                    f"below FLT_MIN), or a logit above {_FLT_MAX.value:.4g} = "
                    "ln(FLT_MAX) overflowed a float32 exp() and x/inf = 0 "
                    "(the softmax itself overflowed).  The clamp hides how "
                    "large the true loss is.")
        else:
            c = CONSTANT_BY_KEY[hit.constant]
            text = f"{c.value:g} = {c.name}.  {c.what}  {c.why}"
        return text + "  " + self._course() + "  " + self._onset()

    def _course(self):
        """What staying, recovering or relapsing says."""
        if self.stays:
            if self.first_hit.status == "nan":
                return ("It stayed nan to the end of the log: once a weight "
                        "is nan every later loss is nan, and the run will "
                        "not recover by itself.")
            return ("It stayed there to the end of the log: the weights have "
                    "blown up and the network is confidently wrong on every "
                    "sample; the run has diverged and will not recover by "
                    "itself.")
        if self.episode_count == 1:
            if self.first_hit.status == "nan":
                return ("It recovered, so the weights did not turn nan: "
                        "single batches produced it (an overflow in their "
                        "forward pass, or nan/inf in their inputs), or a loss "
                        "scaler skipped those steps.")
            return ("It recovered, so the run survived: a few batches blew "
                    "up (a spike, a bad batch or an outlier label), and their "
                    "true loss was higher than the log shows.")
        if self.ends_stuck:
            more = self.episode_count - 1
            return (f"It recovered for a while but hit again "
                    f"{more} more time{'s' if more > 1 else ''} and is stuck at "
                    "the end of the log: the run sits at the edge of "
                    "stability and has now diverged.")
        return (f"It recovered each of the {self.episode_count} times: some "
                "batches blow up (bad batches, outlier labels, or a learning "
                "rate at the edge of stability), and their true loss was "
                "higher than the log shows.")

    def _onset(self):
        """What the loss did before the first hit says."""
        trend = self.trend
        if trend == "rising":
            return ("The loss was rising before the hit: the run was "
                    "diverging (learning rate too high, or exploding "
                    "gradients).")
        if trend == "none":
            return ("It hit at the first reading of the log, so (unless the "
                    "log starts mid-run) the problem is there from the "
                    "start: the data or labels, the initialization, or "
                    "frozen BatchNorm statistics, rather than a divergence.")
        how = ("jumped there from the reading before" if trend == "single"
               else f"was {trend} and then jumped")
        return (f"The loss {how}: a sudden blow-up (a bad batch with nan/inf "
                "inputs or a label out of range, or a learning-rate step) "
                "rather than a slow divergence.")

    def _advice(self):
        hit = self.first_hit
        lr = self.lr_at_hit
        lr_text = f" (logged: {abbreviate(lr.lr)})" if lr else ""
        lower_lr = (f"lower the learning rate{lr_text}, e.g. 10x, and "
                    "consider gradient clipping")
        data = ("check the data and the labels (nan or inf in the inputs, "
                "labels outside [0, classes))")
        init = "use smaller initial weights"
        bn = "don't freeze BatchNorm statistics (use_global_stats) when fine-tuning"
        if self.trend == "none":
            steps = [data, init, bn, lower_lr]
        elif self.trend == "rising":
            steps = [lower_lr, init, data, bn]
        else:
            steps = [data, lower_lr, init, bn]
        text = "In order of the evidence: " + "; ".join(steps) + "."
        if self.ends_stuck and self.trend != "none":
            saved = "snapshot" if self.caffe else "checkpoint"
            text += (f"  Restart from a {saved} saved before "
                     f"{hit.short_where}; the weights after it are lost.")
        text += ("  Save the logits and labels of a failing batch and run "
                 "`python -m pysafemax diagnose LOGITS.npy LABELS.npy` to "
                 "see which one applies; `python -m pysafemax explain "
                 f"{abbreviate(hit.hit_text)}` explains the value.")
        return text

    def _uniform_note(self):
        plateau = self.uniform
        classes = plateau.classes
        text = (f"Note: the loss sat at {_loss(plateau.first)} = ln({classes}), "
                f"the loss of a uniform prediction over {classes} classes, "
                f"from {plateau.first.short_where} to "
                f"{plateau.last.short_where} ({plateau.length} readings)")
        if self.uniform_to_end:
            text += (": it never left it, so the network outputs the same "
                     "score for every class and is not learning (dead "
                     "ReLUs, a zero or saturated last layer, a learning "
                     "rate too high or too low, labels without signal).")
        else:
            text += ", then started to learn."
        return text


def _loss(reading):
    """The loss of a reading as printed, as the report quotes it."""
    return abbreviate(reading.main[0])


def scan_log(lines: Iterable[Union[str, bytes]],
             source: Optional[str] = None) -> LogReport:
    """Scan training-log lines, one at a time.

    Parameters
    ----------
    lines : iterable of str or bytes
        The log's lines (an open file will do); bytes are read as UTF-8.
    source : str, optional
        The log's name, for the report.

    Returns
    -------
    LogReport
        What was found; ``report.count`` is 0 when no line holds a loss,
        and str() of it is the report the command line prints.

    Examples
    --------
    >>> from pysafemax.tools.scan_log import scan_log
    >>> report = scan_log(["loss = 2.3", "loss = 1.5", "loss = 87.3365",
    ...                    "loss = 87.3365"])
    >>> report.count, report.stuck, report.stays
    (4, True, True)
    >>> report.first_hit.line, report.first_hit.constant
    (3, 'flt_min')
    """
    caffe_scan, plain_scan = _Scan(), _Scan()
    caffe = _CaffeReadings(caffe_scan.add)
    plain_lr_logged = False
    for line_no, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        glog = _GLOG.match(line)
        if glog:
            caffe.feed(glog, line_no)
        elif not caffe.found:
            # In a Caffe log the losses are in glog lines; the other lines
            # are parameter dumps ("average_loss: 10") and the like.
            reading = _plain_reading(line, line_no)
            if reading is not None:
                plain_lr_logged = plain_lr_logged or reading.lr is not None
                plain_scan.add(reading)
    caffe.close()
    if caffe.found:
        return caffe_scan.finish(source, True, caffe.lr_logged)
    return plain_scan.finish(source, False, plain_lr_logged)


def _stdin_lines():
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:          # replaced by a text stream, as in tests
        yield from sys.stdin
        return
    stream = io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")
    try:
        yield from stream
    finally:
        stream.detach()         # leave sys.stdin's buffer open


def cli_scan_log(path: str, out: Optional[TextIO] = None,
                 err: Optional[TextIO] = None) -> int:
    """`python -m pysafemax scan-log FILE`: print the report.

    Parameters
    ----------
    path : str
        The log file; "-" reads standard input.
    out, err : text file, optional
        Where the report and the error line go (default: sys.stdout and
        sys.stderr).

    Returns
    -------
    int
        The exit code: 0 when the loss never stuck, 1 when it hit 87.3365,
        nan or another clamp, 2 when the file cannot be read or holds no
        loss lines.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            report = scan_log(_stdin_lines(), source=None)
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                report = scan_log(f, source=path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        err.write(f"pysafemax scan-log: cannot read {name}: {reason}\n")
        return 2
    if report.count == 0:
        err.write(f"pysafemax scan-log: no loss readings in {name} (expected "
                  "Caffe 'Iteration N, loss = X' lines or 'loss = X' / "
                  "'loss: X' lines)\n")
        return 2
    out.write(str(report))
    return 1 if report.stuck else 0
