"""The benchmark and the exp accuracy check still run (smoke tests).

Only that they run and report what they should: their timings are not
checked here (a loaded CI machine would make that flaky); see bench/README.md.
"""
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

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


@pytest.mark.skipif(not _bindings.simd_level(), reason="no AVX2+FMA here")
def test_exp_sum_bound_prints_each_loop_against_the_probe_loop():
    done = run("bench/exp_sum_bound.py", "--floats", "1024", "--rounds", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("probe loop", "unchecked exp", "float groups", "poly6, float groups"):
        row = re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x"
                        r"\s+([\d.e+-]+)$", done.stdout, re.M)
        assert row, (name, done.stdout)
        assert float(row[1]) > 0 and float(row[3]) > 0
        assert float(row[5]) < 1e-6   # the loop's sum against float64's
    assert re.search(r"^probe loop\s.*\s1\.00x\s", done.stdout, re.M)
    assert run("bench/exp_sum_bound.py", "--floats", "1000").returncode != 0


@pytest.mark.skipif(not _bindings.simd_level(), reason="no AVX2+FMA here")
def test_exp_sum_loops_sum_the_exps_and_refuse_what_they_do_not_take():
    """Each loop the bound benchmark times computes the sum of exps (the
    probe loop to the probe's own value): a loop that skipped its work would
    not pass."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import exp_sum_bound
    finally:
        sys.path.pop(0)
    for floats in (16, 256, 272, 4096):
        x = exp_sum_bound.block(floats, seed=floats)
        exact = float(np.exp(x.astype(np.float64)).sum())
        got = exp_sum_bound.sums(x)
        assert got["probe loop"] == _bindings.exp_sum_probe_f32(x, 1, False)
        for name, value in got.items():
            assert abs(value - exact) <= 1e-6 * exact, (name, floats)
    x = exp_sum_bound.block(32)
    buf = exp_sum_bound.ffi.from_buffer("float[]", x)
    lib = exp_sum_bound.lib
    assert math.isnan(lib.psm_exp_sum_loop_f32(buf, 24, lib.PSM_EXP_SUM_PROBE_LOOP))
    assert math.isnan(lib.psm_exp_sum_loop_f32(buf, 32, 4))
