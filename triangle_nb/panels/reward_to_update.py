"""Panel 1 — reward model ⇒ parameter update: train π* on a reward, see rewards before/after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import plots, rewards, training
from ..policy import BasePolicy
from ._base import (STYLE, ArrowPanel, field_lines, field_numbers, figure_widget, notice, samples_table, slider,
                    text_area)

REWARDS: dict[str, Callable[[], rewards.Reward]] = {
    "sentiment (VADER)": rewards.Sentiment,
    "length (words)": rewards.Length,
}
METHODS = ["best_of_n", "dpo", "kto", "rejection_sft", "grpo", "rloo"]
INPUTS = ("Describe your morning.\nTell me about the weather today.\nWhat do you think of Mondays?\n"
          "Describe the food at the new restaurant.\nHow was the traffic on your way home?\n"
          "Tell me about your last holiday.\nWhat is your opinion of winter?\nDescribe a long train journey.")
HELDOUT = ("How was your weekend?\nDescribe the view from your window.\nWhat did you have for lunch?\n"
           "Tell me about your neighbourhood.")  # never trained on: 4 inputs x 4 samples = 16 per histogram
CURVE_PLACEHOLDER = "press Train: the reward and KL of each training step are drawn here as π* trains"


class RewardToUpdatePanel(ArrowPanel):
    """Pick a reward and a method, set β and steps, train (Stop keeps the last good adapter).

    Draws the training curve live (the Trainer's logged reward / KL per step), then the held-out reward histograms
    of π0 and π* (every held-out sample of the result, `eval_samples` per held-out input: their means are the
    summary line's) and the samples side by side; the β-sweep button trains once per β and draws the reward–KL curve.

    Args:
        policy: π0; None loads the embedded default model.
        reward: a Reward to offer first in the dropdown (besides sentiment and length).
    """

    title = "1 · Reward model ⇒ parameter update (§2): optimise a reward, stay close to π0"
    equation = (r"$\max_\pi\; \mathbb{E}_{x,\,y\sim\pi(\cdot|x)}\big[r(x,y)\big] \;-\; "
                r"\beta\,\mathrm{KL}\big[\pi(y|x)\,\|\,\pi_0(y|x)\big]$ &nbsp; (Eq. 1)")
    placeholder = "press Train to see the held-out reward histograms of π0 and π*"

    def __init__(self, policy: BasePolicy | None = None, *, reward: rewards.Reward | None = None,
                 inputs: str = INPUTS, heldout: str = HELDOUT) -> None:
        options = ({"your reward": lambda: reward} if reward is not None else {}) | REWARDS
        self._rewards = options
        self.reward = w.Dropdown(options=list(options), description="reward", style=STYLE)
        self.method = w.Dropdown(options=METHODS, value="dpo", description="method", style=STYLE)
        self.beta = w.FloatLogSlider(value=0.1, base=10, min=-2, max=0.5, step=0.25, description="β", style=STYLE,
                                     layout=slider())
        self.steps = w.IntSlider(value=8, min=1, max=100, description="steps", style=STYLE, layout=slider())
        self.samples = w.IntSlider(value=4, min=2, max=16, description="samples per input", style=STYLE, layout=slider())
        self.max_new_tokens = w.IntSlider(value=16, min=4, max=64, description="max new tokens", style=STYLE,
                                          layout=slider())
        self.inputs = text_area(inputs, "inputs (one per line)", rows=5)
        self.heldout = text_area(heldout, "held-out inputs", rows=3)
        self.eval_samples = w.IntSlider(value=4, min=1, max=16, description="held-out samples each", style=STYLE,
                                        layout=slider())
        self.sweep_betas = w.Text(value="0.03, 0.1, 0.3", description="β sweep", style=STYLE)
        self.sweep_button = w.Button(description="Run β sweep", icon="line-chart")
        self.sweep_button.on_click(lambda _: self.run_sweep())
        self._sweep = False
        controls = [w.HBox([self.reward, self.method]), w.HBox([self.beta, self.steps]),
                    w.HBox([self.samples, self.max_new_tokens]), self.inputs, self.heldout, self.eval_samples,
                    w.HBox([self.sweep_betas, self.sweep_button])]
        super().__init__(policy, controls=controls, run_label="Train")
        self.curve = figure_widget(CURVE_PLACEHOLDER)
        self._rows: list[dict[str, Any]] = []
        self.children = (*self.children[:-2], self.curve, *self.children[-2:])

    def options(self) -> dict[str, Any]:
        """The arguments of `tnb.reward_to_update` as currently set."""
        return {"method": self.method.value, "beta": self.beta.value, "steps": self.steps.value,
                "samples": self.samples.value, "max_new_tokens": self.max_new_tokens.value,
                "eval_samples": self.eval_samples.value, "eval_train": 0}  # the panel shows held-out numbers only

    def run(self) -> None:
        """Train once with the current settings (the Train button)."""
        if not self.busy:
            self._sweep = False
            super().run()

    def run_sweep(self) -> None:
        """Train once per β in the sweep box and draw the reward–KL curve."""
        if not self.busy:
            self._sweep = True
            super().run()

    def _work(self) -> Any:
        from ..arrows.reward_to_update import reward_to_update

        xs, held = field_lines(self.inputs), field_lines(self.heldout, "one held-out input per line")
        betas = field_numbers(self.sweep_betas) if self._sweep else []
        reward = self._rewards[self.reward.value]()
        opts = self.options() | {"eval_inputs": held}
        self._rows = []
        if self.method.value != "best_of_n":
            live = [] if self._sweep else [training.on_row(self._draw_row)]
            opts["callbacks"] = [*self.training_callbacks(), *live]
        self.show_figure(plots.placeholder(self._curve_note(), height=220), "curve")
        if not self._sweep:
            return reward_to_update(self.policy, reward, xs, **opts)
        from ..arrows.reward_to_update import beta_sweep

        opts.pop("beta")
        return beta_sweep(self.policy, reward, xs, betas, **opts)  # each β's adapter removed: the table is what stays

    def _curve_note(self) -> str:
        if self.method.value == "best_of_n":
            return "best-of-N trains nothing (it re-ranks π0's samples): no training curve"
        if self._sweep:
            return "β sweep: one training run per β; the reward–KL curve appears when all are done"
        return "sampling π0's responses and pairing them… the curve starts with the first training step"

    def _draw_row(self, row: dict[str, Any]) -> None:
        """A TrainerCallback's on_log row (the Trainer's log, = the result's history): extend the live curve."""
        self._rows.append(row)
        self.show_figure(plots.training_curve(pd.DataFrame(self._rows), title=f"training {self.method.value} "
                                              f"(β={self.beta.value:g}): step {row['step']} of {self.steps.value}"),
                         "curve")

    def _show(self, result: Any) -> None:
        if isinstance(result, pd.DataFrame):
            self._show_sweep(result)
            return
        s = result.samples  # every held-out sample with its reward: the histograms' means are the summary's
        before, after = list(s["reward_before"]), list(s["reward_after"])
        n_x = result.metrics.get("n_heldout", len(set(s["x"])))
        title = (f"held-out reward, {result.info['method']} β={result.info['beta']:g}: "
                 f"{len(after)} samples of {n_x} held-out inputs")
        self.show_figure(plots.reward_histograms(before, after, title=title))
        if not result.history.empty:  # the curve drawn live, now from the result's own history
            self.show_figure(plots.training_curve(result.history, title=f"training {result.info['method']}: "
                                                  f"{len(result.history)} steps"), "curve")
        m = result.metrics
        summary = (f"<p>held-out reward (mean of the {len(after)} samples above) {m['reward_heldout_before']:.3f} → "
                   f"<b>{m['reward_heldout_after']:.3f}</b>, "
                   f"KL[π*‖π0] = {m['kl_heldout_after']:.3f} nats, {m['steps']} steps in {m['seconds']:.0f} s"
                   f"{' (interrupted: the last good adapter)' if m.get('interrupted') else ''}</p>")
        self.output.value = summary + _notice(m) + samples_table({"x": list(s["x"]), "π0": list(s["before"]),
                                                                  "π*": list(s["after"])})

    def _show_sweep(self, table: pd.DataFrame) -> None:
        self.show_figure(plots.reward_kl_curve(list(table["beta"]), list(table["reward_after"]),
                                               list(table["kl_after"])))
        self.output.value = table[["beta", "reward_before", "reward_after", "kl_after", "seconds"]].to_html(
            index=False, float_format="%.3f")


def _notice(m: dict[str, Any]) -> str:
    gain, kl = m["reward_heldout_after"] - m["reward_heldout_before"], m["kl_heldout_after"]
    if abs(gain) < 0.02:
        return notice(f"the held-out reward barely moved ({gain:+.3f}) for a KL of {kl:.3f} nats: raise the steps "
                      "or the samples, or lower β, for a larger move.")
    where = "right of" if gain > 0 else "left of"
    return notice(f"the orange histogram (π*) sits {where} the blue one (π0): {gain:+.3f} held-out reward for a KL "
                  f"of {kl:.3f} nats from π0. A lower β buys more reward for more KL — read the samples below for "
                  "reward hacking (repeated words, odd endings).")

