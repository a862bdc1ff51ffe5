"""pysafemax.dask.softmax_loss against the single call on the same numpy data.

Chunked along rows, classes or both (uneven, odd, width-1 class chunks), on
dask's threaded scheduler and on a two-process dask.distributed
LocalCluster.  Results must agree within pysafemax.check_tolerance (relative
and absolute, as check=True allows between the kernel and the reference):
blocks holding all their classes give the single call's bits; split classes
and sums over row blocks differ by rounding only.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import pysafemax  # noqa: E402
import pysafemax.dask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C = 37, 23
# name -> chunks of (N, C) logits
LAYOUTS = {
    "one chunk": (N, C),
    "rows": ((5, 11, 21), C),
    "classes": (N, (1, 4, 18)),
    "rows and classes": ((13, 13, 11), (7, 1, 9, 6)),
    # 23 class chunks: the states merge through a two-level tree
    "width-1 classes": ((19, 18), 1),
}
ROW_LAYOUTS = [name for name, chunks in LAYOUTS.items() if chunks[1] == C]
OPTIONS = {
    "plain": {},
    "weight": {"weight": np.linspace(0.25, 3.0, C)},
    # rows 0..4 (the first row block of "rows") are all ignored
    "ignore_index": {"ignore_index": -100},
    "label_smoothing": {"label_smoothing": 0.15},
    "weight, ignore_index, smoothing": {"weight": np.linspace(0.25, 3.0, C),
                                        "ignore_index": 7, "label_smoothing": 0.3},
    "probabilities": {},
}


def data(shape=(N, C), axis=1, dtype=np.float32, probabilities=False, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    classes = shape[axis]
    if probabilities:
        t = rng.random(shape)
        return x, (t / t.sum(axis=axis, keepdims=True)).astype(dtype)
    positions = shape[:axis] + shape[axis + 1:]
    return x, rng.integers(0, classes, positions)


def labels_for(name, y):
    if name == "ignore_index":
        y = y.copy()
        y[:5] = -100
        y[20] = -100
    return y


def assert_close(got, expected, dtype, classes):
    """Within check_tolerance, relative and absolute; NaN matches NaN."""
    tol = pysafemax.check_tolerance(dtype, classes)
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, equal_nan=True)


def run_both(x, y, chunks, scheduler="threads", **options):
    """(dask results computed, single-call results); checks the grad's chunks."""
    X = da.from_array(x, chunks=chunks)
    loss, grad = pysafemax.dask.softmax_loss(X, y, return_grad=True, **options)
    assert grad.chunks == X.chunks
    assert grad.dtype == x.dtype
    got = dask.compute(loss, grad, scheduler=scheduler)
    return got, pysafemax.softmax_loss(x, y, return_grad=True, **options)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_the_single_call(layout, option, dtype):
    x, y = data(dtype=dtype, probabilities=option == "probabilities")
    y = labels_for(option, y)
    for reduction in pysafemax.REDUCTIONS:
        (loss, grad), (loss1, grad1) = run_both(x, y, LAYOUTS[layout],
                                                reduction=reduction, **OPTIONS[option])
        assert_close(loss, loss1, dtype, C)
        assert_close(grad, grad1, dtype, C)
        if reduction == "none":
            assert loss.dtype == dtype and loss.shape == (N,)
        else:
            assert isinstance(loss, np.float64)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("method", ["naive", "maxsub"])
def test_clamped_methods_match(layout, method):
    x, y = data()
    x[3, 5] = 95.0              # naive overflows, maxsub clamps at 87.3365
    x[4, y[4]] = -200.0
    for reduction in ("mean", "none"):
        (loss, grad), (loss1, grad1) = run_both(x, y, LAYOUTS[layout], method=method,
                                                reduction=reduction)
        assert_close(loss, loss1, np.float32, C)
        assert_close(grad, grad1, np.float32, C)


@pytest.mark.parametrize("layout", ROW_LAYOUTS)
def test_clamped_methods_take_smoothing_and_probabilities_with_whole_classes(layout):
    x, p = data(probabilities=True)
    for method in ("naive", "maxsub"):
        (loss, grad), (loss1, grad1) = run_both(x, p, LAYOUTS[layout], method=method,
                                                label_smoothing=0.1)
        assert_close(loss, loss1, np.float32, C)
        assert_close(grad, grad1, np.float32, C)


