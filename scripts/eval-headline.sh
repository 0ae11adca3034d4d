#!/usr/bin/env bash
# The headline rows of docs/EVALUATION.md for the purifier shipped until 2026-11-26
# (fixtures/mnist.psm: dense denoiser + standard MLP classifier), filed under
# "standard" in docs/eval/summary.json (resumable: rerun to go on).
# Usage: scripts/eval-headline.sh [DATA_DIR]   (default ../shared/data/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
cargo build --release -p pursamere-cli
for row in linf03 l2 linf01; do
  ./target/release/pursamere eval --protocol docs/eval/mnist-standard-$row.toml \
    --data "$DATA" --model fixtures/mnist.psm --out runs/eval-std-$row \
    --summary docs/eval/summary.json --classifier standard
done
