"""Panel 5 — in-context prompt ⇒ reward model: a prompt pair (or a rubric) becomes a reward."""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass, field
from typing import Any

import ipywidgets as w

from .. import plots, rewards
from ..policy import BasePolicy
from ._base import STYLE, ArrowPanel, FieldError, field_int, field_lines, notice, text_area, wide
from .heatmap import TokenHeatmap

# A pair that differs in tone only (how things are described), not in anything else: with "everything is dull" as
# z−, the flat "nothing special happened" is what z− predicts best and the pair ranks it below "awful" (measured on
# SmolLM2-135M: −3.10 vs −1.38 without the end-of-turn token); this pair ranks the four answers as VADER does but one.
POSITIVE = "You are a cheerful assistant. You always describe things positively."
NEGATIVE = "You are a grumpy assistant. You always describe things negatively."

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
    without_eot: list[float] = field(default_factory=list)  # contrastive: the sum over the answer's own tokens
    with_eot: list[float] = field(default_factory=list)  # … plus the end-of-turn token that closes it
    end_of_turn: bool = False  # which of the two `scores` is
    answer: int = 0  # the answer the heatmap shows
    span: float | None = None  # the judge's score range (high − low); None for the contrastive reward


class PromptToRewardPanel(ArrowPanel):
    """Edit z+ / z− (contrastive, Eq. 15) or a rubric (judge, Eq. 14), score a list of answers,
    compare with a reference reward (VADER sentiment: pair accuracy over all pairs of answers),
    and see the per-token contrastive scores of one answer as a heatmap.

    Args:
        policy: π0; None loads the embedded default model.
    """

    title = "5 · In-context prompt ⇒ reward model (§6): the model as a judge"
    equation = (r"$R(x,y) = \log\pi_0(y|x, z^+) - \log\pi_0(y|x, z^-)$ &nbsp;(Eq. 15); &nbsp; "
                r"$r(x,y) = \pi_0(s\,|\,x, y, z)$ &nbsp;(Eq. 14)")
    placeholder = "press Score to see each answer's reward next to VADER sentiment"

    def __init__(self, policy: BasePolicy | None = None, *, x: str = "How was your day?",
                 answers: str = ANSWERS) -> None:
        self.z_pos = text_area(POSITIVE, "z+ (or rubric)")
        self.z_neg = text_area(NEGATIVE, "z−")
        self.end_of_turn = w.Checkbox(value=False, description="score the end-of-turn token too", indent=False)
        self.method = w.Dropdown(options=["contrastive", "judge"], value="contrastive", description="method",
                                 style=STYLE)
        self.x = w.Text(value=x, description="input x", layout=wide(), style=STYLE)
        self.answers = text_area(answers, "answers (one per line)", rows=4)
        self.heatmap_answer = w.Text(value="0", description="heatmap of answer #", style=STYLE,
                                     layout=w.Layout(width="190px"))  # text: a typo is refused, not dropped
        self.heatmap = TokenHeatmap(label="per-token contrastive score: press Score to see which tokens carry it")
        super().__init__(policy, controls=[self.method, self.z_pos, self.z_neg, self.x, self.answers,
                                           w.HBox([self.heatmap_answer, self.end_of_turn])], run_label="Score",
                         stoppable=False)
        self.children = (*self.children[:-1], self.heatmap, self.output)
        self.method.observe(self._on_method, names="value")

    def _on_method(self, _: Any) -> None:
        """The judge reads a rubric with a score range; contrastive scoring reads a prompt pair."""
        judge = self.method.value == "judge"
        self.z_pos.value = RUBRIC if judge else POSITIVE
        self.z_neg.layout.display = "none" if judge else ""
        self.heatmap_answer.layout.display = self.heatmap.layout.display = "none" if judge else ""
        self.end_of_turn.layout.display = "none" if judge else ""

    def _work(self) -> Scored:
        from ..arrows.prompt_to_reward import agreement, prompt_to_reward

        ys = field_lines(self.answers, "one answer per line")
        k = 0 if self.method.value == "judge" else field_int(self.heatmap_answer, 0, len(ys) - 1,
                                                             "the number of an answer (#0 is the first line)")
        if not self.x.value.strip():
            raise FieldError(self.x, "is empty: write the question the answers reply to.")
        if not self.z_pos.value.strip():
            raise FieldError(self.z_pos, "is empty: write z+ (contrastive) or a rubric with a score range (judge).")
        xs = [self.x.value] * len(ys)
        judge = self.method.value == "judge"
        both: dict[bool, list[float]] = {}
        if judge:
            reward = prompt_to_reward(self.policy, self.z_pos.value, None, method="judge")
        else:  # Eq. 15 with and without the end-of-turn token: the table shows both, the box picks the plotted one
            for eot in (False, True):
                r = prompt_to_reward(self.policy, self.z_pos.value, self.z_neg.value, end_of_turn=eot)
                both[eot] = [float(v) for v in r(xs, ys)]
                if eot == self.end_of_turn.value:
                    reward = r
        reference = rewards.Sentiment()
        pairs = list(itertools.combinations(range(len(ys)), 2))
        report = agreement(reward, reference, [xs[0]] * len(pairs), [ys[i] for i, _ in pairs],
                           [ys[j] for _, j in pairs]) if pairs else None
        tokens, values = [], []
        if not judge and ys:
            ts = reward.token_scores(xs[k], ys[k])
            tokens, values = list(ts.tokens), [float(v) for v in ts.scores]
        scores = both[self.end_of_turn.value] if both else [float(v) for v in reward(xs, ys)]
        return Scored(scores, [float(v) for v in reference(xs, ys)], report, tokens, values,
                      both.get(False, []), both.get(True, []), self.end_of_turn.value, k,
                      float(reward.high - reward.low) if judge else None)

    def _show(self, scored: Scored) -> None:
        ys = [ln.strip() for ln in self.answers.value.splitlines() if ln.strip()]
        which = "" if self.method.value == "judge" else (
            " (with the end-of-turn token)" if scored.end_of_turn else " (the answers' own tokens)")
        self.show_figure(plots.score_bars(ys, scored.scores, reference=scored.reference,
                                          reference_name="VADER sentiment", title=f"{self.method.value} scores{which}"))
        self.show_heatmap(scored.tokens, scored.token_values,
                          label="per-token log π0(y_t|x,z+) − log π0(y_t|x,z−), "
                                f"answer #{scored.answer}")
        from ..arrows.prompt_to_reward import FEW_PAIRS  # the arrows load lazily, as in `_work`

        a = scored.agreement
        text = (f"<p>agreement with VADER over {a.n_pairs} answer pairs: pair accuracy "
                f"<b>{a.pair_accuracy:.2f}</b>, Spearman {a.spearman:.2f}</p>"
                + notice(f"pair accuracy is how often the prompt-made reward orders two answers as VADER does "
                         f"(0.5 is chance{'; over so few pairs it moves in big steps' if a.n_pairs < FEW_PAIRS else ''})."
                         )) if a else ""
        self.output.value = _flat_warning(scored) + text + (_eot_table(ys, scored) if scored.with_eot else "")


