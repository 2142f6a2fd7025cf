#!/usr/bin/env bash
# lifeline as installed (issue 21): `meson install` into a DESTDIR stage, then everything a cluster
# user does with that install, from directories outside the source tree:
#   1. the files are in place: bin/lifeline (static client, no rpath), liblifeline_client.so with
#      its soname and .a, the headers (compiling standalone), lifeline.pc, the CMake package,
#      share/lifeline/{policies,jobscripts}, the modulefile, the Python client;
#   2. a C++ trainer (tests/install/trainer) built with pkg-config and with CMake against the stage,
#      run under the installed `lifeline run`, stopped by SIGUSR1, resumed to the uninterrupted result;
#   3. `pip install ./python` into a venv: `import lifeline, lifeline.torch`, the version is
#      meson's; examples/train_torch.py copied elsewhere, stopped and resumed bit-exactly;
#   4. the Lmod modulefile loaded for real (`module load lifeline`);
#   5. `meson dist`: the tarball configures (-Dtorch=disabled) and builds the client library.
# Run by meson (tests/install/meson.build) with BUILD_DIR, SOURCE_DIR and PYTHON.
set -euo pipefail

: "${BUILD_DIR:?BUILD_DIR is not set (run through meson test)}"
: "${SOURCE_DIR:?SOURCE_DIR is not set (run through meson test)}"
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
SOURCE_DIR=$(cd "$SOURCE_DIR" && pwd)

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "--- $*"; }
# Waits up to $3 seconds until file $1 has a line matching the extended regex $2.
wait_for_line() {
  local deadline=$((SECONDS + $3))
  until grep -qE "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { cat "$1" >&2; fail "no line matching '$2' in $1 within $3 s"; }
    sleep 0.05
  done
}
# Waits up to $2 seconds for background process $1 to end; its exit status in $rc.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while kill -0 "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { kill -KILL "$1" 2>/dev/null || true; fail "pid $1 still running after $2 s"; }
    sleep 0.05
  done
  rc=0
  wait "$1" || rc=$?
}

