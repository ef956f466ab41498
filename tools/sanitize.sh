#!/usr/bin/env bash
# Build polyvit._C with AddressSanitizer + UBSan in a scratch copy of the tree and run the test
# suite against it. Usage: bash tools/sanitize.sh [pytest args...]
# Leak detection is off: CPython itself keeps allocations alive at exit, which LSan reports.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/polyvit-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT
# copy the source (not the build products) so the normal in-place build stays untouched
tar -C "$root" --exclude=./build --exclude='*.so' --exclude=./scratch --exclude=./.git -cf - . | tar -C "$work" -xf -
cd "$work"
POLYVIT_SANITIZE=address,undefined python setup.py -q build_ext --inplace >/dev/null
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
echo "sanitizer build: $(ls polyvit/_C*.so); preloading $libasan $libubsan"
export LD_PRELOAD="$libasan $libubsan"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# tests import polyvit from this copy (rootdir first on sys.path)
PYTHONPATH="$work" python -m pytest -q -p no:cacheprovider "${@:-tests}"
