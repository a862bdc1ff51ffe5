"""pysafemax.tools.diagnose.diagnose and `python -m pysafemax diagnose`.

Every batch here is built so that its findings are known by construction
(which rows overflow, clamp, hold nan, ...); the tests check those counts and
positions, and check each report's trusted_methods against what the kernel
actually reports for the batch.
"""
import io
import itertools
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import pysafemax
from pysafemax import reference
from pysafemax.tools import diagnose as diagnostics
from pysafemax.tools.cli import build_parser
from pysafemax.tools.diagnose import COUNT_KEYS, cli_diagnose, diagnose

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
    logits = np.array([[0, 100], [-100, -810], [0, 750], [-800, -801], [1, 2],
                       [0, 80]], dtype=np.float64)
    labels = np.array([0, 1, 0, 0, 1, 0])
    report = diagnose(logits, labels)
    t = report.thresholds
    assert t.dtype == "float64"
    assert t.exp_overflow == pytest.approx(F64_OVERFLOW) == pytest.approx(709.7827129)
    # Caffe's SoftmaxWithLossLayer<double> clamps at FLT_MIN too: -ln(FLT_MIN)
    # in double, not -ln(DBL_MIN) = 708.396
    assert t.clamp == 87.3365447505531 == -np.log(np.finfo(np.float32).tiny.item())
    assert t.sum_underflow == pytest.approx(-745.1332191019412)
    # gaps 100 and 710 clamp without overflowing; 750 overflows (and, being
    # the gap too, clamps); -800 underflows; gap 80 is below the clamp
    assert _counts(report) == {"clamped_rows": 3, "clamped_without_overflow_rows": 2,
                               "naive_overflow_rows": 1, "naive_underflow_rows": 1}
    assert report.positions["clamped_rows"] == [0, 1, 2]
    assert report.positions["clamped_without_overflow_rows"] == [0, 1]
    assert report.positions["naive_overflow_rows"] == [2]
    assert report.positions["naive_underflow_rows"] == [3]
    assert report.trusted_methods == ["stable"]
    assert "maxsub clamps above 87.3365" in str(report)
    assert "708" not in str(report)
    _check_report(report, logits, labels)

    # The gap-100 row alone clamps in both dtypes; only float32 overflows.
    assert _counts(diagnose(logits[:1], labels[:1])) == {
        "clamped_rows": 1, "clamped_without_overflow_rows": 1}
    as_f32 = diagnose(logits[:1].astype(np.float32), labels[:1])
    assert _counts(as_f32) == {"naive_overflow_rows": 1, "clamped_rows": 1}
    assert as_f32.thresholds.exp_overflow == pytest.approx(F32_OVERFLOW)
    # The gap-80 row alone is clean in both.
    assert diagnose(logits[5:], labels[5:]).clean
    assert diagnose(logits[5:].astype(np.float32), labels[5:]).clean


def test_float16_uses_float32_thresholds():
    logits = np.array([[0, 60], [0, 1]], dtype=np.float16)
    report = diagnose(logits, np.array([0, 1]))
    assert report.dtype == "float16" and report.thresholds.dtype == "float32"
    assert report.thresholds.clamp == pysafemax.FLT_MIN_LOSS
    assert report.clean and report.true_loss_max == pytest.approx(60.0)


def _empty_shapes():
    """(shape, axis) for every way of emptying 2-D to 4-D logits along axes
    other than the class axis: each non-class axis is 0 or not."""
    cases = []
    for ndim in (2, 3, 4):
        for axis in range(ndim):
            others = [k for k in range(ndim) if k != axis]
            for zeros in itertools.product((False, True), repeat=len(others)):
                if any(zeros):
                    shape = [2 + k for k in range(ndim)]
                    for k, zero in zip(others, zeros):
                        if zero:
                            shape[k] = 0
                    cases.append((tuple(shape), axis))
    return cases


@pytest.mark.parametrize("ignore_index", [None, -100])
@pytest.mark.parametrize("shape, axis",
                         _empty_shapes() + [((0, 3), -1), ((4, 3, 0), -2)])
