#!/usr/bin/env bash
# Compile-and-link check of the CUDA configuration (nothing CUDA runs: no GPU here). A second
# Debian trixie root, .cache/trixie-cuda-root, holds Debian's CUDA build of LibTorch 2.6
# (libtorch-cuda-dev, contrib) with the CUDA 12.4 toolkit it was built with (nvidia-cuda-toolkit,
# non-free) and NCCL 2.22 (libnccl-dev). Debian's nvidia-cudnn package only downloads cuDNN from
# NVIDIA when it is configured, which fails offline, so the root gets a placeholder nvidia-cudnn
# package instead and the cuDNN 9 library + headers of the host's /usr/local/cuda* (or, where
# there is none, a stub libcudnn.so.9 that defines the symbols LibTorch needs from it, enough
# to link, never to run). Then diffuse is configured (find_package(Torch) with CUDA, so TARGET
# torch_cuda exists and DIFFUSE_WITH_CUDA is defined), every target is compiled and linked into
# build-cuda/, and a small program using c10d::ProcessGroupNCCL is compiled and linked against the
# same LibTorch. Needs root. Safe to run again; reruns reuse the root and its ccache.
#   scripts/check-cuda-build.sh
#   scripts/check-cuda-build.sh --root-only   only make (or check) the root
#   CUDA_CHECK_TESTS=1     also build the test suite and run it with the CUDA build (no GPU: the CPU
#                          paths; ~3 min more). Without it the tests are not compiled here: they hold
#                          no CUDA-only code, and the two other builds of CI compile and run them.
#   JOBS=N                 build parallelism (default: nproc)
#   CUDA_ROOT=DIR          the root (default .cache/trixie-cuda-root)
#   CUDA_BUILD_DIR=DIR     the build folder, inside the project (default build-cuda)
#   CUDNN_FROM=auto|stub   cuDNN for the link: the host's /usr/local/cuda* when present (auto), or a stub
#   CCACHE_DISABLE=1       build without the cache (for timing)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
TROOT_TAG=check-cuda-build
# shellcheck source=lib/trixie-root.sh
. scripts/lib/trixie-root.sh

