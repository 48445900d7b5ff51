"""Panel 6 — reward model ⇒ in-context prompt: search for the prompt whose outputs score best."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from .. import plots
from ..policy import BasePolicy
from ._base import STYLE, ArrowPanel, lines, samples_table, slider, text_area, wide
from .reward_to_update import INPUTS, REWARDS

CANDIDATES = "You are a cheerful assistant.\nAnswer briefly.\nYou love everything and say so."


class RewardToPromptPanel(ArrowPanel):
    """Search prompts by reward (Eq. 16): the optimisation trajectory and the winning prompt.
    With method "conditioned" (Eq. 17), a slider asks for a reward level s and generates live.

    Args:
        policy: π0; None loads the embedded default model.
    """

    title = "6 · Reward model ⇒ in-context prompt (§7): prompt optimisation"
    equation = "max_z E_{x, y ~ π0(·|x, z)}[r(x, y)]   (Eq. 16)"

    def __init__(self, policy: BasePolicy | None = None, *, inputs: str = INPUTS,
                 candidates: str = CANDIDATES) -> None:
        self.reward = w.Dropdown(options=list(REWARDS), description="reward", style=STYLE)
        self.method = w.Dropdown(options=["search", "conditioned"], value="search", description="method",
                                 style=STYLE)
        self.rounds = w.IntSlider(value=2, min=1, max=10, description="rounds / steps", style=STYLE, layout=slider())
        self.inputs = text_area(inputs, "inputs", rows=4)
        self.candidates = text_area(candidates, "candidates", rows=3)
        self.s = w.FloatSlider(value=0.5, min=-1.0, max=1.0, step=0.1, description="requested reward s",
                               style=STYLE, continuous_update=False, disabled=True, layout=slider())
        self.x = w.Text(value="Describe your morning.", description="input x", layout=wide(), style=STYLE)
        self.live = w.HTML("")
        super().__init__(policy, controls=[w.HBox([self.reward, self.method, self.rounds]), self.inputs,
                                           self.candidates, w.HBox([self.s]), self.x],
                         run_label="Optimise prompt")
        self.children = (*self.children, self.live)
        self.s.observe(lambda _: self.generate_for_s(), names="value")

    def _work(self) -> Any:
        from ..reward_to_prompt import reward_to_prompt

        reward = REWARDS[self.reward.value]()
        extra = {"candidates": lines(self.candidates.value), "rounds": self.rounds.value} \
            if self.method.value == "search" else {"steps": self.rounds.value}
        return reward_to_prompt(self.policy, reward, lines(self.inputs.value), method=self.method.value, **extra)

    def _show(self, result: Any) -> None:
        self.show_figure(result.plot())
        self.output.value = (f"<p><b>best prompt:</b> {result.prompt}</p>" if result.prompt is not None else "") \
            + result._repr_html_()
        self.s.disabled = self.method.value != "conditioned"
        if not self.s.disabled:
            self.generate_for_s()

    def generate_for_s(self) -> None:
        """Generate for input x under z(s) (conditioned results only)."""
        if self.result is None or self.s.disabled:
            return
        y = self.result.generate([self.x.value], s=self.s.value)[0]
        self.live.value = samples_table({f"y ~ π(·|x, z(s={self.s.value:+.1f}))": [y]})
