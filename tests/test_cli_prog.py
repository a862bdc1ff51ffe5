"""The usage line names the program as it was run: `pysafemax` (the console
script) or `python -m pysafemax`."""
import os
import subprocess
import sys

import pytest

from pysafemax.tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the console script installed by pip runs (pyproject's [project.scripts]).
CONSOLE_SCRIPT = "import sys; from pysafemax.tools.cli import main; sys.exit(main())"


def _run(argv, *args, env=None):
    return subprocess.run([*argv, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("args", [["--help"], ["explain", "--help"]])
def test_console_script_usage_says_pysafemax(args):
    done = _run([sys.executable, "-c", CONSOLE_SCRIPT], *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: pysafemax {' '.join(args[:-1])}".rstrip())
    assert "python -m" not in done.stdout


@pytest.mark.parametrize("args", [["--help"], ["explain", "--help"]])
def test_module_usage_says_python_m_pysafemax(args):
    done = _run([sys.executable, "-m", "pysafemax"], *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"usage: python -m pysafemax {' '.join(args[:-1])}".rstrip())


def test_errors_name_the_program_too():
    script = _run([sys.executable, "-c", CONSOLE_SCRIPT], "no-such-command")
    module = _run([sys.executable, "-m", "pysafemax"], "no-such-command")
    assert script.returncode == module.returncode == 2
    assert script.stderr.startswith("usage: pysafemax ")
    assert "\npysafemax: error: " in script.stderr
    assert module.stderr.startswith("usage: python -m pysafemax ")
    assert "\npython -m pysafemax: error: " in module.stderr


def test_installed_console_script():
    """The script pip wrote beside this interpreter, when there is one, run
    on this checkout's Python files (as python -m pytest here runs them)."""
    name = "pysafemax.exe" if os.name == "nt" else "pysafemax"
    script = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.isfile(script):
        pytest.skip(f"no console script at {script}")
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=ROOT if not path else ROOT + os.pathsep + path)
    done = _run([script], "--help", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pysafemax ")


def test_build_parser_prog():
    assert cli.build_parser().prog == "pysafemax"
    assert cli.build_parser("python -m pysafemax").prog == "python -m pysafemax"


def test_main_with_no_command_prints_help_naming_prog(capsys):
    assert cli.main([], prog="python -m pysafemax") == 2
    assert capsys.readouterr().err.startswith("usage: python -m pysafemax ")
    assert cli.main([]) == 2
    assert capsys.readouterr().err.startswith("usage: pysafemax ")
