#!/usr/bin/env bash
# Quality per CPU-minute on Fashion-MNIST (issue 13; docs/recipes.md). Each recipe trains for the
# wall time of STEPS steps of the quickstart's recipe: its step count is STEPS x (its images/s /
# the quickstart's) x (the quickstart's batch / its batch), both throughputs measured side by side
# with `diffuse bench train` first. Then 1000
# samples of each, with the recipe's own sampler and with DPM-Solver++(2M) at 20 steps, are scored
# in the shipped feature network's space (scripts/make-feature-net.sh): FID, KID, and improved
# precision / recall (1 - precision = the share of samples off the data's manifold, the broken
# ones). A class-conditional recipe is also sampled without guidance, and with the class labels of
# the calibration's real set at guidance 1, 1.25, 1.5 and 2 (GUIDANCE). Last, the samplers and
# their step counts on the unconditional EDM recipe, at n = 500, including 1000-step ancestral
# sampling. Run on an otherwise idle machine (about 2 hours on 2 cores).
#   scripts/recipe-study.sh [OUT] [STEPS]        (defaults runs/study, 1500: the quickstart's budget)
#   RECIPES="eps edm" SWEEP=0 scripts/recipe-study.sh    (a subset; no sampler sweep)
#   RECIPES=edm SWEEP=0 scripts/recipe-study.sh runs/study-6000 6000   (the quickstart, 4x longer)
#   RECIPES="edm edm-seed1 edm-seed2" SWEEP=0 scripts/recipe-study.sh runs/seeds   (seed-to-seed spread)
#   RECIPES="edm-cond edm-cond-seed1 edm-cond-seed2" SWEEP=0 scripts/recipe-study.sh runs/cond   (the quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "recipe-study: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
out=${1:-runs/study}
steps=${2:-1500}
net=runs/features/fashion-mnist
[[ -f $net/checkpoints/latest.pt ]] || scripts/make-feature-net.sh "$net" >&2
fx="$net/checkpoints/latest.pt"
mkdir -p "$out"
quick=configs/fashion-mnist-quick.yaml
eps=configs/fashion-mnist-eps.yaml
# The quickstart is class-conditional with guidance; the earlier recipes (docs/recipes.md sections
# 1 to 5) were measured unconditional, and keep being so.
uncond="$quick --set model.class_cond=false --set sample.guidance_scale=1"
declare -A config=(
  [eps]="$eps"
  [v-minsnr]="$eps --set diffusion.prediction=v --set diffusion.loss_weighting=min_snr"
  [edm]="$uncond"
  [edm-depth2]="$uncond --set model.num_res_blocks=2"
  [edm-width64]="$uncond --set model.model_channels=64"
  [edm-lr2e-3]="$uncond --set train.lr=2.0e-3"
  [edm-lr5e-4]="$uncond --set train.lr=5.0e-4"
  [edm-ema9995]="$uncond --set train.ema_decay=0.9995"
  [edm-ema99]="$uncond --set train.ema_decay=0.99"
  [edm-batch32]="$uncond --set train.batch_size=32"
  [edm-batch128]="$uncond --set train.batch_size=128"
  # More training seeds (the samples keep seed 0): how much of a difference is one seed's noise.
  [edm-seed1]="$uncond --set train.seed=1"
  [edm-seed2]="$uncond --set train.seed=2"
  [edm-batch128-seed1]="$uncond --set train.batch_size=128 --set train.seed=1"
  [edm-batch128-seed2]="$uncond --set train.batch_size=128 --set train.seed=2"
  # The quickstart: class-conditional (a label embedding added to the time embedding; 10% of the
  # labels dropped to the null label so that classifier-free guidance works), guidance 1.25.
  [edm-cond]="$quick"
  [edm-cond-seed1]="$quick --set train.seed=1"
  [edm-cond-seed2]="$quick --set train.seed=2"
)
recipes=${RECIPES:-eps v-minsnr edm edm-depth2 edm-width64 edm-lr2e-3 edm-lr5e-4 edm-ema9995 edm-ema99}

bench() {  # CONFIG [--set ...]: "IMAGES_PER_SEC BATCH" of the recipe's training, 20 timed steps
  # shellcheck disable=SC2086  # the config holds several words on purpose
  "$BIN" bench train -c $1 --steps 20 --warmup 3 2>/dev/null | tail -1 |
    python3 -c 'import json, sys; b = json.loads(sys.stdin.read()); print(b["images_per_sec"], b["batch"])'
}
is_cond() { grep -q 'class_cond: true' "$out/$1/config.yaml"; }  # RECIPE: trained class-conditional?
score() {  # RUN SAMPLES_DIR: fid, kid, precision, recall of a sample folder as one JSON line
  "$BIN" eval --checkpoint "$1" --samples "$2" --metrics fid,kid,precision,recall --feature-extractor "$fx" \
    --reference-stats "$out/reference.stats" --format json --out "$2.eval" 2>/dev/null | tail -1 >"$2.json"
}

