"""The public API from a type checker's and a reader's point of view: every
public callable fully annotated (typing.get_type_hints, so that the
annotations also evaluate on Python 3.9), every public function's docstring
in numpydoc sections, the docstrings' examples run as doctests, and, when
mypy is installed (it is no test dependency), the overloads seen by mypy."""
import doctest
import importlib
import importlib.util
import inspect
import os
import re
import textwrap
import typing

import pytest

import pysafemax
from pysafemax.tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import dask.array  # noqa: F401
    HAVE_DASK = True
except ImportError:
    HAVE_DASK = False

HAVE_TORCH = importlib.util.find_spec("torch") is not None

# The modules whose public functions are the API: each one's __all__ (the
# tools' own modules, not their old re-exporting paths), and the command line.
MODULES = ["pysafemax", "pysafemax.reference", "pysafemax.tools.diagnose",
           "pysafemax.tools.explain", "pysafemax.tools.scan_log",
           "pysafemax.tools.demo", "pysafemax.tools.plot", "pysafemax.tools.text",
           "pysafemax.tools.limits"] + (["pysafemax.dask"] if HAVE_DASK else []) \
    + (["pysafemax.torch"] if HAVE_TORCH else [])


def _public(module_name):
    module = importlib.import_module(module_name)
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield f"{module_name}.{name}", obj


def _functions():
    found = {}
    for module_name in MODULES:
        for name, obj in _public(module_name):
            if inspect.isfunction(obj):
                found.setdefault(obj, name)
    found.setdefault(cli.main, "pysafemax.tools.cli.main")
    found.setdefault(cli.build_parser, "pysafemax.tools.cli.build_parser")
    return sorted(((name, f) for f, name in found.items()), key=lambda p: p[0])


def _classes():
    found = {}
    for module_name in MODULES:
        for name, obj in _public(module_name):
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                found.setdefault(obj, name)
    return sorted(((name, c) for c, name in found.items()), key=lambda p: p[0])


def _methods(cls):
    """The class's own public methods and properties (and __init__), as
    functions."""
    for name, attribute in vars(cls).items():
        if isinstance(attribute, property):
            yield f"{name} (property)", attribute.fget
        elif inspect.isfunction(attribute) and (not name.startswith("_")
                                                or name == "__init__"):
            yield name, attribute


FUNCTIONS = _functions()
CLASSES = _classes()
METHODS = [(f"{class_name}.{name}", f) for class_name, cls in CLASSES
           for name, f in _methods(cls)]


def _unannotated(function):
    hints = typing.get_type_hints(function)     # raises if one does not evaluate
    missing = [name for name, p in inspect.signature(function).parameters.items()
               if name not in ("self", "cls") and name not in hints]
    if "return" not in hints:
        missing.append("return")
    return missing


def test_the_api_is_found():
    names = {name for name, _ in FUNCTIONS}
    for expected in ("pysafemax.softmax_loss", "pysafemax.softmax",
                     "pysafemax.log_softmax", "pysafemax.combine_partials",
                     "pysafemax.diagnose", "pysafemax.tools.explain.explain",
                     "pysafemax.tools.scan_log.scan_log", "pysafemax.tools.cli.main"):
        assert expected in names
    assert {name for name, _ in CLASSES} >= {"pysafemax.SoftmaxPartials",
                                            "pysafemax.DiagnosisReport"}
    if HAVE_DASK:
        assert "pysafemax.dask.softmax_loss" in names


@pytest.mark.parametrize("name, function", FUNCTIONS + METHODS,
                         ids=[n for n, _ in FUNCTIONS + METHODS])
def test_public_callables_are_fully_annotated(name, function):
    assert _unannotated(function) == [], name


def test_py_typed_marker_is_in_the_package():
    here = os.path.dirname(pysafemax.__file__)
    assert os.path.isfile(os.path.join(here, "py.typed"))


# -- docstrings -----------------------------------------------------------

def _sections(doc):
    """The numpydoc section titles of a docstring: a line, then dashes."""
    lines = inspect.cleandoc(doc).splitlines()
    return {title.strip() for title, rule in zip(lines, lines[1:])
            if rule.strip() and set(rule.strip()) == {"-"}
            and len(rule.strip()) == len(title.strip())}


@pytest.mark.parametrize("name, function", FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_public_functions_have_numpydoc_sections(name, function):
    doc = function.__doc__
    assert doc, f"{name} has no docstring"
    sections = _sections(doc)
    takes = [p for p in inspect.signature(function).parameters if p not in ("self",)]
    if takes:
        assert "Parameters" in sections, name
        documented = " ".join(doc.split())
        for parameter in takes:
            assert re.search(rf"\b{parameter}\b", documented), (name, parameter)
    if typing.get_type_hints(function)["return"] is not type(None):
        assert "Returns" in sections, name
    assert sections <= {"Parameters", "Returns", "Raises", "Examples", "Notes",
                        "See Also", "Attributes"}, (name, sections)


# -- the examples are doctests -------------------------------------------

DOCTEST_MODULES = ["pysafemax._core", "pysafemax._partials", "pysafemax._linear",
                   "pysafemax.tools.diagnose",
                   "pysafemax.tools.explain", "pysafemax.tools.scan_log",
                   "pysafemax.tools.demo", "pysafemax.tools.text",
                   pytest.param("pysafemax.dask", marks=pytest.mark.skipif(
                       not HAVE_DASK, reason="needs dask")),
                   pytest.param("pysafemax.torch", marks=pytest.mark.skipif(
                       not HAVE_TORCH, reason="needs torch"))]


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module_name} has no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    before = pysafemax.get_num_threads()
    try:
        for test in tests:
            runner.run(test)
    finally:
        pysafemax.set_num_threads(None)
    assert pysafemax.get_num_threads() == before
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} example(s) of {module_name} failed"


