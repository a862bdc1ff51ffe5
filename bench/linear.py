"""Benchmark pysafemax.linear_cross_entropy against the logits it avoids.

    python bench/linear.py [--quick] [--threads 2] [--shapes 4096x1024x32000]
                           [--rounds 3] [--json FILE]

For each (N, H, V) float32 shape (hidden and weight random normal, weight
scaled by 1/sqrt(H); random int64 labels; no bias) it times, at one thread
count for the kernel, numpy's BLAS and torch alike:

  matmul only            hidden @ weight.T: the logits' cost alone, the
                         floor of every forward row
  pysafemax linear       linear_cross_entropy(hidden, weight, labels)
  materialize            softmax_loss(hidden @ weight.T, labels)
  torch                  F.cross_entropy(F.linear(hidden, weight), labels),
                         under torch.no_grad()
  pysafemax linear+grad  the same with return_grad=True: the loss and
                         d_hidden, d_weight
  materialize+grad       softmax_loss(..., return_grad=True), then
                         G @ weight and G.T @ hidden
  torch+grad             torch.autograd.grad of torch's loss with respect
                         to hidden and weight

Timing: inputs are made and written before timing; every row runs once
untimed, then the rows take turns, one call each per round, and each
figure is the median over the rounds (the spread is the fastest and the
slowest round over the median).  "vs" columns are the other row's median
over this one's: above 1, this row is faster.

Peak memory, per row, taken on a separate untimed call: the process's
resident high-water mark above its resident size before the call (Linux
VmHWM, reset through /proc/self/clear_refs after glibc's malloc_trim, so
freed heap does not hide new pages), for every row alike, torch's
allocations included; and for the numpy rows also tracemalloc's peak (numpy
reports its allocations to it; torch does not).

Threads: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS are set
from --threads before numpy and torch are imported, the kernel gets
threads=, and torch.set_num_threads is called: every row at the same count.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

DEFAULT_SHAPES = "4096x1024x32000,2048x2048x128256"
QUICK_SHAPES = "256x64x3000,128x32x10007"


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small shapes ({QUICK_SHAPES}), 3 rounds: a smoke test")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--shapes", default=None, help=f"NxHxV,... ({DEFAULT_SHAPES})")
    parser.add_argument("--rounds", type=int, default=None, help="default 5, quick 3")
    parser.add_argument("--json", default=None, help="save the results here")
    return parser.parse_args()


ARGS = _arguments()
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = str(ARGS.threads)

import numpy as np  # noqa: E402  (after the thread variables)

import pysafemax  # noqa: E402

try:
    import torch  # noqa: E402
    import torch.nn.functional as F  # noqa: E402
    torch.set_num_threads(ARGS.threads)
except ImportError:
    torch = None


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()


def _resident_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_memory(call):
    """(resident high-water mark above the start, tracemalloc's peak), in
    bytes; either None where this system cannot tell."""
    rss = None
    if LIBC is not None and os.path.exists("/proc/self/clear_refs"):
        LIBC.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")     # resets VmHWM to the current VmRSS
            before = _resident_kb("VmRSS")
            result = call()
            rss = (_resident_kb("VmHWM") - before) * 1024
            del result
        except OSError:
            rss = None
    tracemalloc.start()
    try:
        result = call()
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return rss, traced


def rows_for(hidden, weight, labels, threads):
    """name -> (call, traced: whether tracemalloc sees its memory)."""
    rows = {
        "matmul only": (lambda: hidden @ weight.T, True),
        "pysafemax linear": (lambda: pysafemax.linear_cross_entropy(
            hidden, weight, labels, threads=threads), True),
        "materialize": (lambda: pysafemax.softmax_loss(hidden @ weight.T, labels,
                                                       threads=threads), True),
    }

    def materialize_grad():
        loss, g = pysafemax.softmax_loss(hidden @ weight.T, labels, return_grad=True,
                                         threads=threads)
        return loss, g @ weight, g.T @ hidden

    if torch is not None:
        th, tw, ty = (torch.from_numpy(a) for a in (hidden, weight, labels))
        th_grad = th.clone().requires_grad_()
        tw_grad = tw.clone().requires_grad_()

        def torch_forward():
            with torch.no_grad():
                return F.cross_entropy(F.linear(th, tw), ty).item()

        def torch_grad():
            loss = F.cross_entropy(F.linear(th_grad, tw_grad), ty)
            return loss.item(), torch.autograd.grad(loss, (th_grad, tw_grad))

        rows["torch"] = (torch_forward, False)
    rows["pysafemax linear+grad"] = (lambda: pysafemax.linear_cross_entropy(
        hidden, weight, labels, return_grad=True, threads=threads), True)
    rows["materialize+grad"] = (materialize_grad, True)
    if torch is not None:
        rows["torch+grad"] = (torch_grad, False)
    return rows


# each row's peers in the "vs" columns
PEERS = {"pysafemax linear": ("materialize", "torch", "matmul only"),
         "pysafemax linear+grad": ("materialize+grad", "torch+grad", "matmul only")}


def bench_shape(rows_n, features, classes, threads, rounds):
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((rows_n, features), dtype=np.float32)
    weight = rng.standard_normal((classes, features), dtype=np.float32)
    weight *= np.float32(1 / np.sqrt(features))
    labels = rng.integers(0, classes, rows_n)
    rows = rows_for(hidden, weight, labels, threads)
    times = {name: [] for name in rows}
    for call, _ in rows.values():
        call()                                 # warm: pages, pools, BLAS buffers
    for _ in range(rounds):
        for name, (call, _) in rows.items():  # interleaved: drift hits all rows
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    results = []
    for name, (call, traced) in rows.items():
        rss, tm = peak_memory(call)
        median = statistics.median(times[name])
        results.append(dict(
            shape=[rows_n, features, classes], threads=threads, row=name,
            seconds=median, seconds_all=times[name],
            spread=[min(times[name]) / median, max(times[name]) / median],
            peak_rss_bytes=rss, peak_traced_bytes=tm if traced else None))
    by_name = {r["row"]: r for r in results}
    for r in results:
        for peer in PEERS.get(r["row"], ()):
            if peer in by_name:
                r[f"vs {peer}"] = by_name[peer]["seconds"] / r["seconds"]
    return results


def _mb(value):
    return "      -" if value is None else f"{value / 2**20:7.1f}"


def print_shape(results):
    n, h, v = results[0]["shape"]
    logits = n * v * 4
    print(f"\n(N, H, V) = ({n}, {h}, {v}) float32; the logits would be "
          f"{logits / 2**20:.0f} MB; {results[0]['threads']} thread(s)")
    print(f"  {'row':<22} {'median s':>9} {'spread':>11} {'RSS MB':>7} "
          f"{'traced MB':>9}  vs peers (their time / ours)")
    for r in results:
        peers = "  ".join(f"{k[3:]} {r[k]:.2f}x" for k in r if k.startswith("vs "))
        print(f"  {r['row']:<22} {r['seconds']:9.3f} "
              f"{r['spread'][0]:5.2f}-{r['spread'][1]:4.2f} "
              f"{_mb(r['peak_rss_bytes'])} {_mb(r['peak_traced_bytes']):>9}  {peers}")


def header():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(
        pysafemax=f"{pysafemax.__version__} ({pysafemax.simd_level()})",
        numpy=np.__version__, torch=None if torch is None else torch.__version__,
        python=platform.python_version(), cpu=cpu,
        cores=len(os.sched_getaffinity(0)), threads=ARGS.threads,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=" ".join([os.path.basename(sys.executable)] + sys.argv))


def main():
    shapes = ARGS.shapes or (QUICK_SHAPES if ARGS.quick else DEFAULT_SHAPES)
    rounds = ARGS.rounds or (3 if ARGS.quick else 5)
    info = header()
    for key, value in info.items():
        print(f"{key:>10}: {value}")
    print(f"{'BLAS':>10}: numpy's, OPENBLAS_NUM_THREADS={ARGS.threads}; torch threads "
          f"{ARGS.threads if torch is not None else '-'}; pysafemax threads={ARGS.threads}")
    everything = []
    for shape in shapes.split(","):
        n, h, v = (int(k) for k in shape.lower().split("x"))
        results = bench_shape(n, h, v, ARGS.threads, rounds)
        print_shape(results)
        everything += results
        sys.stdout.flush()
    if ARGS.json:
        with open(ARGS.json, "w") as out:
            json.dump(dict(header=info, results=everything), out, indent=1)


if __name__ == "__main__":
    main()
