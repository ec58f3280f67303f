#!/usr/bin/env bash
# One command for a GPU machine: build diffuse against the machine's LibTorch (PyTorch's), run the
# test suite, then the CUDA paths for real: train (bf16, fp16), sample (ddim, dpmpp-2m), eval bpd,
# bench train / sample (CUDA and CPU) and a 1-rank NCCL run under torchrun. OUTDIR gets at most
# five files (the device tool brings back 8): summary.json (each step: command, rc, seconds, key
# figures), summary.txt (the same as a table), logs.tar.gz (one log per step) and the sample grids
# grid-ddim.png and grid-dpmpp-2m.png; runs, samples and evaluations go to a work folder
# (GPU_CHECK_WORK, default a new folder under /tmp). The summary and the logs are rewritten
# after every step, so a run cut short still leaves what it did. Every step has its own timeout,
# and no step starts past the deadline (GPU_CHECK_DEADLINE, default 540 s for the whole run), so
# the whole run ends in well under 10 minutes. A failing step is recorded and the next one runs;
# the exit status is 0 when the build, the tests and every step passed, else 1.
#   scripts/gpu-check.sh OUTDIR
# Our other libraries travel as Debian packages (see ../shared/gpu/README.md): .gpudeps/*.deb in
# the project (or GPU_CHECK_DEBS=DIR) are unpacked into /opt/deps first when /opt/deps lacks them;
# a dataset-fashion-mnist .deb among them gives the real data, else training uses synthetic images.
#   GPU_CHECK_DEVICE=cuda|cpu   cpu: the same steps on the CPU (fp32/auto instead of bf16/fp16,
#                               gloo instead of NCCL), to test this script without a GPU
#   GPU_CHECK_STEPS=300         training steps per run
#   GPU_CHECK_DEADLINE=540      seconds for the whole run (times GPU_CHECK_TIMEOUT_SCALE)
#   GPU_CHECK_TIMEOUT_SCALE=1   multiplies every timeout (default 6 with GPU_CHECK_DEVICE=cpu)
#   BUILD_DIR=build-gpu  JOBS=nproc  TORCH_PREFIX=...  (default: PyTorch's cmake prefix)
#   GPU_CHECK_SKIP_BUILD=1      reuse BUILD_DIR as it is; GPU_CHECK_SKIP_TESTS=1: no ctest
#   GPU_CHECK_WORK=DIR          the work folder (runs, samples, evaluations, logs)
#   GPU_CHECK_ONLY=REGEX        run only the steps whose names match (e.g. '^(configure|build|dist-.*)$')
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
OUT=${1:?usage: scripts/gpu-check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
STEPS=${GPU_CHECK_STEPS:-300}
# Timeouts are sized for the GPU machine (16 cores); a CPU check on a small machine scales them.
SCALE=${GPU_CHECK_TIMEOUT_SCALE:-1}
[[ $DEVICE == cpu ]] && SCALE=${GPU_CHECK_TIMEOUT_SCALE:-6}
DEADLINE=$((SECONDS + ${GPU_CHECK_DEADLINE:-$((540 * SCALE))}))
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
BIN=$SRC/$BUILD_DIR/diffuse
SUMMARY=$OUT/summary.json
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
LOGS=$WORK/logs
mkdir -p "$LOGS"
STEPS_FILE=$WORK/steps.jsonl
: >"$STEPS_FILE"
failed=0
log() { printf 'gpu-check: %s\n' "$*" >&2; }

case $DEVICE in
  cuda) PRECISIONS=(bf16 fp16) BACKEND=nccl ;;
  cpu) PRECISIONS=(auto fp32) BACKEND=gloo ;;
  *) log "GPU_CHECK_DEVICE must be cuda or cpu"; exit 2 ;;
esac

# The summary: a JSON object with the environment and the steps so far (python3 is on both the
# GPU machine and the LibTorch 2 root).
write_summary() {
  python3 - "$SUMMARY" "$STEPS_FILE" "$DEVICE" "$SRC" <<'EOF'
import json, sys, os, subprocess, time
path, steps_file, device, src = sys.argv[1:5]
steps = [json.loads(l) for l in open(steps_file) if l.strip()]
def git(*a):
    try: return subprocess.run(["git", "-C", src, *a], capture_output=True, text=True).stdout.strip()
    except Exception: return None
doc = {"device": device, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
       "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")),
       "passed": sum(s["rc"] == 0 for s in steps), "failed": sum(s["rc"] != 0 for s in steps),
       "seconds": round(sum(s["seconds"] for s in steps), 1), "steps": steps}