def test_no_positions_is_a_clean_report(shape, axis, ignore_index):
    logits = np.zeros(shape, dtype=np.float32)
    position_shape = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    report = diagnose(logits, np.zeros(position_shape, dtype=np.int64), axis=axis,
                      ignore_index=ignore_index)
    assert report.rows == 0 and report.ignored_rows == 0 and report.loss_rows == 0
    assert report.shape == shape and report.position_shape == position_shape
    assert report.classes == shape[axis] > 0
    assert report.clean and _counts(report) == {}
    assert report.trusted_methods == ["naive", "maxsub", "stable"]
    assert report.advice == ["The batch has no positions: there is nothing to "
                             "diagnose."]
    assert report.true_loss_mean is None and report.max_abs_logit is None
    text = str(report)
    assert text.startswith(f"pysafemax diagnose: 0 rows of {shape[axis]} classes")
    assert all(len(line) <= 80 for line in text.splitlines())
    d = report.to_dict()
    assert _plain(d) and d["rows"] == 0 and d["clean"] is True


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_no_positions_in_other_dtypes_and_memmaps(tmp_path, dtype):
    np.save(tmp_path / "empty.npy", np.zeros((3, 0, 5), dtype=dtype))
    mapped = np.load(tmp_path / "empty.npy", mmap_mode="r")
    report = diagnose(mapped, np.zeros((0, 5), dtype=np.uint8), axis=0)
    assert report.rows == 0 and report.clean


@pytest.mark.parametrize("shape, axis", [((0,), 0), ((0,), 1), ((3, 0), 1),
                                         ((0, 0), 0), ((2, 0, 0), 1),
                                         ((2, 0, 4), -2)])
def test_no_classes_is_still_an_error(shape, axis):
    axis_now = 0 if len(shape) == 1 else axis % len(shape)
    labels = np.zeros(shape[:axis_now] + shape[axis_now + 1:], dtype=np.int64)
    with pytest.raises(ValueError, match="logits has no classes"):
        diagnose(np.zeros(shape, dtype=np.float32), labels, axis=axis)


def test_masked_labels_are_refused():
    logits, labels = clean_batch()
    masked = np.ma.masked_array(labels, mask=labels == 0)
    with pytest.raises(TypeError) as caught:
        diagnose(logits, masked)
    assert str(caught.value) == (
        "labels is a masked array; pysafemax does not read masks: fill the masked "
        "labels with an ignore_index value (labels.filled(-100)) and pass "
        "ignore_index")
    # unmasked too: the type is refused, not the mask
    with pytest.raises(TypeError, match="labels is a masked array"):
        diagnose(logits, np.ma.masked_array(labels))
    # the remedy the message names works
    filled = diagnose(logits, masked.filled(-100), ignore_index=-100)
    assert filled.ignored_rows == int((labels == 0).sum())


