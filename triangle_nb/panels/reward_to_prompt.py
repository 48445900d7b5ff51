"""Panel 6 — reward model ⇒ in-context prompt: search for the prompt whose outputs score best."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..policy import BasePolicy
from ._base import STYLE, ArrowPanel, field_lines, lines, notice, samples_table, slider, text_area, wide
from .reward_to_update import INPUTS, REWARDS

CANDIDATES = "You are a cheerful assistant.\nAnswer briefly.\nYou love everything and say so."


class RewardToPromptPanel(ArrowPanel):
    """Search prompts by reward (Eq. 16): the optimisation trajectory and the winning prompt.
    With method "conditioned" (Eq. 17), train z(s) + an adapter; then a slider asks for a reward
    level s in [0, 1] and generates live.

    Args:
        policy: π0; None loads the embedded default model.
        **options: other arguments of `tnb.reward_to_prompt` (e.g. max_new_tokens=16, proposals=1).
    """

    title = "6 · Reward model ⇒ in-context prompt (§7): prompt optimisation"
    equation = (r"$\max_z\; \mathbb{E}_{x,\, y\sim\pi_0(\cdot|x, z)}\big[r(x,y)\big]$ &nbsp;(Eq. 16); &nbsp; "
                r"$\max_{\pi, z}\; \mathbb{E}\,\log\pi\big(y\,|\,x, z(r(x,y))\big)$ &nbsp;(Eq. 17)")
    placeholder = "press Optimise prompt to see the best reward per search round"

    def __init__(self, policy: BasePolicy | None = None, *, inputs: str = INPUTS,
                 candidates: str = CANDIDATES, **options: Any) -> None:
        self.options = options
        self.reward = w.Dropdown(options=list(REWARDS), description="reward", style=STYLE)
        self.method = w.Dropdown(options=["search", "conditioned"], value="search", description="method",
                                 style=STYLE)
        self.rounds = w.IntSlider(value=1, min=1, max=10, description="rounds", style=STYLE, layout=slider())
        self.inputs = text_area(inputs, "inputs", rows=4)
        self.candidates = text_area(candidates, "candidates", rows=3)
        self.s = w.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.1, description="requested level s",
                               style=STYLE, continuous_update=False, disabled=True, layout=slider())
        self.x = w.Text(value="Describe your morning.", description="input x", layout=wide(), style=STYLE)
        self.live = w.HTML("")
        self._s_moved = False  # the slider moved while the panel was busy: generate for its value afterwards
        super().__init__(policy, controls=[w.HBox([self.reward, self.method]), self.rounds, self.inputs,
                                           self.candidates, self.s, self.x],
                         run_label="Optimise prompt")
        self.children = (*self.children, self.live)
        self.s.observe(lambda _: self.generate_for_s(), names="value")
        self.method.observe(self._on_method, names="value")

    def _on_method(self, _: Any) -> None:
        conditioned = self.method.value == "conditioned"
        self.rounds.description = "steps" if conditioned else "rounds"
        self.rounds.max, self.rounds.value = (200, 20) if conditioned else (10, 1)
        self.candidates.layout.display = "none" if conditioned else ""

    def _work(self) -> Any:
        from ..arrows.reward_to_prompt import reward_to_prompt

        xs = field_lines(self.inputs)
        reward = REWARDS[self.reward.value]()
        extra = {"candidates": tuple(lines(self.candidates.value)), "rounds": self.rounds.value} \
            if self.method.value == "search" else {"steps": self.rounds.value, "callbacks": self.training_callbacks()}
        return reward_to_prompt(self.policy, reward, xs, method=self.method.value, **(self.options | extra))

    def _show(self, result: Any) -> None:
        self.show_figure(result.plot())
        best = f"<p><b>best prompt:</b> {html.escape(str(result.prompt))}</p>" if result.prompt is not None else ""
        self.output.value = best + _notice(getattr(result, "metrics", {})) + result._repr_html_()
        self.s.disabled = not hasattr(result, "policy_for")
        self.live.value = ""

    def _after(self, main: bool) -> None:
        if (main or self._s_moved) and not self.s.disabled:
            self.generate_for_s()

    def generate_for_s(self) -> None:
        """Generate for input x with z(s) and the conditioned adapter (in the background)."""
        result = self.result
        if result is None or not hasattr(result, "policy_for"):
            return
        if self.busy:  # one job at a time: remember the request, served when the running one ends (_after)
            self._s_moved = True
            return
        self._s_moved = False
        s = self.s.value
        column = f"y ~ π*(·|x, z(s={s:.1f}))"

        def show(y: str) -> None:
            self.live.value = samples_table({column: [y]})

        self.run(lambda: self.stream_text(result.policy_for(s), self.x.value, show, max_new_tokens=32), show)


def _notice(m: dict[str, Any]) -> str:
    if "reward_heldout_gain" in m:
        gain = m["reward_heldout_gain"]
        return notice(f"on inputs the search never saw, the best prompt moves the mean reward "
                      f"{m['reward_heldout_before']:.3f} → {m['reward_heldout_after']:.3f} ({gain:+.3f}): "
                      + ("a prompt alone changes what the model writes." if gain > 0.02 else
                         "barely — add candidates or rounds, or try the conditioned method."))
    if "spearman_heldout_after" in m:
        return notice(f"Spearman {m['spearman_heldout_after']:.2f} between the requested level s and the reward the answers "
                      "get, on held-out inputs: 1 would be perfect control, 0 none.")
    return ""

