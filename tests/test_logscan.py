"""`python -m pysafemax scan-log FILE` and pysafemax.tools.scan_log.

The logs under tests/data/ are written in Caffe's glog line format
(solver.cpp's "Iteration N (x iter/s, ys/D iters), loss = X" and
"    Train net output #k: NAME = X (* w = y loss)", sgd_solver.cpp's
"Iteration N, lr = X", the test phase's "Test net output" lines) and, for
pytorch_plain.log, as a PyTorch script's prints.
"""
import io
import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from pysafemax.tools.scan_log import (EPISODES_KEPT, LAST_KEPT, cli_scan_log,
                                      scan_log)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
CLEAN = os.path.join(DATA, "caffe_clean.log")
DIVERGE = os.path.join(DATA, "caffe_diverge_87.log")
NAN = os.path.join(DATA, "caffe_nan.log")
RECOVER = os.path.join(DATA, "caffe_recover_87.log")
PLAIN = os.path.join(DATA, "pytorch_plain.log")

GLOG = "I0312 22:40:{s:02d}.500013 24816 {where}] {msg}"


def _glog(*messages):
    """glog lines: (where, msg) pairs, e.g. ("solver.cpp:218", "Iteration ...")."""
    return [GLOG.format(s=i % 60, where=w, msg=m)
            for i, (w, m) in enumerate(messages)]


def _scan(path):
    with open(path, encoding="utf-8") as f:
        return scan_log(f, source=path)


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pysafemax", "scan-log", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          **kwargs)


def _flat(text):
    """The report with its line wrapping undone, for phrase checks."""
    return " ".join(text.split())


def _cli(path):
    """(exit code, report with wrapping undone, stderr), in process."""
    out, err = io.StringIO(), io.StringIO()
    code = cli_scan_log(path, out=out, err=err)
    return code, _flat(out.getvalue()), err.getvalue()


# -- the logs in tests/data --------------------------------------------------

@pytest.mark.parametrize("path", [CLEAN, DIVERGE, NAN, RECOVER, PLAIN])
def test_data_logs_are_small(path):
    with open(path) as f:
        assert len(f.readlines()) <= 60


def test_clean_run():
    report = _scan(CLEAN)
    facts = report.to_dict()
    assert facts["format"] == "caffe"
    assert facts["readings"] == 11          # 10 displays + the final line
    assert facts["first_hit"] is None and not report.stuck
    # The test phase's outputs are not training readings.
    assert report.first.iteration == 0
    assert [r.iteration for r in report.last_readings] == list(range(100, 1001, 100))
    assert (report.first_iteration, report.last_iteration) == (0, 1000)
    assert report.first.lr == "0.01"
    assert report.last.text == "0.0412316"
    code, out, err = _cli(CLEAN)
    assert code == 0 and err == ""
    assert "never hit 87.3365" in out
    assert "from 2.30259 (iteration 0) to 0.0412316 (iteration 1000)" in out


def test_diverging_run_sticks_at_87():
    report = _scan(DIVERGE)
    facts = report.to_dict()
    # "average_loss: 10" in the solver's parameter dump is no reading.
    assert facts["readings"] == 14
    hit = facts["first_hit"]
    # The raw output reads 87.3365 at 900, while the averaged loss
    # (average_loss: 10) still reads 61.6205.
    assert hit == {"kind": "clamp", "value": "87.3365", "constant": "flt_min",
                   "source": "output #0: loss", "iteration": 900, "line": 42}
    assert report.first_hit.text == "61.6205"
    assert facts["stays"] and facts["ends_stuck"]
    assert facts["recovered_at"] is None
    assert facts["episodes"] == [{"start_iteration": 900, "start_line": 42,
                                  "readings": 5}]
    assert facts["lr_at_hit"] == "0.1"
    assert facts["trend"] == "rising"
    code, out, err = _cli(DIVERGE)
    assert code == 1 and err == ""
    assert "First hit: output #0: loss = 87.3365 (-ln(FLT_MIN)) at iteration " \
           "900 (line 42)." in out
    assert "Stays there: all 5 readings" in out
    assert "the loss was rising: 1.713 -> 2.285 -> 4.119 -> 13.04 -> 35.77" in out
    assert "Learning rate: 0.1 at iteration 900, unchanged since iteration 0." in out
    assert "FLT_MIN = 1.17549e-38, the smallest normal float32" in out
    assert "will not recover by itself" in out
    # A rising loss puts the learning rate first.
    assert "What to do: In order of the evidence: lower the learning rate " \
           "(logged: 0.1)" in out
    assert "snapshot saved before iteration 900" in out


