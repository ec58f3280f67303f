#!/usr/bin/env bash
# Calibrates FID/KID and precision/recall in the Fashion-MNIST feature network's space
# (docs/fid.md): scores real training images, blurred, noised and pixel-shuffled copies of them
# (scripts/fid_calibration_sets.py) against the test split, at n = N, and prints a markdown table.
# `stratified` is real training images with N/10 of each class, the floor for class-conditional samples.
#   scripts/fid-calibration.sh [N] [FEATURE_NET]     (defaults 1000, runs/features/fashion-mnist)
# The feature network is made by scripts/make-feature-net.sh when missing. `eval --samples` reads
# only the data settings from a checkpoint; a one-step tiny run provides them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "fid-calibration: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
n=${1:-1000}
net=${2:-runs/features/fashion-mnist}
[[ -f $net/checkpoints/latest.pt ]] || scripts/make-feature-net.sh "$net" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 scripts/fid_calibration_sets.py "$work/sets" "$n" >&2
"$BIN" train --config configs/tiny.yaml --run-dir "$work/data-run" --set train.steps=1 --set train.sample_every=0 \
  --set train.checkpoint_every=1 >/dev/null 2>&1
echo "| set (n = $n, reference: the 10,000 test images) | FID | KID x 1000 (std) | precision | recall |"
echo "|---|---|---|---|---|"
for set in real stratified blur3 blur5 noise05 noise10 noise20 shuffled; do
  json=$("$BIN" eval --checkpoint "$work/data-run" --samples "$work/sets/$set" --metrics fid,kid,precision,recall \
    --feature-extractor "$net/checkpoints/latest.pt" --reference-stats "$work/ref.stats" --format json \
    --out "$work/eval-$set" 2>/dev/null | tail -1)
  python3 - "$set" "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {r['fid']:.3f} | {1000 * r['kid']:.3f} ({1000 * r['kid_std']:.3f}) | {r['precision']:.3f} | "
      f"{r['recall']:.3f} |")
PY
done
