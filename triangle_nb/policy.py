"""The policy vertex π: a model (+ prompt z, + adapter) that generates and scores text.

`Policy` is one model under one context; `Composition` is the Eq. 7 product of several
policies. Both expose the same `generate` / `logprobs`, so a steered policy can be scored,
re-ranked or distilled like any other.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _replay
from . import _validate as check
from .backbone import Backbone
from .chat import readable_tokens
from .decoding import (Context, DecodeOutput, Rule, Sampling, check_vocabularies, decode, rule_context, steps,
                       weighted_sum)
from .errors import InvalidArgumentError
from .options import keyword_beta, old_name
from .prompt import EMPTY, Prompt
from .scoring import LogProbs, distributions, score

# Policy.save writes through algebra.save_composition (its rules and rewards live above this module); algebra puts it
# here when imported, and the package's __init__ imports algebra.
SAVE: list[Callable[[BasePolicy, str | os.PathLike[str]], Path]] = []


class BasePolicy:
    """What every policy offers: generation and token-exact scoring."""

    backbone: Backbone

    # a composition is a weighted set of plain policies (Eq. 7); a plain policy is one with w = 1
    @property
    def components(self) -> list[tuple[Policy, float]]:
        raise NotImplementedError

    @property
    def rule(self) -> Rule:
        return weighted_sum

    @property
    def tokenizer(self) -> Any:
        return self.backbone.tokenizer

    def generate(self, xs: Sequence[str], *, max_new_tokens: int = 48, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int | None = None, min_p: float = 0.0, typical_p: float = 1.0,
                 repetition_penalty: float = 1.0, samples: int = 1, seed: int | None = None, truncate: bool = False,
                 batch_size: int = 16, streamer: Any = None, shared_prefix: bool = False,
                 n: int | None = None) -> list[str] | list[list[str]]:
        """Sample responses (greedy at temperature 0), batched and KV-cached; stops at end of turn.

        Sampling uses transformers' logits processors (`Sampling`) on the device. `streamer` is any transformers
        streamer (TextStreamer, TextIteratorStreamer), fed as `model.generate` feeds it; `stream` yields text.
        `shared_prefix=True` encodes the prompt prefix all inputs share once (several questions after one long
        context): faster, equal to float rounding, so off by default (`decoding.decode` says why).

        Returns one string per input, or a list of `samples` strings per input when samples > 1 (`n=`, the old
        name of `samples`, still works with a DeprecationWarning).

        >>> pi0.generate(["Tell me about rain."], max_new_tokens=16)  # doctest: +SKIP
        """
        k = old_name(samples, n, old="n", new="samples", default=1)
        ids = self.generate_ids(xs, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                top_k=top_k, min_p=min_p, typical_p=typical_p, repetition_penalty=repetition_penalty,
                                samples=k, seed=seed, truncate=truncate, batch_size=batch_size, streamer=streamer,
                                shared_prefix=shared_prefix)
        texts = [self.decode_response(t) for t in ids]
        return texts if k == 1 else [texts[i * k : (i + 1) * k] for i in range(len(xs))]

    def generate_ids(self, xs: Sequence[str], *, max_new_tokens: int = 48, temperature: float = 0.0,
                     top_p: float = 1.0, top_k: int | None = None, min_p: float = 0.0, typical_p: float = 1.0,
                     repetition_penalty: float = 1.0, samples: int = 1, seed: int | None = None,
                     truncate: bool = False, batch_size: int = 16, streamer: Any = None, shared_prefix: bool = False,
                     n: int | None = None) -> list[list[int]]:
        """Like `generate`, returning token ids (the stop token included when reached)."""
        xs = check.texts(xs, "xs", allow_empty=True)
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, typical_p=typical_p,
                            repetition_penalty=repetition_penalty)
        check.positive_int(max_new_tokens, "max_new_tokens")
        samples = check.positive_int(old_name(samples, n, old="n", new="samples", default=1), "samples")
        check.positive_int(batch_size, "batch_size")
        seed = _seed(seed)
        expanded = [x for x in xs for _ in range(samples)]
        comps, weights = self._split()
        out: list[list[int]] = []
        for start in range(0, len(expanded), batch_size):
            chunk = expanded[start : start + batch_size]
            s = None if seed is None else seed + start

            def run(chunk: list[str] = chunk, s: int | None = s) -> list[list[int]]:
                return decode(comps, weights, chunk, max_new_tokens=max_new_tokens, sampling=sampling, seed=s,
                              rule=self.rule, truncate=truncate, streamer=streamer,
                              shared_prefix=shared_prefix).token_ids

            if streamer is not None or (s is None and sampling.temperature > 0):  # shown live, or not reproducible
                out += run()
                continue
            out += _replay.sampled(lambda chunk=chunk, s=s: {  # noqa: B023 (bound by the defaults)
                "sampled": "generate_ids", "policies": list(comps), "weights": list(weights),
                "rule": getattr(self.rule, "__qualname__", repr(self.rule)), "rows": chunk, "sampling": sampling,
                "seed": s, "max_new_tokens": max_new_tokens, "truncate": truncate, "shared_prefix": shared_prefix}, run)
        return out

    def stream(self, x: str, *, max_new_tokens: int = 48, seed: int | None = None, truncate: bool = False,
               **sampling: Any) -> Iterator[str]:
        """Yield the response to one input piece by piece, as its tokens are generated (for panels and chats).

        `sampling` takes `generate`'s options (temperature, top_p, top_k, min_p, typical_p, repetition_penalty).
        Joined, the pieces are `generate([x], ...)[0]` (same seed, same text).

        >>> for piece in pi0.stream("Tell me about rain."):  # doctest: +SKIP
        ...     print(piece, end="")
        """
        check.texts([x], "x")
        check.positive_int(max_new_tokens, "max_new_tokens")
        comps, weights = self._split()
        out = DecodeOutput([[]])
        shown = ""
        for _ in steps(comps, weights, [x], max_new_tokens=max_new_tokens, sampling=Sampling(**sampling),
                       seed=_seed(seed), rule=self.rule, truncate=truncate, out=out):
            text = self.decode_response(out.token_ids[0])
            if text.startswith(shown) and len(text) > len(shown) and not text.endswith("\ufffd"):  # whole characters
                yield text[len(shown):]
                shown = text
        if shown != self.decode_response(out.token_ids[0]):  # a final piece that is not a continuation (strip)
            yield self.decode_response(out.token_ids[0])[len(shown):]

    def _split(self) -> tuple[tuple[Policy, ...], tuple[float, ...]]:
        comps, weights = zip(*self.components, strict=True)
        if self.rule is weighted_sum and all(w == 0 for w in weights):
            raise InvalidArgumentError("every weight of this composition is 0: Σ_i 0 · log π_i is the uniform "
                                       "distribution, not a policy. Give at least one part a non-zero weight.")
        return comps, weights

    # -- the algebra (the operators at the end of this module): every expression is a Composition -------
    def __mul__(self, w: object) -> Composition:
        return scale(self, w)  # type: ignore[arg-type]

    __rmul__ = __mul__

    def __truediv__(self, w: object) -> Composition:
        w = _weight(w)
        if w == 0:
            raise InvalidArgumentError("a policy divided by 0: scale it by a finite number instead.")
        return scale(self, 1.0 / w)

    def __neg__(self) -> Composition:
        return self * -1.0

    def __add__(self, other: object) -> Composition:
        return add(self, other)  # type: ignore[arg-type]

    def __radd__(self, other: object) -> Composition:
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:  # sum([...]) starts at 0
            return scale(self, 1.0)
        return add(other, self)  # type: ignore[arg-type]

    def __sub__(self, other: object) -> Composition:
        _operand(other, "the right operand")
        return add(self, -1.0 * other)  # type: ignore[operator]

    def __rsub__(self, other: object) -> Composition:
        return add(other, -1.0 * self)  # type: ignore[arg-type]

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write this policy (prompts, adapters, exit layers, weights, rule) to `folder`; `tnb.load(folder, base=pi0)`
        rebuilds it and reproduces its outputs."""
        return SAVE[0](self, folder)

    def decode_response(self, ids: list[int]) -> str:
        """Text of a generated response, without the stop token."""
        stop = set(self.backbone.stop_ids)
        keep = ids[:-1] if ids and ids[-1] in stop else ids
        return self.tokenizer.decode(keep, skip_special_tokens=True).strip()

    def logprobs(self, xs: Sequence[str], ys: Sequence[str], *, batch_size: int = 16, end_of_turn: bool = True,
                 truncate: bool = False) -> LogProbs:
        """Token-exact log π(y|x): `.sum` per pair, `.per_token` per token.

        Args:
            end_of_turn: also score the end-of-turn token that closes y (a complete answer).
        """
        xs_, ys_ = check.pairs(xs, ys)
        check.positive_int(batch_size, "batch_size")
        if not xs_:
            return LogProbs([], [], [])
        return self._logprobs(xs_, ys_, batch_size=batch_size, end_of_turn=end_of_turn, truncate=truncate)

    def _logprobs(self, xs: list[str], ys: list[str], **kw: Any) -> LogProbs:
        comps, weights = self._split()
        dists, ids = distributions(list(comps), xs, ys, **kw)
        per_token = []
        for i, target in enumerate(ids):
            # row t of pair i is the step after the response prefix y_<t (what a stateful rule reads)
            with rule_context(Context([xs[i]] * len(target), [target[:t] for t in range(len(target))], self.tokenizer)):
                combined = torch.log_softmax(self.rule([d[i] for d in dists], weights), dim=-1)
            per_token.append(combined.gather(-1, torch.tensor(target)[:, None]).squeeze(-1).double().numpy())
        return LogProbs(per_token, ids, [readable_tokens(self.tokenizer, t) for t in ids])

    def next_token_logprobs(self, xs: Sequence[str], prefixes: Sequence[str] | None = None) -> torch.Tensor:
        """log π(· | x, y_prefix) over the vocabulary: [len(xs), V] (for panels and analysis)."""
        xs_ = check.texts(xs, "xs")
        prefixes_ = check.texts(prefixes, "prefixes") if prefixes is not None else [""] * len(xs_)
        comps, weights = self._split()
        dists, prefix_ids = distributions(list(comps), xs_, prefixes_, end_of_turn=False, with_next=True)
        last = [torch.stack([rows[-1] for rows in d]) for d in dists]  # per component: [len(xs), V]
        with rule_context(Context(xs_, prefix_ids, self.tokenizer)):
            return torch.log_softmax(self.rule(last, weights), dim=-1)


