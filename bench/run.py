"""Benchmark pysafemax against its numpy references, PyTorch and the memory.

    python bench/run.py [--json FILE] [--plot FILE.png] [--quick]
                        [--threads 1,2] [--shapes 32x10,8192x1000]
                        [--dtype float64]

For each shape (float32 logits: random normal * 4; random int64 labels) and
each thread count (1 and all cores) it times these rows, each a loss with
reduction "mean":

  pysafemax naive / maxsub / stable   softmax_loss(x, y, method=..., threads=n)
  pysafemax stable+grad               the same with return_grad=True, out=grad
                                      (a preallocated gradient array)
  pysafemax softmax / log_softmax     softmax(x, threads=n) (stable) and
                                      log_softmax(x, threads=n): an N x C
                                      result allocated per call
  pysafemax softmax / log_softmax out=
                                      the same into a preallocated N x C
                                      array (out=)
  numpy naive / maxsub / stable       pysafemax.reference.softmax_loss; numpy
                                      runs on one thread, so these rows are
                                      timed once, in the first thread group
  torch forward                       torch.nn.functional.cross_entropy(x, y)
  torch forward+backward              the same, then torch.autograd.grad of
                                      the loss with respect to x
  torch softmax / log_softmax         torch.softmax(x, 1), torch.log_softmax(x, 1)
  torch softmax / log_softmax out=    the same with out= the rows' preallocated
                                      array
  read probe                          psm_read_probe_f32: a SIMD sum over
                                      the same bytes with the same threads
  exp+sum probe                       psm_exp_sum_probe_f32: the kernel's own
                                      vector exp of every element, summed, on
                                      the kernel's chunks and the same threads
                                      (the cost floor of a forward pass)
  exp+store probe                     psm_exp_store_probe_f32: the same exps
                                      stored into the gradient buffer while
                                      summed, then scaled in place per chunk
                                      (the floor of a gradient that computes
                                      each exp once, without the max pass)
  copy probe                          psm_copy_probe_f32: x copied into the
                                      gradient buffer with vector loads and
                                      stores, same threads (the floor of
                                      anything that writes a gradient)
  fresh copy probe                    the same into a new array each call
                                      (np.empty_like): the floor of anything
                                      that returns N x C floats, softmax and
                                      log_softmax here and in torch, whose
                                      pages the OS must map and zero first

With --dtype float64 the logits are float64 (the same draws' distribution)
and the probe rows, which are float32 code, are left out.

and prints the median time per call with the fastest and slowest round
(as fractions of the median), G elements/s and GB/s (logits bytes over
time), the speed against torch at the same thread count (torch's best time
over the rounds / the row's median: torch's own time moves with its
allocator's state, so it is warmed up and given its best; +grad rows
against torch forward+backward, softmax and log_softmax against torch's
own), what that ratio would be at the row's floor probe's speed ("floor":
torch's best time / the probe's median; the exp+store probe for a
pysafemax row that writes N x C floats, else the exp+sum probe: a target
above it asks for more than the probe itself reaches), and against the
probes (probe time / row time): the read probe (the
share of the read bandwidth reached), the exp+sum probe (every row but that
probe), the exp+store probe (every row that writes N x C floats), the copy
probe (the rows that write into a given buffer: +grad and out=) and the
fresh copy probe (the rows that return a new N x C array: softmax,
log_softmax and their torch peers).

Timing: arrays are made and written before timing; every row is called once
untimed, then calibrated to loop k calls per measurement (at least the
target time, 20 ms).  Rounds go round-robin over all rows of a shape, so
drift hits all alike, and each figure is the median over the rounds.  A row
whose measurement is slow (the numpy references on the big shapes) takes
part in fewer, evenly spread rounds (at least 3), so each shape takes a
bounded time.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

import pysafemax
import pysafemax.reference
from pysafemax import _bindings

SHAPES = [(32, 10), (1, 10), (65536, 10), (8192, 1000), (1024, 32000),
          (64, 128256), (4096, 50257)]
QUICK_SHAPES = [(32, 10), (1, 10), (2048, 300)]
# Shapes with fewer logits than this are reported as time per call only.
LATENCY_ELEMENTS = 4096
METHODS = pysafemax.METHODS
TORCH_FORWARD = "torch forward"
TORCH_BACKWARD = "torch forward+backward"
PROBE = "read probe"
EXP_PROBE = "exp+sum probe"
EXP_STORE_PROBE = "exp+store probe"
COPY_PROBE = "copy probe"
FRESH_PROBE = "fresh copy probe"
PROBES = (PROBE, EXP_PROBE, EXP_STORE_PROBE, COPY_PROBE, FRESH_PROBE)
GRAD_ROW = "pysafemax stable+grad"
SOFTMAX_ROW = "pysafemax softmax"
LOG_SOFTMAX_ROW = "pysafemax log_softmax"
SOFTMAX_OUT_ROW = "pysafemax softmax out="
LOG_SOFTMAX_OUT_ROW = "pysafemax log_softmax out="
TORCH_SOFTMAX = "torch softmax"
TORCH_LOG_SOFTMAX = "torch log_softmax"
TORCH_SOFTMAX_OUT = "torch softmax out="
TORCH_LOG_SOFTMAX_OUT = "torch log_softmax out="
ROW_NAMES = ([f"pysafemax {m}" for m in METHODS]
             + [GRAD_ROW, SOFTMAX_ROW, LOG_SOFTMAX_ROW, SOFTMAX_OUT_ROW, LOG_SOFTMAX_OUT_ROW]
             + [f"numpy {m}" for m in METHODS]
             + [TORCH_FORWARD, TORCH_BACKWARD, TORCH_SOFTMAX, TORCH_LOG_SOFTMAX,
                TORCH_SOFTMAX_OUT, TORCH_LOG_SOFTMAX_OUT] + list(PROBES))
# The torch row each row's "vs torch" compares with (else torch forward).
TORCH_BASELINE = {GRAD_ROW: TORCH_BACKWARD, TORCH_BACKWARD: TORCH_BACKWARD,
                  SOFTMAX_ROW: TORCH_SOFTMAX, TORCH_SOFTMAX: TORCH_SOFTMAX,
                  LOG_SOFTMAX_ROW: TORCH_LOG_SOFTMAX, TORCH_LOG_SOFTMAX: TORCH_LOG_SOFTMAX,
                  SOFTMAX_OUT_ROW: TORCH_SOFTMAX_OUT, TORCH_SOFTMAX_OUT: TORCH_SOFTMAX_OUT,
                  LOG_SOFTMAX_OUT_ROW: TORCH_LOG_SOFTMAX_OUT,
                  TORCH_LOG_SOFTMAX_OUT: TORCH_LOG_SOFTMAX_OUT}
# The rows that write N x C floats into a given buffer, compared with the
# copy probe, and those that return a new N x C array, with the fresh one.
WRITE_ROWS = {GRAD_ROW, TORCH_BACKWARD, SOFTMAX_OUT_ROW, LOG_SOFTMAX_OUT_ROW,
              TORCH_SOFTMAX_OUT, TORCH_LOG_SOFTMAX_OUT}
FRESH_ROWS = {SOFTMAX_ROW, LOG_SOFTMAX_ROW, TORCH_SOFTMAX, TORCH_LOG_SOFTMAX}


def all_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


def import_torch():
    try:
        import torch
        import torch.nn.functional
    except ImportError:
        return None
    return torch


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_cache():
    for index in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{index}"
        try:
            with open(f"{base}/level") as f:
                level = f.read().strip()
            with open(f"{base}/size") as f:
                size = f.read().strip()
        except OSError:
            break
        if level == "3":
            return size
    return None


def header(torch, args):
    env = {name: os.environ[name] for name in
           ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYSAFEMAX_NUM_THREADS",
            "OMP_NUM_THREADS") if name in os.environ}
    return {
        "pysafemax": pysafemax.__version__,
        "pysafemax_path": os.path.dirname(pysafemax.__file__),
        "simd_level": pysafemax.simd_level(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch else None,
        "cpu": cpu_model(),
        "l3_cache": l3_cache(),
        "cores": all_cores(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv),
        "environment": env,
        "rounds": args.rounds,
        "target_ms": args.target_ms,
    }


def print_header(info):
    print(f"pysafemax {info['pysafemax']} ({info['simd_level']}) from {info['pysafemax_path']}")
    print(f"numpy {info['numpy']}, torch {info['torch'] or 'not installed (torch rows skipped)'}, "
          f"python {info['python']}")
    cache = f", L3 {info['l3_cache']}" if info["l3_cache"] else ""
    print(f"CPU: {info['cpu']}; {info['cores']} cores available "
          f"({info['cpu_count']} online){cache}; {info['platform']}")
    print(f"date: {info['date']}")
    print(f"command: {info['command']}")
    if info["environment"]:
        print("environment: " + ", ".join(f"{k}={v}" for k, v in info["environment"].items())
              + " (no BLAS is timed here)")
    print(f"{info['dtype']} logits = random normal * 4, int64 labels, reduction mean; median of "
          f"up to {info['rounds']} interleaved rounds, each measurement >= "
          f"{info['target_ms']:g} ms (k calls looped).")
    print("min-max = the fastest and slowest round over the median; vs torch = torch's "
          "best time / row time at the same thread count (+grad and forward+backward "
          "rows: against torch forward+backward; softmax and log_softmax: against "
          "torch's);")
    print("floor = vs torch at the speed of the row's floor probe (exp+store for the "
          "pysafemax rows that write N x C floats, else exp+sum): torch's best time / "
          "the probe's;")
    print("vs probe = read-probe time / row time (G elem/s of the row over the probe's); "
          "vs exp = the same against the exp+sum probe;")
    print("vs store = against the exp+store probe, for every row that writes N x C "
          "floats;")
    print("vs copy = against the copy probe for the rows that write N x C floats into "
          "a buffer (+grad, out=), against the fresh copy probe for those that return a new "
          "array (softmax, log_softmax). numpy rows run on one thread and appear once.")


class Row:
    """One timed call: a name, a thread count and a function of no arguments
    returning something whose loss (or sum, or copy check, for the probes) can
    be checked."""

    def __init__(self, name, threads, call, value, torch_threads=None,
                 pysafemax_threads=None):
        self.name, self.threads, self.call, self.value = name, threads, call, value
        # set before the row runs: torch's count for calls into torch, and
        # pysafemax's default for calls that pass no threads= (the torch
        # adapter's, in bench/torch_adapter.py)
        self.torch_threads = torch_threads
        self.pysafemax_threads = pysafemax_threads
        self.loops = 1
        self.seconds_estimate = None
        self.rounds = set()
        self.times = []


def fresh_copy(x, threads):
    out = np.empty_like(x)
    _bindings.copy_probe_f32(x, out, threads, False)
    return out


def make_rows(shape, thread_counts, torch, rng, dtype=np.float32):
    n, c = shape
    x = rng.standard_normal(shape, dtype=dtype)
    x *= 4
    y = rng.integers(0, c, n, dtype=np.int64)
    grad = np.empty_like(x)
    grad.fill(0.0)                   # touch: np.zeros would map pages lazily
    # the out= rows' array, shared: each row's result is read right after
    # its untimed call (calibrate)
    probs = np.empty_like(x)
    probs.fill(0.0)
    loss = pysafemax.softmax_loss
    picked = np.arange(n)

    def mean_nll(p, log=False):
        """The mean loss read back from probabilities (or their logs), for
        check_results: the same number as pysafemax stable's."""
        p = np.asarray(p)[picked, y].astype(np.float64)
        return float(-np.mean(p if log else np.log(p)))

    rows = []
    for group, t in enumerate(thread_counts):
        for m in METHODS:
            rows.append(Row(f"pysafemax {m}", t,
                            lambda m=m, t=t: loss(x, y, method=m, threads=t), float))
        rows.append(Row(GRAD_ROW, t,
                        lambda t=t: loss(x, y, return_grad=True, out=grad, threads=t),
                        lambda r: float(r[0])))
        rows.append(Row(SOFTMAX_ROW, t, lambda t=t: pysafemax.softmax(x, threads=t),
                        mean_nll))
        rows.append(Row(LOG_SOFTMAX_ROW, t, lambda t=t: pysafemax.log_softmax(x, threads=t),
                        lambda r: mean_nll(r, log=True)))
        rows.append(Row(SOFTMAX_OUT_ROW, t,
                        lambda t=t: pysafemax.softmax(x, threads=t, out=probs), mean_nll))
        rows.append(Row(LOG_SOFTMAX_OUT_ROW, t,
                        lambda t=t: pysafemax.log_softmax(x, threads=t, out=probs),
                        lambda r: mean_nll(r, log=True)))
        # The probes are timed before the torch rows: torch's OpenMP workers
        # slow a multithreaded call that follows them for longer than the
        # pause after each torch row (a 2-thread exp+sum probe took 2.5 ms
        # there, 1.7 ms here); the table still lists them last (ROW_NAMES).
        if dtype == np.float32:     # the probes read float32 only
            rows.append(Row(PROBE, t, lambda t=t: _bindings.read_probe_f32(x, t, False),
                            float))
            rows.append(Row(EXP_PROBE, t,
                            lambda t=t: _bindings.exp_sum_probe_f32(x, t, False), float))
            rows.append(Row(EXP_STORE_PROBE, t,
                            lambda t=t: _bindings.exp_store_probe_f32(x, grad, t, False),
                            float))
            # into the +grad row's buffer (prepared, touched); its check is that
            # the buffer then equals x (1.0), read right after the untimed call
            rows.append(Row(COPY_PROBE, t,
                            lambda t=t: _bindings.copy_probe_f32(x, grad, t, False),
                            lambda r: float(np.array_equal(grad, x))))
            rows.append(Row(FRESH_PROBE, t, lambda t=t: fresh_copy(x, t),
                            lambda r: float(np.array_equal(r, x))))
        if group == 0:
            for m in METHODS:
                rows.append(Row(f"numpy {m}", t,
                                lambda m=m: pysafemax.reference.softmax_loss(x, y, method=m),
                                float))
        if torch is not None:
            cross_entropy = torch.nn.functional.cross_entropy
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            xg = torch.from_numpy(x).requires_grad_(True)

            def forward_backward(xg=xg, yt=yt):
                value = cross_entropy(xg, yt)
                torch.autograd.grad(value, xg)       # no accumulation into .grad
                return value

            rows.append(Row(TORCH_FORWARD, t, lambda xt=xt, yt=yt: cross_entropy(xt, yt),
                            lambda r: float(r), torch_threads=t))
            rows.append(Row(TORCH_BACKWARD, t, forward_backward,
                            lambda r: float(r.detach()), torch_threads=t))
            rows.append(Row(TORCH_SOFTMAX, t, lambda xt=xt: torch.softmax(xt, 1),
                            lambda r: mean_nll(r.numpy()), torch_threads=t))
            rows.append(Row(TORCH_LOG_SOFTMAX, t, lambda xt=xt: torch.log_softmax(xt, 1),
                            lambda r: mean_nll(r.numpy(), log=True), torch_threads=t))
            pt = torch.from_numpy(probs)
            rows.append(Row(TORCH_SOFTMAX_OUT, t,
                            lambda xt=xt, pt=pt: torch.softmax(xt, 1, out=pt),
                            lambda r: mean_nll(r.numpy()), torch_threads=t))
            rows.append(Row(TORCH_LOG_SOFTMAX_OUT, t,
                            lambda xt=xt, pt=pt: torch.log_softmax(xt, 1, out=pt),
                            lambda r: mean_nll(r.numpy(), log=True), torch_threads=t))
    return x, y, grad, rows