def test_nan_run():
    report = _scan(NAN)
    facts = report.to_dict()
    assert facts["readings"] == 10
    assert facts["first_hit"]["kind"] == "nan"
    assert facts["first_hit"]["iteration"] == 600
    assert facts["first_hit"]["value"] == "nan"
    assert facts["stays"]
    assert facts["lr_at_hit"] == "0.05"
    assert facts["trend"] == "falling"
    # "-nan" (glibc's spelling) counts too; the test net's nan is no reading.
    assert [r.status for r in report.last_readings] == ["ok"] * 6 + ["nan"] * 4
    assert report.last.text == "-nan"
    code, out, err = _cli(NAN)
    assert code == 1
    assert "First hit: loss = nan (not a number) at iteration 600 (line 34)." in out
    assert "inf/inf = nan" in out
    assert "a sudden blow-up" in out
    # A sudden jump puts the data first.
    assert "In order of the evidence: check the data and the labels" in out


def test_touches_87_then_recovers():
    report = _scan(RECOVER)
    facts = report.to_dict()
    assert facts["first_hit"]["iteration"] == 500
    assert facts["first_hit"]["source"] == "loss"
    assert not facts["stays"] and not facts["ends_stuck"]
    assert facts["recovered_at"] == {"iteration": 600, "line": 34,
                                     "value": "1.93318"}
    assert len(facts["episodes"]) == 1
    assert facts["lr_at_hit"] == "0.001"
    code, out, err = _cli(RECOVER)
    assert code == 1            # it did hit 87.3365
    assert "Recovers: 1 reading hit, then the loss reads 1.93318 at " \
           "iteration 600 (line 34)." in out
    assert "No further hits up to the end of the log (iteration 1000, " \
           "loss 1.50236)." in out
    assert "It recovered, so the run survived" in out
    assert "snapshot" not in out


def test_plain_pytorch_log():
    report = _scan(PLAIN)
    facts = report.to_dict()
    assert facts["format"] == "plain"
    assert facts["readings"] == 11          # "val loss" lines are skipped
    assert facts["first_hit"]["kind"] == "nan"
    assert facts["first_hit"]["iteration"] == 400
    assert facts["first_hit"]["line"] == 13
    assert facts["stays"]
    assert facts["lr_at_hit"] == "0.1"
    assert facts["trend"] == "rising"
    assert _cli(PLAIN)[0] == 1


def test_report_lines_fit_a_terminal():
    for path in (CLEAN, DIVERGE, NAN, RECOVER, PLAIN):
        assert all(len(line) <= 80 for line in str(_scan(path)).splitlines())


def test_to_dict_is_json_ready():
    for path in (CLEAN, DIVERGE, NAN, RECOVER, PLAIN):
        assert json.loads(json.dumps(_scan(path).to_dict()))


# -- the command line: files, stdin, bad input --------------------------------

def test_cli_subprocess_file():
    result = _run("tests/data/caffe_diverge_87.log")
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("tests/data/caffe_diverge_87.log: Caffe")
    assert "iteration 900" in result.stdout


@pytest.mark.parametrize("args", [["-"], []])
def test_cli_stdin(args):
    with open(DIVERGE) as f:
        text = f.read()
    result = _run(*args, input=text)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("Caffe (glog) log, 14 loss readings")
    assert "First hit: output #0: loss = 87.3365" in result.stdout


def test_cli_stdin_clean_and_empty():
    with open(CLEAN) as f:
        assert _run("-", input=f.read()).returncode == 0
    empty = _run("-", input="")
    assert empty.returncode == 2
    assert empty.stderr.startswith("pysafemax scan-log: no loss readings in "
                                   "standard input")


def test_cli_stdin_in_process(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("step 1 loss: 0.5\n"
                                                  "step 2 loss: nan\n"))
    code, out, err = _cli("-")
    assert code == 1 and "iteration 2 (line 2)" in out


def _assert_one_line_error(result, fragment):
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pysafemax scan-log: ")
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_cli_missing_file():
    _assert_one_line_error(_run("no/such/train.log"), "No such file")


def test_cli_directory():
    _assert_one_line_error(_run("tests/data"), "cannot read tests/data")


