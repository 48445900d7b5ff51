"""Packaging hook for the JupyterLab extension in labextension/; everything else is declared in pyproject.toml.

Why a setup.py: JupyterLab finds a prebuilt extension only under share/jupyter/labextensions/<name>/ of the
environment, which only a wheel's data files reach, and the built files (content-hashed) exist only after the
build. So a `build` sub-command runs `npm ci` and @jupyter/builder (`jupyter-builder build`, what `jupyter
labextension build` calls) when the output is missing or older than its sources, then lists what it built as data
files. `pip install .`, a wheel build and `pip install -e .` all run it; an editable install copies the data files,
so run it again after editing labextension/ (it rebuilds only what changed).

Without node/npm the Python package still installs, with a warning, and JupyterLab just lacks the launcher cards,
the sidebar and the commands. TRIANGLE_NB_SKIP_LABEXTENSION=1 skips the build on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build import build

ROOT = Path(__file__).resolve().parent
LX = ROOT / "labextension"
OUT = LX / "dist"  # package.json "jupyterlab.outputDir"
TARGET = "share/jupyter/labextensions/triangle_nb"
VOILA_TEMPLATE = "share/jupyter/voila/templates/triangle"  # Voilà's lab page without its CDN links
SKIP = "TRIANGLE_NB_SKIP_LABEXTENSION"
# what the built extension depends on: its own sources, and the Python-side texts and files it ships
SOURCES = ["labextension/package.json", "labextension/package-lock.json", "labextension/tsconfig.json",
           "labextension/rspack.config.js", "labextension/scripts/*.py", "labextension/src/*.ts",
           "labextension/style/*", "widgets/triangle.*", "triangle_nb/panels/triangle.py",
           "triangle_nb/panels/__init__.py", "triangle_nb/panels/_app.py", "notebooks/0[0-6]_*.ipynb"]


class LabextensionBuildError(RuntimeError):
    """npm or the extension build failed (node itself is present)."""


def _newest_source() -> float:
    return max((p.stat().st_mtime for pattern in SOURCES for p in ROOT.glob(pattern)), default=0.0)


def is_stale() -> bool:
    """True when the built extension is missing or older than any of its sources."""
    stamp = OUT / "package.json"
    return not stamp.is_file() or stamp.stat().st_mtime < _newest_source()


def _run(*cmd: str | Path) -> None:
    print("triangle_nb labextension:", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run([str(c) for c in cmd], cwd=LX, check=False)
    if done.returncode:
        raise LabextensionBuildError(
            f"`{' '.join(map(str, cmd))}` failed (exit {done.returncode}) in {LX}. Fix the error above, or set "
            f"{SKIP}=1 to install triangle_nb without its JupyterLab extension.")


def _npm_ci(npm: str) -> None:
    """Install the locked node packages unless node_modules already matches package-lock.json."""
    installed = LX / "node_modules" / ".package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < (LX / "package-lock.json").stat().st_mtime:
        _run(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")


def build_extension(node: str, npm: str) -> None:
    """generate src/data.ts, npm ci, tsc, then @jupyter/builder into labextension/dist."""
    try:
        from jupyter_builder.federated_extensions import build_labextension as jupyter_build
    except ImportError as e:
        raise LabextensionBuildError("jupyter-builder is missing from the build environment "
                                     "(pyproject.toml [build-system] requires it)") from e
    _run(sys.executable, LX / "scripts" / "generate.py")
    _npm_ci(npm)
    _run(node, LX / "node_modules" / "typescript" / "bin" / "tsc", "-p", LX)
    try:
        jupyter_build(str(LX))
    except Exception as e:  # jupyter-builder raises ValueError / CalledProcessError with the reason
        raise LabextensionBuildError(f"jupyter-builder build failed: {e}") from e
    (OUT / "package.json").touch()  # the stamp is_stale() compares against


def data_files() -> list[tuple[str, list[str]]]:
    """The Voilà template, and the built extension (with install.json, which tells JupyterLab that pip manages it),
    as data files."""
    template = [(VOILA_TEMPLATE, sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "widgets" / "voila" /
                                                                               "triangle").glob("*")))]
    if not (OUT / "package.json").is_file():
        return template
    groups: dict[str, list[str]] = {TARGET: ["labextension/install.json"]}
    for path in sorted(p for p in OUT.rglob("*") if p.is_file()):
        folder = path.parent.relative_to(OUT).as_posix()
        groups.setdefault(f"{TARGET}/{folder}".rstrip("/."), []).append(path.relative_to(ROOT).as_posix())
    return template + list(groups.items())


class build_labextension(Command):  # setuptools names commands in snake_case
    """Build the JupyterLab extension when missing or stale, then list it as data files."""

    description = "build the JupyterLab extension in labextension/ (npm ci + jupyter-builder) if needed"
    user_options: ClassVar[list] = []
    editable_mode = False  # set by setuptools' editable_wheel (pip install -e .)

    def initialize_options(self) -> None: ...

    def finalize_options(self) -> None: ...

    def run(self) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if os.environ.get(SKIP):
            print(f"triangle_nb labextension: skipped ({SKIP} is set)")
        elif not is_stale():
            print(f"triangle_nb labextension: {OUT.relative_to(ROOT)} is up to date")
        elif node and npm:
            build_extension(node, npm)
        else:
            what = ("ships the older build in labextension/dist" if (OUT / "package.json").is_file() else
                    "installs without its JupyterLab extension (launcher cards, sidebar, commands)")
            warnings.warn(f"node/npm not found: triangle_nb {what}. Install Node.js >= 20 and npm, then reinstall.",
                          stacklevel=1)
        # in place: editable_wheel creates install_data (which keeps a reference to this list) before building
        self.distribution.data_files[:] = data_files()
        if self.editable_mode and self.distribution.data_files:
            # editable_wheel never installs data files (it asks the distribution for `has_data`, which does not
            # exist: setuptools issue #3399); its install_data already points into the editable wheel
            self.run_command("install_data")


class build_with_labextension(build):
    sub_commands: ClassVar[list] = [("build_labextension", None), *build.sub_commands]


setup(cmdclass={"build": build_with_labextension, "build_labextension": build_labextension},
      data_files=data_files())
