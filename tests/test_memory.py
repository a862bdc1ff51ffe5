"""100,000 calls leave resident memory flat: no leak in the C or cffi layer."""
import sys

import numpy as np
import pytest

import pysafemax


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_hundred_thousand_calls_leave_resident_memory_flat():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 10)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    w = rng.random(10)
    probs = rng.random((8, 10)).astype(np.float32)

    def calls(n):
        for k in range(n):
            pysafemax.softmax_loss(x, y, return_grad=True, weight=w,
                                   label_smoothing=0.1, reduction="none")
            if k % 4 == 0:
                pysafemax.softmax_loss(probs * 2, probs, method="maxsub")
            if k % 100 == 0:
                pysafemax.softmax(x)
                pysafemax.log_softmax(x)
                with pytest.raises(ValueError):
                    pysafemax.softmax_loss(x, y + 10)

    calls(10_000)                       # warm up caches and allocator pools
    before = resident_bytes()
    calls(100_000)
    grown = resident_bytes() - before
    assert grown < 4 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB"
