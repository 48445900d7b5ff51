"""Panel 5 — in-context prompt ⇒ reward model: a prompt pair (or a rubric) becomes a reward."""

from __future__ import annotations

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


@dataclass
class Scored:
    """The reward, its scores on the answers, the reference scores and the heatmap of one answer."""

    reward: Any
    scores: list[float]
    reference: list[float]
    token_ids: list[int]
    token_values: list[float]


class PromptToRewardPanel(ArrowPanel):
    """Edit z+ / z− (contrastive, Eq. 15) or a rubric (judge, Eq. 14), score a list of answers,
    compare with a reference reward (VADER sentiment), and see per-token scores of one answer.

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
        super().__init__(policy, controls=[self.z_pos, self.z_neg, self.method, self.x, self.answers,
                                           self.heatmap_answer], run_label="Score", stoppable=False)
        self.children = (*self.children[:-1], self.heatmap, self.output)

    def _work(self) -> Scored:
        from ..prompt_to_reward import prompt_to_reward

        ys = lines(self.answers.value)
        xs = [self.x.value] * len(ys)
        z_neg = self.z_neg.value if self.method.value == "contrastive" else None
        reward = prompt_to_reward(self.policy, self.z_pos.value, z_neg, method=self.method.value)
        scores = [float(s) for s in reward(xs, ys)]
        reference = [float(s) for s in rewards.Sentiment()(xs, ys)]
        ids, values = [], []
        if hasattr(reward, "token_scores") and ys:
            k = min(self.heatmap_answer.value, len(ys) - 1)
            ts = reward.token_scores(xs[k], ys[k])
            ids, values = list(ts.token_ids), [float(v) for v in ts.values]
        return Scored(reward, scores, reference, ids, values)

    def _show(self, scored: Scored) -> None:
        ys = lines(self.answers.value)
        self.show_figure(plots.score_bars(ys, scored.scores, reference=scored.reference,
                                          reference_name="VADER sentiment", title=f"{self.method.value} scores"))
        self.heatmap.show(readable_tokens(self.policy.tokenizer, scored.token_ids), scored.token_values)
        self.output.value = ""
