#!/usr/bin/env bash
# Check the Binder recipe without Docker: build a fresh venv from binder/requirements.txt, run binder/postBuild
# in it (with an empty model cache), then execute notebooks in it through binder/start with nbval, and report
# the wall time, the peak resident memory of the largest process (the notebook kernel; Binder gives 1-2 GB) and
# the peak anonymous memory of all processes together (the part the kernel cannot reclaim: the model weights are a
# memory-mapped file, counted in the first number but droppable under pressure).
#
#   bash binder/check.sh                              # every notebook
#   bash binder/check.sh notebooks/00_tour.ipynb      # the Binder launch page only
#   bash binder/check.sh notebooks/00_tour.ipynb notebooks/app.ipynb   # both Binder links: what `python -m benchmarks.fidelity binder_recipe` runs
#
# When notebooks/app.ipynb is among them, it is also rendered by Voilà (binder/voila_check.py: the page has widget
# views and no error output) and its kernel's resident memory is reported.
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
import os, resource, subprocess, sys, threading, time

def anon_mib(pid):  # resident anonymous memory: what cannot be dropped under pressure (mapped weight files can)
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("RssAnon")) / 1024
    except (OSError, StopIteration):
        return 0.0

def descendants(root):
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out

start = time.time()
proc = subprocess.Popen([sys.executable, "-m", "pytest", *sys.argv[1:], "--nbval-lax", "--nbval-current-env",
                         "--nbval-cell-timeout=900", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
                         "-p", "no:cacheprovider", "-q", "--durations=15"])
peak_anon, allocators = [0.0], set()

def allocator(pid):  # which malloc a notebook kernel runs on: binder/start preloads mimalloc
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmd, open(f"/proc/{pid}/maps") as maps:
            if b"ipykernel" in cmd.read():
                return "mimalloc" if "libmimalloc" in maps.read() else "glibc"
    except OSError:
        pass
    return None

def watch():
    while proc.poll() is None:
        pids = [proc.pid, *descendants(proc.pid)]
        peak_anon[0] = max(peak_anon[0], sum(anon_mib(p) for p in pids))
        allocators.update(a for a in map(allocator, pids) if a)
        time.sleep(0.2)

threading.Thread(target=watch, daemon=True).start()
rc = proc.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest process: a notebook kernel
print(f"binder check: exit {rc}, {time.time() - start:.0f} s wall, peak memory {peak:.0f} MiB "
      f"(largest process, mapped weights included), peak anonymous memory {peak_anon[0]:.0f} MiB (all processes), "
      f"kernel malloc: {'/'.join(sorted(allocators)) or 'unseen'}")
sys.exit(rc)
PY
for nb in "${notebooks[@]}"; do  # the second Binder link: the app, rendered by Voilà
  if [ "$(basename "$nb")" = app.ipynb ]; then
    binder/start python binder/voila_check.py "$nb"
  fi
done
