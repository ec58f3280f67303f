#!/usr/bin/env bash
# Speed figures as JSON lines, measured side by side in one run (no timed assertions anywhere):
#  - diffuse training images/s for the quickstart UNet (fp32 and precision auto) and a CIFAR-sized
#    64-channel UNet, with FLOPs per image and the fraction of measured matmul throughput;
#  - the same UNets trained by PyTorch from Python on the same LibTorch and thread count
#    (Debian's python3-torch wraps the same libtorch 1.13), the floor to beat;
#  - sampling images/s per sampler at STEPS sampler steps (nfe_per_batch says what each step costs).
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

echo "# diffuse training" >&2
quiet $D bench train -c configs/fashion-mnist-quick.yaml --steps "$STEPS" --warmup 3 --name fmnist-small-fp32 \
  --set train.threads="$THREADS" --set train.precision=fp32
quiet $D bench train -c configs/fashion-mnist-quick.yaml --steps "$STEPS" --warmup 3 --name fmnist-small-auto \
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
quiet $D bench sample -c configs/fashion-mnist-quick.yaml --steps "$STEPS" --num 64 --set train.threads="$THREADS"
