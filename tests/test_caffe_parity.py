"""method="maxsub" with Caffe's normalizations against a direct numpy
transcription of Caffe's SoftmaxLayer and SoftmaxWithLossLayer (Forward_cpu
and Backward_cpu) for Dtype float and double, which is itself checked on
hand-computed cases.  Both Dtypes clamp at FLT_MIN: Caffe writes
std::max(prob, Dtype(FLT_MIN))."""
import math

import numpy as np
import pytest

import pysafemax

FLT_MIN = np.float32(np.finfo(np.float32).tiny)
F32 = np.float32


def caffe_softmax(bottom, axis, dtype=F32):
    """SoftmaxLayer<Dtype>::Forward_cpu, loop for loop (vectorised over inner)."""
    outer = math.prod(bottom.shape[:axis])
    channels = bottom.shape[axis]
    inner = math.prod(bottom.shape[axis + 1:])
    data = bottom.astype(dtype).reshape(outer, channels, inner)
    top = np.empty_like(data)
    for i in range(outer):
        scale = data[i, 0].copy()               # scale_data = bottom[i*dim + k]
        for j in range(channels):
            bigger = scale < data[i, j]         # std::max(scale, x)
            scale[bigger] = data[i, j][bigger]
        block = data[i] - scale                 # gemm: top -= 1 * scale
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            block = np.exp(block)               # caffe_exp
            total = np.zeros(inner, dtype)      # gemv over channels, in Dtype
            for j in range(channels):
                total = total + block[j]
            top[i] = block / total              # caffe_div
    return top


def get_normalizer(mode, outer, inner, valid_count, dtype=F32):
    if mode == "full":
        normalizer = outer * inner
    elif mode == "valid":
        normalizer = valid_count
    elif mode == "batch_size":
        normalizer = outer
    else:                                      # NONE
        normalizer = 1
    return max(dtype(1.0), dtype(normalizer))


def caffe_softmax_with_loss(bottom, labels, *, axis=1, ignore_label=None,
                            normalization="valid", dtype=F32):
    """SoftmaxWithLossLayer<Dtype>: (top loss, bottom diff with top_diff = 1)."""
    prob = caffe_softmax(bottom, axis, dtype)
    outer, channels, inner = prob.shape
    label = np.asarray(labels).reshape(outer, inner)
    loss = dtype(0)
    count = 0
    for i in range(outer):
        for j in range(inner):
            y = int(label[i, j])
            if ignore_label is not None and y == ignore_label:
                continue
            assert 0 <= y < channels
            with np.errstate(divide="ignore"):
                loss -= np.log(max(prob[i, y, j], dtype(FLT_MIN)))
            count += 1
    top = loss / get_normalizer(normalization, outer, inner, count, dtype)

    diff = prob.copy()
    count = 0
    for i in range(outer):
        for j in range(inner):
            y = int(label[i, j])
            if ignore_label is not None and y == ignore_label:
                diff[i, :, j] = 0
            else:
                diff[i, y, j] -= 1
                count += 1
    loss_weight = dtype(1.0) / get_normalizer(normalization, outer, inner, count, dtype)
    diff *= loss_weight                        # caffe_scal
    return top, diff.reshape(bottom.shape)


# The transcription itself, on cases worked by hand.

def test_transcription_seed():
    seed = np.array([[100.0, 20.0]], F32)
    loss, diff = caffe_softmax_with_loss(seed, [1])
    assert loss == F32(80.0)
    np.testing.assert_array_equal(diff, [[1.0, -1.0]])     # prob {1, 1.8e-35}
    loss, _ = caffe_softmax_with_loss(seed, [0])
    assert loss == 0.0
    loss, _ = caffe_softmax_with_loss(np.array([[0.0, 100.0]], F32), [0])
    assert loss == F32(-math.log(FLT_MIN))                 # 87.3365, clamped
    # Dtype = double: what BVLC Caffe's real SoftmaxWithLossLayer<double>
    # printed for this input.
    loss, _ = caffe_softmax_with_loss(np.array([[0.0, 100.0]]), [0], dtype=np.float64)
    assert loss == 87.3365447505531