def test_cli_no_loss_lines(tmp_path):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    _assert_one_line_error(_run(str(empty)), "no loss readings")
    setup_only = tmp_path / "setup.log"
    setup_only.write_text("\n".join(_glog(
        ("caffe.cpp:218", "Using GPUs 0"),
        ("net.cpp:84", "Creating Layer loss"),
        ("net.cpp:406", "loss <- fc8"),
        ("net.cpp:150", "Setting up loss"),
        ("net.cpp:165", "    with loss weight 1"),
        ("solver.cpp:397", "    Test net output #1: loss = 2.3 (* 1 = 2.3 loss)"),
        ("solver.cpp:330", "Test loss: 2.3"))) + "\n")
    _assert_one_line_error(_run(str(setup_only)), "no loss readings")


def test_cli_binary_file(tmp_path):
    junk = tmp_path / "weights.caffemodel"
    junk.write_bytes(bytes(range(256)) * 20)
    _assert_one_line_error(_run(str(junk)), "no loss readings")


def test_cli_undecodable_bytes_are_tolerated(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"\xff\xfe garbage\nstep 1 loss: 0.5\nstep 2 loss: 0.25\n")
    code, out, err = _cli(str(log))
    assert code == 0 and "2 loss readings" in out


# -- parsing details ---------------------------------------------------------

@pytest.mark.parametrize("line", [
    "loss = 0.5", "loss: 0.5", "loss=0.5", "Loss: 0.5", "train_loss: 0.5",
    "step 10 loss: 0.5", "{'loss': 0.5, 'learning_rate': 5e-05}",
    "Epoch 0:  10%|#   | 10/100 [00:01<00:09, 9.8it/s, loss=0.5, v_num=1]",
    "100/100 [====] - 1s 9ms/step - loss: 0.5 - accuracy: 0.9 - val_loss: 0.7",
    "Train Epoch: 1 [640/60000 (1%)]\tLoss: 0.5",
    "iter 7, loss = tensor(0.5, device='cuda:0')",
    "Epoch 3 done, loss = 0.5.",
])
def test_plain_formats(line):
    report = scan_log([line])
    assert report.count == 1
    assert float(report.first.text) == 0.5


@pytest.mark.parametrize("line", [
    "val_loss: 0.5", "val loss: 0.5", "{'eval_loss': 0.5}",
    "Test set: Average loss: 0.5, Accuracy: 9663/10000 (97%)",
    "Validation: loss = 0.5", "loss_scale: 65536", "lossy = 3",
    "Epoch 0 done", "",
    "average_loss: 10",         # Caffe's solver parameter, dumped at start
])
def test_lines_that_are_not_training_losses(line):
    assert scan_log([line]).count == 0


@pytest.mark.parametrize("spelling", ["nan", "-nan", "NaN", "nan(ind)",
                                      "-nan(ind)", "1.#QNAN", "inf", "-inf",
                                      "1.#INF"])
def test_nan_and_inf_spellings(spelling):
    report = scan_log(["step 1 loss: 0.5", f"step 2 loss: {spelling}"])
    hit = report.to_dict()["first_hit"]
    assert hit["iteration"] == 2 and hit["value"] == spelling
    assert hit["kind"] in ("nan", "inf")


@pytest.mark.parametrize("value", [
    "0x1p3", "0x1.8p1",                 # hex floats: no reading of 0
    "\u0661\u0662", "\u0663.\u0665",      # Arabic-Indic 12 and 3.5
    "\uff11\uff12",                     # fullwidth 12
    "1\u0662",                          # an ASCII digit, then another script's
    "1_000", "1.5e", "87.3365f", "1.2.3",
    "1e1234567890",                     # an exponent of 10 digits
])
def test_values_that_are_not_decimal_floats(value):
    assert scan_log([f"step 1 loss = {value}"]).count == 0
    caffe = _glog(("solver.cpp:218", "Iteration 0 (0 iter/s, 0.1s/20 iters), "
                                     f"loss = {value}"))
    assert scan_log(caffe).count == 0


def test_iterations_are_ascii_digits():
    report = scan_log(["step \u0661\u0662 loss: 0.5"])
    assert report.count == 1 and report.first.iteration is None
    caffe = _glog(("solver.cpp:218", "Iteration \u0661\u0662 (0 iter/s, "
                                     "0.1s/20 iters), loss = 0.5"))
    assert scan_log(caffe).count == 0