# After a parallel region, torch's OpenMP workers spin for a while; on a
# machine with few cores they would steal the next row's cores (a 2-thread
# probe call right after torch took 3 ms instead of 0.06).  So every torch
# measurement is followed by this untimed pause.
TORCH_PAUSE = 0.01


def after(row):
    if row.torch_threads is not None:
        time.sleep(TORCH_PAUSE)


def set_threads(torch, row, state):
    if row.torch_threads is not None and state.get("threads") != row.torch_threads:
        torch.set_num_threads(row.torch_threads)
        state["threads"] = row.torch_threads
    if row.pysafemax_threads is not None:
        pysafemax.set_num_threads(row.pysafemax_threads)


def time_loops(call, loops):
    start = time.perf_counter()
    for _ in range(loops):
        call()
    return time.perf_counter() - start


def calibrate(row, target, torch, state):
    """Warm up, check the row's result, and pick the loop count."""
    set_threads(torch, row, state)
    result = row.value(row.call())
    loops, elapsed = 1, time_loops(row.call, 1)
    while elapsed < target / 4:
        loops *= 4 if elapsed < target / 64 else 2
        elapsed = time_loops(row.call, loops)
    after(row)
    row.loops = max(1, math.ceil(loops * target / elapsed)) if elapsed < target else loops
    row.seconds_estimate = elapsed / loops
    return result


