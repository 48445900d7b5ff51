#!/usr/bin/env bash
# Check the Binder recipe without Docker: build a fresh venv from binder/requirements.txt, run binder/postBuild
# in it (with an empty model cache), then execute notebooks in it through binder/start with nbval, and report
# the wall time and the peak memory of the largest process (the notebook kernel; Binder gives 1-2 GB).
#
#   bash binder/check.sh                              # every notebook
#   bash binder/check.sh notebooks/00_tour.ipynb      # the Binder launch page only (what the test suite runs)
#
# PIP_RETRIES=0 by default: the CPU-torch index in requirements.txt is unreachable on offline CI machines and
# pip would otherwise retry it for every package; torch itself then comes from PyPI (the CPU wheel on this disk).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PATH="$work/venv/bin:$PATH" TRIANGLE_NB_CACHE="$work/cache" PIP_RETRIES="${PIP_RETRIES:-0}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 TQDM_DISABLE=1
python3 -m venv "$work/venv"
pip install -q -r binder/requirements.txt
bash binder/postBuild
test -n "$(ls "$TRIANGLE_NB_CACHE"/models)"  # postBuild left the converted model in the cache
pip install -q "pytest>=8" "nbval>=0.11"
notebooks=("$@")
[ ${#notebooks[@]} -gt 0 ] || notebooks=(notebooks)
binder/start python - "${notebooks[@]}" <<'PY'
import resource, subprocess, sys, time

start = time.time()
rc = subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:], "--nbval-lax", "--nbval-current-env",
                      "--nbval-cell-timeout=900", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
                      "-p", "no:cacheprovider", "-q", "--durations=15"])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest process: a notebook kernel
print(f"binder check: exit {rc}, {time.time() - start:.0f} s wall, peak memory {peak:.0f} MiB")
sys.exit(rc)
PY
