"""The Binder recipe, checked without Docker: a fresh venv from binder/requirements.txt, binder/postBuild, then
the launch notebook (the tour) executed in that venv through binder/start (see binder/check.sh)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER_RAM_MIB = 2048  # mybinder.org gives 1-2 GB


@pytest.mark.slow
def test_binder_recipe_builds_and_runs_the_tour_and_the_voila_app_within_binder_memory():
    """Both Binder links: the tour (JupyterLab) executed, the app executed and rendered by Voilà."""
    out = subprocess.run(["bash", "binder/check.sh", "notebooks/00_tour.ipynb", "notebooks/app.ipynb"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    log = out.stdout + out.stderr
    report = re.search(r"binder check: exit (\d+), (\d+) s wall, peak memory (\d+) MiB", log)
    assert out.returncode == 0 and report, log[-4000:]
    print(report.group(0))
    assert int(report.group(3)) < BINDER_RAM_MIB, report.group(0)
    assert "kernel malloc: mimalloc\n" in log, log[-2000:]  # binder/start preloaded it into the notebook kernel
    voila = re.search(r"voila check: ok, .* kernel RSS (\d+) MiB .*kernel malloc: (\w+)", log)
    assert voila, log[-3000:]  # the page rendered, with widget views and no error output
    print(voila.group(0))
    assert int(voila.group(1)) < BINDER_RAM_MIB and voila.group(2) == "mimalloc", voila.group(0)


def test_binder_files_are_what_repo2docker_expects():
    binder = ROOT / "binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"
    for script in ("postBuild", "start", "check.sh"):
        text = (binder / script).read_text()
        assert text.startswith("#!/usr/bin/env bash") and (binder / script).stat().st_mode & 0o111, script
    assert "set -euxo pipefail" in (binder / "postBuild").read_text()
    assert (binder / "start").read_text().rstrip().endswith('exec "$@"')
    readme = (ROOT / "README.md").read_text()
    badge = re.search(r"https://mybinder\.org/v2/gh/[^)\s]+", readme).group(0)
    target = badge.split("urlpath=lab/tree/", 1)[1]
    assert (ROOT / target).is_file(), badge  # the badge opens a notebook that exists
    for app in re.findall(r"https://mybinder\.org/v2/gh/[^)\s]+urlpath=voila/render/([^)\s&]+)", readme):
        assert (ROOT / app).is_file(), app  # a Voilà link opens a notebook that exists


def test_binder_requirements_follow_the_package_dependencies():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [ln.strip() for ln in (ROOT / "binder" / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith(("#", "--"))]
    binder_only = ("torch==", "cmeel-mimalloc==")  # the CPU wheel; the allocator binder/start preloads
    assert [r for r in reqs if not r.startswith(binder_only)] == [d for d in deps if not d.startswith("torch")]
    assert any(r.startswith("torch==") for r in reqs)  # pinned: the CPU wheel, not a CUDA build of several GB
