"""The added cost of pysafemax.dask over one pysafemax.softmax_loss call.

    python bench/dask_overhead.py [--quick] [--rounds 5] [--no-cluster] [--json FILE]

Layouts (float32 logits = random normal * 4, random int64 labels, reduction
mean), each about 2.1 GB of logits:

  rows      (524288, 1000) in 16 row chunks of (32768, 1000): whole classes,
            one kernel call per chunk
  classes   (16384, 32768) in 4 x 4 chunks of (4096, 8192): split classes,
            partial states merged per row block

Rows, each the median of --rounds interleaved rounds (one call each):

  single              pysafemax.softmax_loss(x, y) on the numpy array
  dask threads        pysafemax.dask.softmax_loss(X, Y).compute() on dask's
                      threaded scheduler; building the graph is timed too
  single+grad         softmax_loss(x, y, return_grad=True): it allocates its
                      gradient, as the dask path does
  dask+grad threads   dask.persist(*softmax_loss(X, Y, return_grad=True)):
                      the loss and the gradient's chunks in memory (not
                      concatenated into one array, which would add a copy)
  dask cluster, dask+grad cluster
                      the same on a dask.distributed LocalCluster of 2
                      worker processes with 1 thread each (--no-cluster skips)

ratio = dask time / single time (+grad rows against single+grad), and
added = their difference, both of the medians; the fastest round is shown
too, as the machine's noise can move a median.  X and Y are persisted before timing, in
contiguous chunks (on the cluster: made and held by its workers), as a
dask user's data is; x and y are the same values as numpy arrays.  Every
kernel call uses pysafemax's default thread count (all cores), in both
paths; dask runs as many tasks at once as it has threads.

Before timing, each dask row's loss (and the gradient, once) is checked
against the single call's within pysafemax.check_tolerance; a mismatch is
printed and makes the exit status 1.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import dask
import dask.array as da

try:
    import distributed
except ImportError:     # the cluster rows are skipped
    distributed = None

import pysafemax
import pysafemax.dask
from run import all_cores, cpu_model    # bench/run.py: the same machine header

LAYOUTS = {"rows": ((524288, 1000), (32768, 1000)),
           "classes": ((16384, 32768), (4096, 8192))}
QUICK_LAYOUTS = {"rows": ((8192, 100), (1024, 100)),
                 "classes": ((512, 2048), (128, 512))}


def make_data(shape, chunks, seed):
    """Dask logits and labels in contiguous chunks, from dask's random
    generator, so that a cluster's workers can make the same values."""
    logits = da.random.default_rng(seed).standard_normal(
        shape, chunks=chunks, dtype=np.float32) * np.float32(4)
    labels = da.random.default_rng(seed + 1).integers(0, shape[1], shape[0],
                                                      chunks=chunks[0])
    return logits, labels


class Row:
    """A timed call returning (loss, gradient or None); `baseline` names the
    single-call row it is compared with, `scheduler` the one its results
    (dask collections) are computed with when checked."""

    def __init__(self, name, call, baseline=None, scheduler=None):
        self.name, self.call, self.baseline = name, call, baseline
        self.scheduler = scheduler
        self.times = []


def rows_for(x, y, threaded, cluster):
    """The rows of a layout: the single calls on x, y and the dask ones on
    the threaded scheduler's persisted arrays and, if given, on the
    cluster's."""
    X, Y = threaded

    def single():
        return pysafemax.softmax_loss(x, y), None

    def single_grad():
        return pysafemax.softmax_loss(x, y, return_grad=True)

    def dask_loss(X, Y, scheduler):
        return lambda: (pysafemax.dask.softmax_loss(X, Y).compute(scheduler=scheduler),
                        None)

    def dask_grad(X, Y, scheduler):
        def call():
            results = dask.persist(*pysafemax.dask.softmax_loss(X, Y, return_grad=True),
                                   scheduler=scheduler)
            if scheduler is None:
                distributed.wait(results)   # a client's persist returns at once
            return results
        return call

    rows = [Row("single", single),
            Row("dask threads", dask_loss(X, Y, "threads"), "single"),
            Row("single+grad", single_grad),
            Row("dask+grad threads", dask_grad(X, Y, "threads"), "single+grad", "threads")]
    if cluster is not None:     # scheduler None: the client's
        CX, CY = cluster
        rows += [Row("dask cluster", dask_loss(CX, CY, None), "single"),
                 Row("dask+grad cluster", dask_grad(CX, CY, None), "single+grad")]
    return rows