def test_blocks_with_whole_classes_give_the_single_calls_bits():
    x, y = data(dtype=np.float64)
    # Quarters add up exactly in any order; other weights make mean's
    # normalizer (their sum over the labels) differ by rounding, as it is
    # added per row block.
    weight = (np.arange(C) % 4 + 1) / 4
    for reduction in pysafemax.REDUCTIONS:
        (loss, grad), (loss1, grad1) = run_both(x, y, LAYOUTS["rows"], weight=weight,
                                                reduction=reduction)
        np.testing.assert_array_equal(grad, grad1)
        if reduction == "none":
            np.testing.assert_array_equal(loss, loss1)


@pytest.mark.parametrize("chunks", [(2, 3, 4), (5, 7, 6), (1, (2, 5), (5, 1))])
def test_three_d_logits_chunked_along_every_axis(chunks):
    x, y = data(shape=(5, 7, 6))
    for reduction in ("mean", "none", "batch_size", "full"):
        (loss, grad), (loss1, grad1) = run_both(x, y, chunks, reduction=reduction,
                                                ignore_index=2)
        assert_close(loss, loss1, np.float32, 7)
        assert_close(grad, grad1, np.float32, 7)


@pytest.mark.parametrize("shape, axis, chunks", [
    ((5, 6, 7), -1, (2, 4, 3)),
    ((5, 6, 7), 2, (5, 6, 2)),
    ((N, C), -1, (10, 5)),
    ((C, N), 0, (5, 10)),
])
def test_class_axis_anywhere(shape, axis, chunks):
    x, y = data(shape=shape, axis=axis % len(shape))
    for reduction in ("mean", "none", "batch_size"):
        (loss, grad), (loss1, grad1) = run_both(x, y, chunks, axis=axis,
                                                reduction=reduction)
        assert_close(loss, loss1, np.float32, shape[axis])
        assert_close(grad, grad1, np.float32, shape[axis])


@pytest.mark.parametrize("chunks", [(C,), (4,), (1,)])
def test_one_d_logits(chunks):
    x, _ = data(shape=(C,), axis=0, dtype=np.float64)
    for reduction in ("mean", "none"):
        (loss, grad), (loss1, grad1) = run_both(x, 3, chunks, reduction=reduction,
                                                label_smoothing=0.2)
        assert_close(loss, loss1, np.float64, C)
        assert_close(grad, grad1, np.float64, C)
        assert np.shape(loss) == ()


def test_float16_results_stay_float16():
    x, y = data(dtype=np.float16)
    for reduction in ("mean", "none"):
        (loss, grad), (loss1, grad1) = run_both(x, y, LAYOUTS["rows and classes"],
                                                reduction=reduction)
        assert grad.dtype == np.float16
        assert_close(loss, loss1, np.float16, C)
        assert_close(grad, grad1, np.float16, C)


def test_no_positions():
    x, y = np.zeros((0, 5), np.float32), np.zeros(0, np.int64)
    (loss, grad), (loss1, grad1) = run_both(x, y, (3, 2))
    assert np.isnan(loss) and np.isnan(loss1)
    assert grad.shape == grad1.shape == (0, 5)


def test_every_label_ignored_gives_nan_like_the_single_call():
    x, _ = data()
    y = np.full(N, -1)
    for layout in ("rows", "rows and classes"):
        (loss, grad), (loss1, grad1) = run_both(x, y, LAYOUTS[layout], ignore_index=-1)
        assert np.isnan(loss) and np.isnan(loss1)
        np.testing.assert_array_equal(grad, grad1)


def test_dask_labels_are_rechunked_and_the_logits_are_not():
    x, y = data()
    X = da.from_array(x, chunks=LAYOUTS["rows and classes"])
    Y = da.from_array(y, chunks=4)
    loss, grad = pysafemax.dask.softmax_loss(X, Y, return_grad=True, reduction="none")
    assert grad.chunks == X.chunks and loss.chunks == X.chunks[:1]
    graph = grad.dask
    for layer in graph.layers:
        if "rechunk" in layer:
            assert X.name not in graph.dependencies[layer]
    loss1, grad1 = pysafemax.softmax_loss(x, y, return_grad=True, reduction="none")
    assert_close(loss.compute(), loss1, np.float32, C)
    assert_close(grad.compute(), grad1, np.float32, C)


