#!/usr/bin/env bash
# Speed figures as JSON lines, measured side by side in one run (no timed assertions anywhere):
#  - the machine's ceilings: matrix product and 3x3 convolution, fp32 and bf16, through each
#    backend LibTorch has (one "ceilings" line);
#  - diffuse training images/s for the quickstart UNet (fp32 and precision auto) and a CIFAR-sized
#    64-channel UNet, with FLOPs per image and the fraction of the best ceiling of the run's dtype;
#  - the same UNets trained by PyTorch from Python on the same LibTorch and thread count
#    (Debian's python3-torch wraps the same libtorch 1.13), the floor to beat;
#  - sampling images/s per sampler at STEPS sampler steps (nfe_per_batch says what each step costs, rows_per_evaluation whether guidance doubles it),
#    with the achieved rate against the same ceilings; DDIM in fp32 and bf16 on both UNets beside
#    PyTorch's DDIM on the same networks (equal network evaluations, batch 64).
#   STEPS=20 THREADS=2 scripts/bench.sh > bench.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >&2
D=./build/diffuse
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-20}
PY=/usr/bin/python3
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# diffuse's own log lines go to a file; on a failure its end is shown, then the script stops.
quiet() { "$@" 2>"$LOG" || { echo "bench: failed: $*" >&2; tail -n 20 "$LOG" >&2; exit 1; }; }
# The quickstart UNet without its label embedding and guidance: the network PyTorch's twin builds.
QUICK=(-c configs/fashion-mnist-quick.yaml --set model.class_cond=false --set sample.guidance_scale=1)

echo "# diffuse training" >&2
quiet $D bench train "${QUICK[@]}" --steps "$STEPS" --warmup 3 --name fmnist-small-fp32 \
  --set train.threads="$THREADS" --set train.precision=fp32
quiet $D bench train "${QUICK[@]}" --steps "$STEPS" --warmup 3 --name fmnist-small-auto \
  --set train.threads="$THREADS" --set train.precision=auto
quiet $D bench train -c configs/bench-cifar64.yaml --steps "$(( (STEPS + 1) / 2 ))" --warmup 2 --name cifar-64ch-fp32 \
  --set train.threads="$THREADS" --set train.precision=fp32
quiet $D bench train -c configs/bench-cifar64.yaml --steps "$(( (STEPS + 1) / 2 ))" --warmup 2 --name cifar-64ch-auto \
  --set train.threads="$THREADS" --set train.precision=auto

echo "# PyTorch (Python) reference on the same LibTorch" >&2
if ! $PY -c 'import torch' 2>/dev/null; then
  if [[ $(id -u) == 0 ]]; then apt-get install -y -qq python3-torch >/dev/null 2>&1 || true
  else sudo apt-get install -y -qq python3-torch >/dev/null 2>&1 || true; fi
fi
if $PY -c 'import torch' 2>/dev/null; then
  $PY scripts/bench_pytorch.py --name pytorch-fmnist-small --threads "$THREADS" --steps "$STEPS"
  OPENBLAS_NUM_THREADS=1 $PY scripts/bench_pytorch.py --name pytorch-fmnist-small-openblas1 --threads "$THREADS" --steps "$STEPS"
  $PY scripts/bench_pytorch.py --name pytorch-cifar-64ch --threads "$THREADS" --steps "$(( (STEPS + 1) / 2 ))" \
    --image-size 32 --channels 3 --model-channels 64 --channel-mult 1,2,2,2 --num-res-blocks 2 \
    --attention-resolutions 16 --dropout 0.1 --batch 32
else
  echo '{"bench": "train-pytorch", "skipped": "python3-torch not installable here"}'
fi

echo "# sampling" >&2
quiet $D bench sample "${QUICK[@]}" --steps "$STEPS" --num 64 --set train.threads="$THREADS"
# Equal network evaluations against PyTorch: DDIM, batch 64, both UNets, fp32 and bf16.
for prec in fp32 auto; do
  quiet $D bench sample "${QUICK[@]}" --sampler ddim --steps "$STEPS" --num 64 \
    --set train.threads="$THREADS" --set sample.precision=$prec
  quiet $D bench sample -c configs/bench-cifar64.yaml --sampler ddim --steps "$(( (STEPS + 3) / 4 ))" --num 64 \
    --set train.threads="$THREADS" --set sample.precision=$prec
done
if $PY -c 'import torch' 2>/dev/null; then
  for bf in "" --bf16; do
    OPENBLAS_NUM_THREADS=1 $PY scripts/bench_pytorch.py --sample $bf --name pytorch-fmnist-small${bf:+-bf16} \
      --threads "$THREADS" --steps "$STEPS"
    OPENBLAS_NUM_THREADS=1 $PY scripts/bench_pytorch.py --sample $bf --name pytorch-cifar-64ch${bf:+-bf16} \
      --threads "$THREADS" --steps "$(( (STEPS + 3) / 4 ))" --image-size 32 --channels 3 --model-channels 64 \
      --channel-mult 1,2,2,2 --num-res-blocks 2 --attention-resolutions 16
  done
fi

# Data parallel on this machine: the same global batch (64) as 1 rank x THREADS threads and as
# 2 ranks x THREADS/2 threads (Gloo on loopback). The gradient all-reduce time that backward did
# not hide, per step, comes from metrics.jsonl's allreduce_wait_sec.
echo "# data parallel" >&2
DP=$(mktemp -d)
trap 'rm -f "$LOG"; rm -rf "$DP"' EXIT
DP_STEPS=$(( STEPS < 10 ? 10 : STEPS ))
dp_run() {  # name ranks threads batch
  local extra=()
  (( $2 > 1 )) && extra=(--nproc-per-node "$2")
  OMP_NUM_THREADS=$3 quiet $D train -c configs/fashion-mnist-quick.yaml --run-dir "$DP/$1" --overwrite \
    --set train.steps="$DP_STEPS" --set train.batch_size="$4" --set train.log_every=1 --set train.sample_every=0 \
    --set train.checkpoint_every=100000 --set train.threads="$3" --set train.precision=fp32 "${extra[@]}" >/dev/null
  $PY - "$1" "$2" "$3" "$DP/$1/metrics.jsonl" <<'PY'
import json, sys
name, ranks, threads, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(path) if l.strip()][2:]  # the first two steps warm up
sec = [r["global_batch"] / r["images_per_sec"] for r in rows]
wait = [r.get("allreduce_wait_sec", 0.0) for r in rows]
step = sum(sec) / len(sec)
print(json.dumps({"bench": "train-data-parallel", "name": name, "ranks": ranks, "threads_per_rank": threads,
                  "global_batch": rows[0]["global_batch"], "steps": len(rows),
                  "images_per_sec": round(rows[0]["global_batch"] / step, 2), "step_sec": round(step, 4),
                  "allreduce_wait_sec": round(sum(wait) / len(wait), 5),
                  "allreduce_share": round(sum(wait) / len(wait) / step, 4)}))
PY
}
dp_run dp-1rank "1" "$THREADS" 64
dp_run dp-2ranks "2" "$(( THREADS > 1 ? THREADS / 2 : 1 ))" 32
