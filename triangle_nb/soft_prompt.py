"""A continuous (soft) prompt z: n learned input-embedding vectors in the system turn.

A SoftPrompt is a `Prompt`, so `pi0.with_prompt(soft)` generates, scores and composes like any
other policy. Its vectors live on the backbone under virtual token ids past the vocabulary
(`Backbone.register_soft_tokens`); the chat encoding puts those ids at the start of the system turn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import _io
from .chat import text_ids
from .errors import ArtifactKindError, InvalidArgumentError
from .prompt import Prompt


@dataclass(frozen=True, kw_only=True)
class SoftPrompt(Prompt):
    """A soft prompt: `vectors` [n, d] behind virtual ids, plus optional text z after them.

    Attributes:
        virtual_ids: the ids the backbone maps to `vectors` (set by `SoftPrompt.create`).
        vectors: the embeddings (not part of equality; the ids identify the registration).
        readout: the nearest vocabulary token of each vector, as text (for reading, not for use).
    """

    virtual_ids: tuple[int, ...] = ()
    vectors: torch.Tensor = field(default_factory=lambda: torch.empty(0), compare=False, repr=False)
    readout: str = ""

    @classmethod
    def create(cls, policy: Any, vectors: torch.Tensor, *, readout: str | None = None, system: str = "") -> SoftPrompt:
        """Register `vectors` [n, d] on the policy's backbone and return the soft prompt."""
        if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or len(vectors) == 0:
            raise InvalidArgumentError("vectors must be a non-empty [n, d] tensor of input embeddings.")
        ids = policy.backbone.register_soft_tokens(vectors)
        text = nearest_tokens(policy, vectors) if readout is None else readout
        return cls(virtual_ids=ids, vectors=vectors, readout=text, system=system)

    @classmethod
    def from_text(cls, policy: Any, text: str, *, n_tokens: int | None = None) -> SoftPrompt:
        """A soft prompt initialised with the token embeddings of `text` (cycled/truncated to n_tokens)."""
        ids = text_ids(policy.tokenizer, text)
        if not ids:
            raise InvalidArgumentError("text is empty: give at least one token to initialise the soft prompt.")
        n = n_tokens or len(ids)
        ids = (ids * (n // len(ids) + 1))[:n]
        emb = policy.backbone.base_model.get_input_embeddings().weight
        return cls.create(policy, emb[torch.tensor(ids, device=emb.device)].detach().clone().float())

    @property
    def n_tokens(self) -> int:
        return len(self.virtual_ids)

    @property
    def is_empty(self) -> bool:
        return not self.virtual_ids and super().is_empty

    def __str__(self) -> str:
        text = self.system_text()
        return f"[soft ×{self.n_tokens}: {self.readout!r}]" + (f" {text}" if text else "")

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"kind": "soft_prompt", "readout": self.readout,
                                    "vectors": self.vectors.detach().float().cpu().tolist()}

    def bake_identity(self) -> dict[str, Any]:
        return Prompt.to_dict(self) | {"kind": "soft_prompt", "vectors": self.vectors}

    def save(self, path: str | os.PathLike[str]) -> Path:
        _io.write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], policy: Any = None) -> SoftPrompt:  # type: ignore[override]
        """Load a saved soft prompt and register it on `policy`'s backbone (required)."""
        data = _io.read_json(path)
        if data.get("kind") != "soft_prompt":
            raise ArtifactKindError(f"expected a saved SoftPrompt, found kind={data.get('kind')!r}.")
        if policy is None:
            raise InvalidArgumentError("a soft prompt lives on a backbone: load it with SoftPrompt.load(path, pi0).")
        vectors = torch.tensor(data["vectors"], dtype=torch.float32)
        return cls.create(policy, vectors, readout=data["readout"], system=data["system"])


@torch.no_grad()
def nearest_tokens(policy: Any, vectors: torch.Tensor) -> str:
    """The vocabulary token nearest (cosine) to each vector, concatenated: a readable approximation."""
    emb = policy.backbone.base_model.get_input_embeddings().weight.float()
    sims = torch.nn.functional.normalize(vectors.detach().float().to(emb.device), dim=-1) @ \
        torch.nn.functional.normalize(emb, dim=-1).T  # [n, V]
    return policy.tokenizer.decode(sims.argmax(-1).tolist())


def load_prompt_file(path: str | os.PathLike[str], policy: Any = None) -> Prompt:
    """A saved Prompt or SoftPrompt, by the kind in the file (a soft prompt needs the `policy` it was made for)."""
    kind = _io.read_json(path).get("kind")
    if kind == "soft_prompt":
        return SoftPrompt.load(path, policy)
    if kind == "prompt":
        return Prompt.load(path)
    raise ArtifactKindError(f"{str(path)!r} holds kind={kind!r}, not a saved prompt or soft prompt.")
