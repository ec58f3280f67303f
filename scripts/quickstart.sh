#!/usr/bin/env bash
# The main job end to end on a fresh Debian/Ubuntu machine: install what is missing, build,
# train a small class-conditional UNet on Fashion-MNIST in EDM's formulation (about 10 minutes
# on 2 CPU cores), sample a grid from the checkpoint with classifier-free guidance, and evaluate
# it (bits/dim of the variational bound on held-out images).
#   RUN=runs/my-run scripts/quickstart.sh      another run directory
#   STEPS=500 scripts/quickstart.sh            fewer/more training steps
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
RUN=${RUN:-runs/quickstart}
DIFFUSE=./build/diffuse
CONFIG=configs/fashion-mnist-quick.yaml

if [[ -e "$RUN/checkpoints/latest.pt" ]]; then
  # A second run of the quickstart (or one after Ctrl-C) continues the run it left; when that
  # run is complete, training has nothing to do. A fresh start: rm -r "$RUN" first.
  echo "== train (resuming $RUN; remove it to start afresh)"
  "$DIFFUSE" train --resume "$RUN" ${STEPS:+--set train.steps=$STEPS}
else
  echo "== train ($CONFIG -> $RUN)"
  "$DIFFUSE" train --config "$CONFIG" --run-dir "$RUN" ${STEPS:+--set train.steps=$STEPS}
fi

echo "== sample (64 images, labels i mod 10, with the config's sampler: Heun, 18 steps with churn, guidance 1.25)"
"$DIFFUSE" sample --checkpoint "$RUN" --num 64 --seed 1 --out "$RUN/final-samples" \
  --trajectory 10 --no-images

echo "== eval (negative ELBO in bits/dim on held-out test images: all T terms for 64 images, MC over t for 512)"
"$DIFFUSE" eval --checkpoint "$RUN" --metrics bpd --num-images 64 --out "$RUN/eval"
"$DIFFUSE" eval --checkpoint "$RUN" --metrics bpd-mc --num-images 512 --out "$RUN/eval-mc"

echo
echo "quickstart done:"
echo "  samples:    $RUN/final-samples/grid.png (denoising strip: $RUN/final-samples/trajectory.png)"
echo "  checkpoint: $RUN/checkpoints/latest.pt"
echo "  metrics:    $RUN/metrics.jsonl, evaluation: $RUN/eval/ (per-t terms: bpd_terms.png) and $RUN/eval-mc/"