def test_numpy_logits_are_chunked_along_positions_only():
    x, y = data()
    loss, grad = pysafemax.dask.softmax_loss(x, y, return_grad=True)
    assert grad.chunks[1] == (C,)
    assert_close(loss.compute(), pysafemax.softmax_loss(x, y), np.float32, C)


def test_building_the_graph_computes_nothing():
    x, y = data()
    calls = []

    def logits_block(block):
        calls.append(block.shape)
        return block

    def labels_block(block):
        calls.append(block.shape)
        return block

    # meta given: else map_blocks calls the functions on empty arrays to infer it
    X = da.from_array(x, chunks=LAYOUTS["rows and classes"]).map_blocks(
        logits_block, meta=np.empty((0, 0), x.dtype))
    Y = da.from_array(y, chunks=5).map_blocks(labels_block, meta=np.empty(0, y.dtype))
    for reduction in pysafemax.REDUCTIONS:
        pysafemax.dask.softmax_loss(X, Y, reduction=reduction, return_grad=True,
                                    weight=np.ones(C), ignore_index=1)
    assert calls == []
    loss, grad = pysafemax.dask.softmax_loss(X, Y, return_grad=True)
    assert calls == []
    dask.compute(loss, grad, scheduler="threads")
    assert len(calls) == X.npartitions + Y.npartitions


def test_the_loss_alone_computes_no_gradient():
    x, y = data()
    loss, grad = pysafemax.dask.softmax_loss(
        da.from_array(x, chunks=LAYOUTS["rows and classes"]), y, return_grad=True)
    graph = dict(loss.__dask_graph__())
    needed, todo = set(), [(loss.name,)]
    while todo:
        key = todo.pop()
        if key not in needed:
            needed.add(key)
            todo.extend(dask.core.get_dependencies(graph, key))
    assert not any("grad" in key[0] for key in needed)
    assert any("grad" in key[0] for key in graph)       # only culled away


def test_with_the_threaded_scheduler_configured():
    x, y = data(dtype=np.float64)
    with dask.config.set(scheduler="threads"):
        loss, grad = pysafemax.dask.softmax_loss(
            da.from_array(x, chunks=LAYOUTS["rows and classes"]), y, return_grad=True,
            threads=1)
        loss, grad = loss.compute(), grad.compute()
    loss1, grad1 = pysafemax.softmax_loss(x, y, return_grad=True)
    assert_close(loss, loss1, np.float64, C)
    assert_close(grad, grad1, np.float64, C)


# ---- bad inputs: eager for what the metadata shows, at compute time for labels


