#!/usr/bin/env bash
# Cortex-M4F cycle estimate per image and per layer (forward and VJP) for a model,
# from the firmware's exact dynamic instruction mix under QEMU and the Cortex-M4
# timing model documented in scripts/fw_cycle_estimate.py. The firmware is built with
# the `layer-profile` feature and one image; QEMU logs every executed block (a few
# hundred MB in a temporary directory, deleted afterwards). Needs qemu-system-arm, the
# thumbv7em-none-eabihf target and python3. About 2 minutes for the shipped CNN.
#
#   scripts/fw-cycle-estimate.sh [MODEL.psm [NETWORK:LAYER]]   # default: fixtures/mnist-robust-int8.psm
#
# With NETWORK:LAYER (e.g. classifier:0) it also lists the costliest translated
# blocks of that layer's forward pass and keeps the firmware in
# target/fw-cycle-estimate.elf, to read the addresses against
#   llvm-objdump -d --triple=thumbv7em-none-eabihf --mattr=+dsp,+vfp4d16sp target/fw-cycle-estimate.elf
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$(realpath "${1:-$root/fixtures/mnist-robust-int8.psm}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$root/tests/firmware" &&
  PURSAMERE_MODEL="$model" PURSAMERE_FW_IMAGES=1 CARGO_TARGET_DIR="$work/target" \
    cargo build --release --quiet --features layer-profile)
elf="$work/target/thumbv7em-none-eabihf/release/pursamere-firmware"
qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
  -semihosting-config enable=on,target=native -icount shift=0 \
  -d in_asm,exec,nochain -D "$work/qemu.log" -kernel "$elf" > "$work/stdout.txt"
grep -E "^(systick_ticks_per_image|layer )" "$work/stdout.txt" | sed 's/^/# /'
if [ -n "${2:-}" ]; then
  mkdir -p "$root/target" && cp "$elf" "$root/target/fw-cycle-estimate.elf"
fi
python3 "$root/scripts/fw_cycle_estimate.py" "$work/qemu.log" "$work/stdout.txt" ${2:+"$2"}
