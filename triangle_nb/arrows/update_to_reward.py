"""Arrow 2 — parameter update ⇒ reward model (survey §3), and the Eq. 7 steering engine.

A tuned policy π* and its reference π0 define a reward without any labels (Eq. 3/4):

    r*(x, y) = β · (log π*(y|x) − log π0(y|x))          # Eq. 4 (Eq. 3 without the β log Z(x) term)

It decomposes over tokens, so it is also a token-level (process) reward: `token_scores`.
Used per token to steer a third policy π1, it gives Eq. 7:

    log π2(y_t | x, y_<t) ∝ log π1(y_t|·) + (1/β) · (log π*(y_t|·) − log π0(y_t|·))

`steer` builds that product policy (a `Composition`, itself a policy), `steer_trace` records
every component's next-token log-probs while generating (for panels), and `rerank` uses r* as a
re-ranker. Iterative self-improvement (r* as the reward of arrow 1, round after round) is
`tnb.self_improve` (triangle_nb.compositions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import _validate as check
from ..chat import readable_tokens
from ..decoding import Sampling, decode
from ..errors import InvalidArgumentError
from ..log_ratio import LogRatioReward, TokenScores, joint_logprobs
from ..options import keyword_beta, old_name
from ..policy import BasePolicy, Policy, steer
from ..rewards import Reward
from ..sampling import BestOfN

__all__ = ["LogRatioReward", "SteerTrace", "TokenScores", "joint_logprobs", "rerank", "steer",
           "steer_trace", "update_to_reward"]


@keyword_beta
def update_to_reward(pi_star: Policy, pi0: Policy, *, beta: float = 1.0, end_of_turn: bool = True,
                     batch_size: int = 16) -> LogRatioReward:
    """Arrow 2: the reward implied by an update π0 → π*, r*(x,y) = β·log π*(y|x)/π0(y|x) (Eq. 4).

    Args:
        pi_star: the updated policy (adapter, prompted model or another checkpoint, same vocabulary).
        pi0: the reference policy.
        beta: scale β > 0, finite.
        end_of_turn: also score the end-of-turn token after y.
        batch_size: pairs per forward.

    Returns:
        a `LogRatioReward`: call it as r(xs, ys) -> np.ndarray; `.token_scores(x, y)` for heatmaps.

    >>> r = tnb.update_to_reward(pi0.with_prompt("Be cheerful."), pi0)  # doctest: +SKIP
    >>> r(["Tell me about rain."], ["Rain is lovely!"])                  # doctest: +SKIP
    """
    return LogRatioReward(pi_star, pi0, beta=beta, end_of_turn=end_of_turn, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Steering with r* per token (Eq. 7)
# ---------------------------------------------------------------------------------------------


@dataclass
class SteerTrace:
    """What each component proposed at every generated step (analysis output for panels).

    Attributes:
        labels: one name per component (e.g. "base", "expert", "anti").
        weights: the component weights w_i.
        token_ids / tokens: the generated tokens (stop token included when reached).
        component_logprobs: [T, C, V] next-token log π_i at each step.
        combined_logprobs: [T, V] log π2 (the normalised composition) at each step.
    """

    labels: list[str]
    weights: list[float]
    token_ids: list[int]
    tokens: list[str]
    component_logprobs: torch.Tensor
    combined_logprobs: torch.Tensor
    text: str = ""
    tokenizer: Any = field(default=None, repr=False)

    def chosen(self) -> np.ndarray:
        """[C + 1, T]: log-prob of each generated token under every component, then under π2."""
        idx = torch.tensor(self.token_ids)
        steps = torch.arange(len(idx))
        comp = self.component_logprobs[steps, :, idx].T  # [C, T]
        return torch.cat([comp, self.combined_logprobs[steps, idx][None]]).double().numpy()

    def top(self, k: int = 5, step: int = 0) -> list[tuple[str, list[float]]]:
        """The k most likely next tokens under π2 at `step`, with every component's and π2's log-probs."""
        values = self.combined_logprobs[step]
        ids = values.topk(k).indices.tolist()
        toks = readable_tokens(self.tokenizer, ids) if self.tokenizer is not None else [str(i) for i in ids]
        return [(t, [*self.component_logprobs[step, :, i].tolist(), float(values[i])]) for t, i in zip(toks, ids,
                                                                                                      strict=True)]

    def frame(self) -> Any:
        """A pandas DataFrame: one row per step, the token and its log-prob under each component and π2."""
        import pandas as pd

        data = dict(zip([*self.labels, "combined"], self.chosen(), strict=True))
        return pd.DataFrame({"step": range(len(self.tokens)), "token": self.tokens, **data})


def steer_trace(policy: BasePolicy, x: str, *, max_new_tokens: int = 32, temperature: float = 0.0,
                top_p: float = 1.0, seed: int | None = None, labels: Sequence[str] | None = None) -> SteerTrace:
    """Generate one response from `policy` and record every component's next-token log-probs per step.

    Args:
        policy: a Composition (or a plain Policy: one component).
        x: the input.
        labels: names for the components (default: "base"/"expert"/"anti" for a 3-part steer, else "pi_i").

    Returns:
        a `SteerTrace` (`.frame()` is a per-step DataFrame, `.top(k, step)` the candidates at a step).
    """
    check.texts([x], "x")
    check.positive_int(max_new_tokens, "max_new_tokens")
    comps, weights = zip(*policy.components, strict=True)
    out = decode(list(comps), list(weights), [x], max_new_tokens=max_new_tokens,
                 sampling=Sampling(temperature=temperature, top_p=top_p), seed=seed, rule=policy.rule, record=True)
    ids = out.token_ids[0]
    tok = policy.tokenizer
    return SteerTrace(labels=_labels(labels, len(comps)), weights=[float(w) for w in weights], token_ids=ids,
                       tokens=readable_tokens(tok, ids),
                       component_logprobs=torch.stack(out.component_logprobs)[: len(ids), :, 0].float(),
                       combined_logprobs=torch.stack(out.combined_logprobs)[: len(ids), 0].float(),
                      text=policy.decode_response(ids), tokenizer=tok)


def _labels(labels: Sequence[str] | None, n: int) -> list[str]:
    if labels is not None:
        labels = check.texts(labels, "labels")
        if len(labels) != n:
            raise InvalidArgumentError(f"labels has {len(labels)} names for {n} components.")
        return labels
    return ["base", "expert", "anti"] if n == 3 else [f"pi_{i}" for i in range(n)]


# ---------------------------------------------------------------------------------------------
# r* as a re-ranker and as the reward of arrow 1
# ---------------------------------------------------------------------------------------------
def rerank(policy: BasePolicy, reward: Reward | Callable[..., Any], xs: Sequence[str], *, samples: int = 8,
           max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
           seed: int | None = 0, n: int | None = None) -> tuple[list[str], np.ndarray]:
    """Best-of-n with any reward — e.g. r* from `update_to_reward` — using the `BestOfN` sampler (triangle_nb.sampling).

    The inference-time approximation of Eq. 2's optimum π0·exp(r/β)/Z.

    Returns:
        (best response per input, its reward).
    """
    samples = old_name(samples, n, old="n", new="samples", default=8)
    groups, scores = BestOfN(policy, reward, samples).sample(xs, max_new_tokens=max_new_tokens, temperature=temperature,
                                                         top_p=top_p, seed=seed)
    best = scores.argmax(1)
    return [g[int(b)] for g, b in zip(groups, best, strict=True)], scores[np.arange(len(groups)), best]
