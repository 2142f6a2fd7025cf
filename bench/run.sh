#!/usr/bin/env bash
# Runs every lifeline benchmark, each against its baseline side by side, prints one table and
# writes it as JSON (bench/results.json). Needs a build (bash scripts/setup.sh); installs strace
# when missing and running as root. About 7-8 minutes on 2 cores (docs/performance.md has a run).
# Usage: bench/run.sh [--quick] [--only NAMES] [--out FILE]
#   --quick       smaller sizes and fewer repetitions (about 3 minutes; numbers are noisier)
#   --only NAMES  comma-separated subset: fast_path,latency,overhead,save,stop,resume,async
# Scratch files go under the build directory (the same disk as the build) and are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
if [[ ! -f "$builddir/build.ninja" ]]; then
  echo "bench/run.sh: no $builddir/ (run: bash scripts/setup.sh)" >&2
  exit 2
fi
ninja -C "$builddir" >/dev/null
if ! command -v strace >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "bench/run.sh: installing strace (to count the fast path's system calls)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends strace >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends strace >/dev/null; } ||
    echo "bench/run.sh: strace not installed; the system-call row will say so" >&2
fi
# As root, measure at nice -10: other work on a shared machine then disturbs the figures less
# (the numbers are about lifeline, not about the neighbours; a Slurm job owns its cores).
nice_cmd=()
[[ $(id -u) -eq 0 ]] && nice_cmd=(nice -n -10)
exec "${nice_cmd[@]}" python3 bench/run_benchmarks.py --build "$builddir" "$@"
