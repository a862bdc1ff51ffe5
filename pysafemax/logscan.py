"""`python -m pysafemax scan-log FILE`: find where a training loss got stuck.

Reads Caffe training logs (glog lines from solver.cpp and sgd_solver.cpp):

  I1126 10:11:12.345678 12345 solver.cpp:218] Iteration 100 (1.23 iter/s, 8.1s/20 iters), loss = 87.3365
  I1126 10:11:12.345701 12345 solver.cpp:237]     Train net output #0: loss = 87.3365 (* 1 = 87.3365 loss)
  I1126 10:11:12.345720 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.01

(older Caffe prints "Iteration 100, loss = X"; the test phase's "Test net
output" and "Test loss" lines are not training readings), and plain lines from
other frameworks: "loss = X", "loss: X", "loss=X", "'loss': X", with an
optional "step N" / "iter N" and "lr"/"learning_rate" on the same line;
"val_loss", "test loss" and the like are skipped.

Each display step is one reading: Caffe's "loss =" (averaged over
average_loss iterations) together with the raw value of each loss output
("Train net output #k: NAME = X (* w = y loss)"), since a clamped output
shows in its raw value before it shows in the average.  A reading hits when
one of its values is nan or inf, or matches -ln(FLT_MIN) = 87.3365 (Caffe's
clamp) or -ln(DBL_MIN) = 708.396 within print rounding (the rule of
pysafemax.explain); a value matching another constant explain knows (Keras's
-ln(1e-7), BCELoss's 100, the float16 limits...) hits only when printed
identically in at least PLATEAU readings in a row, since one reading of a
three-digit number can be a coincidence.  A loss sitting at ln(C), a uniform
prediction over C classes, for PLATEAU readings in a row is noted, and
counts as stuck only when it lasts to the end of the log.
"""
import io
import math
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .explain import (CONSTANTS, NAN_STORY, match_constant, parse_value,
                      uniform_classes)

__all__ = ["scan_log", "cli_scan_log", "LogReport", "Reading", "PLATEAU"]

PLATEAU = 3        # identical readings in a row that make a plateau
TREND_WINDOW = 5   # finite readings shown before the first hit
WIDTH = 79
_CAFFE_CLAMPS = ("flt_min", "dbl_min")
_FLT_MIN = next(c for c in CONSTANTS if c.key == "flt_min")
_FLT_MAX = next(c for c in CONSTANTS if c.key == "flt_max")

# A printed number, nan or inf as C++, Python, numpy and MSVC spell them.
_NUM = (r"(?:[-+]?1\.#(?:INF|QNAN|SNAN|IND)0*"
        r"|[-+]?nan(?:\([^)]*\))?(?![\w])"
        r"|[-+]?inf(?:inity)?(?![\w])"
        r"|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")

# glog: severity, [YYYY]MMDD, time, thread id, file:line] message.
_GLOG = re.compile(r"^\s*[IWEF]\d{4}(?:\d{4})? \d\d:\d\d:\d\d\.\d+\s+\d+\s+"
                   r"\S+:\d+\]\s?(?P<msg>.*)$")
# "Iteration N, loss = X", "Iteration N (r iter/s, ts/D iters), loss = X";
# forks add fields (NVIDIA's Caffe appends ", lr = X, ...").
_CAFFE_LOSS = re.compile(r"^\s*Iteration (?P<it>\d+)\b.*?\bloss = "
                         r"(?P<num>" + _NUM + ")", re.IGNORECASE)
_SAME_LINE_LR = re.compile(r"\blr = (?P<num>" + _NUM + ")", re.IGNORECASE)
_CAFFE_OUTPUT = re.compile(r"^\s*Train net output #(?P<k>\d+): (?P<name>\S+) = "
                           r"(?P<num>" + _NUM + r")(?P<weighted> \(\* )?",
                           re.IGNORECASE)
_CAFFE_LR = re.compile(r"^\s*Iteration (?P<it>\d+), lr = (?P<num>" + _NUM + ")",
                       re.IGNORECASE)

_PLAIN_LOSS = re.compile(r"(?<![\w.])(?P<prefix>(?:[A-Za-z]+[ _\-/])?)loss"
                         r"['\"]?\s*[:=]\s*(?:tensor\()?(?P<num>" + _NUM + ")",
                         re.IGNORECASE)
