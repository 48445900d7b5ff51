"""triangle_nb.losses equals the installed TRL's own loss code on random tensors (no model is loaded).

Each TRL trainer is built bare (`object.__new__`) with the attributes its loss method reads; its model
forward is a fake that returns our fixed per-token log-probs, so the numbers come from TRL's real
`_compute_loss` (and, for the advantages, its real `_generate_and_score_completions`). Values and gradients
w.r.t. the per-token log-probs are compared in float64.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.testing import assert_close
from trl.trainer import grpo_trainer, rloo_trainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.kto_trainer import KTOTrainer
from trl.trainer.rloo_trainer import RLOOTrainer

from triangle_nb.errors import InvalidArgumentError
from triangle_nb.losses import (
    DPOLoss,
    GRPOLossType,
    dpo_loss,
    grpo_advantages,
    grpo_loss,
    kto_loss,
    kto_z0,
    masked_mean,
    per_token_kl,
    rloo_advantages,
    rloo_loss,
)

DT = torch.float64
SHAPES = [(1, 1), (3, 5), (8, 17)]  # (rows, completion tokens)


# -- fakes: a single-process accelerator, a model that returns fixed log-probs, a bare trainer ---------


class _Accelerator:
    device = torch.device("cpu")
    process_index = 0
    sync_gradients = True

    def __init__(self, num_processes: int = 1) -> None:
        self.num_processes = num_processes

    def gather(self, x: Any) -> Any:
        return x

    gather_for_metrics = gather

    def reduce(self, x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x

    def unwrap_model(self, model: Any) -> Any:
        return model


class _FusedHeadModel:
    """Stands in for TRL's `model(..., fused_lm_head=True)`: per-token log-probs chosen by input width.

    Pass them masked (TRL's fused head gives 0, without gradient, off the completion).
    """

    training = True
    is_gradient_checkpointing = False

    def __init__(self, *log_probs: torch.Tensor) -> None:
        self.by_width = {lp.size(1) + 1: lp for lp in log_probs}  # log_probs are shifted: one fewer column

    def __call__(self, *, input_ids: torch.Tensor, **_: Any) -> SimpleNamespace:
        lp = self.by_width[input_ids.size(1)]
        zeros = torch.zeros(lp.shape, dtype=DT)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _bare(cls: type, model: Any = None, num_processes: int = 1, **attrs: Any) -> Any:
    """A TRL trainer without its __init__: only the attributes its loss code reads."""
    trainer = object.__new__(cls)
    base = {"accelerator": _Accelerator(num_processes), "model": model or _FusedHeadModel(),
            "_metrics": defaultdict(lambda: defaultdict(list)), "_total_train_tokens": 0, "_tp_size": 1,
            "aux_loss_enabled": False, "current_gradient_accumulation_steps": 1}
    vars(trainer).update(base | attrs)
    return trainer


def _tokens(rows: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random per-token log-probs [rows, t] (0 off the mask, as TRL's fused head gives) and an int mask."""
    mask = (torch.rand(rows, t, generator=gen) < 0.8).long()
    if t > 1:  # non-empty rows; with one token a row may be empty (IPO's clamp at 1)
        mask[:, 0] = 1
    logp = -3 * torch.rand(rows, t, generator=gen, dtype=DT)
    return logp * mask, mask


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


# -- DPO ----------------------------------------------------------------------------------------------


def _trl_dpo(kind: str, beta: float, eps: float, logp: torch.Tensor, mask: torch.Tensor,
             ref: torch.Tensor) -> torch.Tensor:
    """TRL's DPO loss (mean over pairs) for rows [chosen..., rejected...]."""
    trainer = _bare(DPOTrainer, _FusedHeadModel(logp * mask), beta=beta, label_smoothing=eps, loss_types=[kind],
                    loss_weights=[1.0], f_divergence_type="reverse_kl", ld_alpha=None, precompute_ref_logps=True,
                    use_weighting=False)
    completion_mask = torch.cat([torch.zeros_like(mask[:, :1]), mask], 1)  # position 0 is the prompt
    p = logp.size(0) // 2
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:p], "ref_rejected_logps": ref[p:]}
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)


