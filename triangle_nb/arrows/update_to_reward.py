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
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import _validate as check
from ..chat import readable_tokens
from ..decoding import Sampling, check_vocabularies, decode
from ..errors import InvalidArgumentError
from ..policy import BasePolicy, Policy, steer
from ..rewards import Reward
from ..sampling import BestOfN
from ..scoring import LogProbs, batches, encode_rows, target_logprobs

__all__ = ["LogRatioReward", "SteerTrace", "TokenScores", "joint_logprobs", "rerank", "steer",
           "steer_trace", "update_to_reward"]


# ---------------------------------------------------------------------------------------------
# Token-exact scoring of several policies at once
# ---------------------------------------------------------------------------------------------
def joint_logprobs(policies: Sequence[Policy], xs: Sequence[str], ys: Sequence[str], *, batch_size: int = 16,
                   end_of_turn: bool = True, truncate: bool = False) -> list[LogProbs]:
    """log π_k(y|x) for every policy k; policies sharing a backbone go through ONE forward per batch.

    Rows of all policies (each with its own prompt z, adapter and exit layer) are mixed in one
    right-padded batch — PEFT's mixed-adapter batches — so scoring π* and π0 costs one pass over
    the data instead of two.

    Returns:
        one `LogProbs` per policy, in order.
    """
    xs_, ys_ = check.pairs(xs, ys)
    check.positive_int(batch_size, "batch_size")
    pols = list(policies)
    for k, p in enumerate(pols):
        if not isinstance(p, Policy):
            raise InvalidArgumentError(f"policies[{k}] must be a Policy, got {type(p).__name__}.")
    check_vocabularies(pols)
    unique: dict[tuple[Any, ...], int] = {}  # identical policies are scored once (r(p, p) = 0 exactly)
    for p in pols:
        unique.setdefault(_key(p), len(unique))
    firsts = {v: next(p for p in pols if unique[_key(p)] == v) for v in unique.values()}
    scored: dict[int, LogProbs] = {}
    by_backbone: dict[int, list[int]] = {}
    for v, p in firsts.items():
        by_backbone.setdefault(id(p.backbone), []).append(v)
    for members in by_backbone.values():
        group = _score_group([firsts[v] for v in members], xs_, ys_, batch_size=batch_size,
                             end_of_turn=end_of_turn, truncate=truncate)
        scored.update(zip(members, group, strict=True))
    return [scored[unique[_key(p)]] for p in pols]


def _key(p: Policy) -> tuple[Any, ...]:
    return id(p.backbone), p.prompt, p.adapter, p.exit_layer


@torch.inference_mode()
def _score_group(policies: list[Policy], xs: list[str], ys: list[str], *, batch_size: int, end_of_turn: bool,
                 truncate: bool) -> list[LogProbs]:
    bb = policies[0].backbone
    rows, tags = [], []  # tags[j] = (policy index, pair index)
    for k, p in enumerate(policies):
        rows += encode_rows(p, xs, ys, end_of_turn=end_of_turn, truncate=truncate)
        tags += [(k, i) for i in range(len(xs))]
    per_token = [[np.zeros(0)] * len(xs) for _ in policies]
    for idx, batch in batches(rows, batch_size * len(policies), bb.pad_id):
        batch = batch.to(bb.device)
        logits, _ = bb.forward(batch.input_ids, batch.attention_mask,
                               adapters=[policies[tags[j][0]].adapter for j in idx],
                               exit_layers=[policies[tags[j][0]].exit_layer for j in idx],
                               logits_to_keep=batch.window)
        lp = target_logprobs(logits, batch).cpu().numpy()
        mask = batch.response_mask.cpu().numpy()
        for row, j in enumerate(idx):
            k, i = tags[j]
            per_token[k][i] = lp[row][mask[row]].astype(np.float64)
    ids = [r for _, r in rows[: len(xs)]]
    toks = [readable_tokens(bb.tokenizer, r) for r in ids]
    return [LogProbs(pt, ids, toks) for pt in per_token]


# ---------------------------------------------------------------------------------------------
# The log-ratio reward (Eq. 4)
# ---------------------------------------------------------------------------------------------
class TokenScores(NamedTuple):
    """Per-token decomposition of r*(x, y): `tokens[t]` earns `scores[t]`; `scores.sum()` = r*(x, y)."""

    tokens: list[str]
    scores: np.ndarray

    @property
    def total(self) -> float:
        """r*(x, y): the sum of the per-token scores."""
        return float(self.scores.sum())


