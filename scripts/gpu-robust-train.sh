#!/usr/bin/env bash
# Adversarial training of the robust-stack classifiers on one CUDA GPU inside a
# fixed time budget (docs/EVALUATION.md "Robust stack"), for a lent GPU machine
# without Rust: the `pursamere` binary is built elsewhere with `--features cuda`
# (docs/TRAINING.md "GPU").
#
#   scripts/gpu-robust-train.sh PURSAMERE DATA_DIR OUT_DIR SECONDS
#
# 1. times a tenth of an epoch of the PGD-10 configuration (the probe);
#    (2026-11-26's run had `trades` — TRADES β 6 — where `max` is now: it tied
#    with `pgd`; docs/TRAINING.md has its flags and curve)
# 2. from that speed, picks the number of epochs E that lets the three runs below
#    finish, side by side on the one GPU, inside SECONDS from the script's start;
# 3. trains, each into OUT_DIR/NAME/classifier.ckpt (checkpointed every epoch,
#    so a run cut short keeps its last whole epoch; `pursamere train --resume`
#    with the same flags continues it):
#      pgd     — the CNN of docs/EVALUATION.md, PGD-AT (Madry), L∞ 0.3, 10 steps
#      max     — the same CNN, PGD-AT against L∞ 0.3 and L2 2.0 together
#                (--adversarial pgd-max; twice the attack cost per epoch)
#      board   — a CNN of the board's size (the classifier of fixtures/mnist-conv.psm), PGD-AT
# OUT_DIR gets NAME.ckpt for each run and logs.tar.gz (the logs NAME.log and
# plan.txt, with the probe's speed and the chosen E), refreshed every minute so
# that a machine taken back early still leaves them; the runs work in a
# temporary folder.
set -u
bin=$1 data=$2 final=$3 budget=$4
t0=$(date +%s)
mkdir -p "$final"
out=$(mktemp -d)
publish() {
  for run in pgd max board; do
    [ -f "$out/$run/classifier.ckpt" ] && cp "$out/$run/classifier.ckpt" "$final/$run.ckpt.tmp" &&
      mv "$final/$run.ckpt.tmp" "$final/$run.ckpt"
  done
  tar -C "$out" -czf "$final/logs.tar.gz.tmp" --exclude='*.ckpt' --exclude='*.tmp' . &&
    mv "$final/logs.tar.gz.tmp" "$final/logs.tar.gz"
}
elapsed() { echo $(($(date +%s) - t0)); }
common=(--data "$data" --what classifier --adv-eps 0.3 --adv-steps 10 --adv-step-size 0.25 --seed 7)
big=(--cls-arch conv32,conv32s2,conv64s2,conv64s2,dense128)
board=(--cls-arch conv8s2,conv16s2,dense64)

# 1. Probe: images per second of PGD-10 training of the big CNN, alone on the GPU.
"$bin" train "${common[@]}" "${big[@]}" --adversarial pgd --cls-epochs 1 \
  --out "$out/probe" > /dev/null 2> "$out/probe.log" &
probe=$!
ips=""
for _ in $(seq 1 120); do
  sleep 1
  ips=$(grep -o '[0-9]* img/s' "$out/probe.log" | tail -1 | cut -d' ' -f1)
  [ -n "$ips" ] && break
  kill -0 "$probe" 2> /dev/null || break
done
kill "$probe" 2> /dev/null
wait "$probe" 2> /dev/null
rm -rf "$out/probe"
if [ -z "$ips" ] || [ "$ips" -le 0 ]; then
  echo "probe gave no speed:"
  cat "$out/probe.log"
  publish
  exit 1
fi
# 2. Epochs: 55,000 training images per epoch, three runs sharing the GPU (taken
# as 2x slower each; the board CNN is smaller), 10 % for validation passes.
left=$((budget - $(elapsed) - 20))
epochs=$(awk -v l="$left" -v r="$ips" 'BEGIN { e = int(l * r / (55000 * 2.0 * 1.1)); if (e < 1) e = 1; if (e > 60) e = 60; print e }')
warm=$((epochs >= 4 ? 1 : 0))
echo "probe $ips img/s alone; $left s left; $epochs epochs, warm-up $warm" | tee "$out/plan.txt"
# 3. The three runs, side by side.
for run in pgd max board; do
  case $run in
    pgd) args=("${big[@]}" --adversarial pgd) ;;
    max) args=("${big[@]}" --adversarial pgd-max --adv-second-eps 2.0) ;;
    board) args=("${board[@]}" --adversarial pgd) ;;
  esac
  # pgd-max attacks twice per batch: fewer epochs, so that it ends in time too.
  e=$epochs
  [ "$run" = max ] && e=$(((epochs * 6 + 9) / 10))
  "$bin" train "${common[@]}" "${args[@]}" --cls-epochs "$e" --adv-warmup-epochs "$warm" \
    --out "$out/$run" > "$out/$run.log" 2>&1 &
done
# Stop at the budget whatever happens: the checkpoints of whole epochs stay.
last=$(elapsed)
while [ "$(elapsed)" -lt "$budget" ] && [ -n "$(jobs -rp)" ]; do
  sleep 2
  if [ $(($(elapsed) - last)) -ge 60 ]; then publish; last=$(elapsed); fi
done
for p in $(jobs -rp); do kill "$p"; done
wait
echo "done after $(elapsed) s" | tee -a "$out/plan.txt"
publish