def check_results(shape, x, rows, results):
    """The rows must compute the same thing: every loss against pysafemax
    stable's (the logits are moderate, so even naive agrees), the read
    probe's sum against numpy's (to well below the change one unread chunk
    would make: the rounding of a float sum of random terms grows like their
    norm), the exp+sum probe's against numpy's float64 exp (each exp within
    0.603 ULP, then float adds of 4 terms: relative 1e-5 is loose), and the
    copy probes' outputs against x (1.0: equal)."""
    reference = results[[row.name for row in rows].index("pysafemax stable")]
    flat = x.reshape(-1)
    total = float(x.sum(dtype=np.float64))
    exp_total = sum(float(np.exp(flat[i:i + (1 << 22)].astype(np.float64)).sum())
                    for i in range(0, flat.size, 1 << 22))
    expected_of = {PROBE: (total, 1e-3 * (1 + float(np.linalg.norm(flat)))),
                   EXP_PROBE: (exp_total, 1e-5 * exp_total),
                   EXP_STORE_PROBE: (exp_total, 1e-5 * exp_total),
                   COPY_PROBE: (1.0, 0.0), FRESH_PROBE: (1.0, 0.0)}
    problems = []
    for row, value in zip(rows, results):
        expected, tol = expected_of.get(row.name, (reference, 1e-4 * (1 + abs(reference))))
        if not abs(value - expected) <= tol:
            problems.append(f"{row.name} ({row.threads} threads) gives {value!r}, "
                            f"expected {expected!r}")
    for problem in problems:
        print(f"  WARNING {shape}: {problem}", file=sys.stderr)
    return problems