@pytest.mark.parametrize("options, error, message", [
    ({"axis": 2}, ValueError, r"axis 2 is out of range for logits of shape \(37, 23\)"),
    ({"axis": "1"}, TypeError, "axis must be an int"),
    ({"method": "fast"}, ValueError, "method must be one of"),
    ({"reduction": "avg"}, ValueError, "reduction must be one of"),
    ({"weight": np.ones(5)}, ValueError, r"weight must have shape \(23,\)"),
    ({"label_smoothing": 2.0}, ValueError, r"label_smoothing must be in \[0, 1\]"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ({"threads": 0}, ValueError, "threads must be >= 1"),
    ({"return_grad": 1}, TypeError, "return_grad must be True or False"),
    ({"check": True}, ValueError, "check=True is not supported by pysafemax.dask"),
    ({"out": np.empty((N, C), np.float32), "return_grad": True}, ValueError,
     "out= is not supported by pysafemax.dask"),
])
def test_bad_options_fail_before_any_compute(options, error, message):
    x, y = data()
    with pytest.raises(error, match=message):
        pysafemax.dask.softmax_loss(da.from_array(x, chunks=(10, 5)), y, **options)


def test_bad_arrays_fail_before_any_compute():
    x, y = data()
    X = da.from_array(x, chunks=(10, 5))
    with pytest.raises(TypeError, match="logits must be float16, float32 or float64"):
        pysafemax.dask.softmax_loss(X.astype(np.int32), y)
    with pytest.raises(ValueError, match="logits must have a class axis"):
        pysafemax.dask.softmax_loss(da.from_array(np.float32(1.0)), 0)
    with pytest.raises(ValueError, match=r"labels must have shape \(37,\) .* got \(36,\)"):
        pysafemax.dask.softmax_loss(X, da.from_array(y[:36]))
    with pytest.raises(TypeError, match=r"must have the logits' shape \(37, 23\), got \(37,\)"):
        pysafemax.dask.softmax_loss(X, y.astype(np.float32))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        pysafemax.dask.softmax_loss(X, y.astype(bool))
    with pytest.raises(ValueError, match="ignore_index applies to class-index labels"):
        pysafemax.dask.softmax_loss(X, x, ignore_index=0)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        pysafemax.dask.softmax_loss(X[X[:, 0] > 0], y)


def test_clamped_methods_refuse_smoothing_with_split_classes():
    x, y = data()
    X = da.from_array(x, chunks=(N, 5))
    for method in ("naive", "maxsub"):
        with pytest.raises(ValueError, match=f"method='{method}' has no partial state"):
            pysafemax.dask.softmax_loss(X, y, method=method, label_smoothing=0.1)
        with pytest.raises(ValueError, match=f"method='{method}' has no partial state"):
            pysafemax.dask.softmax_loss(X, x, method=method)


@pytest.mark.parametrize("layout", ["rows", "rows and classes"])
def test_a_bad_label_fails_at_compute_time_naming_its_whole_position(layout):
    x, y = data()
    y[25] = C
    loss = pysafemax.dask.softmax_loss(da.from_array(x, chunks=LAYOUTS[layout]), y)
    with pytest.raises(ValueError) as single:
        pysafemax.softmax_loss(x, y)
    with pytest.raises(ValueError) as lazy:
        loss.compute(scheduler="threads")
    assert str(lazy.value) == str(single.value) == (
        "labels[25] = 23 is out of range for C = 23 classes (valid labels are 0..22)")


def test_a_huge_uint64_label_is_out_of_range_not_ignored():
    x, y = data()
    y = y.astype(np.uint64)
    y[30] = 2**64 - 1           # -1 as int64
    loss = pysafemax.dask.softmax_loss(da.from_array(x, chunks=(10, C)), y, ignore_index=-1)
    with pytest.raises(ValueError, match=r"labels\[30\] = 18446744073709551615 is out"):
        loss.compute()


def test_import_without_dask_says_how_to_install_it():
    code = ("import sys; sys.modules['dask'] = None\n"
            "import pysafemax\n"
            "try:\n"
            "    import pysafemax.dask\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'pip install "dask[array]" (the "dask" extra: pip install ".[dask]"' in done.stdout


# ---- a two-process LocalCluster: tasks pickled, states sent between workers


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.mark.parametrize("layout", ["rows", "rows and classes", "width-1 classes"])
def test_on_a_local_cluster(cluster_client, layout):
    x, y = data(dtype=np.float64)
    y = labels_for("ignore_index", y)
    options = dict(weight=np.linspace(0.25, 3.0, C), ignore_index=-100,
                   label_smoothing=0.1)
    for reduction in ("mean", "none", "valid"):
        X = da.from_array(x, chunks=LAYOUTS[layout])
        loss, grad = pysafemax.dask.softmax_loss(X, y, return_grad=True,
                                                 reduction=reduction, **options)
        loss, grad = cluster_client.compute([loss, grad], sync=True)
        loss1, grad1 = pysafemax.softmax_loss(x, y, return_grad=True,
                                              reduction=reduction, **options)
        assert_close(loss, loss1, np.float64, C)
        assert_close(grad, grad1, np.float64, C)


def test_on_a_local_cluster_probabilities_and_a_bad_label(cluster_client):
    x, p = data(probabilities=True)
    loss = pysafemax.dask.softmax_loss(da.from_array(x, chunks=(10, 6)), p)
    assert_close(cluster_client.compute(loss, sync=True), pysafemax.softmax_loss(x, p),
                 np.float32, C)
    _, y = data()
    y[33] = -3
    loss = pysafemax.dask.softmax_loss(da.from_array(x, chunks=(10, 6)), y)
    with pytest.raises(ValueError, match=r"labels\[33\] = -3 is out of range"):
        cluster_client.compute(loss, sync=True)


# ---- the benchmark still runs


def test_quick_overhead_benchmark_runs():
    # this checkout's pysafemax (the script's folder, bench/, would come first)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    done = subprocess.run([sys.executable, "bench/dask_overhead.py", "--quick"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in ("pysafemax", "dask", "CPU", "date", "command"):
        assert word in done.stdout
    ratios = re.findall(r"^\s+dask.*\s(\d+\.\d+)x\s", done.stdout, re.M)
    assert len(ratios) >= 4, done.stdout     # 2 layouts x (loss, loss+grad) x schedulers
