#!/usr/bin/env bash
# Installs what diffuse needs on Debian/Ubuntu (only what is missing), then configures and builds
# it (Release). Safe to run any number of times.
#   scripts/bootstrap.sh                 deps + build into ./build
#   BUILD_DIR=b scripts/bootstrap.sh     another build directory
#   CMAKE_PREFIX_PATH=/path/to/libtorch scripts/bootstrap.sh   build against another LibTorch
#   DIFFUSE_SKIP_DEPS=1 scripts/bootstrap.sh                   build only
#   DIFFUSE_TEST_DEPS=1 scripts/bootstrap.sh                   also what the tests use (torchrun)
#   DIFFUSE_SANITIZE=address,undefined scripts/bootstrap.sh    instrumented build (docs/decisions.md)
#   DIFFUSE_FUZZ=ON CC=clang CXX=clang++ scripts/bootstrap.sh   also the libFuzzer driver (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(libtorch-dev libopenblas0-pthread libcli11-dev libspdlog-dev libfmt-dev libstb-dev
          libyaml-cpp-dev nlohmann-json3-dev libgtest-dev zlib1g-dev libgloo-dev cmake g++ ninja-build ccache dataset-fashion-mnist)

# torchrun (Debian's python3-torch) for the launcher tests.
if [[ "${DIFFUSE_TEST_DEPS:-0}" == 1 ]]; then PACKAGES+=(python3-torch); fi

if [[ "${DIFFUSE_SKIP_DEPS:-0}" != 1 ]]; then
  missing=()
  for p in "${PACKAGES[@]}"; do
    # A LibTorch given through CMAKE_PREFIX_PATH replaces Debian's.
    if [[ "$p" == libtorch-dev && -n "${CMAKE_PREFIX_PATH:-}" ]]; then continue; fi
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}"
    SUDO=""
    if [[ $(id -u) != 0 ]]; then
      command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
      SUDO=sudo
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: all packages present"
  fi
fi

BUILD_DIR=${BUILD_DIR:-build}
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]]; then GENERATOR=(); fi  # keep the generator it was made with
cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} \
  -DDIFFUSE_SANITIZE="${DIFFUSE_SANITIZE:-}" -DDIFFUSE_FUZZ="${DIFFUSE_FUZZ:-OFF}" \
  ${CMAKE_PREFIX_PATH:+-DCMAKE_PREFIX_PATH="$CMAKE_PREFIX_PATH"} >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
echo "bootstrap: built $BUILD_DIR/diffuse"