# -- the overloads, as mypy sees them ---------------------------------------

SNIPPET = '''
import numpy as np
import pysafemax
from pysafemax.tools.explain import explain

x = np.zeros((4, 3), dtype=np.float32)
y = np.zeros(4, dtype=np.int64)
flag: bool = bool(len(y))

reveal_type(pysafemax.softmax_loss(x, y))
reveal_type(pysafemax.softmax_loss(x, y, reduction="sum"))
reveal_type(pysafemax.softmax_loss(x, y, reduction="none"))
reveal_type(pysafemax.softmax_loss(x, y, return_grad=True))
reveal_type(pysafemax.softmax_loss(x, y, reduction="none", return_grad=True))
reveal_type(pysafemax.softmax_loss(x, y, return_grad=flag))
reveal_type(pysafemax.softmax(x))
state = pysafemax.combine_partials(
    [pysafemax.softmax_partials(x, y, num_classes=3)])
reveal_type(state)
reveal_type(pysafemax.loss_from_partials(state))
reveal_type(pysafemax.loss_from_partials(state, reduction="none"))
reveal_type(pysafemax.diagnose(x, y).nan_rows)
reveal_type(explain("87.3365").known)
w = np.zeros((3, 2), dtype=np.float32)
h = np.zeros((4, 2), dtype=np.float32)
reveal_type(pysafemax.linear_cross_entropy(h, w, y))
reveal_type(pysafemax.linear_cross_entropy(h, w, y, reduction="none"))
reveal_type(pysafemax.linear_cross_entropy(h, w, y, return_grad=True))
wrong: float = pysafemax.softmax_loss(x, y, reduction="none")
'''

# mypy's spellings vary by version ("builtins.float" or "float", "Tuple[...]"
# or "tuple[...]"), and numpy's NDArray by numpy version: match loosely.
FLOAT = r"(builtins\.)?float"
ARRAY = r"numpy\.ndarray\[.*numpy\.floating\[Any\]\]\]"


def _pair(a, b):
    return rf"(builtins\.)?[tT]uple\[{a}, {b}\]"


EXPECTED = [FLOAT, FLOAT, ARRAY, _pair(FLOAT, ARRAY), _pair(ARRAY, ARRAY),
            rf"{FLOAT} \| .*tuple.*|Union\[.*[tT]uple.*\]", ARRAY,
            r"pysafemax\._partials\.SoftmaxPartials", FLOAT, ARRAY,
            r"(builtins\.)?int", r"(builtins\.)?bool", FLOAT, ARRAY,
            _pair(FLOAT, rf"(builtins\.)?[tT]uple\[{ARRAY}, \.\.\.\]")]

DASK_SNIPPET = '''
import numpy as np
import pysafemax.dask

x = np.zeros((4, 3))
y = np.zeros(4, dtype=np.int64)
reveal_type(pysafemax.dask.softmax_loss(x, y))
reveal_type(pysafemax.dask.softmax_loss(x, y, return_grad=True))
'''

DASK_ARRAY = r"dask\.array\.core\.Array"
DASK_EXPECTED = [DASK_ARRAY, _pair(DASK_ARRAY, DASK_ARRAY)]


def _mypy(tmp_path, monkeypatch, source):
    api = pytest.importorskip("mypy.api")
    path = tmp_path / "snippet.py"
    path.write_text(textwrap.dedent(source))
    monkeypatch.chdir(ROOT)     # this checkout's pysafemax, and its [tool.mypy]
    stdout, stderr, _ = api.run([
        "--config-file", os.path.join(ROOT, "pyproject.toml"),
        "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
        "--hide-error-context", str(path)])
    assert stderr == ""
    return [line.split(": ", 2)[1:] for line in stdout.splitlines()]


def _revealed(lines):
    return [text[len('Revealed type is "'):-1] for kind, text in lines
            if kind == "note" and text.startswith("Revealed type is")]


def test_mypy_sees_the_overloads(tmp_path, monkeypatch):
    lines = _mypy(tmp_path, monkeypatch, SNIPPET)
    revealed = _revealed(lines)
    assert len(revealed) == len(EXPECTED), lines
    for got, expected in zip(revealed, EXPECTED):
        assert re.fullmatch(expected, got), (got, expected)
    errors = [text for kind, text in lines if kind == "error"]
    # only the last line's: reduction="none" gives an array, not a float
    assert len(errors) == 1 and "Incompatible types in assignment" in errors[0], lines


@pytest.mark.skipif(not HAVE_DASK, reason="needs dask")
def test_mypy_sees_the_dask_overloads(tmp_path, monkeypatch):
    lines = _mypy(tmp_path, monkeypatch, DASK_SNIPPET)
    revealed = _revealed(lines)
    assert [kind for kind, _ in lines] == ["note"] * len(DASK_EXPECTED), lines
    for got, expected in zip(revealed, DASK_EXPECTED):
        assert re.fullmatch(expected, got), (got, expected)
