"""The Eq. 7 composition decoder, used by every policy's `generate`.

Per token: log π2(y_t | ·) ∝ Σ_i w_i · log π_i(y_t | x, z_i, y_<t). A plain policy is the
one-component case (w = 1). Each component keeps its own KV cache; components sharing one
backbone (other prompts, other LoRA adapters, other exit layers) run as ONE batched forward
per decoding step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from .chat import left_pad, prompt_ids
from .errors import VocabularyMismatchError

if TYPE_CHECKING:
    from .backbone import Backbone
    from .policy import Policy

# A rule maps the components' next-token log-probs [C x [B, V]] and weights to scores [B, V].
Rule = Callable[[list[torch.Tensor], Sequence[float]], torch.Tensor]


def weighted_sum(logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Eq. 7: Σ_i w_i · log π_i(· | context_i)."""
    total = logps[0] * weights[0]
    for lp, w in zip(logps[1:], weights[1:], strict=True):
        total = total + w * lp
    return total


@dataclass
class DecodeOutput:
    """Generated token ids per row, and optionally each component's log-probs per step."""

    token_ids: list[list[int]]
    component_logprobs: list[torch.Tensor] = field(default_factory=list)  # per step: [C, B, V]
    combined_logprobs: list[torch.Tensor] = field(default_factory=list)  # per step: [B, V]


class _Group:
    """The components sharing one backbone: one left-padded batch, one KV cache."""

    def __init__(self, backbone: Backbone, members: list[tuple[int, Policy]], xs: list[str],
                 reserve: int, truncate: bool) -> None:
        self.backbone, self.members, self.n = backbone, members, len(xs)
        rows = [self._ids(p, x, i, reserve, truncate) for _, p in members for i, x in enumerate(xs)]
        ids, self.mask = left_pad(rows, backbone.pad_id)
        self.adapters = [p.adapter for _, p in members for _ in xs]
        self.layers = [p.exit_layer for _, p in members for _ in xs]
        self.next_pos = self.mask.sum(-1, keepdim=True).to(backbone.device)
        self.mask = self.mask.to(backbone.device)
        self.cache = DynamicCache()
        self._run(ids.to(backbone.device), None)

    def _ids(self, p: Policy, x: str, i: int, reserve: int, truncate: bool) -> list[int]:
        ids = prompt_ids(self.backbone.tokenizer, p.prompt, x)
        room = self.backbone.context_length - reserve
        if len(ids) > room:
            if not truncate:
                self.backbone.check_length(len(ids) + reserve, f"xs[{i}] (+ max_new_tokens={reserve})")
            ids = ids[-room:]
        return ids

    def _run(self, ids: torch.Tensor, position_ids: torch.Tensor | None) -> None:
        logits, self.cache = self.backbone.forward(
            ids, self.mask, adapters=self.adapters, exit_layers=self.layers, position_ids=position_ids,
            past_key_values=self.cache, use_cache=True, logits_to_keep=1)  # only the next token's logits
        self.last = torch.log_softmax(logits[:, -1], dim=-1)  # [rows, V]

    def logps(self) -> list[tuple[int, torch.Tensor]]:
        """(component index, [B, V] next-token log-probs) for each member."""
        return [(c, self.last[k * self.n : (k + 1) * self.n]) for k, (c, _) in enumerate(self.members)]

    def feed(self, tokens: torch.Tensor) -> None:
        rows = tokens.to(self.backbone.device).repeat(len(self.members))[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(rows)], dim=-1)
        self._run(rows, self.next_pos)
        self.next_pos = self.next_pos + 1


def check_vocabularies(components: Sequence[Policy]) -> None:
    first = components[0].backbone
    for p in components[1:]:
        bb = p.backbone
        if bb is not first and (bb.vocab_size != first.vocab_size or bb.tokenizer.get_vocab() != first.tokenizer.get_vocab()):
            raise VocabularyMismatchError(
                f"components must share one vocabulary: {first.name!r} has {first.vocab_size} tokens, "
                f"{bb.name!r} has {bb.vocab_size} (or other token strings). Use models of the same family."
            )


def pick(scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy at temperature 0, else nucleus sampling from softmax(scores / T)."""
    if temperature == 0:
        return scores.argmax(-1)
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set whose mass reaches top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(scores.device)


@torch.inference_mode()
def decode(components: Sequence[Policy], weights: Sequence[float], xs: list[str], *, max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, rule: Rule = weighted_sum,
           record: bool = False, truncate: bool = False) -> DecodeOutput:
    """Generate for each x from the composition of `components` (Eq. 7), KV-cached."""
    check_vocabularies(components)
    groups = _make_groups(components, xs, max_new_tokens, truncate)
    stop = torch.tensor(components[0].backbone.stop_ids)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out = DecodeOutput([[] for _ in xs])
    done = torch.zeros(len(xs), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logps = _gather(groups, len(components))
        scores = torch.log_softmax(rule(logps, weights), dim=-1)
        nxt = pick(scores, temperature, top_p, generator).cpu()
        if record:
            out.component_logprobs.append(torch.stack(logps).cpu())
            out.combined_logprobs.append(scores.cpu())
        nxt = torch.where(done, torch.tensor(components[0].backbone.pad_id), nxt)
        for i in (~done).nonzero().flatten().tolist():
            out.token_ids[i].append(int(nxt[i]))
        done |= torch.isin(nxt, stop)
        if bool(done.all()):
            break
        for g in groups:
            g.feed(nxt)
    return out


def _make_groups(components: Sequence[Policy], xs: list[str], reserve: int, truncate: bool) -> list[_Group]:
    by_backbone: dict[int, list[tuple[int, Policy]]] = {}
    for c, p in enumerate(components):
        by_backbone.setdefault(id(p.backbone), []).append((c, p))
    return [_Group(m[0][1].backbone, m, xs, reserve, truncate) for m in by_backbone.values()]


def _gather(groups: list[_Group], n_components: int) -> list[torch.Tensor]:
    logps: list[torch.Tensor | None] = [None] * n_components
    for g in groups:
        for c, lp in g.logps():
            logps[c] = lp
    return logps  # type: ignore[return-value]