_PLAIN_ITER = re.compile(r"\b(?:iter(?:ation)?s?|(?:global[ _])?step)\b"
                         r"['\"]?\s*[:=#]?\s*\[?\s*(?P<it>\d+)", re.IGNORECASE)
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
    def hit(self):
        return self.status != "ok"

    @property
    def where(self):
        if self.iteration is None:
            return f"line {self.line}"
        return f"iteration {self.iteration} (line {self.line})"

    @property
    def short_where(self):
        return (f"line {self.line}" if self.iteration is None
                else f"iteration {self.iteration}")

    def values(self):
        """(source, text, value) of the total and of each loss output."""
        found = []
        if self.text is not None:
            found.append(("loss", self.text, self.value))
        found.extend(self.outputs)
        return found

    @property
    def main(self):
        """(text, value) that represents this reading in a trend."""
        if self.text is not None:
            return self.text, self.value
        return self.outputs[0][1], self.outputs[0][2]


def _parse_caffe(msg, line_no, readings, pending_lr, state):
    m = _CAFFE_LOSS.match(msg)
    if m:
        text = m.group("num")
        it = int(m.group("it"))
        lr = _SAME_LINE_LR.search(msg, m.end())
        readings.append(Reading(line_no, it, text, parse_value(text)[0],
                                lr=lr.group("num") if lr else
                                pending_lr.pop(it, None)))
        if lr:
            state["caffe_lr_logged"] = True
        state["iteration"] = it
        state["caffe"] = True
        return
    m = _CAFFE_OUTPUT.match(msg)
    if m:
        name = m.group("name")
        # Loss outputs carry "(* weight = weighted loss)"; accuracy does not.
        if not m.group("weighted") and "loss" not in name.lower():
            return
        text = m.group("num")
        it = state.get("iteration")
        if not readings or readings[-1].iteration != it:
            readings.append(Reading(line_no, it, lr=pending_lr.pop(it, None)))
        readings[-1].outputs.append((f"output #{m.group('k')}: {name}", text,
                                     parse_value(text)[0]))
        state["caffe"] = True
        return
    m = _CAFFE_LR.match(msg)
    if m:
        it = int(m.group("it"))
        if readings and readings[-1].iteration == it:
            readings[-1].lr = m.group("num")
        else:
            pending_lr[it] = m.group("num")
        state["caffe_lr_logged"] = True


def _parse_plain(text, line_no, readings, state):
    candidates = []
    for m in _PLAIN_LOSS.finditer(text):
        prefix = m.group("prefix").rstrip(" _-/").lower()
        if _HELD_OUT.search(text[:m.start("num")]):
            break       # everything from here on belongs to a held-out pass
        if m.group("prefix").lower() in _SETTINGS:
            continue
        candidates.append((prefix not in _PREFERRED_PREFIXES, m))
    if not candidates:
        return
    m = min(candidates, key=lambda c: c[0])[1]
    it = _PLAIN_ITER.search(text[:m.start()]) or _PLAIN_ITER.search(text)
    lr = _PLAIN_LR.search(text)
    value_text = m.group("num")
    readings.append(Reading(line_no, int(it.group("it")) if it else None,
                            value_text, parse_value(value_text)[0],
                            lr=lr.group("num") if lr else None))
    if lr:
        state["plain_lr_logged"] = True


def _parse(lines):
    caffe, plain, pending_lr, state = [], [], {}, {}
    for line_no, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        g = _GLOG.match(raw)
        if g:
            _parse_caffe(g.group("msg"), line_no, caffe, pending_lr, state)
        else:
            _parse_plain(raw, line_no, plain, state)
    # In a Caffe log the losses are in glog lines; the other lines are
    # parameter dumps ("average_loss: 10") and the like.
    return (caffe if caffe else plain), state


def _near(value, keys, rel=0.01):
    """A cheap filter before the exact rule: within 1% of a constant (the
    rule never matches further away: 3 digits leave at most 0.5%)."""
    return any(abs(abs(value) - c.value) <= rel * c.value
               for c in CONSTANTS if keys is None or c.key in keys)