def test_huge_numbers_read_without_a_traceback():
    # int() refuses more than 4300 digits; such an iteration is none.
    lines = [f"step {'9' * 5000} loss: 0.5",
             f"Iteration {'1' * 5000}, loss = 0.25"]
    report = scan_log(lines)
    assert report.count == 2
    assert report.first.iteration is None and report.last.iteration is None
    assert "iteration" not in str(report).split("\n")[0]


def test_pathological_values_are_not_echoed_whole(tmp_path):
    huge = "87.3365" + "0" * 5000       # -ln(FLT_MIN) to 5007 digits
    name = "loss_" + "x" * 5000
    lr = "0.0" + "1" * 5000
    log = tmp_path / "train.log"
    log.write_text("\n".join(_glog(
        ("solver.cpp:218", "Iteration 0 (0 iter/s, 0.1s/20 iters), loss = 2.3"),
        ("solver.cpp:218", "Iteration 20 (1 iter/s, 1s/20 iters), loss = 44.8"),
        ("solver.cpp:237", f"    Train net output #0: {name} = {huge} "
                           f"(* 1 = {huge} loss)"),
        ("sgd_solver.cpp:105", f"Iteration 20, lr = {lr}"))) + "\n")
    report = scan_log(log.open())
    # The report keeps what it read...
    assert report.first_hit.hit_text == huge
    assert report.first_hit.hit_source == f"output #0: {name}"
    assert report.lr_at_hit.lr == lr
    # ...and quotes at most 40 characters of it, with its length.
    code, out, err = _cli(str(log))
    assert code == 1 and err == ""
    assert len(out) < 4000
    assert f"{huge[:40]}... (5007 characters)" in out
    assert f"output #0: {name[:29]}... (5016 characters) = " in out
    assert f"Learning rate: {lr[:40]}... (5003 characters) at iteration 20" in out
    assert f"explain {huge[:40]}... (5007 characters)`" in out
    assert all(len(line) <= 80 for line in str(report).splitlines())


def test_caffe_in_double_reads_the_float_clamp():
    # SoftmaxWithLossLayer<double> clamps at FLT_MIN too and prints
    # -ln(FLT_MIN) computed in double.
    report = scan_log(["Iteration 0, loss = 2.3",
                       "Iteration 20, loss = 87.3365447505531"])
    hit = report.to_dict()["first_hit"]
    assert hit["kind"] == "clamp" and hit["constant"] == "flt_min"
    assert hit["iteration"] == 20
    text = _flat(str(report))
    assert "87.3365447505531 (-ln(FLT_MIN))" in text
    assert ("Caffe's SoftmaxWithLoss clamps the label probability at FLT_MIN "
            "= 1.17549e-38, the smallest normal float32, in float and in "
            "double alike") in text


def test_dbl_min_is_a_clamp_but_not_caffes():
    report = scan_log(["Iteration 0, loss = 2.3", "Iteration 20, loss = 708.396"])
    assert report.first_hit.constant == "dbl_min"
    text = _flat(str(report))
    assert "First hit: loss = 708.396 (-ln(DBL_MIN)) at iteration 20" in text
    assert "What it means: 708.396 = -ln(DBL_MIN)." in text
    assert "numpy's finfo(float64).tiny" in text
    assert ("It is not Caffe's clamp: SoftmaxWithLossLayer<double> clamps at "
            "FLT_MIN too and reports 87.3365447505531") in text
    assert "Caffe's SoftmaxWithLoss clamps" not in text


@pytest.mark.parametrize("value, hits", [
    ("87.3365", True), ("87.33655", True), ("87.3", True), ("87.34", True),
    ("8.73365e+01", True), ("87.3365479", True), ("87.3365447505531", True),
    ("708.396", True),
    ("87.33", False), ("86.9", False), ("88.7228", False), ("87", False),
])
def test_print_rounding_of_the_clamp(value, hits):
    report = scan_log(["step 1 loss = 2.3", f"step 2 loss = {value}",
                       "step 3 loss = 2.1"])
    assert report.stuck is hits
    if hits:
        assert report.first_hit.iteration == 2


def test_caffe_log_ignores_plain_lines():
    # Parameter dumps and script prints between glog lines are no readings.
    lines = ["average_loss: 20", "loss: 5.0"] + _glog(
        ("solver.cpp:218", "Iteration 0 (0 iter/s, 0.1s/20 iters), loss = 2.3"))
    report = scan_log(lines)
    assert report.caffe and report.count == 1
    assert report.first.text == "2.3"


