"""One vocabulary for every arrow: the shared argument names, the old spellings they replace, and the one way
options are passed (a method config object plus keyword overrides of its fields).

Every arrow accepts `config=` (its method's config dataclass) and keyword overrides of single fields; the
old spellings below are accepted for now with a DeprecationWarning that names the new one. The README's arrow
table lists the same names (`VOCABULARY`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import InvalidArgumentError

F = TypeVar("F", bound=Callable[..., Any])

# the shared names, one per concept, and what they mean in every arrow that has the concept
VOCABULARY: dict[str, str] = {
    "steps": "optimiser steps (training arrows)",
    "batch_size": "items per optimiser step",
    "learning_rate": "AdamW learning rate (`tag_learning_rate`: the soft tags' own rate)",
    "lora_r": "LoRA rank of a new adapter",
    "seed": "seeds sampling, initialisation and the train/held-out split",
    "samples": "responses sampled per input (training data, scoring, groups)",
    "eval_samples": "responses sampled per held-out input for the metrics",
    "max_new_tokens": "length of every sampled response",
    "temperature": "sampling temperature of those responses",
    "holdout": "share of `inputs` held out (seeded, shuffled) when no `eval_inputs` are given",
    "eval_inputs": "held-out inputs instead of a split of `inputs`",
    "rounds": "search rounds after round 0",
    "proposals": "prompts the model proposes per round",
    "edits": "rewrites of each beam prompt per round",
    "beam": "best prompts kept after each round: rewritten, crossed and shown to the proposers",
    "proposal_tokens": "length limit of a proposed prompt",
    "demonstrations": "self-proposed few-shot candidates per search (prompt searches)",
    "shots": "examples in each demonstration candidate",
    "style_words": "contrast words in the self-proposed style instruction (0: none)",
    "callback": "called with each history row (a step or a candidate), e.g. for live plots",
    "config": "the method's config object; keywords override its fields",
}

# old spelling -> the one name of every arrow
RENAMED: dict[str, str] = {
    "lr": "learning_rate", "rank": "lora_r", "tag_lr": "tag_learning_rate",
    "n": "samples", "samples_per_input": "samples",
    "n_proposals": "proposals", "n_edits": "edits", "mutations": "edits", "keep": "beam",
    "propose_tokens": "proposal_tokens", "test_fraction": "holdout",
}


def renamed(options: Mapping[str, Any], renames: Mapping[str, str] = RENAMED) -> dict[str, Any]:
    """Accept the old spellings for now, with a DeprecationWarning naming the new one.

    >>> renamed({"lr": 0.1})  # doctest: +SKIP
    {'learning_rate': 0.1}
    """
    out = dict(options)
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise InvalidArgumentError(f"both {old}= and {new}= given: {old} is the old name of {new}; pass {new} only.")
            warnings.warn(f"{old}= is deprecated: use {new}= (the same name in every arrow).", DeprecationWarning,
                          stacklevel=caller_level())
            out[new] = out.pop(old)
    return out


def caller_level() -> int:
    """The stack level of the first frame outside triangle_nb: warnings then point at the user's line (and
    Python's default filters show a DeprecationWarning raised from __main__ / a notebook cell)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("triangle_nb"):
        frame, level = frame.f_back, level + 1
    return level


def build_config(cls: type, options: Mapping[str, Any], base: Any = None, **fixed: Any) -> Any:
    """`cls(**fixed, **options)` — or `base` with those fields replaced — with old spellings renamed (and warned
    about) and unknown options named in the error. `fixed` values of None are left out (the default stays)."""
    if base is not None and not isinstance(base, cls):
        raise InvalidArgumentError(f"config must be a {cls.__name__}, got {type(base).__name__}.")
    opts = renamed(dict(options)) | {k: v for k, v in fixed.items() if v is not None}
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(opts) - valid)
    if unknown:
        raise InvalidArgumentError(f"unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}.")
    return dataclasses.replace(base, **opts) if base is not None else cls(**opts)


def keyword_only(*names: str) -> Callable[[F], F]:
    """Make `names` keyword-only; positional values for them, in the order the function took them before, still work
    for now, with a DeprecationWarning naming the keywords. `beta` is keyword-only in every public call this way."""

    def wrap(fn: F) -> F:
        params = inspect.signature(fn).parameters.values()
        positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            extra = args[positional:]
            if extra and len(extra) <= len(names) and not set(names[:len(extra)]) & kwargs.keys():
                given = ", ".join(f"{n}=" for n in names[:len(extra)])
                warnings.warn(f"{fn.__name__}: passing {given} positionally is deprecated: pass {given} by keyword "
                              "(keyword-only in every call).", DeprecationWarning, stacklevel=caller_level())
                args, kwargs = args[:positional], kwargs | dict(zip(names, extra))
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap


keyword_beta = keyword_only("beta")


def old_name(value: Any, old_value: Any, *, old: str, new: str, default: Any) -> Any:
    """The value of argument `new`, also accepted under its old name `old` for now (with a DeprecationWarning naming
    `new`); both given is an error."""
    if old_value is None:
        return value
    if value != default:
        raise InvalidArgumentError(f"both {old}= and {new}= given: {old} is the old name of {new}; pass {new} only.")
    warnings.warn(f"{old}= is deprecated: use {new}= (the same name in every arrow).", DeprecationWarning,
                  stacklevel=caller_level())
    return old_value
