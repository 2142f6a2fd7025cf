#!/usr/bin/env bash
# Installs lifeline's Debian packages (only the missing ones) and builds the project into build/.
# Usage: scripts/setup.sh [--sanitize]   (run as root on Debian 12; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  meson ninja-build g++ pkg-config
  libboost-dev libboost-filesystem-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev doctest-dev
  nlohmann-json3-dev libxxhash-dev libssl-dev
  libhowardhinnant-date-dev  # date/date.h (header-only): parsing ISO 8601 stamps
  python3-xxhash  # optional for python/lifeline_client.py: checks xxh3-64 checkpoints (without it: sizes only)
  libtorch-dev python3-torch
  slurm-wlm munge
  iproute2 util-linux  # tests/slurm/cluster.sh --nodes: ip netns, nsenter, unshare (the 3-node test cluster)
  librsvg2-bin
  libtcmalloc-minimal4  # bench/: the trainer's allocator in the end-to-end figures
  groff-base  # tests/cli_docs_test.cc: the generated man pages render without warnings (groff -ww)
  # tests/install (issue 21): a trainer built with CMake against the installed lifeline, pip into a
  # venv, the Lmod modulefile loaded for real, meson dist's tarball unpacked
  cmake python3-venv python3-pip python3-setuptools lmod git xz-utils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

builddir=build
opts=()
if [[ "${1:-}" == "--sanitize" ]]; then
  builddir=build-asan
  opts=(-Db_sanitize=address,undefined -Db_lundef=false)
fi
if [[ ! -f "$builddir/build.ninja" ]]; then
  meson setup "$builddir" "${opts[@]}"
fi
ninja -C "$builddir"
