#!/usr/bin/env bash
# One lent GPU session, start to end (docs/TRAINING.md "GPU"): sets up the CUDA
# binaries built on a machine without a GPU, runs the CPU-vs-CUDA smoke test and
# then the adversarial trainings of scripts/gpu-robust-train.sh.
#
#   scripts/gpu-session.sh BUNDLE OUT_DIR TRAIN_SECONDS [RUN...]
#
# BUNDLE (made by `scripts/gpu-session.sh --bundle BUNDLE CUDA_TARGET CPU_TARGET
# DATA_DIR` where the binaries were built) holds bin/pursamere (built with
# --features cuda), bin/smoke-cpu and bin/smoke-cuda (the `smoke` example of
# pursamere-trainer without and with cuda), cuh/dfdx-*/ (dfdx's kernel headers,
# which its run-time compiler reads at the paths of the build), data/mnist and, when
# DATA_DIR has a fashion-mnist/ sibling, data/fashion-mnist (training files only).
# OUT_DIR gets smoke.txt and train/ (RUN.ckpt, logs.tar.gz).
set -u
if [ "${1:-}" = --bundle ]; then
  bundle=$2 cuda=$3 cpu=$4 data=$5
  mkdir -p "$bundle/bin" "$bundle/data"
  cp "$cuda/release/pursamere" "$bundle/bin/pursamere"
  cp "$cuda/release/examples/smoke" "$bundle/bin/smoke-cuda"
  cp "$cpu/release/examples/smoke" "$bundle/bin/smoke-cpu"
  for d in "$cuda"/release/build/dfdx-*/out; do
    h=$(basename "$(dirname "$d")")
    if ls "$d"/*.cuh > /dev/null 2>&1; then
      mkdir -p "$bundle/cuh/$h" && cp "$d"/*.cuh "$bundle/cuh/$h/"
      # the absolute path the binaries were built with, to recreate there
      echo "$(cd "$d" && pwd)" > "$bundle/cuh/$h/PATH"
    fi
  done
  # Training reads only the train-* files; the test images stay behind (the carry
  # to the GPU machine is limited to 64 MiB). Fashion-MNIST's, from DATA_DIR's sibling
  # fashion-mnist/ (where gpu-robust-train.sh's fashion-* runs read them), come too
  # when it exists: 26 MB, with MNIST's 10 MB and the stripped binaries (21 MB) under
  # the limit.
  mkdir -p "$bundle/data/mnist"
  cp "$data"/train-* "$bundle/data/mnist/"
  fashion=$(dirname "$data")/fashion-mnist
  if ls "$fashion"/train-* > /dev/null 2>&1; then
    mkdir -p "$bundle/data/fashion-mnist" && cp "$fashion"/train-* "$bundle/data/fashion-mnist/"
  fi
  strip "$bundle"/bin/* 2> /dev/null || echo "strip not found: the binaries stay unstripped" >&2
  du -sh "$bundle"
  # the CUDA root the binaries were built with (its include/ is recreated there)
  echo "${CUDA_ROOT:?set CUDA_ROOT to the toolkit the binaries were built with}" > "$bundle/CUDA_ROOT"
  exit 0
fi
bundle=$(cd "$1" && pwd) out=$2 seconds=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
# The run-time libraries and the headers at the build's paths.
lib=$(ls -d /usr/local/cuda*/targets/x86_64-linux/lib 2> /dev/null | head -1)
inc=$(ls -d /usr/local/cuda*/targets/x86_64-linux/include /usr/local/cuda*/include 2> /dev/null | head -1)
export LD_LIBRARY_PATH=${lib}:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
root=$(cat "$bundle/CUDA_ROOT")
mkdir -p "$root" && ln -sfn "$inc" "$root/include"
for d in "$bundle"/cuh/*/; do
  p=$(cat "$d/PATH")
  mkdir -p "$p" && cp "$d"/*.cuh "$p/"
done
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/smoke.txt"
t=$(date +%s)
SMOKE_CPU_BIN=$bundle/bin/smoke-cpu SMOKE_CUDA_BIN=$bundle/bin/smoke-cuda \
  timeout 120 "$here/scripts/gpu-smoke.sh" >> "$out/smoke.txt" 2>&1
echo "smoke rc $? after $(($(date +%s) - t)) s" | tee -a "$out/smoke.txt"
tail -3 "$out/smoke.txt"
"$here/scripts/gpu-robust-train.sh" "$bundle/bin/pursamere" "$bundle/data/mnist" "$out/train" "$seconds" "$@"
