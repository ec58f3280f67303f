#!/usr/bin/env bash
# Builds diffuse against LibTorch 2.x and runs every test there (ctest): a Debian trixie root
# (LibTorch 2.6) in .cache/trixie-root, made on the first run (about 3 minutes) and reused after;
# the project is mounted read-only at /src in it and built into build-lt2/ (the host's build/ is
# not touched), with a ccache inside the root. Needs root (mmdebstrap, mounts, chroot). Safe to run
# again at any time, also after an interrupted run.
#   scripts/test-libtorch2.sh [CTEST_ARGS...]
#   scripts/test-libtorch2.sh --run 'COMMAND'   build, then run COMMAND in the root at /src (the
#                                               project mounted read-write this time)
#   scripts/test-libtorch2.sh --root-only       only make (or check) the root
#   JOBS=N              build and ctest parallelism (default: nproc)
#   LT2_ROOT=DIR        the root (default .cache/trixie-root)
#   LT2_BUILD_DIR=DIR   the build folder, inside the project (default build-lt2)
#   LT2_EXTRA_PACKAGES="a b"   more Debian packages for the root
#   CCACHE_DISABLE=1    build without the cache (for timing a fresh build)
#   LT2_SANITIZE=address,undefined   build and test under AddressSanitizer and UBSan (what CI
#                       does: one build gives both LibTorch 2.x and the sanitizers)
#   LT2_CXX=clang       build with the root's clang instead of g++ (into build-lt2-clang)
#   LT2_FUZZ=SECONDS    clang, the libFuzzer driver built with the rest (coverage on the readers of
#                       untrusted bytes only), and after the tests scripts/fuzz.sh on it for SECONDS
#                       per target; what CI does with LT2_SANITIZE, so that fuzzing costs CI no
#                       build of its own. A finding is copied to tests/fuzz/regressions/.
#                       libFuzzer's seed is FUZZ_SEED (default 1 here, so CI runs repeat).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
TROOT_TAG=test-libtorch2
# shellcheck source=lib/trixie-root.sh
. scripts/lib/trixie-root.sh

RUN_CMD="" ROOT_ONLY=0
if [[ ${1:-} == --run ]]; then
  RUN_CMD=${2:?--run needs a command}
  shift 2
elif [[ ${1:-} == --root-only ]]; then
  ROOT_ONLY=1
  shift
