#!/usr/bin/env bash
# Trains the Fashion-MNIST feature network for `diffuse eval --metrics fid,kid` (a small
# classifier, configs/fashion-mnist-features.yaml; a few CPU-minutes), so that FID and KID on the
# demo data need no download. Seeded: the same machine and thread count give the same weights.
#   scripts/make-feature-net.sh [RUN_DIR]      (default runs/features/fashion-mnist)
# Then: diffuse eval --checkpoint RUN --metrics fid,kid --feature-extractor RUN_DIR/checkpoints/latest.pt
# docs/fid.md says what its FID values mean (a calibration on real, blurred and noised images).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "make-feature-net: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
run=${1:-runs/features/fashion-mnist}
"$BIN" train --config configs/fashion-mnist-features.yaml --run-dir "$run" --overwrite
echo "make-feature-net: feature network $run/checkpoints/latest.pt"
echo "  use: $BIN eval --checkpoint RUN --metrics fid,kid --feature-extractor $run/checkpoints/latest.pt"
