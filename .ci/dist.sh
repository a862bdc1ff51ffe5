#!/usr/bin/env bash
# Distribution checks, from a clean clone (bash .ci/dist.sh; .ci/run's step 5):
#   a. python -m build in a fresh venv: the sdist (every file git tracks but
#      CI's), then the wheel built from it;
#   b. the sdist installed from outside the source tree into a fresh venv on
#      the newest Python here, then the demo and the whole suite, run from the
#      unpacked sdist (so every file the tests need must be in it);
#   c. the wheel: tagged cp39-abi3, limited API only (abi3audit), and its .so
#      without debug info;
#   d. that one wheel on the oldest Python declared (3.9, with numpy 1.22.0
#      and cffi 1.16.0) and on the newest here: the demo and a test subset;
#   e. its .so references no __cpu_model (__builtin_cpu_supports' libgcc
#      global, which Apple's and MSVC's toolchains may lack).
# Everything it makes is in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

started=$SECONDS
begin() { echo "== 5$1"; started=$SECONDS; }
took() { echo "   ($((SECONDS - started)) s)"; }

# find_python 3.9: a working python3.9 from pyenv or PATH (pyenv's shim
# exists even where it cannot run that version), or nothing.
find_python() {
    local candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1" \
                     "$(command -v "python$1" || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c "import sys, venv; assert sys.version_info[:2] == tuple(map(int, '$1'.split('.')))" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}
oldest=$(find_python 3.9)
[ -n "$oldest" ] || { echo "no Python 3.9 here (pyenv or python3.9): cannot test the declared floor" >&2; exit 1; }
newest=""
for minor in 3.15 3.14 3.13 3.12 3.11 3.10; do
    newest=$(find_python "$minor")
    [ -z "$newest" ] || break
done
newest=${newest:-$oldest}

# The tests of the unpacked sdist, against the package installed in venv $1,
# from an empty directory: no pysafemax/ is then on sys.path but the
# installed one (tests/conftest.py adds nothing; tests/ has no __init__.py).
# The tests that start `python -m pysafemax` in the sdist's root run its
# Python files with the installed kernel (pysafemax/__init__'s extend_path).
run_tests() {
    local venv=$1; shift
    mkdir -p "$work/run"
    (cd "$work/run" &&
     "$work/$venv/bin/python" -c "import pysafemax, sys; f = pysafemax.__file__; assert f.startswith(sys.prefix), f; print(sys.version.split()[0], f)" &&
     "$work/$venv/bin/python" -m pysafemax demo >/dev/null &&
     "$work/$venv/bin/python" -m pytest -q -p no:cacheprovider "$@")
}

begin "a. python -m build (sdist, then the wheel from the sdist)"
python3 -m venv "$work/build"
"$work/build/bin/python" -m pip install -q build abi3audit
"$work/build/bin/python" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
sdist=$(echo "$work"/dist/pysafemax-*.tar.gz)
wheel=$(echo "$work"/dist/pysafemax-*.whl)
[ -f "$sdist" ] && [ -f "$wheel" ] || { ls "$work/dist"; exit 1; }
ls -l "$work/dist"
mkdir "$work/sdist"
tar -xzf "$sdist" -C "$work/sdist"
unpacked=$(echo "$work"/sdist/pysafemax-*)
# Every file git tracks is in the sdist, but CI's own (.ci/, .github/).
missing=$(cd "$root" && git ls-files -- . ':!.ci' ':!.github' ':!.gitignore' |
          while read -r file; do [ -e "$unpacked/$file" ] || echo "$file"; done)
[ -z "$missing" ] || { echo "the sdist lacks: $missing" >&2; exit 1; }
took

begin "b. the sdist installed on $("$newest" -V), the demo and the whole suite"
"$newest" -m venv "$work/sdist"
(cd "$work" && "$work/sdist/bin/python" -m pip install -q "$sdist[test]")
run_tests sdist "$unpacked/tests"
took

begin "c. the wheel: cp39-abi3, limited API only, no debug info"
case "${wheel##*/}" in
    *-cp39-abi3-*.whl) echo "${wheel##*/}" ;;
    *) echo "the wheel is not tagged cp39-abi3: ${wheel##*/}" >&2; exit 1 ;;
esac
"$work/build/bin/abi3audit" --strict --summary "$wheel"
"$work/build/bin/python" -m zipfile -e "$wheel" "$work/wheel"
so=$(echo "$work"/wheel/pysafemax/_kernel*.so)
ls -l "$so"
# (Listings are read whole before grep: grep -q would stop at its first
# match, and the writer's SIGPIPE would fail the pipeline.)
sections=$(readelf -S --wide "$so")
if grep -q '\.debug_' <<<"$sections"; then
    echo "the wheel's .so carries debug info:" >&2
    grep '\.debug_' <<<"$sections" >&2
    exit 1
fi
took

begin "d. the wheel on $("$oldest" -V) (numpy 1.22.0, cffi 1.16.0) and $("$newest" -V)"
# Every entry point, dtype and method: known answers, gradients, special
# values, bad inputs, partials, threads, tiny calls and the command line
# (2,954 tests, 10-13 s): the build and the ABI on each Python, not every
# property again (b ran every test).
subset=(test_known_answers.py test_gradients.py test_caffe_parity.py test_bad_inputs.py
        test_special_values.py test_one_pass.py test_partials.py test_concurrency.py
        test_tiny_calls.py test_demo.py)
"$oldest" -m venv "$work/oldest"
"$work/oldest/bin/python" -m pip install -q "numpy==1.22.0" "cffi==1.16.0"
(cd "$work" && "$work/oldest/bin/python" -m pip install -q "$wheel[test]")
"$work/oldest/bin/python" -c "import numpy, cffi; assert (numpy.__version__, cffi.__version__) == ('1.22.0', '1.16.0')"
run_tests oldest "${subset[@]/#/$unpacked/tests/}"
if [ "$newest" != "$oldest" ]; then
    "$newest" -m venv "$work/newest"
    (cd "$work" && "$work/newest/bin/python" -m pip install -q "$wheel[test]")
    run_tests newest "${subset[@]/#/$unpacked/tests/}"
fi
took

begin "e. the wheel's .so references no __cpu_model"
symbols=$(nm "$so")
if grep -w __cpu_model <<<"$symbols"; then
    echo "the kernel uses __builtin_cpu_supports (libgcc's __cpu_model): dispatch with cpuid instead" >&2
    exit 1
fi
took
echo "== 5. distribution passed"
