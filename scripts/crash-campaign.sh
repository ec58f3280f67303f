#!/usr/bin/env bash
# Crash and fault campaign (docs/robustness.md). Trains configs/tiny.yaml (CPU, one thread) and
# sends SIGKILL at N moments: every other kill at a random time, the rest the moment a
# checkpoint write has begun. The run is resumed after each kill. Checked after each kill: the
# checkpoint latest.pt names reads in full, and no more than one checkpoint interval was lost.
# Checked at the end: every checkpoint file reads, metrics.jsonl holds each step once, as JSON
# lines, no temporary is left, and the weights, EMA, optimizer moments, RNG and data position
# equal those of an uninterrupted run bit for bit. Then the faults: a disk that fills during a
# checkpoint write, a read-only and a missing run directory, a dataset replaced between a stop
# and its resume, and an image replaced under a running job.
#   scripts/crash-campaign.sh [N]        default N = 10; builds nothing (run scripts/bootstrap.sh)
#   DIFFUSE=path/to/diffuse              the binary (default build/diffuse)
#   CRASH_DIR=dir                        work directory (default a new one under /tmp, removed
#                                        afterwards unless CRASH_KEEP=1 or a check failed)
# The fault checks mount small tmpfs file systems, so they need root (CI runs as root).
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
[[ $N =~ ^[0-9]+$ ]] || { echo "crash-campaign: N must be a count, got '$N'" >&2; exit 2; }
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "crash-campaign: '$BIN' is not built (run scripts/bootstrap.sh)" >&2; exit 2; }
BIN=$(realpath "$BIN")
WORK=${CRASH_DIR:-$(mktemp -d /tmp/diffuse-crash.XXXXXX)}
mkdir -p "$WORK"
EVERY=5
STEPS=$((2 * N * EVERY + 25))  # room for N kills: each gains at most a few intervals
TRAIN=(train --config configs/tiny.yaml --set train.steps=$STEPS --set train.checkpoint_every=$EVERY
       --set train.batch_size=4 --set train.log_every=1 --set train.threads=1 --set data.limit=512
       --set train.keep_checkpoints=4)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
