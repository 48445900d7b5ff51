"""Policy algebra over Eq. 7: `w * π`, `a + b`, `a - b`, `union`, `intersection`, reward-guided decoding.

Every expression is a `Composition` over the plain policies it names (its parts): the decoder runs one
batched, KV-cached forward per step for the parts sharing a backbone, and a rule combines their next-token
log-probs.

- Sums of plain policies and of plain-sum compositions stay the flat Eq. 7 sum Σ_i w_i log π_i, so
  `1.5 * pos - 0.5 * neg` is exactly `steer(parts=[(pos, 1.5), (neg, -0.5)])` and `p + pos - neg` exactly
  `steer(base=p, expert=pos, anti=neg, beta=1.0)`.
- A composition with a rule of its own (a preset's plausibility mask, DoLa, a union, reward guidance) enters a
  sum as one `Term`: its normalised log-probs, weighted. A token outside a term's support (−inf) stays outside.
- `union(a, b, ...)` / `intersection(a, b, ...)`: the element-wise max / min of the operands' normalised
  log-probs (model arithmetic's Union and Intersection), normalised again by the decoder.
- `reward_guided(policy, reward, beta, top_k)`: the token-level form of Eq. 2, as in ARGS: at every step the
  policy's top-k tokens are rescored by log π(v) + r(x, y_<t ⊕ v) / β with one batched reward call.

Why our own: language-model-arithmetic has these operators over prompted models, one forward per term per
step; transformers and TRL have no operators over policies. Here they are rules of the one Eq. 7 engine.
Compositions save to a folder (`save_composition`) and load back (`tnb.load(folder, base=pi0)`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _io
from . import _validate as check
from .decoding import Rule, current_context, weighted_sum
from .errors import ArtifactKindError, InvalidArgumentError, ModelLoadError, RewardError, TriangleError
from .policy import MAX_WEIGHT, SAVE, BasePolicy, Composition, Parts, Policy, SumRule, Term, _name, _operand, add, scale
from .rewards import Reward, as_reward
from .soft_prompt import load_prompt_file

__all__ = ["IntersectionRule", "RewardGuidedRule", "SumRule", "Term", "UnionRule", "intersection", "load_composition",
           "reward_guided", "save_composition", "scale", "add", "union"]


# ---------------------------------------------------------------------------------------------
# Rules over terms (slices of a composition's parts)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnionRule:
    """Element-wise max of the terms' normalised log-probs: a token likely under ANY operand stays likely."""

    terms: tuple[Term, ...]

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        return torch.stack([t.logps(logps, weights) for t in self.terms]).max(0).values


@dataclass(frozen=True)
class IntersectionRule:
    """Element-wise min of the terms' normalised log-probs: a token must be likely under EVERY operand."""

    terms: tuple[Term, ...]

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        return torch.stack([t.logps(logps, weights) for t in self.terms]).min(0).values


