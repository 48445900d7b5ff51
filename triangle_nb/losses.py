"""The training losses of arrow 1 (reward ⇒ update) as plain tensor functions, equal to TRL 1.16's.

Eq. 1: max_π E_{x~D, y~π(·|x)} [ r(x,y) ] − β · KL[ π(y|x) ‖ π0(y|x) ]
Eq. 2: π*(y|x) ∝ π0(y|x) · exp(r(x,y)/β)

DPO and KTO fit Eq. 2's implicit reward β log π/π0 to preferences; GRPO and RLOO climb Eq. 1 by policy
gradient with a group baseline. They are functions, not TRL trainers, because our training loop is a
`transformers.Trainer` subclass whose `compute_loss` calls them on one backbone shared by many adapters,
while TRL's trainers own the PeftModel. tests/test_losses.py checks each one against the installed TRL's
own loss code on random tensors.

Shapes: P pairs, N examples, B sequences (B = prompts × G samples for GRPO/RLOO), T completion tokens.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _validate as check
from .errors import InvalidArgumentError
from .options import keyword_beta, keyword_only

STD_EPS = 1e-4  # TRL's ε in A = (r − mean) / (std + ε)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is set, over everything or along `dim` (0 where the mask is empty).

    >>> float(masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([1, 1, 0])))
    1.5
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def _nanstd(x: Tensor, dim: int) -> Tensor:
    """Bessel-corrected std along `dim` ignoring NaNs, kept dim (NaN for < 2 values), as trl's `nanstd`."""
    count = (~x.isnan()).sum(dim, keepdim=True)
    centred = x - x.nanmean(dim, keepdim=True)
    return (centred**2).nansum(dim, keepdim=True).div(count - 1).sqrt()


# -- DPO ----------------------------------------------------------------------------------------------