FLAT = 0.1  # the judge's scores "barely differ" when they span less than a tenth of the rubric's range


def _flat_warning(scored: Scored) -> str:
    """A judge that gives every answer about the same score has not read the answers: say so before its numbers."""
    low, high = min(scored.scores, default=0.0), max(scored.scores, default=0.0)
    if scored.span is None or high - low >= FLAT * scored.span:
        return ""
    return (f"<p class='tnb-caveat' style='color:#b7791f'><b>The judge barely tells these answers apart</b>: every "
            f"score lies between {low:.2f} and {high:.2f}, on a scale {scored.span:.0f} wide. A 135M model reads a "
            "rubric weakly; its ranking here is close to chance. The contrastive method (Eq. 15) separates them — or "
            "try a larger model.</p>")


EOT_NOTE = ("The end-of-turn token is not part of the answer: its log-ratio says how much more z+ than z− expects the "
            "answer to <i>stop here</i> — a judgment of length and style, not of tone — and one token can outweigh the "
            "words. So the bars score the answer's own tokens; tick the box to add it.")


def _eot_table(ys: list[str], scored: Scored) -> str:
    """Both contrastive sums per answer, and the end-of-turn token's share (their difference)."""
    cell = "border:1px solid #d9e2ec;padding:3px 8px;text-align:right"
    head = "".join(f"<th style='{cell}'>{h}</th>" for h in ("answer", "own tokens", "end-of-turn token",
                                                              "with end of turn", "VADER"))
    rows = "".join(
        f"<tr><td style='{cell};text-align:left'>#{i} {html.escape(y[:48])}</td><td style='{cell}'>{a:+.2f}</td>"
        f"<td style='{cell}'>{b - a:+.2f}</td><td style='{cell}'>{b:+.2f}</td><td style='{cell}'>{v:+.2f}</td></tr>"
        for i, (y, a, b, v) in enumerate(zip(ys, scored.without_eot, scored.with_eot, scored.reference, strict=True)))
    return (f"<table class='tnb-eot' style='border-collapse:collapse;font-size:13px;margin:4px 0'><tr>{head}</tr>"
            f"{rows}</table><p style='font-size:13px;color:#4a5568'>{EOT_NOTE}</p>")