def _our_dpo(kind: str, beta: float, eps: float, logp: torch.Tensor, mask: torch.Tensor,
             ref: torch.Tensor) -> torch.Tensor:
    ratio, tokens = (logp * mask).sum(1) - ref, mask.sum(1)
    (c, r), (nc, nr) = ratio.chunk(2), tokens.chunk(2)
    return dpo_loss(c, r, beta=beta, loss_type=kind, label_smoothing=eps, chosen_tokens=nc, rejected_tokens=nr)


@pytest.mark.parametrize("kind", list(DPOLoss))
@pytest.mark.parametrize(("pairs", "t"), SHAPES)
@pytest.mark.parametrize(("beta", "eps"), [(0.1, 0.0), (0.5, 0.2)])
def test_dpo_loss_equals_trl(kind: DPOLoss, pairs: int, t: int, beta: float, eps: float) -> None:
    gen = torch.Generator().manual_seed(pairs * 100 + t)
    logp, mask = _tokens(2 * pairs, t, gen)
    ref = (logp * mask).sum(1) + 2 * torch.randn(2 * pairs, generator=gen, dtype=DT)  # log-ratios of a few nats
    ours_lp, trl_lp = _leaf(logp), _leaf(logp)
    ours = _our_dpo(kind, beta, eps, ours_lp, mask, ref)
    for i in range(pairs):  # per pair: TRL on the one pair
        rows = [i, pairs + i]
        assert_close(ours[i], _trl_dpo(kind.value, beta, eps, logp[rows], mask[rows], ref[rows]))
    ours.mean().backward()
    _trl_dpo(kind.value, beta, eps, trl_lp, mask, ref).backward()
    assert_close(ours_lp.grad, trl_lp.grad)


def test_dpo_at_reference_and_bad_smoothing() -> None:
    zero = torch.zeros(3)
    assert_close(dpo_loss(zero, zero, beta=0.1), torch.full((3,), 0.6931471805599453))
    assert_close(dpo_loss(zero, zero, beta=0.1, loss_type="ipo"), torch.full((3,), 25.0))  # (1/(2β))²
    with pytest.raises(InvalidArgumentError, match="label_smoothing"):
        dpo_loss(zero, zero, beta=0.1, loss_type=DPOLoss.ROBUST, label_smoothing=0.5)
    with pytest.raises(InvalidArgumentError, match="loss_type"):
        dpo_loss(zero, zero, beta=0.1, loss_type="cdpo")


# -- KTO ----------------------------------------------------------------------------------------------


def _trl_kto(beta: float, weights: tuple[float, float], logp: torch.Tensor, mask: torch.Tensor,
             ref: torch.Tensor, label: torch.Tensor, kl_logp: torch.Tensor, kl_ref: torch.Tensor) -> torch.Tensor:
    """TRL's KTO loss (mean over examples); the mismatched (x, y') batch gives z0."""
    trainer = _bare(KTOTrainer, _FusedHeadModel(logp * mask, kl_logp), beta=beta, loss_type="kto", calculate_KL=True,
                    precompute_ref_logps=True, desirable_weight=weights[0], undesirable_weight=weights[1])
    pad = torch.zeros_like(mask[:, :1])
    completion_mask, kl_width = torch.cat([pad, mask], 1), kl_logp.size(1) + 1
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "label": label, "ref_logps": ref, "ref_KL_logps": kl_ref,
              "KL_input_ids": torch.zeros(len(kl_ref), kl_width, dtype=torch.long),
              "KL_attention_mask": torch.ones(len(kl_ref), kl_width, dtype=torch.long),
              "KL_completion_mask": torch.ones(len(kl_ref), kl_width, dtype=torch.long)}
    return trainer._compute_loss(trainer.model, inputs, return_outputs=False)


