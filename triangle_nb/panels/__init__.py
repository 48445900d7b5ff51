"""Interactive panels: the triangle navigator, a token heatmap, and one panel per arrow.

Each panel is a thin view: synced widget values, and handlers that call one library function and
one plot builder (triangle_nb.plots). Every panel works with the embedded default model when no
policy is given.

>>> import triangle_nb as tnb
>>> tnb.panels.navigator()             # doctest: +SKIP
>>> tnb.panels.UpdateToRewardPanel()   # doctest: +SKIP
>>> tnb.panels.app()                   # doctest: +SKIP   (the navigator + six panels in tabs: notebooks/app.ipynb)
"""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from ..policy import BasePolicy
from ._app import PANELS, App, app
from ._base import ArrowPanel, FieldError, default_policy
from .heatmap import TokenHeatmap, readable_tokens
from .prompt_to_reward import PromptToRewardPanel
from .prompt_to_update import PromptToUpdatePanel
from .reward_to_prompt import RewardToPromptPanel
from .reward_to_update import RewardToUpdatePanel
from .triangle import ARROWS, Triangle
from .update_to_prompt import UpdateToPromptPanel
from .update_to_reward import UpdateToRewardPanel

__all__ = ["ARROWS", "PANELS", "App", "ArrowPanel", "FieldError", "Navigator", "PromptToRewardPanel", "PromptToUpdatePanel",
           "RewardToPromptPanel", "RewardToUpdatePanel", "TokenHeatmap", "Triangle", "UpdateToPromptPanel",
           "UpdateToRewardPanel", "app", "default_policy", "navigator", "panel", "readable_tokens"]


def panel(arrow: str, policy: BasePolicy | None = None, **kwargs: Any) -> ArrowPanel:
    """The panel of one arrow by name, e.g. panel("update_to_reward").

    Args:
        arrow: one of the keys of `PANELS` (the arrow's module name).
        policy: the model; None uses the embedded default (loaded on first run).
    """
    if arrow not in PANELS:
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"arrow={arrow!r} has no panel; use one of {list(PANELS)}.")
    return PANELS[arrow](policy, **kwargs)


class Navigator(w.VBox):
    """The triangle above the panel of the selected arrow (each panel built once, on first click).

    Args:
        policy: the model every panel uses; None uses the embedded default model.
        selected: the arrow to open first ("" for none).
    """

    def __init__(self, policy: BasePolicy | None = None, *, selected: str = "") -> None:
        self.policy = policy
        self.triangle = Triangle(selected=selected)
        self.panels: dict[str, ArrowPanel] = {}
        self.slot = w.Box([])
        super().__init__([self.triangle, self.slot])
        self.triangle.observe(lambda _: self._open(), names="selected")
        self._open()

    def _open(self) -> None:
        key = self.triangle.selected
        if key and key not in self.panels:
            self.panels[key] = panel(key, self.policy)
        self.slot.children = [self.panels[key]] if key else []


def navigator(policy: BasePolicy | None = None, *, selected: str = "") -> Navigator:
    """The triangle navigator with the selected arrow's panel underneath (what `%triangle` shows)."""
    return Navigator(policy, selected=selected)
