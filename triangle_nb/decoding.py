"""The Eq. 7 composition decoder, used by every policy's `generate`.

Per token: log π2(y_t | ·) ∝ Σ_i w_i · log π_i(y_t | x, z_i, y_<t). A plain policy is the
one-component case (w = 1). Each component keeps its own KV cache; components sharing one
backbone (other prompts, other LoRA adapters, other exit layers) run as ONE batched forward
per decoding step.

Sampling runs on the model's device with transformers' own logits processors (repetition penalty,
temperature, top-k, top-p, min-p, typical-p) applied to the combined Eq. 7 scores, in the order
`model.generate` applies them; `streamer=` takes any transformers streamer. What transformers cannot
do for us is the product itself: one batched, KV-cached forward per step over components that differ
in prompt, adapter and exit layer, and rules over several distributions.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from . import _validate as check
from .chat import left_pad, prompt_ids
from .control import checkpoint
from .errors import InvalidArgumentError, VocabularyMismatchError

if TYPE_CHECKING:
    from ._types import PolicyPart
    from .backbone import Backbone

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

    def __init__(self, backbone: Backbone, members: list[tuple[int, PolicyPart]], xs: list[str],
                 reserve: int, truncate: bool, shared_prefix: bool = False) -> None:
        self.backbone, self.members, self.n = backbone, members, len(xs)
        rows = [self._ids(p, x, i, reserve, truncate) for _, p in members for i, x in enumerate(xs)]
        ids, self.mask = left_pad(rows, backbone.pad_id)
        self.prompt_ids = ids[: self.n]  # the first member's prompts (what a streamer is shown first)
        self.adapters = [p.adapter for _, p in members for _ in xs]
        self.layers = [p.exit_layer for _, p in members for _ in xs]
        if shared_prefix and len(set(self.adapters)) == 1 and len(set(self.layers)) == 1:
            self._prefill_shared(rows)
            return
        self.next_pos = self.mask.sum(-1, keepdim=True).to(backbone.device)
        self.mask = self.mask.to(backbone.device)
        self.cache = DynamicCache()
        self._run(ids.to(backbone.device), None)

    def _prefill_shared(self, rows: list[list[int]]) -> None:
        """The rows' prompts as scoring encodes shared prompts (`scoring._encode_prompts`): the prefix they all share
        once, when that saves a forward's cost, its KV cache copied to every row, then each row's own tail."""
        from .scoring import _encode_prompts

        last, context = _encode_prompts(self.members[0][1], [tuple(r) for r in rows])
        self.last = torch.log_softmax(last, dim=-1)
        self.cache, self.mask, self.next_pos = context.cache, context.mask, context.length[:, None]

    def _ids(self, p: PolicyPart, x: str, i: int, reserve: int, truncate: bool) -> list[int]:
        ids = prompt_ids(self.backbone.tokenizer, p.prompt, x)
        room = self.backbone.context_length - reserve
        if room < 1:
            raise InvalidArgumentError(f"max_new_tokens={reserve} leaves no room for the prompt in the model's context "
                                       f"window of {self.backbone.context_length} tokens: use max_new_tokens < "
                                       f"{self.backbone.context_length} (minus the prompt's length).")
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


def check_vocabularies(components: Sequence[PolicyPart]) -> None:
    first = components[0].backbone
    for p in components[1:]:
        bb = p.backbone
        if bb is not first and (bb.vocab_size != first.vocab_size or bb.tokenizer.get_vocab() != first.tokenizer.get_vocab()):
            raise VocabularyMismatchError(
                f"components must share one vocabulary: {first.name!r} has {first.vocab_size} tokens, "
                f"{bb.name!r} has {bb.vocab_size} (or other token strings). Use models of the same family."
            )


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How the next token is chosen from the combined scores: transformers' logits processors, then argmax
    (temperature 0) or a draw on the model's device.

    Attributes:
        temperature: 0 is greedy; > 0 samples from softmax(scores / T).
        top_p: nucleus sampling's mass in (0, 1]; 1 turns it off.
        top_k: keep the k best tokens (k ≥ 1); None turns it off.
        min_p: keep tokens with p ≥ min_p · max p, in [0, 1]; 0 turns it off.
        typical_p: locally typical sampling's mass in (0, 1]; 1 turns it off.
        repetition_penalty: > 0; > 1 discourages tokens already in the response (CTRL's penalty), 1 is off.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        from . import _validate as check

        object.__setattr__(self, "temperature", check.temperature(self.temperature))
        object.__setattr__(self, "top_p", check.top_p(self.top_p))
        if self.top_k is not None:
            check.top_k(self.top_k)
        _check_unit(self.min_p, "min_p", closed_at_zero=True, off="0 turns it off; try 0.05")
        _check_unit(self.typical_p, "typical_p", closed_at_zero=False, off="1.0 turns it off; try 0.9")
        check.finite_positive(self.repetition_penalty, "repetition_penalty")  # 1.0 is off, > 1 penalises repeats

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def processors(self) -> LogitsProcessorList:
        """The processors transformers' `generate` would build for these settings, in its order."""
        out = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.greedy:
            return out
        if self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k is not None:
            out.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            out.append(TopPLogitsWarper(self.top_p))
        if self.min_p > 0:
            out.append(MinPLogitsWarper(self.min_p))
        if self.typical_p < 1.0:
            out.append(TypicalLogitsWarper(self.typical_p))
        return out


