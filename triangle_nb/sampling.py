"""Best-of-N sampling: Eq. 2 at inference time, with any reward.

π*(y|x) ∝ π0(y|x) · exp(r(x,y)/β) is approximated by drawing N samples from π0 and keeping the one with
the highest reward. Arrow 1 uses it as its no-training method (`reward_to_update(method="best_of_n")`) and as
the data of rejection SFT; arrow 2 uses it to re-rank with r* (`update_to_reward.rerank`). It is a sampler over
any policy, so it lives beside the arrows rather than in one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _validate as check
from .backbone import Backbone
from .errors import InvalidArgumentError
from .options import old_name
from .policy import Policy
from .rewards import Reward, as_reward

__all__ = ["BestOfN"]


class BestOfN:
    """Sample N responses from `policy` and return the one with the highest reward (batched).

    Approximates Eq. 2 at inference time; its KL to the policy is at most log N − (N−1)/N.

    >>> BestOfN(pi0, tnb.rewards.Sentiment(), samples=8).generate(["Describe your morning."])  # doctest: +SKIP
    """

    def __init__(self, policy: Policy, reward: Reward | Callable[..., Any], samples: int = 4, *,
                 n: int | None = None) -> None:
        samples = old_name(samples, n, old="n", new="samples", default=4)
        self.policy, self.reward, self.samples = policy, as_reward(reward), check.positive_int(samples, "samples")

    @property
    def backbone(self) -> Backbone:
        return self.policy.backbone

    @property
    def kl_bound(self) -> float:
        """Upper bound on KL[best-of-N ‖ π] (Beirami et al. 2024): log N − (N−1)/N."""
        return math.log(self.samples) - (self.samples - 1) / self.samples

    def sample(self, xs: Sequence[str], *, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None, batch_size: int = 16) -> tuple[list[list[str]], np.ndarray]:
        """All N candidates per input and their rewards [len(xs), N]."""
        xs_ = check.texts(xs, "xs")
        if temperature == 0 and self.samples > 1:
            raise InvalidArgumentError("temperature=0 makes all N samples identical: use temperature > 0.")
        ys = self.policy.generate(xs_, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  samples=self.samples, seed=seed, batch_size=batch_size)
        groups = [[y] for y in ys] if self.samples == 1 else ys
        flat_x = [x for x in xs_ for _ in range(self.samples)]
        r = self.reward(flat_x, [y for g in groups for y in g]).reshape(len(xs_), self.samples)
        return groups, r

    def generate(self, xs: Sequence[str], **kw: Any) -> list[str]:
        """The best of N samples per input (kw as `sample`)."""
        groups, r = self.sample(xs, **kw)
        return [g[int(i)] for g, i in zip(groups, r.argmax(1), strict=True)]

    def __repr__(self) -> str:
        return f"BestOfN(samples={self.samples}, reward={self.reward!r}, policy={self.policy!r})"
