"""`python -m pysafemax demo --plot FILE.png` and pysafemax.tools.plot."""
import os
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MISSING_MESSAGE = ('pysafemax demo: --plot needs matplotlib: pip install matplotlib '
                   '(the "plot" extra: pip install ".[plot]" in a source tree)')


def _run(*args):
    # The environment is inherited, so a PYTHONPATH that provides matplotlib
    # reaches the child too.
    return subprocess.run([sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    # IHDR is the first chunk: width and height, big-endian, at bytes 16-24.
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 3000 and 400 <= height <= 2000, (width, height)
    assert len(data) > 20_000, len(data)
    return width, height


def test_demo_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss_vs_gap.png"
    result = _run("-m", "pysafemax", "demo", "--plot", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("pysafemax demo:")
    assert result.stdout.rstrip().endswith(f"wrote {path}")
    _check_png(path)


def test_plot_loss_vs_gap_direct(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pysafemax.tools.plot import plot_loss_vs_gap

    path = tmp_path / "direct.png"
    assert plot_loss_vs_gap(path) == 0
    assert capsys.readouterr().out == f"wrote {path}\n"
    _check_png(path)


def test_plot_unwritable_path(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pysafemax.tools.plot import plot_loss_vs_gap

    path = tmp_path / "no such directory" / "x.png"
    assert plot_loss_vs_gap(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"pysafemax demo: --plot: cannot write {path}")
    assert captured.err.count("\n") == 1


_WITHOUT_MATPLOTLIB = """\
import sys
sys.modules["matplotlib"] = None  # import matplotlib now raises ImportError
from pysafemax.tools.cli import main
sys.exit(main(["demo", "--plot", sys.argv[1]]))
"""


def test_demo_plot_without_matplotlib(tmp_path):
    path = tmp_path / "never.png"
    result = _run("-c", _WITHOUT_MATPLOTLIB, str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == MISSING_MESSAGE + "\n"
    assert "Traceback" not in result.stdout
    # The text demo still ran; only the picture is missing.
    assert result.stdout.startswith("pysafemax demo:")
    assert not path.exists()


def test_plot_without_matplotlib_in_process(tmp_path, capsys, monkeypatch):
    from pysafemax.tools.plot import plot_loss_vs_gap

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "never.png"
    assert plot_loss_vs_gap(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == MISSING_MESSAGE + "\n"
    assert not path.exists()
