#!/usr/bin/env bash
# The purifier in front of the GPU-trained PGD-AT CNN (runs/gpu-pgd,
# scripts/gpu-robust-train.sh), chosen on the TRAIN hold-out: every setting on the
# same 60 hold-out images, L∞ 0.3 and L2 2.0, the cheaper tuning suite
# (docs/eval/mnist-gpucnn-tune-*.toml). Each setting runs in shards side by side
# (one process per shard); the records are resumable, so rerunning goes on.
#
#   scripts/tune-gpucnn.sh PURSAMERE DATA_DIR MODELS_DIR OUT_DIR SECONDS
#
# MODELS_DIR holds NAME/model.psm for the exports below (made by
#   pursamere export --run runs/gpu-pgd --denoiser fixtures/mnist.psm ... --out runs/gpucnn/NAME
# with the flags of docs/EVALUATION.md); results go to OUT_DIR/NAME-DEFENCE-SHARD,
# and the script stops every shard after SECONDS (what finished stays).
set -u
bin=$1 data=$2 models=$3 out=$4 budget=$5
mkdir -p "$out"
shard() { # name model protocol start count
  "$bin" eval --protocol "docs/eval/mnist-gpucnn-tune-$3.toml" --data "$data" \
    --model "$models/$2/model.psm" --start "$4" --count "$5" --out "$out/$1" \
    > "$out/$1.log" 2>&1 &
}
for s in 0 30; do
  shard "none-$s" l2-d1 none $s 30
  shard "denoise-$s" l2-d1 denoise $s 30
  for m in linf-d005 linf-d01 l2-d05 l2-d1 l2-d15; do shard "$m-ere-$s" $m ere $s 30; done
done
# SAM costs about twice as much per image: four shards.
for s in 0 15 30 45; do shard "l2-d1-sam-$s" l2-d1 sam $s 15; done
end=$(($(date +%s) + budget))
while [ "$(date +%s)" -lt "$end" ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
for p in $(jobs -rp); do kill "$p"; done
wait
echo "tuning grid stopped at $(date -u +%FT%TZ)"