def test_older_caffe_format_and_bytes():
    lines = _glog(("solver.cpp:209", "Iteration 0, loss = 2.30259"),
                  ("solver.cpp:464", "Iteration 0, lr = 0.01"),
                  ("solver.cpp:209", "Iteration 20, loss = 87.3365"),
                  ("solver.cpp:464", "Iteration 20, lr = 0.01"))
    report = scan_log(line.encode() for line in lines)
    assert report.caffe and report.count == 2
    assert report.to_dict()["first_hit"]["iteration"] == 20
    assert report.to_dict()["lr_at_hit"] == "0.01"


def test_glog_variants():
    # glog 0.7 can print the year; forks put more fields on the loss line.
    lines = [
        "I20240312 22:40:03.500013 24816 solver.cpp:218] Iteration 0 "
        "(0 iter/s, 0.1s/20 iters), loss = 2.3",
        "I0312 22:40:03.600013  4816 solver.cpp:357] Iteration 20 "
        "(7.14 iter/s, 2.8s/20 iter), loss = 87.3365, lr = 0.02, m = 0.9",
    ]
    report = scan_log(lines)
    assert report.caffe and report.count == 2
    assert report.to_dict()["first_hit"]["iteration"] == 20
    assert report.to_dict()["lr_at_hit"] == "0.02"


def test_several_loss_outputs_and_accuracy():
    # Faster R-CNN style: the classifier's output is clamped, the total is not.
    lines = _glog(
        ("solver.cpp:218", "Iteration 40 (2 iter/s, 10s/20 iters), loss = 87.5365"),
        ("solver.cpp:237", "    Train net output #0: accuracy = 0.0625"),
        ("solver.cpp:237", "    Train net output #1: loss_bbox = 0.2 (* 1 = 0.2 loss)"),
        ("solver.cpp:237", "    Train net output #2: loss_cls = 87.3365 (* 1 = 87.3365 loss)"),
        ("sgd_solver.cpp:105", "Iteration 40, lr = 0.001"))
    report = scan_log(lines)
    assert report.count == 1
    reading = report.first
    assert [name for name, _, _ in reading.outputs] == [
        "output #1: loss_bbox", "output #2: loss_cls"]
    hit = report.to_dict()["first_hit"]
    assert hit["source"] == "output #2: loss_cls" and hit["iteration"] == 40
    assert "averaged 'loss =' line read 87.5365" in _flat(str(report))


def test_a_repeated_output_index_starts_a_reading():
    # Without Iteration lines, output #0 coming round again is the next step.
    lines = _glog(
        ("solver.cpp:237", "    Train net output #0: loss = 2.3 (* 1 = 2.3 loss)"),
        ("solver.cpp:237", "    Train net output #1: loss2 = 0.1 (* 1 = 0.1 loss)"),
        ("solver.cpp:237", "    Train net output #0: loss = 87.3365 (* 1 = 87.3365 loss)"),
        ("solver.cpp:237", "    Train net output #1: loss2 = 0.1 (* 1 = 0.1 loss)"))
    report = scan_log(lines)
    assert report.count == 2 and len(report.first.outputs) == 2
    assert report.first_hit.line == 3


def test_weighted_output_uses_the_raw_value():
    lines = _glog(
        ("solver.cpp:218", "Iteration 0 (0 iter/s, 0.1s/20 iters), loss = 43.6683"),
        ("solver.cpp:237", "    Train net output #0: loss = 87.3365 (* 0.5 = 43.6683 loss)"))
    assert scan_log(lines).to_dict()["first_hit"]["source"] == "output #0: loss"


def test_lr_rise_before_the_hit():
    lines = _glog(("solver.cpp:218", "Iteration 0 (0 iter/s, 0.1s/100 iters), loss = 2.3"),
                  ("sgd_solver.cpp:105", "Iteration 0, lr = 0.01"),
                  ("solver.cpp:218", "Iteration 100 (20 iter/s, 5s/100 iters), loss = 1.9"),
                  ("sgd_solver.cpp:105", "Iteration 100, lr = 0.1"),
                  ("solver.cpp:218", "Iteration 200 (20 iter/s, 5s/100 iters), loss = 87.3365"),
                  ("sgd_solver.cpp:105", "Iteration 200, lr = 0.1"))
    text = _flat(str(scan_log(lines)))
    assert "Learning rate: 0.1 at iteration 200, was 0.01 at iteration 0 " \
           "(it rose before the hit)." in text