def spread(count, total):
    """`count` round indices spread evenly over range(total)."""
    if count >= total:
        return set(range(total))
    return {round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}


def measure_shape(shape, thread_counts, torch, args, rng):
    x, y, grad, rows = make_rows(shape, thread_counts, torch, rng, np.dtype(args.dtype))
    results = time_rows(rows, torch, args)
    problems = check_results(shape, x, rows, results)
    del x, y, grad
    return rows, problems


def time_rows(rows, torch, args, settle=False):
    """Calibrate every row (see calibrate), then time them in interleaved
    rounds, filling each row's times; returns the rows' checked values.

    settle: each measurement of a single call is preceded by an untimed call
    of the same row, so that it runs in the memory its own last call freed,
    as a training loop's step does, and does not pay for what the row
    before it left: on this project's VM the first touch of 823 MB freshly
    freed by torch's forward+backward took 0.6-1.9 s, a second 0.2 s."""
    target = args.target_ms / 1000
    state = {}
    results = [calibrate(row, target, torch, state) for row in rows]
    for row in rows:
        measurement = row.loops * row.seconds_estimate
        affordable = int(args.row_budget / max(measurement, 1e-9))
        row.rounds = spread(min(args.rounds, max(affordable, min(3, args.rounds))),
                            args.rounds)
    for r in range(args.rounds):
        for row in rows:            # round-robin: every row once per round
            if r in row.rounds:
                set_threads(torch, row, state)
                if settle and row.loops == 1:
                    row.call()
                row.times.append(time_loops(row.call, row.loops) / row.loops)
                after(row)
    return results