tmp=$(mktemp -d /tmp/lifeline-install-test.XXXXXX)
# On any exit: a `lifeline run` still in the background (a failed wait) is stopped, then the temp dir goes.
cleanup() {
  local pids
  pids=$(jobs -p)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086  # pids are words
    kill -TERM $pids 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
case "$tmp/" in "$SOURCE_DIR"/*) fail "the temp dir $tmp lies inside the source tree" ;; esac
unset LIFELINE_CONTROL LIFELINE_CKPT_DIR LIFELINE_RESUME_FROM LIFELINE_RESUME_STEP SLURM_JOB_ID || true

read -r version < <(meson introspect --projectinfo "$BUILD_DIR" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["version"])')
read -r prefix libdir includedir datadir < <(meson introspect --buildoptions "$BUILD_DIR" | "$PYTHON" -c '
import json, sys
o = {x["name"]: x["value"] for x in json.load(sys.stdin)}
print(o["prefix"], o["libdir"], o["includedir"], o["datadir"])')
soversion=${version%%.*}
[[ $libdir != /* && $includedir != /* && $datadir != /* ]] || fail "libdir/includedir/datadir must be relative to the prefix"

# ---------------------------------------------------------------------------------------- 1. files
step "meson install --destdir $tmp/stage (prefix $prefix, libdir $libdir, version $version)"
meson install -C "$BUILD_DIR" --no-rebuild --quiet --destdir "$tmp/stage" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "meson install failed"; }
P=$tmp/stage$prefix
LIB=$P/$libdir
for f in bin/lifeline "$libdir/liblifeline_client.so" "$libdir/liblifeline_client.so.$soversion" \
         "$libdir/liblifeline_client.so.$version" "$libdir/liblifeline_client.a" \
         "$includedir/lifeline/client.h" "$includedir/lifeline/control_layout.h" "$includedir/lifeline/version.h" \
         "$libdir/pkgconfig/lifeline.pc" "$libdir/cmake/lifeline/lifelineConfig.cmake" \
         "$libdir/cmake/lifeline/lifelineConfigVersion.cmake" \
         "$datadir/lifeline/policies/default.yaml" "$datadir/lifeline/jobscripts/single-node.sbatch" \
         "$datadir/modulefiles/lifeline/$version.lua" \
         "$datadir/lifeline/python/lifeline_client.py" "$datadir/lifeline/python/lifeline_torch.py" \
         "$datadir/lifeline/python/lifeline/__init__.py" "$datadir/lifeline/python/lifeline/torch.py"; do
  [[ -e $P/$f ]] || fail "meson install did not install $f (under $P)"
done
readelf -d "$LIB/liblifeline_client.so.$version" | grep -q "SONAME.*\[liblifeline_client.so.$soversion\]" ||
  fail "liblifeline_client.so.$version has no soname liblifeline_client.so.$soversion"
[[ $(readlink "$LIB/liblifeline_client.so") == "liblifeline_client.so.$soversion" ]] ||
  fail "liblifeline_client.so does not point at liblifeline_client.so.$soversion"
if readelf -d "$P/bin/lifeline" | grep -E 'NEEDED.*lifeline|RPATH|RUNPATH'; then
  fail "bin/lifeline links a lifeline shared library or carries an rpath (it links the static client)"
fi
grep -q "#define LIFELINE_VERSION \"$version\"" "$P/$includedir/lifeline/version.h" || fail "version.h does not say $version"
if grep -l 'nlohmann\|#include "' "$P/$includedir"/lifeline/{client,control_layout,version}.h; then
  fail "a public header includes nlohmann_json or a private header"
fi
torch_built=0
[[ -e $P/$includedir/lifeline/torch.h ]] && torch_built=1
if ((torch_built)); then
  for f in "$libdir/liblifeline_torch.so.$version" "$libdir/liblifeline_torch.a" "$libdir/pkgconfig/lifeline-torch.pc"; do
    [[ -e $P/$f ]] || fail "built with LibTorch, but $f is not installed"
  done
  readelf -d "$LIB/liblifeline_torch.so.$version" | grep -q "NEEDED.*\[liblifeline_client.so.$soversion\]" ||
    fail "liblifeline_torch.so does not link the shared client"
  LD_LIBRARY_PATH=$LIB ldd "$LIB/liblifeline_torch.so.$version" | grep 'not found' &&
    fail "liblifeline_torch.so has unresolved libraries"
fi
"$P/bin/lifeline" policy check "$P/$datadir/lifeline/policies/normal.yaml" >/dev/null ||
  fail "the installed lifeline rejects the installed policies/normal.yaml"

step "the public headers compile standalone"
for h in client.h control_layout.h version.h; do
  echo "#include <lifeline/$h>" | g++ -std=c++17 -Wall -Wextra -Werror -fsyntax-only -x c++ -I"$P/$includedir" - ||
    fail "lifeline/$h does not compile on its own"
done

# ------------------------------------------------------------------------------- 2. a C++ trainer
work=$tmp/trainer
cp -r "$SOURCE_DIR/tests/install/trainer" "$work"
policy=$tmp/policy.yaml
printf 'version: 1\ncheckpoint:\n  every_steps: 10\n  every_seconds: 0\nrestart:\n  backoff_seconds: 0\n' >"$policy"
STEPS=150

step "build the trainer with pkg-config (shared, and --static)"
export PKG_CONFIG_PATH=$LIB/pkgconfig
pc_version=$(pkg-config --modversion lifeline) || fail "pkg-config finds no lifeline in $PKG_CONFIG_PATH"
[[ $pc_version == "$version" ]] || fail "lifeline.pc says $pc_version, meson says $version"
# pkgconf's --define-prefix takes the prefix as the directory above <dir>/pkgconfig: right when
# libdir is one level deep (the default lib); a deeper libdir (lib/x86_64-linux-gnu) relocates
# with --define-variable=prefix instead.
if [[ $libdir == */* ]]; then
  echo "libdir $libdir is not one level deep: relocating with --define-variable=prefix, not --define-prefix"
  pc_reloc=(--define-variable=prefix="$P")
else
  pc_reloc=(--define-prefix)
