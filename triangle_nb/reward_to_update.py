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

The loops are our own, lean and short, with TRL's loss formulas: TRL 1.16's trainers assume they own
the PeftModel (an adapter named "default", a "ref" adapter copy, a fused LM head patched into the
model), which does not fit one backbone shared by many policies and adapters.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import _validate as check
from .backbone import Backbone
from .chat import pair_batch, prompt_ids
from .errors import InvalidArgumentError
from .policy import Policy
from .results import UpdateResult
from .rewards import Reward, as_reward
from .scoring import target_logprobs

Row = tuple[list[int], list[int]]  # (prompt ids, response ids), token-exact

EXAMPLE_INPUTS: tuple[str, ...] = (
    "Describe your morning.", "Tell me about the weather today.", "What do you think of Mondays?",
    "Write one sentence about your neighbour's dog.", "How was the traffic on your way home?",
    "Describe the food at the new restaurant.", "What is it like to wait at the dentist?",
    "Tell me about your last holiday.", "What do you think about rainy weekends?",
    "Describe the city where you live.", "How do you feel about homework?",
    "Tell me about an old movie you watched.", "Describe a long train journey.",
    "What is your opinion of winter?", "Tell me about your job.", "Describe a visit to the supermarket.",
    "What do you think of your phone?", "Describe the view from your window.",
    "How was the concert last night?", "Tell me about learning to cook.", "What do you think of airports?",
    "Describe your first day at school.", "Tell me about a family dinner.", "What is a typical Tuesday like?",
)  # neutral everyday prompts: room to move a sentiment reward either way


class Method(enum.StrEnum):
    """How the reward becomes an update (Eq. 1/2)."""

    BEST_OF_N = "best_of_n"
    REJECTION_SFT = "rejection_sft"
    DPO = "dpo"
    KTO = "kto"
    GRPO = "grpo"
    RLOO = "rloo"


