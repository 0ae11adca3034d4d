#!/usr/bin/env bash
# The shipped default's test rows (docs/EVALUATION.md "Robust stack"), with the standard
# suite of the current engine (FAB-T included since engine version 4), into runs/ and
# docs/eval/summary.json. Resumable: rerun to go on. About 2.5 h on 2 cores.
# Usage: scripts/eval-robust-default.sh [MNIST_DIR] [FASHION_DIR] [SUFFIX]
#   MNIST_DIR default ../shared/data/mnist, FASHION_DIR ../shared/data/fashion-mnist;
#   runs go to runs/eval-robust-{linf,l2,fashion}-SUFFIX (default: v4).
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${1:-../shared/data/mnist}
FASHION=${2:-../shared/data/fashion-mnist}
SUFFIX=${3:-v4}
B=./target/release/pursamere
cargo build --release -p pursamere-cli
$B eval --protocol docs/eval/mnist-wide.toml --data "$MNIST" --model fixtures/previous/mnist-robust-wide-e8.psm \
  --out runs/eval-robust-linf-$SUFFIX --summary docs/eval/summary.json --classifier cnn106k-pgd-max
$B eval --protocol docs/eval/mnist-wide-l2.toml --data "$MNIST" --model fixtures/previous/mnist-robust-wide-e8.psm \
  --out runs/eval-robust-l2-$SUFFIX --summary docs/eval/summary.json --classifier cnn106k-pgd-max
# The Fashion-MNIST robust classifier is not shipped (runs/ is not committed): train it
# with docs/TRAINING.md "Second GPU session" (fashion-wide-e16) and export it first.
if [ -f runs/gpu2-fashion-wide-e16/export/model.psm ]; then
  $B eval --protocol docs/eval/fashion-robust.toml --data "$FASHION" --data-name fashion-mnist \
    --model runs/gpu2-fashion-wide-e16/export/model.psm --out runs/eval-robust-fashion-$SUFFIX \
    --summary docs/eval/summary.json --classifier fashion-cnn106k-pgd-max
fi
