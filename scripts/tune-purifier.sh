#!/usr/bin/env bash
# Runs `pursamere eval` once per purifier setting and prints one summary line each.
#
#   scripts/tune-purifier.sh PROTOCOL DATA MODEL OUT SETTINGS
#
# SETTINGS is a file with one setting per line: `pursamere eval` purifier flags such
# as `--eta 0.1 --radius 0.2` (blank lines and `#` comments are skipped). Each
# setting writes OUT/<flags with spaces as _>/ (resumable, like any eval run). Use a
# protocol with `split = "validation"`: settings are chosen on the TRAIN hold-out,
# never on the test set.
set -euo pipefail
if [ $# -ne 5 ]; then
  echo "usage: $0 PROTOCOL DATA MODEL OUT SETTINGS" >&2
  exit 2
fi
protocol=$1 data=$2 model=$3 out=$4 settings=$5
mkdir -p "$out"
bin=${PURSAMERE_BIN:-./target/release/pursamere}
[ -x "$bin" ] || { echo "build first: cargo build --release -p pursamere-cli" >&2; exit 2; }
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  [ -z "${line// }" ] && continue
  dir="$out/$(echo "$line" | tr -s ' ' '_' | tr -d -- '-')"
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$bin" eval --protocol "$protocol" --data "$data" --model "$model" --out "$dir" $line \
    > "$dir.log" 2>&1 || { echo "FAILED: $line (see $dir.log)" >&2; continue; }
  echo "== $line ($(( $(date +%s) - start )) s)"
  grep -E '^\| (ere|pursamere|denoise|none) ' "$dir/report.md" | grep '%' || true
done < "$settings"
