"""Arrow 1 — reward model ⇒ parameter update (survey §2).

Eq. 1: max_π E_{x~D, y~π(·|x)} [ r(x,y) ] − β · KL[ π(y|x) ‖ π0(y|x) ]
Eq. 2: π*(y|x) = π0(y|x) · exp(r(x,y)/β) / Z(x)

`reward_to_update(pi0, reward, inputs, method=...)` returns π* as the base plus a NEW LoRA adapter
(the base weights stay bit-identical). Methods:

- `best_of_n`: sample N from π0, keep the best (Eq. 2 at inference time; no training) — `BestOfN`.
- `rejection_sft`: the best-of-N samples become SFT data.
- `dpo` (loss variants sigmoid, ipo, hinge, robust) and `kto`: preference data from the reward (the
  best vs the worst of N samples per input); the reference is the input policy (for a plain π0, the
  base with adapters disabled — no second copy of the model).
- `grpo` / `rloo`: on-policy RL with the reward as a plain Python function, KL to the reference.

Training runs on `transformers.Trainer` through `triangle_nb.training` (schedule, accumulation, mixed
precision, checkpoints, exact resume, `accelerate launch` / `torchrun` across processes); this module keeps the
data (sampled pairs, groups, or a `preferences=` dataset in TRL's format) and the losses (`triangle_nb.losses`,
TRL's formulas, checked against TRL). TRL's own trainers assume they own the PeftModel (an adapter named
"default", a "ref" adapter copy), which does not fit one backbone shared by many policies and adapters.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from .. import _validate as check
from .._bakery import bakeable
from ..backbone import Backbone
from ..chat import pair_batch, prompt_ids
from ..control import progress, stage, stopped
from ..data import EXAMPLE_INPUTS, HELDOUT_INPUTS  # noqa: F401  (the arrow's default demo inputs)
from ..errors import InvalidArgumentError
from ..losses import DPOLoss, dpo_loss, grpo_advantages, grpo_loss, kto_loss, rloo_advantages, rloo_loss
from ..policy import Policy
from ..results import UpdateResult
from ..rewards import Reward, as_reward
from ..sampling import BestOfN
from ..scoring import encode_rows, token_logprobs
from ..splits import split_indices, split_inputs
from ..training import LossFn, Run, Trainable, TrainConfig, build_config, new_adapter, train, with_callback

Row = tuple[list[int], list[int]]  # (prompt ids, response ids), token-exact


class UpdateMethod(enum.StrEnum):
    """How the reward becomes an update (Eq. 1/2)."""

    BEST_OF_N = "best_of_n"
    REJECTION_SFT = "rejection_sft"
    DPO = "dpo"
    KTO = "kto"
    GRPO = "grpo"
    RLOO = "rloo"


@dataclass(frozen=True, kw_only=True)
class UpdateConfig(TrainConfig):
    """Settings of one reward ⇒ update run (the shared training fields are `TrainConfig`'s).

    Attributes:
        method: one of `UpdateMethod`.
        beta: β of Eq. 1 — the KL strength (DPO/KTO temperature, GRPO/RLOO KL coefficient).
        samples: responses per input (best-of-N's N; the group size of GRPO/RLOO; the pool for DPO/KTO pairs).
        batch_size: inputs (or pairs) per optimiser step.
        max_new_tokens / temperature / top_p: sampling of responses (training data and evaluation).
        loss_type / label_smoothing: DPO variant; label_smoothing is the robust loss's flip rate ε.
        holdout: fraction of `inputs` kept for evaluation when no `eval_inputs` are given.
        eval_samples: sampled responses per input for the reward / KL metrics.
        eval_train: how many training inputs (the first ones) the train-split metrics use (0: skip them).
    """

    method: UpdateMethod = UpdateMethod.DPO
    beta: float = 0.1
    samples: int = 4
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: DPOLoss = DPOLoss.SIGMOID
    label_smoothing: float = 0.0
    holdout: float = 0.25
    eval_samples: int = 2
    eval_train: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        set_ = object.__setattr__
        set_(self, "method", check.choice(self.method, UpdateMethod, "method"))
        set_(self, "loss_type", check.choice(self.loss_type, DPOLoss, "loss_type"))
        set_(self, "beta", check.finite_positive(self.beta, "beta"))
        for name in ("samples", "max_new_tokens", "eval_samples"):
            check.positive_int(getattr(self, name), name)
        check.positive_int(self.eval_train, "eval_train", minimum=0)
        set_(self, "temperature", check.temperature(self.temperature))
        set_(self, "top_p", check.top_p(self.top_p))
        if self.temperature == 0 and self.samples > 1:
            raise InvalidArgumentError("temperature=0 makes all N samples identical: use temperature > 0 (e.g. 1.0).")
        if not 0 <= self.label_smoothing < 0.5:
            raise InvalidArgumentError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}.")
        if not 0 <= self.holdout < 1:
            raise InvalidArgumentError(f"holdout must be in [0, 1), got {self.holdout!r} (0.25 keeps a quarter).")
        if self.method in (UpdateMethod.GRPO, UpdateMethod.RLOO, UpdateMethod.DPO, UpdateMethod.KTO) and self.samples < 2:
            raise InvalidArgumentError(f"method={self.method.value!r} needs samples >= 2 per input, got samples={self.samples}.")


@dataclass
class RewardUpdateResult(UpdateResult):
    """π* from a reward: `.policy` (base + new LoRA adapter, or a `BestOfN` wrapper), metrics, history.

    metrics: reward_{train,heldout}_{before,after} (mean reward of sampled responses), kl_{train,heldout}_after
    (KL[π*‖π0] in nats, Monte-Carlo on π*'s own samples; for best_of_n the bound log N − (N−1)/N), seconds,
    steps, interrupted. `samples`: every held-out sample (eval_samples per input) before and after, with its
    reward (`reward_before`, `reward_after`: their means are the metrics). A saved best_of_n result
    keeps its metrics but not the wrapper (rebuild it with `BestOfN(pi0, reward, n)`).
    """

    kind: ClassVar[str] = "reward_to_update"

    def _save_vertex(self, folder: Path) -> None:
        if not isinstance(self.policy, BestOfN):
            super()._save_vertex(folder)


def _restore_best_of_n(result: RewardUpdateResult, args: dict[str, Any]) -> None:
    """A baked best_of_n result gets its wrapper back: BestOfN(π0, reward, N) with the recorded N."""
    if result.info.get("method") == UpdateMethod.BEST_OF_N.value:
        result.policy = BestOfN(args["policy"], as_reward(args["reward"]), result.info["samples"])


# -- the public arrow ---------------------------------------------------------------------------------


@bakeable("reward_to_update", configs=("UpdateConfig",), restore=_restore_best_of_n)
def reward_to_update(policy: Policy, reward: Reward | Callable[..., Any] | None = None,
                     inputs: Sequence[str] | None = None, *, method: str | None = None, beta: float | None = None,
                     steps: int | None = None, eval_inputs: Sequence[str] | None = None, preferences: Any = None,
                     config: UpdateConfig | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                     **options: Any) -> RewardUpdateResult:
    """Turn a reward into a parameter update (Eq. 1): π0 + a new LoRA adapter that scores higher.

    Args:
        policy: π0 (a `Policy`; if it has an adapter, the new adapter starts as a copy and π0 is the reference).
        reward: a `Reward` or a plain function `reward(xs, ys)` / `reward(x, y)`.
        inputs: the prompts x to train on; `holdout` of them are kept for evaluation unless `eval_inputs` is given.
        method: one of "best_of_n", "rejection_sft", "dpo" (default), "kto", "grpo", "rloo".
        beta: β of Eq. 1 (KL strength), finite and > 0 (default 0.1).
        steps: optimiser steps (default 20).
        eval_inputs: held-out prompts for the metrics (then all of `inputs` are trained on).
        preferences: instead of reward + inputs, a preference dataset in TRL's format (a `datasets.Dataset`, e.g.
            from `tnb.contrastive_pairs`): prompt/chosen/rejected for "dpo" and "kto", prompt/completion/label for
            "kto". A seeded `holdout` share of its rows is held out for the metrics.
        config: all settings at once (an `UpdateConfig`); the keywords override its fields.
        callback: called with each history row (one per step), e.g. for a live plot.
        **options: any other `UpdateConfig` field (samples, batch_size, learning_rate, loss_type, max_new_tokens,
            holdout, ...) and the training keywords every training arrow shares: output_dir,
            resume_from_checkpoint, callbacks, training_args (see `triangle_nb.training.TrainConfig`).

    Returns:
        A `RewardUpdateResult`: `.policy` (π*), `.metrics` (reward before/after and KL on train and held-out,
        world_size, steps, interrupted), `.history` (the Trainer's log, one row per step), `.samples` (held-out
        responses before/after), `.plot()`, `.save()`.

    >>> res = tnb.reward_to_update(pi0, tnb.rewards.Sentiment(), inputs, method="dpo", steps=20)  # doctest: +SKIP
    """
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a Policy (e.g. tnb.load_policy()), got {type(policy).__name__}.")
    cfg = with_callback(build_config(UpdateConfig, options, base=config, method=method, beta=beta, steps=steps), callback)
    if preferences is not None:
        if reward is not None or inputs is not None:
            raise InvalidArgumentError("preferences= replaces reward and inputs: pass either preferences=dataset, or "
                                       "a reward with its inputs, not both.")
        if cfg.method not in (UpdateMethod.DPO, UpdateMethod.KTO):
            raise InvalidArgumentError(f"preferences= trains method='dpo' or 'kto', not {cfg.method.value!r}: the other "
                                       "methods sample from π0 and need a reward.")
        return _run_preferences(policy, preferences, cfg, eval_inputs)
    if reward is None or inputs is None:
        raise InvalidArgumentError("reward_to_update needs a reward and inputs (reward_to_update(pi0, reward, inputs)), "
                                   "or preferences=dataset.")
    train_xs, eval_xs = split_inputs(inputs, eval_inputs, cfg.holdout, cfg.seed)
    return _RUNNERS[cfg.method](policy, as_reward(reward), train_xs, eval_xs, cfg)


# -- sampling and scoring -----------------------------------------------------------------------------


@dataclass
class _Samples:
    """n responses per input: texts, token-exact rows, rewards [len(xs), n]."""

    xs: list[str]
    texts: list[list[str]]
    rows: list[list[Row]]
    rewards: np.ndarray


def _sample(policy: Policy, reward: Reward, xs: list[str], samples: int, cfg: UpdateConfig, seed: int) -> _Samples:
    ids = policy.generate_ids(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, samples=samples, seed=seed)
    texts, k = [policy.decode_response(t) for t in ids], samples
    r = reward([x for x in xs for _ in range(k)], texts).reshape(len(xs), k)
    tok = policy.tokenizer
    prompts = [prompt_ids(tok, policy.prompt, x) for x in xs]
    rows = [[(prompts[i], ids[i * k + j] or [policy.backbone.stop_ids[0]]) for j in range(k)] for i in range(len(xs))]
    return _Samples(xs, [texts[i * k:(i + 1) * k] for i in range(len(xs))], rows, r)


def _logps(policy: Policy, rows: list[Row], batch_size: int = 16) -> np.ndarray:
    """log π(y|x) per row for `policy` (inference, batched)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            out.append(_token_logps(policy, rows[i:i + batch_size])[0].sum(-1))
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def evaluate(policy: Policy, reference: Policy, reward: Reward, xs: Sequence[str], cfg: UpdateConfig,
             seed: int = 10_000) -> dict[str, Any]:
    """Mean reward of `policy`'s samples and KL[policy ‖ reference] = E_{y~policy} log policy/reference (nats)."""
    xs_ = list(xs)
    if not xs_:
        return _no_samples()
    with stage("evaluating"):
        s = _sample(policy, reward, xs_, cfg.eval_samples, cfg, seed)
        rows = [r for g in s.rows for r in g]
        kl = 0.0 if policy.adapter == reference.adapter else float(np.mean(_logps(policy, rows) -
                                                                           _logps(reference, rows)))
    return {"reward": float(s.rewards.mean()), "kl": kl, "xs": [x for x in xs_ for _ in range(cfg.eval_samples)],
            "texts": [y for g in s.texts for y in g], "rewards": s.rewards.reshape(-1).tolist()}


def _no_samples() -> dict[str, Any]:
    return {"reward": float("nan"), "kl": float("nan"), "xs": [], "texts": [], "rewards": []}


# -- training: a new adapter, one Trainable, the shared Trainer engine ----------------------------------


def _fit(policy: Policy, cfg: UpdateConfig, make_loss: Callable[[Policy], LossFn], n_items: int, *,
         batch_size: int | None = None) -> tuple[Policy, Run]:
    """A new LoRA adapter (a copy of π0's when π0 has one: π* = π0 at step 0) trained on `make_loss(π*)` by the
    Trainer engine (`triangle_nb.training`); the base and every other adapter stay bit-identical."""
    bb = policy.backbone
    name = new_adapter(bb, cfg.method.value, _lora_config(bb, policy.adapter, cfg.lora_r, cfg.lora_targets), seed=cfg.seed,
                       copy_from=policy.adapter)
    new = dataclasses.replace(policy, adapter=name)  # π*, the policy the loss trains
    job = Trainable(name=cfg.method.value, loss=make_loss(new), n_items=n_items, backbone=bb, adapter=name)
    run = train(job, cfg, batch_size=batch_size, desc=f"{cfg.method.value} (β={cfg.beta:g})")
    return new, run


def _lora_config(bb: Backbone, adapter: str | None, r: int, targets: tuple[str, ...]) -> Any:
    from ..backbone import default_lora_config

    if adapter is not None:
        return dataclasses.replace(bb.model.peft_config[adapter], inference_mode=False)
    return default_lora_config(r=r, targets=targets)


def _train_logps(pi: Policy, rows: list[Row], temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable per-token log π*(y_t|x, y_<t) [B, T] (0 outside y) of the policy in training, and the mask."""
    with pi.backbone.training():
        return _token_logps(pi, rows, temperature=temperature)


def _token_logps(pi: Policy, rows: list[Row], *, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t|x, y_<t) per response token [B, T] and the response mask [B, T], at sampling temperature T
    (the distribution the tokens were drawn from): `scoring.token_logprobs`, the one log π path."""
    bb, n = pi.backbone, len(rows)
    batch = pair_batch(rows, bb.pad_id).to(bb.device)
    return token_logprobs(bb, batch, [pi.adapter] * n, [pi.exit_layer] * n, temperature=temperature), \
        batch.response_mask


# -- the methods --------------------------------------------------------------------------------------


def _finish(run: Run | None, policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
            cfg: UpdateConfig, start: float, new: Any, extra: dict[str, Any] | None = None,
            notes: dict[str, Any] | None = None) -> RewardUpdateResult:
    """Reward and KL before and after on train and held-out inputs. "Before" is measured here, after training:
    π0 is unchanged by it (a new adapter) and the samples are seeded apart from training's, so the numbers are the
    same, and a run stopped (or a provenance rerun cut) at step k never pays for them."""
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    metrics: dict[str, Any] = {}
    for split, xs in (("train", train_xs[:cfg.eval_train]), ("heldout", eval_xs)):
        after = before[split] if new is policy else (
            _evaluate_bon(new, xs, cfg) if isinstance(new, BestOfN) else evaluate(new, policy, reward, xs, cfg))
        metrics |= {f"reward_{split}_before": before[split]["reward"], f"reward_{split}_after": after["reward"],
                    f"kl_{split}_after": after["kl"]}
        if split == "heldout":
            samples = pd.DataFrame({"x": after["xs"], "before": before[split]["texts"],
                                    "reward_before": before[split]["rewards"], "after": after["texts"],
                                    "reward_after": after["rewards"]})
    return _result(run, policy, cfg, start, new, metrics | (extra or {}), samples, len(train_xs), len(eval_xs),
                   notes)


def _result(run: Run | None, policy: Policy, cfg: UpdateConfig, start: float, new: Any, metrics: dict[str, Any],
            samples: pd.DataFrame, n_train: int, n_heldout: int,
            notes: dict[str, Any] | None = None) -> RewardUpdateResult:
    """The result in the one schema (results.py): numbers in metrics, the settings (and `notes`) flat in info."""
    history = run.history if run is not None else pd.DataFrame()
    metrics = metrics | (run.metrics() if run is not None else {"steps": 0, "interrupted": False, "world_size": 1})
    metrics |= {"n_train": n_train, "n_heldout": n_heldout, "seconds": time.perf_counter() - start}
    info = {"method": cfg.method.value, **cfg.settings(), "adapter": getattr(new, "adapter", None),
            "checkpoint": run.checkpoint if run is not None else None, **(notes or {})}
    return RewardUpdateResult(metrics=metrics, history=history, info=info, policy=new, samples=samples)


def _before(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str], cfg: UpdateConfig) -> dict[str, Any]:
    return {"train": evaluate(policy, policy, reward, train_xs[:cfg.eval_train], cfg),
            "heldout": evaluate(policy, policy, reward, eval_xs, cfg)}


def _evaluate_bon(bon: BestOfN, xs: list[str], cfg: UpdateConfig) -> dict[str, Any]:
    if not xs:
        return _no_samples()
    draws = [x for x in xs for _ in range(cfg.eval_samples)]  # eval_samples best-of-N draws per input, as π0's
    groups, r = bon.sample(draws, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed + 10_000)
    return {"reward": float(r.max(1).mean()), "kl": bon.kl_bound, "xs": draws, "rewards": r.max(1).tolist(),
            "texts": [g[int(i)] for g, i in zip(groups, r.argmax(1), strict=True)]}


def _run_best_of_n(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                   cfg: UpdateConfig) -> RewardUpdateResult:
    """No training: π* = BestOfN(π0, reward, N). KL after is the analytic bound log N − (N−1)/N."""
    start = time.perf_counter()
    return _finish(None, policy, reward, train_xs, eval_xs, cfg, start, BestOfN(policy, reward, cfg.samples),
                   notes={"kl_is_upper_bound": True})


def _run_rejection_sft(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                       cfg: UpdateConfig) -> RewardUpdateResult:
    """Best-of-N samples of π0 become SFT targets: min −(1/|y|) log π(y_best|x)."""
    start = time.perf_counter()
    s = _sample(policy, reward, train_xs, cfg.samples, cfg, cfg.seed)
    best = [s.rows[i][int(j)] for i, j in enumerate(s.rewards.argmax(1))]
    best_r = s.rewards.max(1)

    def make_loss(pi: Policy) -> LossFn:
        def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            lp, mask = _train_logps(pi, [best[i] for i in idx])
            return -(lp.sum(-1) / mask.sum(-1)).mean(), {"sft_reward": float(best_r[idx].mean())}
        return loss

    new, run = _fit(policy, cfg, make_loss, len(best))
    return _finish(run, policy, reward, train_xs, eval_xs, cfg, start, new,
                   extra={"best_of_n_reward_train_before": float(best_r.mean())})


@dataclass
class _Pairs:
    """Preference pairs (x, y+, y−): from the reward (best vs worst of N samples per input) or from a dataset."""

    chosen: list[Row]
    rejected: list[Row]
    ref_chosen: torch.Tensor  # log π_ref(y+|x) [P]
    ref_rejected: torch.Tensor
    margin: np.ndarray  # r(y+) − r(y−) (nan for a dataset without rewards)


def preference_pairs(policy: Policy, reward: Reward, xs: list[str], cfg: UpdateConfig) -> _Pairs:
    """Sample N per input from π0, pair the best with the worst; drop ties (no preference)."""
    with stage("sampling the training pairs"):
        s = _sample(policy, reward, xs, cfg.samples, cfg, cfg.seed)
    hi, lo = s.rewards.argmax(1), s.rewards.argmin(1)
    keep = [i for i in range(len(xs)) if s.rewards[i, hi[i]] > s.rewards[i, lo[i]]]
    if not keep:
        raise InvalidArgumentError("every sample got the same reward: no preference pairs. Use more inputs, a "
                                   "larger n, or a reward that separates responses.")
    margin = np.array([s.rewards[i, hi[i]] - s.rewards[i, lo[i]] for i in keep])
    return _pairs(policy, [s.rows[i][hi[i]] for i in keep], [s.rows[i][lo[i]] for i in keep], margin)


def _pairs(policy: Policy, chosen: list[Row], rejected: list[Row], margin: np.ndarray) -> _Pairs:
    dev = policy.backbone.device  # the reference log-probs meet the trained ones on the model's device
    return _Pairs(chosen, rejected, torch.as_tensor(_logps(policy, chosen), device=dev).float(),
                  torch.as_tensor(_logps(policy, rejected), device=dev).float(), margin)


def _dpo_objective(pairs: _Pairs, cfg: UpdateConfig) -> Callable[[Policy], LossFn]:
    """DPO (Eq. 1/2 as Bradley–Terry on the implicit reward β log π/π_ref), TRL's loss variants."""
    def make_loss(pi: Policy) -> LossFn:
        def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            lp, mask = _train_logps(pi, [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx])
            (lc, lr_), (nc, nr) = lp.sum(-1).chunk(2), mask.sum(-1).float().chunk(2)
            dc, dr = lc - pairs.ref_chosen[idx], lr_ - pairs.ref_rejected[idx]  # log π/π_ref of y+ and y−
            per_pair = dpo_loss(dc, dr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                                chosen_tokens=nc, rejected_tokens=nr)
            margins = (cfg.beta * (dc - dr)).detach()
            return per_pair.mean(), {"chosen_reward": float(cfg.beta * dc.detach().mean()),
                                     "rejected_reward": float(cfg.beta * dr.detach().mean()),
                                     "accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean())}
        return loss
    return make_loss


def _kto_objective(rows: list[Row], ref: torch.Tensor, label: torch.Tensor,
                   cfg: UpdateConfig) -> Callable[[Policy], LossFn]:
    """KTO on unpaired desirable / undesirable completions; z0 = the (all-process) batch's mean log-ratio, ≥ 0,
    detached (TRL estimates z0 on mismatched (x, y') pairs; the batch's own completions save one forward)."""
    def make_loss(pi: Policy) -> LossFn:
        def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            logratio = _train_logps(pi, [rows[i] for i in idx])[0].sum(-1) - ref[idx]
            z0 = _global_mean(logratio.detach()).clamp(min=0)
            good = label[idx]
            losses = kto_loss(logratio, good.bool(), z0, beta=cfg.beta)
            return losses.mean(), {"kl_estimate": float(z0), "logratio_desirable": _masked_mean(logratio, good),
                                   "logratio_undesirable": _masked_mean(logratio, 1 - good)}
        return loss
    return make_loss


def _run_offline(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                 cfg: UpdateConfig) -> RewardUpdateResult:
    """DPO on (best, worst) of N pairs, or KTO with the best of N desirable and the worst undesirable (unpaired);
    reference = π0 (adapters disabled for a plain base)."""
    start = time.perf_counter()
    pairs = preference_pairs(policy, reward, train_xs, cfg)
    extra = {"n_pairs": len(pairs.chosen)}
    if cfg.method is UpdateMethod.KTO:
        rows, ref, label = _unpaired(pairs)
        new, run = _fit(policy, cfg, _kto_objective(rows, ref, label, cfg), len(rows), batch_size=2 * cfg.batch_size)
    else:
        new, run = _fit(policy, cfg, _dpo_objective(pairs, cfg), len(pairs.chosen))
        extra["reward_margin_train_before"] = float(pairs.margin.mean())
    return _finish(run, policy, reward, train_xs, eval_xs, cfg, start, new, extra=extra)


def _unpaired(pairs: _Pairs) -> tuple[list[Row], torch.Tensor, torch.Tensor]:
    """KTO's view of pairs: every chosen response desirable (label 1), every rejected one undesirable (0)."""
    ref = torch.cat([pairs.ref_chosen, pairs.ref_rejected])
    label = torch.tensor([1.0] * len(pairs.chosen) + [0.0] * len(pairs.rejected), device=ref.device)
    return pairs.chosen + pairs.rejected, ref, label


def _global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over this micro-batch and, in a run across processes, over every process's micro-batch (as TRL
    gathers KTO's KL estimate)."""
    total = torch.stack([t.sum(), torch.tensor(float(t.numel()), device=t.device)])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return total[0] / total[1].clamp(min=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values.detach() * mask).sum() / mask.sum()) if float(mask.sum()) else float("nan")


def _run_online(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                cfg: UpdateConfig) -> RewardUpdateResult:
    """GRPO / RLOO: sample a group of n per input from the CURRENT policy, policy-gradient with a group baseline.

    Both score log π and log π_ref at the sampling temperature (the distribution the tokens came from).
    GRPO: A = (r − mean_group) / (std_group + 1e-4); per-token −A·log π + β·k3(π, π_ref), TRL's aggregation.
    RLOO: TRL's RLOO (leave-one-out baseline over the group, with the KL as TRL 1.16 places it).
    Each step's samples are seeded by the step number, so a resumed run draws the same samples.
    """
    start = time.perf_counter()
    new, run = _fit(policy, cfg, _online_objective(policy, reward, train_xs, cfg), len(train_xs))
    return _finish(run, policy, reward, train_xs, eval_xs, cfg, start, new)


def _online_objective(policy: Policy, reward: Reward, train_xs: list[str], cfg: UpdateConfig) -> Callable[[Policy], LossFn]:
    T = cfg.temperature

    def make_loss(trained: Policy) -> LossFn:
        def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            s = _sample(trained, reward, [train_xs[i] for i in idx], cfg.samples, cfg, cfg.seed + 7919 * step + idx[0])
            rows = [r for g in s.rows for r in g]
            lp, mask = _train_logps(trained, rows, temperature=T)
            with torch.inference_mode():
                ref = _token_logps(policy, rows, temperature=T)[0]
            ref = ref.clone()  # a normal tensor: inference-mode tensors cannot enter the autograd graph of the loss
            r = torch.as_tensor(s.rewards, device=lp.device).float()  # [B, n]
            seq_kl = ((lp.detach() - ref) * mask).sum(-1)  # Σ_t log π/π_ref per sample
            if cfg.method is UpdateMethod.GRPO:  # KL per token (k3) in the loss
                value = grpo_loss(lp, ref, mask, grpo_advantages(r), beta=cfg.beta,  # dapo: ÷ tokens of all processes
                                  num_items_in_batch=_global_mean(mask.sum().float()))
            else:  # KL per sequence in the reward
                value = rloo_loss(lp, mask, rloo_advantages(r, seq_kl.view_as(r), beta=cfg.beta))
            return value, {"reward": float(r.mean()), "kl_estimate": float(seq_kl.mean()),
                           "length": float(mask.sum(-1).float().mean())}
        return loss
    return make_loss


# -- external preference data (datasets in TRL's formats) ---------------------------------------------


def _run_preferences(policy: Policy, data: Any, cfg: UpdateConfig, eval_inputs: Sequence[str] | None) -> RewardUpdateResult:
    """DPO / KTO on a dataset: prompt/chosen/rejected (DPO, or KTO unpaired), or prompt/completion/label (KTO).

    Held-out metrics (a seeded `holdout` share of the rows, never trained on, unless `eval_inputs` are given):
    preference accuracy of the implicit reward β log π*/π0 (chosen above rejected; 0.5 before, where every margin
    is 0) and KL[π*‖π0] on the held-out prompts (or `eval_inputs`).
    """
    start = time.perf_counter()
    table = preference_table(data, cfg.method)
    holdout = 0.0 if eval_inputs is not None else cfg.holdout  # held-out prompts given: train on every row
    train_rows, held_rows = split_indices(len(table["prompt"]), holdout, cfg.seed)
    part = {k: [v[i] for i in train_rows] for k, v in table.items()}
    if "completion" in table:  # KTO's own format: unpaired rows with a boolean label
        rows = encode_rows(policy, part["prompt"], part["completion"], truncate=True)
        ref = torch.as_tensor(_logps(policy, rows), device=policy.backbone.device).float()
        label = torch.tensor([float(v) for v in part["label"]], device=ref.device)
        new, run = _fit(policy, cfg, _kto_objective(rows, ref, label, cfg), len(rows))
        n_train = len(rows)
    else:
        pairs = _pairs(policy, encode_rows(policy, part["prompt"], part["chosen"], truncate=True),
                       encode_rows(policy, part["prompt"], part["rejected"], truncate=True), np.full(len(train_rows), np.nan))
        if cfg.method is UpdateMethod.DPO:
            new, run = _fit(policy, cfg, _dpo_objective(pairs, cfg), len(pairs.chosen))
        else:
            rows, ref, label = _unpaired(pairs)
            new, run = _fit(policy, cfg, _kto_objective(rows, ref, label, cfg), len(rows),
                            batch_size=2 * cfg.batch_size)
        n_train = len(pairs.chosen)
    held = {k: [v[i] for i in held_rows] for k, v in table.items()}
    metrics, samples = _preference_metrics(policy, new, held, eval_inputs, cfg)
    return _result(run, policy, cfg, start, new, metrics | {"n_pairs": n_train}, samples, n_train, len(held_rows))


def preference_table(data: Any, method: UpdateMethod) -> dict[str, list[Any]]:
    """The columns of a preference dataset (datasets.Dataset, pandas DataFrame or dict of lists), checked."""
    if isinstance(data, pd.DataFrame):
        data = {c: data[c].tolist() for c in data.columns}
    names = list(getattr(data, "column_names", None) or (data.keys() if isinstance(data, dict) else []))
    if not names:
        raise InvalidArgumentError(f"preferences must be a datasets.Dataset (or a dict of columns) with prompt/chosen/"
                                   f"rejected columns, got {type(data).__name__}.")
    wanted = ("prompt", "completion", "label") if method is UpdateMethod.KTO and "completion" in names else (
        "prompt", "chosen", "rejected")
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InvalidArgumentError(f"preferences lacks column(s) {missing} (has {names}): DPO and KTO take prompt/chosen/"
                                   "rejected, KTO also prompt/completion/label — e.g. tnb.contrastive_pairs(...).")
    table = {c: list(data[c]) for c in wanted}
    if not table["prompt"]:
        raise InvalidArgumentError("preferences is empty: pass at least two rows (one is held out for the metrics).")
    for c in wanted:
        if c == "label":
            if not all(isinstance(v, (bool, np.bool_)) for v in table[c]):
                raise InvalidArgumentError("preferences column 'label' must hold booleans (True = desirable).")
            continue
        bad = next((i for i, v in enumerate(table[c]) if not isinstance(v, str)), None)
        if bad is not None:
            raise InvalidArgumentError(f"preferences column {c!r} row {bad} is a {type(table[c][bad]).__name__}, not a "
                                       "string: every prompt and response must be text.")
    return table


def _preference_metrics(policy: Policy, new: Policy, held: dict[str, list[Any]], eval_inputs: Sequence[str] | None,
                        cfg: UpdateConfig) -> tuple[dict[str, Any], pd.DataFrame]:
    """Held-out implicit-reward accuracy and KL[π*‖π0] on the held-out prompts (or `eval_inputs`)."""
    metrics: dict[str, Any] = {}
    if held.get("chosen"):
        margin = _implicit_margin(policy, new, held, cfg.beta)
        metrics |= {"preference_accuracy_heldout_before": 0.5,
                    "preference_accuracy_heldout_after": float(np.mean((margin > 0) + 0.5 * (margin == 0))),
                    "implicit_margin_heldout_after": float(margin.mean())}
    xs = list(eval_inputs) if eval_inputs is not None else list(dict.fromkeys(held["prompt"]))
    ev = _sample_kl(new, policy, xs, cfg)
    before = policy.generate(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             seed=cfg.seed) if xs else []
    metrics["kl_heldout_after"] = ev["kl"]
    return metrics, pd.DataFrame({"x": xs, "before": before, "after": ev["texts"], "log_ratio_after": ev["log_ratio"]})


def _implicit_margin(policy: Policy, new: Policy, held: dict[str, list[Any]], beta: float) -> np.ndarray:
    """β[log π*/π0 (y+) − log π*/π0 (y−)] per held-out pair."""
    c = encode_rows(policy, held["prompt"], held["chosen"], truncate=True)
    r = encode_rows(policy, held["prompt"], held["rejected"], truncate=True)
    return beta * ((_logps(new, c) - _logps(policy, c)) - (_logps(new, r) - _logps(policy, r)))


def _sample_kl(new: Policy, policy: Policy, xs: list[str], cfg: UpdateConfig) -> dict[str, Any]:
    if not xs:
        return {"kl": float("nan"), "texts": [], "log_ratio": []}
    ids = new.generate_ids(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    rows = [(prompt_ids(new.tokenizer, new.prompt, x), y or [new.backbone.stop_ids[0]]) for x, y in zip(xs, ids, strict=True)]
    log_ratio = _logps(new, rows) - _logps(policy, rows)  # log π*(y|x) / π0(y|x) of each sample: its KL term
    return {"kl": float(np.mean(log_ratio)), "texts": [new.decode_response(y) for y in ids],
            "log_ratio": log_ratio.tolist()}


_RUNNERS: dict[UpdateMethod, Callable[..., RewardUpdateResult]] = {
    UpdateMethod.BEST_OF_N: _run_best_of_n, UpdateMethod.REJECTION_SFT: _run_rejection_sft, UpdateMethod.DPO: _run_offline,
    UpdateMethod.KTO: _run_offline, UpdateMethod.GRPO: _run_online, UpdateMethod.RLOO: _run_online,
}


# -- around the arrow: the β trade-off, reward hacking, self-improvement ----------------------------


def beta_sweep(policy: Policy, reward: Reward | Callable[..., Any], inputs: Sequence[str],
               betas: Sequence[float] = (0.03, 0.1, 0.3, 1.0), *, method: str = "dpo", keep_adapters: bool = False,
               **options: Any) -> pd.DataFrame:
    """Train once per β and tabulate the reward-vs-KL trade-off of Eq. 1 (held-out and train).

    Args:
        betas: the KL strengths to try (each finite, > 0).
        keep_adapters: keep every trained adapter on the backbone (names in the `adapter` column).
        **options: as `reward_to_update` (steps, n, lr, eval_inputs, ...).

    Returns:
        One row per β: beta, reward_before, reward_after, kl_after (held-out), the train columns, seconds.
    """
    rows = []
    betas = list(betas)
    for i, beta in enumerate(betas):
        if stopped() or progress("β sweep", i, len(betas)):  # a Stop taken by the last run, or asked since (control.py)
            break
        res = reward_to_update(policy, reward, inputs, method=method, beta=beta, **options)
        m = res.metrics
        rows.append({"beta": float(beta), "reward_before": m["reward_heldout_before"],
                     "reward_after": m["reward_heldout_after"], "kl_after": m["kl_heldout_after"],
                     "reward_train_after": m["reward_train_after"], "kl_train_after": m["kl_train_after"],
                     "seconds": m["seconds"], "adapter": res.info["adapter"]})
        if not keep_adapters and res.info["adapter"]:
            policy.backbone.remove_adapter(res.info["adapter"])
    return pd.DataFrame(rows)


def degeneration(texts: Sequence[str]) -> dict[str, float]:
    """Simple signs of degenerate text: mean words, distinct word bigrams / bigrams, mean characters per word."""
    words = [t.split() for t in texts]
    bigrams = [tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
    n_words = sum(len(w) for w in words)
    return {"words": n_words / max(1, len(words)),
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else float("nan"),
            "chars_per_word": sum(len(x) for w in words for x in w) / max(1, n_words)}


def length_hacking(policy: Policy, inputs: Sequence[str], *, method: str = "dpo", steps: int = 20,
                   beta: float = 0.1, **options: Any) -> tuple[RewardUpdateResult, pd.DataFrame]:
    """Reward hacking demo: optimise `rewards.Length()` (more words = better) and measure what the text becomes.

    Returns:
        The result, and a before/after table on held-out inputs: words, distinct_2, chars_per_word and the
        sentiment-free 'words' reward — a rising reward with falling distinct_2 is the hack.
    """
    res = reward_to_update(policy, _length_reward(), inputs, method=method, steps=steps, beta=beta, **options)
    table = pd.DataFrame([{"when": w, **degeneration(res.samples[w].tolist())} for w in ("before", "after")])
    return res, table.set_index("when")


def _length_reward() -> Reward:
    from ..rewards import Length

    return Length()
