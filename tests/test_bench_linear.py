"""bench/linear.py still runs (a smoke test, as tests/test_bench.py): every
row printed and saved; its timings are not checked here."""
import importlib.util
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
ROWS = ["matmul only", "pysafemax linear", "materialize", "pysafemax linear+grad",
        "materialize+grad"]
TORCH_ROWS = ["torch", "torch+grad"]


def test_quick_linear_benchmark_prints_and_saves_every_row(tmp_path):
    out = tmp_path / "linear.json"
    done = subprocess.run([sys.executable, "bench/linear.py", "--quick", "--rounds", "1",
                           "--threads", "1", "--shapes", "64x16x1001", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in ("pysafemax", "numpy", "cpu", "threads", "command", "(64, 16, 1001)"):
        assert word in done.stdout
    for name in ROWS + TORCH_ROWS:
        printed = re.search(rf"^\s+{re.escape(name)}\s+\d", done.stdout, re.M) is not None
        assert printed == (HAVE_TORCH or name not in TORCH_ROWS), name
    saved = json.loads(out.read_text())
    assert saved["header"]["threads"] == 1
    by_row = {r["row"]: r for r in saved["results"]}
    assert set(by_row) == set(ROWS + (TORCH_ROWS if HAVE_TORCH else []))
    for row in by_row.values():
        assert row["shape"] == [64, 16, 1001] and row["seconds"] > 0
    assert by_row["pysafemax linear"]["peak_traced_bytes"] > 0
    assert "vs materialize" in by_row["pysafemax linear"]
