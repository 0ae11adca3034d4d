#!/usr/bin/env bash
# Dense vs convolutional MNIST pairs, measured the way docs/TRAINING.md measures the
# shipped dense pair (export, inspect, verify on the TEST split). See the
# "Convolutional networks" section of docs/TRAINING.md for the figures.
#
# Trainings (run them first, one at a time; each writes a checkpoint per epoch and
# continues with --resume):
#   pursamere train --data ../shared/data/mnist --out runs/conv-den-s --what denoiser \
#       --den-arch conv16s2,conv16,up --residual --den-epochs 8
#   pursamere train --data ../shared/data/mnist --out runs/conv-cls --what classifier \
#       --cls-arch conv32,conv32s2,conv64s2,conv64s2,dense128 --cls-epochs 2
#   pursamere train --data ../shared/data/mnist --out runs/dense-cls --what classifier
#       (the shipped classifier's recipe: 784-256-256-10, 20 epochs, seed 0)
#
# Usage: scripts/conv-compare.sh [PAIR...]   (default: all four pairs)
#   PURSAMERE  the binary (default ./target/release/pursamere)
#   DATA       MNIST directory (default ../shared/data/mnist)
#   COUNT      test images for verify (default 10000, as in docs/TRAINING.md)
#   CONV_DEN   conv denoiser checkpoint (default runs/conv-den-s/denoiser.ckpt)
# Writes runs/conv-compare/<pair>/{model.psm,model.safetensors,export.log,inspect.txt,verify.txt}.
set -euo pipefail

P=${PURSAMERE:-./target/release/pursamere}
DATA=${DATA:-../shared/data/mnist}
COUNT=${COUNT:-10000}
CONV_DEN=${CONV_DEN:-runs/conv-den-s/denoiser.ckpt}
OUT=runs/conv-compare

# pair name -> "classifier run | denoiser file"
declare -A PAIRS=(
    [dense-dense]="runs/dense-cls|fixtures/mnist.psm"
    [conv-dense]="runs/dense-cls|$CONV_DEN"
    [conv-conv]="runs/conv-cls|$CONV_DEN"
    [dense-conv]="runs/conv-cls|fixtures/mnist.psm"
)
ORDER=(dense-dense conv-dense conv-conv dense-conv)
[ $# -gt 0 ] && ORDER=("$@")

for pair in "${ORDER[@]}"; do
    spec=${PAIRS[$pair]:?unknown pair $pair (dense-dense, conv-dense, conv-conv, dense-conv)}
    run=${spec%%|*}
    den=${spec##*|}
    dir=$OUT/$pair
    mkdir -p "$dir"
    echo "== $pair: denoiser $den, classifier $run/classifier.ckpt" >&2
    "$P" export --run "$run" --denoiser "$den" --out "$dir" --force 2>&1 | tee "$dir/export.log" >&2
    model=$dir/model.psm
    if [ "$pair" = dense-dense ]; then
        # The shipped classifier's recipe retrained gives the shipped file bit for bit;
        # verify the shipped file itself, with its original float weights (an export
        # with --denoiser X.psm stores the *dequantised* denoiser as its float weights).
        cmp "$model" fixtures/mnist.psm && echo "identical to fixtures/mnist.psm" | tee "$dir/cmp.txt" >&2
        model=fixtures/mnist.psm
    fi
    "$P" inspect --model "$model" > "$dir/inspect.txt"
    start=$(date +%s)
    "$P" verify --model "$model" --data "$DATA" --count "$COUNT" 2>&1 | tee "$dir/verify.txt" >&2 || true
    echo "verify wall time: $(( $(date +%s) - start )) s (count $COUNT)" | tee -a "$dir/verify.txt" >&2
done