fi
pc_flags=$(pkg-config "${pc_reloc[@]}" --cflags --libs lifeline)
[[ $pc_flags == *"-I$P/$includedir"* && $pc_flags == *"-L$LIB"* ]] ||
  fail "pkg-config ${pc_reloc[*]} does not give the relocated stage's dirs: $pc_flags"
# shellcheck disable=SC2086  # pkg-config's flags are words
g++ -std=c++17 -Wall -Wextra -Werror -O1 -o "$work/train-pc" "$work/train.cc" $pc_flags -Wl,-rpath,"$LIB" ||
  fail "the trainer does not build with pkg-config"
readelf -d "$work/train-pc" | grep -q "NEEDED.*\[liblifeline_client.so.$soversion\]" ||
  fail "the pkg-config trainer does not link liblifeline_client.so.$soversion"
# liblifeline_client.a linked through `pkg-config --static` proves lifeline.pc's Requires.private
# and Libs.private name everything it needs (libxxhash, libcrypto, threads, rt). `-l:` picks the
# archive beside the .so; the rest stays dynamic (Debian's libxxhash.a lacks the x86 dispatch
# symbols of its .so, so a fully -static binary is not possible here).
# shellcheck disable=SC2046
g++ -std=c++17 -Wall -Wextra -Werror -O1 -o "$work/train-pc-static" "$work/train.cc" \
  $(pkg-config "${pc_reloc[@]}" --cflags lifeline) \
  $(pkg-config --static "${pc_reloc[@]}" --libs lifeline | sed 's/-llifeline_client/-l:liblifeline_client.a/') \
  >"$tmp/static-link.log" 2>&1 ||
  { cat "$tmp/static-link.log" >&2; fail "liblifeline_client.a does not link with pkg-config --static --libs lifeline"; }
readelf -d "$work/train-pc-static" | grep -q 'NEEDED.*lifeline' && fail "the --static trainer needs a lifeline .so"

step "build the trainer with CMake (lifeline::client and lifeline::client_static)"
cmake -S "$work" -B "$work/build" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release >"$tmp/cmake.log" 2>&1 ||
  { cat "$tmp/cmake.log" >&2; fail "cmake cannot configure the trainer with find_package(lifeline)"; }
grep -q "lifeline $version in $P" "$tmp/cmake.log" || { cat "$tmp/cmake.log" >&2; fail "find_package(lifeline) did not find the stage $P"; }
cmake --build "$work/build" >>"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log" >&2; fail "the CMake build of the trainer failed"; }
readelf -d "$work/build/train" | grep -q "NEEDED.*\[liblifeline_client.so.$soversion\]" ||
  fail "the CMake trainer does not link liblifeline_client.so.$soversion"
cmake -S "$work" -B "$work/build-static" -DCMAKE_PREFIX_PATH="$P" -DLIFELINE_STATIC=ON >>"$tmp/cmake.log" 2>&1 &&
  cmake --build "$work/build-static" >>"$tmp/cmake.log" 2>&1 || { cat "$tmp/cmake.log" >&2; fail "lifeline::client_static does not link"; }
readelf -d "$work/build-static/train" | grep -q 'NEEDED.*lifeline' && fail "the lifeline::client_static trainer needs a lifeline .so"
if ((torch_built)); then
  printf 'cmake_minimum_required(VERSION 3.13)\nproject(t CXX)\nfind_package(lifeline REQUIRED COMPONENTS torch)\nif(NOT TARGET lifeline::torch)\n  message(FATAL_ERROR "no lifeline::torch")\nendif()\n' >"$tmp/torch-cmake.txt"
  mkdir -p "$tmp/torchpkg" && mv "$tmp/torch-cmake.txt" "$tmp/torchpkg/CMakeLists.txt"
  cmake -S "$tmp/torchpkg" -B "$tmp/torchpkg/build" -DCMAKE_PREFIX_PATH="$P" >"$tmp/cmake-torch.log" 2>&1 ||
    { cat "$tmp/cmake-torch.log" >&2; fail "find_package(lifeline COMPONENTS torch) gives no lifeline::torch"; }
  pkg-config "${pc_reloc[@]}" --libs lifeline-torch | grep -q -- '-llifeline_torch' || fail "lifeline-torch.pc gives no -llifeline_torch"