class DPOLoss(enum.StrEnum):
    """TRL's DPO loss variants (`DPOConfig.loss_type`)."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"


@keyword_only("beta", "loss_type")
def dpo_loss(chosen_logratio: Tensor, rejected_logratio: Tensor, *, beta: float,
             loss_type: DPOLoss | str = DPOLoss.SIGMOID, label_smoothing: float = 0.0,
             chosen_tokens: Tensor | None = None, rejected_tokens: Tensor | None = None) -> Tensor:
    """Per-pair DPO loss [P] from log π/π_ref of y+ and y− (sums over each completion's tokens).

    sigmoid (Eq. 2 ⇒ Bradley–Terry on the implicit reward β log π/π_ref): −log σ(β[Δ+ − Δ−]).

    Args:
        chosen_logratio, rejected_logratio: log π(y|x) − log π_ref(y|x) of y+ and y− [P].
        beta: β of Eq. 1 (IPO's τ).
        loss_type: one of `DPOLoss`.
        label_smoothing: the robust loss's label-flip rate ε in [0, 0.5). As in TRL 1.16 the other
            variants ignore it (TRL 1.16 has no conservative "cDPO" sigmoid).
        chosen_tokens, rejected_tokens: completion lengths [P]; IPO divides the log-ratios by them
            (TRL's per-token averaging, clamped at 1), the other variants ignore them.

    >>> float(dpo_loss(torch.zeros(1), torch.zeros(1), beta=0.1))  # ln 2 at π = π_ref
    0.6931471824645996
    """
    kind = check.choice(loss_type, DPOLoss, "loss_type")
    if kind is DPOLoss.IPO:  # Eq. 17 of the IPO paper on per-token averages: (Δ+ − Δ− − 1/(2τ))²
        delta = _per_token(chosen_logratio, chosen_tokens) - _per_token(rejected_logratio, rejected_tokens)
        return (delta - 1 / (2 * beta)) ** 2
    z = beta * (chosen_logratio - rejected_logratio)
    if kind is DPOLoss.SIGMOID:
        return -F.logsigmoid(z)
    if kind is DPOLoss.HINGE:
        return torch.relu(1 - z)
    eps = label_smoothing  # ROBUST: unbiased under labels flipped with probability ε
    if not 0 <= eps < 0.5:
        raise InvalidArgumentError(f"label_smoothing must be in [0, 0.5) for the robust loss, got {eps!r}.")
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def _per_token(logratio: Tensor, tokens: Tensor | None) -> Tensor:
    return logratio if tokens is None else logratio / tokens.clamp(min=1.0)


# -- KTO ----------------------------------------------------------------------------------------------


def kto_z0(kl_logratio: Tensor) -> Tensor:
    """KTO's reference point z0: the mean log π/π_ref of mismatched (x, y') completions, detached, ≥ 0."""
    return kl_logratio.detach().mean().clamp(min=0)


@keyword_beta
def kto_loss(logratio: Tensor, desirable: Tensor, kl: Tensor, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """Per-example KTO loss [N] (Eq. 7 of the KTO paper; TRL's `loss_type="kto"`).

    desirable: λ_D (1 − σ(β(Δ − z0))); undesirable: λ_U (1 − σ(β(z0 − Δ))), Δ = log π/π_ref.
    TRL's batch loss is the mean of these (over chosen then rejected; the order does not change it).

    Args:
        logratio: log π(y|x) − log π_ref(y|x) per completion [N].
        desirable: bool or 0/1 [N], which completions are desirable.
        kl: z0, e.g. `kto_z0(...)`; detached and clamped at 0 here too (as TRL does).
        beta: β of Eq. 1.
        desirable_weight, undesirable_weight: λ_D and λ_U.
    """
    z0 = kl.detach().clamp(min=0)
    chosen = 1 - torch.sigmoid(beta * (logratio - z0))
    rejected = 1 - torch.sigmoid(beta * (z0 - logratio))
    return torch.where(desirable.bool(), desirable_weight * chosen, undesirable_weight * rejected)


# -- GRPO ---------------------------------------------------------------------------------------------


class GRPOLossType(enum.StrEnum):
    """How GRPO aggregates per-token losses (TRL's `GRPOConfig.loss_type`; TRL 1.16's default is DAPO)."""

    GRPO = "grpo"  # mean over each sequence's tokens, then over sequences (length-biased)
    BNPO = "bnpo"  # mean over the batch's tokens
    DR_GRPO = "dr_grpo"  # token sum / (B · max_completion_length)
    DAPO = "dapo"  # token sum / tokens in the (global) batch


class RewardScale(enum.StrEnum):
    """How GRPO scales centred rewards (TRL's `scale_rewards`; True = "group", False = "none")."""

    GROUP = "group"
    BATCH = "batch"
    NONE = "none"


def per_token_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """The k3 estimator of KL[π‖π_ref] per token: e^(ref−logp) − (ref−logp) − 1 (≥ 0, unbiased under π).

    >>> float(per_token_kl(torch.tensor(-1.0), torch.tensor(-1.0)))
    0.0
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_advantages(rewards: Tensor, *, scale: bool | RewardScale | str = True) -> Tensor:
    """Group-relative advantages [B·G] from rewards [B, G]: (r − group mean) / (std + 1e-4).

    std is Bessel-corrected, over the group ("group", TRL's default) or the whole batch ("batch");
    "none" only centres (Dr. GRPO). NaN rewards (unscorable) are left out of the statistics and get 0.

    >>> grpo_advantages(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    tensor([ 0.0000,  0.0000, -0.7071,  0.7071])
    """
    how = check.choice({True: "group", False: "none"}.get(scale, scale), RewardScale, "scale")
    centred = rewards - rewards.nanmean(1, keepdim=True)
    if how is RewardScale.GROUP:
        centred = centred / (_nanstd(rewards, 1) + STD_EPS)
    elif how is RewardScale.BATCH:
        centred = centred / (_nanstd(rewards.flatten(), 0) + STD_EPS)
    return centred.nan_to_num(0.0).flatten()


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon: float, epsilon_high: float | None) -> Tensor:
    """PPO's −min(ρ·A, clip(ρ, 1−ε, 1+ε_high)·A)."""
    clipped = ratio.clamp(1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    return -torch.min(ratio * advantages, clipped * advantages)


@keyword_only("beta", "loss_type")
def grpo_loss(logp: Tensor, ref_logp: Tensor | None, mask: Tensor, advantages: Tensor, *, beta: float,
              loss_type: GRPOLossType | str = GRPOLossType.DAPO, old_logp: Tensor | None = None,
              epsilon: float = 0.2, epsilon_high: float | None = None, max_completion_length: int | None = None,
              num_items_in_batch: Tensor | float | None = None, bias_correction_kl: bool = True) -> Tensor:
    """GRPO's scalar loss (TRL 1.16's `GRPOTrainer`, token-level importance sampling).

    Per token: −min(ρA, clip(ρ)A) + β·ρ·k3, ρ = exp(logp − old_logp); aggregated per `loss_type`.
    On-policy (old_logp = logp.detach()) ρ = 1 and the policy gradient is −A∇logp.

    Args:
        logp, ref_logp: log π and log π_ref of each completion token [B, T] (ref unused when beta = 0).
        mask: 1 on completion tokens [B, T].
        advantages: one per sequence [B] (`grpo_advantages`).
        beta: KL coefficient β of Eq. 1 (TRL's default 0.0 skips the KL term).
        loss_type: one of `GRPOLossType` (default "dapo", as TRL 1.16).
        old_logp: log π_old of the sampling policy [B, T]; default logp.detach().
        epsilon, epsilon_high: the clip range [1 − ε, 1 + ε_high] (ε_high defaults to ε).
        max_completion_length: dr_grpo's constant (default T = mask.size(1); TRL uses its config's value).
        num_items_in_batch: dapo's divisor (default mask.sum()). TRL divides by the generation batch's token
            count over all processes ÷ processes (× accumulation steps ÷ steps per generation when training).
        bias_correction_kl: multiply k3 by ρ (TRL's `use_bias_correction_kl`, default on): same value
            on-policy, but the KL gradient becomes the unbiased reverse-KL gradient.

    The loss is not divided by gradient-accumulation steps (TRL's trainer does that itself for grpo, bnpo
    and dr_grpo, and through num_items_in_batch for dapo).
    """
    kind = check.choice(loss_type, GRPOLossType, "loss_type")
    ratio = torch.exp(logp - (logp.detach() if old_logp is None else old_logp))  # [B, T]
    per_token = _clipped_surrogate(ratio, advantages.unsqueeze(1), epsilon, epsilon_high)
    if beta != 0.0:
        if ref_logp is None:
            raise InvalidArgumentError(f"grpo_loss with beta={beta!r} needs ref_logp (or use beta=0.0).")
        kl = per_token_kl(logp, ref_logp)
        per_token = per_token + beta * (kl * ratio if bias_correction_kl else kl)
    return _aggregate(per_token, mask.to(per_token.dtype), kind, max_completion_length, num_items_in_batch)


def _aggregate(per_token: Tensor, mask: Tensor, kind: GRPOLossType, max_completion_length: int | None,
               num_items_in_batch: Tensor | float | None) -> Tensor:
    if kind is GRPOLossType.GRPO:
        return masked_mean(per_token, mask, dim=-1).mean()
    if kind is GRPOLossType.BNPO:
        return masked_mean(per_token, mask)
    total = (per_token * mask).sum()
    if kind is GRPOLossType.DR_GRPO:
        return total / (per_token.size(0) * (max_completion_length or mask.size(1)))
    items = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=total.dtype)
    return total / items.clamp(min=1.0)


# -- RLOO ---------------------------------------------------------------------------------------------


@keyword_beta
def rloo_advantages(rewards: Tensor, seq_logratio: Tensor, *, beta: float, normalize: bool = False) -> Tensor:
    """RLOO advantages [B·G] (TRL 1.16's `RLOOTrainer`): KL in the reward, leave-one-out baseline.

    r' = r − β Σ_t (log π_old − log π_ref) (first-order KL per sequence, detached), then
    A_i = r'_i − mean_{j≠i} r'_j  (= (r'_i − mean r') · G/(G−1)). NaN rewards are left out and get 0.

    Args:
        rewards: [B, G], G samples per prompt.
        seq_logratio: Σ_t log π/π_ref of each sample [B, G] (from the sampling policy; detached here).
        beta: KL coefficient β of Eq. 1 (TRL's RLOO default 0.05).
        normalize: standardise the advantages over the batch (TRL's `normalize_advantages`, default off).

    >>> rloo_advantages(torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), beta=0.1)
    tensor([ 0.0000, -1.5000,  1.5000])
    """
    shaped = rewards - beta * seq_logratio.detach()
    count = (~shaped.isnan()).sum(1, keepdim=True)
    baseline = (shaped.nansum(1, keepdim=True) - shaped) / (count - 1)  # mean of the other G − 1
    adv = (shaped - baseline).flatten()
    if normalize:
        adv = (adv - adv.nanmean()) / (_nanstd(adv, 0) + STD_EPS)
    return adv.nan_to_num(0.0)


def rloo_loss(logp: Tensor, mask: Tensor, advantages: Tensor, *, old_logp: Tensor | None = None,
              epsilon: float = 0.2, epsilon_high: float | None = None) -> Tensor:
    """RLOO's scalar loss (TRL 1.16): a sequence-level clipped surrogate, mean over sequences.

    ρ = exp(Σ_t logp − Σ_t old_logp); loss = mean(−min(ρA, clip(ρ)A)). The KL is already in the
    advantages (`rloo_advantages`), so there is no KL term; on-policy the gradient is −A∇Σ_t logp / B.

    Args:
        logp: log π of each completion token [B, T]; mask: 1 on completion tokens [B, T].
        advantages: [B] (`rloo_advantages`).
        old_logp: log π_old per token [B, T]; default logp.detach().
        epsilon, epsilon_high: the clip range [1 − ε, 1 + ε_high] (ε_high defaults to ε).
    """
    mask = mask.to(logp.dtype)
    seq = (logp * mask).sum(1)
    old = seq.detach() if old_logp is None else (old_logp * mask).sum(1)
    return _clipped_surrogate(torch.exp(seq - old), advantages, epsilon, epsilon_high).mean()
