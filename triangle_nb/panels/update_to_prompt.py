"""Panel 4 — parameter update ⇒ in-context prompt: recover a prompt that imitates π*."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from .. import plots
from ..policy import BasePolicy
from ._base import STYLE, ArrowPanel, FieldError, field_lines, lines, notice, slider, text_area

HIDDEN = "You are a pirate. Always answer like a pirate: say 'Arr!' and call the user 'matey'."
CANDIDATES = ("You are a helpful assistant.\nYou are a pirate. Talk like a pirate.\n"
              "Answer in a very formal tone.\nYou are a cheerful assistant.")
INPUTS = ("Tell me about the weather today.\nWhat should I cook for dinner?\nDescribe your morning.\n"
          "How do I get to the train station?")


class UpdateToPromptPanel(ArrowPanel):
    """Search for z with π0(y|x,z) ≈ π*(y|x) and watch the candidates' KL.

    Without a `pi_star`, π* is a stand-in for an update: the same model under a hidden prompt
    (edit it), so the round trip can be checked by eye.

    Args:
        policy: π0; None loads the embedded default model.
        pi_star: the updated policy (e.g. `pi0.with_adapter(path)` or an arrow-1/3 result's `.policy`).
        **options: other arguments of `tnb.update_to_prompt` (e.g. proposals=1, max_new_tokens=16).
    """

    title = "4 · Parameter update ⇒ in-context prompt (§5): find the prompt behind an update"
    equation = r"$\min_z\; \mathbb{E}_x\, \mathrm{KL}\big[\pi_0(y|x, z)\,\|\,\pi^*(y|x)\big]$ &nbsp;(Eq. 12)"
    placeholder = "press Recover prompt to see each candidate prompt's KL to π* (lower is closer)"

    def __init__(self, policy: BasePolicy | None = None, *, pi_star: BasePolicy | None = None,
                 inputs: str = INPUTS, candidates: str = CANDIDATES, **options: Any) -> None:
        self._pi_star, self.options = pi_star, options
        self.hidden = text_area(HIDDEN, "π* = π0 + hidden z", rows=2)
        self.hidden.layout.display = "none" if pi_star is not None else ""
        self.inputs = text_area(inputs, "inputs", rows=3)
        self.candidates = text_area(candidates, "candidates", rows=4)
        self.method = w.Dropdown(options=["search", "soft"], value="search", description="method", style=STYLE)
        self.rounds = w.IntSlider(value=2, min=1, max=10, description="rounds / steps", style=STYLE, layout=slider())
        super().__init__(policy, controls=[self.hidden, self.inputs, self.candidates,
                                           w.HBox([self.method, self.rounds])], run_label="Recover prompt")

    def pi_star(self) -> BasePolicy:
        """π*: the given policy, or π0 under the hidden prompt."""
        return self._pi_star if self._pi_star is not None else self.policy.with_prompt(self.hidden.value)

    def _work(self) -> Any:
        from ..arrows.update_to_prompt import update_to_prompt

        xs = field_lines(self.inputs)
        candidates = lines(self.candidates.value)  # may be empty: the model proposes its own
        if self._pi_star is None and not self.hidden.value.strip():
            raise FieldError(self.hidden, "is empty: write the hidden prompt that makes π* (e.g. a persona).")
        truth = self.hidden.value if self._pi_star is None else None
        if self.method.value == "search":
            budget: dict[str, Any] = {"rounds": self.rounds.value, "callback": self.on_step}
        else:
            budget = {"steps": self.rounds.value, "callbacks": self.training_callbacks()}
        return update_to_prompt(self.pi_star(), self.policy, xs, method=self.method.value,
                                candidates=candidates, true_prompt=truth, **(self.options | budget))

    def _show(self, result: Any) -> None:
        table = result.candidates.sort_values("score").head(12)
        if len(table):
            self.show_figure(plots.kl_bars(list(table["prompt"]), list(table["score"]), highlight=0,
                                           title="candidate prompts, best first (Eq. 12 KL to π*, lower is better)",
                                           yaxis_title="score"))
        else:
            self.show_figure(result.plot())
        self.output.value = (f"<p><b>recovered prompt:</b> {html.escape(str(result.prompt))}</p>"
                             + notice("the shorter a bar, the closer π0 with that prompt behaves to π* (Eq. 12); the "
                                      "recovered prompt is the shortest — read it against the hidden z, if you set one.")
                             + result._repr_html_())
