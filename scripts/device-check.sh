#!/usr/bin/env bash
# The first thing to run on a GPU host (segtune's 3D ops have run only on CPUs); never part of CI. One short script that
# needs no Rust toolchain and no network: prebuilt binaries, this repository's checkout (for
# the PyTorch twin of the benchmark) and the host's PyTorch environment.
#
#   scripts/device-check.sh OUT_DIR
#
# Steps, each logged to OUT_DIR/<step>.log and summed up in OUT_DIR/summary.txt
# (`<step> rc=<exit code> seconds=<wall>` and the step's key figure):
#   1. gpu-check     `segtune gpu-check --generic`: the device opens, the U-Net's logits there
#                    equal the CPU kernels', 20 training steps there lower the loss and make
#                    no host round trip. `--generic` runs the generic ops tier: what CUDA runs
#                    anyway (OpsPath::Auto picks it for any non-CPU device), and what makes
#                    the CPU stand-in (SEGTUNE_DEVICE=cpu) check that path, not the CPU
#                    kernels. Its lines, the ops path included, go into the summary.
#   2. data          a tiny synthetic CT task, preprocessed into OUT_DIR/work/store
#   3. train, eval   one short `segtune train` and `segtune eval` on the device (mean Dice)
#   4. bench-*       the training step (batch 2x1xP^3) and the sliding window (96^3 windows,
#                    overlap 0.25) of segtune (`bench_unet`) and of PyTorch/MONAI
#                    (shared/segmodel/benches/torch_reference.py) on the same device, with
#                    the peak GPU memory sampled by nvidia-smi; OUT_DIR/results.jsonl
#
# Environment:
#   SEGTUNE_BIN     folder with `segtune` built with the cuda feature (scripts/build-cuda) and,
#                   for step 4, `bench_unet` (scripts/build-cuda --bench); default
#                   target/cuda/release
#   SEGTUNE_DEVICE  cuda (default), cuda:N, or cpu (to try the script on a CPU build)
#   PYTHON          a Python with torch (and monai for the sliding window); default python3
#   PATCH           training patch edge of the benchmark (default 96)
#   VOLUME          DxHxW of the sliding-window volume (default 160x192x192: 18 windows)
#   REPS            timed repetitions (default 5 for training, 2 for the sliding window)
#   STEP_TIMEOUT    seconds per step before it is stopped (default 300)
#
# The CUDA 13 libraries (libcudart.so.13, libcublas.so.13, libcurand.so.10, ...) are taken
# from the host's PyTorch environment (`import nvidia`), added to LD_LIBRARY_PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/device-check.sh OUT_DIR}
mkdir -p "$out/work" && out=$(cd "$out" && pwd)
bin=$(cd "${SEGTUNE_BIN:-target/cuda/release}" 2>/dev/null && pwd) ||
  { echo "device-check: no folder ${SEGTUNE_BIN:-target/cuda/release} (set SEGTUNE_BIN)" >&2; exit 2; }
[ -x "$bin/segtune" ] || { echo "device-check: no $bin/segtune (set SEGTUNE_BIN)" >&2; exit 2; }
device=${SEGTUNE_DEVICE:-cuda}
py=${PYTHON:-python3}
patch=${PATCH:-96}
volume=${VOLUME:-160x192x192}
reps=${REPS:-}
limit=${STEP_TIMEOUT:-300}
summary="$out/summary.txt"
: > "$summary"
: > "$out/results.jsonl"

