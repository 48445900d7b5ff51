"""Token-exact log-probabilities log π(y|x[,z]) of responses, batched: the package's one log π path.

Every arrow, reward and loss scores responses here. Two ways, one set of numbers (tests/test_one_log_pi.py checks
each caller against an unpadded full-sequence forward, for every policy kind):
- `token_logprobs` / `response_logits`: right-padded (prompt + response) rows in one forward, each row through its
  own adapter and exit layer; differentiable outside `torch.inference_mode()`, so the training losses use it too;
- `score`: shared prompts encoded once (below), for no-grad scoring of many responses per prompt.

Pairs that share a prompt (n samples per input, the common case) share its encoding: the distinct prompts of a
batch are encoded once — their common stem (the chat template's system turn, z) once for all of them, then each
prompt's own tail — and each response runs on a copy of its prompt's KV cache, with the LM head applied only at
the positions that predict a response token. Length-sorted right-padded pairs (`batches`) remain the path when
nothing is shared, and the training loss's (`response_nll`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import DynamicCache

from . import _validate as check
from .chat import PairBatch, end_of_turn_ids, left_pad, pair_batch, prompt_ids, readable_tokens, response_ids
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from ._types import PolicyPart
    from .backbone import Backbone

Row = tuple[list[int], list[int]]  # (prompt ids, response ids)
PromptKey = tuple[int, ...]  # a prompt's ids: the pairs with equal keys share its encoding


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


def encode_rows(policy: PolicyPart, xs: list[str], ys: list[str], *, end_of_turn: bool = True,
                truncate: bool = False) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per pair, checked against the context window."""
    bb = policy.backbone
    end_of_turn, truncate = check.flag(end_of_turn, "end_of_turn"), check.flag(truncate, "truncate")
    if len(xs) != len(ys):
        raise InvalidArgumentError(f"xs and ys (or prefixes) must have the same length (got {len(xs)} and {len(ys)}): "
                                   "pass one response (or prefix) per input.")
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
    return torch.nn.functional.pad(_picked(logits, targets) * (targets != -100), (width - k, 0))


def _picked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax(logits)[..., target] without the full log-softmax: [...] (targets < 0 read token 0)."""
    return logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def response_logits(bb: Backbone, batch: PairBatch, adapters: Sequence[str | None],
                    exit_layers: Sequence[int | None] | None = None, *, temperature: float = 1.0,
                    keep: int | None = None) -> torch.Tensor:
    """The one forward behind every log π: row i of `batch` through adapter `adapters[i]` and exit layer
    `exit_layers[i]` (None: the last), the LM head only at the last `keep` positions (default `batch.window`, all
    that predict a target): [B, keep, V].

    `temperature` T divides the logits (the distribution a sampler at T drew from; T = 0 or 1 leaves them).
    """
    batch = batch.to(bb.device)
    logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=list(adapters),
                           exit_layers=None if exit_layers is None else list(exit_layers),
                           logits_to_keep=batch.window if keep is None else keep)
    return logits / temperature if temperature not in (0.0, 1.0) else logits


def token_logprobs(bb: Backbone, batch: PairBatch, adapters: Sequence[str | None],
                   exit_layers: Sequence[int | None] | None = None, *, temperature: float = 1.0) -> torch.Tensor:
    """log π(y_t | x, y_<t) at every target of `batch`: [B, T] (0 outside y). Rows as in `response_logits`."""
    batch = batch.to(bb.device)  # once: response_logits finds it there
    return target_logprobs(response_logits(bb, batch, adapters, exit_layers, temperature=temperature), batch)


def response_nll(bb: Backbone, batch: PairBatch, adapter: str | None, exit_layer: int | None = None) -> torch.Tensor:
    """Differentiable − log π(y|x) per response token through `adapter`: the SFT loss (Eq. 10, 17)."""
    n = len(batch.input_ids)
    return -token_logprobs(bb, batch, [adapter] * n, [exit_layer] * n).sum() / batch.response_mask.sum()


@torch.inference_mode()
def score(policy: PolicyPart, xs: list[str], ys: list[str], *, batch_size: int = 16, end_of_turn: bool = True,
          truncate: bool = False) -> LogProbs:
    """log π(y|x) for one policy: shared prompts encoded once, the LM head only where a response token is scored."""
    bb = policy.backbone
    rows = encode_rows(policy, xs, ys, end_of_turn=end_of_turn, truncate=truncate)
    per_token: list[np.ndarray] = [np.zeros(0)] * len(rows)
    for i, logits in _response_logits(policy, rows, batch_size, 0):
        picked = _picked(logits, torch.tensor(rows[i][1], device=logits.device))
        per_token[i] = picked.cpu().numpy().astype(np.float64)
    ids = [r for _, r in rows]
    return LogProbs(per_token, ids, [readable_tokens(bb.tokenizer, r) for r in ids])


@torch.inference_mode()
def distributions(components: list[PolicyPart], xs: list[str], ys: list[str], *, batch_size: int = 8,
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


def _row_distributions(policy: PolicyPart, rows: list[Row], batch_size: int, extra: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    for i, logits in _response_logits(policy, rows, batch_size, extra):
        out[i] = torch.log_softmax(logits, dim=-1).cpu()
    return out


# -- the logits that predict each response token -------------------------------------------------------------------
def _response_logits(policy: PolicyPart, rows: list[Row], batch_size: int,
                     extra: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(pair i, logits [len(y_i) + extra, V]): row t predicts y_i[t]; with extra = 1, the last row the token after y.

    At most `batch_size` prompts and `batch_size` responses per forward. The blocks are views into a batch's logits:
    use each one before taking the next.
    """
    members: dict[PromptKey, list[int]] = {}
    for i, (p, _) in enumerate(rows):
        members.setdefault(tuple(p), []).append(i)
    prompts = sorted(members)  # neighbours share the longest stems
    chunks = [prompts[s : s + batch_size] for s in range(0, len(prompts), batch_size)]
    cost = _forward_cost(policy.backbone.device)
    if len(prompts) == len(rows) and not any(_stem(c, cost) for c in chunks):  # nothing to share
        yield from _full_logits(policy, rows, batch_size, extra)
        return
    for chunk in chunks:
        yield from _shared_logits(policy, chunk, members, rows, batch_size, extra)