ROOT_ONLY=0
[[ ${1:-} == --root-only ]] && ROOT_ONLY=1
JOBS=${JOBS:-$(nproc)}
ROOT=${CUDA_ROOT:-$SRC/.cache/trixie-cuda-root}
BUILD_DIR=${CUDA_BUILD_DIR:-build-cuda}
CUDNN_FROM=${CUDNN_FROM:-auto}
[[ $BUILD_DIR != /* && $BUILD_DIR != *..* ]] || troot_die "CUDA_BUILD_DIR must be a folder inside the project"
LIBDIR=/usr/lib/x86_64-linux-gnu
t0=$SECONDS

# The placeholder: satisfies libtorch-cuda-2.6's "Depends: nvidia-cudnn" without the download.
DEB_DIR=$SRC/.cache/debs
PLACEHOLDER=$DEB_DIR/nvidia-cudnn_9.0.0.312~cuda12+diffuse1_all.deb
if [[ ! -f $PLACEHOLDER ]]; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/DEBIAN" "$DEB_DIR"
  cat >"$tmp/DEBIAN/control" <<'EOF'
Package: nvidia-cudnn
Version: 9.0.0.312~cuda12+diffuse1
Architecture: all
Section: contrib/libs
Priority: optional
Maintainer: diffuse <diffuse@localhost>
Provides: libcudnn.so.9
Description: placeholder for nvidia-cudnn (diffuse's CUDA compile check)
 Debian's nvidia-cudnn downloads cuDNN from NVIDIA when configured, which fails offline;
 scripts/check-cuda-build.sh installs this instead and supplies libcudnn.so.9 itself.
EOF
  dpkg-deb --root-owner-group -Zxz --build "$tmp" "$PLACEHOLDER" >/dev/null
  rm -rf "$tmp"
fi

eval "$(sed -n '/^PACKAGES=(/,/)/p' scripts/bootstrap.sh)"
PKGS=()
for p in "${PACKAGES[@]}"; do
  case $p in
    libtorch-dev) PKGS+=(libtorch-cuda-dev) ;;
    libgloo-dev) ;;
    *) PKGS+=("$p") ;;
  esac
done
PKGS+=(libgloo-cuda-dev nlohmann-json3-dev nvidia-cuda-toolkit libnccl-dev "$PLACEHOLDER")

troot_log "[1/4] root: $ROOT"
troot_ensure "$ROOT" trixie main,contrib,non-free "${PKGS[@]}"
root_state=$TROOT_STATE root_s=$TROOT_SECONDS
in_root() {
  local pass=()
  [[ -n ${CCACHE_DISABLE:-} ]] && pass+=(-e "CCACHE_DISABLE=$CCACHE_DISABLE")
  troot_run "$ROOT" -b "$SRC:/src:ro" -b "$SRC/$BUILD_DIR:/src/$BUILD_DIR" \
    -e CCACHE_DIR=/var/cache/ccache -e CCACHE_MAXSIZE=4G -e JOBS="$JOBS" "${pass[@]}" -- "$@"
}
mkdir -p "$BUILD_DIR"

# cuDNN 9 where Debian's nvidia-cudnn would have put it.
if [[ ! -f $ROOT/.diffuse-cudnn ]]; then
  host_cudnn=""
  if [[ $CUDNN_FROM == auto ]]; then
    for d in /usr/local/cuda /usr/local/cuda-*; do
      if [[ -f $d/lib64/libcudnn.so.9 && -f $d/include/cudnn.h ]]; then host_cudnn=$(realpath "$d"); break; fi
    done
  fi
  if [[ -n $host_cudnn ]]; then
    cp -L "$host_cudnn/lib64/libcudnn.so.9" "$ROOT$LIBDIR/"
    cp "$host_cudnn"/include/cudnn*.h "$ROOT/usr/include/"
    ver=$(awk '/define CUDNN_(MAJOR|MINOR|PATCHLEVEL) /{printf "%s%s", sep, $3; sep="."}' "$host_cudnn/include/cudnn_version.h")
    echo "cuDNN $ver library and headers copied from $host_cudnn" >"$ROOT/.diffuse-cudnn"
  else
    # Every cudnn symbol libtorch_cuda.so takes from libcudnn.so.9, as empty functions.
    in_root /bin/bash -c "set -euo pipefail; cd /tmp
      nm -D --undefined-only $LIBDIR/libtorch_cuda.so | awk '\$2 ~ /^cudnn/ { sub(/@.*/, \"\", \$2); print \"void \" \$2 \"(void) {}\" }' | sort -u >cudnn_stub.c
      echo 'libcudnn.so.9 { global: *; };' >cudnn_stub.map
      gcc -shared -fPIC -o $LIBDIR/libcudnn.so.9 -Wl,-soname,libcudnn.so.9 -Wl,--version-script,cudnn_stub.map cudnn_stub.c
      wc -l <cudnn_stub.c >/tmp/cudnn_stub.count"
    echo "a stub libcudnn.so.9 of $(cat "$ROOT/tmp/cudnn_stub.count") empty functions (links, cannot run); no cuDNN headers" >"$ROOT/.diffuse-cudnn"
  fi
  ln -sf libcudnn.so.9 "$ROOT$LIBDIR/libcudnn.so"
fi
cudnn_note=$(cat "$ROOT/.diffuse-cudnn")
troot_log "$cudnn_note"
((ROOT_ONLY)) && exit 0
torch_version=$(troot_run "$ROOT" -- dpkg-query -W -f='${Version}' libtorch-cuda-dev)
cuda_version=$(troot_run "$ROOT" -- nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
nccl_version=$(troot_run "$ROOT" -- dpkg-query -W -f='${Version}' libnccl-dev)
troot_log "LibTorch $torch_version (CUDA), CUDA toolkit $cuda_version, NCCL $nccl_version"

LOG=$BUILD_DIR/cuda-build.log
troot_log "[2/4] configure + build every target in /src/$BUILD_DIR with $JOBS jobs (log: $LOG)"
t_build=$SECONDS
BUILD_TESTS=OFF EXES=(diffuse)
[[ ${CUDA_CHECK_TESTS:-0} == 1 ]] && BUILD_TESTS=ON EXES=(diffuse diffuse_tests)
set +e
in_root /bin/bash -c 'set -euo pipefail
  cmake -S /src -B "/src/$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DDIFFUSE_BUILD_TESTS="$2" -DTORCH_CUDA_ARCH_LIST=9.0 2>&1 | grep -E "PyTorch|CUDA|cuDNN|NCCL|Torch|Error|error|Warning" || true
  test -f "/src/$1/build.ninja"
  cmake --build "/src/$1" -j "$JOBS"' build "$BUILD_DIR" "$BUILD_TESTS" 2>&1 | tee "$LOG"
build_rc=${PIPESTATUS[0]}
set -e
build_s=$((SECONDS - t_build))
warnings=$(grep -E ': warning: ' "$LOG" | sort -u | wc -l || true)
if ((build_rc != 0)); then
  troot_log "configure/build FAILED (rc $build_rc) after ${build_s}s; errors:"
  grep -E 'error' "$LOG" | sort -u | head -n 20 >&2 || true
  exit "$build_rc"
fi

troot_log "[3/4] checking what was built"
fail=0
check() {  # check DESCRIPTION COMMAND...
  if "${@:2}"; then troot_log "  ok: $1"; else troot_log "  FAILED: $1"; fail=1; fi
}
cc=$BUILD_DIR/compile_commands.json
# The fused GroupNorm kernels (src/models/group_norm_kernel.cpp, one object per instruction set,
# marked by -DDIFFUSE_GN_ISA=) are plain C++ without LibTorch on purpose, so they carry none of
# its definitions; every other translation unit must carry the CUDA ones.
commands=$(grep '"command":' "$cc")
n_kernel=$(grep -c -- '-DDIFFUSE_GN_ISA=' <<<"$commands" || true)
n_tu=$(($(grep -c '"file":' "$cc") - n_kernel))
n_cuda=$(grep -v -- '-DDIFFUSE_GN_ISA=' <<<"$commands" | grep -c -- '-DDIFFUSE_WITH_CUDA' || true)
n_nccl=$(grep -v -- '-DDIFFUSE_GN_ISA=' <<<"$commands" | grep -c -- '-DUSE_C10D_NCCL' || true)
check "$n_cuda of $n_tu LibTorch translation units compiled with -DDIFFUSE_WITH_CUDA (and $n_nccl with -DUSE_C10D_NCCL)" \
  test "$n_tu" -gt 0 -a "$n_cuda" -eq "$n_tu"
check "the $n_kernel LibTorch-free kernel objects include no LibTorch header" \
  bash -c '! grep -nE "#include *[<\"](torch|ATen|c10)/" src/models/group_norm_kernel.cpp src/models/group_norm_kernel.h'
for exe in "${EXES[@]}"; do
  check "$exe linked against libtorch_cuda.so and libc10_cuda.so" \
    in_root /bin/bash -c "readelf -d /src/$BUILD_DIR/$exe | grep -q 'libtorch_cuda.so' && readelf -d /src/$BUILD_DIR/$exe | grep -q 'libc10_cuda.so'"
done
check "diffuse calls into c10::cuda / at::cuda (the DIFFUSE_WITH_CUDA code is in the binary)" \
  in_root /bin/bash -c "nm -DC --undefined-only /src/$BUILD_DIR/diffuse | grep -qE ' (c10|at)::cuda::'"

troot_log "[4/4] c10d::ProcessGroupNCCL: compile and link a small program against the same LibTorch"
PROBE=$BUILD_DIR/nccl-probe
mkdir -p "$PROBE"
cat >"$PROBE/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.18)
project(nccl_probe LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 17)
find_package(Torch REQUIRED)
add_executable(nccl_probe probe.cpp)
target_link_libraries(nccl_probe PRIVATE ${TORCH_LIBRARIES})
EOF
cat >"$PROBE/probe.cpp" <<'EOF'
// Written by scripts/check-cuda-build.sh: what a data-parallel module needs from c10d with NCCL.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <cstdio>

int main(int argc, char** argv) {
  std::printf("NCCL headers %d.%d.%d\n", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
  if (argc < 2) return 0;  // linking is the check; a run needs a GPU
  c10d::TCPStoreOptions so;
  so.port = 29511;
  so.isServer = true;
  so.numWorkers = 1;
  auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", so);
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("probe", store);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = std::chrono::seconds(60);
  auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, 0, 1, opts);
  std::vector<at::Tensor> t{torch::ones({4}, torch::kCUDA)};
  pg->allreduce(t)->wait();
  pg->barrier()->wait();
  std::printf("allreduce: %g\n", t[0].sum().item<double>());
  return 0;
}
EOF
set +e
in_root /bin/bash -c 'set -euo pipefail
  cmake -S "/src/$1" -B "/src/$1/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTORCH_CUDA_ARCH_LIST=9.0 >/dev/null
  cmake --build "/src/$1/build" && "/src/$1/build/nccl_probe"' probe "$PROBE" >"$PROBE/probe.log" 2>&1
probe_rc=$?
set -e
check "a program using c10d::ProcessGroupNCCL (TCPStore, PrefixStore, allreduce, barrier) compiles and links ($(grep -o 'NCCL headers.*' "$PROBE/probe.log" || echo "see $PROBE/probe.log"))" \
  test "$probe_rc" -eq 0
((probe_rc == 0)) || tail -n 20 "$PROBE/probe.log" >&2

# Loading the CUDA build: libcuda.so.1 (libcuda1) is in the root, but there is no GPU or driver.
version_out=$(in_root "/src/$BUILD_DIR/diffuse" --version 2>&1) && version_rc=0 || version_rc=$?
((version_rc == 0)) || fail=1
tests_note="not run (CUDA_CHECK_TESTS=1 runs them)"
if [[ ${CUDA_CHECK_TESTS:-0} == 1 ]]; then
  troot_log "tests of the CUDA build (CPU paths): ctest -j $JOBS"
  TLOG=$BUILD_DIR/cuda-ctest.log t_test=$SECONDS
  set +e
  in_root /bin/bash -c 'cd "/src/$1" && ctest --output-on-failure -j "$JOBS"' ctest "$BUILD_DIR" 2>&1 | tee "$TLOG"
  test_rc=${PIPESTATUS[0]}
  set -e
  ((test_rc == 0)) || fail=1
  tests_note="$(grep -E 'tests passed, [0-9]+ tests? failed out of' "$TLOG" | tail -1) in $((SECONDS - t_test))s (rc $test_rc, log: $TLOG)"
fi

summary="CUDA compile-and-link check: LibTorch $torch_version (Debian, CUDA), CUDA toolkit $cuda_version, NCCL $nccl_version
  root:  $root_state (${root_s}s): $ROOT
  cuDNN: $cudnn_note
  build: ${build_s}s, $warnings distinct compiler warnings (log: $LOG)
  checked: configure with find_package(Torch) finding CUDA (TARGET torch_cuda);
           every LibTorch translation unit ($n_tu, besides $n_kernel LibTorch-free kernel objects: diffuse_core, diffuse$([[ $BUILD_TESTS == ON ]] && echo ", diffuse_tests")) compiled with
           -DDIFFUSE_WITH_CUDA and the CUDA 12.4 headers; ${EXES[*]} linked against
           libtorch_cuda/libc10_cuda; a c10d::ProcessGroupNCCL program compiled and linked (rc $probe_rc)
  ran:     diffuse --version in the root without a GPU: rc $version_rc: $(tr '\n' ' ' <<<"$version_out" | cut -c1-200)
  tests:   $tests_note
  not checked: anything on a GPU (kernels, cuDNN, NCCL communication, bf16/fp16 autocast on CUDA);
           the CUDA 13 / LibTorch 2.11 pairing of the GPU machine (scripts/gpu-check.sh does that)
  total: $((SECONDS - t0))s"
printf '\n== check-cuda-build summary ==\n%s\n' "$summary" | tee "$BUILD_DIR/cuda-summary.txt"
exit "$fail"
