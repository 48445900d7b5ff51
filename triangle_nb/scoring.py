"""Token-exact log-probabilities log π(y|x[,z]) of responses, batched with right padding."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .chat import PairBatch, end_of_turn_ids, pair_batch, prompt_ids, response_ids

if TYPE_CHECKING:
    from .backbone import Backbone
    from .policy import Policy


@dataclass
class LogProbs:
    """log π(y_t | x, y_<t) for each response token.

    Attributes:
        per_token: one float array per pair (length = response tokens).
        token_ids / tokens: the scored response tokens (ids and their strings).
    """

    per_token: list[np.ndarray]
    token_ids: list[list[int]]
    tokens: list[list[str]]

    @property
    def sum(self) -> np.ndarray:
        """log π(y|x) per pair (the sequence log-probability)."""
        return np.array([float(p.sum()) for p in self.per_token], dtype=np.float64)

    @property
    def mean(self) -> np.ndarray:
        return np.array([float(p.mean()) if len(p) else 0.0 for p in self.per_token], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.per_token)


def encode_rows(policy: Policy, xs: list[str], ys: list[str], *, end_of_turn: bool = True,
                truncate: bool = False) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per pair, checked against the context window."""
    bb = policy.backbone
    ends = end_of_turn_ids(bb.tokenizer, bb.stop_ids)
    rows = []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        p, r = prompt_ids(bb.tokenizer, policy.prompt, x), response_ids(bb.tokenizer, y, ends, end_of_turn)
        if len(p) + len(r) > bb.context_length:
            if not truncate:
                bb.check_length(len(p) + len(r), f"pair {i} (xs[{i}] + ys[{i}])")
            p = p[-max(1, bb.context_length - len(r)):]
            r = r[: bb.context_length - len(p)]
        rows.append((p, r))
    return rows


def batches(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> Iterator[tuple[list[int], PairBatch]]:
    """Length-sorted batches (less padding); yields the original indices with each batch."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, pair_batch([rows[i] for i in idx], pad_id)


def target_logprobs(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """log-softmax of `logits` gathered at the targets: [B, T] (0 where no target).

    `logits` is [B, T, V] or, from a forward with `logits_to_keep=batch.window`, its last positions [B, k, V].
    """
    width, k = batch.targets.shape[1], logits.shape[1]
    targets = batch.targets[:, width - k:]
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(picked * (targets != -100), (width - k, 0))


def response_nll(bb: Backbone, batch: PairBatch, adapter: str | None) -> torch.Tensor:
    """Differentiable − log π(y|x) per response token through `adapter`: the SFT loss (Eq. 10, 17)."""
    logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[adapter] * len(batch.input_ids),
                           logits_to_keep=batch.window)
    return -target_logprobs(logits, batch).sum() / batch.response_mask.sum()


@torch.inference_mode()
def score(policy: Policy, xs: list[str], ys: list[str], *, batch_size: int = 16, end_of_turn: bool = True,
          truncate: bool = False) -> LogProbs:
    """log π(y|x) for one policy: one forward per batch, gather only the response tokens."""
    bb = policy.backbone
    rows = encode_rows(policy, xs, ys, end_of_turn=end_of_turn, truncate=truncate)
    per_token: list[np.ndarray] = [np.zeros(0)] * len(rows)
    for idx, batch in batches(rows, batch_size, bb.pad_id):
        batch = batch.to(bb.device)
        n = len(idx)
        logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[policy.adapter] * n,
                               exit_layers=[policy.exit_layer] * n, logits_to_keep=batch.window)
        lp = target_logprobs(logits, batch).cpu().numpy()
        mask = batch.response_mask.cpu().numpy()
        for j, i in enumerate(idx):
            per_token[i] = lp[j][mask[j]].astype(np.float64)
    ids = [r for _, r in rows]
    return LogProbs(per_token, ids, [bb.tokenizer.convert_ids_to_tokens(r) for r in ids])


@torch.inference_mode()
def distributions(components: list[Policy], xs: list[str], ys: list[str], *, batch_size: int = 8,
                  end_of_turn: bool = True, truncate: bool = False,
                  with_next: bool = False) -> tuple[list[list[torch.Tensor]], list[list[int]]]:
    """Full next-token log-distributions over each response, per component.

    Returns (dists[c][i] = [len(y_i tokens), V] log-probs, response token ids per pair). With
    `with_next`, each block has one more row: the distribution of the token after y.
    """
    dists: list[list[torch.Tensor]] = []
    targets: list[list[int]] = []
    for comp in components:
        rows = encode_rows(comp, xs, ys, end_of_turn=end_of_turn, truncate=truncate)
        targets = targets or [r for _, r in rows]
        dists.append(_row_distributions(comp, rows, batch_size, int(with_next)))
    return dists, targets


def _row_distributions(policy: Policy, rows: list[tuple[list[int], list[int]]], batch_size: int,
                       extra: int) -> list[torch.Tensor]:
    bb = policy.backbone
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    for idx, batch in batches(rows, batch_size, bb.pad_id):
        batch = batch.to(bb.device)
        k = batch.input_ids.shape[1] - min(len(rows[i][0]) - 1 for i in idx)  # from the earliest last prompt token
        logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[policy.adapter] * len(idx),
                               exit_layers=[policy.exit_layer] * len(idx), logits_to_keep=k)
        skipped = batch.input_ids.shape[1] - logits.shape[1]  # positions whose logits were not computed
        for j, i in enumerate(idx):
            start = len(rows[i][0]) - 1 - skipped  # the logits at the last prompt token predict y_0
            stop = start + len(rows[i][1]) + extra
            out[i] = torch.log_softmax(logits[j, start:stop], dim=-1).cpu()
    return out