@dataclass(frozen=True, eq=False)
class Policy(BasePolicy):
    """One model (a backbone, optionally with an adapter) under one prompt z.

    Derived policies (`with_prompt`, `with_adapter`) share the backbone's weights.

    Attributes:
        backbone: the shared weights and tokenizer.
        prompt: the in-context prompt z (empty by default).
        adapter: the name of the LoRA adapter to apply, or None for the base weights.
        exit_layer: read logits from this layer (DoLa's premature layer), or None for the last.
    """

    backbone: Backbone
    prompt: Prompt = EMPTY
    adapter: str | None = None
    exit_layer: int | None = None

    @property
    def components(self) -> list[tuple[Policy, float]]:
        return [(self, 1.0)]

    @property
    def model(self) -> Any:
        return self.backbone.model

    @property
    def name(self) -> str:
        parts = [self.backbone.name] + ([f"adapter={self.adapter}"] if self.adapter else [])
        parts += [f"z={str(self.prompt)[:40]!r}"] if not self.prompt.is_empty else []
        return " ".join(parts + ([f"layer={self.exit_layer}"] if self.exit_layer is not None else []))

    def __repr__(self) -> str:
        return f"Policy({self.name})"

    def with_prompt(self, prompt: Prompt | str) -> Policy:
        """π(·|x, z): the same weights with z in the context (a str becomes the system turn)."""
        if isinstance(prompt, str):
            prompt = Prompt(system=prompt)
        if not isinstance(prompt, Prompt):
            raise InvalidArgumentError(f"prompt must be a Prompt or a str, got {type(prompt).__name__}.")
        return dataclasses.replace(self, prompt=prompt)

    def with_adapter(self, adapter: str | os.PathLike[str], *, name: str | None = None) -> Policy:
        """π*: the base plus an adapter — a saved adapter folder, or the name of one already loaded."""
        if isinstance(adapter, str) and adapter in self.backbone.adapters and name is None:
            return dataclasses.replace(self, adapter=adapter)
        path = Path(adapter)
        if not path.exists():
            raise InvalidArgumentError(
                f"adapter={str(adapter)!r} is neither a folder nor a loaded adapter name "
                f"(loaded: {self.backbone.adapters}). Pass the folder a result's save() wrote."
            )
        name = name or self.backbone.unique_adapter_name(path.name.replace(".", "_") or "adapter")
        return dataclasses.replace(self, adapter=self.backbone.load_adapter(path, name))

    def bake_identity(self) -> dict[str, Any]:
        """What a baked run's key knows of this policy: the base weights, z, the adapter's weights, the exit layer."""
        from ._keys import adapter_digest, base_identity

        adapter = adapter_digest(self.backbone, self.adapter) if self.adapter else None
        return {"base": base_identity(self.backbone), "prompt": self.prompt, "adapter": adapter,
                "exit_layer": self.exit_layer}

    def without_adapter(self) -> Policy:
        return dataclasses.replace(self, adapter=None)

    def at_layer(self, layer: int | None) -> Policy:
        """The same policy reading its logits from an earlier layer (used by DoLa)."""
        if layer is not None and not 0 <= layer <= self.backbone.num_layers:
            raise InvalidArgumentError(f"layer must be in [0, {self.backbone.num_layers}], got {layer}.")
        return dataclasses.replace(self, exit_layer=layer)

    def _logprobs(self, xs: list[str], ys: list[str], **kw: Any) -> LogProbs:
        return score(self, xs, ys, **kw)