def _full_logits(policy: PolicyPart, rows: list[Row], batch_size: int,
                 extra: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Each pair as one right-padded sequence (prompt + response) in length-sorted batches."""
    bb = policy.backbone
    for idx, batch in batches(rows, batch_size, bb.pad_id):
        k = batch.input_ids.shape[1] - min(len(rows[i][0]) - 1 for i in idx)  # from the earliest last prompt token
        logits = response_logits(bb, batch, [policy.adapter] * len(idx), [policy.exit_layer] * len(idx), keep=k)
        skipped = batch.input_ids.shape[1] - logits.shape[1]  # positions whose logits were not computed
        for j, i in enumerate(idx):
            start = len(rows[i][0]) - 1 - skipped  # the logits at the last prompt token predict y_0
            yield i, logits[j, start : start + len(rows[i][1]) + extra]


def _shared_logits(policy: PolicyPart, prompts: list[PromptKey], members: dict[PromptKey, list[int]], rows: list[Row],
                   batch_size: int, extra: int) -> Iterator[tuple[int, torch.Tensor]]:
    """The pairs of `prompts` (distinct, ≤ batch_size): the prompts encoded once, then the responses on their cache.

    A response's first token is predicted by its prompt's last logits; its other tokens (all but its last, unless
    extra) run on rows of the prompts' cache, shortest first, in padding-aware batches (`_runs`).
    """
    first, context = _encode_prompts(policy, prompts)
    pairs = sorted(((i, k) for k, p in enumerate(prompts) for i in members[p]), key=lambda ik: len(rows[ik[0]][1]))
    need = [len(rows[i][1]) - 1 + extra for i, _ in pairs]  # response tokens to feed
    for (i, k), n in zip(pairs, need, strict=True):
        if n <= 0:  # the prompt's logits are all it needs (one response token, or none)
            yield i, first[k : k + 1][: len(rows[i][1]) + extra]
    fed = [(ik, n) for ik, n in zip(pairs, need, strict=True) if n > 0]
    for run in _runs([n for _, n in fed], batch_size, _forward_cost(policy.backbone.device)):
        part = [fed[j] for j in run]
        ids, mask = _right_pad([rows[i][1][:n] for (i, _), n in part], policy.backbone.pad_id)
        sel = torch.tensor([k for (_, k), _ in part], device=context.mask.device)
        logits, _ = _extend(policy, context.rows(sel), ids, mask, keep=ids.shape[1])
        for j, ((i, k), n) in enumerate(part):
            yield i, torch.cat([first[k : k + 1], logits[j, :n]])


@dataclass
class _Context:
    """Encoded context rows: their KV cache, attention mask [B, L] (0 at padding) and real lengths [B]."""

    cache: DynamicCache
    mask: torch.Tensor
    length: torch.Tensor

    def rows(self, sel: torch.Tensor) -> _Context:
        """Rows `sel` (repeats allowed) as a new context with its own cache; this one stays as it is."""
        cache = DynamicCache([(k[sel], v[sel], window) for k, v, window in self.cache])
        return _Context(cache, self.mask[sel], self.length[sel])


def _extend(policy: PolicyPart, context: _Context, ids: torch.Tensor, mask: torch.Tensor,
            keep: int) -> tuple[torch.Tensor, _Context]:
    """Feed `ids` [B, T] (padding where `mask` is 0) after `context`'s rows.

    Returns the logits at the last `keep` positions and the extended context; `context`'s cache grows in place, so
    pass a `_Context.rows` copy of a context you reuse.
    """
    bb, n = policy.backbone, len(ids)
    ids, mask = ids.to(bb.device), mask.to(bb.device)
    positions = context.length[:, None] + (mask.cumsum(-1) - 1).clamp(min=0)  # each row goes on after its real tokens
    full = torch.cat([context.mask, mask], dim=-1)
    logits, cache = bb.forward(ids, full, adapters=[policy.adapter] * n, exit_layers=[policy.exit_layer] * n,
                               position_ids=positions, past_key_values=context.cache, use_cache=True,
                               logits_to_keep=keep)
    return logits, _Context(cache, full, context.length + mask.sum(-1))


def _empty(rows: int, device: torch.device) -> _Context:
    none = torch.zeros(rows, 0, dtype=torch.long, device=device)
    return _Context(DynamicCache(), none, none.sum(-1))


def _encode_prompts(policy: PolicyPart, prompts: list[PromptKey]) -> tuple[torch.Tensor, _Context]:
    """Encode distinct prompts: their common stem once (when worth a forward), then the tails, left-padded.

    Returns the logits at each prompt's last token [P, V] (they predict y_0) and the prompts' context.
    """
    device = policy.backbone.device
    stem = _stem(prompts, _forward_cost(device))
    context = _empty(len(prompts), device)
    if stem:
        _, shared = _extend(policy, _empty(1, device), torch.tensor([stem]), torch.ones(1, len(stem), dtype=torch.long),
                            keep=1)
        context = shared.rows(torch.zeros(len(prompts), dtype=torch.long, device=device))
    ids, mask = left_pad([list(p[len(stem) :]) for p in prompts], policy.backbone.pad_id)
    logits, context = _extend(policy, context, ids, mask, keep=1)
    return logits[:, -1], context


def _stem(prompts: Sequence[PromptKey], cost: int) -> PromptKey:
    """The prefix all `prompts` share (each keeps ≥ 1 token of its own), if encoding it once saves a forward's cost;
    else ()."""
    first, last = min(prompts), max(prompts)  # the common prefix of sorted sequences is that of the two ends
    n = min(len(first), len(last), min(len(p) for p in prompts) - 1)
    n = next((t for t in range(n) if first[t] != last[t]), n)
    return first[:n] if n * (len(prompts) - 1) > cost else ()


def _runs(lengths: list[int], limit: int, cost: int) -> list[range]:
    """Split ascending `lengths` into runs of ≤ `limit` rows minimising Σ (cost + rows × longest): one forward
    per run, right-padded to its longest row."""
    best, cut = [0] + [float("inf")] * len(lengths), [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for start in range(max(0, end - limit), end):
            total = best[start] + cost + (end - start) * lengths[end - 1]
            if total < best[end]:
                best[end], cut[end] = total, start
    runs, end = [], len(lengths)
    while end:
        runs.append(range(cut[end], end))
        end = cut[end]
    return runs[::-1]


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: [B, T] ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _forward_cost(device: torch.device) -> int:
    """One forward's fixed cost in token positions, traded against padding (`_runs`) and against encoding a stem
    apart (`_stem`). On a CPU a forward streams all the weights from memory once: SmolLM2-135M on 1 thread takes
    ~120 ms for one token and ~4-5 ms for each further position. An accelerator's forward is launch-bound below
    hundreds of tokens."""
    return 24 if device.type == "cpu" else 256
