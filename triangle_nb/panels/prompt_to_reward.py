"""Panel 5 — in-context prompt ⇒ reward model: a prompt pair (or a rubric) becomes a reward."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from .. import plots, rewards
from ..policy import BasePolicy
from ._base import STYLE, ArrowPanel, lines, text_area, wide
from .heatmap import TokenHeatmap, readable_tokens
from .update_to_reward import CHEERFUL, GLOOMY

ANSWERS = ("What a lovely day, I really enjoyed the walk in the sun!\n"
           "The day was fine, nothing special happened.\n"
           "It was awful: cold, grey and boring, and I hated every minute.\n"
           "I am so happy we went to the beach together.")


RUBRIC = "Rate how positive and cheerful the answer is, on a scale from 1 to 5."


@dataclass
class Scored:
    """The reward's scores on the answers, the reference's, their agreement, and one answer per token."""

    scores: list[float]
    reference: list[float]
    agreement: Any
    tokens: list[str]
    token_values: list[float]


class PromptToRewardPanel(ArrowPanel):
    """Edit z+ / z− (contrastive, Eq. 15) or a rubric (judge, Eq. 14), score a list of answers,
    compare with a reference reward (VADER sentiment: pair accuracy over all pairs of answers),
    and see the per-token contrastive scores of one answer as a heatmap.

    Args:
        policy: π0; None loads the embedded default model.
    """

    title = "5 · In-context prompt ⇒ reward model (§6): the model as a judge"
    equation = "R(x, y) = log π0(y|x, z+) − log π0(y|x, z−)   (Eq. 15);   r(x, y) = π0(s|x, y, z)   (Eq. 14)"

    def __init__(self, policy: BasePolicy | None = None, *, x: str = "How was your day?",
                 answers: str = ANSWERS) -> None:
        self.z_pos = text_area(CHEERFUL, "z+ (or rubric)")
        self.z_neg = text_area(GLOOMY, "z−")
        self.method = w.Dropdown(options=["contrastive", "judge"], value="contrastive", description="method",
                                 style=STYLE)
        self.x = w.Text(value=x, description="input x", layout=wide(), style=STYLE)
        self.answers = text_area(answers, "answers (one per line)", rows=4)
        self.heatmap_answer = w.BoundedIntText(value=0, min=0, max=50, description="heatmap of answer #",
                                               style=STYLE)
        self.heatmap = TokenHeatmap(label="per-token contrastive score")
        super().__init__(policy, controls=[self.method, self.z_pos, self.z_neg, self.x, self.answers,
                                           self.heatmap_answer], run_label="Score", stoppable=False)
        self.children = (*self.children[:-1], self.heatmap, self.output)
        self.method.observe(self._on_method, names="value")

    def _on_method(self, _: Any) -> None:
        """The judge reads a rubric with a score range; contrastive scoring reads a prompt pair."""
        judge = self.method.value == "judge"
        self.z_pos.value = RUBRIC if judge else CHEERFUL
        self.z_neg.layout.display = "none" if judge else ""
        self.heatmap_answer.layout.display = self.heatmap.layout.display = "none" if judge else ""

    def _work(self) -> Scored:
        from ..arrows.prompt_to_reward import agreement, prompt_to_reward

        ys = lines(self.answers.value)
        xs = [self.x.value] * len(ys)
        judge = self.method.value == "judge"
        reward = prompt_to_reward(self.policy, self.z_pos.value, None if judge else self.z_neg.value,
                                  method=self.method.value)
        reference = rewards.Sentiment()
        pairs = list(itertools.combinations(range(len(ys)), 2))
        report = agreement(reward, reference, [xs[0]] * len(pairs), [ys[i] for i, _ in pairs],
                           [ys[j] for _, j in pairs]) if pairs else None
        tokens, values = [], []
        if not judge and ys:
            k = min(self.heatmap_answer.value, len(ys) - 1)
            ts = reward.token_scores(xs[k], ys[k])
            tokens, values = readable_tokens(self.policy.tokenizer, ts.tokens), [float(v) for v in ts.scores]
        return Scored([float(v) for v in reward(xs, ys)], [float(v) for v in reference(xs, ys)], report,
                      tokens, values)

    def _show(self, scored: Scored) -> None:
        self.show_figure(plots.score_bars(lines(self.answers.value), scored.scores, reference=scored.reference,
                                          reference_name="VADER sentiment", title=f"{self.method.value} scores"))
        self.heatmap.show(scored.tokens, scored.token_values,
                          label="per-token log π0(y_t|x,z+) − log π0(y_t|x,z−), "
                                f"answer #{self.heatmap_answer.value}")
        a = scored.agreement
        self.output.value = (f"<p>agreement with VADER over {a.n_pairs} answer pairs: pair accuracy "
                             f"<b>{a.pair_accuracy:.2f}</b>, Spearman {a.spearman:.2f}</p>") if a else ""