@dataclass(frozen=True, eq=False)
class Composition(BasePolicy):
    """The Eq. 7 product policy: log π(y_t) ∝ Σ_i w_i · log π_i(y_t | x, z_i, y_<t).

    Attributes:
        parts: (policy, weight) pairs; all share one vocabulary.
        combine: a rule replacing the weighted sum (e.g. contrastive decoding's plausibility mask).
        label: a short description for plots.
    """

    parts: tuple[tuple[Policy, float], ...]
    combine: Rule = weighted_sum
    label: str = "composition"

    def __post_init__(self) -> None:
        if not self.parts:
            raise InvalidArgumentError("a Composition needs at least one (policy, weight) part.")
        for i, (p, w) in enumerate(self.parts):
            if not isinstance(p, Policy):
                raise InvalidArgumentError(f"parts[{i}] must hold a Policy, got {type(p).__name__}.")
            if not np.isfinite(w):
                raise InvalidArgumentError(f"parts[{i}] has weight {w}; weights must be finite.")
        check_vocabularies([p for p, _ in self.parts])  # Eq. 7 adds log-probs over one vocabulary

    @property
    def backbone(self) -> Backbone:  # type: ignore[override]
        return self.parts[0][0].backbone

    @property
    def components(self) -> list[tuple[Policy, float]]:
        return list(self.parts)

    @property
    def rule(self) -> Rule:
        return self.combine

    def __repr__(self) -> str:
        inner = ", ".join(f"{w:+.3g}·[{p.name}]" for p, w in self.parts)
        return f"Composition({self.label}: {inner})"


