"""`tnb.load`: open anything triangle_nb saved, by what the folder or file holds.

It sits at the top of the house: it imports every module that defines something savable (compositions, arrow and
open-problem results, the lifelong conversation, reward models, rewards, prompts, soft prompts) when a load needs
it. The modules below never import upwards to find a kind: results register their class in `results.KINDS` when
their module is imported (`results.load_result`, which the baked runs use).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import _io
from .errors import ArtifactKindError, ModelLoadError
from .results import load_result


def load(folder: str | os.PathLike[str], **vertex_kwargs: Any) -> Any:
    """Open anything triangle_nb saved, by the kind written in it: an arrow's result (pass base=pi0 when it
    holds an adapter or a soft prompt), a composition (`policy.save(dir)`; base=pi0), a Reward (`reward.json`)
    or a Prompt (`prompt.json`).

    >>> res = tnb.load("runs/dpo", base=pi0)  # doctest: +SKIP
    """
    folder = Path(folder)
    _io.recover(folder)  # a save killed mid-swap is completed first
    if (folder / "composition.json").is_file():
        from . import presets  # noqa: F401  (registers its rules: a composition may use them)
        from .algebra import load_composition

        return load_composition(folder, **vertex_kwargs)
    if (folder / "conversation.json").is_file():  # a lifelong conversation (triangle_nb.lifelong)
        from .lifelong import Conversation

        return Conversation.load(folder, **vertex_kwargs)
    if (folder / "result.json").is_file():
        _register_results()
        return load_result(folder, **vertex_kwargs)
    return load_vertex_file(folder, **vertex_kwargs)


def _register_results() -> None:
    """Import every module that defines a result class (each registers its kinds in `results.KINDS`)."""
    from . import autoregressive_reward, hypernetwork, lifelong  # noqa: F401  (GenARM §3.2, T2L §4.2, lifelong)
    from .arrows import prompt_to_update, reward_to_prompt, reward_to_update, update_to_prompt  # noqa: F401


def load_vertex_file(path: Path, base: Any = None) -> Any:
    """A saved Reward, Prompt or SoftPrompt file, or a trained reward model's folder."""
    if path.is_dir() and (path / "reward.json").is_file():  # a Bradley–Terry head (safetensors + reward.json)
        from .arrows.prompt_to_reward import BradleyTerryReward

        return BradleyTerryReward.load(path)
    if not path.is_file():
        raise ModelLoadError(f"{str(path)!r} holds nothing triangle_nb saved (no result.json, reward.json, or a saved "
                             "reward / prompt JSON file): check the path.")
    kind = _io.read_json(path).get("kind")
    if kind == "reward":
        from .rewards import load_reward

        return load_reward(path)
    if kind in ("prompt", "soft_prompt"):
        from .soft_prompt import load_prompt_file

        return load_prompt_file(path, base)
    raise ArtifactKindError(f"{str(path)!r} holds kind={kind!r}, which tnb.load does not know.")
