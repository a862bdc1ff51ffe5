"""Time pysafemax.torch.cross_entropy against torch.nn.functional.cross_entropy.

    python bench/torch_adapter.py [--quick] [--threads 1,2] [--shapes 8192x1000]
                                  [--rounds 7] [--target-ms 20] [--json FILE]

On bench/run.py's shapes (float32 logits, random normal * 4, random int64
labels, reduction "mean"), at each thread count (1 and all cores unless
--threads says otherwise: torch.set_num_threads and pysafemax.set_num_threads
both), these rows:

  torch forward               F.cross_entropy(x, y)
  adapter forward             pysafemax.torch.cross_entropy(x, y): the loss only
                              (x does not require grad)
  torch forward+backward      F.cross_entropy(xg, y), then torch.autograd.grad of
                              it with respect to xg (nothing accumulates in .grad)
  adapter forward+backward    the same with pysafemax.torch.cross_entropy
  softmax_loss+grad           pysafemax.softmax_loss(x.numpy(), y.numpy(),
                              return_grad=True) on the same memory: the kernel
                              call the adapter's forward+backward makes, so the
                              gap to that row is the adapter's own cost

Timing is bench/run.py's (its Row, calibrate and time_rows): every row called
once untimed and its loss checked against torch's, loops of at least the
target time, rounds round-robin over the rows, the median over the rounds
printed with the fastest and slowest round.  A measurement of one call (the
large shapes) follows an untimed call of the same row (time_rows' settle),
so that each row runs in the memory its own last call freed, as a training
step does: otherwise the row after torch's forward+backward paid up to 2 s
for first touching the 823 MB torch had just freed.  "vs torch" is torch's
best round (torch's time moves with its allocator's state) over the row's
median, the forward rows against torch forward, the others against torch
forward+backward.
"""
import argparse
import os
import statistics
import sys

import numpy as np

import pysafemax
# bench/run.py beside this script: its shapes and timing.
from run import (LATENCY_ELEMENTS, Row, each_shape, format_time, header, import_torch,
                 save_json, time_rows, timing_arguments, timing_defaults)

TORCH_FORWARD = "torch forward"
TORCH_BACKWARD = "torch forward+backward"
ROW_NAMES = [TORCH_FORWARD, "adapter forward", TORCH_BACKWARD, "adapter forward+backward",
             "softmax_loss+grad"]
BASELINE = {TORCH_FORWARD: TORCH_FORWARD, "adapter forward": TORCH_FORWARD}


def make_rows(shape, thread_counts, torch, rng):
    from pysafemax.torch import cross_entropy
    F = torch.nn.functional
    n, c = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= 4
    y = rng.integers(0, c, n, dtype=np.int64)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    xg = torch.from_numpy(x).requires_grad_(True)

    def forward_backward(function):
        value = function(xg, yt)
        torch.autograd.grad(value, xg)         # no accumulation into .grad
        return value

    calls = {
        TORCH_FORWARD: (lambda: F.cross_entropy(xt, yt), float),
        "adapter forward": (lambda: cross_entropy(xt, yt), float),
        TORCH_BACKWARD: (lambda: forward_backward(F.cross_entropy),
                         lambda r: float(r.detach())),
        "adapter forward+backward": (lambda: forward_backward(cross_entropy),
                                     lambda r: float(r.detach())),
        "softmax_loss+grad": (lambda: pysafemax.softmax_loss(x, y, return_grad=True),
                              lambda r: r[0]),
    }
    # Both libraries' thread counts are set before every row, torch's rows
    # included: each row runs with one count, whatever ran before it.
    return [Row(name, t, call, value, torch_threads=t, pysafemax_threads=t)
            for t in thread_counts for name, (call, value) in calls.items()]


def measure_shape(shape, thread_counts, torch, args, rng):
    rows = make_rows(shape, thread_counts, torch, rng)
    # settle: each big call's own memory, not the row before's (time_rows)
    results = time_rows(rows, torch, args, settle=True)
    reference = results[0]              # torch forward's loss
    problems = [f"{shape}: {row.name} ({row.threads} threads) gives {value!r}, torch "
                f"{reference!r}" for row, value in zip(rows, results)
                if not abs(value - reference) <= 1e-4 * (1 + abs(reference))]
    for problem in problems:
        print(f"  WARNING {problem}", file=sys.stderr)
    return rows, problems


def summarise(shape, rows):
    n, c = shape
    best = {(row.name, row.threads): min(row.times) for row in rows}
    records = []
    for row in rows:
        seconds = statistics.median(row.times)
        baseline = BASELINE.get(row.name, TORCH_BACKWARD)
        records.append({
            "shape": [n, c], "threads": row.threads, "row": row.name,
            "seconds": seconds, "seconds_all": row.times, "loops": row.loops,
            "rounds": len(row.times), "g_elements_per_s": n * c / seconds / 1e9,
            "torch_baseline": baseline,
            "ratio_to_torch": best[(baseline, row.threads)] / seconds,
        })
    return records


def print_table(shape, records, seconds):
    n, c = shape
    latency = n * c < LATENCY_ELEMENTS
    print(f"\n== ({n}, {c}) float32{'; per call' if latency else ''}  [{seconds:.0f} s]")
    print(f"{'threads':>7}  {'row':<26}{'per call':>12}{'min-max':>11}"
          f"{'' if latency else 'G elem/s':>10}{'vs torch':>10}")
    for rec in records:
        times = rec["seconds_all"]
        spread = f"{min(times) / rec['seconds']:.2f}-{max(times) / rec['seconds']:.2f}"
        rate = "" if latency else f"{rec['g_elements_per_s']:.3f}"
        print(f"{rec['threads']:>7}  {rec['row']:<26}{format_time(rec['seconds']):>12}"
              f"{spread:>11}{rate:>10}{rec['ratio_to_torch']:>9.2f}x")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Time pysafemax.torch.cross_entropy against F.cross_entropy.")
    timing_arguments(parser)
    args = parser.parse_args(argv)
    torch = import_torch()
    if torch is None:
        print("torch is not installed (python -m pip install torch): nothing to compare")
        return 0
    shapes, thread_counts = timing_defaults(parser, args)

    info = header(torch, args)
    info.update(threads=thread_counts, shapes=[list(s) for s in shapes])
    print(f"pysafemax {info['pysafemax']} ({info['simd_level']}) from "
          f"{os.path.dirname(info['pysafemax_path'])}, torch {info['torch']}, "
          f"numpy {info['numpy']}, python {info['python']}")
    print(f"CPU: {info['cpu']}; {info['cores']} cores available; {info['platform']}")
    print(f"date: {info['date']}")
    print(f"command: {info['command']}")
    print(f"median of up to {args.rounds} interleaved rounds, each >= "
          f"{args.target_ms:g} ms; vs torch = torch's best round / the row's median "
          f"(forward rows against torch forward, the others against torch "
          f"forward+backward)")

    rng = np.random.default_rng(args.seed)

    def report(shape, rows, seconds):
        records = summarise(shape, rows)
        print_table(shape, records, seconds)
        return records

    records, problems = each_shape(
        shapes, info, lambda shape: measure_shape(shape, thread_counts, torch, args, rng),
        report)
    if args.json:
        save_json(args.json, info, records, problems)
    if problems:
        print(f"{len(problems)} row(s) disagree with torch: see the warnings",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