def _seed(seed: object) -> int | None:
    """A seed >= 0 (numpy integers are fine too), or None for an unseeded draw."""
    if seed is None:
        return None
    return check.positive_int(int(seed) if isinstance(seed, np.integer) else seed, "seed", minimum=0)


# ---------------------------------------------------------------------------------------------
# The algebra's operators (Eq. 7), with the Composition they build: `w * π`, `a + b`, `a - b` and `steer`.
# Union, intersection, reward guidance and saving are in triangle_nb.algebra, which builds on these.
# ---------------------------------------------------------------------------------------------
Parts = tuple[tuple[Policy, float], ...]


@dataclass(frozen=True)
class Term:
    """Parts [start, stop) of a composition combined by their own rule, normalised, times `weight`."""

    start: int
    stop: int
    rule: Rule = weighted_sum
    weight: float = 1.0

    def logps(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        scores = self.rule(logps[self.start : self.stop], weights[self.start : self.stop])
        return torch.log_softmax(scores, dim=-1)


@dataclass(frozen=True)
class SumRule:
    """Σ_j w_j · log π_j over terms; a token any term rules out (−inf) stays ruled out."""

    terms: tuple[Term, ...]

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        parts = [t.logps(logps, weights) for t in self.terms]
        support = torch.stack([torch.isfinite(p) for p in parts]).all(0)
        total = sum(t.weight * p.masked_fill(~support, 0.0) for t, p in zip(self.terms, parts, strict=True))
        return total.masked_fill(~support, float("-inf"))  # type: ignore[union-attr]


def _operand(value: object, name: str) -> tuple[Parts, Rule]:
    """A policy's parts and rule (a plain policy is one part of weight 1)."""
    if isinstance(value, Policy):
        return ((value, 1.0),), weighted_sum
    if isinstance(value, Composition):
        return value.parts, value.combine
    raise InvalidArgumentError(f"{name} must be a policy (a Policy or a Composition), got {type(value).__name__}: "
                               "the algebra combines policies and scales them by numbers (e.g. 1.5 * pos - 0.5 * neg).")


def _weight(value: object) -> float:
    if isinstance(value, BasePolicy):
        raise InvalidArgumentError("policy * policy is not defined: Eq. 7 adds log-probs, so the product of two "
                                   "policies is their sum, a + b; scale a policy by a number (1.5 * pos).")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"a policy can be scaled by a finite number only, got {value!r} "
                                   f"({type(value).__name__}); e.g. 1.5 * pos.")
    if abs(float(value)) > MAX_WEIGHT:
        raise InvalidArgumentError(f"a policy's weight must be at most {MAX_WEIGHT:g} in size, got {value!r}: "
                                   "w · log π overflows to -inf for every token; e.g. 1.5 * pos.")
    return float(value)