tmp = path + ".tmp"
with open(tmp, "w") as f: json.dump(doc, f, indent=2); f.write("\n")
os.replace(tmp, path)
lines = []
for s in steps:
    f = s.get("figures", {})
    brief = {k: v for k, v in f.items() if k != "lines" and not isinstance(v, (list, dict))}
    mark = " (tolerated)" if s.get("tolerated") and s["rc"] else ""
    lines.append(f"{s['name']:<16} rc {s['rc']:<4} {s['seconds']:>7.1f}s  {json.dumps(brief)[:160]}{mark}")
    for l in f.get("lines", [])[:4]:
        lines.append(f"{'':<16} {json.dumps(l)[:160]}")
lines.append(f"{doc['passed']} passed, {doc['failed']} failed")
with open(os.path.join(os.path.dirname(path), "summary.txt"), "w") as f: f.write("\n".join(lines) + "\n")
EOF
  tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" logs 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

# Key figures of a step, from its log (and run directory): printed as one JSON object.
figures() {  # figures KIND LOG [RUN_DIR]
  python3 - "$@" <<'EOF'
import json, re, sys, os
kind, log = sys.argv[1], sys.argv[2]
run = sys.argv[3] if len(sys.argv) > 3 else ""
text = open(log, errors="replace").read() if os.path.exists(log) else ""
def jsonlines(t):
    out = []
    for l in t.splitlines():
        l = l.strip()
        if l.startswith("{") and l.endswith("}"):
            try: out.append(json.loads(l))
            except ValueError: pass
    return out
fig = {}
try:
    if kind == "ctest":
        m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
        if m: fig = {"passed": int(m[3]) - int(m[2]), "failed": int(m[2]), "total": int(m[3])}
        fails = re.findall(r"^\s*\d+ - (\S+) \(Failed|Timeout|SEGFAULT|Subprocess aborted", text, re.M)
        if fails: fig["failed_tests"] = fails[:20]
    elif kind == "build":
        fig = {"warnings": len(set(re.findall(r"^.*: warning: .*$", text, re.M))),
               "errors": len(set(re.findall(r"^.*: error: .*$", text, re.M)))}
    elif kind == "train":
        mf = os.path.join(run, "metrics.jsonl")
        rows = jsonlines(open(mf).read()) if os.path.exists(mf) else []
        if rows:
            last = rows[-1]
            fig = {k: last.get(k) for k in ("step", "loss", "mse", "grad_norm", "images_per_sec", "elapsed", "world_size")}
            fig["first_loss"] = rows[0].get("loss")
        m = re.findall(r"(\d+(?:\.\d+)?) img/s", text)
        if m: fig["last_logged_img_per_s"] = float(m[-1])
    elif kind == "sample":
        pngs = [f for f in os.listdir(run) if f.endswith(".png")] if run and os.path.isdir(run) else []
        fig = {"pngs": len(pngs), "grid": "grid.png" in pngs}
    elif kind == "eval":
        rows = jsonlines(text)
        if rows:
            r = rows[-1]
            fig = {k: v for k, v in r.items() if "bpd" in k or k.startswith("num") or k == "device"} or r
    elif kind == "bench":
        keep = ("bench", "name", "sampler", "device", "precision", "batch", "steps", "images_per_sec",
                "step_ms", "seconds", "peak_device_mib", "achieved_gflops", "ceiling", "ceiling_gflops",
                "fraction_of_ceiling", "ceilings")
        fig = {"lines": [{k: r[k] for k in keep if k in r} for r in jsonlines(text)]}
    elif kind == "env":
        fig = {"lines": [l for l in text.splitlines() if l.strip() and not l.startswith("$ ")][:30]}
except Exception as e:
    fig = {"figures_error": str(e)}
print(json.dumps(fig))
EOF
}

# step NAME TIMEOUT KIND [RUN_DIR] -- COMMAND...: runs COMMAND under timeout (never past the
# deadline), logs to WORK/logs/NAME.log, records the result.
step() {
  local name=$1 limit=$2 kind=$3 run="" rc
  [[ -z ${GPU_CHECK_ONLY:-} || $name =~ $GPU_CHECK_ONLY ]] || return 0
  shift 3
  if [[ $1 != -- ]]; then run=$1; shift; fi
  shift
  limit=$((limit * SCALE))
  local logf=$LOGS/$name.log left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  local t=$SECONDS start
  start=$(date +%s.%N)
  if ((limit < 5)); then
    echo "skipped: past the deadline" >"$logf"
    rc=125
  else
    log "$name (timeout ${limit}s): $*"
    { printf '$'; printf ' %q' "$@"; printf '\n'; } >"$logf"
    timeout -k 10 "$limit" "$@" >>"$logf" 2>&1
    rc=$?
  fi
  local secs
  secs=$(python3 -c "import time,sys; print(round(time.time() - float(sys.argv[1]), 2))" "$start")
  ((rc == 124)) && echo "gpu-check: timed out after ${limit}s" >>"$logf"
  local fig
  fig=$(figures "$kind" "$logf" "$run" 2>/dev/null) || fig='{}'
  python3 - "$STEPS_FILE" "$name" "$rc" "$secs" "$limit" "$fig" "$logf" "$@" <<'EOF'
import json, os, sys, shlex
f, name, rc, secs, limit, fig, logf, *cmd = sys.argv[1:]
rec = {"name": name, "command": " ".join(shlex.quote(c) for c in cmd), "rc": int(rc),
       "seconds": float(secs), "timeout": int(limit), "log": "logs/" + logf.rsplit("/", 1)[-1],
       "figures": json.loads(fig or "{}")}
if int(rc) == 124: rec["timed_out"] = True
if int(rc) == 125: rec["skipped"] = "past the deadline"
if os.environ.get("TOLERATE") == "1": rec["tolerated"] = True
open(f, "a").write(json.dumps(rec) + "\n")
EOF
  if ((rc != 0)); then
    [[ ${TOLERATE:-0} == 1 ]] || failed=1
    log "$name FAILED (rc $rc, ${secs}s; $logf):"
    tail -n 5 "$logf" | sed 's/^/    /' >&2
  else
    log "$name ok (${secs}s)"
  fi
  write_summary
  return "$rc"
}

