#!/usr/bin/env bash
# Adversarial training of the robust-stack classifiers on one CUDA GPU inside a
# fixed time budget (docs/TRAINING.md "Adversarial training on the GPU"), for a
# lent GPU machine without Rust: the `pursamere` binary is built elsewhere with
# `--features cuda` (docs/TRAINING.md "GPU"; scripts/gpu-session.sh sets it up).
#
#   scripts/gpu-robust-train.sh PURSAMERE DATA_DIR OUT_DIR SECONDS [RUN...]
#
# 1. times a tenth of an epoch of the first run's configuration (the probe);
# 2. from that speed, picks the number of epochs E that lets all runs finish,
#    side by side on the one GPU, inside SECONDS from the script's start (the
#    learning rate decays over E epochs, so a run cut short is not annealed);
# 3. trains each RUN into OUT_DIR/RUN/classifier.ckpt (checkpointed every epoch,
#    so a run cut short keeps its last whole epoch; `pursamere train --resume`
#    with the same flags continues it). Runs (default: big wide deep deep128):
#      pgd     — the 197 k-parameter CNN, PGD-AT (Madry), L∞ 0.3, 10 steps
#      board   — the board-sized CNN (52 k), PGD-AT, L∞ 0.3
#      big     — the 197 k CNN, PGD-AT against L∞ 0.3 and L2 2.0 together
#                (--adversarial pgd-max; twice the attack cost per epoch)
#      wide    — conv16s2,conv32s2,dense64 (106 k, fits the board), pgd-max
#      deep    — conv16s2,conv32s2,conv64s2,dense64 (89 k, fits), pgd-max
#      deep128 — conv16s2,conv32s2,conv64s2,dense128 (156 k, fits), pgd-max
#      fashion-wide — wide on Fashion-MNIST (DATA_DIR/../fashion-mnist),
#                pgd-max against L∞ 0.1 and L2 1.0
#      fashion-big — big on Fashion-MNIST, pgd-max against L∞ 0.1 and L2 1.0
#      wide-l2e25, wide-l2e3 — wide, the L2 threat trained at 2.5 / 3.0 instead
#                of 2.0 (the board CNNs lose at L2 2.0 what Square finds)
#    A run name may end in -sN to train it with --seed N instead of 7 (a replicate:
#    wide-s11 is wide from another initialisation and shuffling), then in -eN to
#    train it for N epochs instead of the common count (wide-l2e25-s11-e12).
#    EPOCHS=N in the environment fixes the epoch count instead of step 2's estimate
#    (to compare with runs of a known length; the budget still stops every run).
#    (2026-11-26's first GPU run trained pgd, TRADES β 6 and board; the second
#    big, wide, deep, deep128 and fashion-wide: docs/TRAINING.md has their flags and curves.)
# OUT_DIR gets RUN.ckpt for each run and logs.tar.gz (the logs RUN.log and
# plan.txt, with the probe's speed and the chosen E), refreshed every minute so
# that a machine taken back early still leaves them; the runs work in a
# temporary folder.
set -u
bin=$1 data=$2 final=$3 budget=$4
shift 4
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=(big wide deep deep128)
t0=$(date +%s)
mkdir -p "$final"
out=$(mktemp -d)
publish() {
  for run in "${runs[@]}"; do
    [ -f "$out/$run/classifier.ckpt" ] && cp "$out/$run/classifier.ckpt" "$final/$run.ckpt.tmp" &&
      mv "$final/$run.ckpt.tmp" "$final/$run.ckpt"
  done
  tar -C "$out" -czf "$final/logs.tar.gz.tmp" --exclude='*.ckpt' --exclude='*.tmp' . &&
    mv "$final/logs.tar.gz.tmp" "$final/logs.tar.gz"
}
elapsed() { echo $(($(date +%s) - t0)); }
common=(--what classifier --adv-steps 10 --adv-step-size 0.25)
# Fashion-MNIST, where a run names it, is DATA_DIR's sibling fashion-mnist/.
fashion=$(dirname "$data")/fashion-mnist
mnist=(--data "$data" --adv-eps 0.3)
# pgd-max against the two threats, the second at radius $1 (MNIST: L2 2.0 unless a
# run names another).
max() { echo --adversarial pgd-max --adv-second-eps "$1"; }
wide_arch=conv16s2,conv32s2,dense64
big_arch=conv32,conv32s2,conv64s2,conv64s2,dense128
flags() {
  local name=$1 seed=7
  if [[ $name =~ ^(.*)-e[0-9]+$ ]]; then name=${BASH_REMATCH[1]}; fi
  if [[ $name =~ ^(.*)-s([0-9]+)$ ]]; then name=${BASH_REMATCH[1]} seed=${BASH_REMATCH[2]}; fi
  echo --seed "$seed"
  case $name in
    pgd) echo "${mnist[@]}" --cls-arch $big_arch --adversarial pgd ;;
    board) echo "${mnist[@]}" --cls-arch conv8s2,conv16s2,dense64 --adversarial pgd ;;
    big) echo "${mnist[@]}" --cls-arch $big_arch "$(max 2.0)" ;;
    wide) echo "${mnist[@]}" --cls-arch $wide_arch "$(max 2.0)" ;;
    wide-l2e25) echo "${mnist[@]}" --cls-arch $wide_arch "$(max 2.5)" ;;
    wide-l2e3) echo "${mnist[@]}" --cls-arch $wide_arch "$(max 3.0)" ;;
    deep) echo "${mnist[@]}" --cls-arch conv16s2,conv32s2,conv64s2,dense64 "$(max 2.0)" ;;
    deep128) echo "${mnist[@]}" --cls-arch conv16s2,conv32s2,conv64s2,dense128 "$(max 2.0)" ;;
    # Fashion-MNIST's threats (issue #14): L∞ 0.1 and L2 1.0 together.
    fashion-wide) echo --data "$fashion" --adv-eps 0.1 --cls-arch $wide_arch "$(max 1.0)" ;;
    fashion-big) echo --data "$fashion" --adv-eps 0.1 --cls-arch $big_arch "$(max 1.0)" ;;
    *) echo "unknown run $1" >&2; return 1 ;;
  esac
}
for run in "${runs[@]}"; do flags "$run" > /dev/null || exit 2; done

