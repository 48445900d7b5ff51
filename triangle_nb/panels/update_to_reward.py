"""Panel 2 — parameter update ⇒ reward model: steer with Eq. 7, see the Eq. 4 reward per token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from .. import plots
from .. import presets as _presets
from ..errors import InvalidArgumentError
from ..policy import BasePolicy, Policy
from ._base import STYLE, ArrowPanel, FieldError, notice, samples_table, slider, text_area, wide
from .heatmap import TokenHeatmap

CHEERFUL = "You are a cheerful, upbeat assistant. You love everything and always sound happy."
GLOOMY = "You are a gloomy, pessimistic assistant. Everything is dull, sad and disappointing."


# Table 1 methods with a prompt pair: (z+, z−) defaults and the preset that decodes with them.
PRESETS: dict[str, tuple[str, str, Callable[..., Any] | None]] = {
    "steer: π1 = plain model": (CHEERFUL, GLOOMY, None),
    "linear alignment: π1 = π*": (_presets.PRINCIPLES, "",
                                  lambda p, zp, zn, b: _presets.linear_alignment(p, principles=zp, beta=b)),
    "ROSE: π1 = π*": (_presets.POSITIVE_PROMPT, _presets.REVERSE_PROMPT,
                      lambda p, zp, zn, b: _presets.rose(p, positive=zp, reverse=zn, beta=b)),
    "instructive decoding: π1 = π*": ("", _presets.OPPOSITE_INSTRUCTION,
                                      lambda p, zp, zn, b: _presets.instructive(p, distortion=zn, beta=b)),
}


STEER_NOTICE = ("blue tokens are the ones π* finds likelier than π0 (they earn the reward), red ones the ones it "
                "avoids; the steered answer is built from more blue words than the plain one. A smaller β steers "
                "harder (strength 1/β) while it shrinks these bars (the reward is β·log π*/π0).")


@dataclass
class SteerResult:
    """What one run shows: the base and steered generations and the Eq. 4 scores at β = 1."""

    base_text: str
    steered_text: str
    tokens: list[str]
    unit_scores: list[float]  # log π*(y_t|·) − log π0(y_t|·) per token (Eq. 4, β = 1)
    scored: str = "the text to score"  # which text the scores are for (the plain model's answer when that field is empty)


class UpdateToRewardPanel(ArrowPanel):
    """π* and π0 define a reward (Eq. 4); adding it to π1 per token steers generation (Eq. 7).

    By default π* and π0 are the same model under a cheerful and a gloomy system prompt (edit them),
    and π1 is the plain model. Moving β re-steers; the heatmap rescales instantly (cached log-probs).

    Args:
        policy: π1 (and the base of the prompted π*, π0); None loads the embedded default model.
        expert / anti: π* and π0 (e.g. an adapter and its base); given, they replace the prompt editors.
        x: the input to generate for.  text: a fixed response to score (empty: score the plain model's output).
    """

    title = "2 · Parameter update ⇒ reward model (§3): steer with the log-ratio reward"
    equation = (r"$r^*(x,y) = \beta\,\big(\log\pi^*(y|x) - \log\pi_0(y|x)\big)$ &nbsp;(Eq. 3/4); &nbsp; "
                r"$\log\pi_2(y_t|\cdot) \propto \log\pi_1(y_t|\cdot) + \tfrac{1}{\beta}\big(\log\pi^*(y_t|\cdot)"
                r" - \log\pi_0(y_t|\cdot)\big)$ &nbsp;(Eq. 7)")
    placeholder = "press Steer & score to see the log-ratio reward of each token (and the steered text below)"

    def __init__(self, policy: BasePolicy | None = None, *, expert: BasePolicy | None = None,
                 anti: BasePolicy | None = None, x: str = "Describe a rainy Monday morning.",
                 text: str = "I love rainy mornings: the sound of the rain is wonderful and cosy.",
                 max_new_tokens: int = 24) -> None:
        self._expert, self._anti = expert, anti
        self._cache: dict[str, Any] = {}
        self.preset = w.Dropdown(options=list(PRESETS), description="Table 1 method", style=STYLE,
                                 layout=w.Layout(width="420px"))
        self.expert_prompt = text_area(CHEERFUL, "π* prompt z+")
        self.anti_prompt = text_area(GLOOMY, "π0 prompt z−")
        for box in (self.preset, self.expert_prompt, self.anti_prompt):
            box.layout.display = "none" if expert is not None else ""
        self.x = w.Text(value=x, description="input x", layout=wide(), style=STYLE)
        self.text = text_area(text, "text to score")
        self.beta = w.FloatLogSlider(value=1.0, base=2, min=-2, max=3, step=0.25, description="β",
                                     continuous_update=False, style=STYLE,
                                     layout=slider())
        self.max_new_tokens = w.IntSlider(value=max_new_tokens, min=4, max=96, description="max new tokens",
                                          style=STYLE, continuous_update=False, layout=slider())
        self.live = w.Checkbox(value=True, description="re-steer when β moves")
        self.heatmap = TokenHeatmap(label="r*(x, y) per token: press Steer & score to see it")
        super().__init__(policy, controls=[self.preset, self.expert_prompt, self.anti_prompt, self.x, self.text,
                                           w.HBox([self.beta, self.live]), self.max_new_tokens],
                         run_label="Steer & score", stoppable=True)
        self.children = (*self.children[:-1], self.heatmap, self.output)
        self._pending = False
        self.beta.observe(self._on_beta, names="value")
        self.preset.observe(self._on_preset, names="value")

    # -- the vertices ----------------------------------------------------------------------
    def policies(self) -> tuple[BasePolicy, BasePolicy]:
        """(π*, π0): the given ones, or the base model under the two edited prompts."""
        base = self.policy
        if self._expert is not None:
            return self._expert, self._anti if self._anti is not None else base
        if not isinstance(base, Policy):
            raise InvalidArgumentError(f"the prompt editors need a plain Policy, got {type(base).__name__}: "
                                       "pass expert= and anti= instead.")
        z_pos, z_neg = self.expert_prompt.value.strip(), self.anti_prompt.value.strip()
        return (base.with_prompt(z_pos) if z_pos else base), (base.with_prompt(z_neg) if z_neg else base)

    def steered(self) -> BasePolicy:
        """π2 of Eq. 7 at the current β: `tnb.steer` with π1 = the plain model, or the chosen preset."""
        from ..arrows.update_to_reward import steer

        expert, anti = self.policies()
        preset = PRESETS[self.preset.value][2]
        if self._expert is not None or preset is None:
            return steer(base=self.policy, expert=expert, anti=anti, beta=self.beta.value)
        return preset(self.policy, self.expert_prompt.value, self.anti_prompt.value, self.beta.value)

    # -- handlers ----------------------------------------------------------------------------
    def _on_preset(self, _: Any) -> None:
        """A Table 1 method brings its own prompt pair (edit them freely afterwards)."""
        self.expert_prompt.value, self.anti_prompt.value, _ = PRESETS[self.preset.value]

    def _on_beta(self, _: Any) -> None:
        self._rescale()
        if self.live.value and self.result is not None:
            if self.busy:
                self._pending = True
            else:
                self.run()

    def _rescale(self) -> None:
        """Instant: the cached β = 1 scores times β (Eq. 3's scale), no model call."""
        res = self.result
        if res is None:
            return
        beta = self.beta.value
        # the reward is β·log π*/π0 while Eq. 7 steers with (1/β)·log π*/π0: a smaller β shrinks these bars and
        # steers harder — both numbers are shown so that a student does not read short bars as weak steering
        scale = f"β = {beta:.3g}, steering strength 1/β = {1 / beta:.3g}"
        self.show_heatmap(res.tokens, [beta * s for s in res.unit_scores],
                          label=f"r*(x, y) = β·log π*/π0 per token of {res.scored}, {scale}",
                          vmax=max(map(abs, res.unit_scores), default=0.0))  # colours on the β = 1 scale: β > 1 deepens
        self.show_figure(plots.token_reward_bars(res.tokens, [beta * s for s in res.unit_scores],
                                                 title=f"reward β·log π*/π0 per token ({scale})"))

    def _work(self) -> SteerResult:
        from ..arrows.update_to_reward import update_to_reward

        if not self.x.value.strip():
            raise FieldError(self.x, "is empty: write the input the model answers (e.g. a question).")
        expert, anti = self.policies()
        x, n = self.x.value, self.max_new_tokens.value
        key = (id(self._expert), id(self._anti), self.expert_prompt.value, self.anti_prompt.value, x,
               self.text.value, n)
        steered_name = self._steered_name()
        if self._cache.get("key") != key:
            base_text = self.stream_text(self.policy, x, lambda t: self._table(t, ""), max_new_tokens=n)
            text = self.text.value.strip() or base_text
            tokens, scores = _token_scores(update_to_reward(expert, anti, beta=1.0), x, text)
            scored = "the text to score" if self.text.value.strip() else "the plain model's answer (no text to score)"
            self._cache = {"key": key, "base_text": base_text, "tokens": tokens, "scores": scores, "scored": scored}
        base_text = self._cache["base_text"]
        steered_text = self.stream_text(self.steered(), x, lambda t: self._table(base_text, t, steered_name),
                                        max_new_tokens=n)
        return SteerResult(base_text, steered_text, self._cache["tokens"], self._cache["scores"],
                           self._cache["scored"])

    def _steered_name(self) -> str:
        method = "given π*, π0" if self._expert is not None else self.preset.value.split(":")[0]
        return f"π2 steered ({method}), β = {self.beta.value:.3g}"

    def _table(self, base_text: str, steered_text: str, steered_name: str | None = None) -> None:
        """The two generations side by side (also while their tokens stream in)."""
        self.output.value = samples_table({"plain model, greedy": [base_text],
                                           steered_name or self._steered_name(): [steered_text]})

    def _show(self, result: SteerResult) -> None:
        self._table(result.base_text, result.steered_text)
        self.output.value += notice(STEER_NOTICE)
        self._rescale()

    def _after(self, main: bool) -> None:
        if self._pending:
            self._pending = False
            self.run()


def _token_scores(reward: Any, x: str, y: str) -> tuple[list[str], list[float]]:
    """(token strings, per-token scores) from an Eq. 4 reward's `token_scores`."""
    ts = reward.token_scores(x, y)
    return list(ts.tokens), [float(v) for v in ts.scores]