@dataclass(eq=False)
class RewardGuidedRule:
    """ARGS-style token-level Eq. 2: score(v) = log π(v) + r(x, y_<t ⊕ v) / β on π's top-k tokens, −inf elsewhere.

    Attributes:
        inner: the guided policy's own rule (over the same parts).
        reward: r(x, y), called once per step on rows × top_k candidate texts.
        beta: β > 0; small β follows the reward, large β the policy.
        top_k: how many of π's best tokens are rescored (≥ 1).
        calls / scored: reward calls made and candidates scored so far (the cost).
    """

    inner: Rule
    reward: Reward
    beta: float
    top_k: int
    calls: int = field(default=0, init=False)
    scored: int = field(default=0, init=False)

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        lp = torch.log_softmax(self.inner(logps, weights), dim=-1)
        ctx = current_context()
        if ctx is None or len(ctx.xs) != lp.shape[0]:
            raise InvalidArgumentError("reward-guided decoding scores the response so far: use the policy's generate, "
                                       "logprobs or next_token_logprobs (they pass x and y_<t), not its rule alone.")
        top = lp.topk(min(self.top_k, lp.shape[-1]), dim=-1)
        xs, ys = self._candidates(ctx, top.indices.tolist())
        r = self._rewards(xs, ys).reshape(top.indices.shape)
        bonus = r / self.beta  # float64 here: r / β overflows float32 first
        if not bool(torch.isfinite(bonus.to(lp.dtype)).all()):
            raise RewardError(f"reward_guided: reward {self.reward.name!r} / beta={self.beta:g} overflows (rewards up "
                              f"to {float(r.abs().max()):.3g}): scale the reward down or raise beta (e.g. rewards in "
                              "[-10, 10], beta=0.1).")
        scores = torch.full_like(lp, float("-inf"))
        return scores.scatter(-1, top.indices, top.values + bonus.to(lp.device, lp.dtype))

    @staticmethod
    def _candidates(ctx: Any, candidates: list[list[int]]) -> tuple[list[str], list[str]]:
        """(x, y_<t ⊕ v) for every row and candidate v, row-major."""
        xs, ys = [], []
        for x, prefix, row in zip(ctx.xs, ctx.prefixes, candidates, strict=True):
            for v in row:
                xs.append(x)
                ys.append(ctx.tokenizer.decode([*prefix, v], skip_special_tokens=True).strip())
        return xs, ys

    def _rewards(self, xs: list[str], ys: list[str]) -> torch.Tensor:
        """One batched reward call; a wrong shape or a non-finite value is a RewardError naming the candidate."""
        self.calls, self.scored = self.calls + 1, self.scored + len(ys)
        name = self.reward.name
        try:
            raw = self.reward.score(xs, ys)  # validated here, so the error can name the candidate text
        except RewardError:
            raise
        except Exception as exc:
            raise RewardError(f"reward_guided: reward {name!r} raised {type(exc).__name__}: {exc}") from exc
        if hasattr(raw, "detach") and hasattr(raw, "cpu"):
            raw = raw.detach().cpu()
        try:
            r = np.asarray(raw, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            r = np.zeros(0)
        if r.shape != (len(ys),):
            raise RewardError(f"reward_guided: reward {name!r} must return one number per candidate: expected "
                              f"shape ({len(ys)},) (rows × top_k candidates), got {getattr(raw, 'shape', type(raw).__name__)}.")
        bad = np.flatnonzero(~np.isfinite(r))
        if len(bad):
            i = int(bad[0])
            raise RewardError(f"reward_guided: reward {name!r} returned {r[i]} for item {i} (x={xs[i]!r}, "
                              f"y={ys[i]!r}): make it return finite numbers.")
        return torch.from_numpy(r)


# ---------------------------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------------------------


def _extreme(policies: Sequence[BasePolicy], rule_type: type[UnionRule] | type[IntersectionRule],
             what: str) -> Composition:
    if len(policies) < 2:
        raise InvalidArgumentError(f"{what} needs at least two policies, got {len(policies)}: the {what} of one "
                                   f"policy is that policy (use it directly).")
    parts: Parts = ()
    terms = []
    for i, p in enumerate(policies):
        pp, rule = _operand(p, f"{what}'s policies[{i}]")
        terms.append(Term(len(parts), len(parts) + len(pp), rule))
        parts = parts + pp
    return Composition(parts=parts, combine=rule_type(tuple(terms)),
                       label=f"{what}({', '.join(_name(p) for p in policies)})")


def union(*policies: BasePolicy) -> Composition:
    """The union of policies: element-wise max of their normalised log-probs, renormalised.

    A token is likely if ANY operand finds it likely (model arithmetic's `Union`).

    >>> both = tnb.union(pi0.with_prompt("Talk like a pirate."), pi0.with_prompt("Talk like a poet."))  # doctest: +SKIP
    """
    return _extreme(policies, UnionRule, "union")


def intersection(*policies: BasePolicy) -> Composition:
    """The intersection of policies: element-wise min of their normalised log-probs, renormalised.

    A token is likely only if EVERY operand finds it likely (model arithmetic's `Intersection`).
    """
    return _extreme(policies, IntersectionRule, "intersection")


def reward_guided(policy: BasePolicy, reward: Reward | Any, *, beta: float = 0.1, top_k: int = 8) -> Composition:
    """Reward-guided decoding (the token-level form of Eq. 2, as in ARGS): itself a policy.

    At each step π's top-k tokens v are rescored by log π(v | x, y_<t) + r(x, y_<t ⊕ v) / β (one batched reward
    call for all rows and candidates); the other tokens are ruled out. Greedy decoding of it is ARGS-greedy.

    Args:
        policy: π, a Policy or a Composition.
        reward: r(x, y): a Reward or a function (see `tnb.rewards.as_reward`).
        beta: β > 0; small β follows the reward, large β gives back π's top-k.
        top_k: candidates rescored per step (≥ 1); the cost is top_k reward evaluations per row and step.

    >>> cheerful = tnb.reward_guided(pi0, tnb.rewards.Sentiment(), beta=0.1, top_k=8)  # doctest: +SKIP
    """
    parts, rule = _operand(policy, "policy")
    beta = check.finite_positive(beta, "beta")
    check.top_k(top_k)
    guided = RewardGuidedRule(inner=rule, reward=as_reward(reward), beta=beta, top_k=top_k)
    return Composition(parts=parts, combine=guided, label=f"reward-guided({_name(policy)}, β={beta:g}, k={top_k})")


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------
RULES: dict[str, type] = {}  # the rules a composition.json may name; presets adds its own (`savable_rule`) on import


def savable_rule(cls: type) -> type:
    """Register a dataclass rule under its class name, so compositions using it save and load."""
    RULES[cls.__name__] = cls
    return cls


for _rule in (SumRule, UnionRule, IntersectionRule, RewardGuidedRule):
    savable_rule(_rule)


def _rule_to_json(rule: Rule, folder: Path, counter: list[int]) -> dict[str, Any]:
    if rule is weighted_sum:
        return {"rule": "sum"}
    name = type(rule).__name__
    if name not in RULES or not is_dataclass(rule):
        raise InvalidArgumentError(f"this composition's rule {rule!r} cannot be saved (known rules: the weighted sum, "
                                   f"{sorted(RULES)}); rebuild it in Python instead.")
    out: dict[str, Any] = {"rule": name}
    for f in fields(rule):
        if f.init:
            out[f.name] = _value_to_json(getattr(rule, f.name), folder, counter)
    return out


def _value_to_json(value: Any, folder: Path, counter: list[int]) -> Any:
    if isinstance(value, Term):
        return {"term": [value.start, value.stop], "weight": value.weight, "of": _rule_to_json(value.rule, folder, counter)}
    if isinstance(value, tuple):
        return [_value_to_json(v, folder, counter) for v in value]
    if isinstance(value, Reward):
        counter[0] += 1
        path = folder / f"reward_{counter[0]}.json"
        value.save(path)
        return {"reward": path.name}
    if callable(value):
        return _rule_to_json(value, folder, counter)
    return value


def _rule_from_json(data: object, folder: Path, depth: int = 0) -> Rule:
    if not isinstance(data, dict) or depth > _MAX_DEPTH:
        raise _malformed(folder, f"a rule must be an object nested at most {_MAX_DEPTH} deep")
    name = data.get("rule")
    if name == "sum":
        return weighted_sum
    classes = RULES
    if name not in classes:
        raise ArtifactKindError(f"{str(folder)!r}: unknown composition rule {name!r}; known: sum, {sorted(classes)}.")
    known = {f.name for f in fields(classes[name]) if f.init}
    if set(data) - known - {"rule"}:
        raise _malformed(folder, f"rule {name!r} has unknown fields {sorted(set(data) - known - {'rule'})}")
    kwargs = {k: _value_from_json(v, folder, depth + 1) for k, v in data.items() if k != "rule"}
    return classes[name](**kwargs)


_MAX_DEPTH = 32  # rules nest a few levels; a deeper file is hand-made


def _value_from_json(value: Any, folder: Path, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _malformed(folder, f"values nested more than {_MAX_DEPTH} deep")
    if isinstance(value, list):
        return tuple(_value_from_json(v, folder, depth + 1) for v in value)
    if isinstance(value, dict) and "term" in value:
        start, stop = value["term"]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in (start, stop)) or start >= stop:
            raise _malformed(folder, f"term {value['term']!r} is not a [start, stop) range of parts")
        return Term(start, stop, _rule_from_json(value["of"], folder, depth + 1), _json_number(value["weight"], folder))
    if isinstance(value, dict) and "reward" in value:
        from .rewards import load_reward

        return load_reward(_io.inside(folder, value["reward"], "reward"))
    if isinstance(value, dict) and "rule" in value:
        return _rule_from_json(value, folder, depth + 1)
    if isinstance(value, dict):
        raise _malformed(folder, f"an unknown value {str(value)[:60]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _malformed(folder, f"a non-finite number {value!r}")
    return value


def _json_number(value: object, folder: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or abs(value) > MAX_WEIGHT:
        raise _malformed(folder, f"weight {value!r} is not a finite number of size <= {MAX_WEIGHT:g}")
    return float(value)


def _malformed(folder: Path, what: str) -> ModelLoadError:
    return ModelLoadError(f"{str(folder)!r}: composition.json is malformed ({what}): it was edited by hand or "
                          "damaged; save the composition again (policy.save(dir)).")


def save_composition(policy: BasePolicy, folder: str | os.PathLike[str]) -> Path:
    """Write a composition (or a plain policy) to `folder` atomically: each part's prompt (JSON), adapter
    (safetensors, once per adapter), exit layer and weight, and the rule. `tnb.load(folder, base=pi0)` reads it."""
    parts, rule = _operand(policy, "policy")
    backbones = {id(p.backbone) for p, _ in parts}
    if len(backbones) > 1:
        raise InvalidArgumentError("save: this composition's parts live on several base models; one folder holds one "
                                   "base's adapters. Save a composition over one base (tnb.load(dir, base=...)).")
    folder = Path(folder)
    with _io.atomic_dir(folder) as tmp:
        saved: dict[str, str] = {}
        entries = []
        for i, (p, w) in enumerate(parts):
            p.prompt.save(tmp / f"prompt_{i}.json")
            if p.adapter is not None and p.adapter not in saved:
                saved[p.adapter] = f"adapters/{len(saved)}"
                p.backbone.save_adapter(p.adapter, tmp / saved[p.adapter])
            entries.append({"weight": w, "prompt": f"prompt_{i}.json", "exit_layer": p.exit_layer,
                            "adapter": saved.get(p.adapter) if p.adapter is not None else None})
        label = policy.label if isinstance(policy, Composition) else policy.name
        _io.write_json(tmp / "composition.json", {"kind": "composition", "label": label, "parts": entries,
                                                  "rule": _rule_to_json(rule, tmp, [0])})
    return folder


def load_composition(folder: str | os.PathLike[str], base: Policy | None = None) -> Composition:
    """A composition saved by `save_composition`, rebuilt on `base` (the model its adapters were trained for).

    Every path in composition.json is confined to `folder` (`_io.inside`), every adapter goes through the loading
    gate, and a failed load leaves no adapter of it on `base`'s backbone.
    """
    folder = Path(folder)
    if not isinstance(base, Policy):
        raise InvalidArgumentError(f"base must be the Policy the composition was built on (tnb.load_policy()), "
                                   f"got {type(base).__name__}: tnb.load(folder, base=pi0).")
    meta = _io.read_json(folder / "composition.json")
    if not isinstance(meta, dict) or meta.get("kind") != "composition":
        kind = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
        raise ArtifactKindError(f"{str(folder)!r} holds kind={kind!r}, not a saved composition.")
    with base.backbone.recording() as made:
        try:
            return _build_composition(folder, meta, base)
        except TriangleError:
            base.backbone.release(made)  # no adapter of a refused composition stays registered
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as exc:
            base.backbone.release(made)
            raise _malformed(folder, f"{type(exc).__name__}: {str(exc)[:120]}") from exc
        except BaseException:
            base.backbone.release(made)
            raise


def _build_composition(folder: Path, meta: dict[str, Any], base: Policy) -> Composition:
    entries, label = meta.get("parts"), meta.get("label", "")
    if not isinstance(entries, list) or not entries or not isinstance(label, str):
        raise _malformed(folder, "'parts' must be a non-empty list and 'label' a string")
    loaded: dict[str, Policy] = {}
    parts = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"weight", "prompt", "exit_layer", "adapter"}:
            raise _malformed(folder, f"part {i} must have exactly weight, prompt, exit_layer and adapter")
        p = base.without_adapter().with_prompt(_load_prompt(folder, entry["prompt"], base))
        if entry["adapter"] is not None:
            path = _io.inside_adapter(folder, entry["adapter"], f"parts[{i}].adapter")
            if not (path / "adapter_config.json").is_file():
                raise ModelLoadError(f"{str(folder)!r}: part {i}'s adapter folder {entry['adapter']!r} is missing or "
                                     "incomplete (no adapter_config.json): save the composition again.")
            if entry["adapter"] not in loaded:
                loaded[entry["adapter"]] = base.with_adapter(path, name=base.backbone.unique_adapter_name("composition"))
            p = p.with_adapter(loaded[entry["adapter"]].adapter)
        layer = entry["exit_layer"]
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise _malformed(folder, f"part {i}'s exit_layer {layer!r} is not an integer")
        parts.append((p.at_layer(layer), _json_number(entry["weight"], folder)))
    return Composition(parts=tuple(parts), combine=_rule_from_json(meta.get("rule"), folder), label=label)


def _load_prompt(folder: Path, relative: object, base: Policy) -> Any:
    path = _io.inside(folder, relative, "prompt")
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r}: the prompt file {relative!r} is missing: save the composition again.")
    return load_prompt_file(path, base)


SAVE.append(save_composition)  # Policy.save writes through it (policy.py)