if [ -n "${EPOCHS:-}" ]; then
  # A fixed epoch count needs no probe (which costs up to two minutes of GPU time).
  epochs=$EPOCHS
  warm=$((epochs >= 6 ? 2 : epochs >= 4 ? 1 : 0))
  echo "${#runs[@]} runs; EPOCHS=$epochs fixed, warm-up $warm; budget $budget s" | tee "$out/plan.txt"
else
  # 1. Probe: images per second of the first run's training, alone on the GPU.
  # shellcheck disable=SC2046 # flags are words without spaces
  "$bin" train "${common[@]}" $(flags "${runs[0]}") --cls-epochs 1 \
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
# 2. Epochs: 55,000 training images per epoch; the runs share the GPU, each
# slower by 1.6x for three runs (measured 2026-11-26: 3,630 img/s alone, 2,300
# side by side; small CNNs are no faster, the GPU is launch-bound), taken as
# 0.4 + 0.4 per run; 10 % for validation passes. The probe's speed includes the
# kernels' first compilation, which errs on the safe side.
left=$((budget - $(elapsed) - 20))
slow=$(awk -v n="${#runs[@]}" 'BEGIN { print 0.4 + 0.4 * n }')
epochs=$(awk -v l="$left" -v r="$ips" -v s="$slow" 'BEGIN { e = int(l * r / (55000 * s * 1.1)); if (e < 1) e = 1; if (e > 60) e = 60; print e }')
warm=$((epochs >= 6 ? 2 : epochs >= 4 ? 1 : 0))
echo "probe (${runs[0]}) $ips img/s alone; ${#runs[@]} runs; $left s left; $epochs epochs, warm-up $warm" | tee "$out/plan.txt"
fi
# 3. The runs, side by side (all runs in one call cost the same per image).
for run in "${runs[@]}"; do
  e=$epochs w=$warm
  if [[ $run =~ -e([0-9]+)$ ]]; then e=${BASH_REMATCH[1]} w=$((e >= 6 ? 2 : e >= 4 ? 1 : 0)); fi
  # shellcheck disable=SC2046
  "$bin" train "${common[@]}" $(flags "$run") --cls-epochs "$e" --adv-warmup-epochs "$w" \
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
