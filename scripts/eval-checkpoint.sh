#!/usr/bin/env bash
# Keeps an unfinished evaluation across machines: `runs/` is not tracked (raw records
# of finished runs are hundreds of MB), but a long run that a session cannot finish
# must survive it. `save` copies a run directory's settings and records into
# docs/eval/checkpoints/NAME (tracked; commit it); `restore` puts them back into
# runs/NAME, where `pursamere eval` with the same settings resumes from them (it
# checks every record's fingerprint against settings.json). Delete the checkpoint
# once the run has finished and written its rows to docs/eval/summary.json.
#
#   scripts/eval-checkpoint.sh save runs/eval-robust-purifier
#   scripts/eval-checkpoint.sh restore eval-robust-purifier
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage() { echo "usage: $0 save RUN_DIR | restore NAME" >&2; exit 2; }
[ $# -eq 2 ] || usage
case "$1" in
  save)
    src="$2"; name="$(basename "$src")"; dst="$root/docs/eval/checkpoints/$name"
    [ -f "$src/settings.json" ] || { echo "$src has no settings.json: not an evaluation directory" >&2; exit 1; }
    mkdir -p "$dst"
    for f in settings.json results.jsonl checks.jsonl; do
      # Whole lines only (a run being written may end in a partial line), through a
      # temporary file so that a failed copy leaves the old checkpoint.
      if [ -f "$src/$f" ]; then
        if [ "$f" != settings.json ] && [ -n "$(tail -c1 "$src/$f")" ]; then
          sed '$d' "$src/$f" > "$dst/$f.tmp"
        else
          cp "$src/$f" "$dst/$f.tmp"
        fi
        mv "$dst/$f.tmp" "$dst/$f"
      fi
    done
    echo "saved $(cat "$dst"/results.jsonl 2>/dev/null | wc -l) records and $(cat "$dst"/checks.jsonl 2>/dev/null | wc -l) check records of $src in $dst"
    ;;
  restore)
    name="$2"; src="$root/docs/eval/checkpoints/$name"; dst="$root/runs/$name"
    [ -f "$src/settings.json" ] || { echo "no checkpoint $src" >&2; exit 1; }
    if [ -e "$dst/results.jsonl" ]; then
      echo "$dst already holds results: not overwritten (move it away first)" >&2; exit 1
    fi
    mkdir -p "$dst"
    cp "$src"/* "$dst"/
    echo "restored $src into $dst"
    ;;
  *) usage ;;
esac
