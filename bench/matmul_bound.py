"""The floor of linear_cross_entropy's gradient against torch's: the matmuls.

    python bench/matmul_bound.py [--shape 4096x1024x4096] [--rounds 5] [--threads 2]

Without keeping the N x V logits, the loss with its gradient needs four
matrix products per vocabulary chunk (the logits, their recomputation, d
weight, d hidden) where a materializing implementation needs three.  This
times each product on one chunk (N x H hidden, C x H weight, an N x C
gradient) with numpy's BLAS and with torch, interleaved, and prints the
median and best of each and its GFLOP/s, so that the best ratio four numpy
products can reach against three torch ones can be read off:
3 * t_torch / (4 * t_numpy).
"""
import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="4096x1024x4096", help="N x H x C (one chunk)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch's threads")
    args = parser.parse_args(argv)
    n, h, c = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, h), dtype=np.float32)
    weight = rng.standard_normal((c, h), dtype=np.float32)
    grad = rng.standard_normal((n, c), dtype=np.float32)
    logits = np.empty((n, c), np.float32)
    cases = {"numpy hidden @ weight.T": lambda: np.matmul(hidden, weight.T, out=logits),
             "numpy grad.T @ hidden": lambda: grad.T @ hidden,
             "numpy grad @ weight": lambda: grad @ weight}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        ht, wt, gt = (torch.from_numpy(a) for a in (hidden, weight, grad))
        cases.update({"torch hidden @ weight.T": lambda: torch.mm(ht, wt.t()),
                      "torch grad.T @ hidden": lambda: torch.mm(gt.t(), ht),
                      "torch grad @ weight": lambda: torch.mm(gt, wt)})
    for call in cases.values():      # warm: BLAS threads, torch's allocator
        call()
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    print(f"one chunk: N={n}, H={h}, C={c}; torch threads {args.threads}, numpy's BLAS "
          f"its own; median and best of {args.rounds} interleaved rounds")
    flops = 2.0 * n * h * c
    medians = {}
    for name, seconds in times.items():
        medians[name] = float(np.median(seconds))
        print(f"  {name:26s} {medians[name] * 1e3:8.1f} ms (best {min(seconds) * 1e3:7.1f})"
              f"  {flops / medians[name] / 1e9:7.1f} GFLOP/s")
    if torch is not None:
        numpy_mean = np.mean([v for k, v in medians.items() if k.startswith("numpy")])
        torch_mean = np.mean([v for k, v in medians.items() if k.startswith("torch")])
        print(f"best ratio of 4 numpy products to torch's 3: "
              f"{3 * torch_mean / (4 * numpy_mean):.2f} (above 1: faster than torch)")


if __name__ == "__main__":
    main()
