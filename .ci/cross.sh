#!/usr/bin/env bash
# The kernel off this machine's beaten path, from a clean clone (as root on a
# Debian machine, as CI runs; what is missing is installed with apt-get):
#   a. the C edge cases for Windows: mingw-w64 against UCRT (the C runtime
#      of Python's Windows builds), warnings as errors, run under wine, the
#      Win32 thread pool included;
#   b. the same for aarch64 (no AVX2: the scalar twins), static, run under
#      qemu-aarch64, then the pool's stress test (tests/c/pool_stress.c,
#      POSIX only) without its forks;
#   c. the CPU detection (cpuid, xgetbv) under qemu-x86_64's CPU models,
#      with and without AVX, AVX2, FMA and XSAVE;
#   d. clang: every csrc/*.c with warnings as errors, and -pedantic;
#   e. the extension as pip builds it references no __cpu_model (libgcc's,
#      which Apple's toolchain and clang-cl lack);
#   f. a kernel built without threads (-DPSM_NO_THREADS): the edge cases,
#      and the extension, whose get_num_threads() must say 1.
# Each step prints its time in seconds.
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) fails the step too
cd "$(dirname "$0")/.."

# The default build's flags (csrc/ffi_build.py), warnings as errors.
cflags=(-std=c11 -O3 -fno-math-errno -ffp-contract=off -Wall -Wextra -Werror -Icsrc)
edge_sources=(tests/c/kernel_edge_cases.c csrc/*.c)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
times=()

timed() {   # timed NAME COMMAND...: runs it, prints and keeps its time
    local name=$1 start=$EPOCHREALTIME
    shift
    echo "-- $name"
    "$@"
    local took
    took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
    echo "   $name: $took s"
    times+=("$took s  $name")
}

wine64=$(command -v wine64 || echo /usr/lib/wine/wine64)   # Debian keeps it off PATH

install_missing() {
    local need=()
    command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
    [ -x "$wine64" ] || need+=(wine64 wine)
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
    command -v clang >/dev/null || need+=(clang)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
}

windows() {
    # mingw-w64 links msvcrt by default, whose fma and fmaf (mingw-w64 10's
    # libmingwex) are not correctly rounded: the scalar exp then differs
    # from the AVX2 one.  UCRT's are (wine's, at least), and UCRT is what an
    # MSVC-built extension uses.
    x86_64-w64-mingw32-gcc -dumpspecs | sed 's/-lmsvcrt/-lucrt/g' >"$work/ucrt.specs"
    x86_64-w64-mingw32-gcc -D_UCRT -specs="$work/ucrt.specs" "${cflags[@]}" \
        "${edge_sources[@]}" -lucrt -o "$work/edge.exe"
    # (A wine64 without 32-bit wine says it cannot open syswow64's
    # rundll32.exe while it makes the prefix: harmless.)
    WINEPREFIX="$work/wine" WINEDEBUG=-all "$wine64" "$work/edge.exe"
    echo "   (tests/c/pool_stress.c forks: POSIX only, skipped on Windows)"
}

aarch64() {
    aarch64-linux-gnu-gcc -static "${cflags[@]}" "${edge_sources[@]}" -lm -lpthread \
        -o "$work/edge-aarch64"
    qemu-aarch64 "$work/edge-aarch64"
    aarch64-linux-gnu-gcc -static "${cflags[@]}" tests/c/pool_stress.c csrc/chunks.c \
        -lpthread -o "$work/pool-stress-aarch64"
    # Its callers race for the pool, without forks: a fork while threads run
    # kills qemu-user 7.2 itself ("qemu_plugin_vcpu_init_hook: assertion
    # failed" in the child); the forks run natively (tests/test_pool.py).
    qemu-aarch64 "$work/pool-stress-aarch64" 0
}

# psm_simd_level on CPUs that qemu-x86_64 models: 1 only with AVX, AVX2, FMA
# and XSAVE (the OS's switch of YMM state) all present.  (The edge cases on
# a Nehalem passed too, but took 158 s.)
cpu_models() {
    cat >"$work/level.c" <<'EOF'
#include <stdio.h>
#include "softmax_loss.h"
int main(void) { printf("%d\n", psm_simd_level()); return 0; }
EOF
    gcc -static "${cflags[@]}" "$work/level.c" csrc/*.c -lm -lpthread -o "$work/level"
    local model want got
    for model in Nehalem:0 SandyBridge:0 Haswell,-fma:0 Haswell,-avx2:0 Haswell,-xsave:0 Haswell:1; do
        want=${model##*:}
        # (stderr: TCG lists the features of the model it cannot emulate)
        got=$(qemu-x86_64 -cpu "${model%:*}" "$work/level" 2>/dev/null)
        echo "   ${model%:*}: SIMD level $got"
        [ "$got" = "$want" ] || { echo "   expected $want" >&2; return 1; }
    done
}

with_clang() {
    for source in csrc/*.c; do
        clang "${cflags[@]}" -c "$source" -o /dev/null
        clang "${cflags[@]}" -pedantic -c "$source" -o /dev/null
    done
}

# A venv with the extension built by pip as a user's install would be
# (PYSAFEMAX_CFLAGS, if given, added); prints the compiled module's path.
extension() {
    rm -rf build   # else setuptools reuses objects built with other flags
    python -m pip install -q --force-reinstall --no-deps . >&2
    rm -rf build
    python -c "import pysafemax._kernel as k; print(k.__file__)"
}

without_threads() {
    gcc "${cflags[@]}" -DPSM_NO_THREADS "${edge_sources[@]}" -lm -o "$work/edge-no-threads"
    "$work/edge-no-threads"
    PYSAFEMAX_CFLAGS=-DPSM_NO_THREADS extension >/dev/null
    python - <<'EOF'
import numpy as np
import pysafemax
from pysafemax import _bindings
assert _bindings.MAX_THREADS == 1 and pysafemax.get_num_threads() == 1
pysafemax.set_num_threads(8)
assert pysafemax.get_num_threads() == 1
x = np.random.default_rng(0).standard_normal((600, 1000)).astype(np.float32)
y = np.arange(600) % 1000
assert pysafemax.softmax_loss(x, y, threads=4) == pysafemax.softmax_loss(x, y, threads=1)
print("   a kernel without threads: get_num_threads() == 1, threads=4 runs on one")
EOF
}

no_cpu_model() {
    local module symbols
    module=$(extension)
    symbols=$(nm "$module")   # whole, before grep (see .ci/run step 2)
    grep -q psm_softmax_loss_f32 <<<"$symbols"   # not stripped: the check means something
    if grep -E '__cpu_model|__cpu_indicator_init' <<<"$symbols"; then
        echo "$module uses libgcc's CPU model" >&2
        return 1
    fi
    echo "   $(basename "$module"): no __cpu_model"
}

echo "== cross builds"
timed "install missing tools (apt-get)" install_missing
timed "Windows (mingw-w64, UCRT): edge cases under wine" windows
timed "aarch64: edge cases and pool stress under qemu" aarch64
timed "x86-64 CPU models under qemu: the SIMD level" cpu_models
timed "clang: csrc/*.c, warnings as errors, -pedantic" with_clang
python3 -m venv .venv-cross
. .venv-cross/bin/activate
timed "venv: numpy, cffi" python -m pip install -q numpy cffi
timed "the extension: no __cpu_model" no_cpu_model
timed "without threads: edge cases, extension" without_threads
deactivate
echo "== cross builds passed; seconds per step:"
printf '   %s\n' "${times[@]}"