fi

# Runs trainer $1 under the installed lifeline, stops it with SIGUSR1 after its first committed
# checkpoint, runs it again and checks it resumed (step > 0) to the uninterrupted result.
stop_and_resume() {
  local name=$1 trainer=$2 ckpt=$tmp/ckpt-$1 out=$tmp/$1
  "$trainer" "$STEPS" 0 "$out.reference" >/dev/null || fail "$name: the trainer alone failed"
  (cd "$tmp" && exec "$P/bin/lifeline" run --policy "$policy" --ckpt-dir "$ckpt" -- "$trainer" "$STEPS" 20 "$out.result") \
    >"$out.log1" 2>&1 &
  local pid=$!
  wait_for_line "$out.log1" '^checkpoint committed at step' 60
  "$P/bin/lifeline" checkpoints "$ckpt" --json | "$PYTHON" -c 'import json, sys; sys.exit(not any(c["valid"] for c in json.load(sys.stdin)))' ||
    fail "$name: lifeline checkpoints lists no valid checkpoint after the trainer said it committed one"
  kill -USR1 "$pid"
  wait_exit "$pid" 60
  [[ $rc -eq 75 ]] || { cat "$out.log1" >&2; fail "$name: lifeline run exited $rc after SIGUSR1, not 75 (stopped)"; }
  grep -q '^stopping at step' "$out.log1" || { cat "$out.log1" >&2; fail "$name: the trainer did not stop on the request"; }
  [[ ! -e $out.result ]] || fail "$name: the stopped run wrote a result"
  local stopped
  stopped=$(sed -n 's/^stopping at step \([0-9]*\)$/\1/p' "$out.log1")
  (cd "$tmp" && "$P/bin/lifeline" run --policy "$policy" --ckpt-dir "$ckpt" -- "$trainer" "$STEPS" 0 "$out.result") \
    >"$out.log2" 2>&1 || { cat "$out.log2" >&2; fail "$name: the resumed run failed"; }
  local resumed
  resumed=$(sed -n 's/^resumed from step \([0-9]*\)$/\1/p' "$out.log2")
  [[ -n $resumed && $resumed -gt 0 ]] || { cat "$out.log2" >&2; fail "$name: the second run did not resume"; }
  [[ $resumed -eq $stopped ]] || fail "$name: resumed from step $resumed, but the stop checkpoint is step $stopped"
  cmp -s "$out.reference" "$out.result" ||
    fail "$name: the resumed result $(cat "$out.result") differs from the uninterrupted $(cat "$out.reference")"
  echo "$name: stopped at step $stopped, resumed from it, result $(cat "$out.result") = uninterrupted"
}
step "the pkg-config trainer under the installed lifeline: stop, resume"
stop_and_resume pkgconfig "$work/train-pc"
step "the CMake trainer under the installed lifeline: stop, resume"
stop_and_resume cmake "$work/build/train"
"$work/train-pc-static" 3 0 "$tmp/static.result" >/dev/null && "$work/build-static/train" 3 0 "$tmp/static2.result" >/dev/null ||
  fail "a statically linked trainer does not run"