@pytest.mark.parametrize(("n", "t"), SHAPES)
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
@pytest.mark.parametrize("kl_shift", [-3.0, 1.0])  # z0 clamped to 0, and positive
def test_kto_loss_equals_trl(n: int, t: int, weights: tuple[float, float], kl_shift: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + t)
    beta = 0.3
    logp, mask = _tokens(n, t, gen)
    ref = (logp * mask).sum(1) + 2 * torch.randn(n, generator=gen, dtype=DT)
    label = torch.rand(n, generator=gen) < 0.5
    kl_logp = -torch.rand(n, t + 2, generator=gen, dtype=DT)  # another width: the fake tells the batches apart
    kl_ref = kl_logp.sum(1) - kl_shift + 0.1 * torch.randn(n, generator=gen, dtype=DT)
    kl = (kl_logp.sum(1) - kl_ref).mean()  # unclamped: kto_loss clamps it at 0 as TRL does
    ours_lp, trl_lp = _leaf(logp), _leaf(logp)
    ours = kto_loss((ours_lp * mask).sum(1) - ref, label, kl, beta=beta, desirable_weight=weights[0],
                    undesirable_weight=weights[1])
    for i in range(n):
        one = [i]
        trl_i = _trl_kto(beta, weights, logp[one], mask[one], ref[one], label[one], kl_logp, kl_ref)
        assert_close(ours[i], trl_i)
    ours.mean().backward()
    _trl_kto(beta, weights, trl_lp, mask, ref, label, kl_logp, kl_ref).backward()
    assert_close(ours_lp.grad, trl_lp.grad)


def test_kto_z0_is_detached_and_clamped() -> None:
    x = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert float(kto_z0(x)) == 0.0 and not kto_z0(x).requires_grad
    assert float(kto_z0(torch.tensor([1.0, 2.0]))) == 1.5


# -- GRPO ---------------------------------------------------------------------------------------------


def _trl_grpo(kind: str, beta: float, logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor,
              ref: torch.Tensor, old: torch.Tensor | None, *, epsilon: float = 0.2, max_len: int = 40,
              num_items: torch.Tensor | None = None, processes: int = 1) -> torch.Tensor:
    """TRL's GRPOTrainer._compute_loss with the model forward replaced by our per-token log-probs."""
    args = SimpleNamespace(use_bias_correction_kl=True, delta=None, steps_per_generation=1)
    trainer = _bare(GRPOTrainer, num_processes=processes, args=args, beta=beta, loss_type=kind,
                    epsilon_low=epsilon, epsilon_high=epsilon, max_completion_length=max_len,
                    importance_sampling_level="token", top_entropy_quantile=1.0, off_policy_mask_threshold=None,
                    use_vllm=False, vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    b = logp.size(0)
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
              "num_items_in_batch": mask.sum() if num_items is None else num_items, "ref_per_token_logps": ref}
    if old is not None:
        inputs["old_per_token_logps"] = old
    return trainer._compute_loss(trainer.model, inputs)


