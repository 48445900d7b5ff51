"""The app: the triangle navigator above the six arrow panels in tabs, on one model (what notebooks/app.ipynb
shows, in JupyterLab or as a Voilà app without code).

The model is loaded when the app is built, so a missing model package shows up as a readable message in the page
(what to install), not as a traceback; the panels are built but not run (each shows what it will draw).
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..errors import TriangleError
from ..policy import BasePolicy
from ._base import ArrowPanel, default_policy
from .prompt_to_reward import PromptToRewardPanel
from .prompt_to_update import PromptToUpdatePanel
from .reward_to_prompt import RewardToPromptPanel
from .reward_to_update import RewardToUpdatePanel
from .triangle import ARROWS, Triangle
from .update_to_prompt import UpdateToPromptPanel
from .update_to_reward import UpdateToRewardPanel

PANELS: dict[str, type[ArrowPanel]] = {  # arrow (module name) -> its panel
    "reward_to_update": RewardToUpdatePanel,
    "update_to_reward": UpdateToRewardPanel,
    "prompt_to_update": PromptToUpdatePanel,
    "update_to_prompt": UpdateToPromptPanel,
    "prompt_to_reward": PromptToRewardPanel,
    "reward_to_prompt": RewardToPromptPanel,
}

INTRO = ("<h2 style='margin:4px 0'>The triangle of LLM adaptation</h2>"
         "<p style='margin:2px 0 8px'>Three ways to adapt a language model — its <b>parameters</b> π*, a <b>reward "
         "model</b> r(x, y), an in-context <b>prompt</b> z — and six arrows that turn each into the others. Click an "
         "arrow (or a tab) to open its panel; every panel runs on {model}, on this machine.</p>")


class App(w.VBox):
    """The navigator and the six panels in tabs; selecting an arrow selects its tab and back.

    Args:
        policy: the model every panel uses; None loads the embedded default model now.
        panels: keyword arguments per panel key (e.g. {"update_to_reward": {"max_new_tokens": 16}}).

    Attributes:
        triangle, tabs, panels (key -> panel), error (the load error shown instead, or None).
    """

    def __init__(self, policy: BasePolicy | None = None, *, panels: dict[str, dict[str, Any]] | None = None) -> None:
        self.error: BaseException | None = None
        self.panels: dict[str, ArrowPanel] = {}
        try:
            policy = policy if policy is not None else _quiet_load()
        except TriangleError as exc:  # e.g. ModelLoadError: the model package is not installed
            self.error = exc
            super().__init__([w.HTML(INTRO.format(model="a local model")), w.HTML(_problem(exc))])
            self.add_class("tnb-app")
            return
        self.policy = policy
        self.triangle = Triangle(selected=ARROWS[0]["key"])
        for a in ARROWS:
            self.panels[a["key"]] = PANELS[a["key"]](policy, **(panels or {}).get(a["key"], {}))
        self.tabs = w.Tab(children=list(self.panels.values()), titles=[f"{a['number']} · {_short(a['title'])}"
                                                                       for a in ARROWS])
        self.tabs.add_class("tnb-tabs")
        self.triangle.observe(self._from_triangle, names="selected")
        self.tabs.observe(self._from_tabs, names="selected_index")
        name = html.escape(getattr(getattr(policy, "backbone", None), "name", type(policy).__name__))
        super().__init__([w.HTML(INTRO.format(model=f"<b>{name}</b>")), self.triangle, self.tabs],
                         layout=w.Layout(width="100%"))
        self.add_class("tnb-app")

    def __repr__(self) -> str:
        """What a saved notebook shows where the app cannot render (no kernel), instead of its widget tree."""
        if self.error is not None:
            return f"The triangle of LLM adaptation: {self.error}"
        return "The triangle of LLM adaptation: the navigator and six panels (run the cell to use them)."

    def _from_triangle(self, _: Any) -> None:
        keys = list(self.panels)
        if self.triangle.selected in keys and self.tabs.selected_index != keys.index(self.triangle.selected):
            self.tabs.selected_index = keys.index(self.triangle.selected)

    def _from_tabs(self, _: Any) -> None:
        index = self.tabs.selected_index
        if index is not None and self.triangle.selected != list(self.panels)[index]:
            self.triangle.selected = list(self.panels)[index]


def _quiet_load() -> BasePolicy:
    """The shared default model, without transformers' weight-loading bar (it would stay in the app's page)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return default_policy()
    finally:
        if shown:
            logging.enable_progress_bar()


def _short(title: str) -> str:
    """'Reward model ⇒ parameter update (§2)' -> 'reward ⇒ update'."""
    words = {"Reward model": "reward", "parameter update": "update", "Parameter update": "update",
             "in-context prompt": "prompt", "In-context prompt": "prompt", "reward model": "reward"}
    head = title.split(" (")[0]
    for long, short in words.items():
        head = head.replace(long, short)
    return head


def _problem(exc: BaseException) -> str:
    """The load error as a readable box in the page: what went wrong and what to run."""
    from ..loading import INSTALL_HINT

    return ("<div class='tnb-app-error' style='border:2px solid #c05621;border-radius:6px;padding:10px 14px;"
            "background:#fffaf0;max-width:900px'><b>The app cannot start: the model is not available.</b>"
            f"<p>{html.escape(str(exc))}</p><p>Install the embedded model once, then reload "
            f"this page:</p><pre style='background:#f7fafc;padding:6px'>{html.escape(INSTALL_HINT)}</pre>"
            "<p>Or pass your own model: <code>tnb.panels.app(tnb.load_policy('org/model'))</code>.</p></div>")


def app(policy: BasePolicy | None = None, **kwargs: Any) -> App:
    """The navigator plus the six panels in tabs (notebooks/app.ipynb; `voila notebooks/app.ipynb`)."""
    return App(policy, **kwargs)
