"""`python -m pysafemax explain VALUE` and pysafemax.tools.explain."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import pysafemax
from pysafemax._constants import DBL_MIN_LOSS, FLT_MIN_LOSS, FLT_MIN_LOSS_F64
from pysafemax.tools.explain import (CONSTANTS, cli_explain, explain,
                                     match_constant, matches, parse_value,
                                     uniform_classes)
from pysafemax.tools.text import ECHO_LIMIT, abbreviate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LN2 = math.log(2.0)
BY_KEY = {c.key: c for c in CONSTANTS}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pysafemax", "explain", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def _prints(constant):
    """The ways a program may print the constant: %g (C++'s cout), 3 to 9
    significant digits with trailing zeros kept, exponent notation, and
    numpy's shortest repr of the float32 rounding."""
    out = set()
    for r in constant.representations:
        out.add(f"{r:g}")
        out.add(repr(r))
        for digits in range(3, 10):
            out.add(f"{r:#.{digits}g}")
        out.add(f"{r:.5e}")
        out.add(f"{r:.6E}")
    out.add(str(np.float32(constant.value)))
    return sorted(out)


# -- the constants are computed, and they are the numbers users see --------

def test_constants_are_the_documented_values():
    # Independent derivations: -ln(2^-k) = k ln 2.
    assert BY_KEY["flt_min"].value == pytest.approx(126 * LN2, rel=1e-15)
    assert BY_KEY["flt_denorm"].value == pytest.approx(149 * LN2, rel=1e-15)
    assert BY_KEY["dbl_min"].value == pytest.approx(1022 * LN2, rel=1e-15)
    assert BY_KEY["dbl_denorm"].value == pytest.approx(1074 * LN2, rel=1e-15)
    assert BY_KEY["half_min"].value == pytest.approx(14 * LN2, rel=1e-15)
    assert BY_KEY["half_denorm"].value == pytest.approx(24 * LN2, rel=1e-15)
    assert BY_KEY["bf16_denorm"].value == pytest.approx(133 * LN2, rel=1e-15)
    assert BY_KEY["flt_eps"].value == pytest.approx(23 * LN2, rel=1e-15)
    assert BY_KEY["flt_max"].value == pytest.approx(
        128 * LN2 + math.log1p(-2.0 ** -24), rel=1e-15)
    assert BY_KEY["dbl_max"].value == pytest.approx(
        1024 * LN2 + math.log1p(-2.0 ** -53), rel=1e-15)
    # The figures of the spec, as %g prints them.
    shown = {"flt_min": "87.3365", "flt_denorm": "103.279",
             "dbl_min": "708.396", "dbl_denorm": "744.44",
             "half_min": "9.70406", "half_denorm": "16.6355",
             "flt_max": "88.7228", "dbl_max": "709.783"}
    for key, text in shown.items():
        assert f"{BY_KEY[key].value:g}" == text
    # The library's constants, not copies: -ln(FLT_MIN) in double (what
    # Caffe<double> prints) and its float32 rounding, -ln(DBL_MIN).
    assert BY_KEY["flt_min"].value == FLT_MIN_LOSS_F64 == 87.3365447505531
    assert BY_KEY["flt_min"].rounded == (("float32", FLT_MIN_LOSS),)
    assert FLT_MIN_LOSS == pysafemax.FLT_MIN_LOSS == 87.3365478515625
    assert BY_KEY["dbl_min"].value == DBL_MIN_LOSS == pysafemax.DBL_MIN_LOSS


def test_float32_and_float16_roundings_are_kept():
    c = BY_KEY["flt_min"]
    assert float(np.float32(c.value)) in c.representations
    half = BY_KEY["half_min"]
    assert float(np.float16(half.value)) == 9.703125
    assert 9.703125 in half.representations


# -- every constant, in the roundings a program prints ------------------------

@pytest.mark.parametrize("key", sorted(BY_KEY))
def test_every_print_of_every_constant_is_named(key):
    constant = BY_KEY[key]
    for text in _prints(constant):
        result = explain(text)
        assert result.known and result.kind == "constant", text
        assert result.key == key, text
        # ...and matches no other constant.
        others = [c.key for c in CONSTANTS if c.key != key and matches(text, c)]
        assert others == [], (text, others)


@pytest.mark.parametrize("text, key", [
    ("87.3365", "flt_min"), ("87.33655", "flt_min"), ("87.3", "flt_min"),
    ("87.34", "flt_min"), ("8.73365e+01", "flt_min"), ("8.733655E1", "flt_min"),
    ("87.336548", "flt_min"), ("87.3365478515625", "flt_min"),
    ("87.3365447505531", "flt_min"), ("87.33654475", "flt_min"),
    (" 87.3365\n", "flt_min"), ("+87.3365", "flt_min"),
    ("103.279", "flt_denorm"), ("103.28", "flt_denorm"), ("103", "flt_denorm"),
    ("708.396", "dbl_min"), ("708.4", "dbl_min"), ("7.08396e+02", "dbl_min"),
    ("744.44", "dbl_denorm"), ("744.440", "dbl_denorm"),
    ("9.704", "half_min"), ("9.703", "half_min"), ("9.70", "half_min"),
    ("16.636", "half_denorm"), ("16.64", "half_denorm"),
    ("16.6355", "half_denorm"),
    ("88.7228", "flt_max"), ("88.72", "flt_max"),
    ("709.78", "dbl_max"), ("709.783", "dbl_max"),
    ("92.1886", "bf16_denorm"), ("11.0899", "half_max"),
    ("15.9424", "flt_eps"), ("16.1181", "keras_eps"), ("100", "bce_floor"),
    ("100.000", "bce_floor"),
])
def test_printed_values(text, key):
    result = explain(text)
    assert result.kind == "constant" and result.key == key
    assert result.text == text.strip()


def test_rule_b_relative_tolerance():
    # A float32 result averaged in float32 and printed with all digits:
    # off in the 8th digit, inside 5e-5 relative, outside the printed ulp.
    assert explain("87.33654022216797").key == "flt_min"
    assert explain("87.338").key == "flt_min"          # 1.7e-5 relative
    assert explain("87.35").kind == "unknown"          # 1.6e-4 relative


@pytest.mark.parametrize("text", [
    "87",        # two digits: consistent with too many values
    "87.33",     # a wrong rounding of 87.3365
    "87.4", "86.9", "88", "9.7", "16.1181e3", "42.5", "0", "0.0",
    "13.8155",   # ln(10^6) to 6 digits fits ~100 class counts
    "2.3",       # two digits
    "1.00",
])
def test_unknown_values(text):
    result = explain(text)
    assert not result.known and result.kind == "unknown"
    assert "no known constant" in str(result)


def test_numbers_and_numpy_scalars():
    assert explain(87.3365).key == "flt_min"
    assert explain(np.float32(pysafemax.FLT_MIN_LOSS)).key == "flt_min"
    assert explain(float(np.float32(pysafemax.FLT_MIN_LOSS))).key == "flt_min"
    assert explain(pysafemax.DBL_MIN_LOSS).key == "dbl_min"
    assert explain(100).key == "bce_floor"
    # A float16 scalar is taken at its exact value, 9.703125; its shortest
    # repr "9.7" has too few digits to name anything.
    assert explain(np.float16(9.704)).key == "half_min"
    assert explain(np.float16(16.636)).key == "half_denorm"
    assert str(np.float16(9.704)) == "9.7" and not explain("9.7").known


def test_negative_value_names_the_negated_constant():
    result = explain("-87.3365")
    assert result.key == "flt_min" and result.negated
    assert "negative of -ln(FLT_MIN)" in str(result)


@pytest.mark.parametrize("text", ["nan", "-nan", "NaN", "NAN", "nan(ind)",
                                  "-nan(ind)", "1.#QNAN", "-1.#IND"])
def test_nan_spellings(text):
    result = explain(text)
    assert result.known and result.kind == "nan"
    assert "overflow" in str(result) and "88.7228" in str(result)


def test_nan_from_numbers():
    assert explain(float("nan")).kind == "nan"
    assert explain(np.float32("nan")).kind == "nan"


@pytest.mark.parametrize("text", ["inf", "+inf", "Infinity", "infinity",
                                  "1.#INF", "-inf"])
def test_inf_spellings(text):
    result = explain(text)
    assert result.known and result.kind == "inf"
    assert "log(0)" in str(result)


@pytest.mark.parametrize("text, classes", [
    ("0.693147", 2), ("0.693", 2), ("2.30259", 10), ("2.3026", 10),
    ("2.302585124969482", 10),      # float32 ln(10) printed as a float64
    ("4.60517", 100), ("6.90776", 1000), ("9.21034", 10000),
])
def test_uniform_prediction(text, classes):
    assert uniform_classes(text) == classes
    result = explain(text)
    assert result.known and result.kind == "uniform"
    assert result.classes == classes
    assert f"ln({classes})" in str(result)
    assert "uniform prediction" in str(result)


def test_uniform_rejects_ambiguous_and_out_of_range():
    assert uniform_classes("13.8155") is None     # ln(10^6), 6 digits
    assert uniform_classes("9.96") is None        # e^9.955..e^9.965: ~200
    assert uniform_classes("20.5") is None        # e^20.5 > 10^6
    assert uniform_classes("0.5") is None         # below ln 2
    assert uniform_classes("-2.30259") is None
    assert uniform_classes("nan") is None


@pytest.mark.parametrize("text", [
    "abc", "", "  ", "87,3365", "1.2.3", "87.3365f", "loss = 87.3365", "1e",
    "0x1p3", "0x1.8p1",                 # hex floats
    "\u0661\u0662", "\u0663.\u0665",      # Arabic-Indic 12 and 3.5: float() takes them
    "\uff11\uff12", "8\u0667.3365",        # fullwidth 12, a mix of scripts
    "1_000", "1e1_0",                   # float() takes underscores
    "nan(\u0661)", "1e1234567890",      # another script's payload; a 10-digit exponent
])
def test_not_a_number(text):
    with pytest.raises(ValueError, match="not a number"):
        explain(text)
    with pytest.raises(ValueError, match="not a number"):
        parse_value(text)


def test_decimals_beyond_float64_match_nothing():
    # A decimal, not an inf spelling: it is no limit of any format.
    for text in ("1e999", "-1e999999999", "9" * 400):
        result = explain(text)
        assert result.kind == "unknown" and result.value in (math.inf, -math.inf)
        assert match_constant(text) is None and not matches(text, 3.0)
    assert explain("1e-999999999").kind == "unknown"


def test_abbreviate():
    assert abbreviate("a" * ECHO_LIMIT) == "a" * ECHO_LIMIT
    assert abbreviate("a" * 41) == "a" * 40 + "... (41 characters)"
    assert abbreviate("ab", quote=True) == "'ab'"
    assert abbreviate("a" * 41, quote=True) == f"'{'a' * 40}'... (41 characters)"


def test_long_input_is_not_echoed_whole():
    digits = "9" * 5000
    out, err = io.StringIO(), io.StringIO()
    assert cli_explain(digits, out=out, err=err) == 1
    flat = " ".join(out.getvalue().split())
    assert flat.startswith(f"{'9' * 40}... (5000 characters): no known constant")
    assert len(out.getvalue()) < 2000 and err.getvalue() == ""
    clamped = "87.3365" + "0" * 5000
    out = io.StringIO()
    assert cli_explain(clamped, out=out) == 0
    flat = " ".join(out.getvalue().split())
    assert flat.startswith(f"{clamped[:40]}... (5007 characters) = -ln(FLT_MIN)")
    assert all(len(line) <= 80 for line in out.getvalue().splitlines())
    assert explain(clamped).text == clamped      # the data keeps it whole
    out, err = io.StringIO(), io.StringIO()
    assert cli_explain("x" * 5000, out=out, err=err) == 2
    assert err.getvalue() == (f"pysafemax explain: not a number: '{'x' * 40}'... "
                              "(5000 characters) (give the loss value as "
                              "printed, e.g. 87.3365 or nan)\n")
    assert out.getvalue() == ""


def test_flt_min_is_caffes_clamp_in_float_and_double():
    text = " ".join(str(explain("87.3365")).split())
    assert ("Caffe's SoftmaxWithLoss computes -log(max(p[label], "
            "Dtype(FLT_MIN))) in float and in double alike") in text
    assert "(87.3365479 in float, 87.3365447505531 in double)" in text
    assert explain("87.3365447505531").key == "flt_min"


def test_dbl_min_is_not_caffes():
    text = " ".join(str(explain("708.396")).split())
    assert ("Code that clamps the label probability at float64's own smallest "
            "normal (numpy's finfo(float64).tiny, sys.float_info.min, a "
            "hand-written max(p, DBL_MIN)) reports it") in text
    assert ("It is not Caffe's clamp: SoftmaxWithLossLayer<double> clamps at "
            "FLT_MIN too and reports 87.3365447505531, and no pysafemax method "
            "reports it.") in text


def test_parse_value():
    assert parse_value("87.3365")[0] == 87.3365
    assert str(parse_value("8.73365e+01")[1]) == "87.3365"
    assert math.isnan(parse_value("-nan")[0])
    assert parse_value("-inf")[0] == -math.inf
    with pytest.raises(TypeError):
        explain([87.3365])


def test_match_constant_and_matches():
    assert match_constant("87.3365").key == "flt_min"
    assert match_constant("nan") is None
    assert match_constant("42") is None
    assert matches("87.3365", pysafemax.FLT_MIN_LOSS)
    assert not matches("87.33", pysafemax.FLT_MIN_LOSS)
    assert not matches("nan", BY_KEY["flt_min"])


def test_to_dict_is_json_ready():
    for text in ("87.3365", "nan", "2.30259", "42.5", "inf"):
        data = explain(text).to_dict()
        assert json.loads(json.dumps(data))["text"] == text


def test_paragraph_for_flt_min():
    text = str(explain("87.3365"))
    assert text.startswith("87.3365 = -ln(FLT_MIN) = -ln(2^-126) = 87.33654475")
    assert "smallest normal float32" in text
    assert "Caffe's SoftmaxWithLoss" in text
    assert "Why a loss sticks there:" in text and "What to do:" in text
    assert "learning rate" in text and "BatchNorm" in text
    assert all(len(line) <= 80 for line in text.splitlines())


# -- the command line ------------------------------------------------------

def test_cli_in_process():
    out, err = io.StringIO(), io.StringIO()
    assert cli_explain("87.3365", out=out, err=err) == 0
    assert "-ln(FLT_MIN)" in out.getvalue() and err.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    assert cli_explain("42.5", out=out, err=err) == 1
    assert "no known constant" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert cli_explain("banana", out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue().startswith("pysafemax explain: not a number: 'banana'")


def test_cli_known_value():
    result = _run("87.3365")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("87.3365 = -ln(FLT_MIN)")
    assert "What to do:" in result.stdout


def test_cli_exit_codes():
    assert _run("708.396").returncode == 0
    assert _run("87.3365447505531").returncode == 0
    assert _run("nan").returncode == 0
    assert _run("--", "-nan").returncode == 0
    unknown = _run("42.5")
    assert unknown.returncode == 1 and "no known constant" in unknown.stdout
    bad = _run("eighty-seven")
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.startswith("pysafemax explain: ")
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


def test_cli_other_scripts_and_long_values():
    arabic = _run("\u0661\u0662")
    assert arabic.returncode == 2 and arabic.stdout == ""
    assert arabic.stderr == ("pysafemax explain: not a number: '\u0661\u0662' "
                             "(give the loss value as printed, e.g. 87.3365 or "
                             "nan)\n")
    long = _run("1" * 5000)
    assert long.returncode == 1 and long.stderr == ""
    assert len(long.stdout) < 2000 and "... (5000 characters)" in long.stdout


@pytest.mark.parametrize("value", ["-nan", "-inf", "-87.3365"])
def test_cli_takes_values_that_start_with_a_minus(value):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "pysafemax", "explain", value],
                          cwd=root, capture_output=True, text=True)
    assert "usage:" not in done.stderr
    assert done.returncode in (0, 1)
    assert done.stdout.strip()