# ----------------------------------------------------------------------------- 3. the Python client
step "pip install ./python into a venv"
"$PYTHON" -m venv --system-site-packages "$tmp/venv" || fail "$PYTHON -m venv failed (python3-venv)"
cp -r "$SOURCE_DIR/python" "$tmp/python-src"   # pip builds in the tree it is given: not in the source
rm -rf "$tmp/python-src/build" "$tmp/python-src"/*.egg-info
"$tmp/venv/bin/python" -m pip install -q --no-index --no-build-isolation "$tmp/python-src" >"$tmp/pip.log" 2>&1 ||
  { cat "$tmp/pip.log" >&2; fail "pip install --no-index --no-build-isolation ./python failed"; }
rm -rf "$tmp/python-src"
mkdir "$tmp/elsewhere"
py_version=$(cd "$tmp/elsewhere" && env -u PYTHONPATH "$tmp/venv/bin/python" -c '
import lifeline, lifeline_client
assert lifeline.Client is lifeline_client.Client and "Client" in lifeline.__all__
assert not lifeline.__file__.startswith("'"$SOURCE_DIR"'/"), lifeline.__file__
print(lifeline.__version__)') || fail "import lifeline fails outside the source tree"
[[ $py_version == "$version" ]] || fail "the Python package is version $py_version, meson's project version is $version"

have_torch=0
"$tmp/venv/bin/python" -c 'import torch' 2>/dev/null && have_torch=1
if ((have_torch)); then
  (cd "$tmp/elsewhere" && env -u PYTHONPATH "$tmp/venv/bin/python" -c '
import lifeline.torch, lifeline_torch
assert lifeline.torch.checkpoint is lifeline_torch.checkpoint and lifeline.torch.resume is lifeline_torch.resume') ||
    fail "import lifeline.torch fails"
  step "examples/train_torch.py outside the repo, with the pip-installed client: stop, resume"
  cp "$SOURCE_DIR/examples/train_torch.py" "$tmp/elsewhere/"
  train_py=(env -u PYTHONPATH PYTHONDONTWRITEBYTECODE=1 "$tmp/venv/bin/python" "$tmp/elsewhere/train_torch.py" --steps 60 --seed 7)
  (cd "$tmp/elsewhere" && "${train_py[@]}" --digest-out "$tmp/py.reference") >"$tmp/py.log0" 2>&1 ||
    { cat "$tmp/py.log0" >&2; fail "train_torch.py alone failed outside the repo"; }
  (cd "$tmp/elsewhere" && exec "$P/bin/lifeline" run --policy "$policy" --ckpt-dir "$tmp/ckpt-py" -- \
     "${train_py[@]}" --step-delay-ms 50 --log-every 1 --digest-out "$tmp/py.digest") >"$tmp/py.log1" 2>&1 &
  pid=$!
  wait_for_line "$tmp/py.log1" 'checkpoint committed: step' 120
  kill -USR1 "$pid"
  wait_exit "$pid" 120
  [[ $rc -eq 75 ]] || { cat "$tmp/py.log1" >&2; fail "train_torch.py: lifeline run exited $rc after SIGUSR1, not 75"; }
  grep -q 'train-example: stopping at step' "$tmp/py.log1" || { cat "$tmp/py.log1" >&2; fail "train_torch.py did not stop on the request"; }
  (cd "$tmp/elsewhere" && "$P/bin/lifeline" run --policy "$policy" --ckpt-dir "$tmp/ckpt-py" -- \
     "${train_py[@]}" --digest-out "$tmp/py.digest") >"$tmp/py.log2" 2>&1 ||
    { cat "$tmp/py.log2" >&2; fail "train_torch.py: the resumed run failed"; }
  resumed=$(sed -n 's/^train-example: resumed from step \([0-9]*\) .*/\1/p' "$tmp/py.log2")
  [[ -n $resumed && $resumed -gt 0 ]] || { cat "$tmp/py.log2" >&2; fail "train_torch.py: the second run did not resume"; }
  cmp -s "$tmp/py.reference" "$tmp/py.digest" || fail "train_torch.py: the resumed digest differs from the uninterrupted one"
  echo "train_torch.py: resumed from step $resumed, digest = uninterrupted"
else
  echo "SKIP: no torch for $PYTHON: lifeline.torch and train_torch.py are not tried"
fi