MAX_WEIGHT = 1e4  # |w| · |log π| stays far below float32's range for any log-prob a model gives


def _label(parts: Parts) -> str:
    return " ".join(f"{'+' if w >= 0 else '−'} {abs(w):g}·[{p.name}]" for p, w in parts).lstrip("+ ")


def _as_terms(parts: Parts, rule: Rule, offset: int, weight: float = 1.0) -> list[Term]:
    """An operand inside a rule over terms: a SumRule's own terms (shifted), else one term."""
    if isinstance(rule, SumRule):
        return [Term(t.start + offset, t.stop + offset, t.rule, t.weight * weight) for t in rule.terms]
    return [Term(offset, offset + len(parts), rule, weight)]


def _name(policy: BasePolicy) -> str:
    return policy.label if isinstance(policy, Composition) else policy.name  # type: ignore[attr-defined]


def scale(policy: BasePolicy, w: float) -> Composition:
    """w · log π (Eq. 7's weight on one policy): `w * policy`."""
    w = _weight(w)
    parts, rule = _operand(policy, "the scaled operand")
    if rule is weighted_sum:
        scaled = tuple((p, wi * w) for p, wi in parts)
        return Composition(parts=scaled, combine=weighted_sum, label=_label(scaled))
    return Composition(parts=parts, combine=SumRule(tuple(_as_terms(parts, rule, 0, w))), label=f"{w:g}·({_name(policy)})")