def test_masked_logits_are_refused():
    logits, labels = clean_batch()
    masked = np.ma.masked_array(logits, mask=logits > 2)
    with pytest.raises(TypeError, match="logits is a masked array"):
        diagnose(masked, labels)


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
    """{name: (argv, what stderr says)} for every kind of unusable input."""
    logits, labels = clean_batch()
    np.save(tmp / "logits.npy", logits)
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "short_labels.npy", labels[:-1])
    np.save(tmp / "int_logits.npy", logits.astype(np.int32))
    np.save(tmp / "float_labels.npy", labels.astype(np.float64))
    np.save(tmp / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp / "structured.npy", np.zeros(32, dtype=[("a", "<f4"), ("b", "<i4")]))
    np.save(tmp / "structured_labels.npy", np.zeros(32, dtype=[("a", "<i8")]))
    np.save(tmp / "scalar.npy", np.float32(1))
    np.save(tmp / "scalar_labels.npy", np.int64(1))
    np.save(tmp / "complex.npy", logits.astype(np.complex64))
    np.save(tmp / "bool.npy", logits > 0)
    np.save(tmp / "bool_labels.npy", labels > 0)
    np.save(tmp / "no_classes.npy", np.zeros((32, 0), dtype=np.float32))
    (tmp / "pickled.npy").write_bytes(pickle.dumps(logits))
    np.savez(tmp / "several.npz", a=logits, b=labels)
    np.savez(tmp / "empty.npz")
    np.savez(tmp / "object.npz", logits=np.array([None]), allow_pickle=True)
    np.savez_compressed(tmp / "object_compressed.npz", logits=np.array([None]),
                        allow_pickle=True)
    np.savez_compressed(tmp / "random.npz", logits=np.random.default_rng(0).random(
        (1000, 3)).astype(np.float32))
    corrupt = bytearray((tmp / "random.npz").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF          # inside the deflated data
    (tmp / "corrupt.npz").write_bytes(corrupt)
    with zipfile.ZipFile(tmp / "text_member.npz", "w") as archive:
        archive.writestr("logits.txt", "1 2 3")
    npy = io.BytesIO()
    np.save(npy, logits)
    with zipfile.ZipFile(tmp / "short_member.npz", "w") as archive:
        archive.writestr("logits.npy", npy.getvalue()[:-40])
    (tmp / "notes.txt").write_text("logits: 1 2 3\n")
    (tmp / "broken.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    raw = (tmp / "logits.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(raw[:len(raw) // 2])
    (tmp / "truncated_header.npy").write_bytes(raw[:20])
    raw = (tmp / "several.npz").read_bytes()
    (tmp / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    (tmp / "folder").mkdir()
    ok, lab = tmp / "logits.npy", tmp / "labels.npy"
    unreadable = "cannot read logits file"
    return {
        "missing logits": ([tmp / "nope.npy", lab], "logits file"),
        "missing labels": ([ok, tmp / "nope.npy"], "does not exist"),
        "directory": ([tmp / "folder", lab], "is a directory"),
        "text file": ([tmp / "notes.txt", lab], "is not a .npy or .npz file"),
        "pickle file": ([tmp / "pickled.npy", lab], "is not a .npy or .npz file"),
        "truncated npy": ([tmp / "truncated.npy", lab], unreadable),
        "truncated npy header": ([tmp / "truncated_header.npy", lab], unreadable),
        "object npy": ([tmp / "object.npy", lab], unreadable),
        "object npz": ([tmp / "object.npz", lab],
                       "Object arrays cannot be loaded when allow_pickle=False"),
        "object npz, compressed": ([tmp / "object_compressed.npz", lab],
                                   "Object arrays cannot be loaded"),
        "broken zip": ([tmp / "broken.npz", lab], unreadable),
        "truncated npz": ([tmp / "truncated.npz", lab], unreadable),
        "corrupt compressed npz": ([tmp / "corrupt.npz", lab], unreadable),
        "npz member not .npy": ([tmp / "text_member.npz", lab],
                                "the magic string is not correct"),
        "npz member cut short": ([tmp / "short_member.npz", lab],
                                 "the array of shape (32, 5) is truncated"),
        "several arrays": ([tmp / "several.npz", lab],
                           "holds several arrays (a, b) and none is named 'logits'"),
        "empty npz": ([ok, tmp / "empty.npz"], "holds no arrays"),
        "mismatched shapes": ([ok, tmp / "short_labels.npy"],
                              "labels must have shape (32,)"),
        "0-d labels": ([ok, tmp / "scalar_labels.npy"],
                       "labels must have shape (32,) (the logits' shape (32, 5) "
                       "without axis 1), got ()"),
        "0-d logits": ([tmp / "scalar.npy", lab],
                       "logits must have a class axis, got a 0-d array"),
        "integer logits": ([tmp / "int_logits.npy", lab],
                           "logits must be float16, float32 or float64, got dtype int32"),
        "complex logits": ([tmp / "complex.npy", lab], "got dtype complex64"),
        "bool logits": ([tmp / "bool.npy", lab], "got dtype bool"),
        "structured logits": ([tmp / "structured.npy", lab],
                              "logits must be float16, float32 or float64, got "
                              "dtype [('a', '<f4'), ('b', '<i4')]"),
        "float labels": ([ok, tmp / "float_labels.npy"],
                         "labels must be integer class indices, got dtype float64"),
        "bool labels": ([ok, tmp / "bool_labels.npy"],
                        "labels must be integer class indices, got dtype bool"),
        "structured labels": ([ok, tmp / "structured_labels.npy"],
                              "labels must be integer class indices, got dtype [("),
        "no classes": ([tmp / "no_classes.npy", lab], "logits has no classes"),
        "bad axis": ([ok, lab, "--axis", "3"], "axis 3 is out of range"),
        "huge axis": ([ok, lab, "--axis", str(10 ** 30)],
                      f"axis {10 ** 30} is out of range for logits of shape (32, 5)"),
        "huge negative axis": ([ok, lab, "--axis", str(-2 ** 70)],
                               f"axis {-2 ** 70} is out of range"),
    }


def _cli_in_process(argv):
    """(exit code, stdout, stderr) of `diagnose *argv` run in this process."""
    args = build_parser().parse_args(["diagnose", *map(str, argv)])
    out, err = io.StringIO(), io.StringIO()
    code = cli_diagnose(args.logits, args.labels, axis=args.axis,
                        ignore_index=args.ignore_index, as_json=args.json,
                        out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _assert_one_line(name, code, out, err, expected):
    assert code == 2, (name, out, err)
    assert out == "", name
    assert err.startswith("pysafemax diagnose: "), (name, err)
    assert err.count("\n") == 1 and err.endswith("\n"), (name, err)
    assert "Traceback" not in err
    assert expected in err, (name, err)


def test_cli_unusable_inputs_exit_2_with_one_line_in_process(tmp_path):
    for name, (argv, expected) in _unusable_inputs(tmp_path).items():
        _assert_one_line(name, *_cli_in_process(argv), expected)


SUBPROCESS_CASES = ("missing labels", "text file", "truncated npy", "object npz",
                    "corrupt compressed npz", "several arrays", "0-d logits",
                    "structured logits", "float labels", "huge axis")


def test_cli_unusable_inputs_exit_2_with_one_line(tmp_path):
    cases = _unusable_inputs(tmp_path)
    # all at once: each is a fresh interpreter
    running = {name: subprocess.Popen(
        [sys.executable, "-m", "pysafemax", "diagnose", *map(str, cases[name][0])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in SUBPROCESS_CASES}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        _assert_one_line(name, proc.returncode, out, err, cases[name][1])


@pytest.mark.parametrize("raised, line", [
    (MemoryError("Unable to allocate 1.00 GiB for an array"),
     "pysafemax diagnose: MemoryError: Unable to allocate 1.00 GiB for an array\n"),
    (MemoryError(), "pysafemax diagnose: MemoryError\n"),
    (RuntimeError("a bug\nover two lines"),
     "pysafemax diagnose: RuntimeError: a bug over two lines\n"),
    (OSError(5, "Input/output error"),
     "pysafemax diagnose: OSError: [Errno 5] Input/output error\n"),
])
def test_cli_unexpected_errors_exit_2_naming_the_type(tmp_path, monkeypatch, raised,
                                                      line):
    logits, labels = clean_batch()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)

    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(diagnostics, "diagnose", failing)
    code, out, err = _cli_in_process([tmp_path / "logits.npy", tmp_path / "labels.npy"])
    assert (code, out, err) == (2, "", line)


def test_cli_lets_keyboard_interrupt_through(tmp_path, monkeypatch):
    logits, labels = clean_batch()
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", labels)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnostics, "diagnose", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _cli_in_process([tmp_path / "logits.npy", tmp_path / "labels.npy"])


def _usable_edge_inputs(tmp):
    """{name: (argv, exit code)}: odd but diagnosable inputs."""
    logits, labels = clean_batch()
    np.save(tmp / "logits.npy", logits)
    np.save(tmp / "labels.npy", labels)
    np.save(tmp / "empty.npy", np.zeros((4, 3, 0), dtype=np.float32))
    np.save(tmp / "empty_labels.npy", np.zeros((4, 0), dtype=np.int64))
    np.savez(tmp / "empty.npz", logits=np.zeros((3, 0, 5), dtype=np.float64),
             labels=np.zeros((0, 5), dtype=np.int8))
    np.savez_compressed(tmp / "empty_compressed.npz",
                        logits=np.zeros((2, 0), dtype=np.float16),
                        labels=np.zeros((0,), dtype=np.uint8))
    ok, lab = tmp / "logits.npy", tmp / "labels.npy"
    return {
        "zero-length npy": ([tmp / "empty.npy", tmp / "empty_labels.npy"], 0),
        "zero-length npy, ignore_index": (
            [tmp / "empty.npy", tmp / "empty_labels.npy", "--ignore-index", "-100"], 0),
        "zero-length npz": ([tmp / "empty.npz", tmp / "empty.npz", "--axis", "0"], 0),
        "zero-length compressed npz": (
            [tmp / "empty_compressed.npz", tmp / "empty_compressed.npz", "--axis", "0"],
            0),
        "ignore_index beyond int64": ([ok, lab, "--ignore-index", str(2 ** 70)], 0),
        "ignore_index below int64": ([ok, lab, "--ignore-index", str(-2 ** 70)], 0),
    }


def test_cli_odd_but_usable_inputs_in_process(tmp_path):
    for name, (argv, expected) in _usable_edge_inputs(tmp_path).items():
        code, out, err = _cli_in_process([*argv, "--json"])
        assert (code, err) == (expected, ""), (name, err)
        d = json.loads(out)
        if name.startswith("zero-length"):
            assert d["rows"] == 0 and d["clean"] is True
            assert d["advice"] == ["The batch has no positions: there is nothing to "
                                   "diagnose."]
        else:
            assert d["ignore_index"] == int(argv[-1]) and d["ignored_rows"] == 0


def test_cli_odd_but_usable_inputs(tmp_path):
    cases = _usable_edge_inputs(tmp_path)
    running = {name: subprocess.Popen(
        [sys.executable, "-m", "pysafemax", "diagnose", *map(str, argv)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (argv, _) in cases.items()}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, err) == (cases[name][1], ""), (name, err)
        if name.startswith("zero-length"):
            assert out.startswith("pysafemax diagnose: 0 rows of "), (name, out)
            assert "there is nothing to diagnose" in out


# ---------------------------------------------------------------- .npz reading

def _npz_arrays():
    rng = np.random.default_rng(5)
    return {
        "logits": rng.normal(size=(32, 5)).astype(np.float32),
        "labels": rng.integers(0, 5, size=32),
        "fortran": np.asfortranarray(rng.normal(size=(4, 3, 5))),
        "big_endian": rng.normal(size=(6, 7)).astype(">f2"),
        "scalar": np.array(2.5),
        "empty": np.zeros((3, 0, 5), dtype=np.float32),
        "empty_fortran": np.asfortranarray(np.zeros((0, 4), dtype=np.int16)),
    }


def _assert_same_array(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want)
    assert got.flags.f_contiguous == want.flags.f_contiguous
    assert got.flags.c_contiguous == want.flags.c_contiguous


def test_npz_stored_members_are_mapped_in_place(tmp_path):
    path = tmp_path / "stored.npz"
    arrays = _npz_arrays()
    np.savez(path, **arrays)
    with zipfile.ZipFile(path) as archive:
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_STORED}
    for name, want in arrays.items():
        got = diagnostics._load(str(path), name)
        _assert_same_array(got, want)
        if want.size:
            assert isinstance(got, np.memmap), name
            assert got.filename == str(path) and got.offset > 0, name
            assert not got.flags.writeable, name


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npz_header_versions(tmp_path, version):
    path = tmp_path / "versions.npz"
    arrays = _npz_arrays()
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("fortran", "logits"):
            with archive.open(name + ".npy", "w") as member:
                np.lib.format.write_array(member, arrays[name], version=version)
    for name in ("fortran", "logits"):
        got = diagnostics._load(str(path), name)
        assert isinstance(got, np.memmap)
        _assert_same_array(got, arrays[name])


def test_npz_compressed_members_are_mapped_from_a_temporary_file(tmp_path):
    path = tmp_path / "compressed.npz"
    arrays = _npz_arrays()
    np.savez_compressed(path, **arrays)
    for name, want in arrays.items():
        got = diagnostics._load(str(path), name)
        _assert_same_array(got, want)
        if want.size:
            assert isinstance(got, np.memmap) and got.filename is None, name
            assert not got.flags.writeable, name
    report = diagnose(diagnostics._load(str(path), "logits"),
                      diagnostics._load(str(path), "labels"))
    assert report.to_dict() == diagnose(arrays["logits"], arrays["labels"]).to_dict()


def test_npz_reads_only_the_member_it_needs(tmp_path):
    path = tmp_path / "batch.npz"
    logits, labels = clean_batch()
    junk = np.random.default_rng(2).random(10_000)
    np.savez_compressed(path, logits=logits, labels=labels, junk=junk)
    with zipfile.ZipFile(path) as archive:
        junk_start = archive.getinfo("junk.npy").header_offset
    corrupt = bytearray(path.read_bytes())
    corrupt[junk_start + 2000] ^= 0xFF    # inside junk's 75 kB of deflated data
    path.write_bytes(corrupt)
    with pytest.raises(diagnostics._Unusable, match="Bad CRC-32 for file 'junk.npy'"):
        diagnostics._load(str(path), "junk")
    code, out, err = _cli_in_process([path, path, "--json"])
    assert (code, err) == (0, "")
    assert json.loads(out)["rows"] == 32


# The child: a compressed .npz of 200 MB of float32 zeros is diagnosed with
# private memory capped (RLIMIT_DATA) at what the child uses before plus
# BUDGET.  RLIMIT_DATA counts heap and anonymous maps but not file maps, so
# the memmapped temporary file costs nothing against it; decompressing the
# member into memory (np.load) does.  Resident memory (ru_maxrss) is no
# measure here: it counts the mapped file's pages as they are read, as it
# does for a memmapped .npy.
_CAPPED_DIAGNOSE = r"""
import io, json, resource, sys
import numpy as np
from pysafemax.tools import diagnose as diagnostics

path, budget = sys.argv[1], int(sys.argv[2])
diagnostics._BLOCK_ELEMENTS = 1 << 19       # blocks of 4 MB as float64
diagnostics.diagnose(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))

def vm_data():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_DATA,
                   (vm_data() + budget, resource.getrlimit(resource.RLIMIT_DATA)[1]))
try:
    with np.load(path) as archive:
        archive["logits"]
    control = "fitted"
except MemoryError:
    control = "MemoryError"
out, err = io.StringIO(), io.StringIO()
code = diagnostics.cli_diagnose(path, path, as_json=True, out=out, err=err)
print(json.dumps({"control": control, "code": code, "err": err.getvalue(),
                  "rows": json.loads(out.getvalue())["rows"] if code < 2 else None}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="RLIMIT_DATA and /proc/self/status are Linux's")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan's allocator aborts at the cap instead of raising")
def test_compressed_npz_is_diagnosed_in_bounded_memory(tmp_path):
    rows, classes = 50_000, 1000
    path = tmp_path / "big.npz"
    # written a chunk at a time, so this process never holds 200 MB either
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("logits.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False,
                         "shape": (rows, classes)})
            zeros = bytes(4 << 20)
            for start in range(0, rows * classes * 4, len(zeros)):
                member.write(zeros[:rows * classes * 4 - start])
        with archive.open("labels.npy", "w") as member:
            np.save(member, np.zeros(rows, dtype=np.int64))
    assert path.stat().st_size < 1 << 20
    budget = 32 << 20
    env = dict(os.environ, PYSAFEMAX_NUM_THREADS="1", TMPDIR=str(tmp_path),
               PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", _CAPPED_DIAGNOSE, str(path),
                           str(budget)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"control": "MemoryError", "code": 0, "err": "", "rows": rows}


def test_cli_diagnose_in_process_streams():
    # cli_diagnose writes to the streams it is given
    out, err = io.StringIO(), io.StringIO()
    assert cli_diagnose("/nonexistent/logits.npy", "labels.npy", out=out, err=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == ("pysafemax diagnose: logits file /nonexistent/logits.npy "
                              "does not exist\n")
