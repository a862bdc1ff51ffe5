"""The tools' home, pysafemax.tools: the old import paths still work, the
command line's help still prints, and the tools read no private name of
another module."""
import ast
import importlib
import os
import re
import subprocess
import sys
import types

import pytest

import pysafemax
from pysafemax.tools import cli, text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "pysafemax", "tools")

# Each old module, its new home, and its __all__ before the move.
OLD_PATHS = {
    "pysafemax.diagnostics": ("pysafemax.tools.diagnose", [
        "diagnose", "DiagnosisReport", "Thresholds", "thresholds",
        "cli_diagnose", "COUNT_KEYS", "MAX_POSITIONS"]),
    "pysafemax.logscan": ("pysafemax.tools.scan_log", [
        "scan_log", "cli_scan_log", "LogReport", "Reading", "Episode",
        "UniformPlateau", "PLATEAU", "TREND_WINDOW", "LAST_KEPT",
        "EPISODES_KEPT"]),
    "pysafemax.explain": ("pysafemax.tools.explain", [
        "explain", "cli_explain", "Explanation", "StuckValue", "CONSTANTS",
        "CONSTANT_BY_KEY", "parse_value", "matches", "match_constant",
        "uniform_classes", "abbreviate", "NUMBER_SPELLING", "REL_TOL",
        "MIN_DIGITS", "MAX_CLASSES", "ECHO_LIMIT"]),
    "pysafemax.demo": ("pysafemax.tools.demo", [
        "run_demo", "SEED_LOGITS", "GAPS", "true_loss", "loss_vs_gap"]),
    "pysafemax.plotting": ("pysafemax.tools.plot", ["plot_loss_vs_gap"]),
}
# Other public names of the old modules that moved further than their module.
ELSEWHERE = {
    "pysafemax.explain": {"abbreviate": text, "ECHO_LIMIT": text},
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_old_import_paths_reexport_the_new_modules(old):
    new_name, names = OLD_PATHS[old]
    shim, new = importlib.import_module(old), importlib.import_module(new_name)
    assert sorted(shim.__all__) == sorted(names)
    namespace = {}
    exec(f"from {old} import *", namespace)
    for name in names:
        home = ELSEWHERE.get(old, {}).get(name, new)
        assert getattr(shim, name) is getattr(home, name), name
        assert namespace[name] is getattr(home, name), name


def test_old_names_beyond_all():
    from pysafemax import demo, explain, plotting
    from pysafemax._constants import FLT_MIN
    from pysafemax.tools import limits

    assert demo.METHODS is pysafemax.METHODS
    assert demo.EXP_OVERFLOW == limits.FLT_EXP_OVERFLOW == pytest.approx(88.7228, abs=1e-4)
    assert demo.FLT_MIN == plotting.FLT_MIN == FLT_MIN
    assert plotting.FLT_DENORM_MIN == limits.FLT_DENORM_MIN
    assert explain.NAN_STORY.startswith("nan is not a number")
    assert explain.NUMBER_SPELLING.startswith(f"(?:{explain.NAN_SPELLING}|")
    # the widths each report had: diagnose's 80, explain's and scan-log's 79
    from pysafemax import diagnostics, logscan

    assert (diagnostics.WIDTH, explain.WIDTH, logscan.WIDTH) == (80, 79, 79)


def test_package_and_main_use_the_new_homes():
    from pysafemax import __main__ as main_module
    from pysafemax.tools import diagnose

    assert pysafemax.diagnose is diagnose.diagnose
    assert pysafemax.DiagnosisReport is diagnose.DiagnosisReport
    assert main_module.main is cli.main and main_module.build_parser is cli.build_parser
    # the submodules named like their functions stay modules
    assert isinstance(importlib.import_module("pysafemax.tools").diagnose,
                      types.ModuleType)


def test_console_script_points_at_the_cli():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        found = re.search(r'^pysafemax = "([\w.]+):(\w+)"$', f.read(), re.MULTILINE)
    module, function = found.groups()
    assert getattr(importlib.import_module(module), function) is cli.main


def test_stuck_values_are_read_from_the_package_data():
    from importlib import resources

    from pysafemax.tools import explain

    assert resources.files("pysafemax.tools").joinpath(explain.DATA_FILE).is_file()
    assert [c.key for c in explain.CONSTANTS][:3] == ["flt_min", "flt_denorm", "dbl_min"]
    assert len(explain.CONSTANTS) == 13


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pysafemax", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [[], ["demo"], ["diagnose"], ["scan-log"],
                                     ["explain"]])
def test_help(command):
    done = _run(*command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"usage: python -m pysafemax {' '.join(command)}".rstrip())
    if not command:
        for name in ("demo", "diagnose", "scan-log", "explain"):
            assert name in done.stdout


def _private_reads(path):
    """`from m import _name` and `module._name` of an imported module, for
    the file at path: (line, text) pairs.  Importing a module of the package
    (`from .. import _validation`) is no read; what is read from it is."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = os.path.dirname(path)
            for _ in range(node.level - 1):
                package = os.path.dirname(package)
            for a in node.names:
                is_module = (node.level and node.module is None and os.path.exists(
                    os.path.join(package, a.name + ".py")))
                if is_module:
                    modules.add(a.asname or a.name)
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append((node.lineno, f"from {node.module} import {a.name}"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def test_the_private_read_check_finds_them(tmp_path):
    package = tmp_path / "package"
    (package / "tools").mkdir(parents=True)
    (package / "_core.py").write_text("")
    probe = package / "tools" / "probe.py"
    probe.write_text("import numpy as np\nfrom .. import _core, softmax_loss\n"
                     "from .._core import _plain_loss, softmax\n"
                     "x = _core._KERNELS, _core.softmax, np._NoValue\n")
    assert _private_reads(str(probe)) == [
        (3, "from _core import _plain_loss"), (4, "_core._KERNELS"),
        (4, "np._NoValue")]


PACKAGE = os.path.join(ROOT, "pysafemax")
MODULES = sorted(os.path.relpath(os.path.join(d, n), PACKAGE)
                 for d in (PACKAGE, TOOLS) for n in os.listdir(d) if n.endswith(".py"))


@pytest.mark.parametrize("name", MODULES)
def test_no_module_reads_a_private_name_of_another(name):
    assert _private_reads(os.path.join(PACKAGE, name)) == []


def test_one_module_imports_the_compiled_kernel():
    importers = [name for name in MODULES
                 if re.search(r"^\s*from\s+\.?_kernel\s+import|^\s*import\s+\S*_kernel",
                              open(os.path.join(PACKAGE, name), encoding="utf-8").read(),
                              re.MULTILINE)]
    assert importers == ["_bindings.py"]