class DPOLoss(enum.StrEnum):
    """TRL's DPO loss variants (same formulas as trl.DPOTrainer's `loss_type`)."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"


@dataclass(frozen=True, kw_only=True)
class UpdateConfig:
    """Settings of one reward ⇒ update run.

    Attributes:
        method: one of `Method`.
        beta: β of Eq. 1 — the KL strength (DPO/KTO temperature, GRPO/RLOO KL coefficient).
        steps: optimiser steps (ignored by best_of_n).
        n: samples per input (best-of-N's N; the group size of GRPO/RLOO; the pool for DPO/KTO pairs).
        batch_size: inputs (or pairs) per optimiser step.
        lr: AdamW learning rate of the LoRA parameters.
        max_new_tokens / temperature / top_p: sampling of responses (training data and evaluation).
        loss_type / label_smoothing: DPO variant; label_smoothing is the robust loss's flip rate ε.
        holdout: fraction of `inputs` kept for evaluation when no `eval_inputs` are given.
        eval_samples: sampled responses per input for the reward / KL metrics.
        eval_train: how many training inputs (the first ones) the train-split metrics use (0: skip them).
        lora_r: LoRA rank of the new adapter.
        seed: seeds sampling, the split and the batch order.
    """

    method: Method = Method.DPO
    beta: float = 0.1
    steps: int = 20
    n: int = 4
    batch_size: int = 4
    lr: float = 1e-3
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    loss_type: DPOLoss = DPOLoss.SIGMOID
    label_smoothing: float = 0.0
    holdout: float = 0.25
    eval_samples: int = 2
    eval_train: int = 8
    lora_r: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", check.choice(self.method, Method, "method"))
        set_(self, "loss_type", check.choice(self.loss_type, DPOLoss, "loss_type"))
        set_(self, "beta", check.finite_positive(self.beta, "beta"))
        set_(self, "lr", check.finite_positive(self.lr, "lr"))
        for name in ("steps", "n", "batch_size", "max_new_tokens", "eval_samples", "lora_r"):
            check.positive_int(getattr(self, name), name)
        check.positive_int(self.seed, "seed", minimum=0)
        check.positive_int(self.eval_train, "eval_train", minimum=0)
        set_(self, "temperature", check.temperature(self.temperature))
        set_(self, "top_p", check.top_p(self.top_p))
        if self.temperature == 0 and self.n > 1:
            raise InvalidArgumentError("temperature=0 makes all N samples identical: use temperature > 0 (e.g. 1.0).")
        if not 0 <= self.label_smoothing < 0.5:
            raise InvalidArgumentError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing!r}.")
        if not 0 <= self.holdout < 1:
            raise InvalidArgumentError(f"holdout must be in [0, 1), got {self.holdout!r} (0.25 keeps a quarter).")
        if self.method in (Method.GRPO, Method.RLOO, Method.DPO, Method.KTO) and self.n < 2:
            raise InvalidArgumentError(f"method={self.method.value!r} needs n >= 2 samples per input, got n={self.n}.")


@dataclass
class RewardUpdateResult(UpdateResult):
    """π* from a reward: `.policy` (base + new LoRA adapter, or a `BestOfN` wrapper), metrics, history.

    metrics: reward_{train,heldout}_{before,after} (mean reward of sampled responses), kl_{train,heldout}_after
    (KL[π*‖π0] in nats, Monte-Carlo on π*'s own samples; for best_of_n the bound log N − (N−1)/N), seconds,
    steps, interrupted. `samples`: one held-out response per input before and after. A saved best_of_n result
    keeps its metrics but not the wrapper (rebuild it with `BestOfN(pi0, reward, n)`).
    """

    kind: ClassVar[str] = "reward_to_update"
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)  # held-out responses before/after

    def _save_vertex(self, folder: Path) -> None:
        if isinstance(self.policy, BestOfN):
            return
        super()._save_vertex(folder)
        if not self.samples.empty:
            self.samples.to_parquet(folder / "samples.parquet")

    def _load_vertex(self, folder: Path, base: Any = None, **kw: Any) -> None:
        super()._load_vertex(folder, base=base, **kw)
        if (folder / "samples.parquet").is_file():
            self.samples = pd.read_parquet(folder / "samples.parquet")


# -- best-of-N: Eq. 2 at inference time ---------------------------------------------------------------


class BestOfN:
    """Sample N responses from `policy` and return the one with the highest reward (batched).

    Approximates Eq. 2 at inference time; its KL to the policy is at most log N − (N−1)/N.

    >>> BestOfN(pi0, tnb.rewards.Sentiment(), n=8).generate(["Describe your morning."])  # doctest: +SKIP
    """

    def __init__(self, policy: Policy, reward: Reward | Callable[..., Any], n: int = 4) -> None:
        self.policy, self.reward, self.n = policy, as_reward(reward), check.positive_int(n, "n")

    @property
    def backbone(self) -> Backbone:
        return self.policy.backbone

    @property
    def kl_bound(self) -> float:
        """Upper bound on KL[best-of-N ‖ π] (Beirami et al. 2024): log N − (N−1)/N."""
        return math.log(self.n) - (self.n - 1) / self.n

    def sample(self, xs: Sequence[str], *, max_new_tokens: int = 48, temperature: float = 1.0, top_p: float = 1.0,
               seed: int | None = None, batch_size: int = 16) -> tuple[list[list[str]], np.ndarray]:
        """All N candidates per input and their rewards [len(xs), N]."""
        xs_ = check.texts(xs, "xs")
        if temperature == 0 and self.n > 1:
            raise InvalidArgumentError("temperature=0 makes all N samples identical: use temperature > 0.")
        ys = self.policy.generate(xs_, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  n=self.n, seed=seed, batch_size=batch_size)
        groups = [[y] for y in ys] if self.n == 1 else ys
        flat_x = [x for x in xs_ for _ in range(self.n)]
        r = self.reward(flat_x, [y for g in groups for y in g]).reshape(len(xs_), self.n)
        return groups, r

    def generate(self, xs: Sequence[str], **kw: Any) -> list[str]:
        """The best of N samples per input (kw as `sample`)."""
        groups, r = self.sample(xs, **kw)
        return [g[int(i)] for g, i in zip(groups, r.argmax(1), strict=True)]

    def __repr__(self) -> str:
        return f"BestOfN(n={self.n}, reward={self.reward!r}, policy={self.policy!r})"


# -- the public arrow ---------------------------------------------------------------------------------


def reward_to_update(policy: Policy, reward: Reward | Callable[..., Any], inputs: Sequence[str], *,
                     method: str = "dpo", beta: float = 0.1, steps: int = 20,
                     eval_inputs: Sequence[str] | None = None, **options: Any) -> RewardUpdateResult:
    """Turn a reward into a parameter update (Eq. 1): π0 + a new LoRA adapter that scores higher.

    Args:
        policy: π0 (a `Policy`; if it has an adapter, the new adapter starts as a copy and π0 is the reference).
        reward: a `Reward` or a plain function `reward(xs, ys)` / `reward(x, y)`.
        inputs: the prompts x to train on; `holdout` of them are kept for evaluation unless `eval_inputs` is given.
        method: one of "best_of_n", "rejection_sft", "dpo", "kto", "grpo", "rloo".
        beta: β of Eq. 1 (KL strength), finite and > 0.
        steps: optimiser steps.
        eval_inputs: held-out prompts for the metrics (then all of `inputs` are trained on).
        **options: any other `UpdateConfig` field (n, batch_size, lr, loss_type, max_new_tokens, ...).

    Returns:
        A `RewardUpdateResult`: `.policy` (π*), `.metrics` (reward before/after and KL on train and held-out),
        `.history` (one row per step), `.samples` (held-out responses before/after), `.plot()`, `.save()`.

    >>> res = tnb.reward_to_update(pi0, tnb.rewards.Sentiment(), inputs, method="dpo", steps=20)  # doctest: +SKIP
    """
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a Policy (e.g. tnb.load_policy()), got {type(policy).__name__}.")
    unknown = set(options) - {f.name for f in dataclasses.fields(UpdateConfig)}
    if unknown:
        raise InvalidArgumentError(f"unknown option(s) {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(UpdateConfig)]}.")
    cfg = UpdateConfig(method=method, beta=beta, steps=steps, **options)
    train_xs, eval_xs = split_inputs(inputs, eval_inputs, cfg.holdout, cfg.seed)
    return _RUNNERS[cfg.method](policy, as_reward(reward), train_xs, eval_xs, cfg)


def split_inputs(inputs: Sequence[str], eval_inputs: Sequence[str] | None, holdout: float,
                 seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): `eval_inputs` if given, else a seeded `holdout` fraction of `inputs` (≥ 1 if ≥ 2 inputs)."""
    xs = check.texts(inputs, "inputs")
    if eval_inputs is not None:
        return xs, check.texts(eval_inputs, "eval_inputs")
    k = min(len(xs) - 1, max(1, round(holdout * len(xs)))) if holdout > 0 else 0
    order = np.random.default_rng(seed).permutation(len(xs))
    return [xs[i] for i in sorted(order[k:])], [xs[i] for i in sorted(order[:k])]


# -- sampling and scoring -----------------------------------------------------------------------------


@dataclass
class _Samples:
    """n responses per input: texts, token-exact rows, rewards [len(xs), n]."""

    xs: list[str]
    texts: list[list[str]]
    rows: list[list[Row]]
    rewards: np.ndarray


def _sample(policy: Policy, reward: Reward, xs: list[str], n: int, cfg: UpdateConfig, seed: int) -> _Samples:
    ids = policy.generate_ids(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, n=n, seed=seed)
    texts = [policy.decode_response(t) for t in ids]
    r = reward([x for x in xs for _ in range(n)], texts).reshape(len(xs), n)
    tok = policy.tokenizer
    prompts = [prompt_ids(tok, policy.prompt, x) for x in xs]
    rows = [[(prompts[i], ids[i * n + j] or [policy.backbone.stop_ids[0]]) for j in range(n)] for i in range(len(xs))]
    return _Samples(xs, [texts[i * n:(i + 1) * n] for i in range(len(xs))], rows, r)


def _forward_logps(bb: Backbone, rows: list[Row], adapter: str | None, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log π(y_t|x, y_<t) per row [B] and the response token counts [B].

    train=True: a differentiable forward through the ACTIVE adapter; else inference through `adapter`.
    """
    batch = pair_batch(rows, bb.pad_id).to(bb.device)
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    if train:
        logits = bb.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos,
                          logits_to_keep=batch.window).logits.float()
    else:
        with torch.inference_mode():
            logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[adapter] * len(rows),
                                   logits_to_keep=batch.window)
    lp = target_logprobs(logits, batch)  # [B, T], 0 outside y
    return lp.sum(-1), batch.response_mask.sum(-1).float()


def _logps(policy: Policy, rows: list[Row], batch_size: int = 16) -> np.ndarray:
    """log π(y|x) per row for `policy` (inference, batched)."""
    out = [_forward_logps(policy.backbone, rows[i:i + batch_size], policy.adapter, train=False)[0]
           for i in range(0, len(rows), batch_size)]
    return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def evaluate(policy: Policy, reference: Policy, reward: Reward, xs: Sequence[str], cfg: UpdateConfig,
             seed: int = 10_000) -> dict[str, Any]:
    """Mean reward of `policy`'s samples and KL[policy ‖ reference] = E_{y~policy} log policy/reference (nats)."""
    xs_ = list(xs)
    if not xs_:
        return {"reward": float("nan"), "kl": float("nan"), "texts": []}
    s = _sample(policy, reward, xs_, cfg.eval_samples, cfg, seed)
    rows = [r for g in s.rows for r in g]
    kl = 0.0 if policy.adapter == reference.adapter else float(np.mean(_logps(policy, rows) - _logps(reference, rows)))
    return {"reward": float(s.rewards.mean()), "kl": kl, "texts": [g[0] for g in s.texts]}


# -- the training loop shared by every method --------------------------------------------------------


StepFn = Callable[[int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class _Trainer:
    """A new LoRA adapter on the shared backbone and the loop that trains it (tqdm, history, Ctrl-C)."""

    policy: Policy
    cfg: UpdateConfig
    name: str = ""
    params: list[torch.nn.Parameter] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False

    def __post_init__(self) -> None:
        bb = self.policy.backbone
        stem = f"{self.cfg.method.value}"
        self.name = bb.unique_adapter_name(stem)
        config = _lora_config(bb, self.policy.adapter, self.cfg.lora_r)
        bb.add_adapter(self.name, config)
        named = {n: p for n, p in bb.model.named_parameters() if f".{self.name}." in n}
        if self.policy.adapter is not None:  # start from π0's adapter: π* = π0 at step 0
            src = dict(bb.model.named_parameters())
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(src[n.replace(f".{self.name}.", f".{self.policy.adapter}.")])
        for p in named.values():
            p.requires_grad_(True)
        self.params = list(named.values())

    @property
    def trained(self) -> Policy:
        return dataclasses.replace(self.policy, adapter=self.name)

    def run(self, step_fn: StepFn) -> None:
        """`cfg.steps` optimiser steps of `step_fn(step) -> (loss, logs)`; Ctrl-C keeps the last good adapter."""
        bb, cfg = self.policy.backbone, self.cfg
        opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        torch.manual_seed(cfg.seed)
        good = [p.detach().clone() for p in self.params]
        start = time.perf_counter()
        bar = tqdm(range(1, cfg.steps + 1), desc=f"{cfg.method.value} (β={cfg.beta:g})", leave=False)
        try:
            for step in bar:
                loss, logs = self._one_step(step_fn, step, opt)
                good = [p.detach().clone() for p in self.params]
                self.history.append({"step": step, "loss": float(loss), **logs,
                                     "seconds": time.perf_counter() - start})
                bar.set_postfix(loss=f"{float(loss):.4f}")
        except KeyboardInterrupt:
            self.interrupted = True
            with torch.no_grad():
                for p, g in zip(self.params, good, strict=True):
                    p.copy_(g)
        finally:
            bar.close()
            self._release(bb)

    def _one_step(self, step_fn: StepFn, step: int, opt: torch.optim.Optimizer) -> tuple[torch.Tensor, dict[str, float]]:
        bb = self.policy.backbone
        bb.model.set_adapter(self.name)
        for p in self.params:  # set_adapter may have frozen them
            p.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss, logs = step_fn(step)
        loss.backward()
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, 1.0))
        opt.step()
        return loss.detach(), logs

    def _release(self, bb: Backbone) -> None:
        bb.model.eval()
        for p in self.params:
            p.requires_grad_(False)
        bb.release_memory()


def _lora_config(bb: Backbone, adapter: str | None, r: int) -> Any:
    from .backbone import default_lora_config

    if adapter is not None:
        return dataclasses.replace(bb.model.peft_config[adapter], inference_mode=False)
    return default_lora_config(r=r, alpha=2 * r)


def _train_logps(trainer: _Trainer, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable log π*(y|x) through the adapter being trained."""
    bb = trainer.policy.backbone
    bb.model.set_adapter(trainer.name)
    with bb.training():
        return _forward_logps(bb, rows, trainer.name, train=True)


def _batch_order(n_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Index batches for `steps` steps, reshuffled every epoch."""
    rng, order, out = np.random.default_rng(seed), [], []
    for _ in range(steps):
        if len(order) < min(batch_size, n_items):
            order += rng.permutation(n_items).tolist()
        out.append(order[:batch_size])
        order = order[batch_size:]
    return out


# -- the methods --------------------------------------------------------------------------------------


def _finish(trainer: _Trainer | None, policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
            cfg: UpdateConfig, start: float, before: dict[str, dict[str, Any]], after_policy: Any = None,
            extra: dict[str, Any] | None = None) -> RewardUpdateResult:
    new = after_policy if after_policy is not None else trainer.trained  # type: ignore[union-attr]
    metrics: dict[str, Any] = {}
    for split, xs in (("train", train_xs[:cfg.eval_train]), ("heldout", eval_xs)):
        after = before[split] if new is policy else (
            _evaluate_bon(new, xs, cfg) if isinstance(new, BestOfN) else evaluate(new, policy, reward, xs, cfg))
        metrics |= {f"reward_{split}_before": before[split]["reward"], f"reward_{split}_after": after["reward"],
                    f"kl_{split}_after": after["kl"]}
        if split == "heldout":
            samples = pd.DataFrame({"x": xs, "before": before[split]["texts"], "after": after["texts"]})
    history = pd.DataFrame(trainer.history if trainer else [])
    metrics |= {"steps": len(history), "seconds": time.perf_counter() - start,
                "interrupted": bool(trainer and trainer.interrupted), **(extra or {})}
    info = {"method": cfg.method.value, **{k: (v.value if isinstance(v, enum.Enum) else v)
                                           for k, v in dataclasses.asdict(cfg).items() if k != "method"},
            "n_train": len(train_xs), "n_heldout": len(eval_xs), "adapter": getattr(new, "adapter", None)}
    return RewardUpdateResult(metrics=metrics, history=history, info=info, policy=new, samples=samples)


def _before(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str], cfg: UpdateConfig) -> dict[str, Any]:
    return {"train": evaluate(policy, policy, reward, train_xs[:cfg.eval_train], cfg),
            "heldout": evaluate(policy, policy, reward, eval_xs, cfg)}


def _evaluate_bon(bon: BestOfN, xs: list[str], cfg: UpdateConfig) -> dict[str, Any]:
    if not xs:
        return {"reward": float("nan"), "kl": float("nan"), "texts": []}
    groups, r = bon.sample(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           seed=cfg.seed + 10_000)
    return {"reward": float(r.max(1).mean()), "kl": bon.kl_bound,
            "texts": [g[int(i)] for g, i in zip(groups, r.argmax(1), strict=True)]}


def _run_best_of_n(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                   cfg: UpdateConfig) -> RewardUpdateResult:
    """No training: π* = BestOfN(π0, reward, N). KL after is the analytic bound log N − (N−1)/N."""
    start = time.perf_counter()
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    return _finish(None, policy, reward, train_xs, eval_xs, cfg, start, before, BestOfN(policy, reward, cfg.n),
                   extra={"kl_is_upper_bound": True})


def _run_rejection_sft(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                       cfg: UpdateConfig) -> RewardUpdateResult:
    """Best-of-N samples of π0 become SFT targets: min −(1/|y|) log π(y_best|x)."""
    start = time.perf_counter()
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    s = _sample(policy, reward, train_xs, cfg.n, cfg, cfg.seed)
    best = [s.rows[i][int(j)] for i, j in enumerate(s.rewards.argmax(1))]
    order = _batch_order(len(best), cfg.batch_size, cfg.steps, cfg.seed)
    trainer = _Trainer(policy, cfg)

    def step(k: int) -> tuple[torch.Tensor, dict[str, float]]:
        logp, n_tok = _train_logps(trainer, [best[i] for i in order[k - 1]])
        return -(logp / n_tok).mean(), {"sft_reward": float(s.rewards.max(1)[order[k - 1]].mean())}

    trainer.run(step)
    return _finish(trainer, policy, reward, train_xs, eval_xs, cfg, start, before,
                   extra={"best_of_n_reward": float(s.rewards.max(1).mean())})


@dataclass
class _Pairs:
    """Preference pairs (x, y+, y−) from the reward: best vs worst of N samples per input."""

    chosen: list[Row]
    rejected: list[Row]
    ref_chosen: torch.Tensor  # log π_ref(y+|x) [P]
    ref_rejected: torch.Tensor
    margin: np.ndarray  # r(y+) − r(y−)


def preference_pairs(policy: Policy, reward: Reward, xs: list[str], cfg: UpdateConfig) -> _Pairs:
    """Sample N per input from π0, pair the best with the worst; drop ties (no preference)."""
    s = _sample(policy, reward, xs, cfg.n, cfg, cfg.seed)
    hi, lo = s.rewards.argmax(1), s.rewards.argmin(1)
    keep = [i for i in range(len(xs)) if s.rewards[i, hi[i]] > s.rewards[i, lo[i]]]
    if not keep:
        raise InvalidArgumentError("every sample got the same reward: no preference pairs. Use more inputs, a "
                                   "larger n, or a reward that separates responses.")
    chosen, rejected = [s.rows[i][hi[i]] for i in keep], [s.rows[i][lo[i]] for i in keep]
    margin = np.array([s.rewards[i, hi[i]] - s.rewards[i, lo[i]] for i in keep])
    dev = policy.backbone.device  # the reference log-probs meet the trained ones on the model's device
    return _Pairs(chosen, rejected, torch.as_tensor(_logps(policy, chosen), device=dev).float(),
                  torch.as_tensor(_logps(policy, rejected), device=dev).float(), margin)


def dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float,
             loss_type: DPOLoss = DPOLoss.SIGMOID, *, label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair DPO loss from log π/π_ref of y+ and y− (TRL's formulas).

    sigmoid (Eq. 1/2 ⇒ Bradley–Terry on the implicit reward β log π/π_ref): −log σ(β[Δ+ − Δ−]); = ln 2 at π = π_ref.

    >>> float(dpo_loss(torch.zeros(1), torch.zeros(1), 0.1))  # doctest: +ELLIPSIS
    0.693...
    """
    delta = chosen_logratio - rejected_logratio
    if loss_type is DPOLoss.SIGMOID:
        return -F.logsigmoid(beta * delta)
    if loss_type is DPOLoss.HINGE:
        return torch.relu(1 - beta * delta)
    if loss_type is DPOLoss.ROBUST:
        eps = label_smoothing
        return (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    # IPO: token-averaged log-ratios, squared distance to 1/(2β)
    c = chosen_logratio / chosen_tokens.clamp(min=1) if chosen_tokens is not None else chosen_logratio
    r = rejected_logratio / rejected_tokens.clamp(min=1) if rejected_tokens is not None else rejected_logratio
    return (c - r - 1 / (2 * beta)) ** 2


def _run_dpo(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
             cfg: UpdateConfig) -> RewardUpdateResult:
    """DPO on (best, worst) of N pairs; reference = π0 (adapters disabled for a plain base)."""
    start = time.perf_counter()
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    pairs = preference_pairs(policy, reward, train_xs, cfg)
    order = _batch_order(len(pairs.chosen), cfg.batch_size, cfg.steps, cfg.seed)
    trainer = _Trainer(policy, cfg)

    def step(k: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = order[k - 1]
        logp, n_tok = _train_logps(trainer, [pairs.chosen[i] for i in idx] + [pairs.rejected[i] for i in idx])
        (lc, lr_), (nc, nr) = logp.chunk(2), n_tok.chunk(2)
        dc, dr = lc - pairs.ref_chosen[idx], lr_ - pairs.ref_rejected[idx]  # log π/π_ref of y+ and y−
        loss = dpo_loss(dc, dr, cfg.beta, cfg.loss_type, label_smoothing=cfg.label_smoothing,
                        chosen_tokens=nc, rejected_tokens=nr).mean()
        margins = (cfg.beta * (dc - dr)).detach()
        return loss, {"chosen_reward": float(cfg.beta * dc.detach().mean()),
                      "rejected_reward": float(cfg.beta * dr.detach().mean()),
                      "accuracy": float((margins > 0).float().mean()), "margin": float(margins.mean())}

    trainer.run(step)
    return _finish(trainer, policy, reward, train_xs, eval_xs, cfg, start, before,
                   extra={"pairs": len(pairs.chosen), "pair_reward_margin": float(pairs.margin.mean())})


def _run_kto(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
             cfg: UpdateConfig) -> RewardUpdateResult:
    """KTO: the best of N is desirable, the worst undesirable (unpaired). z0 = the batch's mean log-ratio, ≥ 0, detached.

    (TRL estimates z0 on mismatched (x, y') pairs; the batch's own completions save one forward per step.)
    """
    start = time.perf_counter()
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    pairs = preference_pairs(policy, reward, train_xs, cfg)
    rows, ref = pairs.chosen + pairs.rejected, torch.cat([pairs.ref_chosen, pairs.ref_rejected])
    label = torch.tensor([1.0] * len(pairs.chosen) + [0.0] * len(pairs.rejected), device=ref.device)
    order = _batch_order(len(rows), 2 * cfg.batch_size, cfg.steps, cfg.seed)
    trainer = _Trainer(policy, cfg)

    def step(k: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = order[k - 1]
        logratio = _train_logps(trainer, [rows[i] for i in idx])[0] - ref[idx]
        z0 = logratio.detach().mean().clamp(min=0)
        good = label[idx]
        losses = good * (1 - torch.sigmoid(cfg.beta * (logratio - z0))) + (1 - good) * (
            1 - torch.sigmoid(cfg.beta * (z0 - logratio)))
        return losses.mean(), {"kl_estimate": float(z0), "logratio_desirable": _masked_mean(logratio, good),
                               "logratio_undesirable": _masked_mean(logratio, 1 - good)}

    trainer.run(step)
    return _finish(trainer, policy, reward, train_xs, eval_xs, cfg, start, before, extra={"pairs": len(pairs.chosen)})


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values.detach() * mask).sum() / mask.sum()) if float(mask.sum()) else float("nan")


def _run_online(policy: Policy, reward: Reward, train_xs: list[str], eval_xs: list[str],
                cfg: UpdateConfig) -> RewardUpdateResult:
    """GRPO / RLOO: sample a group of n per input from the CURRENT policy, policy-gradient with a group baseline.

    GRPO: A = (r − mean_group) / (std_group + 1e-4); per-token loss −A·log π + β·k3 KL to π_ref (token mean).
    RLOO: r' = r − β·log π/π_ref (sequence); A = r' − mean of the other n−1; loss −A·log π(y|x).
    """
    start = time.perf_counter()
    before = _before(policy, reward, train_xs, eval_xs, cfg)
    order = _batch_order(len(train_xs), cfg.batch_size, cfg.steps, cfg.seed)
    trainer = _Trainer(policy, cfg)
    grpo = cfg.method is Method.GRPO

    def step(k: int) -> tuple[torch.Tensor, dict[str, float]]:
        xs = [train_xs[i] for i in order[k - 1]]
        s = _sample(trainer.trained, reward, xs, cfg.n, cfg, cfg.seed + 7919 * k)
        rows = [r for g in s.rows for r in g]
        logp, n_tok = _train_logps(trainer, rows)
        ref = torch.as_tensor(_logps(policy, rows), device=logp.device).float()
        r = torch.as_tensor(s.rewards, device=logp.device).float()  # [B, n]
        if grpo:
            adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
            loss = _grpo_loss(logp, ref, n_tok, adv, cfg.beta)
        else:
            shaped = r - cfg.beta * (logp.detach() - ref).view_as(r)  # KL in the reward (TRL's RLOO)
            adv = ((shaped - shaped.mean(1, keepdim=True)) * cfg.n / (cfg.n - 1)).flatten()
            loss = -(adv * logp).mean()
        return loss, {"reward": float(r.mean()), "kl_estimate": float((logp.detach() - ref).mean()),
                      "length": float(n_tok.mean())}

    trainer.run(step)
    return _finish(trainer, policy, reward, train_xs, eval_xs, cfg, start, before)


def _grpo_loss(logp: torch.Tensor, ref: torch.Tensor, n_tok: torch.Tensor, adv: torch.Tensor, beta: float) -> torch.Tensor:
    """Sequence-level form of GRPO's token-mean loss: (−A·log π + β·k3) / |y|, k3 = e^(ref−π) − (ref−π) − 1.

    k3 is applied to the sequence log-ratio spread evenly over tokens (exact per-token k3 needs per-token ref).
    """
    d = (ref - logp) / n_tok.clamp(min=1)  # per-token mean log-ratio ref − π
    k3 = torch.exp(d) - d - 1
    return (-(adv * logp) / n_tok.clamp(min=1) + beta * k3).mean()


_RUNNERS: dict[Method, Callable[..., RewardUpdateResult]] = {
    Method.BEST_OF_N: _run_best_of_n, Method.REJECTION_SFT: _run_rejection_sft, Method.DPO: _run_dpo,
    Method.KTO: _run_kto, Method.GRPO: _run_online, Method.RLOO: _run_online,
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
    for beta in tqdm(list(betas), desc="β sweep", leave=False):
        res = reward_to_update(policy, reward, inputs, method=method, beta=beta, **options)
        m = res.metrics
        rows.append({"beta": float(beta), "reward_before": m["reward_heldout_before"],
                     "reward_after": m["reward_heldout_after"], "kl_after": m["kl_heldout_after"],
                     "reward_train_after": m["reward_train_after"], "kl_train_after": m["kl_train_after"],
                     "seconds": m["seconds"], "adapter": res.info["adapter"]})
        if not keep_adapters and res.info["adapter"]:
            policy.backbone.delete_adapter(res.info["adapter"])
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
    from .rewards import Length

    return Length()


def self_improve(pi0: Policy, inputs: Sequence[str], rounds: int = 2, *, reward: Reward | Callable[..., Any],
                 ratio_beta: float = 1.0, method: str = "dpo", **options: Any) -> list[RewardUpdateResult]:
    """Iterative self-improvement π0 → π1 → π2 …: round 1 trains π1 on `reward`; round i ≥ 2 trains π_i,
    starting from π_{i−1}, on the log-ratio reward r(x,y) = β(log π_{i−1}(y|x) − log π_{i−2}(y|x)) (Eq. 4).

    Args:
        reward: the external reward of round 1 (also reported after every round as `external_reward_*`).
        ratio_beta: β of the log-ratio reward (tnb.update_to_reward).
        **options: as `reward_to_update` (steps, beta, n, lr, eval_inputs, ...).

    Returns:
        One result per round; result.metrics["external_reward_heldout"] is the round-1 reward of π_i.
    """
    from .update_to_reward import update_to_reward

    check.positive_int(rounds, "rounds")
    external, chain, results = as_reward(reward), [pi0], []
    for i in tqdm(range(1, rounds + 1), desc="self-improvement", leave=False):
        r_i = external if i == 1 else update_to_reward(chain[-1], chain[-2], beta=ratio_beta)
        res = reward_to_update(chain[-1], r_i, inputs, method=method, **options)
        cfg = UpdateConfig(method=method, **{k: v for k, v in options.items() if k in _CFG_FIELDS})
        _, eval_xs = split_inputs(inputs, options.get("eval_inputs"), cfg.holdout, cfg.seed)
        ev = evaluate(res.policy, pi0, external, eval_xs, cfg)
        res.metrics |= {"external_reward_heldout": ev["reward"], "kl_to_pi0_heldout": ev["kl"]}
        res.info["round"] = i
        chain.append(res.policy)
        results.append(res)
    return results


_CFG_FIELDS = {f.name for f in dataclasses.fields(UpdateConfig)}
