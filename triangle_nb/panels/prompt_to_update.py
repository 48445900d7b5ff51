"""Panel 3 — in-context prompt ⇒ parameter update: distil a prompt into an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from .. import plots
from ..policy import BasePolicy
from ..prompt import Prompt
from ._base import STYLE, ArrowPanel, lines, samples_table, slider, text_area, wide

PERSONA = "You are a pirate. Always answer like a pirate: say 'Arr!' and call the user 'matey'."
INPUTS = ("Tell me about the weather today.\nWhat should I cook for dinner?\nDescribe your morning.\n"
          "How do I get to the train station?\nWhat is your favourite colour?\nGive me advice about exams.")


@dataclass
class DistilShown:
    """The result plus the three generations shown side by side on the held-out input."""

    result: Any
    base: str
    teacher: str
    student: str


class PromptToUpdatePanel(ArrowPanel):
    """Edit a prompt z, distil it into π* (context distillation), compare on a held-out input:
    π0 without z, the teacher π0 with z, the student π* without z; held-out KL before/after.

    Args:
        policy: π0; None loads the embedded default model.
    """

    title = "3 · In-context prompt ⇒ parameter update (§4): context distillation"
    equation = "min_π E KL[π0(y|x, z) ‖ π(y|x)]   (Eq. 9)   so that   π*(y|x) ≈ π0(y|x, z)   (Eq. 8)"

    def __init__(self, policy: BasePolicy | None = None, *, prompt: str = PERSONA, inputs: str = INPUTS,
                 heldout: str = "What do you think of Mondays?") -> None:
        self.prompt = text_area(prompt, "prompt z", rows=3)
        self.inputs = text_area(inputs, "transfer inputs", rows=4)
        self.heldout = w.Text(value=heldout, description="held-out x", layout=wide(), style=STYLE)
        self.objective = w.Dropdown(options=["kl", "imitation"], value="kl", description="objective", style=STYLE)
        self.steps = w.IntSlider(value=10, min=1, max=200, description="steps", style=STYLE, layout=slider())
        self.max_new_tokens = w.IntSlider(value=24, min=4, max=96, description="max new tokens", style=STYLE,
                                          layout=slider())
        super().__init__(policy, controls=[self.prompt, self.inputs, self.heldout,
                                           w.HBox([self.objective, self.steps]), self.max_new_tokens],
                         run_label="Distil")

    def _work(self) -> DistilShown:
        from ..arrows.prompt_to_update import prompt_to_update

        z = Prompt(system=self.prompt.value)
        res = prompt_to_update(self.policy, z, lines(self.inputs.value), objective=self.objective.value,
                               steps=self.steps.value, callbacks=self.training_callbacks())
        x, n = [self.heldout.value], self.max_new_tokens.value
        return DistilShown(res, self.policy.generate(x, max_new_tokens=n)[0],
                           self.policy.with_prompt(z).generate(x, max_new_tokens=n)[0],
                           res.policy.generate(x, max_new_tokens=n)[0])

    def _show(self, shown: DistilShown) -> None:
        m = shown.result.metrics
        labels = [k for k in ("kl_heldout_before", "kl_heldout_after") if k in m]
        self.show_figure(plots.kl_bars(labels, [float(m[k]) for k in labels], highlight=len(labels) - 1,
                                       title="held-out KL[π0(·|x,z) ‖ π(·|x)] before / after"))
        table = samples_table({"π0 without z": [shown.base], "teacher π0 with z": [shown.teacher],
                               "student π* without z": [shown.student]})
        self.output.value = table + shown.result._repr_html_()
