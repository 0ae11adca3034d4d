#!/usr/bin/env bash
# One exact-gradient attack step through the shipped purifier (K 10, M 4, batch 32):
# ours (criterion, `full_step`) and a JIT-compiled JAX peer, back to back on the same
# machine, so the ratio is fair whatever else the machine is doing.
# Needs: pip install jax jaxlib
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p pursamere-trainer --bench attack_cost -- 'full_step|purify_vjp' 2>&1 |
  grep -E "^attack_cost|time:"
python3 scripts/peer_attack_cost_jax.py 32 1 2>&1 | grep -E "^(jax|batch)"
