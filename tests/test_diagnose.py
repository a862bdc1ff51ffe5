"""pysafemax.diagnostics.diagnose and `python -m pysafemax diagnose`.

Every batch here is built so that its findings are known by construction
(which rows overflow, clamp, hold nan, ...); the tests check those counts and
positions, and check each report's trusted_methods against what the kernel
actually reports for the batch.
"""
import io
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import pysafemax
from pysafemax import diagnostics, reference
from pysafemax.diagnostics import COUNT_KEYS, cli_diagnose, diagnose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32_OVERFLOW = float(np.log(np.float64(np.finfo(np.float32).max)))   # 88.7228
F64_OVERFLOW = float(np.log(np.finfo(np.float64).max))               # 709.783


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pysafemax", "diagnose", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _counts(report):
    """The non-zero counts, for exact comparison."""
    return {key: n for key, n in report.counts.items() if n}


def _plain(value):
    """True when value holds only JSON's Python types (no numpy scalars)."""
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def _check_report(report, logits, labels, *, axis=1, ignore_index=None):
    """What every report must satisfy: the terminal text fits 80 columns, the
    dict is plain JSON, and the methods it trusts are exactly those whose
    kernel losses match the true loss on this batch."""
    text = str(report)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    d = report.to_dict()
    assert _plain(d)
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    if report.counts["out_of_range_labels"]:
        assert report.trusted_methods == []
        return
    true = reference.softmax_loss(np.asarray(logits, dtype=np.float64), labels,
                                  axis=axis, ignore_index=ignore_index,
                                  reduction="none")
    for method in pysafemax.METHODS:
        got = pysafemax.softmax_loss(logits, labels, axis=axis, method=method,
                                     ignore_index=ignore_index,
                                     reduction="none").astype(np.float64)
        right = np.isclose(got, true, rtol=1e-5, atol=1e-6) & ~np.isnan(true)
        assert right.all() == (method in report.trusted_methods), (method, got, true)


# ---------------------------------------------------------------- batches

def diverging_batch():
    """64 rows of 10 classes: 40 healthy rows, 20 whose logits have blown up
    to the 1e3 scale (one class at 1500, the label at -1000), 2 rows of nan
    (the next step of the same run), 2 more healthy rows."""
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 2, size=(64, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=64)
    blown = np.arange(40, 60)
    logits[blown] = rng.uniform(-500, 500, size=(20, 10))
    logits[blown, labels[blown]] = -1000
    logits[blown, (labels[blown] + 1) % 10] = 1500
    logits[60:62] = np.nan
    return logits, labels


def clean_batch():
    rng = np.random.default_rng(1)
    return (rng.normal(0, 3, size=(32, 5)).astype(np.float32),
            rng.integers(0, 5, size=32))


# ---------------------------------------------------------------- diagnose()

def test_diverging_model():
    logits, labels = diverging_batch()
    report = diagnose(logits, labels)
    assert _counts(report) == {"nan_rows": 2, "naive_overflow_rows": 20,
                               "clamped_rows": 20}
    assert report.positions["nan_rows"] == [60, 61]
    assert report.positions["naive_overflow_rows"] == list(range(40, 50))
    assert report.positions["clamped_rows"] == list(range(40, 50))
    assert report.rows == 64 and not report.clean
    assert report.nan_rows == 2 and report.clamped_rows == 20   # counts as attributes
    assert report.trusted_methods == []
    assert report.max_abs_logit == 1500.0
    assert report.max_gap == 2500.0
    finite = ~np.isnan(logits).any(axis=1)
    true = reference.softmax_loss(logits[finite].astype(np.float64), labels[finite],
                                  reduction="none")
    assert report.loss_rows == 62
    assert report.true_loss_max == pytest.approx(true.max(), rel=1e-12)
    assert report.true_loss_mean == pytest.approx(true.mean(), rel=1e-12)
    # the data first, then the blown-up logits, then the method
    advice = report.advice
    assert advice[0].startswith("Check the input data first")
    assert "2 rows with nan (at 60, 61)" in advice[0]
    assert advice[1].startswith("The logits are huge (max |logit| 1500")
    assert "smaller initial weights" in advice[1]
    assert "lower the learning rate" in advice[1]
    assert any("BatchNorm" in a for a in advice[2:])
    assert any("method='stable'" in a for a in advice)
    assert not any("confidently wrong" in a for a in advice)
    _check_report(report, logits, labels)


