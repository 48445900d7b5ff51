"""triangle_nb: the triangle of LLM adaptation — parameter update, reward model, in-context prompt —
and the six arrows between them, on a real model, in a notebook.

>>> import triangle_nb as tnb
>>> pi0 = tnb.load_policy()  # doctest: +SKIP
>>> z = tnb.Prompt(system="You are a cheerful assistant.")
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from . import errors, rewards
from .loading import cache_dir, load_policy
from .policy import BasePolicy, Composition, Policy
from .prompt import Prompt
from .results import ArrowResult
from .scoring import LogProbs

__version__ = "0.1.0"

# The arrows and the panels are imported on first use (they pull in TRL, plotly, widgets).
_LAZY = {
    "reward_to_update": "reward_to_update",
    "BestOfN": "reward_to_update",
    "beta_sweep": "reward_to_update",
    "length_hacking": "reward_to_update",
    "update_to_reward": "update_to_reward",
    "steer": "update_to_reward",
    "steer_trace": "update_to_reward",
    "prompt_to_update": "prompt_to_update",
    "update_to_prompt": "update_to_prompt",
    "DistillConfig": "prompt_to_update",
    "distillation_task": "prompt_to_update",
    "probe_accuracy": "prompt_to_update",
    "RecoverConfig": "update_to_prompt",
    "SoftPrompt": "soft_prompt",
    "prompt_to_reward": "prompt_to_reward",
    "contrastive_pairs": "prompt_to_reward",
    "train_reward_model": "prompt_to_reward",
    "agreement": "prompt_to_reward",
    "reward_to_prompt": "reward_to_prompt",
    "MetaReward": "reward_to_prompt",
}
_SUBMODULES = {"presets", "panels", "plots", "distributed"}

__all__ = ["ArrowResult", "BasePolicy", "Composition", "LogProbs", "Policy", "Prompt", "cache_dir", "errors",
           "load_policy", "rewards", *_LAZY, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'triangle_nb' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keep `tnb.<arrow>` the function after its same-named module is imported (import sets the attribute)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext triangle_nb`: register the magics (see triangle_nb.magics)."""
    from .magics import register

    register(ipython)
