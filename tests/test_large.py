"""Indexing is 64-bit throughout: a float32 array of more than 2**31 elements.

np.zeros maps untouched pages to the shared zero page, so the ~8.6 GB of
logits cost almost no memory until written; only the last row is written,
and it lies wholly past element 2**31.  Run with `pytest -m slow` (CI does).
"""
import math

import numpy as np
import pytest

import pysafemax

pytestmark = pytest.mark.slow


def test_loss_over_more_than_two_to_the_31_elements():
    classes = 1024
    rows = 2**31 // classes + 1
    x = np.zeros((rows, classes), dtype=np.float32)
    assert x.size > 2**31 and (rows - 1) * classes >= 2**31
    x[-1, 1000] = 50.0
    x[-1, 7] = 20.0
    labels = np.zeros(rows, dtype=np.int64)
    labels[-1] = 1000
    losses = pysafemax.softmax_loss(x, labels, reduction="none")
    uniform = np.float32(math.log(classes))
    assert np.all(losses[:-1] == uniform)
    expected_last = math.log1p(math.exp(-30.0) + 1022 * math.exp(-50.0))
    assert losses[-1] == pytest.approx(expected_last, rel=1e-6, abs=0)
    # The mean accumulates the unrounded (double) position losses.
    mean = pysafemax.softmax_loss(x, labels)
    assert mean == pytest.approx(((rows - 1) * math.log(classes) + expected_last) / rows,
                                 rel=1e-9)
