"""The benchmark and the exp accuracy check still run (smoke tests).

Only that they run and report what they should: their timings are not
checked here (a loaded CI machine would make that flaky); see bench/README.md.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

from pysafemax import _bindings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = importlib.util.find_spec("torch") is not None

PYSAFEMAX_ROWS = ["pysafemax naive", "pysafemax maxsub", "pysafemax stable",
                  "pysafemax stable+grad", "pysafemax softmax", "pysafemax log_softmax",
                  "pysafemax softmax out=", "pysafemax log_softmax out="]
NUMPY_ROWS = ["numpy naive", "numpy maxsub", "numpy stable"]
PROBE_ROWS = ["read probe", "exp+sum probe", "exp+store probe", "copy probe",
              "fresh copy probe"]
TORCH_ROWS = ["torch forward", "torch forward+backward", "torch softmax",
              "torch log_softmax", "torch softmax out=", "torch log_softmax out="]
# the rows that write N x C floats, compared with the exp+store and copy
# probes too
WRITE_ROWS = {"pysafemax stable+grad", "pysafemax softmax", "pysafemax log_softmax",
              "pysafemax softmax out=", "pysafemax log_softmax out=",
              "torch forward+backward", "torch softmax", "torch log_softmax",
              "torch softmax out=", "torch log_softmax out="}
# the torch row each row's "vs torch" compares with (else torch forward)
BASELINES = {"pysafemax stable+grad": "torch forward+backward",
             "torch forward+backward": "torch forward+backward",
             "pysafemax softmax": "torch softmax", "torch softmax": "torch softmax",
             "pysafemax log_softmax": "torch log_softmax",
             "torch log_softmax": "torch log_softmax",
             "pysafemax softmax out=": "torch softmax out=",
             "torch softmax out=": "torch softmax out=",
             "pysafemax log_softmax out=": "torch log_softmax out=",
             "torch log_softmax out=": "torch log_softmax out="}
FIELDS = {"shape", "elements", "logits_bytes", "threads", "row", "seconds",
          "seconds_all", "loops", "rounds", "g_elements_per_s", "gb_per_s",
          "torch_baseline", "ratio_to_torch", "ratio_to_probe",
          "ratio_to_exp_probe", "ratio_to_exp_store_probe", "ratio_to_copy_probe",
          "floor_ratio_to_torch"}


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_quick_benchmark_prints_every_row_and_saves_json(tmp_path):
    out = tmp_path / "bench.json"
    done = run("bench/run.py", "--quick", "--threads", "1,2", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout
    for name in PYSAFEMAX_ROWS + NUMPY_ROWS + PROBE_ROWS:
        assert re.search(rf"^\s+\d+\s+{re.escape(name)}\s", table, re.M), name
    for name in TORCH_ROWS:
        assert (re.search(rf"^\s+\d+\s+{re.escape(name)}\s", table, re.M) is not None) \
            == HAVE_TORCH, name
    for word in ("pysafemax", "numpy", "CPU", "date", "command"):
        assert word in table

    saved = json.loads(out.read_text())
    assert saved["header"]["threads"] == [1, 2]
    assert saved["header"]["torch"] is None or HAVE_TORCH
    results = saved["results"]
    shapes = {tuple(r["shape"]) for r in results}
    assert len(shapes) == len(saved["header"]["shapes"])
    # numpy rows once per shape (one thread), the others at each thread count
    per_shape = (2 * (len(PYSAFEMAX_ROWS) + len(PROBE_ROWS) + len(TORCH_ROWS) * HAVE_TORCH)
                 + len(NUMPY_ROWS))
    assert len(results) == len(shapes) * per_shape
    for record in results:
        assert FIELDS <= set(record), set(FIELDS) - set(record)
        assert record["seconds"] > 0 and record["rounds"] >= 1
        assert record["g_elements_per_s"] > 0 and record["gb_per_s"] > 0
        if record["row"] == "read probe":
            assert record["ratio_to_probe"] is None
        else:
            assert record["ratio_to_probe"] > 0
        if record["row"] == "exp+sum probe":
            assert record["ratio_to_exp_probe"] is None
        else:
            assert record["ratio_to_exp_probe"] > 0
        if record["row"] in WRITE_ROWS:
            assert record["ratio_to_copy_probe"] > 0
            assert record["ratio_to_exp_store_probe"] > 0
        else:
            assert record["ratio_to_copy_probe"] is None
            assert record["ratio_to_exp_store_probe"] is None
        if HAVE_TORCH:
            expected = BASELINES.get(record["row"], "torch forward")
            assert record["torch_baseline"] == expected
            assert record["ratio_to_torch"] > 0
            if record["row"].startswith("pysafemax"):
                assert record["floor_ratio_to_torch"] > 0
            else:
                assert record["floor_ratio_to_torch"] is None
        else:
            assert record["ratio_to_torch"] is None
            assert record["floor_ratio_to_torch"] is None
    assert saved["problems"] == []


def test_exp_accuracy_check_on_a_sample():
    done = run("bench/check_exp_ulp.py", "--sample", "100000")
    assert done.returncode == 0, done.stdout + done.stderr
    errors = [float(v) for v in re.findall(r"max ULP error\s+([0-9.]+)", done.stdout)]
    assert errors and max(errors) <= 1.0
    assert "PASS" in done.stdout
    # the portable twin and the scalar exp compiled for FMA give the same bits
    twins = re.findall(r"paths: (\d+) of ([\d,]+) inputs give different bits", done.stdout)
    assert len(twins) == 2 and all(differ == "0" for differ, _ in twins), done.stdout
    # and the vector exp without its range check, where the vector path exists
    if _bindings.simd_level():
        near = re.findall(r"unchecked exp: (\d+) of ([\d,]+) sampled", done.stdout)
        assert near and near[0][0] == "0" and int(near[0][1].replace(",", "")) > 0, \
            done.stdout


ADAPTER_ROWS = ["torch forward", "adapter forward", "torch forward+backward",
                "adapter forward+backward", "softmax_loss+grad"]


def test_quick_torch_adapter_benchmark_prints_every_row(tmp_path):
    out = tmp_path / "adapter.json"
    done = run("bench/torch_adapter.py", "--quick", "--threads", "1,2",
               "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    if not HAVE_TORCH:
        assert "torch is not installed" in done.stdout
        return
    for word in ("pysafemax", "torch", "CPU", "date", "command"):
        assert word in done.stdout
    saved = json.loads(out.read_text())
    assert saved["problems"] == []
    shapes = len(saved["header"]["shapes"])
    for name in ADAPTER_ROWS:
        # threads, row, time per call, ..., "vs torch" last
        threads = re.findall(rf"^\s+(\d+)\s+{re.escape(name)}\s+[\d.]+ [um]?s\s.*\dx$",
                             done.stdout, re.M)
        assert sorted(threads) == ["1"] * shapes + ["2"] * shapes, (name, threads)
    assert len(saved["results"]) == shapes * 2 * len(ADAPTER_ROWS)
    for record in saved["results"]:
        assert record["seconds"] > 0 and record["rounds"] >= 1
        assert record["ratio_to_torch"] > 0
        forward = record["row"] in ("torch forward", "adapter forward")
        assert record["torch_baseline"] == ("torch forward" if forward
                                            else "torch forward+backward")


def test_matmul_bound_runs_on_a_small_chunk():
    done = run("bench/matmul_bound.py", "--shape", "64x32x48", "--rounds", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "numpy hidden @ weight.T" in done.stdout and "GFLOP/s" in done.stdout
    assert ("best ratio of 4 numpy products" in done.stdout) == HAVE_TORCH
