#!/bin/sh
# tests/integration/sanitized.sh [BUILDDIR] [TEST.py ...]
#
# Runs integration tests (default: bad_input.py and faults.py) against an
# AddressSanitizer + UndefinedBehaviorSanitizer build of nmfd and nmfctl,
# with leak detection on and every report fatal: a sanitizer report in
# nmfd makes it exit non-zero, which the tests see at their clean stop (or
# sooner), and they also look for reports in its log. BUILDDIR (default
# build-san) is set up if it does not exist. Not part of `meson test`: the
# build takes minutes and the tests run slower than in a release build.
set -eu

src=$(cd "$(dirname "$0")/../.." && pwd)
cd "$src"
builddir=build-san
if [ $# -gt 0 ] && [ "${1%.py}" = "$1" ]; then
    builddir=$1
    shift
fi
if [ $# -eq 0 ]; then
    set -- tests/integration/bad_input.py tests/integration/faults.py
fi

if [ ! -f "$builddir/build.ninja" ]; then
    meson setup "$builddir" -Dbuildtype=debug \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C "$builddir" daemon/nmfd ctl/nmfctl ctl/nmfctl-kafka >/dev/null

NMFD_BIN=$(cd "$builddir/daemon" && pwd)
NMFCTL=$(cd "$builddir/ctl" && pwd)/nmfctl
NMFD_DATA=${NMFD_DATA:-$src/data}
NMFD_SANITIZED=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export NMFD_BIN NMFCTL NMFD_DATA NMFD_SANITIZED ASAN_OPTIONS UBSAN_OPTIONS

fail=0
for t in "$@"; do
    if /usr/bin/python3 "$t"; then
        echo "sanitized: $t ok"
    else
        echo "sanitized: $t FAILED" >&2
        fail=1
    fi
done
exit $fail