def _classify(readings):
    """Set status/hit fields: nan, inf, Caffe's clamps, then plateaus."""
    for r in readings:
        for source, text, value in r.values():
            if math.isnan(value):
                r.status, r.hit_text, r.hit_source = "nan", text, source
                break
        if r.hit:
            continue
        for source, text, value in r.values():
            if math.isinf(value):
                r.status, r.hit_text, r.hit_source = "inf", text, source
                break
            if not _near(value, _CAFFE_CLAMPS):
                continue
            constant = match_constant(text)
            if constant is not None and constant.key in _CAFFE_CLAMPS:
                r.status, r.hit_text, r.hit_source = "clamp", text, source
                r.constant = constant.key
                break
    # Other constants: only as plateaus of identical prints.
    for start, end, text in _plateaus(readings):
        if not _near(readings[start].main[1], None):
            continue
        constant = match_constant(text)
        if constant is None:
            continue
        for r in readings[start:end]:
            if not r.hit:
                r.status, r.hit_text, r.hit_source = "clamp", text, "loss"
                r.constant = constant.key


def _plateaus(readings):
    """(start, end, text) of runs of >= PLATEAU identical printed losses."""
    runs, start = [], 0
    for i in range(1, len(readings) + 1):
        if (i == len(readings)
                or readings[i].main[0] != readings[start].main[0]):
            if i - start >= PLATEAU:
                runs.append((start, i, readings[start].main[0]))
            start = i
    return runs


def _episodes(readings):
    """(start, end) index ranges of consecutive hits."""
    episodes, start = [], None
    for i, r in enumerate(readings):
        if r.hit and start is None:
            start = i
        elif not r.hit and start is not None:
            episodes.append((start, i))
            start = None
    if start is not None:
        episodes.append((start, len(readings)))
    return episodes


def _num(text):
    """A printed value in a short form for the trend line."""
    value = parse_value(text)[0]
    return text if not math.isfinite(value) else f"{value:.4g}"