# --- environment, our Debian libraries, LibTorch ---
DEBS=${GPU_CHECK_DEBS:-$SRC/.gpudeps}
if compgen -G "$DEBS/*.deb" >/dev/null && [[ ! -f /opt/deps/.gpu-check-unpacked ]]; then
  mkdir -p /opt/deps
  for f in "$DEBS"/*.deb; do dpkg -x "$f" /opt/deps || log "could not unpack $f"; done
  touch /opt/deps/.gpu-check-unpacked
fi
PREFIX=()
if [[ -d /opt/deps/usr ]]; then
  PREFIX+=(/opt/deps/usr)
  export LD_LIBRARY_PATH=/opt/deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if [[ -z ${TORCH_PREFIX:-} ]]; then
  TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
fi
[[ -n $TORCH_PREFIX && -d $TORCH_PREFIX ]] && PREFIX+=("$TORCH_PREFIX")
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=/usr/local/cuda/bin:$PATH; fi
DATA=()
for d in /usr/share/datasets/fashion-mnist /opt/deps/usr/share/datasets/fashion-mnist; do
  if [[ -d $d ]]; then DATA=(--set "data.path=$d"); break; fi
done
((${#DATA[@]})) || DATA=(--set data.dataset=synthetic)
log "device $DEVICE, out $OUT, work $WORK, build $BUILD_DIR, prefix ${PREFIX[*]:-(default)}, data ${DATA[*]}"

CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release)
((${#PREFIX[@]})) && CMAKE_ARGS+=("-DCMAKE_PREFIX_PATH=$(IFS=';'; echo "${PREFIX[*]}")")
if [[ $DEVICE == cuda ]]; then
  # Hopper (H100/H200) only: one architecture keeps anything CMake compiles for CUDA small.
  CMAKE_ARGS+=(-DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}")
  # c10d's NCCL header includes <nccl.h>: PyTorch's wheels keep it beside the nvidia-nccl package,
  # not in the CUDA toolkit; add it where the toolkit lacks it.
  cuda_inc=$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")/include
  if [[ ! -f $cuda_inc/nccl.h && ! -f /usr/include/nccl.h ]]; then
    nccl_inc=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for h in glob.glob(os.path.join(base, "nvidia", "**", "include", "nccl.h"), recursive=True):
        print(os.path.dirname(h)); raise SystemExit
EOF
)
    [[ -n $nccl_inc ]] && CMAKE_ARGS+=("-DCMAKE_CXX_FLAGS=-isystem $nccl_inc" "-DNCCL_ROOT=$nccl_inc") &&
      log "nccl.h from $nccl_inc"
  fi
fi

step env 30 env -- bash -c 'uname -a; nproc; free -g | head -2; command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader;
  python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())" 2>&1 | tail -1;
  command -v nvcc >/dev/null && nvcc --version | tail -2; cmake --version | head -1; ninja --version 2>/dev/null | sed "s/^/ninja /"; c++ --version | head -1'

# --- build and tests ---
build_ok=1
if [[ ${GPU_CHECK_SKIP_BUILD:-0} != 1 ]]; then
  gen=()
  [[ -f $BUILD_DIR/CMakeCache.txt ]] || gen=(-G Ninja)
  step configure 120 build -- cmake -S "$SRC" -B "$BUILD_DIR" "${gen[@]}" "${CMAKE_ARGS[@]}" || build_ok=0
  ((build_ok)) && { step build 360 build -- cmake --build "$BUILD_DIR" -j "$JOBS" || build_ok=0; }
fi
if ((build_ok)) && [[ -x $BIN ]]; then
  step version 30 env -- "$BIN" --version
  [[ ${GPU_CHECK_SKIP_TESTS:-0} == 1 ]] ||
    step ctest 240 ctest -- ctest --test-dir "$BUILD_DIR" -j "$JOBS" --timeout 120 --output-on-failure
else
  log "no build: the remaining steps are skipped"
  write_summary
  exit 1
fi

# --- the CUDA paths for real ---
TINY=(--config configs/tiny.yaml "${DATA[@]}" --set train.log_every=50 --set train.checkpoint_every=100000
      --set "train.device=$DEVICE")
RUNS=$WORK/runs
first_run=""
for p in "${PRECISIONS[@]}"; do
  if step "train-$p" 150 train "$RUNS/$p" -- "$BIN" train "${TINY[@]}" --set "train.steps=$STEPS" \
       --set "train.precision=$p" --run-dir "$RUNS/$p" --overwrite; then
    [[ -z $first_run && -f $RUNS/$p/config.yaml ]] && first_run=$RUNS/$p
  fi
done
if [[ -n $first_run ]]; then
  prec=${PRECISIONS[0]}
  for spec in ddim:50 dpmpp-2m:20; do
    sampler=${spec%%:*}
    if step "sample-$sampler" 90 sample "$WORK/samples-$sampler" -- "$BIN" sample --checkpoint "$first_run" \
         --sampler "$sampler" --steps "${spec##*:}" --num 64 --seed 1 --device "$DEVICE" --precision "$prec" \
         --out "$WORK/samples-$sampler"; then
      cp "$WORK/samples-$sampler/grid.png" "$OUT/grid-$sampler.png" 2>/dev/null
    fi
  done
  n_eval=64
  [[ $DEVICE == cpu ]] && n_eval=8
  step eval-bpd 120 eval -- "$BIN" eval --checkpoint "$first_run" --metrics bpd --num-images "$n_eval" \
    --batch-size 64 --device "$DEVICE" --format json --out "$WORK/eval"
fi

# Speed: the quickstart UNet (CUDA: bf16, plus the CPU for comparison), tiny on the CPU-only check.
if [[ $DEVICE == cuda ]]; then
  step bench-train 120 bench -- "$BIN" bench train -c configs/fashion-mnist-quick.yaml "${DATA[@]}" \
    --set train.device=cuda --set train.precision=bf16 --steps 50 --warmup 10 --name quick-cuda-bf16
  step bench-train-cpu 90 bench -- "$BIN" bench train -c configs/fashion-mnist-quick.yaml "${DATA[@]}" \
    --set train.device=cpu --steps 5 --warmup 2 --name quick-cpu-fp32
  step bench-sample 90 bench -- "$BIN" bench sample -c configs/fashion-mnist-quick.yaml "${DATA[@]}" \
    --set train.device=cuda --set sample.precision=bf16 --steps 20 --num 64 --sampler ddim --sampler dpmpp-2m
else
  step bench-train 90 bench -- "$BIN" bench train -c configs/tiny.yaml "${DATA[@]}" --set train.device=cpu \
    --steps 5 --warmup 2 --name tiny-cpu
  step bench-sample 90 bench -- "$BIN" bench sample -c configs/tiny.yaml "${DATA[@]}" --set train.device=cpu \
    --steps 5 --num 8 --sampler ddim --sampler dpmpp-2m
fi

# One rank under torchrun with the distributed backend. train.dist_backend is new: a failure here
# is recorded ("tolerated": true) but does not fail the run.
if command -v torchrun >/dev/null; then
  # torchrun's stores ask for libuv, which some builds of PyTorch lack (Debian's): there, torchrun
  # itself runs with TCPStore's use_libuv turned off (USE_LIBUV=0 does not reach those stores).
  TORCHRUN=(torchrun)
  if ! timeout 30 python3 -c 'import torch.distributed as d; d.TCPStore("127.0.0.1", 0, 1, True, use_libuv=True)' >/dev/null 2>&1; then
    TORCHRUN=(python3 -c 'import sys, functools, torch.distributed as d
d.TCPStore = functools.partial(d.TCPStore, use_libuv=False)
from torch.distributed.run import main
sys.argv[0] = "torchrun"
main()')
  fi
  TOLERATE=1 step "dist-$BACKEND" 120 train "$RUNS/dist-$BACKEND" -- "${TORCHRUN[@]}" --nproc_per_node=1 \
    --no_python "$BIN" train "${TINY[@]}" --set train.steps=100 --set "train.dist_backend=$BACKEND" \
    --run-dir "$RUNS/dist-$BACKEND" --overwrite
else
  TOLERATE=1 step "dist-$BACKEND" 5 env -- sh -c 'echo "torchrun not found"; exit 127'
fi

write_summary
sed 's/^/  /' "$OUT/summary.txt"
log "summary: $SUMMARY (work folder: $WORK)"
exit "$failed"
