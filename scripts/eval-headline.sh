#!/usr/bin/env bash
# The shipped model's headline rows of docs/EVALUATION.md (resumable: rerun to go on).
# Usage: scripts/eval-headline.sh [DATA_DIR]   (default ../shared/data/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/mnist}
cargo build --release -p pursamere-cli
for row in linf03 l2 linf01; do
  ./target/release/pursamere eval --protocol docs/eval/mnist-standard-$row.toml \
    --data "$DATA" --out runs/eval-std-$row --summary docs/eval/summary.json
done