def test_clean_batch_trusts_every_method():
    logits, labels = clean_batch()
    report = diagnose(logits, labels)
    assert report.clean
    assert _counts(report) == {}
    assert report.trusted_methods == ["naive", "maxsub", "stable"]
    assert len(report.advice) == 1 and report.advice[0].startswith("Nothing is wrong")
    assert report.true_loss_mean == pytest.approx(
        pysafemax.softmax_loss(logits.astype(np.float64), labels), rel=1e-12)
    assert report.max_abs_logit == float(np.abs(logits).max())
    _check_report(report, logits, labels)


def test_clamp_without_overflow_is_a_confidently_wrong_model():
    # Logits {50, -50} with the label on -50: the true loss is 100, beyond
    # 87.3365, yet no exp overflows.  naive's p = e^-50 / e^50 is below
    # FLT_MIN too, so only stable is right.
    logits = np.zeros((8, 2), dtype=np.float32)
    labels = np.zeros(8, dtype=np.int64)
    logits[[2, 5]] = [-50, 50]
    report = diagnose(logits, labels)
    assert _counts(report) == {"clamped_rows": 2, "clamped_without_overflow_rows": 2}
    assert report.positions["clamped_rows"] == [2, 5]
    assert report.trusted_methods == ["stable"]
    assert report.max_gap == 100.0 and report.true_loss_max == pytest.approx(100.0)
    assert report.advice[0].startswith("The model is confidently wrong: 2 rows have a "
                                       "true loss above 87.3365")
    assert "check that these labels are right" in report.advice[0]
    assert "method='stable'" in report.advice[1]
    assert not any("huge" in a or "BatchNorm" in a for a in report.advice)
    maxsub = pysafemax.softmax_loss(logits, labels, method="maxsub", reduction="none")
    assert maxsub[2] == np.float32(pysafemax.FLT_MIN_LOSS)
    _check_report(report, logits, labels)


def test_sum_of_exps_overflows_though_no_exp_does():
    # Ten logits of 88.5: each exp is 2.7e38 < FLT_MAX, their sum is not.
    logits = np.full((3, 10), 88.5, dtype=np.float32)
    logits[0] = 1.0
    labels = np.zeros(3, dtype=np.int64)
    report = diagnose(logits, labels)
    assert _counts(report) == {"naive_overflow_rows": 2}
    assert report.positions["naive_overflow_rows"] == [1, 2]
    assert report.trusted_methods == ["maxsub", "stable"]
    _check_report(report, logits, labels)


def test_underflow_all_logits_very_negative():
    logits = np.array([[-200, -201, -202], [1, 2, 3], [-104.5, -105, -104.2],
                       [-103.5, -103.6, -103.7]], dtype=np.float32)
    labels = np.array([0, 2, 1, 0])
    report = diagnose(logits, labels)
    # row 3 stays above ln(2^-150) = -103.97: naive's sum is tiny, not 0,
    # but its exp of -103.5 keeps a bit or two (the subnormal finding)
    assert _counts(report) == {"naive_underflow_rows": 2, "naive_subnormal_rows": 1}
    assert report.positions["naive_underflow_rows"] == [0, 2]
    assert report.positions["naive_subnormal_rows"] == [3]
    assert report.trusted_methods == ["maxsub", "stable"]
    assert np.isnan(pysafemax.softmax_loss(logits, labels, method="naive",
                                           reduction="none")[[0, 2]]).all()
    assert report.advice[0].startswith("The logits are huge")
    assert "2 rows with every logit below -103.972" in report.advice[0]
    _check_report(report, logits, labels)


def test_positive_infinity():
    logits, labels = clean_batch()
    logits[[4, 9], 2] = np.inf
    report = diagnose(logits, labels)
    assert _counts(report) == {"inf_rows": 2}
    assert report.positions["inf_rows"] == [4, 9]
    assert report.trusted_methods == []
    assert report.advice[0].startswith("Check the input data first: the logits have "
                                       "2 rows with +inf (at 4, 9)")
    assert report.loss_rows == 30
    _check_report(report, logits, labels)


