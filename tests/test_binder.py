"""The Binder recipe's files. Building it (a fresh venv from binder/requirements.txt, binder/postBuild, the tour and
the Voilà app executed in it through binder/start: binder/check.sh, minutes) is the `binder_recipe` fidelity check:
`python -m benchmarks.fidelity binder_recipe` (issue 30: it left `pytest tests` to keep CI within its budget)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
