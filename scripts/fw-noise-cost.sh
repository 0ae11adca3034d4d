#!/usr/bin/env bash
# Instructions per noise value on the Cortex-M4F (QEMU, -icount shift=0), for both
# noise generators on the shipped weights: fixtures/mnist.psm (format version 1, f64
# Box–Muller) and the same model after `pursamere upgrade` (version 3, f32).
#
# The firmware times one noise vector (784 values) on its own after the images
# (`noise_ticks` line; one SysTick tick = 40 instructions), and the whole purify +
# classify per image at the model's K = 10, M = 4 (`systick_ticks_per_image`).
# Needs qemu-system-arm and the thumbv7em-none-eabihf target. About 3 minutes.
#
#   scripts/fw-noise-cost.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release -q -p pursamere-cli --manifest-path "$root/Cargo.toml"
"$root/target/release/pursamere" upgrade --model "$root/fixtures/mnist.psm" --out "$work/f32" > /dev/null
mkdir "$work/f64" && cp "$root/fixtures/mnist.psm" "$work/f64/"
run() {  # model → the firmware's log (2 images)
  (cd "$root/tests/firmware" &&
    PURSAMERE_MODEL="$1" PURSAMERE_FW_IMAGES=2 CARGO_TARGET_DIR="$work/target" \
      cargo run --release --quiet 2>&1)
}
for g in f64 f32; do
  log=$(run "$work/$g/mnist.psm")
  echo "$log" | awk -v g="$g" '
    /^systick_ticks_per_image/ {img = $2 * 40}
    /^noise_ticks/ {noise = $2 * 40 / $4}
    END {printf "%s: %.0f instructions per noise value; purify (K = 10, M = 4) + classify %d instructions per image\n", g, noise, img}'
done