mounts=()
cleanup() {
  local m
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null; done
  if ((failures == 0)) && [[ -z ${CRASH_DIR:-} && ${CRASH_KEEP:-0} != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

json_field() { grep -o "\"$2\":[^,}]*" <<<"$1" | head -1 | cut -d: -f2- | tr -d '"'; }
info_json() { "$BIN" info --format json "$@" 2>&1; }
last_logged_step() {  # the step of the last complete line of metrics.jsonl, 0 without one
  local f=$1/metrics.jsonl
  [[ -f $f ]] || { echo 0; return; }
  local s
  s=$(grep -E '^\{"step": ?[0-9]+,.*\}$' "$f" | tail -1 | grep -oE '^\{"step": ?[0-9]+' | grep -oE '[0-9]+$')
  echo "${s:-0}"
}
temporaries() { compgen -G "$1/checkpoints/.ckpt_*.tmp.*" | wc -l; }

echo "crash-campaign: $N kills of a $STEPS-step run (checkpoint every $EVERY steps) in $WORK"

# --- the uninterrupted reference --------------------------------------------------------------
ref=$WORK/reference
start=$SECONDS
"$BIN" "${TRAIN[@]}" --run-dir "$ref" >"$WORK/reference.log" 2>&1 || { cat "$WORK/reference.log"; echo "FAIL: the reference run failed"; exit 1; }
run_seconds=$((SECONDS - start))
ref_info=$(info_json "$ref") || { echo "FAIL: info on the reference: $ref_info"; exit 1; }
ckpt_bytes=$(json_field "$ref_info" file_bytes)
echo "reference: $run_seconds s, checkpoint $ckpt_bytes bytes"

# --- the kills --------------------------------------------------------------------------------
run=$WORK/campaign
kills=0 in_write=0 max_lost=0 finished_early=0
for ((i = 1; i <= N; ++i)); do
  if [[ -e $run/checkpoints/latest.pt ]]; then args=(train --resume "$run" --set train.steps=$STEPS)
  else args=("${TRAIN[@]}" --run-dir "$run"); fi
  "$BIN" "${args[@]}" >>"$WORK/campaign.log" 2>&1 &
  pid=$!
  if ((i % 2 == 0)); then
    # Inside the second checkpoint write of this start (the first completes, so that the run
    # advances), as soon as its temporary (named with the writer's pid) appears.
    writing() { compgen -G "$run/checkpoints/.ckpt_*.tmp.$pid.*" >/dev/null; }
    while kill -0 "$pid" 2>/dev/null && ! writing; do :; done
    while kill -0 "$pid" 2>/dev/null && writing; do :; done
    while kill -0 "$pid" 2>/dev/null && ! writing; do :; done
  else
    # Anywhere in the start-up and the next two checkpoint intervals.
    sleep "$(awk -v s="$RANDOM" -v d="$run_seconds" -v k=$((2 * EVERY)) -v n=$STEPS \
               'BEGIN { srand(s); printf "%.3f", 0.2 + rand() * (2 + d * k / n) }')"
  fi
  if ! kill -9 "$pid" 2>/dev/null; then
    wait "$pid"
    echo "kill $i: the run had finished (rc $?)"
    finished_early=1
    break
  fi
  wait "$pid" 2>/dev/null
  kills=$((kills + 1))
  t=$(temporaries "$run")
  ((t > 0)) && in_write=$((in_write + 1))
  logged=$(last_logged_step "$run")
  saved=0
  if [[ -e $run/checkpoints/latest.pt ]]; then
    out=$(info_json "$run") || fail "kill $i: latest.pt does not read: $out"
    saved=$(json_field "$out" step)
    saved=${saved:-0}
  elif compgen -G "$run/checkpoints/ckpt_*.pt" >/dev/null; then
    fail "kill $i: checkpoints exist but latest.pt does not"
  fi
  lost=$((logged - saved))
  ((lost > max_lost)) && max_lost=$lost
  ((lost > EVERY)) && fail "kill $i: step $logged was logged but the last checkpoint is step $saved (more than $EVERY lost)"
  echo "kill $i: logged step $logged, checkpoint step $saved, lost $lost, temporaries left $t"
done
# To the end, uninterrupted.
if [[ -e $run/checkpoints/latest.pt ]]; then args=(train --resume "$run" --set train.steps=$STEPS)
else args=("${TRAIN[@]}" --run-dir "$run"); fi
"$BIN" "${args[@]}" >>"$WORK/campaign.log" 2>&1 || fail "the final resume failed (see $WORK/campaign.log)"

# --- after the campaign -----------------------------------------------------------------------
checked=0
for c in "$run"/checkpoints/ckpt_*.pt "$run"/abandoned_after_step_*/ckpt_*.pt; do
  [[ -e $c ]] || continue
  out=$(info_json "$c") || fail "checkpoint $c does not read: $out"
  checked=$((checked + 1))
done
final=$(info_json "$run")
for k in step weights_fingerprint ema_fingerprint optimizer_fingerprint progress_fingerprint data_fingerprint; do
  [[ $(json_field "$final" $k) == "$(json_field "$ref_info" $k)" ]] ||
    fail "final $k differs from the uninterrupted run's: $(json_field "$final" $k) vs $(json_field "$ref_info" $k)"
done
expected=$(seq 1 "$STEPS" | tr '\n' ' ')
got=$(grep -oE '^\{"step": ?[0-9]+' "$run/metrics.jsonl" | grep -oE '[0-9]+$' | tr '\n' ' ')
[[ $got == "$expected" ]] || fail "metrics.jsonl does not hold steps 1..$STEPS once each, in order"
bad_lines=$(grep -cvE '^\{"step": ?[0-9]+,.*\}$' "$run/metrics.jsonl")
((bad_lines == 0)) || fail "metrics.jsonl has $bad_lines lines that are not whole JSON objects"
left=$(temporaries "$run")
((left == 0)) || fail "$left checkpoint temporaries left in $run/checkpoints"
abandoned=$(compgen -G "$run/abandoned_after_step_*" | wc -l)

# --- faults -----------------------------------------------------------------------------------
fault_results=()
fault() {  # fault NAME OK(0|1) DETAIL
  if [[ $2 == 0 ]]; then fault_results+=("ok    $1: $3")
  else fault_results+=("FAIL  $1: $3"); failures=$((failures + 1)); fi
}
new_mount() {  # new_mount DIR SIZE_KB
  mkdir -p "$1"
  mount -t tmpfs -o "size=${2}k" tmpfs "$1" 2>/dev/null || return 1
  mounts+=("$1")
}
expect_exit() {  # expect_exit CODE LOG NEEDLE... ; after a command, with its rc in $rc
  local code=$1 log=$2 n
  shift 2
  ((rc == code)) || { echo "exit $rc, expected $code: $(tail -2 "$log" | tr '\n' ' ')"; return 1; }
  for n in "$@"; do grep -qF -- "$n" "$log" || { echo "no '$n' in: $(tail -2 "$log" | tr '\n' ' ')"; return 1; }; done
  echo "exit $rc: $(grep -m1 'error' "$log")"
}

# A disk that fills during the second checkpoint write: a clear error, the first one intact.
full=$WORK/full
if new_mount "$full" $((ckpt_bytes * 3 / 2 / 1024 + 256)); then
  "$BIN" "${TRAIN[@]}" --set train.steps=20 --run-dir "$full/run" >"$WORK/full.log" 2>&1
  rc=$?
  detail=$(expect_exit 1 "$WORK/full.log" "No space left on device" "ckpt_00000010.pt")
  ok=$?
  if ((ok == 0)); then
    out=$(info_json "$full/run") && [[ $(json_field "$out" step) == 5 ]] || { ok=1; detail="latest.pt is not the intact step-5 checkpoint: $out"; }
    grep -q "No space left on device" "$full/run/train.log" || { ok=1; detail="the error is not in train.log"; }
    ((ok == 0 && $(temporaries "$full/run") == 0)) || { ((ok == 0)) && detail="a temporary was left"; ok=1; }
  fi
  fault "full disk during a checkpoint write" $ok "$detail"
else
  fault "full disk during a checkpoint write" 1 "not run: mounting a tmpfs needs root"
fi

# Read-only run directories: refused before training starts, exit 2 naming the directory.
ro=$WORK/readonly
if new_mount "$ro" 65536; then
  cp -r "$ref" "$ro/run"
  mount -o remount,ro "$ro"
  before=$(ls -lR "$ro" | md5sum)
  "$BIN" train --resume "$ro/run" --set train.steps=$((STEPS + 5)) >"$WORK/ro1.log" 2>&1
  rc=$?
  detail=$(expect_exit 2 "$WORK/ro1.log" "'$ro/run'" "not writable")
  ok=$?
  ! grep -q "step [0-9]*/" "$WORK/ro1.log" || { ok=1; detail="training started: $detail"; }
  fault "resume in a read-only run directory" $ok "$detail"
  "$BIN" "${TRAIN[@]}" --run-dir "$ro/fresh" >"$WORK/ro2.log" 2>&1
  rc=$?
  detail=$(expect_exit 2 "$WORK/ro2.log" "'$ro/fresh'")
  fault "fresh run under a read-only mount" $? "$detail"
  [[ $(ls -lR "$ro" | md5sum) == "$before" ]] || fault "read-only mount unchanged" 1 "its listing changed"
else
  fault "read-only run directory" 1 "not run: mounting a tmpfs needs root"
fi
"$BIN" train --resume "$WORK/missing-run" >"$WORK/missing.log" 2>&1
rc=$?
detail=$(expect_exit 2 "$WORK/missing.log" "'$WORK/missing-run'")
fault "resume of a missing run directory" $? "$detail"

# A dataset replaced between a stop and its resume: refused (exit 2 naming data.path) unless
# --allow-data-change, which resumes with a warning in train.log.
data=$WORK/data
mkdir -p "$data"
cp /usr/share/datasets/fashion-mnist/train-* "$data/"
"$BIN" "${TRAIN[@]}" --set train.steps=10 --set data.path="$data" --run-dir "$WORK/changed" >"$WORK/changed.log" 2>&1
for f in images labels; do cp /usr/share/datasets/fashion-mnist/t10k-$f-* "$(compgen -G "$data/train-$f-*")"; done
"$BIN" train --resume "$WORK/changed" --set train.steps=15 >"$WORK/changed2.log" 2>&1
rc=$?
detail=$(expect_exit 2 "$WORK/changed2.log" "data.path '$data'" "--allow-data-change")
fault "dataset replaced before a resume" $? "$detail"
"$BIN" train --resume "$WORK/changed" --set train.steps=15 --allow-data-change >"$WORK/changed3.log" 2>&1
rc=$?
ok=1
((rc == 0)) && grep -q "allow-data-change" "$WORK/changed/train.log" && ok=0
fault "the same resume with --allow-data-change" $ok "exit $rc"

# An image replaced under a running job: it stops with exit 2 naming the file.
imgs=$WORK/images
"$BIN" sample --checkpoint "$ref" --num 32 --steps 2 --out "$imgs" >"$WORK/images.log" 2>&1
rm -f "$imgs"/grid.png "$imgs"/trajectory.png "$imgs"/samples.pt
"$BIN" "${TRAIN[@]}" --set train.steps=100000 --set data.dataset=folder --set data.path="$imgs" \
  --set data.limit=0 --run-dir "$WORK/folder-run" >"$WORK/folder.log" 2>&1 &
pid=$!
for ((w = 0; w < 600 && $(last_logged_step "$WORK/folder-run") < 2; ++w)); do sleep 0.1; done
victim=$(ls "$imgs"/*.png | head -1)
cp "$(ls "$imgs"/*.png | tail -1)" "$victim"
touch "$victim"
for ((w = 0; w < 300 && $(kill -0 $pid 2>/dev/null && echo 1 || echo 0); ++w)); do sleep 0.1; done
kill -9 $pid 2>/dev/null && echo "(the image-folder run did not stop by itself)"
wait $pid
rc=$?
detail=$(expect_exit 2 "$WORK/folder.log" "'$victim' changed")
fault "image replaced under a running job" $? "$detail"

# --- summary ----------------------------------------------------------------------------------
echo
echo "=== crash campaign: $kills kills ($in_write inside a checkpoint write), $STEPS steps, checkpoint every $EVERY ==="
echo "  most steps lost to one kill:        $max_lost (allowed: $EVERY)"
echo "  checkpoints read in full afterwards: $checked (sets aside by a resume: $abandoned folders)"
echo "  final state equals the uninterrupted run's: $([[ $(json_field "$final" weights_fingerprint) == "$(json_field "$ref_info" weights_fingerprint)" ]] && echo yes || echo NO)"
((finished_early)) && echo "  (the run finished before all $N kills were sent)"
printf '  %s\n' "${fault_results[@]}"
echo "  logs: $WORK"
if ((failures)); then echo "crash-campaign: $failures check(s) failed"; exit 1; fi
echo "crash-campaign: all checks passed"
