"""Arrows chained into loops: the triangle walked more than once.

`self_improve` is arrow 2 feeding arrow 1, round after round: the log-ratio reward of the last update
(Eq. 4, `update_to_reward`) becomes the reward of the next update (`reward_to_update`). It composes two
arrows, so it imports both and neither arrow imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from . import _validate as check
from .arrows.reward_to_update import RewardUpdateResult, UpdateConfig, evaluate, reward_to_update, split_inputs
from .arrows.update_to_reward import update_to_reward
from .control import progress, stopped
from .policy import Policy
from .rewards import Reward, as_reward
from .training import build_config

__all__ = ["self_improve"]


def self_improve(pi0: Policy, inputs: Sequence[str], rounds: int = 2, *, reward: Reward | Callable[..., Any],
                 ratio_beta: float = 1.0, method: str = "dpo", **options: Any) -> list[RewardUpdateResult]:
    """Iterative self-improvement π0 → π1 → π2 …: round 1 trains π1 on `reward`; round i ≥ 2 trains π_i,
    starting from π_{i−1}, on the log-ratio reward r(x,y) = β(log π_{i−1}(y|x) − log π_{i−2}(y|x)) (Eq. 4).

    Args:
        reward: the external reward of round 1 (also reported after every round as `external_reward_heldout_after`).
        ratio_beta: β of the log-ratio reward (tnb.update_to_reward).
        **options: as `reward_to_update` (steps, beta, n, lr, eval_inputs, ...).

    Returns:
        One result per round; result.metrics["external_reward_heldout_after"] is the round-1 reward of π_i.
    """
    check.positive_int(rounds, "rounds")
    external, chain, results = as_reward(reward), [pi0], []
    for i in range(1, rounds + 1):
        if stopped() or progress("self-improvement round", i - 1, rounds):  # Stop: no further rounds (control.py)
            break
        r_i = external if i == 1 else update_to_reward(chain[-1], chain[-2], beta=ratio_beta)
        res = reward_to_update(chain[-1], r_i, inputs, method=method, **options)
        cfg = build_config(UpdateConfig, {k: v for k, v in options.items() if k != "eval_inputs"}, method=method)
        _, eval_xs = split_inputs(inputs, options.get("eval_inputs"), cfg.holdout, cfg.seed)
        ev = evaluate(res.policy, pi0, external, eval_xs, cfg)
        res.metrics |= {"external_reward_heldout_after": ev["reward"], "kl_to_pi0_heldout_after": ev["kl"]}
        res.info["round"] = i
        chain.append(res.policy)
        results.append(res)
    return results