def summarise(shape, rows, itemsize=4):
    n, c = shape
    elements, nbytes = n * c, n * c * itemsize
    median = {(row.name, row.threads): statistics.median(row.times) for row in rows}
    best = {(row.name, row.threads): min(row.times) for row in rows}
    records = []
    # in ROW_NAMES order within each thread count, whatever the timing order
    for row in sorted(rows, key=lambda row: (row.threads, ROW_NAMES.index(row.name))):
        seconds = median[(row.name, row.threads)]
        baseline = TORCH_BASELINE.get(row.name, TORCH_FORWARD)
        torch_seconds = best.get((baseline, row.threads))
        probe_seconds = median.get((PROBE, row.threads))
        exp_seconds = median.get((EXP_PROBE, row.threads))
        store_seconds = median.get((EXP_STORE_PROBE, row.threads))
        copy_seconds = median.get((COPY_PROBE, row.threads))
        fresh_seconds = median.get((FRESH_PROBE, row.threads))
        # the cost floor of this row's work: exp+store for a row that writes
        # N x C floats, else exp+sum
        floor_seconds = store_seconds if row.name in WRITE_ROWS | FRESH_ROWS else exp_seconds
        records.append({
            "shape": [n, c],
            "elements": elements,
            "logits_bytes": nbytes,
            "threads": row.threads,
            "row": row.name,
            "seconds": seconds,
            "seconds_all": row.times,
            "seconds_min": min(row.times),
            "seconds_max": max(row.times),
            "loops": row.loops,
            "rounds": len(row.times),
            "g_elements_per_s": elements / seconds / 1e9,
            "gb_per_s": nbytes / seconds / 1e9,
            "torch_baseline": baseline if torch_seconds is not None else None,
            "ratio_to_torch": torch_seconds / seconds if torch_seconds is not None else None,
            # what "vs torch" would be at the floor probe's speed
            "floor_ratio_to_torch": (torch_seconds / floor_seconds
                                     if torch_seconds is not None
                                     and floor_seconds is not None
                                     and row.name.startswith("pysafemax") else None),
            "ratio_to_probe": (probe_seconds / seconds
                               if probe_seconds is not None and row.name != PROBE else None),
            "ratio_to_exp_probe": (exp_seconds / seconds
                                   if exp_seconds is not None and row.name != EXP_PROBE
                                   else None),
            "ratio_to_exp_store_probe": (store_seconds / seconds
                                         if store_seconds is not None
                                         and row.name in WRITE_ROWS | FRESH_ROWS
                                         else None),
            "ratio_to_copy_probe": (copy_seconds / seconds
                                    if copy_seconds is not None and row.name in WRITE_ROWS
                                    else fresh_seconds / seconds
                                    if fresh_seconds is not None and row.name in FRESH_ROWS
                                    else None),
        })
    return records


