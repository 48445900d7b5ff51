"""What every arrow returns: the new vertex, metrics, a per-step history, a plot, save/load.

Saves are atomic (a temporary folder renamed into place) and load back exactly: metrics as
JSON (floats round-trip exactly), the history and the samples as parquet, the vertex in its own format
(adapter safetensors, prompt JSON, ...), written by the subclass hooks.

One schema for every arrow (`schema_problems` checks a result against it; tests/test_result_schema.py runs it on
every arrow's result):
- `metrics` holds numbers only (bool for a flag, None where there was nothing to measure). Every key reads
  `{objective}_{split}_{when}`: objective (reward, kl, nll_gap, probe_accuracy, ...), split `heldout` (inputs never
  trained on) or `train` (only when the caller held nothing out, or asked for it), when one of `WHEN` (`before`,
  `after`, `closed`, ..., `at_<s>` for a conditioning level). The one exception list, `RUN`: the run's costs and
  flags (`steps`, `rounds`, `seconds`, `world_size`, `interrupted`, `prompt_tokens_saved`), each count as
  `n_<things>` and each phase's time as `<phase>_seconds`.
- `info` holds the settings, flat: `method`, the method config's fields, then what the run chose or was given (the
  prompts, the split's name, the found prompt as text, ...). Results saved before this schema load into it
  (`current_schema`).
- `samples`: a DataFrame with one row per shown sample and its per-sample reward / score columns, so a plot
  or a panel never scores anything again.
- `kind`: unique per result class; `tnb.load(folder)` opens any saved result (or reward, prompt) by its kind.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from . import _io
from .errors import ArtifactKindError, ModelLoadError

KINDS: dict[str, type[ArrowResult]] = {}  # saved kind -> result class (filled as classes are defined)

SPLITS = ("train", "heldout")
WHEN = ("before", "after", "closed", "gain", "with_prompt", "with_all_prompts", "true_prompt", "closed_vs_true",
        "readout")
RUN = ("steps", "rounds", "seconds", "world_size", "interrupted", "prompt_tokens_saved")  # the one exception list
_KEY = re.compile(rf"[a-z][a-z0-9_]*_({'|'.join(SPLITS)})_({'|'.join(WHEN)}|at_\d+(\.\d+)?)")
_COUNT, _TIMING = re.compile(r"n_[a-z][a-z_]*"), re.compile(r"[a-z][a-z_]*_seconds")

# metric keys of results saved before the one schema -> their names now
RENAMED_METRICS = {
    "pairs": "n_pairs", "train_pairs": "n_train_pairs", "eval_pairs": "n_eval_pairs", "eval_tokens": "n_eval_tokens",
    "probes": "n_probes", "candidates": "n_candidates", "pool": "n_pool", "prompts": "n_prompts",
    "questions": "n_questions", "turns": "n_turns", "replay_pairs": "n_replay_pairs",
    "spearman_heldout": "spearman_heldout_after", "pair_reward_margin": "reward_margin_train_before",
    "best_of_n_reward": "best_of_n_reward_train_before", "nll_teacher_heldout": "nll_teacher_heldout_before",
    "nll_teacher_train": "nll_teacher_train_before"
}
_COUNTS_IN_INFO = ("n_train", "n_heldout")  # counts that older results kept with the settings


def metric_key_ok(key: str) -> bool:
    """Whether `key` follows the schema: {objective}_{split}_{when}, or the exception list (`RUN`, n_*, *_seconds)."""
    return key in RUN or any(p.fullmatch(key) for p in (_KEY, _COUNT, _TIMING))


def schema_problems(result: ArrowResult) -> list[str]:
    """What in `result` breaks the one schema (module docstring); [] when nothing does."""
    bad = [f"metrics[{k!r}] = {v!r} is not a number" for k, v in result.metrics.items()
           if not (v is None or isinstance(v, (bool, int, float)))]
    bad += [f"metrics key {k!r} is not {{objective}}_{{split}}_{{when}} nor in the exception list"
            for k in result.metrics if not metric_key_ok(k)]
    bad += [f"info[{k!r}] nests settings: info is flat" for k, v in result.info.items() if k == "config"]
    return bad + ([] if isinstance(result.info.get("method"), str) else ["info has no method"])


def current_schema(metrics: dict[str, Any], info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A saved result's metrics and info in the one schema: settings nested under "config" flattened into info,
    text and flags moved from metrics to info, counts moved from info to metrics, renamed keys renamed. Values are
    kept exactly; a result already in the schema comes back unchanged."""
    config = info.get("config")
    info = (dict(config) if isinstance(config, dict) else {}) | {k: v for k, v in info.items() if k != "config"}
    if "objective" in info and info.get("method") == info["objective"]:
        del info["objective"]  # arrow 3 named its method twice
    out: dict[str, Any] = {k: info.pop(k) for k in _COUNTS_IN_INFO if k in info}
    for key, value in metrics.items():
        if key in ("objective", "method") and value == info.get("method"):
            continue  # the method, once more
        if isinstance(value, str) or key == "kl_is_upper_bound":
            info.setdefault(key, value)  # text (the split, the found prompt) and flags describe the run
        else:
            out[renamed_metric(key)] = value
    return out, info


def renamed_metric(key: str) -> str:
    """An old metric key's name now (RENAMED_METRICS, and Spearman per reward: spearman_heldout_<r> ->
    spearman_<r>_heldout_after, with the baseline's base_ prefix kept)."""
    base, rest = ("base_", key[5:]) if key.startswith("base_") else ("", key)
    if rest.startswith("spearman_heldout_") and not metric_key_ok(rest):
        return f"{base}spearman_{rest[len('spearman_heldout_'):]}_heldout_after"
    return base + RENAMED_METRICS.get(rest, rest)


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
        def parse() -> ArrowResult:  # a hand-edited result.json fails here as a ModelLoadError (`_io.parsed`)
            metrics, info = current_schema(dict(meta["metrics"]), dict(meta["info"]))
            return cls(metrics=metrics, info=info, history=pd.read_parquet(folder / "history.parquet"))

        result = _io.parsed(folder, parse)
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