def test_hit_at_first_reading_points_to_data_and_init():
    report = scan_log(["Iteration 0, loss = 87.3365", "Iteration 10, loss = 87.3365"])
    assert report.trend == "none"
    text = _flat(str(report))
    assert "Before it: no finite reading" in text
    assert "there from the start" in text
    assert "In order of the evidence: check the data and the labels" in text
    assert "snapshot" not in text and "checkpoint" not in text


def test_relapse():
    report = scan_log(["step 1 loss = 1.0", "step 2 loss = 87.3365",
                       "step 3 loss = 0.9", "step 4 loss = -nan",
                       "step 5 loss = -nan"])
    facts = report.to_dict()
    assert facts["first_hit"]["iteration"] == 2
    assert facts["recovered_at"]["iteration"] == 3
    assert not facts["stays"] and facts["ends_stuck"]
    assert [e["start_iteration"] for e in facts["episodes"]] == [2, 4]
    assert "It hits again at iteration 4 (line 4): -nan" in _flat(str(report))


def test_other_constants_need_a_plateau():
    # Keras clips probabilities at 1e-7: -ln(1e-7) = 16.1181.
    keras = ["Epoch 1/4", "100/100 - 2s - loss: 2.1021 - val_loss: 1.9021"]
    keras += ["100/100 - 1s - loss: 16.1181 - val_loss: 16.1181"] * 3
    report = scan_log(keras)
    hit = report.to_dict()["first_hit"]
    assert hit["constant"] == "keras_eps" and hit["line"] == 3
    assert report.stays and "Keras's default epsilon" in _flat(str(report))
    # One reading of 16.1181 on the way down is not evidence.
    passing = ["loss: 20.5", "loss: 16.1181", "loss: 12.3", "loss: 8.2"]
    assert not scan_log(passing).stuck


def test_uniform_prediction_plateau():
    stuck = [f"Iteration {i * 100}, loss = 2.30259" for i in range(5)]
    report = scan_log(stuck)
    assert report.stuck and report.first_hit is None
    assert report.to_dict()["uniform_classes"] == 10
    assert "ln(10), the loss of a uniform prediction over 10 classes" in \
        _flat(str(report))
    learns = stuck[:3] + ["Iteration 300, loss = 1.2", "Iteration 400, loss = 0.8"]
    report = scan_log(learns)
    assert not report.stuck and "then started to learn" in _flat(str(report))


def test_uniform_to_the_end_exits_1(tmp_path):
    log = tmp_path / "flat.log"
    log.write_text("\n".join(f"step {i} loss: 6.90776" for i in range(4)) + "\n")
    code, out, _ = _cli(str(log))
    assert code == 1 and "ln(1000)" in out


def _many_readings(n, caffe):
    """n readings, made line by line; every 10th reads 87.3365, so the log
    has n // 10 episodes of hits."""
    for i in range(n):
        loss = "87.3365" if i % 10 == 5 else f"{2.3 / (1 + i % 977):g}"
        if caffe:
            yield from _glog(
                ("solver.cpp:218", f"Iteration {i} (9 iter/s, 1s/1 iters), loss = {loss}"),
                ("solver.cpp:237", f"    Train net output #0: loss = {loss} (* 1 = {loss} loss)"),
                ("sgd_solver.cpp:105", f"Iteration {i}, lr = 0.01"))
        else:
            yield f"step {i} loss: {loss} lr: 0.01"


@pytest.mark.parametrize("caffe", [True, False])
def test_memory_does_not_grow_with_the_log(caffe):
    scan_log(_many_readings(10, caffe))     # fill the caches first
    peaks = []
    for n in (500, 10000):
        tracemalloc.start()
        try:
            report = scan_log(_many_readings(n, caffe))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert report.count == n and report.episode_count == n // 10
        assert len(report.episodes) == EPISODES_KEPT
        assert len(report.last_readings) == LAST_KEPT
        assert report.to_dict()["episode_count"] == n // 10
    # The readings, kept in a list, would take megabytes.
    assert max(peaks) < 64 * 1024, peaks


def test_large_log_is_fast():
    lines = []
    for i in range(5000):
        lines += _glog(
            ("solver.cpp:218", f"Iteration {i} (9 iter/s, 1s/1 iters), loss = {2.3 / (1 + i):g}"),
            ("solver.cpp:237", f"    Train net output #0: loss = {2.3 / (1 + i):g} (* 1 = {2.3 / (1 + i):g} loss)"),
            ("sgd_solver.cpp:105", f"Iteration {i}, lr = 0.01"))
    report = scan_log(lines)
    assert report.count == 5000 and not report.stuck
