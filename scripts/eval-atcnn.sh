#!/usr/bin/env bash
# The adversarially trained CNN (runs/cnn-at, trained with the command in
# docs/EVALUATION.md) alone and behind the shipped denoiser: exports, the purifier
# choice on the TRAIN hold-out, and the test rows. Resumable: rerun to go on.
# Usage: scripts/eval-atcnn.sh tune|test [DATA_DIR]   (default ../shared/data/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:?tune or test}
DATA=${2:-../shared/data/mnist}
P=./target/release/pursamere
cargo build --release -p pursamere-cli
# The purifier settings tried in front of the CNN (δ, K, M); the shipped denoiser.
export_one() { # name radius iters noise_samples
  [ -f runs/atcnn-$1/model.psm ] || $P export --run runs/cnn-at --denoiser fixtures/mnist.psm \
    --radius "$2" --iters "$3" --noise-samples "$4" --out runs/atcnn-$1
}
export_one d005 0.05 10 4
export_one d01 0.1 10 4
export_one d01-k5m2 0.1 5 2
[ -f runs/atcnn-l2b1/model.psm ] || $P export --run runs/cnn-at --denoiser fixtures/mnist.psm \
  --ball l2 --radius 1.0 --out runs/atcnn-l2b1
case $STAGE in
  tune)
    $P eval --protocol docs/eval/mnist-atcnn-tune-none.toml --data "$DATA" \
      --model runs/atcnn-d01/model.psm --out runs/eval-atcnn-tune-none &
    for m in d005 d01 d01-k5m2 l2b1; do
      $P eval --protocol docs/eval/mnist-atcnn-tune.toml --data "$DATA" \
        --model runs/atcnn-$m/model.psm --out runs/eval-atcnn-tune-$m &
    done
    wait
    # SAM (ρ > 0) on the best purified setting.
    $P eval --protocol docs/eval/mnist-atcnn-tune-sam.toml --data "$DATA" \
      --model runs/atcnn-l2b1/model.psm --out runs/eval-atcnn-tune-sam ;;
  test)
    $P eval --protocol docs/eval/mnist-atcnn-linf03.toml --data "$DATA" \
      --model runs/atcnn-d005/model.psm --out runs/eval-atcnn-linf03 --summary docs/eval/summary.json --classifier adversarial-cnn
    $P eval --protocol docs/eval/mnist-atcnn-l2.toml --data "$DATA" \
      --model runs/atcnn-d005/model.psm --out runs/eval-atcnn-l2 --summary docs/eval/summary.json --classifier adversarial-cnn
    # The L2 purification ball (the purified setting the hold-out ranked first).
    for row in linf03 l2; do
      $P eval --protocol docs/eval/mnist-atcnn-l2ball-$row.toml --data "$DATA" \
        --model runs/atcnn-l2b1/model.psm --out runs/eval-atcnn-l2ball-$row \
        --summary docs/eval/summary.json --classifier adversarial-cnn
    done ;;
  *) echo "usage: $0 tune|test [DATA_DIR]" >&2; exit 2 ;;
esac
