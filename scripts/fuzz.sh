#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader of untrusted bytes (tests/fuzz/targets.h) with
# libFuzzer under AddressSanitizer and UndefinedBehaviorSanitizer (clang).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    # SECONDS per target (default 300), all targets by default
#
# Builds build-fuzz/ (clang, -DDIFFUSE_FUZZ=ON -DDIFFUSE_SANITIZE=address,undefined), writes each
# target's seed corpus (valid files made by the library's own writers) into
# build-fuzz/corpus/<target>/, and fuzzes two targets at a time (one per core) for SECONDS
# each. A crash, leak or UB report stops that target: its input is copied to
# tests/fuzz/regressions/<target>/, which the ordinary suite replays (test_fuzz_targets.cpp),
# and the script fails. The last lines are a table of executions per target and the total.
#
#   JOBS=N           targets fuzzed at once (default: nproc)
#   FUZZ_BUILD=D     build directory (default build-fuzz)
#   FUZZ_SEED=N      libFuzzer's -seed (default 0: a new one each run); CI fixes it, so that a
#                    red run is reproducible and a new finding comes from a change, not from luck
#   FUZZ_RUNS=N      also stop a target after N executions (libFuzzer's -runs); SECONDS is then a
#                    cap: the 10^6-executions campaign is FUZZ_RUNS=1000000 scripts/fuzz.sh 3600
#   FUZZ_PREBUILT=1  use D/diffuse_fuzz as it is, built by someone else: LT2_FUZZ=SECONDS
#                    scripts/test-libtorch2.sh builds it with clang 19 beside the sanitized suite
#                    and runs this script on it (what CI does)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER=${1:-300}
shift || true
RUNS=${FUZZ_RUNS:-}
[[ -z $RUNS || $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_RUNS must be a positive number of executions, not '$RUNS'" >&2; exit 2; }
BUILD=${FUZZ_BUILD:-build-fuzz}
JOBS=${JOBS:-$(nproc)}

start=$SECONDS
if [[ ${FUZZ_PREBUILT:-0} == 1 ]]; then
  [[ -x $BUILD/diffuse_fuzz ]] || { echo "fuzz: FUZZ_PREBUILT=1 but $BUILD/diffuse_fuzz is missing" >&2; exit 1; }
else
  need=()
  command -v clang++-14 >/dev/null || need+=(clang-14)
  [[ -e /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ]] ||
    ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
  if ((${#need[@]})); then
    echo "fuzz: installing ${need[*]}"
    sudo_=""; ((EUID == 0)) || sudo_=sudo
    $sudo_ apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
  fi
  scripts/bootstrap.sh >/dev/null

  mkdir -p "$BUILD"
  CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDIFFUSE_FUZZ=ON -DDIFFUSE_SANITIZE=address,undefined -DDIFFUSE_BUILD_TESTS=OFF >"$BUILD/fuzz-configure.log" 2>&1 ||
    { cat "$BUILD/fuzz-configure.log"; exit 1; }
  ninja -C "$BUILD" diffuse_fuzz >"$BUILD/fuzz-build.log" 2>&1 || { tail -50 "$BUILD/fuzz-build.log"; exit 1; }
  echo "fuzz: built $BUILD/diffuse_fuzz in $((SECONDS - start))s"
fi

mapfile -t all < <(DIFFUSE_FUZZ_TARGET=list "$BUILD/diffuse_fuzz" 2>&1 | sed -n 's/^DIFFUSE_FUZZ_TARGET must name one of: //p' | tr ' ' '\n')
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

# LibTorch's own one-time allocations (static registries) are not ours to fix; anything else leaks.
export LSAN_OPTIONS=suppressions=$PWD/tests/fuzz/lsan.supp:print_suppressions=0
export ASAN_OPTIONS=detect_odr_violation=0:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1

fuzz_one() {
  local t=$1 corpus=$BUILD/corpus/$1 log=$BUILD/fuzz-$1.log
  mkdir -p "$corpus" "$BUILD/artifacts/$t"
  DIFFUSE_FUZZ_TARGET=$t DIFFUSE_FUZZ_WRITE_SEEDS=$corpus "$BUILD/diffuse_fuzz"
  local rc=0
  DIFFUSE_FUZZ_TARGET=$t "$BUILD/diffuse_fuzz" -max_total_time="$SECONDS_PER" ${RUNS:+-runs="$RUNS"} -seed="${FUZZ_SEED:-0}" -max_len=65536 -rss_limit_mb=4096 \
    -timeout=30 -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$t/" "$corpus" >"$log" 2>&1 || rc=$?
  echo "$rc" >"$log.rc"
}

running=0
for t in "${targets[@]}"; do
  fuzz_one "$t" &
  running=$((running + 1))
  if ((running >= JOBS)); then wait -n || true; running=$((running - 1)); fi
done
wait

fail=0 total=0
printf '%-12s %12s %10s %8s  %s\n' target executions exec/s corpus result
for t in "${targets[@]}"; do
  log=$BUILD/fuzz-$t.log rc=$(cat "$log.rc")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "$BUILD/corpus/$t" -type f | wc -l)
  result=ok
  if ((rc != 0)); then
    fail=1 result="FAILED (rc $rc, log $log)"
    mkdir -p "tests/fuzz/regressions/$t"
    for a in "$BUILD/artifacts/$t"/*; do
      [[ -f $a ]] && cp "$a" "tests/fuzz/regressions/$t/" && result+="; saved tests/fuzz/regressions/$t/$(basename "$a")"
    done
    grep -m3 -E 'ERROR: |runtime error|terminate called|SUMMARY' "$log" | sed 's/^/    /' >&2 || true
  fi
  total=$((total + ${runs:-0}))
  printf '%-12s %12s %10s %8s  %s\n' "$t" "${runs:-0}" "${speed:-0}" "$corpus" "$result"
done
echo "fuzz: $total executions in all, ${#targets[@]} targets x ${SECONDS_PER}s${RUNS:+ or $RUNS runs}, $((SECONDS - start))s"
exit "$fail"