@dataclass
class LogReport:
    """What scan_log found; str() is the report the CLI prints."""

    readings: List[Reading]
    caffe: bool
    lr_logged: bool
    source: Optional[str] = None

    def __post_init__(self):
        self.episodes = _episodes(self.readings)
        plateau = _plateaus(self.readings)
        self.uniform = None     # (start, end, C) of a plateau at ln(C)
        for start, end, text in plateau:
            classes = uniform_classes(text)
            if classes is not None and not self.readings[start].hit:
                self.uniform = (start, end, classes)

    # -- facts ---------------------------------------------------------
    @property
    def count(self):
        return len(self.readings)

    @property
    def first_hit(self):
        return self.readings[self.episodes[0][0]] if self.episodes else None

    @property
    def stays(self):
        """The first hit lasts to the end of the log."""
        return len(self.episodes) == 1 and self.episodes[0][1] == self.count

    @property
    def ends_stuck(self):
        return bool(self.episodes) and self.episodes[-1][1] == self.count

    @property
    def recovered_at(self):
        """The first reading after the first hit that does not hit."""
        if not self.episodes or self.episodes[0][1] == self.count:
            return None
        return self.readings[self.episodes[0][1]]

    @property
    def uniform_to_end(self):
        return self.uniform is not None and self.uniform[1] == self.count

    @property
    def stuck(self):
        return bool(self.episodes) or self.uniform_to_end

    def lr_at(self, index):
        """(lr text, reading) logged at or last before readings[index]."""
        for r in reversed(self.readings[:index + 1]):
            if r.lr is not None:
                return r.lr, r
        return None

    def first_lr(self):
        for r in self.readings:
            if r.lr is not None:
                return r.lr, r
        return None

    def before(self):
        """Finite readings that do not hit, before the first hit."""
        end = self.episodes[0][0] if self.episodes else self.count
        return [r for r in self.readings[:end]
                if math.isfinite(r.main[1])]

    @property
    def trend(self):
        """"none", "single", "rising", "falling" or "steady": the finite
        readings just before the first hit."""
        prior = self.before()[-TREND_WINDOW:]
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

    def to_dict(self):
        hit = self.first_hit
        lr = self.lr_at(self.episodes[0][0]) if self.episodes else None
        rec = self.recovered_at
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
            "episodes": [{"start_iteration": self.readings[a].iteration,
                          "start_line": self.readings[a].line,
                          "readings": b - a} for a, b in self.episodes],
            "lr_at_hit": None if lr is None else lr[0],
            "trend": self.trend if hit is not None else None,
            "uniform_classes": None if self.uniform is None else self.uniform[2],
        }

    # -- words ---------------------------------------------------------
    def __str__(self):
        paragraphs = [self._summary()]
        if self.first_hit is None:
            paragraphs.append(self._clean())
        else:
            paragraphs.append(self._facts())
            paragraphs.append(_fill("What it means: " + self._meaning()))
            paragraphs.append(_fill("What to do: " + self._advice()))
        if self.uniform is not None:
            paragraphs.append(_fill(self._uniform_note()))
        return "\n\n".join(paragraphs) + "\n"

    def _summary(self):
        kind = "Caffe (glog)" if self.caffe else "plain-text"
        its = [r.iteration for r in self.readings if r.iteration is not None]
        span = ""
        if its:
            span = (f", iteration {its[0]}" if its[0] == its[-1]
                    else f", iterations {its[0]} to {its[-1]}")
        head = f"{self.source}: " if self.source else ""
        lr = "" if self.lr_logged else "; no learning rate logged"
        noun = "reading" if self.count == 1 else "readings"
        return _fill(f"{head}{kind} log, {self.count} loss {noun}{span}{lr}.")

    def _clean(self):
        first, last = self.readings[0], self.readings[-1]
        low = min(self.readings, key=lambda r: r.main[1])
        text = (f"The loss never hit {_FLT_MIN.value:g} (-ln(FLT_MIN), "
                "Caffe's clamp), nan or inf: ")
        if first is last:
            return _fill(text + f"its one reading is {first.main[0]} "
                                f"({first.where}).")
        text += (f"it went from {first.main[0]} ({first.short_where}) to "
                 f"{last.main[0]} ({last.short_where})")
        if low is not last:
            text += f", lowest {low.main[0]} at {low.short_where}"
        return _fill(text + ".")

    def _hit_phrase(self, r):
        value = f"{r.hit_source} = {r.hit_text}"
        name = {"nan": "not a number", "inf": "-log(0)"}.get(r.status)
        if r.constant:
            name = next(c.name for c in CONSTANTS if c.key == r.constant)
        return f"{value} ({name})"

    def _facts(self):
        hit = self.first_hit
        lines = [f"First hit: {self._hit_phrase(hit)} at {hit.where}."]
        if hit.hit_source != "loss" and hit.text is not None:
            lines[0] += (f"  The averaged 'loss =' line read {hit.text} "
                         "there (Caffe averages it over average_loss "
                         "iterations).")
        start, end = self.episodes[0]
        last = self.readings[-1]
        if self.stays and end - start == 1:
            lines.append("Stays there: it is the last reading of the log.")
        elif self.stays:
            n = end - start
            lines.append(
                f"Stays there: all {n} reading{'s' if n > 1 else ''} from "
                f"{hit.short_where} to the end of the log ({last.short_where}) "
                "hit it.")
        else:
            rec = self.recovered_at
            lines.append(
                f"Recovers: {end - start} reading{'s' if end - start > 1 else ''}"
                f" hit, then the loss reads {rec.main[0]} at {rec.where}.")
            if len(self.episodes) > 1:
                again = self.readings[self.episodes[1][0]]
                more = len(self.episodes) - 1
                lines.append(
                    f"It hits again at {again.where}: {again.hit_text}, "
                    f"{more} more episode{'s' if more > 1 else ''} in all"
                    + ("; it is stuck at the end of the log."
                       if self.ends_stuck else "; the log ends on a "
                       f"reading that does not hit ({last.short_where}, "
                       f"loss {last.main[0]})."))
            else:
                lines.append(f"No further hits up to the end of the log "
                             f"({last.short_where}, loss {last.main[0]}).")
        lines.append(self._trend_sentence())
        lines.append(self._lr_sentence())
        return "\n".join(_fill(line, subsequent_indent="  ") for line in lines)

    def _trend_sentence(self):
        prior = self.before()
        window = prior[-TREND_WINDOW:]
        if not window:
            return ("Before it: no finite reading; it hit at the first "
                    "reading of the log.")
        values = " -> ".join(_num(r.main[0]) for r in window)
        span = (f" ({window[0].short_where} to {window[-1].short_where})"
                if len(window) > 1 else f" ({window[0].short_where})")
        low = min(prior, key=lambda r: r.main[1])
        lowest = (f"; lowest {_num(low.main[0])} at {low.short_where}"
                  if low is not window[-1] else "")
        if len(window) == 1:
            return f"Before it: one reading, {values}{span}."
        return f"Before it: the loss was {self.trend}: {values}{span}{lowest}."

    def _lr_sentence(self):
        index = self.episodes[0][0]
        at = self.lr_at(index)
        if at is None:
            return "Learning rate: not logged."
        text, r = at
        first = self.first_lr()
        sentence = f"Learning rate: {text} at {r.short_where}"
        if first is not None and first[1] is not r:
            if parse_value(first[0])[0] == parse_value(text)[0]:
                sentence += f", unchanged since {first[1].short_where}"
            else:
                sentence += f", was {first[0]} at {first[1].short_where}"
                if parse_value(text)[0] > parse_value(first[0])[0]:
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
        elif hit.constant in _CAFFE_CLAMPS:
            c = next(c for c in CONSTANTS if c.key == hit.constant)
            tiny, c_type = (("FLT_MIN", "float32") if c.key == "flt_min"
                            else ("DBL_MIN", "float64"))
            text = (f"{c.value:g} = {c.name}: Caffe's SoftmaxWithLoss clamps "
                    f"the label probability at {tiny} = {math.exp(-c.value):g}, "
                    f"the smallest normal {c_type}, so each sample whose label "
                    f"probability fell below {tiny} adds exactly "
                    f"{c.value:g}; a reading of exactly this value means "
                    "every sample was clamped.  Their logits had a gap above "
                    f"{c.value:.4g} (the probability underflowed), or a logit "
                    f"above {_FLT_MAX.value:.4g} = ln(FLT_MAX) overflowed "
                    "exp() and x/inf = 0 (the softmax itself overflowed).  "
                    "The clamp hides how large the true loss is.")
        else:
            c = next(c for c in CONSTANTS if c.key == hit.constant)
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
        if len(self.episodes) == 1:
            if self.first_hit.status == "nan":
                return ("It recovered, so the weights did not turn nan: "
                        "single batches produced it (an overflow in their "
                        "forward pass, or nan/inf in their inputs), or a loss "
                        "scaler skipped those steps.")
            return ("It recovered, so the run survived: a few batches blew "
                    "up (a spike, a bad batch or an outlier label), and their "
                    "true loss was higher than the log shows.")
        if self.ends_stuck:
            more = len(self.episodes) - 1
            return (f"It recovered for a while but hit again "
                    f"{more} more time{'s' if more > 1 else ''} and is stuck at "
                    "the end of the log: the run sits at the edge of "
                    "stability and has now diverged.")
        return (f"It recovered each of the {len(self.episodes)} times: some "
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
        lr = self.lr_at(self.episodes[0][0])
        lr_text = f" (logged: {lr[0]})" if lr else ""
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
                 f"{hit.hit_text}` explains the value.")
        return text

    def _uniform_note(self):
        start, end, classes = self.uniform
        a, b = self.readings[start], self.readings[end - 1]
        text = (f"Note: the loss sat at {a.main[0]} = ln({classes}), the loss "
                f"of a uniform prediction over {classes} classes, from "
                f"{a.short_where} to {b.short_where} ({end - start} readings)")
        if self.uniform_to_end:
            text += (": it never left it, so the network outputs the same "
                     "score for every class and is not learning (dead "
                     "ReLUs, a zero or saturated last layer, a learning "
                     "rate too high or too low, labels without signal).")
        else:
            text += ", then started to learn."
        return text


def _fill(text, **kwargs):
    return textwrap.fill(text, WIDTH, break_on_hyphens=False,
                         break_long_words=False, **kwargs)


def scan_log(lines, source=None):
    """Scan training-log lines (any iterable of str or bytes).

    Returns a LogReport; report.count is 0 when no line holds a loss.
    """
    readings, state = _parse(lines)
    readings = [r for r in readings if r.values()]
    caffe = bool(readings) and bool(state.get("caffe"))
    _classify(readings)
    lr_logged = state.get("caffe_lr_logged" if caffe else "plain_lr_logged")
    return LogReport(readings, caffe=caffe, lr_logged=bool(lr_logged),
                     source=source)


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


def cli_scan_log(path, out=None, err=None):
    """`python -m pysafemax scan-log FILE` ("-": standard input).

    Exit code 0 when the loss never stuck, 1 when it hit 87.3365, nan or
    another clamp, 2 when the file cannot be read or holds no loss lines.
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