fi
JOBS=${JOBS:-$(nproc)}
ROOT=${LT2_ROOT:-$SRC/.cache/trixie-root}
FUZZ_SECONDS=${LT2_FUZZ:-}
[[ -z $FUZZ_SECONDS || $FUZZ_SECONDS =~ ^[1-9][0-9]*$ ]] || troot_die "LT2_FUZZ must be a number of seconds, not '$FUZZ_SECONDS'"
CXX_KIND=${LT2_CXX:-gcc}
[[ -n $FUZZ_SECONDS ]] && CXX_KIND=clang
[[ $CXX_KIND == gcc || $CXX_KIND == clang ]] || troot_die "LT2_CXX must be gcc or clang, not '$CXX_KIND'"
BUILD_DIR=build-lt2
[[ $CXX_KIND == clang ]] && BUILD_DIR=build-lt2-clang
BUILD_DIR=${LT2_BUILD_DIR:-$BUILD_DIR}
[[ $BUILD_DIR != /* && $BUILD_DIR != *..* ]] || troot_die "LT2_BUILD_DIR must be a folder inside the project"

# The packages bootstrap.sh installs, plus what the c10d headers (Gloo) and the GPU check's
# torchrun (python3-torch) need.
eval "$(sed -n '/^PACKAGES=(/,/)/p' scripts/bootstrap.sh)"
# clang and its libFuzzer runtime for LT2_CXX / LT2_FUZZ.
PACKAGES+=(libgloo-dev nlohmann-json3-dev python3-torch python3-safetensors clang-19 libclang-rt-19-dev
           ${LT2_EXTRA_PACKAGES:-})
mapfile -t PACKAGES < <(printf '%s\n' "${PACKAGES[@]}" | awk 'NF && !seen[$0]++')

t0=$SECONDS
troot_log "[1/3] root: $ROOT"
troot_ensure "$ROOT" trixie main,contrib "${PACKAGES[@]}"
root_state=$TROOT_STATE root_s=$TROOT_SECONDS
((ROOT_ONLY)) && exit 0
# Debian's PyTorch 2.6 is built without libuv, which TCPStore asks for by default; torchrun's
# rendezvous stores pass no use_libuv (and USE_LIBUV=0 does not reach them), so a torchrun in
# /usr/local/bin (first in PATH) runs the real one with use_libuv=False.
if [[ ! -f $ROOT/usr/local/bin/torchrun ]] &&
   ! troot_run "$ROOT" -- python3 -c 'import torch.distributed as d; d.TCPStore("127.0.0.1", 0, 1, True, use_libuv=True)' >/dev/null 2>&1; then
  cat >"$ROOT/usr/local/bin/torchrun" <<'EOF'
#!/usr/bin/python3
# Written by diffuse's scripts/test-libtorch2.sh: this PyTorch has no libuv, which TCPStore asks for
# by default, and torchrun's own stores pass no use_libuv.
import functools, sys
import torch.distributed as dist
dist.TCPStore = functools.partial(dist.TCPStore, use_libuv=False)
from torch.distributed.run import main
sys.exit(main())
EOF
  chmod +x "$ROOT/usr/local/bin/torchrun"
  troot_log "PyTorch without libuv: /usr/local/bin/torchrun turns TCPStore's use_libuv off"
fi
torch_version=$(troot_run "$ROOT" -- dpkg-query -W -f='${Version}' libtorch-dev)
troot_log "LibTorch $torch_version, $(troot_run "$ROOT" -- g++ --version | head -1), $(troot_run "$ROOT" -- cmake --version | head -1)"

if [[ -n ${LT2_SANITIZE:-} ]]; then
  # LibTorch stays uninstrumented; its one-time allocations are not leaks (tests/fuzz/lsan.supp).
  export DIFFUSE_SANITIZE=$LT2_SANITIZE
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:detect_odr_violation=0}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=/src/tests/fuzz/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  troot_log "sanitizers: $LT2_SANITIZE"
else
  export DIFFUSE_SANITIZE=""
fi
if [[ $CXX_KIND == clang ]]; then
  export CC=clang-19 CXX=clang++-19
  [[ -n $FUZZ_SECONDS ]] && export DIFFUSE_FUZZ=ON
fi
mkdir -p "$BUILD_DIR"
LOG="$BUILD_DIR/lt2-build.log"
src_opt=ro
[[ -n $RUN_CMD ]] && src_opt=rw
in_root() {
  local pass=() v
  for v in CI CC CXX DIFFUSE_FUZZ CCACHE_DISABLE CCACHE_RECACHE GPU_CHECK_DEVICE GPU_CHECK_STEPS DIFFUSE_SANITIZE ASAN_OPTIONS \
           LSAN_OPTIONS UBSAN_OPTIONS DIFFUSE_REQUIRE_DATA DIFFUSE_REQUIRE_TORCHRUN DIFFUSE_REQUIRE_PY_SAFETENSORS; do
    [[ -n ${!v:-} ]] && pass+=(-e "$v=${!v}")
  done
  troot_run "$ROOT" -b "$SRC:/src:$src_opt" -b "$SRC/$BUILD_DIR:/src/$BUILD_DIR" \
    -e CCACHE_DIR=/var/cache/ccache -e CCACHE_MAXSIZE=4G -e JOBS="$JOBS" "${pass[@]}" -- "$@"
}

troot_log "[2/3] build: /src/$BUILD_DIR with $JOBS jobs${CCACHE_DISABLE:+ (ccache disabled)} (log: $LOG)"
t_build=$SECONDS
in_root ccache -z >/dev/null
set +e
in_root /bin/bash -c "cd /src && DIFFUSE_SKIP_DEPS=1 BUILD_DIR=$BUILD_DIR scripts/bootstrap.sh" 2>&1 | tee "$LOG"
build_rc=${PIPESTATUS[0]}
set -e
build_s=$((SECONDS - t_build))
warnings=$(grep -E ': warning: ' "$LOG" | sort -u | wc -l || true)
ccache_stats=$(in_root ccache -s 2>/dev/null | awk -F': *' '/^ *(Hits|Misses|Cacheable calls)/{gsub(/^ +/,"",$1); if (!seen[$1]++) { gsub(/  +/," ",$2); printf "%s%s %s", sep, $1, $2; sep=", " }}' || true)
if ((build_rc != 0)); then
  troot_log "build FAILED (rc $build_rc) after ${build_s}s; errors:"
  grep -E ': error: |error:' "$LOG" | sort -u | head -n 20 >&2 || true
  exit "$build_rc"
fi
troot_log "built in ${build_s}s with $CXX_KIND, $warnings distinct warnings${ccache_stats:+; ccache: $ccache_stats}"

if [[ -n $RUN_CMD ]]; then
  troot_log "[3/3] running in the root: $RUN_CMD"
  in_root /bin/bash -c "cd /src && $RUN_CMD"
  exit
fi

troot_log "[3/3] tests: ctest -j $JOBS in /src/$BUILD_DIR"
# The root has the data, torchrun and python3-safetensors: a test that would skip for want of
# them is a broken root.
export DIFFUSE_REQUIRE_DATA=1 DIFFUSE_REQUIRE_TORCHRUN=1 DIFFUSE_REQUIRE_PY_SAFETENSORS=1
t_test=$SECONDS
TLOG="$BUILD_DIR/lt2-ctest.log"
set +e
in_root /bin/bash -c 'cd "/src/$1" && shift && ctest --output-on-failure -j "$JOBS" "$@"' ctest "$BUILD_DIR" "$@" 2>&1 | tee "$TLOG"
test_rc=${PIPESTATUS[0]}
set -e
test_s=$((SECONDS - t_test))

fuzz_rc=0 fuzz_line=""
if [[ -n $FUZZ_SECONDS ]]; then
  troot_log "[4/4] fuzzing: scripts/fuzz.sh $FUZZ_SECONDS on /src/$BUILD_DIR/diffuse_fuzz"
  t_fuzz=$SECONDS
  FLOG="$BUILD_DIR/lt2-fuzz.log"
  set +e
  src_opt=rw in_root /bin/bash -c "cd /src && FUZZ_PREBUILT=1 FUZZ_SEED=${FUZZ_SEED:-1} FUZZ_BUILD=$BUILD_DIR scripts/fuzz.sh $FUZZ_SECONDS" 2>&1 | tee "$FLOG"
  fuzz_rc=${PIPESTATUS[0]}
  set -e
  fuzz_line="
  fuzz:  $((SECONDS - t_fuzz))s, $(grep -E '^fuzz: [0-9]+ executions' "$FLOG" | tail -1 || true) (rc $fuzz_rc, log: $FLOG)"
fi
counts=$(grep -E 'tests passed, [0-9]+ tests? failed out of' "$TLOG" | tail -1 || true)

summary="LibTorch $torch_version in $ROOT
  root:  ${root_state} (${root_s}s)
  build: ${build_s}s, $warnings distinct compiler warnings (log: $LOG)
  tests: ${test_s}s, ${counts:-no ctest summary} (rc $test_rc, log: $TLOG)${fuzz_line:-}
  total: $((SECONDS - t0))s"
printf '\n== test-libtorch2 summary ==\n%s\n' "$summary" | tee "$BUILD_DIR/lt2-summary.txt"
((test_rc != 0)) && exit "$test_rc"
exit "$fuzz_rc"
