"""The public shape: arrow modules that do not import each other, and one vocabulary across the arrows."""

from __future__ import annotations

import ast
from pathlib import Path

import triangle_nb as tnb

ARROWS = ("reward_to_update", "update_to_reward", "prompt_to_update", "update_to_prompt", "prompt_to_reward",
          "reward_to_prompt")
ARROW_DIR = Path(tnb.__file__).parent / "arrows"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (relative ones resolved inside triangle_nb.arrows), at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = {0: "", 1: "triangle_nb.arrows", 2: "triangle_nb"}[node.level]
            names.add(".".join(p for p in (base, node.module or "") if p))
            if node.module is None:
                names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_arrow_module_imports_another_arrow():
    for arrow in ARROWS:
        imported = _imported_modules(ARROW_DIR / f"{arrow}.py")
        others = {f"triangle_nb.arrows.{a}" for a in ARROWS if a != arrow} | {f"triangle_nb.{a}" for a in ARROWS}
        assert not imported & others, f"{arrow} imports {sorted(imported & others)}"


def test_the_arrow_is_a_function_and_its_module_is_a_module():
    import importlib
    import types

    for arrow in ARROWS:
        module = importlib.import_module(f"triangle_nb.arrows.{arrow}")
        assert isinstance(module, types.ModuleType)
        assert getattr(tnb, arrow) is getattr(module, arrow) and callable(getattr(tnb, arrow))
        assert type(tnb) is types.ModuleType  # no module-class swap
