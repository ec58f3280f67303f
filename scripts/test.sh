#!/usr/bin/env bash
# Set-up, build, and every test (GoogleTest under ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFUSE_TEST_DEPS=1 scripts/bootstrap.sh
# The deps are installed: a test that would skip for want of one is a broken install here.
export DIFFUSE_REQUIRE_TORCHRUN=1 DIFFUSE_REQUIRE_DATA=1
BUILD_DIR=${BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${JOBS:-$(nproc)}" "$@"