if [ "$device" != cpu ]; then
  nv=$("$py" -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null) || nv=""
  if [ -n "$nv" ]; then
    for d in "$nv"/cu13/lib "$nv"/*/lib; do
      [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
  else
    echo "device-check: $py has no 'nvidia' package; using the system's CUDA libraries" >&2
  fi
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
fi
{
  echo "device=$device bin=$bin patch=$patch volume=$volume"
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  uname -a
  nproc
} > "$out/environment.txt"

gpu_sampler=""
start_gpu_sampler() { # $1: file; samples the used GPU memory (MiB) every 0.2 s
  gpu_sampler=""
  command -v nvidia-smi > /dev/null && [ "$device" != cpu ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$1" 2>/dev/null &
  gpu_sampler=$!
}
stop_gpu_sampler() {
  [ -n "$gpu_sampler" ] && kill "$gpu_sampler" 2>/dev/null && wait "$gpu_sampler" 2>/dev/null
  gpu_sampler=""
}
peak() { sort -n "$1" 2>/dev/null | tail -1; }

failed=0
# step NAME CMD...: runs CMD with a time limit, its output in OUT/NAME.log; records rc and time.
step() {
  local name=$1; shift
  local t0 t1 rc
  t0=$(date +%s.%N)
  start_gpu_sampler "$out/$name.gpu-mib"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  stop_gpu_sampler
  t1=$(date +%s.%N)
  local extra=""
  [ -s "$out/$name.gpu-mib" ] && extra=" peak_gpu_mib=$(peak "$out/$name.gpu-mib")"
  printf '%s rc=%d seconds=%s%s\n' "$name" "$rc" "$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")" "$extra" | tee -a "$summary"
  [ "$rc" -eq 0 ] || failed=1
  return "$rc"
}
# keep NAME: appends NAME's RESULT line (with the sampled GPU peak) to results.jsonl.
keep() {
  local res
  res=$(grep '^RESULT ' "$out/$1.log" | tail -1 | cut -d' ' -f2-)
  [ -n "$res" ] || return 0
  "$py" -c 'import json, sys; r = json.loads(sys.argv[1]); p = sys.argv[2]
if p: r["sampled_peak_gpu_mib"] = int(p)
print(json.dumps(r))' "$res" "$(peak "$out/$1.gpu-mib")" >> "$out/results.jsonl"
  grep '^RESULT ' "$out/$1.log" | tail -1 >> "$summary"
}

# 1. The device and the numerics.
step gpu-check "$bin/segtune" gpu-check --device "$device" --generic
grep -E '^(ok |gpu-check |error)' "$out/gpu-check.log" | sed 's/^/  /' >> "$summary"

# 2. A tiny task in a store of its own.
work="$out/work"
export SEGTUNE_STORE="$work/store"
id=""
if step data-synth "$bin/segtune" data synth --kind ct-organ --cases 6 --size 48 --out "$work/task" &&
   step data-preprocess "$bin/segtune" data preprocess "$work/task"; then
  id=$(tail -1 "$out/data-preprocess.log")
fi

# 3. One short job on the device, then its evaluation there.
if [ -n "$id" ]; then
  step train "$bin/segtune" train --dataset "$id" --device "$device" --epochs 10 \
    --patches-per-epoch 8 --patch 32 --out "$work/model.safetensors" &&
  step eval "$bin/segtune" eval --dataset "$id" --device "$device" \
    --checkpoint "$work/model.safetensors" &&
  echo "eval mean Dice $(tail -1 "$out/eval.log")" | tee -a "$summary"
fi

# 4. The benchmark, segtune and PyTorch on the same device, each in its own process.
bench_dev=cpu
[ "$device" != cpu ] && bench_dev=cuda
if [ -x "$bin/bench_unet" ]; then
  SEGMODEL_BENCH_DEVICE=$bench_dev SEGMODEL_BENCH_PATCH=$patch \
    step bench-train-segtune "$bin/bench_unet" train "${reps:-5}" && keep bench-train-segtune
  SEGMODEL_BENCH_DEVICE=$bench_dev \
    step bench-sliding-segtune "$bin/bench_unet" sliding "$volume" "${reps:-2}" && keep bench-sliding-segtune
else
  echo "bench-*-segtune skipped: no $bin/bench_unet (scripts/build-cuda --bench)" | tee -a "$summary"
fi
ref=shared/segmodel/benches/torch_reference.py
if "$py" -c 'import torch' 2> /dev/null; then
  TORCH_DEVICE=$bench_dev TRAIN_PATCH=$patch THREADS=$(nproc) \
    step bench-train-pytorch "$py" "$ref" train "${reps:-5}" && keep bench-train-pytorch
  if "$py" -c 'import monai' 2> /dev/null; then
    TORCH_DEVICE=$bench_dev THREADS=$(nproc) \
      step bench-sliding-pytorch "$py" "$ref" sliding "$volume" "${reps:-2}" && keep bench-sliding-pytorch
  else
    echo "bench-sliding-pytorch skipped: $py has no monai" | tee -a "$summary"
  fi
else
  echo "bench-*-pytorch skipped: $py has no torch" | tee -a "$summary"
fi

# Side by side: segtune / PyTorch per benchmark (time; GPU memory where sampled).
"$py" - "$out/results.jsonl" <<'EOF' | tee -a "$summary"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for bench in ("train", "sliding"):
    r = {x["impl"]: x for x in rows if x["bench"] == bench}
    if "segtune" in r and "pytorch" in r:
        s, p = r["segtune"], r["pytorch"]
        line = f"{bench}: segtune {s['median_ms']:.1f} ms, pytorch {p['median_ms']:.1f} ms, " \
               f"time ratio {s['median_ms'] / p['median_ms']:.2f}, " \
               f"throughput ratio {p['median_ms'] / s['median_ms']:.2f}"
        sm, pm = s.get("sampled_peak_gpu_mib"), p.get("sampled_peak_gpu_mib")
        if sm and pm:
            line += f", sampled peak GPU memory {sm} vs {pm} MiB ({sm / pm:.2f}x)"
        print(line)
EOF
echo "device-check: $( [ $failed -eq 0 ] && echo passed || echo FAILED ); figures in $out" | tee -a "$summary"
exit $failed
