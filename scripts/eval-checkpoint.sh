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
#
# `merge INTO FROM` adds the records of run directory FROM to INTO when both hold the
# same settings (the same settings.json: one fingerprint), no record of FROM is
# already in INTO and no evaluation is writing to INTO (it holds INTO/eval.lock) —
# for a run that was split into `--start`/`--count` ranges on several processes or
# machines; `pursamere eval` on INTO with the whole range then resumes from all of
# them. FROM is left as it was.
#
#   scripts/eval-checkpoint.sh merge runs/eval-fashion-robust-purifier-a runs/eval-fashion-robust-purifier-b
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage() { echo "usage: $0 save RUN_DIR | restore NAME | merge INTO_DIR FROM_DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
case "$1" in
  save)
    src="$2"; name="$(basename "$src")"; dst="$root/docs/eval/checkpoints/$name"
    [ -f "$src/settings.json" ] || { echo "$src has no settings.json: not an evaluation directory" >&2; exit 1; }
    mkdir -p "$dst"
    for f in settings.json data.json results.jsonl checks.jsonl; do
      # Whole lines only (a run being written may end in a partial line), through a
      # temporary file so that a failed copy leaves the old checkpoint.
      if [ -f "$src/$f" ]; then
        if [ "${f%.jsonl}" != "$f" ] && [ -n "$(tail -c1 "$src/$f")" ]; then
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
  merge)
    [ $# -eq 3 ] || usage
    into="$2"; from="$3"
    for d in "$into" "$from"; do
      [ -f "$d/settings.json" ] || { echo "$d has no settings.json: not an evaluation directory" >&2; exit 1; }
    done
    cmp -s "$into/settings.json" "$from/settings.json" || {
      echo "$into and $from were run with different settings: not merged" >&2; exit 1; }
    python3 - "$into" "$from" <<'PY'
import fcntl, json, os, sys
into, frm = sys.argv[1], sys.argv[2]
# The lock `pursamere eval` holds while it writes to a directory (flock on
# eval.lock, trainer/src/eval/results.rs): no merge into a running evaluation, and
# no evaluation starts on INTO while the merge rewrites its files.
lock = open(os.path.join(into, "eval.lock"), "a")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    sys.exit(f"{into} is in use: an evaluation is writing to it (it holds {into}/eval.lock); not merged")
# data.json binds a directory to its images and to the protocol's batch (a
# directory written before the batch was recorded has none: it takes FROM's).
def bound(d):
    path = os.path.join(d, "data.json")
    return json.load(open(path)) if os.path.exists(path) else {}
b_into, b_from = bound(into), bound(frm)
if "sha256" in b_into and "sha256" in b_from and b_into["sha256"] != b_from["sha256"]:
    sys.exit(f"{into} and {frm} were run on different images (data.json): not merged")
if "batch" in b_into and "batch" in b_from and b_into["batch"] != b_from["batch"]:
    sys.exit(f"{into} and {frm} were run with different batches ({b_into['batch']} and {b_from['batch']}, data.json): not merged")
def whole_lines(path):
    # A run being written may end in a partial line: whole lines only.
    if not os.path.exists(path):
        return []
    text = open(path).read()
    lines = text.split("\n")
    return [l for l in lines[:-1] if l.strip()]
keys = {"results.jsonl": ("index", "defence", "norm", "eps"),
        "checks.jsonl": ("check", "index", "defence", "norm", "eps")}
added = {}
for f, k in keys.items():
    have = {tuple(json.loads(l).get(x) for x in k) for l in whole_lines(os.path.join(into, f))}
    new = whole_lines(os.path.join(frm, f))
    clash = [l for l in new if tuple(json.loads(l).get(x) for x in k) in have]
    if clash:
        sys.exit(f"{frm}/{f}: {len(clash)} records are already in {into} (e.g. {clash[0][:120]}): not merged")
    added[f] = new
for f, new in added.items():
    path = os.path.join(into, f)
    old = open(path).read() if os.path.exists(path) else ""
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    with open(path + ".tmp", "w") as out:
        out.write(old + "".join(l + "\n" for l in new))
    os.replace(path + ".tmp", path)
# INTO is bound to the images (and batch) FROM's records were made with, when it
# was not yet.
merged = {**b_from, **b_into}
if merged != b_into:
    with open(os.path.join(into, "data.json.tmp"), "w") as out:
        json.dump(merged, out, separators=(",", ":"), sort_keys=True)
    os.replace(os.path.join(into, "data.json.tmp"), os.path.join(into, "data.json"))
print(f"merged {len(added['results.jsonl'])} records and {len(added['checks.jsonl'])} check records of {frm} into {into}")
PY
    ;;
  *) usage ;;
esac
