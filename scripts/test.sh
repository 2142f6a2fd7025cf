#!/usr/bin/env bash
# Sets everything up (Debian packages, builds) and runs the whole test suite:
#   1. build/       : every test (unit, end-to-end, real Slurm daemons)
#   2. build-asan/  : the C++ unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer
# Ends with the plain line "N passed, N failed". Exit status 0 only when nothing failed.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
# Adds the Ok/Fail counts of meson's summary in $1 to the totals.
count() {
  local ok fail to
  ok=$(grep -E '^Ok:' "$1" | awk '{print $2}')
  fail=$(grep -E '^(Fail|Timeout|Unexpected Pass):' "$1" | awk '{s+=$NF} END {print s+0}')
  passed=$((passed + ${ok:-0}))
  failed=$((failed + ${fail:-0}))
}

# The sanitizer configuration (step 2) compiles while step 1's tests run: they mostly wait on
# processes, signals and Slurm's daemons, and its ~15 minutes of compiling would otherwise come
# after them. At the lowest CPU priority (nice 19), so the tests' own processes come first.
asan_build() {
  # GCC's -Wmaybe-uninitialized gives false positives under the sanitizers (inside std::regex
  # and std::function here), so that one warning is off in this configuration only.
  if [[ ! -f build-asan/build.ninja ]]; then
    meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dtorch=disabled \
      -Dcpp_args=-Wno-maybe-uninitialized >/dev/null || return 1
  fi
  # Only the C++ unit tests run under the sanitizers, so only their executables are built: the
  # CLI (and cli_docs, suite cli, which links it), the Python tests' binaries and the benchmarks
  # would take half of this configuration's compile time (boost headers under ASan + UBSan).
  local asan_targets
  mapfile -t asan_targets < <(meson introspect --tests build-asan | python3 -c '
import json, os, sys
for t in json.load(sys.stdin):
    if "lifeline:unit" in t["suite"] and not {"lifeline:python", "lifeline:cli"} & set(t["suite"]):
        print(os.path.relpath(t["cmd"][0], "build-asan"))')
  ((${#asan_targets[@]})) || return 1
  ninja -C build-asan "${asan_targets[@]}"
}
( renice -n 19 -p "$BASHPID" >/dev/null; asan_build ) >build/asan-build.log 2>&1 &
asan_pid=$!

status=0
meson test -C build --print-errorlogs --num-processes 1 "$@" 2>&1 | tee build/test-summary.txt
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
count build/test-summary.txt

if ! wait "$asan_pid"; then
  status=1
  echo "the sanitizer build failed (build/asan-build.log):"
  tail -n 40 build/asan-build.log
fi

ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --no-rebuild --print-errorlogs --suite unit --no-suite python --no-suite cli 2>&1 |
  tee build-asan/test-summary.txt
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
count build-asan/test-summary.txt

if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "$passed passed, $failed failed"
exit $status
