"""Time tiny calls, where the Python layer is most of the cost: this
checkout's pysafemax against another checkout's Python layer and PyTorch.

    python bench/tiny_calls.py [--against DIR] [--rounds 7] [--calls 20000]
                               [--repeats 5] [--json FILE]

The calls, on float32 logits (random normal * 4) and random int64 labels:

  loss (32,10)          softmax_loss(x, y)             torch: F.cross_entropy(x, y)
  loss method= (32,10)  softmax_loss(x, y, method="stable", threads=1), as
                        bench/run.py calls it          torch: F.cross_entropy(x, y)
  loss+grad (32,10)     softmax_loss(x, y, return_grad=True)
                                                       torch: cross_entropy, then
                                                       torch.autograd.grad of it
  loss+grad out= (32,10) the same with out=grad (preallocated), as bench/run.py
  loss none (32,10)     softmax_loss(x, y, reduction="none")
                                                       torch: reduction="none"
  softmax (32,10)       softmax(x)                     torch.softmax(x, 1)
  softmax out= (32,10)  softmax(x, out=probs)          torch.softmax(x, 1, out=probs)
  log_softmax (32,10)   log_softmax(x)                 torch.log_softmax(x, 1)
  loss (1,10)           softmax_loss(x, y)             F.cross_entropy(x, y)
  cffi floor (32,10)    the loss's kernel entry point called straight
                        through cffi, its two input buffers made per call
                        and nothing checked: what any cffi binding pays,
                        the floor under "loss (32,10)"

pysafemax runs at its default thread count (its tiny calls use one thread),
torch at --torch-threads, 1 unless told (0: torch's default): on a shared
machine torch's OpenMP team at 2 threads made its (32, 10) mean loss 40 us
and more, waiting for a busy core.  Each contender runs in its own child process, so that
neither torch's OpenMP workers nor another Python layer's imports touch the
others' timings: "new" is the pysafemax/ beside this script, "old" the one in
DIR (--against; e.g. a checkout of main), both running the installed
compiled kernel (pip install . first), and "torch".  A round runs one child
of each, in an order that rotates from round to round, so that drift on a
shared machine hits all alike; a child warms every call, then times each
`repeats` times, `calls` calls per timing, going round-robin over the calls.

Printed per call: the median ns per call over every timing of every round
(pysafemax), torch's best and median, and the ratios new / torch best and
new / old.  Each figure includes the timing loop's own call of a Python
function of no arguments (`lambda: None`, printed as "loop overhead").  The
children also return each call's result bytes, and old and new must agree.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)

CASES = ["loss (32,10)", "loss method= (32,10)", "loss+grad (32,10)", "loss+grad out= (32,10)",
         "loss none (32,10)", "softmax (32,10)", "softmax out= (32,10)",
         "log_softmax (32,10)", "loss (1,10)", "cffi floor (32,10)"]


def inputs(np):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, 10)) * 4).astype(np.float32)
    y = rng.integers(0, 10, 32)
    x1 = (rng.standard_normal((1, 10)) * 4).astype(np.float32)
    y1 = rng.integers(0, 10, 1)
    return x, y, x1, y1


def pysafemax_calls(sources):
    """The calls, each a function of nothing, on the pysafemax in `sources`."""
    sys.path.insert(0, sources)
    import numpy as np
    import pysafemax
    loaded = os.path.dirname(os.path.dirname(os.path.abspath(pysafemax._core.__file__)))
    if loaded != os.path.abspath(sources):
        raise SystemExit(f"pysafemax came from {loaded}, not {sources}")
    x, y, x1, y1 = inputs(np)
    grad, probs = np.empty_like(x), np.empty_like(x)
    loss = pysafemax.softmax_loss
    floor = cffi_floor(pysafemax, x, y)
    calls = {
        "loss (32,10)": lambda: loss(x, y),
        "loss method= (32,10)": lambda: loss(x, y, method="stable", threads=1),
        "loss+grad (32,10)": lambda: loss(x, y, return_grad=True),
        "loss+grad out= (32,10)": lambda: loss(x, y, return_grad=True, out=grad),
        "loss none (32,10)": lambda: loss(x, y, reduction="none"),
        "softmax (32,10)": lambda: pysafemax.softmax(x),
        "softmax out= (32,10)": lambda: pysafemax.softmax(x, out=probs),
        "log_softmax (32,10)": lambda: pysafemax.log_softmax(x),
        "loss (1,10)": lambda: loss(x1, y1),
        "cffi floor (32,10)": floor,
    }
    about = {"pysafemax": pysafemax.__version__, "simd": pysafemax.simd_level(),
             "threads": pysafemax.get_num_threads(), "numpy": np.__version__,
             "python_layer": loaded}
    return calls, about


def cffi_floor(pysafemax, x, y):
    """The stable mean loss of x, y by psm_softmax_loss_lse_f32 called
    straight through cffi, on one thread: the buffers made per call, as
    any binding must make them, and nothing checked."""
    from pysafemax import _bindings
    from pysafemax._kernel import ffi, lib
    opts = _bindings.options("stable", "mean", 1).struct
    buffer, floats, int64s = ffi.from_buffer, ffi.typeof("float[]"), ffi.typeof("int64_t[]")
    kernel, null, cell = lib.psm_softmax_loss_lse_f32, ffi.NULL, ffi.new("double *")
    rows, classes = x.shape

    def call():
        kernel(buffer(floats, x), rows, classes, 1, buffer(int64s, y), null, opts, null,
               cell, null, null)
        return cell[0]
    return call


def torch_calls(threads):
    import numpy as np
    import torch
    import torch.nn.functional as F
    if threads:
        torch.set_num_threads(threads)
    x, y, x1, y1 = (torch.from_numpy(a) for a in inputs(np))
    xg = x.clone().requires_grad_(True)
    probs = torch.empty_like(x)

    def forward_backward():
        value = F.cross_entropy(xg, y)
        return value, torch.autograd.grad(value, xg)[0]   # nothing accumulates

    calls = {
        "loss (32,10)": lambda: F.cross_entropy(x, y),
        "loss method= (32,10)": lambda: F.cross_entropy(x, y),
        "loss+grad (32,10)": forward_backward,
        "loss none (32,10)": lambda: F.cross_entropy(x, y, reduction="none"),
        "softmax (32,10)": lambda: torch.softmax(x, 1),
        "softmax out= (32,10)": lambda: torch.softmax(x, 1, out=probs),
        "log_softmax (32,10)": lambda: torch.log_softmax(x, 1),
        "loss (1,10)": lambda: F.cross_entropy(x1, y1),
    }
    return calls, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def digest(result):
    """The bytes of a result (a float, an array or a pair of them), hashed."""
    import numpy as np
    parts = result if isinstance(result, tuple) else (result,)
    h = hashlib.sha256()
    for part in parts:
        part = part.detach().numpy() if hasattr(part, "detach") else part
        array = np.asarray(part)
        h.update(type(part).__name__.encode() + str(array.dtype).encode()
                 + array.tobytes())
    return h.hexdigest()[:16]


def time_calls(calls, loops, repeats):
    """{name: [ns per call, one per timing]}, round-robin over the calls."""
    for call in calls.values():             # warm: caches, branch predictors
        for _ in range(2000):
            call()
    timings = {name: [] for name in calls}
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for name, call in calls.items():
            start = clock()
            for _ in range(loops):
                call()
            timings[name].append((clock() - start) / loops)
    return timings


def child(args):
    if args.child == "torch":
        calls, about = torch_calls(args.torch_threads)
    else:
        calls, about = pysafemax_calls(args.sources)
    calls["loop overhead"] = lambda: None
    digests = {name: digest(call()) for name, call in calls.items()
               if name != "loop overhead"}
    timings = time_calls(calls, args.calls, args.repeats)
    json.dump({"about": about, "digests": digests, "timings": timings}, sys.stdout)


def run_child(kind, sources, args):
    command = [sys.executable, os.path.abspath(__file__), "--child", kind,
               "--calls", str(args.calls), "--repeats", str(args.repeats),
               "--torch-threads", str(args.torch_threads)]
    if sources:
        command += ["--sources", sources]
    done = subprocess.run(command, capture_output=True, text=True, cwd="/")
    if done.returncode:
        raise SystemExit(f"{kind} child failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="another checkout whose Python layer to time")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timings per call per child")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--json", help="save the figures here")
    parser.add_argument("--child", choices=["new", "old", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--sources", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    contenders = [("new", CHECKOUT)]
    if args.against:
        contenders.append(("old", os.path.abspath(args.against)))
    if not args.no_torch:
        # whether torch is there, without importing it (and its thread pool) here
        if importlib.util.find_spec("torch") is not None:
            contenders.append(("torch", None))
        else:
            print("torch not installed: no torch figures")
    samples = {kind: {} for kind, _ in contenders}
    about, digests = {}, {}
    for round_ in range(args.rounds):
        shift = round_ % len(contenders)
        for kind, sources in contenders[shift:] + contenders[:shift]:
            got = run_child(kind, sources, args)
            about[kind], digests[kind] = got["about"], got["digests"]
            for name, values in got["timings"].items():
                samples[kind].setdefault(name, []).extend(values)

    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} cpus; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print("command: python " + " ".join(sys.argv))
    for kind in samples:
        print(f"{kind}: {about[kind]}")
    print(f"{args.rounds} rounds x {args.repeats} timings of {args.calls} calls each; "
          "ns per call (median; torch best / median)")
    if "old" in digests:
        differ = [n for n in digests["new"] if digests["new"][n] != digests["old"][n]]
        print("old and new results: " + ("identical" if not differ
                                         else f"DIFFER in {differ}"))
    header = f"{'call':24s} {'new':>8s}"
    if "old" in samples:
        header += f" {'old':>8s} {'new/old':>8s}"
    if "torch" in samples:
        header += f" {'torch best':>10s} {'torch med':>10s} {'new/torch':>10s}"
    print(header)
    table = {}
    for name in CASES + ["loop overhead"]:
        new = statistics.median(samples["new"][name])
        line = f"{name:24s} {new:8.0f}"
        table[name] = {"new": new}
        if "old" in samples:
            old = statistics.median(samples["old"][name])
            line += f" {old:8.0f} {new / old:8.2f}"
            table[name]["old"] = old
        torch_times = samples.get("torch", {}).get(name)
        if torch_times:
            best, median = min(torch_times), statistics.median(torch_times)
            line += f" {best:10.0f} {median:10.0f} {new / best:10.2f}"
            table[name].update(torch_best=best, torch_median=median)
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"about": about, "argv": sys.argv, "table": table,
                       "samples": samples}, f, indent=1)


if __name__ == "__main__":
    main()