def test_transcription_walks_inner_and_normalizes():
    # outer 2, channels 2, inner 3; position (o, k) holds logits {0, ln 3}.
    x = np.zeros((2, 2, 3), F32)
    x[:, 1, :] = F32(math.log(3.0))
    labels = np.array([[0, 1, 255], [255, 255, 1]])
    per_position = {0: -math.log(0.25), 1: -math.log(0.75)}
    total = per_position[0] + 2 * per_position[1]
    expected = {"valid": total / 3, "full": total / 6, "batch_size": total / 2,
                "none": total}
    for mode, value in expected.items():
        loss, diff = caffe_softmax_with_loss(x, labels, ignore_label=255,
                                             normalization=mode)
        assert loss == pytest.approx(value, rel=1e-6, abs=0), mode
    _, diff = caffe_softmax_with_loss(x, labels, ignore_label=255)
    np.testing.assert_allclose(diff[0, :, 0], np.array([0.25 - 1, 0.75]) / 3, rtol=1e-6)
    np.testing.assert_allclose(diff[0, :, 1], np.array([0.25, 0.75 - 1]) / 3, rtol=1e-6)
    np.testing.assert_array_equal(diff[0, :, 2], 0)
    np.testing.assert_array_equal(diff[1, :, :2], 0)


def test_transcription_all_ignored_gives_zero():
    x = np.ones((2, 3), F32)
    for mode in ("valid", "full", "batch_size"):
        loss, diff = caffe_softmax_with_loss(x, [-1, -1], ignore_label=-1,
                                             normalization=mode)
        assert loss == 0.0
        np.testing.assert_array_equal(diff, 0)


# pysafemax against the transcription.

CAFFE_MODES = {"valid": "valid", "full": "full", "batch_size": "batch_size",
               "sum": "none"}


# Caffe's float arithmetic against the kernel's (sums in double, then rounded
# to Dtype): about 5e-6 relative in float, a few ULP in double.
TOLERANCE = {F32: (2e-6, 1e-6, 1e-7), np.float64: (1e-13, 1e-13, 1e-15)}


@pytest.mark.parametrize("dtype", [F32, np.float64], ids=["float", "double"])
@pytest.mark.parametrize("reduction", list(CAFFE_MODES))
@pytest.mark.parametrize("seed", range(12))
def test_maxsub_matches_caffe(reduction, seed, dtype):
    rng = np.random.default_rng(seed)
    outer, channels = int(rng.integers(1, 5)), int(rng.integers(1, 9))
    spatial = [(), (int(rng.integers(1, 4)),), (2, int(rng.integers(1, 3)))][seed % 3]
    # * 60: gaps past 87.3 in some positions, clamped in both Dtypes
    x = (rng.standard_normal((outer, channels) + spatial) * [1, 20, 60][seed % 3]).astype(dtype)
    labels = rng.integers(0, channels, (outer,) + spatial)
    ignore = 255 if seed % 2 else None
    if ignore is not None:
        labels = np.where(rng.random(labels.shape) < 0.3, ignore, labels)
        if seed % 4 == 1:
            labels[...] = ignore                       # all ignored: loss 0
    want_loss, want_diff = caffe_softmax_with_loss(
        x, labels, ignore_label=ignore, normalization=CAFFE_MODES[reduction], dtype=dtype)
    loss, grad = pysafemax.softmax_loss(x, labels, method="maxsub", reduction=reduction,
                                        ignore_index=ignore, return_grad=True)
    rel, abs_loss, abs_grad = TOLERANCE[dtype]
    assert loss == pytest.approx(float(want_loss), rel=rel, abs=abs_loss)
    np.testing.assert_allclose(grad, want_diff, rtol=rel, atol=abs_grad)


def test_maxsub_reports_caffe_s_plateau_with_an_inner_axis():
    # Caffe's (N, C, H, W) with a true loss of 100 at one pixel.
    x = np.zeros((1, 2, 2, 2), F32)
    x[0, 1, 0, 1] = 100.0
    labels = np.zeros((1, 2, 2), np.int64)
    want, _ = caffe_softmax_with_loss(x, labels, normalization="none")
    got = pysafemax.softmax_loss(x, labels, method="maxsub", reduction="none")
    assert got[0, 0, 1] == F32(pysafemax.FLT_MIN_LOSS)
    assert float(got.astype(np.float64).sum()) == pytest.approx(float(want), rel=1e-6)
    stable = pysafemax.softmax_loss(x, labels, reduction="none")
    assert stable[0, 0, 1] == F32(100.0)


@pytest.mark.parametrize("module", [pysafemax, pysafemax.reference], ids=["kernel", "reference"])
def test_caffe_normalizers_are_at_least_one_and_mean_of_nothing_is_nan(module):
    x = np.ones((3, 4), F32)
    labels = [-100, -100, -100]
    for reduction in ("valid", "full", "batch_size", "sum"):
        assert module.softmax_loss(x, labels, reduction=reduction, ignore_index=-100) == 0.0
    assert math.isnan(module.softmax_loss(x, labels, ignore_index=-100))
