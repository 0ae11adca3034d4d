#!/usr/bin/env bash
# GPU smoke test: the same few training epochs on the CPU and on CUDA (same seed,
# same data, same host-side randomness); every loss must agree within a relative
# tolerance of 1e-2 plus 1e-4 absolute (float summation order differs between the devices
# and the differences compound over epochs).
# Needs an NVIDIA GPU and the CUDA toolkit (nvcc on PATH). Usage: scripts/gpu-smoke.sh
# On a GPU machine without Rust, build the two `smoke` examples elsewhere and
# name them: SMOKE_CPU_BIN=… SMOKE_CUDA_BIN=… scripts/gpu-smoke.sh
# (docs/TRAINING.md "GPU" says how the CUDA one is built without a local GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
if [ -n "${SMOKE_CPU_BIN:-}" ] && [ -n "${SMOKE_CUDA_BIN:-}" ]; then
  "$SMOKE_CPU_BIN" > "$out/cpu.txt" &
  cpu=$!
  "$SMOKE_CUDA_BIN" > "$out/cuda.txt"
  wait "$cpu"
else
  cargo run --release -q -p pursamere-trainer --example smoke > "$out/cpu.txt"
  cargo run --release -q -p pursamere-trainer --features cuda --example smoke > "$out/cuda.txt"
fi
if [ "$(wc -l < "$out/cpu.txt")" -ne "$(wc -l < "$out/cuda.txt")" ] || [ ! -s "$out/cpu.txt" ]; then
  echo "FAIL: the CPU and CUDA runs printed different numbers of lines"; exit 1
fi
paste "$out/cpu.txt" "$out/cuda.txt" | awk '
  { for (i = 5; i <= 7; i += 2) {
      a = $i; b = $(i + 7); d = a - b; if (d < 0) d = -d; s = (a < 0 ? -a : a); if (s < 1e-6) s = 1e-6
      printf "%s epoch %s %s cpu %.6g cuda %.6g rel %.2e\n", $1, $3, $(i - 1), a, b, d / s
      if (d > 1e-2 * s + 1e-4) bad = 1 } }
  END { if (bad) { print "FAIL: CPU and CUDA losses differ"; exit 1 } else print "PASS" }'
