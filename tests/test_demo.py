"""`python -m pysafemax demo` and the command line around it."""
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import pysafemax
from pysafemax.tools import cli
from pysafemax.tools import demo
from pysafemax.tools.text import number

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pysafemax", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def demo_output():
    result = _run("demo")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def _step(output, method, name):
    """The value column of step `name` in `method`'s block of the walk-through."""
    block = output.split(f"\n{method}: ", 1)[1].split("\n\n", 1)[0]
    for line in block.splitlines():
        if line.startswith(f"  {name} "):
            return line[len(name) + 2:].strip().split("   ")[0]
    raise AssertionError(f"no step {name!r} under {method}:\n{block}")


def _table_rows(output, heading):
    """{gap: [true, naive, maxsub, stable]} of the table under `heading`."""
    lines = output.split(heading, 1)[1].splitlines()[2:]
    rows = {}
    for line in lines:
        fields = line.split()
        if len(fields) != 5 or not fields[0].isdigit():
            break
        rows[int(fields[0])] = fields[1:]
    return rows


def test_seed_values_naive(demo_output):
    # The seed's program: exp {inf, 4.85165e+08}, sum inf, softmax {nan, 0},
    # loss {nan, 87.3365}.
    assert _step(demo_output, "naive", "exp(x)") == "{inf, 4.85165e+08}"
    assert _step(demo_output, "naive", "sum") == "inf"
    assert _step(demo_output, "naive", "softmax") == "{nan, 0}"
    assert _step(demo_output, "naive", "loss, label 0") == "nan"
    assert _step(demo_output, "naive", "loss, label 1") == "87.3365"
    assert "-ln(FLT_MIN) = 87.3365" in demo_output


def test_seed_values_maxsub_and_stable(demo_output):
    for method in ("maxsub", "stable"):
        assert _step(demo_output, method, "m") == "100"
        assert _step(demo_output, method, "x - m") == "{0, -80}"
        assert _step(demo_output, method, "loss, label 1") == "80"
    assert _step(demo_output, "maxsub", "loss, label 0") == "0"
    assert _step(demo_output, "stable", "log-sum-exp") == "1.80485e-35"
    assert _step(demo_output, "stable", "loss, label 0") == "1.80485e-35"
    assert _step(demo_output, "stable", "true loss") == "{1.80485e-35, 80}"


def test_gap_table_wrong_answer(demo_output):
    rows = _table_rows(demo_output, "Logits {0, gap}, label 0")
    assert sorted(rows) == sorted(demo.GAPS)
    # True loss ~ gap; naive and maxsub stick at -ln(FLT_MIN) from gap 88 on.
    assert rows[100][0] == "100"
    assert rows[1000][0] == "1000"
    for gap in (88, 89, 100, 1000):
        assert rows[gap][1:3] == ["87.3365", "87.3365"]
        assert rows[gap][3] == str(gap)
    for gap in (10, 50, 87):
        assert rows[gap] == [str(gap)] * 4


def test_gap_table_right_answer(demo_output):
    rows = _table_rows(demo_output, "Logits {gap, 0}, label 0")
    assert sorted(rows) == sorted(demo.GAPS)
    # naive's exp(gap) overflows past ln(FLT_MAX) ~ 88.72: inf/inf = nan.
    assert [rows[g][1] for g in (87, 88, 89, 100, 1000)] == [
        "0", "0", "nan", "nan", "nan"]
    assert rows[50][3] == "1.92875e-22"        # stable keeps a tiny loss
    assert rows[100][0] == "3.72008e-44"
    assert rows[1000][0] == "5.07596e-435"      # below float64's range, exact


def test_output_fits_80_columns(demo_output):
    too_wide = [line for line in demo_output.splitlines() if len(line) > 80]
    assert too_wide == []


def test_run_demo_into_stringio(demo_output):
    out = io.StringIO()
    demo.run_demo(out)
    assert out.getvalue() == demo_output


def test_printed_losses_are_the_kernels():
    table = demo.loss_vs_gap((10, 100), label_on_gap=False)
    logits = np.array([[0, 10], [0, 100]], dtype=np.float32)
    for method in demo.METHODS:
        expected = pysafemax.softmax_loss(logits, [0, 0], method=method,
                                          reduction="none")
        np.testing.assert_array_equal(table[method], expected)
    assert table["maxsub"][1] == np.float32(pysafemax.FLT_MIN_LOSS)


@pytest.mark.parametrize("logits, label, expected", [
    ((0.0, 100.0), 0, "100"),
    ((100.0, 20.0), 1, "80"),
    ((100.0, 20.0), 0, "1.80485e-35"),
    ((1000.0, 0.0), 0, "5.07596e-435"),
    ((1e8, 1e8), 0, "0.693147"),
])
def test_true_loss(logits, label, expected):
    assert number(demo.true_loss(logits, label)) == expected


def test_no_command_prints_help_and_exits_2():
    result = _run()
    assert result.returncode == 2
    assert "demo" in result.stderr
    assert re.search(r"usage: .*pysafemax", result.stderr)


def test_main_in_process(capsys):
    assert cli.main(["demo"]) == 0
    assert "87.3365" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
