"""The one train / held-out split of every arrow: seeded, shuffled, and never silently empty.

`split_inputs(inputs, eval_inputs, holdout, seed)` returns (train, held-out). With `eval_inputs` given they are
the held-out set and every input trains. Otherwise a seeded random choice (inputs keep their order) holds out round(holdout · n) inputs (at
least one). `holdout=0` is how a caller asks for no held-out set: the arrows then report their metrics on the
training inputs and label them `*_train_*`; with holdout > 0 and a single input there is nothing to hold out,
which is an error that names both ways out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _validate as check
from .errors import InvalidArgumentError

HELDOUT, TRAIN = "heldout", "train"  # the split names in metric keys: {objective}_{split}_{before|after}


def split_indices(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Sorted (train, held-out) indices of n items: a seeded random round(holdout · n) of them held out (≥ 1 if
    n ≥ 2); both parts keep the inputs' own order.

    >>> split_indices(8, 0.25, seed=0)  # doctest: +SKIP
    ([...6 indices...], [...2 indices...])
    """
    if not 0 <= holdout < 1:
        raise InvalidArgumentError(f"holdout must be in [0, 1), got {holdout!r} (0.25 holds out a quarter; 0 holds "
                                   "out nothing and reports metrics on the training inputs).")
    k = min(n - 1, max(1, round(holdout * n))) if holdout > 0 and n > 1 else 0
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def split_inputs(inputs: Sequence[str], eval_inputs: Sequence[str] | None, holdout: float, seed: int,
                 *, name: str = "inputs") -> tuple[list[str], list[str]]:
    """(train, held-out) texts: `eval_inputs` if given, else a seeded `holdout` share of `inputs`."""
    xs = check.texts(inputs, name)
    if eval_inputs is not None:
        return xs, check.texts(eval_inputs, "eval_inputs")
    if holdout > 0 and len(xs) < 2:
        raise InvalidArgumentError(f"{name} has one text, so none can be held out (no held-out metrics): pass "
                                   "eval_inputs=[...], or holdout=0 to report metrics on the training inputs.")
    train, held = split_indices(len(xs), holdout, seed)
    return [xs[i] for i in train], [xs[i] for i in held]


def split_name(heldout: Sequence[object]) -> str:
    """The split the metrics are computed on: the held-out set, or (when the caller held nothing out) the training set."""
    return HELDOUT if len(heldout) else TRAIN
