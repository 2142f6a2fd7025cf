#!/usr/bin/env bash
# Store benchmark (see bench/README.md): saving a 1 GiB checkpoint vs dd, full verify vs cat,
# and the resume choice over 10,000 checkpoints. Runs on a fresh clone after scripts/setup.sh,
# in a scratch folder inside the build directory (the same disk as the build), removed after.
# Takes about two minutes on 2 cores. Usage: bench/store_bench.sh [--mib N] [--runs R] [--many M] [--neighbour R]
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
[[ -f "$builddir/build.ninja" ]] || { echo "store_bench: no $builddir/ (run scripts/setup.sh first)" >&2; exit 2; }
ninja -C "$builddir" bench/store_bench >/dev/null

mib=1024
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [[ "${args[i]}" == --mib ]] && mib=${args[i + 1]}; done
need=$((3 * mib + 512))   # source file, checkpoint, dd output, small checkpoints
avail=$(df -Pm "$builddir" | awk 'NR == 2 {print $4}')
if ((avail < need)); then
  echo "store_bench: needs ${need} MiB free next to $builddir, has ${avail} MiB" >&2
  exit 2
fi

scratch=$(mktemp -d "$builddir/store-bench.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
echo "store_bench: $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
"$builddir/bench/store_bench" "$scratch" "$@"
