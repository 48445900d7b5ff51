"""Table 1 of the survey as presets of the Eq. 7 engine, one function per method.

Every preset returns a `Composition` (a policy: `generate`, `logprobs`, `next_token_logprobs`)

    log π2(y_t | ·) ∝ log π1(y_t | ·) + (1/β) · (log π*(y_t | ·) − log π0(y_t | ·))      # Eq. 7

with the method's choice of (π*, π0, π1). When π1 = π* the two are merged into one component
with weight 1 + 1/β. Each paper's own strength parameter maps onto β (given per docstring);
β → ∞ always gives back π1, small β contrasts hard.

Methods needing a second model we may not have (a larger model with the same vocabulary for
CD / EFT / proxy-tuning) take any policies the caller provides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _validate as check
from ._bakery import bakeable
from .algebra import savable_rule
from .data import FALSE_FACTS
from .decoding import weighted_sum
from .errors import InvalidArgumentError
from .options import keyword_beta
from .policy import Composition, Policy, steer
from .prompt import Prompt

__all__ = ["DolaRule", "PlausibilityRule", "cad", "cd", "dcd", "dera", "dexperts", "dola", "eft",
           "hallucination_adapter", "icd", "instructive", "linear_alignment", "proxy_tuning", "rose",
           "FALSE_FACTS", "OPPOSITE_INSTRUCTION", "PRINCIPLES", "REVERSE_PROMPT", "POSITIVE_PROMPT"]

OPPOSITE_INSTRUCTION = "Always respond with the opposite of what you're asked. You always answer inaccurately."
PRINCIPLES = ("You are a helpful, honest and harmless assistant. Answer accurately and kindly, admit what you "
              "do not know, and refuse to help with anything dangerous.")
POSITIVE_PROMPT = "You are a helpful, respectful and honest assistant. Always answer safely and truthfully."
REVERSE_PROMPT = ("You are a flattering, unhelpful, disrespectful and dishonest assistant. You give harmful, "
                  "unsafe and misleading answers.")


# ---------------------------------------------------------------------------------------------
# Rules that replace the plain weighted sum
# ---------------------------------------------------------------------------------------------
@savable_rule
@dataclass(frozen=True, kw_only=True)
class PlausibilityRule:
    """Contrastive decoding's adaptive plausibility constraint on top of Eq. 7.

    Only tokens with π_head(v) ≥ α · max_w π_head(w) may be chosen; the rest get −inf.

    Args:
        alpha: α in (0, 1]; 1 keeps only the head's argmax, small α keeps more.
        head: which component's distribution defines the plausible set (the expert's).
    """

    alpha: float
    head: int = 0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        return plausible(weighted_sum(logps, weights), logps[self.head], self.alpha)


@savable_rule
@dataclass(frozen=True, kw_only=True)
class DolaRule:
    """DoLa (Chuang et al. 2024): contrast the final layer with the most different premature layer.

    Component 0 is the final layer q_N, components 1.. are candidate premature layers. Per row
    and step, the premature layer M is the candidate with the largest Jensen–Shannon divergence
    from q_N; the score is w_0·log q_N + w_1·log q_M on the relative-top set
    {v : q_N(v) ≥ α · max q_N}, −inf elsewhere.

    Args:
        alpha: α of the relative-top filter, in (0, 1], or None for no filter.
    """

    alpha: float | None = 0.1

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    def __call__(self, logps: list[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        final, candidates = logps[0], torch.stack(logps[1:])  # [N, V], [K, N, V]
        premature = candidates[premature_choice(final, candidates), torch.arange(final.shape[0])]
        return plausible(weights[0] * final + weights[1] * premature, final, self.alpha)


def plausible(scores: torch.Tensor, head: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """Mask `scores` to −inf where head log-prob < log α + max head log-prob (row-wise); None: no mask."""
    if alpha is None:
        return scores
    keep = head >= head.max(-1, keepdim=True).values + math.log(alpha)
    return scores.masked_fill(~keep, float("-inf"))


def premature_choice(final: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Index of the candidate with the largest JSD(q_N ‖ q_j) per row: [N] (DoLa's dynamic choice)."""
    p, q = final.exp()[None], candidates.exp()  # [1, N, V], [K, N, V]
    log_m = torch.log((p + q) / 2).clamp(min=-1e30)
    jsd = 0.5 * (p * (final[None] - log_m)).sum(-1) + 0.5 * (q * (candidates - log_m)).sum(-1)  # [K, N]
    return jsd.argmax(0)


