"""Render a notebook with Voilà as Binder's second link does, and check the page: no error output, widget views
present; then report the resident memory of the app's kernel (Binder gives 1-2 GB). Run through binder/start:

    binder/start python binder/voila_check.py notebooks/app.ipynb

Prints one line `voila check: ok, ...` (exit 0) or `voila check: FAILED, ...` (exit 1). binder/check.sh calls it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ERRORS = ("Traceback (most recent call last)", "There was an error when executing cell", "jp-RenderedText\" data-mime-type=\"application/vnd.jupyter.stderr")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_memory(root: int) -> dict[str, float]:
    """VmRSS / RssAnon / VmHWM (MiB) and the malloc of the ipykernel under `root` (the notebook's kernel); also used
    by tests/test_voila.py."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    todo, kids = [root], []
    while todo:
        parent = todo.pop()
        found = [c for c, p in parents.items() if p == parent]
        kids += found
        todo += found
    for pid in kids:
        try:
            if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
                malloc = "mimalloc" if "libmimalloc" in Path(f"/proc/{pid}/maps").read_text() else "glibc"
                mib = {key: int(status[field].split()[0]) / 1024
                       for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"), ("peak", "VmHWM"))}
                return mib | {"malloc": malloc}
        except OSError:
            continue
    return {}


def main(notebook: str) -> int:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "voila", notebook, "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    start = time.time()
    try:
        page = ""
        for _ in range(120):  # the server listens within seconds; the page comes once the notebook has run
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=900) as r:
                    page = r.read().decode()
                break
            except OSError:
                time.sleep(1)
        memory = kernel_memory(proc.pid)
        views = page.count("application/vnd.jupyter.widget-view+json")
        problems = [e for e in ERRORS if e in page]
        ok = bool(page) and views > 0 and not problems
        print(f"voila check: {'ok' if ok else 'FAILED'}, {notebook} rendered in {time.time() - start:.0f} s, "
              f"{views} widget views, errors: {problems or 'none'}, kernel RSS {memory.get('rss', 0):.0f} MiB "
              f"(anonymous {memory.get('anon', 0):.0f} MiB), kernel malloc: {memory.get('malloc', 'unseen')}")
        return 0 if ok else 1
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "notebooks/app.ipynb"))
