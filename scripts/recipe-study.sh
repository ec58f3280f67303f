#!/usr/bin/env bash
# Quality per CPU-minute on Fashion-MNIST (issue 13; docs/recipes.md): trains each recipe for the
# same number of steps of the same UNet and batch (so the same training time up to the loss's
# arithmetic; img/s is reported), then scores 1000 samples of each with FID and KID in the
# shipped feature network's space (scripts/make-feature-net.sh), with the recipe's own sampler
# and with DPM-Solver++(2M) at 20 steps. Run on an otherwise idle machine.
#   scripts/recipe-study.sh [OUT] [STEPS]        (defaults runs/study, 1500: the quickstart's budget)
#   RECIPES="quickstart edm" scripts/recipe-study.sh    (a subset; default all three)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${DIFFUSE:-build/diffuse}
[[ -x $BIN ]] || { echo "recipe-study: '$BIN' is not built (scripts/bootstrap.sh)" >&2; exit 2; }
out=${1:-runs/study}
steps=${2:-1500}
net=runs/features/fashion-mnist
[[ -f $net/checkpoints/latest.pt ]] || scripts/make-feature-net.sh "$net" >&2
mkdir -p "$out"
declare -A config=(
  [quickstart]="configs/fashion-mnist-quick.yaml"
  [v-minsnr]="configs/fashion-mnist-quick.yaml --set diffusion.prediction=v --set diffusion.loss_weighting=min_snr"
  [edm]="configs/fashion-mnist-edm.yaml"
)
recipes=${RECIPES:-quickstart v-minsnr edm}
for recipe in $recipes; do
  # shellcheck disable=SC2086  # the config holds several words on purpose
  "$BIN" train --config ${config[$recipe]} --run-dir "$out/$recipe" --overwrite --set train.steps="$steps" \
    --set train.sample_every=0 >"$out/$recipe.train.txt" 2>&1
  "$BIN" eval --checkpoint "$out/$recipe" --metrics fid,kid --num-samples 1000 --sweep dpmpp-2m:20 \
    --feature-extractor "$net/checkpoints/latest.pt" --reference-stats "$out/reference.stats" --format json \
    --out "$out/$recipe/eval" 2>"$out/$recipe.eval.txt" | tail -1 >"$out/$recipe.json"
  "$BIN" sample --checkpoint "$out/$recipe" --num 64 --seed 0 --out "$out/$recipe/grid" >/dev/null 2>&1
  echo "recipe-study: $recipe done ($out/$recipe.json, $out/$recipe/grid/grid.png)" >&2
done
echo "| recipe | train img/s | sampler | FID | KID x 1000 | dpmpp-2m 20: FID | KID x 1000 |"
echo "|---|---|---|---|---|---|---|"
for recipe in $recipes; do
  python3 - "$recipe" "$out" <<'PY'
import csv, json, re, sys
recipe, out = sys.argv[1], sys.argv[2]
r = json.load(open(f"{out}/{recipe}.json"))
ips = re.findall(r"\(([0-9.]+) img/s\)", open(f"{out}/{recipe}.train.txt").read())
sweep = list(csv.DictReader(open(f"{out}/{recipe}/eval/sweep.csv")))[0]
cfg = open(f"{out}/{recipe}/config.yaml").read()
sampler = re.search(r"\nsample:\n(?:.*\n)*?  sampler: \"?([a-z0-9-]+)", cfg).group(1)
steps = re.search(r"\nsample:\n(?:.*\n)*?  steps: ([0-9]+)", cfg).group(1)
print(f"| {recipe} | {ips[-1] if ips else '?'} | {sampler} {steps} | {r['fid']:.2f} | {1000 * r['kid']:.2f} | "
      f"{float(sweep['fid']):.2f} | {1000 * float(sweep['kid']):.2f} |")
PY
done