def test_label_on_negative_infinity():
    logits, labels = clean_batch()
    logits[3, labels[3]] = -np.inf            # a masked class as the label
    logits[7, (labels[7] + 1) % 5] = -np.inf  # a mask elsewhere: harmless
    report = diagnose(logits, labels)
    assert _counts(report) == {"label_on_neg_inf_rows": 1}
    assert report.positions["label_on_neg_inf_rows"] == [3]
    assert report.trusted_methods == ["stable"]
    assert report.advice[0].startswith("Check the labels against the mask: 1 label "
                                       "on a -inf logit (at 3)")
    assert np.isinf(pysafemax.softmax_loss(logits, labels, reduction="none")[3])
    assert report.loss_rows == 31 and report.max_gap < np.inf
    _check_report(report, logits, labels)


def test_every_logit_negative_infinity():
    logits, labels = clean_batch()
    logits[11] = -np.inf
    report = diagnose(logits, labels)
    assert _counts(report) == {"all_neg_inf_rows": 1}
    assert report.positions["all_neg_inf_rows"] == [11]
    assert report.trusted_methods == []
    _check_report(report, logits, labels)


def test_out_of_range_labels_are_counted_not_raised():
    logits, labels = clean_batch()
    labels = labels.copy()
    labels[[1, 6, 20]] = [5, -1, 255]
    report = diagnose(logits, labels)
    assert _counts(report) == {"out_of_range_labels": 3}
    assert report.positions["out_of_range_labels"] == [1, 6, 20]
    assert report.out_of_range_values == [5, -1, 255]
    assert report.trusted_methods == []
    assert report.advice[0] == (
        "Check the labels first: 3 labels are outside 0..4 (5 at 1, -1 at 6, 255 "
        "at 20); no method computes a loss for them. A 'void' label such as -1 or "
        "255 needs ignore_index (--ignore-index). Otherwise check the class count "
        "(num_output) and off-by-one label files.")
    # the other rows are still measured
    assert report.loss_rows == 29
    _check_report(report, logits, labels)


def test_uint64_labels_beyond_int64_do_not_wrap():
    logits = np.zeros((2, 3), dtype=np.float32)
    labels = np.array([2 ** 63 + 1, 2], dtype=np.uint64)
    report = diagnose(logits, labels, ignore_index=-1)
    assert _counts(report) == {"out_of_range_labels": 1}
    assert report.out_of_range_values == [2 ** 63 + 1]


def test_ignore_index_skips_positions():
    logits, labels = clean_batch()
    labels = labels.copy()
    labels[[0, 3]] = 255
    logits[3] = np.nan                        # ignored: not a finding
    logits[5] = [0, 0, 0, 0, 1000]            # not ignored: overflows
    labels[5] = 0
    report = diagnose(logits, labels, ignore_index=255)
    assert report.ignored_rows == 2
    assert _counts(report) == {"naive_overflow_rows": 1, "clamped_rows": 1}
    assert report.positions["naive_overflow_rows"] == [5]
    assert report.loss_rows == 30
    assert report.to_dict()["ignore_index"] == 255
    assert "ignore_index 255: 2 rows skipped" in str(report)
    _check_report(report, logits, labels, ignore_index=255)


