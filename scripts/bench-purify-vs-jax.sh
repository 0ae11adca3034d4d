#!/usr/bin/env bash
# One purification + classification at batch 1 (784-256-256-784 residual denoiser,
# K = 20 SAM steps, M = 8 noise vectors; `cargo bench -p pursamere-core --bench
# purify`): the core's portable kernels, the host-side SIMD kernels chosen at run
# time (`pursamere-accel`, default build: no target-cpu flags), and a JIT-compiled
# JAX peer of the same computation at batch 1 and 256 — back to back, each pinned
# to the same single core, so the ratios are fair whatever else the machine does.
# Needs: pip install jax jaxlib. Usage: scripts/bench-purify-vs-jax.sh [CORE]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
core="${1:-1}"
pin=()
if command -v taskset >/dev/null; then pin=(taskset -c "$core"); fi
echo "== $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), pinned: ${pin[*]:-no}"
cargo bench -p pursamere-core --bench purify -- k20_m8_batch1_fast --list >/dev/null  # build first, unpinned
cargo bench -p pursamere-accel --bench purify_accel -- k20_m8 --list >/dev/null
"${pin[@]}" cargo bench -p pursamere-core --bench purify -- k20_m8_batch1_fast 2>&1 |
  grep -E "^purify|time:"
"${pin[@]}" cargo bench -p pursamere-accel --bench purify_accel -- k20_m8 2>&1 |
  grep -E "^purify|time:|not available"
# Like for like with the JAX script (best and median of five rounds), back to back:
cargo build --release -p pursamere-accel --example time_purify 2>/dev/null
for _ in 1 2; do
  "${pin[@]}" "$CARGO_TARGET_DIR/release/examples/time_purify"
  "${pin[@]}" python3 scripts/peer_purify_jax.py 1 256 2>&1 | grep -E "^(jax|batch)"
done