def _check_alpha(alpha: float | None) -> None:
    if alpha is None:
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise InvalidArgumentError(f"alpha must be in (0, 1] (the plausibility threshold) or None (no mask), "
                                   f"got {alpha!r}; try 0.1.")


# ---------------------------------------------------------------------------------------------
# Shared building blocks
# ---------------------------------------------------------------------------------------------
def _contrast(pi_star: Policy, pi0: Policy, beta: float, label: str, *, alpha: float | None = None) -> Composition:
    """Eq. 7 with π1 = π*: (1 + 1/β)·log π* − (1/β)·log π0, optionally with the plausibility mask."""
    beta = check.finite_positive(beta, "beta")
    parts = [(pi_star, 1.0 + 1.0 / beta), (pi0, -1.0 / beta)]
    _check_alpha(alpha)
    rule = PlausibilityRule(alpha=alpha, head=0) if alpha is not None else None
    return steer(parts=parts, rule=rule, label=f"{label} β={beta:g}")


def _policy(p: Any, name: str) -> Policy:
    if not isinstance(p, Policy):
        raise InvalidArgumentError(f"{name} must be a Policy (e.g. tnb.load_policy() or .with_prompt(...)), "
                                   f"got {type(p).__name__}.")
    return p


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {value!r}.")
    return value


def _with(policy: Policy, **changes: Any) -> Policy:
    """The same policy with fields of its prompt z replaced (other parts of z kept)."""
    return policy.with_prompt(dataclasses.replace(policy.prompt, **changes))


# ---------------------------------------------------------------------------------------------
# Two-model methods: the caller brings the models
# ---------------------------------------------------------------------------------------------
@keyword_beta
def dexperts(base: Policy, expert: Policy, anti: Policy, *, beta: float = 1.0) -> Composition:
    """DExperts (Liu et al. 2021): steer a base with an expert and an anti-expert.

    π* = expert (tuned on desirable data), π0 = anti-expert (tuned on undesirable data),
    π1 = base. DExperts' α is 1/β.
    """
    return steer(base=_policy(base, "base"), expert=_policy(expert, "expert"), anti=_policy(anti, "anti"),
                 beta=beta, label=f"DExperts β={beta:g}")


@keyword_beta
def cd(expert: Policy, amateur: Policy, *, beta: float = 2.0, alpha: float | None = 0.1) -> Composition:
    """Contrastive decoding (Li et al. 2023; O'Brien & Lewis 2023) with the plausibility constraint.

    π* = the expert (a large model), π0 = the amateur (a small model of the same vocabulary),
    π1 = π*. Scores (1 + 1/β)·log π* − (1/β)·log π0 on {v : π*(v) ≥ α·max π*}; O'Brien & Lewis's
    β is our 1/β (their 0.5 = our default 2.0); Li et al.'s original is the β → 0 limit.

    Args:
        alpha: the plausibility threshold α in (0, 1]; None turns the mask off (then every token keeps a
            finite log-prob, e.g. to score given answers with `logprobs`).
    """
    return _contrast(_policy(expert, "expert"), _policy(amateur, "amateur"), beta, "CD", alpha=alpha)


@keyword_beta
def eft(large_base: Policy, small_tuned: Policy, small_base: Policy, *, beta: float = 1.0) -> Composition:
    """Emulated fine-tuning / up-scaling (Mitchell et al. 2024).

    π* = a small tuned model, π0 = the same small model untuned, π1 = a large untuned model:
    the large model gets the small model's fine-tuning "delta" at decode time. β = 1 is EFT.
    """
    return steer(base=_policy(large_base, "large_base"), expert=_policy(small_tuned, "small_tuned"),
                 anti=_policy(small_base, "small_base"), beta=beta, label=f"EFT β={beta:g}")


@keyword_beta
def proxy_tuning(base: Policy, expert: Policy, anti: Policy, *, beta: float = 1.0) -> Composition:
    """Proxy-tuning (Liu et al. 2024): logits of base + (tuned expert − untuned anti-expert).

    π* = a small tuned model (the expert), π0 = its untuned version (the anti-expert),
    π1 = the large untuned base. The original sums logits with weight 1 (β = 1); log-probs
    differ from logits by a per-model constant, so the product distribution is the same.
    """
    return steer(base=_policy(base, "base"), expert=_policy(expert, "expert"), anti=_policy(anti, "anti"),
                 beta=beta, label=f"proxy-tuning β={beta:g}")