def spatial_batch():
    """Segmentation-like (N, C, H, W) = (2, 4, 3, 5) logits."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, size=(2, 4, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 3, 5))
    logits[1, :, 2, 3] = [0, 0, 0, 0]
    logits[1, labels[1, 2, 3], 2, 3] = 95.0   # overflow at position (1, 2, 3)
    logits[0, :, 1, 4] = np.nan               # nan at (0, 1, 4)
    labels[0, 0, 0] = 7                       # out of range at (0, 0, 0)
    return logits, labels


def test_spatial_positions_and_moved_axis():
    logits, labels = spatial_batch()
    report = diagnose(logits, labels, axis=1)
    assert _counts(report) == {"naive_overflow_rows": 1, "nan_rows": 1,
                               "out_of_range_labels": 1}
    assert report.rows == 30
    assert report.index_tuples("naive_overflow_rows") == [(1, 2, 3)]
    assert report.positions["naive_overflow_rows"] == [1 * 15 + 2 * 5 + 3]
    assert report.index_tuples("nan_rows") == [(0, 1, 4)]
    d = report.to_dict()
    assert d["nan_indices"] == [[0, 1, 4]] and d["nan_positions"] == [9]
    assert d["out_of_range_indices"] == [[0, 0, 0]]
    assert "(1, 2, 3)" in str(report)
    _check_report(report, logits, labels)

    # the same batch with the classes last (a non-contiguous view)
    moved = np.moveaxis(logits, 1, -1)
    other = diagnose(moved, labels, axis=-1)
    assert other.axis == 3 and other.shape == (2, 3, 5, 4)
    assert other.counts == report.counts and other.positions == report.positions
    assert other.max_abs_logit == report.max_abs_logit
    assert other.true_loss_mean == report.true_loss_mean


def test_blocks_split_the_spatial_axis(monkeypatch):
    # Blocks of 7 positions cut through H x W; nothing may change.
    logits, labels = spatial_batch()
    whole = diagnose(logits, labels).to_dict()
    monkeypatch.setattr(diagnostics, "_BLOCK_POSITIONS", 7)
    split = diagnose(logits, labels).to_dict()
    # the mean is summed block by block: equal up to rounding
    assert split.pop("true_loss_mean") == pytest.approx(whole.pop("true_loss_mean"),
                                                        rel=1e-14)
    assert split == whole


def test_float64_thresholds():
    logits = np.array([[0, 100], [-100, -810], [0, 750], [-800, -801], [1, 2]],
                      dtype=np.float64)
    labels = np.array([0, 1, 0, 0, 1])
    report = diagnose(logits, labels)
    t = report.thresholds
    assert t.dtype == "float64"
    assert t.exp_overflow == pytest.approx(F64_OVERFLOW) == pytest.approx(709.7827129)
    assert t.clamp == pysafemax.DBL_MIN_LOSS
    assert t.sum_underflow == pytest.approx(-745.1332191019412)
    # gap 100 is nothing in float64; gap 710 clamps; 750 overflows (and,
    # being the gap too, clamps); -800 underflows
    assert _counts(report) == {"clamped_rows": 2, "clamped_without_overflow_rows": 1,
                               "naive_overflow_rows": 1, "naive_underflow_rows": 1}
    assert report.positions["clamped_rows"] == [1, 2]
    assert report.positions["naive_overflow_rows"] == [2]
    assert report.positions["naive_underflow_rows"] == [3]
    assert report.trusted_methods == ["stable"]
    _check_report(report, logits, labels)

    # The gap-100 row alone: clean in float64, clamped in float32.
    assert diagnose(logits[:1], labels[:1]).clean
    as_f32 = diagnose(logits[:1].astype(np.float32), labels[:1])
    assert _counts(as_f32) == {"naive_overflow_rows": 1, "clamped_rows": 1}
    assert as_f32.thresholds.exp_overflow == pytest.approx(F32_OVERFLOW)


def test_float16_uses_float32_thresholds():
    logits = np.array([[0, 60], [0, 1]], dtype=np.float16)
    report = diagnose(logits, np.array([0, 1]))
    assert report.dtype == "float16" and report.thresholds.dtype == "float32"
    assert report.thresholds.clamp == pysafemax.FLT_MIN_LOSS
    assert report.clean and report.true_loss_max == pytest.approx(60.0)


def test_one_unbatched_position():
    report = diagnose(np.array([0.0, 200.0], dtype=np.float32), np.array(0))
    assert report.rows == 1
    assert _counts(report) == {"naive_overflow_rows": 1, "clamped_rows": 1}
    assert report.index_tuples("clamped_rows") == [()]


def test_first_positions_are_capped():
    logits = np.zeros((50, 3), dtype=np.float32)
    logits[::2, 0] = np.nan
    report = diagnose(logits, np.zeros(50, dtype=np.int64))
    assert report.counts["nan_rows"] == 25
    assert report.positions["nan_rows"] == list(range(0, 20, 2))
    assert len(report.to_dict()["nan_positions"]) == diagnostics.MAX_POSITIONS


def test_bad_arguments_raise_as_softmax_loss_does():
    logits, labels = clean_batch()
    with pytest.raises(TypeError, match="logits must be float16, float32 or float64"):
        diagnose(logits.astype(np.int32), labels)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        diagnose(logits, labels, axis=2)
    with pytest.raises(ValueError, match=r"labels must have shape \(32,\)"):
        diagnose(logits, labels[:-1])
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        diagnose(logits, labels.astype(np.float32))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        diagnose(logits, labels, ignore_index=1.5)


def test_big_memmap_streams_in_bounded_memory(tmp_path, monkeypatch):
    rows = 300_000
    path = tmp_path / "big.npy"
    logits = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                       shape=(rows, 10))
    logits[:] = 0
    logits[rows - 1, 3] = np.nan
    del logits
    mapped = np.load(path, mmap_mode="r")
    labels = np.zeros(rows, dtype=np.int64)
    monkeypatch.setattr(diagnostics, "_BLOCK_POSITIONS", 8192)
    tracemalloc.start()
    try:
        report = diagnose(mapped, labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.counts["nan_rows"] == 1 and report.positions["nan_rows"] == [rows - 1]
    assert peak < mapped.nbytes / 3, peak     # the 12 MB logits were never copied

    # float16 on disk: each block is converted, not the whole array, and a
    # bad axis still names the full shape
    half = tmp_path / "half.npy"
    np.save(half, np.zeros((rows, 10), dtype=np.float16))
    mapped16 = np.load(half, mmap_mode="r")
    with pytest.raises(ValueError, match=r"axis 2 is out of range for logits of "
                                         r"shape \(300000, 10\)"):
        diagnose(mapped16, labels, axis=2)
    assert diagnose(mapped16, labels).clean


# ---------------------------------------------------------------- CLI

def test_cli_diverging_batch(tmp_path):
    logits, labels = diverging_batch()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    result = _cli(tmp_path / "logits.npy", tmp_path / "labels.npy")
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("pysafemax diagnose: 64 rows of 10 classes; logits 64x10 "
                          "float32, axis 1\n")
    assert "  rows holding nan                               2   60, 61\n" in out
    assert "  naive: exp or its sum overflows               20   40, 41, 42," in out
    assert "trusted: none; untrusted: naive, maxsub, stable" in out
    assert "\n  1. Check the input data first" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_cli_clean_batch_json(tmp_path):
    logits, labels = clean_batch()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels.astype(np.int32))
    result = _cli(tmp_path / "logits.npy", tmp_path / "labels.npy", "--json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    for key in ("rows", *COUNT_KEYS, "max_abs_logit", "max_gap", "true_loss_mean",
                "true_loss_max", "trusted_methods", "advice", "nan_positions",
                "clamped_positions", "naive_overflow_indices"):
        assert key in d, key
    assert d["rows"] == 32 and d["clean"] is True
    assert all(d[key] == 0 for key in COUNT_KEYS)
    assert d["trusted_methods"] == ["naive", "maxsub", "stable"]
    assert d["max_abs_logit"] == pytest.approx(float(np.abs(logits).max()))
    assert d["advice"][0].startswith("Nothing is wrong")


def test_cli_big_memmapped_npy(tmp_path):
    rows = 300_000
    logits = np.zeros((rows, 10), dtype=np.float32)
    labels = np.zeros(rows, dtype=np.int64)
    logits[70_000, 9] = 1000.0          # overflow and clamp, in the second block
    logits[150_001] = -300.0            # naive's sum underflows
    logits[rows - 1, 0] = np.nan
    labels[200_000] = -100               # ignored
    logits[200_000] = np.nan
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)
    result = _cli(tmp_path / "logits.npy", tmp_path / "labels.npy", "--json",
                  "--ignore-index", "-100")
    assert result.returncode == 1, result.stderr
    d = json.loads(result.stdout)
    assert d["rows"] == rows and d["ignored_rows"] == 1
    assert d["naive_overflow_rows"] == 1 and d["naive_overflow_positions"] == [70_000]
    assert d["clamped_rows"] == 1 and d["clamped_positions"] == [70_000]
    assert d["naive_underflow_rows"] == 1 and d["naive_underflow_positions"] == [150_001]
    assert d["nan_rows"] == 1 and d["nan_positions"] == [rows - 1]
    assert d["max_abs_logit"] == 1000.0 and d["max_gap"] == 1000.0
    assert d["loss_rows"] == rows - 2


def test_cli_npz_inputs(tmp_path):
    logits, labels = spatial_batch()
    np.savez(tmp_path / "batch.npz", logits=logits, labels=labels, image=np.zeros(3))
    np.savez(tmp_path / "only.npz", logits)              # one array, arr_0
    np.savez_compressed(tmp_path / "labels.npz", labels)
    for args in (("batch.npz", "batch.npz"), ("only.npz", "labels.npz")):
        result = _cli(*(tmp_path / a for a in args), "--json")
        assert result.returncode == 1, result.stderr
        d = json.loads(result.stdout)
        assert d["naive_overflow_indices"] == [[1, 2, 3]]
        assert d["out_of_range_labels"] == 1 and d["out_of_range_values"] == [7]


def _unusable_inputs(tmp):
    """(name, argv) for every kind of unusable input."""
    logits, labels = clean_batch()
    np.save(tmp / "logits.npy", logits)
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "short_labels.npy", labels[:-1])
    np.save(tmp / "int_logits.npy", logits.astype(np.int32))
    np.save(tmp / "float_labels.npy", labels.astype(np.float64))
    np.save(tmp / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp / "several.npz", a=logits, b=labels)
    np.savez(tmp / "empty.npz")
    (tmp / "notes.txt").write_text("logits: 1 2 3\n")
    (tmp / "broken.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    raw = (tmp / "logits.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(raw[:len(raw) // 2])
    (tmp / "folder").mkdir()
    ok, lab = tmp / "logits.npy", tmp / "labels.npy"
    return {
        "missing logits": ([tmp / "nope.npy", lab], "logits file"),
        "missing labels": ([ok, tmp / "nope.npy"], "does not exist"),
        "directory": ([tmp / "folder", lab], "is a directory"),
        "text file": ([tmp / "notes.txt", lab], "is not a .npy or .npz file"),
        "truncated npy": ([tmp / "truncated.npy", lab], "cannot read logits file"),
        "object npy": ([tmp / "object.npy", lab], "cannot read logits file"),
        "broken zip": ([tmp / "broken.npz", lab], "cannot read logits file"),
        "several arrays": ([tmp / "several.npz", lab],
                           "holds several arrays (a, b) and none is named 'logits'"),
        "empty npz": ([ok, tmp / "empty.npz"], "holds no arrays"),
        "mismatched shapes": ([ok, tmp / "short_labels.npy"],
                              "labels must have shape (32,)"),
        "integer logits": ([tmp / "int_logits.npy", lab],
                           "logits must be float16, float32 or float64, got dtype int32"),
        "float labels": ([ok, tmp / "float_labels.npy"],
                         "labels must be integer class indices, got dtype float64"),
        "bad axis": ([ok, lab, "--axis", "3"], "axis 3 is out of range"),
    }


def test_cli_unusable_inputs_exit_2_with_one_line(tmp_path):
    cases = _unusable_inputs(tmp_path)
    # all at once: each is a fresh interpreter
    running = {name: subprocess.Popen(
        [sys.executable, "-m", "pysafemax", "diagnose", *map(str, argv)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _) in cases.items()}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        expected = cases[name][1]
        assert proc.returncode == 2, (name, out, err)
        assert out == "", name
        assert err.startswith("pysafemax diagnose: "), (name, err)
        assert err.count("\n") == 1 and err.endswith("\n"), (name, err)
        assert "Traceback" not in err
        assert expected in err, (name, err)


def test_cli_diagnose_in_process_streams():
    # cli_diagnose writes to the streams it is given
    out, err = io.StringIO(), io.StringIO()
    assert cli_diagnose("/nonexistent/logits.npy", "labels.npy", out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == ("pysafemax diagnose: logits file /nonexistent/logits.npy "
                              "does not exist\n")
