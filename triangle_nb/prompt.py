"""The in-context prompt vertex z: system text, few-shot examples and facts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _io
from . import _validate as check
from .errors import ArtifactKindError, InvalidArgumentError

Message = dict[str, str]


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """An in-context prompt z (hashable, comparable, saved as JSON).

    Args:
        system: the system turn (persona, instructions, principles).
        examples: few-shot (x, y) pairs rendered as earlier user/assistant turns.
        context: facts placed in the system turn after `system`.

    >>> Prompt(system="Be cheerful.").to_messages("Hi")[0]
    {'role': 'system', 'content': 'Be cheerful.'}
    """

    system: str = ""
    examples: tuple[tuple[str, str], ...] = field(default=())
    context: str = ""

    def __post_init__(self) -> None:
        for name in ("system", "context"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(
                    f"Prompt({name}=...) must be a str, got {type(getattr(self, name)).__name__}."
                )
            check.encodable(getattr(self, name), f"Prompt({name}=...)")
        object.__setattr__(self, "examples", _as_examples(self.examples))

    @property
    def is_empty(self) -> bool:
        return not (self.system or self.examples or self.context)

    def system_text(self) -> str:
        """System turn text: `system`, then the facts in `context`."""
        parts = [self.system.strip(), self.context.strip()]
        return "\n\n".join(p for p in parts if p)

    def to_messages(self, x: str) -> list[Message]:
        """Chat turns for input x: z in the system turn, examples as turns, x as the last user turn."""
        msgs: list[Message] = []
        if self.system_text():
            msgs.append({"role": "system", "content": self.system_text()})
        for ex_x, ex_y in self.examples:
            msgs += [{"role": "user", "content": ex_x}, {"role": "assistant", "content": ex_y}]
        msgs.append({"role": "user", "content": x})
        return msgs

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "prompt", "system": self.system, "examples": [list(e) for e in self.examples],
                "context": self.context}

    def bake_identity(self) -> dict[str, Any]:
        """What a baked run's key knows of this prompt (triangle_nb.bake)."""
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prompt:
        if data.get("kind") != "prompt":
            raise ArtifactKindError(f"expected a saved Prompt, found kind={data.get('kind')!r}.")
        return cls(system=data["system"], examples=tuple(map(tuple, data["examples"])), context=data["context"])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the prompt as JSON (atomically) and return the path."""
        _io.write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Prompt:
        return cls.from_dict(_io.read_json(path))

    def __str__(self) -> str:
        return self.system_text() or "(empty prompt)"


def _as_examples(examples: object) -> tuple[tuple[str, str], ...]:
    if isinstance(examples, (str, bytes)) or not hasattr(examples, "__iter__"):
        raise InvalidArgumentError("Prompt(examples=...) must be a list of (x, y) string pairs.")
    out = []
    for i, ex in enumerate(examples):  # type: ignore[union-attr]
        pair = tuple(ex) if isinstance(ex, (list, tuple)) else ()
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise InvalidArgumentError(f"Prompt(examples[{i}]) must be an (x, y) pair of strings, got {ex!r}.")
        for s in pair:
            check.encodable(s, f"Prompt(examples[{i}])")
        out.append(pair)
    return tuple(out)


EMPTY = Prompt()
