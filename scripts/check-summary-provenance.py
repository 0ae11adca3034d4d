#!/usr/bin/env python3
"""Checks that each row of docs/eval/summary.json is tied to the files that made it.

For every (protocol, model, fingerprint) of the summary, the model file is looked up
in fixtures/ by its SHA-256 and `pursamere eval` is started on that protocol and
model (with the row's purifier settings as flags, one image, into a scratch folder)
just long enough to write its settings.json; the SHA-256 of those settings must be
the rows' fingerprint. A mismatch means the protocol file, the model, the purifier
settings or the engine differ from what measured the rows; "no model" means the
model file was never committed.

    cargo build --release -p pursamere-cli
    scripts/check-summary-provenance.py            # needs ../shared/data

Settings are compared as `pursamere eval` fingerprints them: the canonical JSON of
settings.json (keys sorted, no spaces), SHA-256.
"""
import collections
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "pursamere")
DATA = {"mnist": "../shared/data/mnist", "fashion-mnist": "../shared/data/fashion-mnist"}


def fingerprint(settings):
    text = json.dumps(settings, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_of(args, out):
    """Starts the evaluation, waits for its settings.json, stops it."""
    proc = subprocess.Popen(args + ["--out", out, "--count", "1", "--fresh"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = os.path.join(out, "settings.json")
    start = time.time()
    while time.time() - start < 60 and proc.poll() is None and not os.path.exists(path):
        time.sleep(0.1)
    time.sleep(0.2)  # written through a temporary file and a rename: whole once present
    proc.kill()
    err = proc.communicate()[1].decode(errors="replace").strip()
    if not os.path.exists(path):
        return None, err.splitlines()[-1] if err else "no settings.json"
    return json.load(open(path)), None


def main():
    os.chdir(ROOT)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release -p pursamere-cli")
    rows = json.load(open("docs/eval/summary.json"))["rows"]
    models = {}
    for f in sorted(glob.glob("fixtures/**/*.psm", recursive=True)):
        models[hashlib.sha256(open(f, "rb").read()).hexdigest()] = f
    groups = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["model_sha256"], r["fingerprint"]), []).append(r)
    scratch = tempfile.mkdtemp(prefix="pursamere-provenance-")
    counts = collections.Counter()
    try:
        for (protocol, sha, want), rs in sorted(groups.items()):
            what = f"{protocol}, {rs[0]['classifier']} ({len(rs)} rows)"
            model = models.get(sha)
            if model is None:
                kind, verdict = "no model", f"no model (SHA-256 {sha[:12]}… is in no file of fixtures/)"
            elif not os.path.exists(protocol):
                kind, verdict = "no protocol", "no protocol file"
            else:
                args = [BIN, "eval", "--protocol", protocol, "--data", DATA[rs[0]["dataset"]],
                        "--data-name", rs[0]["dataset"], "--model", model]
                purifier = next((r["purifier"] for r in rs
                                 if r.get("purifier") and r["defence"] == "ere"), None)
                if purifier:
                    args += ["--sigma", str(purifier["sigma"]),
                             "--noise-samples", str(purifier["noise_samples"]),
                             "--iters", str(purifier["iters"]), "--eta", str(purifier["eta"]),
                             "--radius", str(purifier["radius"]),
                             "--ball", purifier["norm"].lower(),
                             "--step", purifier["step"].lower(),
                             "--noise-seed", str(purifier["seed"])]
                settings, err = settings_of(args, os.path.join(scratch, "out"))
                if settings is None:
                    kind, verdict = "could not start", f"could not start: {err}"
                elif fingerprint(settings) == want:
                    kind, verdict = "ok", "ok"
                else:
                    kind, verdict = "MISMATCH", (f"MISMATCH: the rows have {want[:12]}, these files give "
                               f"{fingerprint(settings)[:12]} (engine version "
                               f"{settings.get('engine_version')})")
            counts[kind] += len(rs)
            print(f"ok  {what}" if verdict == "ok" else f"{what}: {verdict}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("rows:", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
