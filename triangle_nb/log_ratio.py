"""Eq. 4's log-ratio reward r*(x, y) = β · (log π*(y|x) − log π0(y|x)) and the joint scoring it runs on.

`LogRatioReward` is arrow 2's reward (`update_to_reward`) and, with π* = π0 under z+ and π0 under z−, arrow 5's
contrastive reward (Eq. 15, `ContrastiveReward`), so it lives below both arrows. `joint_logprobs` scores several
policies (prompts, adapters, exit layers) in one mixed batch through `scoring.token_logprobs`, the one log π path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from . import _validate as check
from .chat import readable_tokens
from .decoding import check_vocabularies
from .errors import InvalidArgumentError
from .policy import Policy
from .rewards import Reward
from .scoring import LogProbs, batches, encode_rows, token_logprobs


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
        parts = [policies[tags[j][0]] for j in idx]  # mixed adapters and exit layers in one forward
        lp = token_logprobs(bb, batch, [p.adapter for p in parts], [p.exit_layer for p in parts]).cpu().numpy()
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

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"token": self.tokens, "score": self.scores})


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
