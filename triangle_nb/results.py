"""What every arrow returns: the new vertex, metrics, a per-step history, a plot, save/load.

Saves are atomic (a temporary folder renamed into place) and load back exactly: metrics as
JSON (floats round-trip exactly), the history and the samples as parquet, the vertex in its own format
(adapter safetensors, prompt JSON, ...), written by the subclass hooks.

One schema for every arrow:
- `metrics` keys read `{objective}_{split}_{when}`: objective (reward, kl, nll_gap, probe_accuracy, ...), split
  `heldout` (inputs never trained on) or `train` (only when the caller held nothing out, or asked for it), when
  `before` / `after` (also `with_prompt`, `closed`); run costs are plain (`steps`, `seconds`, `world_size`).
- `samples`: a DataFrame with one row per shown sample and its per-sample reward / score columns, so a plot
  or a panel never scores anything again.
- `kind`: unique per result class; `tnb.load(folder)` opens any saved result (or reward, prompt) by its kind.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from . import _io
from .errors import ArtifactKindError, ModelLoadError

KINDS: dict[str, type[ArrowResult]] = {}  # saved kind -> result class (filled as classes are defined)


@dataclass
class ArrowResult:
    """Base result. Subclasses set `kind` and save/load their vertex in `_save_vertex` / `_load_vertex`.

    Attributes:
        metrics: the objective before/after and the cost (seconds, steps, tokens), keyed {objective}_{split}_{when}.
        history: one row per step / round (a pandas DataFrame).
        info: JSON-serialisable settings (method, beta, ...), saved with the result.
        samples: shown samples with their per-sample rewards / scores (a pandas DataFrame).
    """

    kind: ClassVar[str] = "result"
    legacy_kinds: ClassVar[tuple[str, ...]] = ()  # kinds older versions saved this class under
    metrics: dict[str, Any] = field(default_factory=dict)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict[str, Any] = field(default_factory=dict)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for kind in (cls.kind, *cls.legacy_kinds):
            KINDS[kind] = cls
        cls.__repr__ = ArrowResult.__repr__  # type: ignore[method-assign]  # @dataclass keeps one it finds

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
            if not self.samples.empty:
                self.samples.to_parquet(tmp / "samples.parquet")
            self._save_vertex(tmp)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike[str], **vertex_kwargs: Any) -> ArrowResult:
        """Load a result saved by `save`; `vertex_kwargs` (e.g. base=pi0) rebuild the vertex."""
        folder = Path(folder)
        _io.recover(folder)  # a save killed mid-swap is completed first
        meta_path = folder / "result.json"
        if not meta_path.is_file():
            raise ModelLoadError(f"{str(folder)!r} holds no saved result (result.json missing): check the path.")
        meta = _io.read_json(meta_path)
        if meta.get("kind") not in (cls.kind, *cls.legacy_kinds):
            raise ArtifactKindError(
                f"{str(folder)!r} holds a {meta.get('kind')!r} result; load it with the matching class, not {cls.__name__}."
            )
        result = _io.parsed(folder, lambda: cls(metrics=dict(meta["metrics"]), info=dict(meta["info"]),
                                                history=pd.read_parquet(folder / "history.parquet")))
        if (folder / "samples.parquet").is_file():
            result.samples = _io.parsed(folder, lambda: pd.read_parquet(folder / "samples.parquet"))
        result._load_vertex(folder, **vertex_kwargs)
        return result

    def _save_vertex(self, folder: Path) -> None:
        """Subclass hook: write the vertex into `folder`."""

    def _load_vertex(self, folder: Path, **kwargs: Any) -> None:
        """Subclass hook: read the vertex back from `folder`."""

    def __repr__(self) -> str:
        where = f" [{self.info['provenance']}]" if "provenance" in self.info else ""
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(self.metrics.items())[:6])
        return f"{type(self).__name__}({self.info.get('method', '')}{where}: {shown}{', …' if len(self.metrics) > 6 else ''})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in self.metrics.items())
        where = f"<div><i>{html.escape(self.info['provenance'])}</i></div>" if "provenance" in self.info else ""
        return f"<b>{type(self).__name__}</b> ({self.info.get('method', '')}){where}<table>{rows}</table>"


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
            name = base.backbone.unique_adapter_name(str(self.info.get("adapter") or "adapter"))
            self.policy = base.with_adapter(folder / "adapter", name=name)


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


def load_result(folder: str | os.PathLike[str], **vertex_kwargs: Any) -> ArrowResult:
    """A saved result, by the kind in its result.json, through `KINDS` (each result class registers its kinds when
    its module is imported; `tnb.load` imports them all). The baked runs load through here: the function that was
    called has imported its result class."""
    folder = Path(folder)
    _io.recover(folder)  # a save killed mid-swap is completed first
    kind = _io.read_json(folder / "result.json").get("kind")
    if kind not in KINDS:
        raise ArtifactKindError(f"{str(folder)!r} holds a result of unknown kind {kind!r}; known: {sorted(KINDS)}.")
    return KINDS[kind].load(folder, **vertex_kwargs)