def format_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.2f} us"
    if seconds < 1:
        return f"{seconds * 1e3:8.2f} ms"
    return f"{seconds:8.3f} s "


def print_table(shape, records, seconds, itemsize=4):
    n, c = shape
    elements = n * c
    latency = elements < LATENCY_ELEMENTS
    print()
    print(f"== ({n}, {c}): {elements:,} elements, {elements * itemsize / 1e6:.3g} MB of logits"
          f"{'; reported per call' if latency else ''}  [{seconds:.0f} s]")
    if latency:
        print(f"{'threads':>7}  {'row':<28}{'per call':>12}{'min-max':>11}{'vs torch':>10}")
    else:
        print(f"{'threads':>7}  {'row':<28}{'per call':>12}{'min-max':>11}{'G elem/s':>10}"
              f"{'GB/s':>8}{'vs torch':>10}{'floor':>8}{'vs probe':>10}{'vs exp':>8}"
              f"{'vs store':>10}{'vs copy':>9}")
    previous = None
    for rec in records:
        if previous is not None and rec["threads"] != previous:
            print()
        previous = rec["threads"]
        ratio = "-" if rec["ratio_to_torch"] is None else f"{rec['ratio_to_torch']:.2f}x"
        spread_text = (f"{rec['seconds_min'] / rec['seconds']:.2f}-"
                       f"{rec['seconds_max'] / rec['seconds']:.2f}")
        line = (f"{rec['threads']:>7}  {rec['row']:<28}{format_time(rec['seconds']):>12}"
                f"{spread_text:>11}")
        if latency:
            print(f"{line}{ratio:>10}")
            continue
        probe, exp, store, copy = ("-" if rec[key] is None else f"{rec[key]:.2f}"
                                   for key in ("ratio_to_probe", "ratio_to_exp_probe",
                                               "ratio_to_exp_store_probe",
                                               "ratio_to_copy_probe"))
        floor = ("-" if rec["floor_ratio_to_torch"] is None
                 else f"{rec['floor_ratio_to_torch']:.2f}x")
        print(f"{line}{rec['g_elements_per_s']:>10.3f}{rec['gb_per_s']:>8.2f}"
              f"{ratio:>10}{floor:>8}{probe:>10}{exp:>8}{store:>10}{copy:>9}")
    sys.stdout.flush()