read -r base_ips base_batch < <(bench "$quick")
real_labels=$(python3 scripts/fid_calibration_sets.py --labels 1000)  # the calibration's `real` set's classes
declare -A steps_of  # per config without its seed: the seeds of one recipe train equally long
for recipe in $recipes; do
  unseeded=$(sed -E 's/ --set train\.seed=[0-9]+//' <<<"${config[$recipe]}")
  # Keys that leave a step's work unchanged (a label embedding is one row added per image).
  same_work=$(sed -E 's/ --set (train\.(lr|ema_decay)|model\.(class_cond|p_uncond)|sample\.[a-z_]+)=[^ ]+//g' <<<"$unseeded")
  if [[ $same_work == "$quick" ]]; then  # the base recipe's work per step: its steps, not a noisy ratio
    ips=$base_ips batch=$base_batch n=$steps
  elif [[ -n ${steps_of[$unseeded]:-} ]]; then
    read -r ips batch n <<<"${steps_of[$unseeded]}"
  else
    read -r ips batch < <(bench "$unseeded")
    # Equal wall time: steps x batch / images-per-second is the same for every recipe.
    n=$(python3 -c "print(max(1, round($steps * ($ips / $base_ips) * ($base_batch / $batch))))")
    steps_of[$unseeded]="$ips $batch $n"
  fi
  echo "recipe-study: $recipe: $ips img/s at batch $batch against $base_ips at $base_batch, $n steps" >&2
  # shellcheck disable=SC2086
  "$BIN" train --config ${config[$recipe]} --run-dir "$out/$recipe" --overwrite --set train.steps="$n" \
    --set train.sample_every=0 >"$out/$recipe.train.txt" 2>&1
  "$BIN" sample --checkpoint "$out/$recipe" --num 1000 --seed 0 --out "$out/$recipe/own" >/dev/null 2>&1
  "$BIN" sample --checkpoint "$out/$recipe" --num 1000 --seed 0 --sampler dpmpp-2m --steps 20 \
    --out "$out/$recipe/dpmpp20" >/dev/null 2>&1
  "$BIN" sample --checkpoint "$out/$recipe" --num 64 --seed 0 --no-images --out "$out/$recipe/grid" >/dev/null 2>&1
  score "$out/$recipe" "$out/$recipe/own"
  score "$out/$recipe" "$out/$recipe/dpmpp20"
  if is_cond "$recipe"; then
    # `own` drew labels i mod 10 (100 per class; its real-data floor is fid-calibration.sh's
    # `stratified`); `own-g1` the same without guidance. `mix-gS` draws the labels of the `real`
    # calibration set (the first 1,000 training images), so its floor is that set's score, at
    # guidance scale S.
    "$BIN" sample --checkpoint "$out/$recipe" --num 1000 --seed 0 --guidance-scale 1 --out "$out/$recipe/own-g1" \
      >/dev/null 2>&1
    score "$out/$recipe" "$out/$recipe/own-g1"
    for g in ${GUIDANCE:-1 1.25 1.5 2}; do
      # shellcheck disable=SC2086  # the labels are separate words
      "$BIN" sample --checkpoint "$out/$recipe" --num 1000 --seed 0 --guidance-scale "$g" --label $real_labels \
        --out "$out/$recipe/mix-g$g" >/dev/null 2>&1
      score "$out/$recipe" "$out/$recipe/mix-g$g"
    done
  fi
  echo "recipe-study: $recipe done ($out/$recipe/own.json, $out/$recipe/grid/grid.png)" >&2
done

echo "| recipe | steps (equal time) | own sampler | FID | KID x 1000 | precision | recall | dpmpp-2m 20: FID | KID x 1000 | precision |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for recipe in $recipes; do
  python3 - "$recipe" "$out" <<'PY'
import json, re, sys
recipe, out = sys.argv[1], sys.argv[2]
own = json.load(open(f"{out}/{recipe}/own.json"))
dpm = json.load(open(f"{out}/{recipe}/dpmpp20.json"))
cfg = open(f"{out}/{recipe}/config.yaml").read()
section = lambda name: re.search(rf"\n{name}:\n((?:  .*\n)*)", cfg).group(1)
key = lambda text, k: re.search(rf"\n  {k}: \"?([A-Za-z0-9.+-]+)", "\n" + text).group(1)
sampler = f"{key(section('sample'), 'sampler')} {key(section('sample'), 'steps')}"
print(f"| {recipe} | {key(section('train'), 'steps')} | {sampler} | {own['fid']:.2f} | {1000 * own['kid']:.2f} | "
      f"{own['precision']:.3f} | {own['recall']:.3f} | {dpm['fid']:.2f} | {1000 * dpm['kid']:.2f} | {dpm['precision']:.3f} |")
PY
done

cond=$(for recipe in $recipes; do if is_cond "$recipe"; then echo "$recipe"; fi; done)
if [[ -n $cond ]]; then
  echo
  echo "class-conditional recipes (own: labels i mod 10; mix: the real set's labels; -gS: guidance scale S)"
  echo "| recipe | samples | FID | KID x 1000 | precision | recall |"
  echo "|---|---|---|---|---|---|"
  for recipe in $cond; do
    for f in "$out/$recipe"/own.json "$out/$recipe"/own-g1.json "$out/$recipe"/mix-g*.json; do
      python3 - "$recipe" "$f" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[2]))
print(f"| {sys.argv[1]} | {os.path.basename(sys.argv[2])[:-5]} | {r['fid']:.3f} | {1000 * r['kid']:.2f} | "
      f"{r['precision']:.3f} | {r['recall']:.3f} |")
PY
    done
  done
fi

[[ ${SWEEP:-1} == 0 ]] && exit 0
# Samplers and step counts on the quickstart recipe (network evaluations: heun 2n - 1, others n).
"$BIN" eval --checkpoint "$out/edm" --metrics fid,kid,precision --num-samples 500 --sweep ddpm:1000 --sweep heun:18 \
  --sweep dpmpp-2m:10,20 --sweep ddim:50 --feature-extractor "$fx" --reference-stats "$out/reference.stats" \
  --format json --out "$out/edm/samplers" >/dev/null 2>"$out/edm-samplers.txt"
echo
echo "samplers on the edm recipe at n = 500: $out/edm/samplers/sweep.csv"
cat "$out/edm/samplers/sweep.csv"