def check(rows, classes):
    """Each dask row's results against the single call's, within
    check_tolerance; returns the problems found."""
    tol = pysafemax.check_tolerance(np.float32, classes)
    expected_loss, expected_grad = rows[2].call()
    problems = []
    for row in rows:
        if not row.name.startswith("dask"):
            continue
        loss, grad = row.call()
        if grad is not None:    # persisted: the threaded ones in this process
            loss, grad = dask.compute(loss, grad, scheduler=row.scheduler)
        loss = float(loss)
        if not abs(loss - expected_loss) <= tol * (1 + abs(expected_loss)):
            problems.append(f"{row.name} loss {loss!r}, single call {expected_loss!r}")
        if grad is not None:
            error = np.abs(grad - expected_grad)
            if not (error <= tol * (1 + np.abs(expected_grad))).all():
                problems.append(f"{row.name} gradient differs by up to {error.max():.3g}")
    for problem in problems:
        print(f"  WARNING {problem}", file=sys.stderr)
    return problems


def measure(rows, rounds):
    for _ in range(rounds):
        for row in rows:               # round-robin: drift hits every row alike
            start = time.perf_counter()
            result = row.call()
            row.times.append(time.perf_counter() - start)
            del result                 # free a gradient before the next row


def format_time(seconds):
    return f"{seconds * 1e3:9.1f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def report(name, shape, chunks, rows):
    blocks = [-(-n // c) for n, c in zip(shape, chunks)]
    print(f"\n== {name}: {shape} float32, {shape[0] * shape[1] * 4 / 1e9:.3g} GB, chunks "
          f"{chunks}: {blocks[0]} x {blocks[1]} blocks")
    print(f"  {'row':<22}{'median':>12}{'fastest':>12}{'ratio':>9}{'added':>13}")
    median = {row.name: statistics.median(row.times) for row in rows}
    records = []
    for row in rows:
        seconds = median[row.name]
        line = f"  {row.name:<22}{format_time(seconds):>12}{format_time(min(row.times)):>12}"
        record = {"layout": name, "shape": list(shape), "chunks": list(chunks),
                  "row": row.name, "seconds": seconds, "seconds_all": row.times}
        if row.baseline is not None:
            base = median[row.baseline]
            record.update(ratio=seconds / base, added_seconds=seconds - base)
            line += f"{seconds / base:8.2f}x{(seconds - base) * 1e3:+10.1f} ms"
        print(line)
        records.append(record)
    sys.stdout.flush()
    return records


def header(args):
    return {
        "pysafemax": pysafemax.__version__,
        "pysafemax_path": os.path.dirname(pysafemax.__file__),
        "simd_level": pysafemax.simd_level(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "distributed": distributed.__version__ if distributed else None,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": all_cores(),
        "kernel_threads": pysafemax.get_num_threads(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv),
        "rounds": args.rounds,
    }


def print_header(info):
    print(f"pysafemax {info['pysafemax']} ({info['simd_level']}) from "
          f"{info['pysafemax_path']}")
    print(f"dask {info['dask']}, distributed {info['distributed'] or 'not installed'}, "
          f"numpy {info['numpy']}, python {info['python']}")
    print(f"CPU: {info['cpu']}; {info['cores']} cores available; kernel threads per "
          f"call {info['kernel_threads']}; {info['platform']}")
    print(f"date: {info['date']}")
    print(f"command: {info['command']}")
    print(f"reduction mean; median of {info['rounds']} interleaved rounds; ratio = dask "
          f"time / single-call time, added = the difference.")


def start_cluster():
    if distributed is None:
        print("distributed is not installed: the cluster rows are skipped", file=sys.stderr)
        return None
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None)
    return distributed.Client(cluster)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Time pysafemax.dask.softmax_loss against one softmax_loss call.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: small shapes, 2 rounds, a few seconds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--no-cluster", action="store_true",
                        help="skip the LocalCluster rows")
    parser.add_argument("--json", metavar="FILE", help="save all results as JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    if args.rounds < 1:
        parser.error("--rounds must be positive")

    info = header(args)
    print_header(info)
    client = None if args.no_cluster else start_cluster()
    records, problems = [], []
    try:
        for name, (shape, chunks) in (QUICK_LAYOUTS if args.quick else LAYOUTS).items():
            logits, labels = make_data(shape, chunks, args.seed)
            threaded = dask.persist(logits, labels, scheduler="threads")
            x, y = dask.compute(*threaded, scheduler="threads")
            cluster = None
            if client is not None:
                cluster = client.persist([logits, labels])
                distributed.wait(cluster)
            rows = rows_for(x, y, threaded, cluster)
            problems += [f"{name}: {p}" for p in check(rows, shape[1])]
            measure(rows, args.rounds)
            records += report(name, shape, chunks, rows)
            del x, y, threaded, cluster, rows
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            cluster.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"header": info, "results": records, "problems": problems}, f,
                      indent=1)
        print(f"results saved to {args.json}")
    if problems:
        print(f"{len(problems)} dask result(s) disagree with the single call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