def add(a: BasePolicy, b: BasePolicy) -> Composition:
    """log π_a + log π_b: `a + b` (and `a - b` = a + (−1)·b)."""
    pa, ra = _operand(a, "the left operand")
    pb, rb = _operand(b, "the right operand")
    parts = pa + pb
    if ra is weighted_sum and rb is weighted_sum:
        if all(w == 0 for _, w in parts):
            raise InvalidArgumentError("a sum with every weight 0 is the uniform distribution, not a policy: give at "
                                       "least one operand a non-zero weight.")
        return Composition(parts=parts, combine=weighted_sum, label=_label(parts))
    terms = _as_terms(pa, ra, 0) + _as_terms(pb, rb, len(pa))
    if all(t.weight == 0 for t in terms):
        raise InvalidArgumentError("a sum with every weight 0 is the uniform distribution, not a policy: give at "
                                   "least one operand a non-zero weight.")
    return Composition(parts=parts, combine=SumRule(tuple(terms)), label=f"{_name(a)} + {_name(b)}")


@keyword_beta
def steer(base: Policy | None = None, expert: Policy | None = None, anti: Policy | None = None, *,
          beta: float = 1.0, parts: Sequence[tuple[Policy, float]] | None = None, rule: Rule | None = None,
          label: str | None = None) -> Composition:
    """The Eq. 7 product policy: log π2 ∝ log π1 + (1/β)(log π* − log π0), itself a policy.

    Either the paper's form `steer(base=π1, expert=π*, anti=π0, beta=β)` (weights 1, 1/β, −1/β),
    or the general form `steer(parts=[(policy, weight), ...])`: log π2 ∝ Σ_i w_i log π_i.

    Args:
        base: π1, the policy being steered.
        expert: π*, the direction to move towards.
        anti: π0, the direction to move away from.
        beta: β > 0; small β steers hard, β → ∞ gives back the base.
        parts: the general form (exclusive with base/expert/anti).
        rule: replaces the weighted sum (e.g. a plausibility mask); see `triangle_nb.presets`.
        label: a short name for plots.

    Returns:
        a `Composition` with `generate`, `logprobs` and `next_token_logprobs`.

    >>> pol = tnb.steer(base=pi0, expert=pi0.with_prompt("Be cheerful."), anti=pi0, beta=1.0)  # doctest: +SKIP
    """
    if parts is not None:
        if any(p is not None for p in (base, expert, anti)):
            raise InvalidArgumentError("pass either parts=[(policy, weight), ...] or base/expert/anti, not both.")
        parts_ = _checked_parts(parts)
        return Composition(parts=parts_, combine=rule or weighted_sum, label=label or "steer")
    if base is None or expert is None or anti is None:
        raise InvalidArgumentError("steer needs base=π1, expert=π* and anti=π0 (or parts=[(policy, weight), ...]).")
    beta = check.finite_positive(beta, "beta")
    # Eq. 7: log π2 ∝ log π1 + (1/β) log π* − (1/β) log π0
    parts_ = _checked_parts([(base, 1.0), (expert, 1.0 / beta), (anti, -1.0 / beta)])
    return Composition(parts=parts_, combine=rule or weighted_sum, label=label or f"steer β={beta:g}")


def _checked_parts(parts: Sequence[tuple[Policy, float]]) -> tuple[tuple[Policy, float], ...]:
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) or not parts:
        raise InvalidArgumentError("parts must be a non-empty list of (policy, weight) pairs.")
    out = []
    for i, item in enumerate(parts):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InvalidArgumentError(f"parts[{i}] must be a (policy, weight) pair, got {item!r}.")
        policy, weight = item
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(
                f"parts[{i}] holds a {type(policy).__name__}; components must be plain Policy objects "
                "(nest compositions by listing their parts)."
            )
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"parts[{i}] weight must be a number, got {weight!r}.") from None
        if not np.isfinite(w):
            raise InvalidArgumentError(f"parts[{i}] weight must be finite, got {weight!r}.")
        out.append((policy, w))
    check_vocabularies([p for p, _ in out])
    return tuple(out)