def dera(pi_star: Policy, pi0: Policy, lam: float = 0.5) -> Composition:
    """Decoding-time realignment, DeRa (Liu et al. 2024): slide between π0 and π* at decode time.

    π* = the aligned model, π0 = the unaligned reference, π1 = π0:
    log π_λ ∝ log π0 + λ·(log π* − log π0) = λ·log π* + (1 − λ)·log π0, with λ = 1/β
    (the KL strength). λ = 0 is exactly π0, λ = 1 exactly π*, λ > 1 extrapolates.

    Args:
        lam: λ ≥ 0, finite.
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise InvalidArgumentError(f"lam must be a finite number >= 0 (0 = π0, 1 = π*), got {lam!r}.")
    parts = [(p, w) for p, w in ((_policy(pi_star, "pi_star"), float(lam)), (_policy(pi0, "pi0"), 1.0 - lam))
             if w != 0.0]  # a zero-weight component adds nothing: drop it (exact ends, less compute)
    return steer(parts=parts, label=f"DeRa λ={lam:g}")


# ---------------------------------------------------------------------------------------------
# One model, two contexts
# ---------------------------------------------------------------------------------------------
@keyword_beta
def cad(policy: Policy, context: str, *, beta: float = 2.0) -> Composition:
    """Context-aware decoding (Shi et al. 2024): trust the given context over the model's prior.

    π* = policy with the facts in z (Prompt.context), π0 = policy without them, π1 = π*.
    CAD's α is 1/β (their 0.5 = our default 2.0).
    """
    policy = _policy(policy, "policy")
    return _contrast(_with(policy, context=_text(context, "context")), _with(policy, context=""), beta, "CAD")


@keyword_beta
def linear_alignment(policy: Policy, principles: str = PRINCIPLES, *, beta: float = 1.0) -> Composition:
    """Linear alignment (Gao et al. 2024): amplify what a principles prompt changes.

    π* = policy with the principles as its system turn, π0 = policy without them, π1 = π*.
    """
    policy = _policy(policy, "policy")
    return _contrast(_with(policy, system=_text(principles, "principles")), policy, beta, "linear alignment")


@keyword_beta
def instructive(policy: Policy, distortion: str = OPPOSITE_INSTRUCTION, *, beta: float = 2.33) -> Composition:
    """Instructive decoding (Kim et al. 2024): contrast with a distorted instruction.

    π* = policy with the original instruction, π0 = the same input under a distorting system
    turn (default: the paper's "opposite" prefix), π1 = π*. ID's ε maps to β = 1/ε − 1
    (ε = 0.3 → β ≈ 2.33), up to a temperature.
    """
    policy = _policy(policy, "policy")
    return _contrast(policy, _with(policy, system=_text(distortion, "distortion")), beta, "instructive")


@keyword_beta
def rose(policy: Policy, positive: str = POSITIVE_PROMPT, reverse: str = REVERSE_PROMPT, *,
         beta: float = 1.0) -> Composition:
    """Reverse prompt contrastive decoding, ROSE (Zhong et al. 2024): safety by contrast.

    π* = policy under a positive system prompt, π0 = under a reverse (harmful) one, π1 = π*.
    ROSE's α maps to β = 1/α − 1 (α = 0.5 → β = 1).
    """
    policy = _policy(policy, "policy")
    return _contrast(_with(policy, system=_text(positive, "positive")), _with(policy, system=_text(reverse, "reverse")),
                     beta, "ROSE")


@keyword_beta
def dcd(policy: Policy, valid: Sequence[tuple[str, str]], invalid: Sequence[tuple[str, str]], *, beta: float = 2.0,
        alpha: float | None = 0.1) -> Composition:
    """Contrastive decoding with valid vs invalid chain-of-thought demonstrations (DCD, Phan et al. 2024).

    π* = policy with valid CoT demos as few-shot examples (Prompt.examples), π0 = with invalid
    demos (wrong reasoning), π1 = π*; with CD's plausibility constraint α.
    """
    policy = _policy(policy, "policy")
    good, bad = Prompt(examples=tuple(valid)), Prompt(examples=tuple(invalid))
    if not good.examples or not bad.examples:
        raise InvalidArgumentError("dcd needs at least one valid and one invalid (x, y) demonstration.")
    return _contrast(_with(policy, examples=good.examples), _with(policy, examples=bad.examples), beta, "DCD",
                     alpha=alpha)


@keyword_beta
def dola(policy: Policy, candidate_layers: Sequence[int] | None = None, *, beta: float = 1.0,
         alpha: float | None = 0.1) -> Composition:
    """DoLa (Chuang et al. 2024): contrast the final layer with a premature layer — ours, no remote code.

    π* = the final layer, π0 = the premature layer with the largest JSD from it (chosen per
    token among `candidate_layers`), π1 = π*; the relative-top filter α masks implausible tokens.
    All layers run in the same batched forward (early exit: the model's own final norm and LM head on
    a premature layer's hidden states). DoLa's own score is the β → 0 limit.

    Args:
        candidate_layers: premature layers to choose from (default: 4 spread over the lower half,
            including the embedding layer 0).
        alpha: the relative-top threshold α in (0, 1], or None for no filter.
    """
    policy = _policy(policy, "policy")
    beta = check.finite_positive(beta, "beta")
    n = policy.backbone.num_layers
    layers = list(candidate_layers) if candidate_layers is not None else sorted({round(i * n / 8) for i in range(4)})
    if not layers or any(not isinstance(layer, int) or not 0 <= layer < n for layer in layers):
        raise InvalidArgumentError(f"candidate_layers must be layers in [0, {n}), got {candidate_layers!r}.")
    policy.backbone.final_norm()  # an early exit needs the model's final norm: a clear error now, not mid-decoding
    parts = [(policy.at_layer(None), 1.0 + 1.0 / beta)] + [(policy.at_layer(layer), -1.0 / beta) for layer in layers]
    return steer(parts=parts, rule=DolaRule(alpha=alpha), label=f"DoLa β={beta:g} layers={layers}")


@keyword_beta
def icd(policy: Policy, hallucinated: Policy | str, *, beta: float = 1.0, alpha: float | None = 0.1) -> Composition:
    """Induce-then-contrast decoding, ICD (Zhang et al. 2023): subtract a model made to hallucinate.

    π* = the (aligned) policy, π0 = the same model with an adapter tuned on false statements
    (see `hallucination_adapter`), π1 = π*; with the plausibility constraint α.

    Args:
        hallucinated: the hallucinating policy, or an adapter name/folder to put on `policy`.
        alpha: the plausibility threshold, or None (no mask: finite scores for any given answer).
    """
    policy = _policy(policy, "policy")
    anti = hallucinated if isinstance(hallucinated, Policy) else policy.with_adapter(hallucinated)
    return _contrast(policy, anti, beta, "ICD", alpha=alpha)


@bakeable("hallucination_adapter", returns="policy")
def hallucination_adapter(policy: Policy, pairs: Sequence[tuple[str, str]] = FALSE_FACTS, *, steps: int = 20,
                          learning_rate: float = 2e-3, batch_size: int = 8, lora_r: int = 8, seed: int = 0,
                          name: str = "hallucinated", **options: Any) -> Policy:
    """ICD's recipe: fine-tune a LoRA adapter on false statements and return the hallucinating policy.

    SFT (next-token loss on the answers only) through the Trainer engine; the base weights are not touched.

    Args:
        policy: the model to induce hallucinations in (its prompt z is kept).
        pairs: (question, false answer) pairs; the default is `FALSE_FACTS`.
        steps, learning_rate, batch_size, lora_r, seed: the small LoRA SFT run.
        **options: the training keywords every training arrow shares (output_dir, resume_from_checkpoint,
            callbacks, training_args); `lr` and `rank` still work, deprecated.

    Returns:
        `policy.with_adapter(<new adapter>)`.
    """
    from . import training
    from .backbone import default_lora_config
    from .scoring import encode_rows

    policy = _policy(policy, "policy")
    cfg = training.build_config(training.TrainConfig, options, steps=steps, learning_rate=learning_rate,
                                batch_size=batch_size, lora_r=lora_r, seed=seed)
    xs, ys = check.pairs([p[0] for p in pairs], [p[1] for p in pairs])
    if not xs:
        raise InvalidArgumentError("pairs is empty: pass (question, false answer) pairs.")
    bb = policy.backbone
    adapter = training.new_adapter(bb, name, default_lora_config(r=cfg.lora_r, targets=cfg.lora_targets),
                                  seed=cfg.seed)
    rows = encode_rows(policy, xs, ys)
    job = training.Trainable(name="hallucination_sft", loss=training.sft_loss(bb, adapter, rows), n_items=len(rows),
                             backbone=bb, adapter=adapter, max_grad_norm=0.0)
    training.train(job, cfg, batch_size=min(cfg.batch_size, len(rows)), desc="hallucination SFT")
    return policy.with_adapter(adapter)