def _grpo_case(b: int, t: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    logp, mask = _tokens(b, t, gen)
    ref = logp + 0.5 * torch.randn(b, t, generator=gen, dtype=DT)
    old = logp + 0.3 * torch.randn(b, t, generator=gen, dtype=DT)  # ratios well outside [0.8, 1.2]: clipping acts
    adv = torch.randn(b, generator=gen, dtype=DT)
    return logp, mask, ref, old, adv


@pytest.mark.parametrize("kind", list(GRPOLossType))
@pytest.mark.parametrize(("b", "t"), SHAPES)
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("on_policy", [True, False])
def test_grpo_loss_equals_trl(kind: GRPOLossType, b: int, t: int, beta: float, on_policy: bool) -> None:
    logp, mask, ref, old, adv = _grpo_case(b, t, seed=b * 100 + t)
    old = None if on_policy else old
    ours_lp, trl_lp = _leaf(logp), _leaf(logp)
    ours = grpo_loss(ours_lp, ref, mask, adv, beta=beta, loss_type=kind, old_logp=old, max_completion_length=40)
    trl = _trl_grpo(kind.value, beta, trl_lp, mask, adv, ref, old)
    assert_close(ours, trl)
    ours.backward()
    trl.backward()
    assert_close(ours_lp.grad, trl_lp.grad)


def test_grpo_dapo_global_token_count() -> None:
    """Two processes: TRL divides by the global count / 2; our caller passes that divisor."""
    logp, mask, ref, old, adv = _grpo_case(4, 6, seed=7)
    global_tokens = mask.sum() * 2 + 3
    trl = _trl_grpo("dapo", 0.04, logp, mask, adv, ref, old, num_items=global_tokens, processes=2)
    assert_close(grpo_loss(logp, ref, mask, adv, beta=0.04, old_logp=old, num_items_in_batch=global_tokens / 2), trl)


def test_grpo_defaults_and_on_policy_gradient() -> None:
    """Default loss_type is TRL's ("dapo"); on-policy with β = 0 the gradient is −A/|tokens| per token."""
    params, trl_defaults = inspect.signature(grpo_loss).parameters, {f.name: f.default for f in fields(GRPOConfig)}
    assert params["loss_type"].default == trl_defaults["loss_type"] == "dapo"
    assert params["epsilon"].default == trl_defaults["epsilon"]
    assert params["bias_correction_kl"].default == trl_defaults["use_bias_correction_kl"]
    logp, mask, _, _, adv = _grpo_case(3, 5, seed=1)
    lp = _leaf(logp)
    grpo_loss(lp, None, mask, adv, beta=0.0).backward()
    assert_close(lp.grad, -adv[:, None] * mask / mask.sum())
    assert_close(per_token_kl(logp, logp), torch.zeros_like(logp))
    with pytest.raises(InvalidArgumentError, match="ref_logp"):
        grpo_loss(logp, None, mask, adv, beta=0.1)
    assert_close(masked_mean(logp, mask), (logp * mask).sum() / mask.sum())


# -- advantages: TRL's real _generate_and_score_completions, with generation and rewards faked ----------


def _score(cls: type, module: Any, monkeypatch: pytest.MonkeyPatch, rewards: torch.Tensor,
           per_token: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor, **attrs: Any) -> torch.Tensor:
    """Run TRL's `_generate_and_score_completions` on prompts whose completions, log-probs and rewards are given.

    per_token: (log π_old, log π_ref) [B·G, T]; the fake forward returns the first for the trained model.
    """
    n = mask.size(0)
    monkeypatch.setattr(module, "gather", lambda x: x)
    monkeypatch.setattr(module, "gather_object", lambda x: x)
    args = SimpleNamespace(per_device_train_batch_size=n, gradient_checkpointing_kwargs=None, steps_per_generation=1,
                           gradient_accumulation_steps=1)
    ref_model = object()
    trainer = _bare(cls, args=args, ref_model=ref_model, num_generations=rewards.size(1), pad_to_multiple_of=None,
                    mask_truncated_completions=False, _tokenizer=SimpleNamespace(pad_token_id=0),
                    reward_weights=torch.ones(1, dtype=DT), reward_func_names=["r"], log_multimodal=False,
                    _pending_extra_logs={}, _pending_metrics={}, use_vllm=False, num_iterations=1,
                    _logs={"prompt": [], "completion": [], "advantages": [], "rewards": defaultdict(list),
                           "extra": defaultdict(list)}, **attrs)
    prompt_ids, completion_ids, texts = [[5]] * n, [[1] * int(k) for k in mask.sum(1)], ["y"] * n
    if cls is RLOOTrainer:
        trainer._generate = lambda prompts: (prompt_ids, completion_ids, texts)
    else:  # no tool mask, vLLM log-probs, extra fields or images
        trainer._generate = lambda prompts: (prompt_ids, completion_ids, None, texts, None, {}, None, None)

    def forward(model: Any, *_: Any, **__: Any) -> tuple[torch.Tensor, None, None]:
        return per_token[1] if model is ref_model else per_token[0], None, None

    trainer._get_per_token_logps_and_entropies = forward
    trainer._calculate_rewards = lambda *a: rewards.reshape(-1, 1)
    return trainer._generate_and_score_completions([{"prompt": "x"}] * n)["advantages"]


def _rewards_case(b: int, g: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, g, generator=gen, dtype=DT)
    rewards[0] = rewards[0, :1]  # a group with zero spread
    if b > 1:
        rewards[-1, -1] = float("nan")  # an unscorable completion: left out of its group, advantage 0
    lengths = torch.randint(1, 6, (b * g,), generator=gen)
    lengths[-1] = 5  # TRL pads the completions to the longest one
    mask = (torch.arange(5)[None] < lengths[:, None]).long()  # right-padded, as TRL pads completions
    old = -torch.rand(b * g, 5, generator=gen, dtype=DT) * mask
    ref = (old + 0.4 * torch.randn(b * g, 5, generator=gen, dtype=DT)) * mask
    return rewards, mask, old, ref


@pytest.mark.parametrize(("b", "g"), [(1, 2), (3, 4), (5, 8)])
@pytest.mark.parametrize("scale", [True, False, "batch"])
def test_grpo_advantages_equal_trl(b: int, g: int, scale: bool | str, monkeypatch: pytest.MonkeyPatch) -> None:
    rewards, mask, old, ref = _rewards_case(b, g, seed=b * 10 + g)
    trl = _score(GRPOTrainer, grpo_trainer, monkeypatch, rewards, (old, ref), mask, beta=0.0,
                 environment_factories=None, environments=None, tools=None,
                 multi_objective_aggregation="sum_then_normalize",
                 scale_rewards={True: "group", False: "none"}.get(scale, scale))  # as GRPOConfig maps bools
    assert_close(grpo_advantages(rewards, scale=scale), trl)


@pytest.mark.parametrize(("b", "g"), [(1, 2), (3, 4), (5, 8)])
@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_equal_trl(b: int, g: int, normalize: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rewards, mask, old, ref = _rewards_case(b, g, seed=b * 10 + g)
    beta = 0.05
    trl = _score(RLOOTrainer, rloo_trainer, monkeypatch, rewards, (old, ref), mask, beta=beta,
                 reward_clip_range=None, normalize_advantages=normalize)
    seq_logratio = ((old - ref) * mask).sum(1).view(b, g)
    assert_close(rloo_advantages(rewards, seq_logratio, beta=beta, normalize=normalize), trl)


def test_rloo_baseline_is_leave_one_out() -> None:
    r = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    others = torch.stack([torch.cat([r[0, :i], r[0, i + 1:]]).mean() for i in range(4)])
    assert_close(rloo_advantages(r, torch.zeros_like(r), beta=0.1), r[0] - others)
    assert_close(rloo_advantages(r, torch.zeros_like(r), beta=0.1), (r[0] - r.mean()) * 4 / 3)


# -- RLOO loss ------------------------------------------------------------------------------------------


def _trl_rloo(logp: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor, old: torch.Tensor,
              epsilon: float = 0.2) -> torch.Tensor:
    trainer = _bare(RLOOTrainer, epsilon_low=epsilon, epsilon_high=epsilon)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    b = logp.size(0)
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": adv,
              "old_logps": (old * mask).sum(1)}
    return trainer._compute_loss(trainer.model, inputs)


@pytest.mark.parametrize(("b", "t"), SHAPES)
@pytest.mark.parametrize("on_policy", [True, False])
def test_rloo_loss_equals_trl(b: int, t: int, on_policy: bool) -> None:
    logp, mask, _, old, adv = _grpo_case(b, t, seed=b * 100 + t + 1)
    old_trl = logp if on_policy else old  # TRL's old_logps: a no-grad forward, equal to logp on-policy
    ours_lp, trl_lp = _leaf(logp), _leaf(logp)
    ours = rloo_loss(ours_lp, mask, adv, old_logp=None if on_policy else old)
    trl = _trl_rloo(trl_lp, mask, adv, old_trl.detach())
    assert_close(ours, trl)
    ours.backward()
    trl.backward()
    assert_close(ours_lp.grad, trl_lp.grad)