# ----------------------------------------------------------------------------- 4. the modulefile
modulefile=$P/$datadir/modulefiles/lifeline/$version.lua
if [[ -r /usr/share/lmod/lmod/init/bash ]]; then
  step "module use $P/$datadir/modulefiles; module load lifeline"
  out=$(cd "$tmp/elsewhere" && env -i HOME="$tmp" PATH=/usr/bin:/bin bash --norc -c '
    source /usr/share/lmod/lmod/init/bash >/dev/null
    module use "$1/$2/modulefiles"
    module load lifeline/"$3" || exit 1
    echo "lifeline=$(command -v lifeline)"
    echo "pc=$(pkg-config --modversion lifeline)"
    echo "py=$(python3 -c "import lifeline; print(lifeline.__version__, lifeline.__file__)")"
    echo "cmake=$CMAKE_PREFIX_PATH"
    echo "ld=$LD_LIBRARY_PATH"
    echo "man=$(man -w lifeline 2>/dev/null || true)"
    module unload lifeline
    echo "after=$(command -v lifeline || true)"' _ "$P" "$datadir" "$version" 2>&1) ||
    { echo "$out" >&2; fail "module load lifeline failed"; }
  grep -qx "lifeline=$P/bin/lifeline" <<<"$out" || { echo "$out" >&2; fail "after module load, lifeline is not $P/bin/lifeline"; }
  grep -qx "pc=$version" <<<"$out" || { echo "$out" >&2; fail "after module load, pkg-config does not find lifeline $version"; }
  grep -qx "py=$version $P/$datadir/lifeline/python/lifeline/__init__.py" <<<"$out" ||
    { echo "$out" >&2; fail "after module load, python3 does not import the installed lifeline"; }
  grep -q "^cmake=$P" <<<"$out" && grep -q "^ld=$LIB" <<<"$out" || { echo "$out" >&2; fail "CMAKE_PREFIX_PATH/LD_LIBRARY_PATH not set"; }
  if [[ -e $P/share/man/man1/lifeline.1 ]] && command -v man >/dev/null; then
    grep -qx "man=$P/share/man/man1/lifeline.1" <<<"$out" || { echo "$out" >&2; fail "after module load, man does not find lifeline.1"; }
  fi
  grep -qx "after=" <<<"$out" || { echo "$out" >&2; fail "module unload lifeline left lifeline on PATH"; }
  echo "module load lifeline: lifeline, pkg-config, CMake and Python find the install"
elif command -v luac5.3 >/dev/null || command -v luac >/dev/null; then
  "$(command -v luac5.3 || command -v luac)" -p "$modulefile" || fail "the modulefile is not valid Lua"
  echo "SKIP: no Lmod (Debian package lmod): the modulefile was only parsed"
else
  echo "SKIP: neither Lmod nor luac: the modulefile is not tried"
fi

# ------------------------------------------------------------------------------ 5. meson dist
if ! git -C "$SOURCE_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
   [[ -n $(git -C "$SOURCE_DIR" status --porcelain --untracked-files=no) ]]; then
  echo "SKIP: meson dist: $SOURCE_DIR is not a clean git checkout (uncommitted changes to tracked files)"
else
  step "meson dist; the tarball configures with -Dtorch=disabled and builds the client library"
  meson dist -C "$BUILD_DIR" --no-tests --formats xztar >"$tmp/dist.log" 2>&1 || { cat "$tmp/dist.log" >&2; fail "meson dist failed"; }
  tarball=$BUILD_DIR/meson-dist/lifeline-$version.tar.xz
  [[ -f $tarball ]] || fail "meson dist made no $tarball"
  tar -C "$tmp" -xJf "$tarball"
  src=$tmp/lifeline-$version
  for f in meson.build python/pyproject.toml packaging/meson.build include/lifeline/version.h.in tests/install/install_test.sh; do
    [[ -f $src/$f ]] || fail "the dist tarball lacks $f"
  done
  meson setup "$tmp/dist-build" "$src" -Dtorch=disabled -Dbuildtype=debug >"$tmp/dist-setup.log" 2>&1 ||
    { cat "$tmp/dist-setup.log" >&2; fail "the dist tarball does not configure with -Dtorch=disabled"; }
  ninja -C "$tmp/dist-build" "liblifeline_client.so.$version" liblifeline_client.a >"$tmp/dist-build.log" 2>&1 ||
    { tail -n 40 "$tmp/dist-build.log" >&2; fail "the dist tarball does not build the client library"; }
  echo "meson dist: $(basename "$tarball") configures and builds liblifeline_client"
fi

echo "PASS: lifeline $version installs, links (pkg-config, CMake), runs, resumes, and packs"
