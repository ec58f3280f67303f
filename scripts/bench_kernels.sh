#!/usr/bin/env bash
# A/B of the fused CPU GroupNorm kernel: ATen's separate ops (DIFFUSE_CPU_KERNELS=aten) against
# the best kernel set this CPU runs (or BEST), interleaved REPS times, DDIM sampling and training of the
# quickstart UNet in fp32 and bf16. JSON lines, each prefixed by the kernel set and precision.
#   REPS=2 scripts/bench_kernels.sh > kernels.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
D=./build/diffuse
C=configs/fashion-mnist-quick.yaml
REPS=${REPS:-2}
BEST=${BEST:-default}  # or baseline, avx2, avx512
for _ in $(seq "$REPS"); do
  for k in aten "$BEST"; do
    env_k=(); [[ $k == default ]] || env_k=(DIFFUSE_CPU_KERNELS="$k")
    for p in fp32 auto; do
      env "${env_k[@]}" $D bench sample -c "$C" --sampler ddim --steps 10 --num 64 --set sample.precision=$p \
        2>/dev/null | grep '"sample"' | sed "s/^/$k $p /"
      env "${env_k[@]}" $D bench train -c "$C" --steps 20 --warmup 3 --set train.precision=$p \
        2>/dev/null | grep '"train"' | sed "s/^/$k $p /"
    done
  done
done
