"""Panel 3 — in-context prompt ⇒ parameter update: distil a prompt into an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from .. import plots
from ..policy import BasePolicy
from ..prompt import Prompt
from ._base import STYLE, ArrowPanel, FieldError, field_lines, notice, samples_table, slider, text_area, wide

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
    """Edit a prompt z, distil it into π* (context distillation) — or make π* in one forward of the shipped prompt ⇒
    LoRA hypernetwork (method "hypernetwork", survey §4.2) — and compare on a held-out input: π0 without z, the
    teacher π0 with z, the student π* without z; held-out KL before/after.

    Args:
        policy: π0; None loads the embedded default model.
    """

    title = "3 · In-context prompt ⇒ parameter update (§4): context distillation"
    equation = (r"$\min_\pi\; \mathbb{E}_x\, \mathrm{KL}\big[\pi_0(y|x, z)\,\|\,\pi(y|x)\big]$ &nbsp;(Eq. 9) "
                r"&nbsp; so that &nbsp; $\pi^*(y|x) \approx \pi_0(y|x, z)$ &nbsp;(Eq. 8)")
    placeholder = "press Distil to see the held-out KL to the prompted teacher, before and after"

    def __init__(self, policy: BasePolicy | None = None, *, prompt: str = PERSONA, inputs: str = INPUTS,
                 heldout: str = "What do you think of Mondays?") -> None:
        self.prompt = text_area(prompt, "prompt z", rows=3)
        self.inputs = text_area(inputs, "transfer inputs", rows=4)
        self.heldout = w.Text(value=heldout, description="held-out x", layout=wide(), style=STYLE)
        self.objective = w.Dropdown(options=["kl", "imitation", "hypernetwork"], value="kl", description="method",
                                    style=STYLE)
        self.steps = w.IntSlider(value=10, min=1, max=200, description="steps", style=STYLE, layout=slider())
        self.max_new_tokens = w.IntSlider(value=24, min=4, max=96, description="max new tokens", style=STYLE,
                                          layout=slider())
        super().__init__(policy, controls=[self.prompt, self.inputs, self.heldout,
                                           w.HBox([self.objective, self.steps]), self.max_new_tokens],
                         run_label="Distil")

    def _work(self) -> DistilShown:
        from ..arrows.prompt_to_update import prompt_to_update

        xs = field_lines(self.inputs, "one transfer input per line")
        if not self.prompt.value.strip():
            raise FieldError(self.prompt, "is empty: write the prompt z to distil (e.g. a persona).")
        if not self.heldout.value.strip():
            raise FieldError(self.heldout, "is empty: write one input the student never trains on.")
        z = Prompt(system=self.prompt.value)
        if self.objective.value == "hypernetwork":  # one forward, no training: the steps do not apply
            res = prompt_to_update(self.policy, z, xs, method="hypernetwork")
        else:
            res = prompt_to_update(self.policy, z, xs, method=self.objective.value,
                                   steps=self.steps.value, callbacks=self.training_callbacks())
        x, n = self.heldout.value, self.max_new_tokens.value
        shown = ["", "", ""]
        for i, pol in enumerate((self.policy, self.policy.with_prompt(z), res.policy)):  # tokens stream into the table
            shown[i] = self.stream_text(pol, x, lambda t, i=i: self._table([*shown[:i], t, *shown[i + 1:]]),
                                        max_new_tokens=n)
        return DistilShown(res, *shown)

    def _table(self, texts: list[str]) -> None:
        self.output.value = samples_table({"π0 without z": [texts[0]], "teacher π0 with z": [texts[1]],
                                           "student π* without z": [texts[2]]})

    def _show(self, shown: DistilShown) -> None:
        m = shown.result.metrics
        labels = [k for k in ("kl_heldout_before", "kl_heldout_after") if k in m]
        self.show_figure(plots.kl_bars(labels, [float(m[k]) for k in labels], highlight=len(labels) - 1,
                                       title="held-out KL[π0(·|x,z) ‖ π(·|x)] before / after"))
        self._table([shown.base, shown.teacher, shown.student])
        if len(labels) == 2:
            before, after = (float(m[k]) for k in labels)
            closer = f"{100 * (1 - after / before):.0f}% closer to" if before > 0 else "as close to"
            self.output.value += notice(
                f"without z in its context, the student is {closer} the teacher (π0 with z) than π0 was, on held-out "
                f"inputs (KL {before:.3f} → {after:.3f}): compare its answer with the teacher's above.")
        self.output.value += shown.result._repr_html_()
