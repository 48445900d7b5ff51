"""What every arrow returns: the new vertex, metrics, a per-step history, a plot, save/load.

Saves are atomic (a temporary folder renamed into place) and load back exactly: metrics as
JSON (floats round-trip exactly), the history as parquet, the vertex in its own format
(adapter safetensors, prompt JSON, ...), written by the subclass hooks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from . import _io
from .errors import ArtifactKindError, ModelLoadError


@dataclass
class ArrowResult:
    """Base result. Subclasses set `kind` and save/load their vertex in `_save_vertex` / `_load_vertex`.

    Attributes:
        metrics: the objective before/after and the cost (seconds, steps, tokens).
        history: one row per step / round (a pandas DataFrame).
        info: JSON-serialisable settings (method, beta, ...), saved with the result.
    """

    kind: ClassVar[str] = "result"
    metrics: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)

    def plot(self) -> Any:
        """A plotly figure of the history (every numeric column against the step)."""
        from .plots import history_figure

        return history_figure(self.history, title=f"{self.kind}: {self.info.get('method', '')}")

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the result to `folder` atomically and return its path."""
        folder = Path(folder)
        with _io.atomic_dir(folder) as tmp:
            _io.write_json(tmp / "result.json", {"kind": self.kind, "metrics": self.metrics, "info": self.info})
            self.history.to_parquet(tmp / "history.parquet")
            self._save_vertex(tmp)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], **vertex_kwargs: Any) -> ArrowResult:
        """Load a result saved by `save`; `vertex_kwargs` (e.g. base=pi0) rebuild the vertex."""
        folder = Path(folder)
        meta_path = folder / "result.json"
        if not meta_path.is_file():
            raise ModelLoadError(f"{str(folder)!r} holds no saved result (result.json missing): check the path.")
        meta = _io.read_json(meta_path)
        if meta.get("kind") != cls.kind:
            raise ArtifactKindError(
                f"{str(folder)!r} holds a {meta.get('kind')!r} result; load it with the matching class, not {cls.__name__}."
            )
        result = cls(metrics=meta["metrics"], history=pd.read_parquet(folder / "history.parquet"), info=meta["info"])
        result._load_vertex(folder, **vertex_kwargs)
        return result

    def _save_vertex(self, folder: Path) -> None:
        """Subclass hook: write the vertex into `folder`."""

    def _load_vertex(self, folder: Path, **kwargs: Any) -> None:
        """Subclass hook: read the vertex back from `folder`."""

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in self.metrics.items())
        return f"<b>{type(self).__name__}</b> ({self.info.get('method', '')})<table>{rows}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@dataclass
class UpdateResult(ArrowResult):
    """An arrow whose new vertex is a parameter update: `.policy` = base + a new LoRA adapter.

    Save writes the adapter (safetensors) under `adapter/`; load with `UpdateResult.load(dir, base=pi0)`.
    """

    kind: ClassVar[str] = "update"
    policy: Any = None

    def _save_vertex(self, folder: Path) -> None:
        if self.policy is not None and self.policy.adapter is not None:
            self.policy.backbone.save_adapter(self.policy.adapter, folder / "adapter")

    def _load_vertex(self, folder: Path, base: Any = None, **_: Any) -> None:
        if (folder / "adapter").is_dir():
            if base is None:
                raise ModelLoadError("this result holds an adapter: load it with UpdateResult.load(dir, base=pi0).")
            self.policy = base.with_adapter(folder / "adapter")


@dataclass
class PromptResult(ArrowResult):
    """An arrow whose new vertex is an in-context prompt: `.prompt` (a Prompt), saved as JSON."""

    kind: ClassVar[str] = "prompt"
    prompt: Any = None

    def _save_vertex(self, folder: Path) -> None:
        if self.prompt is not None and hasattr(self.prompt, "save"):
            self.prompt.save(folder / "prompt.json")

    def _load_vertex(self, folder: Path, **_: Any) -> None:
        from .prompt import Prompt

        if (folder / "prompt.json").is_file():
            self.prompt = Prompt.load(folder / "prompt.json")
