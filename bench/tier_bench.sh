#!/usr/bin/env bash
# Node-local checkpoint tier benchmark (issue 20; bench/README.md, docs/performance.md): a fast
# local disk (the root file system, under the build directory) and a slow "shared" disk made
# here: an ext4 image (in a tmpfs) on a loop device, throttled to --mbps MiB/s (default 100) for
# reads and writes by a blkio cgroup of this script's own (cgroup v1 blk-throttle), into which
# the script moves itself, so every process of the bench is throttled on that device. Rows, each
# next to its baseline in the same run: the drain vs `dd conv=fsync` to the slow disk, and (once
# `lifeline policy check` accepts a `storage:` section) the training stall and the stop latency
# with the local tier vs straight to the slow disk. Prints a table, writes bench/tier_results.json.
# Root only; 3 GiB of memory for the image. About 4 minutes on 2 cores. Everything it made
# (mount, loop device, tmpfs, cgroup and its throttle rules, scratch folders) is removed at exit,
# also on failure, Ctrl-C or SIGTERM.
# Usage: bash bench/tier_bench.sh [--mbps N] [--mib N] [--runs R] [--only drain,stall,stop] [--out FILE]
#   BUILDDIR=build-bench NINJA_JOBS=1 bash bench/tier_bench.sh   # another build dir (default build), one core
set -euo pipefail
cd "$(dirname "$0")/.."
builddir=${BUILDDIR:-build}
mbps=100
mib=256
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --mbps) mbps=${args[i + 1]} ;;
    --mib) mib=${args[i + 1]} ;;
  esac
done
if [[ $(id -u) -ne 0 ]]; then
  echo "tier_bench: needs root (losetup, mount, a blkio cgroup)" >&2
  exit 2
fi
if [[ ! -f "$builddir/build.ninja" ]]; then
  echo "tier_bench: no $builddir/ (run: bash scripts/setup.sh)" >&2
  exit 2
fi
blkio=/sys/fs/cgroup/blkio
if [[ ! -f $blkio/blkio.throttle.write_bps_device ]]; then
  echo "tier_bench: no cgroup v1 blkio controller with throttle files at $blkio" >&2
  exit 2
fi
# NINJA_JOBS=1 to build on one core.
ninja_jobs=(${NINJA_JOBS:+-j "$NINJA_JOBS"})
ninja -C "$builddir" "${ninja_jobs[@]}" bench/drain_bench >/dev/null
built=()
if ! ninja -C "$builddir" "${ninja_jobs[@]}" src/cli/lifeline examples/lifeline-train-example >"$builddir/tier-bench-build.log" 2>&1; then
  echo "tier_bench: lifeline or the example trainer did not build ($builddir/tier-bench-build.log): only the drain row" >&2
  built=(--no-lifeline)
fi

scratch=$(mktemp -d "$PWD/$builddir/tier-bench.XXXXXX")
backing=$scratch/backing
image=$backing/shared.img
mnt=$scratch/shared
cg=$blkio/lifeline-tier-bench.$$
loopdev=
majmin=

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -d $cg ]]; then
    # Processes left in the bench's cgroup are the bench's own (a run cut short): end them by id.
    for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do
      [[ $pid == "$$" ]] || kill -TERM "$pid" 2>/dev/null
    done
    sleep 0.5
    for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do
      [[ $pid == "$$" ]] || kill -KILL "$pid" 2>/dev/null
    done
    echo $$ >"$blkio/cgroup.procs"
    for _ in $(seq 50); do  # until they are gone (and their files on the slow disk closed)
      [[ -z $(cat "$cg/cgroup.procs" 2>/dev/null) ]] && break
      sleep 0.1
    done
  fi
  if [[ -n $majmin ]]; then
    echo "$majmin 0" >"$blkio/blkio.throttle.write_bps_device"
    echo "$majmin 0" >"$blkio/blkio.throttle.read_bps_device"
  fi
  if mountpoint -q "$mnt"; then
    umount "$mnt" || { sleep 1; umount "$mnt"; } || umount -l "$mnt"
  fi
  [[ -n $loopdev ]] && losetup -d "$loopdev"
  mountpoint -q "$backing" && umount "$backing"
  [[ -d $cg ]] && { rmdir "$cg" || { sleep 1; rmdir "$cg"; }; }
  rm -rf "$scratch"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The slow disk: a 3 GiB ext4 image on a loop device. The image lives in a tmpfs of its own
# (memory, at most 3 GiB of it), not on the root file system: the slow disk's traffic then never
# reaches the virtual disk that is the fast local one, as a parallel file system's goes over the
# network and not to the node's NVMe. --direct-io=on: the loop device reads and writes the image
# with O_DIRECT, without a second page cache. The throttle is on the loop device, above that.
# fallocate: the image's memory is taken once, here, not by the first writes to each block (on
# this VM fresh memory is slow to touch, docs/performance.md, and a drain would pay for it).
mkdir -p "$backing"
mount -t tmpfs -o size=3200M,mode=0700 tmpfs "$backing"
fallocate -l 3G "$image"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$image"
loopdev=$(losetup --find --show --direct-io=on "$image")
majmin=$(lsblk -ndo MAJ:MIN "$loopdev" | tr -d ' ')
mkdir -p "$mnt"
mount "$loopdev" "$mnt"

# The throttle: cgroup v1 blk-throttle limits the bios that tasks of a cgroup submit to the
# device. The bench's cgroup gets the limit; this shell moves into it, so everything it starts
# (drain_bench, dd, lifeline run, its trainer, its drain thread) is throttled on the loop device.
# v1 has no cgroup writeback: pages left dirty are written back by kernel flusher threads, which
# belong to the root cgroup and would escape. The same limit on the root cgroup, for this loop
# device only, throttles those too (in v1 the two limits are separate budgets, not nested). The
# bench counts, per row, the bytes its cgroup submitted against all bytes written to the device.
bps=$((mbps * 1024 * 1024))
mkdir "$cg"
echo "$majmin $bps" >"$cg/blkio.throttle.write_bps_device"
echo "$majmin $bps" >"$cg/blkio.throttle.read_bps_device"
echo "$majmin $bps" >"$blkio/blkio.throttle.write_bps_device"
echo "$majmin $bps" >"$blkio/blkio.throttle.read_bps_device"
echo $$ >"$cg/cgroup.procs"

# The fast local disk: the root file system, under the build directory.
local_dir=$scratch/local
mkdir -p "$local_dir"

# In the background and waited for, so that a SIGTERM to this script runs the cleanup at once
# (which ends the bench's processes) instead of after the bench.
nice_cmd=(nice -n -10)
"${nice_cmd[@]}" python3 bench/tier_bench.py --build "$builddir" --local "$local_dir" --shared "$mnt" \
  --scratch "$scratch" --cgroup "$cg" --device "$majmin" --loop "$loopdev" --mbps "$mbps" \
  --command "bash bench/tier_bench.sh${*:+ $*}" "${built[@]}" "$@" &
wait $!
