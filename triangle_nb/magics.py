"""IPython magics, registered by `%load_ext triangle_nb`.

- `%triangle [ARROW]`: show the triangle navigator (opened on ARROW, e.g. `%triangle update_to_reward`).
- `%panel ARROW`: show one arrow's panel with the embedded default model.
- `%%prompt NAME`: the cell's text becomes `tnb.Prompt(system=<text>)`, bound to NAME in the notebook.
  Lines `user: ...` / `assistant: ...` after a line `---` become few-shot examples.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgumentError
from .prompt import Prompt


def triangle(line: str) -> Any:
    """`%triangle [ARROW]`: the navigator, with ARROW's panel open when given."""
    from .panels import navigator

    return navigator(selected=line.strip())


def panel(line: str) -> Any:
    """`%panel ARROW`: the panel of one arrow (e.g. `%panel prompt_to_reward`)."""
    from .panels import panel as make_panel

    return make_panel(line.strip())


def parse_prompt(text: str) -> Prompt:
    """The text of a `%%prompt` cell as a Prompt: system text, then optional examples after `---`.

    >>> parse_prompt("Be brief.\\n---\\nuser: Hi\\nassistant: Hello.").examples
    (('Hi', 'Hello.'),)
    """
    system, _, rest = text.partition("\n---")
    examples, pending = [], None
    for raw in rest.splitlines():
        role, sep, content = raw.partition(":")
        role = role.strip().lower()
        if not sep or role not in ("user", "assistant"):
            continue
        if role == "user":
            pending = content.strip()
        elif pending is not None:
            examples.append((pending, content.strip()))
            pending = None
    return Prompt(system=system.strip(), examples=tuple(examples))


def prompt(line: str, cell: str, namespace: dict[str, Any]) -> Prompt:
    """`%%prompt NAME`: bind Prompt(cell) to NAME in `namespace` and return it."""
    name = line.strip()
    if not name.isidentifier():
        raise InvalidArgumentError(f"%%prompt needs a variable name, got {name!r}: write e.g. `%%prompt z_pos`.")
    namespace[name] = parse_prompt(cell)
    return namespace[name]


def register(ipython: Any) -> None:
    """Register the magics on an IPython shell (called by `%load_ext triangle_nb`)."""
    ipython.register_magic_function(triangle, "line", "triangle")
    ipython.register_magic_function(panel, "line", "panel")
    ipython.register_magic_function(lambda line, cell: _cell_prompt(ipython, line, cell), "cell", "prompt")


def _cell_prompt(ipython: Any, line: str, cell: str) -> None:
    z = prompt(line, cell, ipython.user_ns)
    print(f"{line.strip()} = {z!r}")
