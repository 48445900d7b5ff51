"""triangle_nb: the triangle of LLM adaptation — parameter update, reward model, in-context prompt —
and the six arrows between them, on a real model, in a notebook.

>>> import triangle_nb as tnb
>>> pi0 = tnb.load_policy()  # doctest: +SKIP
>>> z = tnb.Prompt(system="You are a cheerful assistant.")
"""

from __future__ import annotations

import importlib
from typing import Any

from . import algebra, errors, rewards  # noqa: F401  (algebra: Policy.save writes through it)
from ._open import load
from .loading import cache_dir, load_policy
from .policy import BasePolicy, Composition, Policy
from .prompt import Prompt
from .results import ArrowResult
from .scoring import LogProbs

__version__ = "0.1.0"

# The arrows and the panels are imported on first use (they pull in TRL, plotly, widgets). Each arrow is a
# function named after its direction; its module is `triangle_nb.arrows.<direction>`, so the two never share a name.
_LAZY = {
    "reward_to_update": "arrows.reward_to_update",
    "beta_sweep": "arrows.reward_to_update",
    "length_hacking": "arrows.reward_to_update",
    "update_to_reward": "arrows.update_to_reward",
    "steer": "arrows.update_to_reward",
    "steer_trace": "arrows.update_to_reward",
    "rerank": "arrows.update_to_reward",
    "prompt_to_update": "arrows.prompt_to_update",
    "DistillConfig": "arrows.prompt_to_update",
    "distillation_task": "arrows.prompt_to_update",
    "probe_accuracy": "arrows.prompt_to_update",
    "train_hypernetwork": "hypernetwork",
    "HyperNetwork": "hypernetwork",
    "update_to_prompt": "arrows.update_to_prompt",
    "RecoverConfig": "arrows.update_to_prompt",
    "prompt_to_reward": "arrows.prompt_to_reward",
    "contrastive_pairs": "arrows.prompt_to_reward",
    "train_reward_model": "arrows.prompt_to_reward",
    "agreement": "arrows.prompt_to_reward",
    "train_autoregressive_reward": "autoregressive_reward",
    "AutoregressiveReward": "autoregressive_reward",
    "Conversation": "lifelong",
    "internalise": "lifelong",
    "recall": "lifelong",
    "reward_to_prompt": "arrows.reward_to_prompt",
    "MetaReward": "arrows.reward_to_prompt",
    "union": "algebra",
    "intersection": "algebra",
    "reward_guided": "algebra",
    "BestOfN": "sampling",
    "self_improve": "compositions",
    "SoftPrompt": "soft_prompt",
    "set_live": "_bakery",
    "is_live": "_bakery",
}
_SUBMODULES = {"arrows", "bake", "presets", "panels", "plots", "distributed"}

__all__ = ["ArrowResult", "BasePolicy", "Composition", "LogProbs", "Policy", "Prompt", "cache_dir", "errors",
           "load", "load_policy", "rewards", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'triangle_nb' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext triangle_nb`: register the magics (see triangle_nb.magics)."""
    from .magics import register

    register(ipython)
