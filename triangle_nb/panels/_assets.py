"""Where the widgets' JS/CSS live: inside the wheel (`triangle_nb._widgets`), or `widgets/` in a checkout."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from ..errors import ModelLoadError


@cache
def widgets_dir() -> Path:
    """The folder holding triangle.js, heatmap.js and their CSS.

    A wheel (and an editable install made after the package-dir mapping) maps `triangle_nb._widgets`
    to the shipped files; an older editable install falls back to the checkout's `widgets/` folder.
    """
    spec = importlib.util.find_spec("triangle_nb._widgets")
    candidates = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    candidates.append(Path(__file__).resolve().parents[2] / "widgets")
    for folder in candidates:
        if (folder / "triangle.js").is_file():
            return folder
    raise ModelLoadError("the widget sources (triangle.js, heatmap.js) are missing: reinstall triangle_nb.")


def asset(name: str) -> Path:
    """Path of one shipped front-end file, e.g. asset("heatmap.js")."""
    return widgets_dir() / name