class LogRatioReward(Reward):
    """r*(x, y) = β · (log π*(y|x) − log π0(y|x))  (Eq. 4), batched and token-exact.

    π* and π0 may be any two policies with one vocabulary: an adapter and its base, a prompted
    and an unprompted model, or two checkpoints. Both are scored in one batched forward when
    they share a backbone.

    Args:
        pi_star: the updated policy π* (e.g. a DPO/SFT adapter, or the model with a prompt z).
        pi0: the reference policy π0.
        beta: the scale β > 0 (DPO's β gives DPO's implicit reward).
        end_of_turn: also score the end-of-turn token closing y (a complete answer).
        batch_size: pairs per forward.
    """

    name = "log_ratio"

    def __init__(self, pi_star: Policy, pi0: Policy, *, beta: float = 1.0, end_of_turn: bool = True,
                 batch_size: int = 16) -> None:
        for label, p in (("pi_star", pi_star), ("pi0", pi0)):
            if not isinstance(p, Policy):
                raise InvalidArgumentError(
                    f"{label} must be a Policy (a model, prompt or adapter), got {type(p).__name__}; "
                    "to score with a steered Composition, use its logprobs directly."
                )
        check_vocabularies([pi_star, pi0])
        self.pi_star, self.pi0 = pi_star, pi0
        self.beta = check.finite_positive(beta, "beta")
        self.end_of_turn = bool(end_of_turn)
        self.batch_size = check.positive_int(batch_size, "batch_size")

    def bake_identity(self) -> dict[str, Any]:
        return {"reward": "LogRatioReward", "pi_star": self.pi_star, "pi0": self.pi0, "beta": self.beta,
                "end_of_turn": self.end_of_turn}

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        star, ref = self._logprobs(xs, ys)
        return self.beta * (star.sum - ref.sum)  # Eq. 4

    def token_scores(self, x: str, y: str) -> TokenScores:
        """The per-token rewards β·(log π*(y_t|x,y_<t) − log π0(y_t|x,y_<t)) of one response (heatmaps).

        >>> tokens, scores = r.token_scores("Tell me about rain.", "Rain is lovely!")  # doctest: +SKIP
        """
        return self.token_scores_batch([x], [y])[0]

    def token_scores_batch(self, xs: Sequence[str], ys: Sequence[str]) -> list[TokenScores]:
        """`token_scores` for many pairs in one batched pass."""
        xs_, ys_ = check.pairs(xs, ys)
        star, ref = self._logprobs(xs_, ys_)
        return [TokenScores(list(t), self.beta * (a - b))
                for t, a, b in zip(star.tokens, star.per_token, ref.per_token, strict=True)]

    def _logprobs(self, xs: list[str], ys: list[str]) -> tuple[LogProbs, LogProbs]:
        star, ref = joint_logprobs([self.pi_star, self.pi0], xs, ys, batch_size=self.batch_size,
                                   end_of_turn=self.end_of_turn)
        return star, ref

    def config(self) -> dict[str, Any]:
        return {"pi_star": self.pi_star.name, "pi0": self.pi0.name, "beta": self.beta}


def update_to_reward(pi_star: Policy, pi0: Policy, beta: float = 1.0, *, end_of_turn: bool = True,
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
def rerank(policy: BasePolicy, reward: Reward | Callable[..., Any], xs: Sequence[str], *, n: int = 8,
           max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
           seed: int | None = 0) -> tuple[list[str], np.ndarray]:
    """Best-of-n with any reward — e.g. r* from `update_to_reward` — using the `BestOfN` sampler (triangle_nb.sampling).

    The inference-time approximation of Eq. 2's optimum π0·exp(r/β)/Z.

    Returns:
        (best response per input, its reward).
    """
    groups, scores = BestOfN(policy, reward, n=n).sample(xs, max_new_tokens=max_new_tokens, temperature=temperature,
                                                         top_p=top_p, seed=seed)
    best = scores.argmax(1)
    return [g[int(b)] for g, b in zip(groups, best, strict=True)], scores[np.arange(len(groups)), best]