def _check_unit(value: object, name: str, *, closed_at_zero: bool, off: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 <= value <= 1 if closed_at_zero else 0 < value <= 1):  # type: ignore[operator]
        interval = "[0, 1]" if closed_at_zero else "(0, 1]"
        raise InvalidArgumentError(f"{name} must be in {interval}, got {value!r} ({off}).")


GREEDY = Sampling()


def pick(scores: torch.Tensor, sampling: Sampling, processors: LogitsProcessorList, generated: torch.Tensor,
         generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row: `processors` (`sampling.processors()`) on `scores` [B, V] (the response so far,
    `generated` [B, t], is what the repetition penalty looks at), then argmax or a seeded draw, on the scores' device."""
    scores = processors(generated, scores)
    if sampling.greedy:
        return scores.argmax(-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# What a rule may read besides the log-probs (reward-guided decoding scores the text so far)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """Each row's input x and response tokens so far, for the rule evaluated on those rows."""

    xs: Sequence[str]
    prefixes: Sequence[Sequence[int]]
    tokenizer: Any


_CONTEXT: contextvars.ContextVar[Context | None] = contextvars.ContextVar("triangle_nb_rule_context", default=None)


@contextlib.contextmanager
def rule_context(context: Context) -> Iterator[None]:
    """Make `context` what `current_context()` returns while a rule is evaluated on its rows."""
    token = _CONTEXT.set(context)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> Context | None:
    return _CONTEXT.get()


@torch.inference_mode()
def decode(components: Sequence[PolicyPart], weights: Sequence[float], xs: list[str], *, max_new_tokens: int,
           sampling: Sampling = GREEDY, seed: int | None = None, rule: Rule = weighted_sum,
           record: bool = False, truncate: bool = False, streamer: Any = None,
           shared_prefix: bool = False) -> DecodeOutput:
    """Generate for each x from the composition of `components` (Eq. 7), KV-cached.

    `shared_prefix=True` encodes the prompt prefix all rows share once (e.g. one long history asked several
    questions) and copies its KV cache to every row. The logits agree with the row-by-row prefill to float
    rounding (~1e-6), which can flip a sampled token at a near-tie, so it is off by default: every seeded run,
    and every bake's training data, stays the same token for token.

    `streamer` (a transformers streamer, e.g. TextIteratorStreamer) receives what `model.generate` gives it: first
    the first component's prompt ids [B, L], then each step's new tokens [B], then `end()`.
    """
    out = DecodeOutput([[] for _ in xs])
    for nxt, logps, scores in steps(components, weights, xs, max_new_tokens=max_new_tokens, sampling=sampling,
                                    seed=seed, rule=rule, truncate=truncate, streamer=streamer, out=out,
                                    shared_prefix=shared_prefix):
        if record:
            out.component_logprobs.append(torch.stack(logps).cpu())
            out.combined_logprobs.append(scores.cpu())
    return out


def steps(components: Sequence[PolicyPart], weights: Sequence[float], xs: list[str], *, max_new_tokens: int,
          sampling: Sampling = GREEDY, seed: int | None = None, rule: Rule = weighted_sum, truncate: bool = False,
          streamer: Any = None, out: DecodeOutput | None = None, shared_prefix: bool = False
          ) -> Iterator[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]]:
    """The decoding loop, one step per iteration: yields (new tokens [B], component log-probs, combined scores)
    after appending the tokens of unfinished rows to `out.token_ids`."""
    check_vocabularies(components)
    truncate = check.flag(truncate, "truncate")
    bb = components[0].backbone
    with torch.inference_mode():
        groups = _make_groups(components, xs, max_new_tokens, truncate, check.flag(shared_prefix, "shared_prefix"))
    out = out if out is not None else DecodeOutput([[] for _ in xs])
    stop = torch.tensor(bb.stop_ids, device=bb.device)
    if seed is not None and not 0 <= seed < 2**63:
        raise InvalidArgumentError(f"seed={seed!r} is out of range: use a seed in [0, 2**32 - 1].")
    generator = torch.Generator(device=bb.device).manual_seed(seed) if seed is not None else None
    done = torch.zeros(len(xs), dtype=torch.bool, device=bb.device)
    generated = torch.zeros(len(xs), 0, dtype=torch.long, device=bb.device)
    processors = sampling.processors()
    if streamer is not None:
        streamer.put(groups[0].prompt_ids.cpu())
    try:
        for step in range(max_new_tokens):
            checkpoint("generating token", step, max_new_tokens)  # a panel's Stop ends decoding here (control.py)
            with torch.inference_mode():
                logps = _gather(groups, len(components))
                with rule_context(Context(xs, out.token_ids, bb.tokenizer)):
                    scores = torch.log_softmax(rule(logps, weights), dim=-1)
                check_finite(scores, logps, components, rule)
                nxt = torch.where(done, bb.pad_id, pick(scores, sampling, processors, generated, generator))
                generated = torch.cat([generated, nxt[:, None]], dim=-1)
            host = nxt.tolist()  # one host sync per step
            for i in (~done).nonzero().flatten().tolist():
                out.token_ids[i].append(host[i])
            if streamer is not None:
                streamer.put(nxt.cpu())
            yield nxt, logps, scores
            with torch.inference_mode():
                done = done | torch.isin(nxt, stop)
            if bool(done.all()) or step == max_new_tokens - 1:  # the last token needs no forward of its own
                break
            with torch.inference_mode():
                for g in groups:
                    g.feed(nxt)
    finally:
        if streamer is not None:
            streamer.end()


def check_finite(scores: torch.Tensor, logps: list[torch.Tensor], components: Sequence[PolicyPart], rule: Rule) -> None:
    """The step's combined log-probs [B, V] are usable: no NaN or +inf, and every row has a finite entry (-inf marks
    excluded tokens). Otherwise name the component (or the rule) that is not, instead of decoding garbage."""
    ok = ~torch.isnan(scores).any() & ~torch.isposinf(scores).any() & torch.isfinite(scores).any(-1).all()
    if bool(ok):
        return
    for c, lp in enumerate(logps):
        if bool(torch.isnan(lp).any() | torch.isposinf(lp).any() | (~torch.isfinite(lp).any(-1)).any()):
            raise InvalidArgumentError(f"decoding: component {c} ({components[c].name}) gave non-finite log-probs: its "
                                       "weights or prompt are broken (NaN adapter weights?); rebuild or reload it.")
    what = getattr(rule, "__name__", type(rule).__name__)
    raise InvalidArgumentError(f"decoding: the combined log-probs of rule {what} are not finite (each component's "
                               "are): a weight or beta is too large or too small (|w| * |log p| overflows, or a "
                               "reward / beta is huge); use weights and beta of moderate size (e.g. |w| <= 100).")


def _make_groups(components: Sequence[PolicyPart], xs: list[str], reserve: int, truncate: bool,
                 shared_prefix: bool = False) -> list[_Group]:
    by_backbone: dict[int, list[tuple[int, PolicyPart]]] = {}
    for c, p in enumerate(components):
        by_backbone.setdefault(id(p.backbone), []).append((c, p))
    return [_Group(m[0][1].backbone, m, xs, reserve, truncate, shared_prefix) for m in by_backbone.values()]


def _gather(groups: list[_Group], n_components: int) -> list[torch.Tensor]:
    logps: list[torch.Tensor | None] = [None] * n_components
    for g in groups:
        for c, lp in g.logps():
            logps[c] = lp
    return logps  # type: ignore[return-value]
