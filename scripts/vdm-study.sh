#!/usr/bin/env bash
# The VDM schedule study (issue 14; docs/vdm.md): configs/fashion-mnist-vdm.yaml trained with each
# gamma schedule kind (fixed linear, learned ends, learned monotone network, the cosine and
# linear-beta schedules' SNR) for the same number of steps (the schedule network's cost is
# under 1% of a step), then evaluated on the
# Fashion-MNIST test set: the continuous-time bound by Monte Carlo with its standard error and the
# variance of one batch's loss estimate (eval --metrics bpd-mc), the T-step discrete bound on a
# subset (eval --metrics bpd), the learned log SNR(t) plot (snr.png) and a sample grid. Run on an
# otherwise idle machine: about 13-15 minutes per kind at 1000 steps on 2 cores (the bound with 16
# draws per image: 1-4 minutes of it).
#   scripts/vdm-study.sh [OUT] [STEPS] [IMAGES]     (defaults runs/vdm-study, 1500, 1000)
#   KINDS="linear learned" EXACT_IMAGES=0 scripts/vdm-study.sh    (a subset; no discrete bound)
#   KINDS="learned+fourier" scripts/vdm-study.sh                  (with model.fourier_features)
#   KINDS="linear+discrete" scripts/vdm-study.sh                  (trained on the T-step bound)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "vdm-study: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
out=${1:-runs/vdm-study}
steps=${2:-1500}
images=${3:-1000}
exact_images=${EXACT_IMAGES:-100}   # the discrete bound costs T + 1 network calls per image
exact_steps=${EXACT_T:-100}
kinds=${KINDS:-linear endpoints learned}
config=configs/fashion-mnist-vdm.yaml
mkdir -p "$out"

for kind in $kinds; do
  run="$out/$kind"
  echo "vdm-study: $kind: training $steps steps" >&2
  start=$(date +%s)
  # KIND+fourier: the same with the UNet's Fourier features of its input; KIND+discrete: trained
  # on the T-step bound (diffusion.continuous false) instead of the continuous one.
  fourier=false continuous=true
  [[ $kind == *+fourier ]] && fourier=true
  [[ $kind == *+discrete ]] && continuous=false
  "$BIN" train --config "$config" --run-dir "$run" --overwrite --set diffusion.gamma_schedule="${kind%%+*}" \
    --set model.fourier_features="$fourier" --set diffusion.continuous="$continuous" --set train.steps="$steps" \
    --set train.sample_every=0 >"$out/$kind.train.txt" 2>&1
  echo "vdm-study: $kind: trained in $(($(date +%s) - start)) s" >&2
  "$BIN" eval --checkpoint "$run" --metrics bpd-mc --split test --num-images "$images" --mc-timesteps 16 \
    --batch-size 100 --format json --out "$run/eval" 2>/dev/null | tail -1 >"$out/$kind.bound.json"
  if ((exact_images > 0)); then
    "$BIN" eval --checkpoint "$run" --metrics bpd --split test --num-images "$exact_images" --batch-size 50 \
      --set diffusion.timesteps="$exact_steps" --format json --out "$run/eval-discrete" 2>/dev/null |
      tail -1 >"$out/$kind.discrete.json"
  fi
  "$BIN" sample --checkpoint "$run" --num 64 --seed 0 --out "$run/grid" >/dev/null 2>&1
done

# One table: the bound and its parts, its standard error, one batch's loss variance.
# shellcheck disable=SC2086  # one argument per kind
python3 - "$out" $kinds <<'EOF'
import json, os, sys
out, kinds = sys.argv[1], sys.argv[2:]
print("| gamma schedule | bpd (continuous) | std. error | prior | recon | diffusion | batch loss variance | discrete T-step bound |")
print("|---|---|---|---|---|---|---|---|")
for k in kinds:
    b = json.load(open(f"{out}/{k}.bound.json"))
    if "bpd_mc" not in b:
        continue
    d = f"{out}/{k}.discrete.json"
    disc = json.load(open(d))["total_bpd"] if os.path.exists(d) and os.path.getsize(d) else float("nan")
    print(f"| {k} | {b['bpd_mc']:.4f} | {b['bpd_mc_std_error']:.4f} | {b['bpd_mc_prior']:.5f} | "
          f"{b['bpd_mc_recon']:.4f} | {b['bpd_mc_diffusion']:.4f} | {b['bpd_mc_batch_loss_variance']:.3g} | {disc:.4f} |")
EOF