def plot(path, records, thread_counts):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = []
    for rec in records:
        if tuple(rec["shape"]) not in shapes:
            shapes.append(tuple(rec["shape"]))
    labels = [f"{n}x{c}" for n, c in shapes]
    fig, axes = plt.subplots(1, len(thread_counts), figsize=(6.5 * len(thread_counts), 5),
                             sharey=True, squeeze=False)
    for ax, t in zip(axes[0], thread_counts):
        for name in ROW_NAMES:
            points = {tuple(r["shape"]): r["g_elements_per_s"] for r in records
                      if r["row"] == name and r["threads"] == t}
            if not points:
                continue
            xs = [i for i, s in enumerate(shapes) if s in points]
            ys = [points[shapes[i]] for i in xs]
            style = "--" if name.startswith(("numpy", "torch")) else ":" if name in PROBES else "-"
            ax.plot(xs, ys, style, marker="o", label=name,
                    color=f"C{ROW_NAMES.index(name) % 10}")
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(labels, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.set_xlabel("shape (N x C), float32")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("G elements / s (higher is better)")
    handles, names = axes[0][0].get_legend_handles_labels()   # the first panel has every row
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9)
    fig.suptitle("softmax cross-entropy throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        try:
            n, c = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {item!r} is not NxC, e.g. 8192x1000")
        if n < 1 or c < 1:
            raise argparse.ArgumentTypeError(f"shape {item!r} must be positive")
        shapes.append((n, c))
    return shapes


def parse_threads(text):
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r} is not a list like 1,2")
    if any(t < 1 for t in counts):
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return sorted(set(counts))


def timing_arguments(parser):
    """The command-line options of a timing on this script's rows and shapes
    (bench/torch_adapter.py takes them too)."""
    parser.add_argument("--json", metavar="FILE", help="save all results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny shapes, 2 rounds, a few seconds")
    parser.add_argument("--threads", type=parse_threads,
                        help="thread counts, e.g. 1,2 (default: 1 and all cores)")
    parser.add_argument("--shapes", type=parse_shapes,
                        help="shapes NxC, comma-separated (default: the issue's seven)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; quick 2)")
    parser.add_argument("--target-ms", type=float,
                        help="minimum time of one measurement (default 20; quick 2)")
    parser.add_argument("--row-budget", type=float,
                        help="seconds of measurements per row and shape before a slow row "
                             "drops to fewer rounds (default 8; quick 0.05)")
    parser.add_argument("--seed", type=int, default=0)


def timing_defaults(parser, args):
    """Fill in the defaults of timing_arguments' options (smaller with
    --quick) and check them; returns (shapes, thread counts)."""
    if args.rounds is None:
        args.rounds = 2 if args.quick else 7
    if args.target_ms is None:
        args.target_ms = 2.0 if args.quick else 20.0
    if args.row_budget is None:
        args.row_budget = 0.05 if args.quick else 8.0
    if args.rounds < 1 or args.target_ms <= 0:
        parser.error("--rounds and --target-ms must be positive")
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    return shapes, args.threads or sorted({1, all_cores()})


def each_shape(shapes, info, measure, report):
    """For each shape: measure(shape) -> (rows, problems), then
    report(shape, rows, seconds taken) -> its records, printed as it goes.
    Returns all records and problems; the total time goes in info."""
    records, problems = [], []
    start = time.perf_counter()
    for shape in shapes:
        shape_start = time.perf_counter()
        rows, shape_problems = measure(shape)
        records += report(shape, rows, time.perf_counter() - shape_start)
        problems += shape_problems
    info["seconds"] = time.perf_counter() - start
    print(f"\ntotal {info['seconds']:.0f} s")
    return records, problems


def save_json(path, info, records, problems):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"header": info, "results": records, "problems": problems}, f, indent=1)
    print(f"results saved to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Time pysafemax against numpy, PyTorch and the read, exp+sum and "
                    "copy probes.")
    timing_arguments(parser)
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw G elements/s against shape (needs matplotlib)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="logits' dtype (default float32; float64 has no probe rows)")
    args = parser.parse_args(argv)

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib, which is not installed: "
                  "python -m pip install matplotlib", file=sys.stderr)
            return 2
    shapes, thread_counts = timing_defaults(parser, args)

    torch = import_torch()
    info = header(torch, args)
    info["threads"] = thread_counts
    info["dtype"] = args.dtype
    info["shapes"] = [list(s) for s in shapes]
    print_header(info)

    rng = np.random.default_rng(args.seed)
    itemsize = np.dtype(args.dtype).itemsize

    def measure(shape):
        rows, problems = measure_shape(shape, thread_counts, torch, args, rng)
        return rows, [f"{shape}: {p}" for p in problems]

    def report(shape, rows, seconds):
        records = summarise(shape, rows, itemsize)
        print_table(shape, records, seconds, itemsize)
        return records

    records, problems = each_shape(shapes, info, measure, report)

    if args.json:
        save_json(args.json, info, records, problems)
    if args.plot:
        plot(args.plot, records, thread_counts)
        print(f"plot saved to {args.plot}")
    if problems:
        print(f"{len(problems)} row(s) disagree with pysafemax stable: see the warnings",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
