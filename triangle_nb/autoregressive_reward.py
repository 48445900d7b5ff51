"""A token-level reward learned from sequence-level preferences: the autoregressive reward model (survey §3.2).

"We can deliberately train LLMs using sequence-level supervision to attain process-level reward models" (§3.2).
GenARM (Xu et al., ICLR 2025) does exactly that: the reward is a language model π_r whose token log-probs ARE the
reward,

    r(x, y) = β_r · log π_r(y|x) = Σ_t β_r · log π_r(y_t | x, y_<t)        (a token-level reward, summed)

trained on preference pairs (x, y⁺, y⁻) with the reference-free DPO-form (Bradley–Terry) loss

    L = −log σ( β_r · (log π_r(y⁺|x) − log π_r(y⁻|x)) ).

π_r is a new LoRA adapter on the shared base; it trains through the one training engine (`triangle_nb.training`:
checkpoints, resume, callbacks). Because the reward decomposes over tokens, Eq. 2's optimum π0·exp(r/β′) is, per
token, the Eq. 7 sum

    log π(y_t|·) ∝ log π0(y_t|·) + (1/β) · log π_r(y_t|·)        (β = β′/β_r)

which `pi0 + (1 / beta) * arm.policy` decodes: one base row and one adapter row per step, in ONE batched forward —
where reward-guided decoding (`tnb.reward_guided`, ARGS) calls its reward on top_k candidates at every step.

>>> arm = tnb.train_reward_model(pi0, preferences=ds, method="autoregressive")   # doctest: +SKIP
>>> pol = pi0 + (1 / 0.5) * arm.policy                                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from . import _validate as check
from . import training
from ._bakery import bakeable
from ._keys import base_identity
from .chat import pair_batch
from .errors import AdapterMismatchError, InvalidArgumentError
from .log_ratio import TokenScores
from .options import keyword_beta, keyword_only
from .policy import Composition, Policy
from .results import UpdateResult
from .rewards import Reward, as_reward
from .scoring import encode_rows, token_logprobs
from .splits import split_indices

__all__ = ["ARMConfig", "AutoregressiveReward", "CHEERFUL", "GLOOMY", "HELDOUT_INPUTS", "TRAIN_INPUTS",
           "preference_rows", "reference_free_loss", "train_autoregressive_reward"]

COLUMNS = ("prompt", "chosen", "rejected")  # TRL's preference format


@dataclass(frozen=True, kw_only=True)
class ARMConfig(training.TrainConfig):
    """Settings of the autoregressive reward model (the shared training fields are `TrainConfig`'s: steps,
    batch_size = preference pairs per step, learning_rate, lora_r, lora_targets, seed, output_dir,
    resume_from_checkpoint, callbacks, training_args).

    Args:
        beta_r: β_r > 0 of the loss −log σ(β_r (log π_r(y⁺|x) − log π_r(y⁻|x))) and of the reward β_r log π_r.
        holdout: share of the pairs held out (seeded) for the held-out preference accuracy.
        end_of_turn: also score the end-of-turn token closing y (a complete answer).
        samples: with `reward=` and `inputs=` instead of a dataset: responses sampled per input (best vs worst).
        max_new_tokens: length of those samples.
        temperature: sampling temperature of those samples.
    """

    steps: int = 30
    beta_r: float = 0.1
    holdout: float = 0.25
    end_of_turn: bool = True
    samples: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "beta_r", check.finite_positive(self.beta_r, "beta_r"))
        object.__setattr__(self, "end_of_turn", check.flag(self.end_of_turn, "end_of_turn"))
        check.positive_int(self.samples, "samples", minimum=2)
        check.positive_int(self.max_new_tokens, "max_new_tokens")
        check.temperature(self.temperature)
        if not 0.0 <= self.holdout < 1.0:
            raise InvalidArgumentError(f"holdout must be in [0, 1), got {self.holdout!r} (0.25 holds out a quarter).")


# -- the reward ---------------------------------------------------------------------------------------------------
@dataclass(repr=False, eq=False)
class AutoregressiveReward(UpdateResult, Reward):
    """r(x, y) = β_r · Σ_t log π_r(y_t | x, y_<t): a Reward (call it, `token_scores`) and a training result
    (`metrics`, `history`, `samples`, `save` / `tnb.load(dir, base=pi0)`).

    Attributes:
        policy: π_r, the base with the reward adapter (a Policy: `pi0 + (1 / beta) * arm.policy` decodes Eq. 7).
        beta_r: the reward's scale β_r (the loss's β_r).
        end_of_turn: whether the end-of-turn token closing y is scored.
    """

    kind: ClassVar[str] = "autoregressive_reward"
    name = "autoregressive"
    beta_r: float = 0.1
    end_of_turn: bool = True

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        return self.beta_r * self._logprobs(xs, ys).sum  # Σ_t β_r log π_r(y_t | x, y_<t)

    def token_scores(self, x: str, y: str) -> TokenScores:
        """β_r · log π_r(y_t | x, y_<t) for every token of y (the heatmap of arrow 2); they sum to r(x, y)."""
        return self.token_scores_batch([x], [y])[0]

    def token_scores_batch(self, xs: Sequence[str], ys: Sequence[str]) -> list[TokenScores]:
        """`token_scores` for many pairs in one batched pass."""
        lp = self._logprobs(*check.pairs(xs, ys))
        return [TokenScores(list(t), self.beta_r * p) for t, p in zip(lp.tokens, lp.per_token, strict=True)]

    def _logprobs(self, xs: list[str], ys: list[str]) -> Any:
        return self.policy.logprobs(xs, ys, end_of_turn=self.end_of_turn)  # the one scoring path (scoring.py)

    @keyword_beta
    def guide(self, base: Policy, *, beta: float) -> Composition:
        """π0 guided by this reward (Eq. 7): `base + (1 / beta) * self.policy`, after checking that `base` is the model
        π_r was trained on (the algebra itself also combines models of one vocabulary across bases, on purpose)."""
        beta = check.finite_positive(beta, "beta")
        if not isinstance(base, Policy):
            raise InvalidArgumentError(f"base must be a Policy (tnb.load_policy()), got {type(base).__name__}.")
        check_same_base(self.info.get("base"), base, "base", "this autoregressive reward model")
        return base + (1.0 / beta) * self.policy

    def bake_identity(self) -> dict[str, Any]:
        return {"reward": "AutoregressiveReward", "policy": self.policy, "beta_r": self.beta_r,
                "end_of_turn": self.end_of_turn}

    def config(self) -> dict[str, Any]:
        return {"beta_r": self.beta_r, "end_of_turn": self.end_of_turn}

    def _load_vertex(self, folder: Path, base: Any = None, **kwargs: Any) -> None:
        if base is not None:
            check_same_base(self.info.get("base"), base, "base", f"the reward model in {str(folder)!r}")
        super()._load_vertex(folder, base=base, **kwargs)
        self.beta_r = check.finite_positive(self.info.get("beta_r", 0.1), "beta_r")
        self.end_of_turn = bool(self.info.get("end_of_turn", True))


def check_same_base(saved: Any, base: Any, name: str, what: str) -> None:
    """An AdapterMismatchError naming `name` when `base` is not the model `saved` (a base identity) describes."""
    if not isinstance(base, Policy):
        raise InvalidArgumentError(f"{name} must be a Policy (tnb.load_policy()), got {type(base).__name__}.")
    mine = base_identity(base.backbone)
    if saved is not None and saved != mine:
        raise AdapterMismatchError(
            f"{name}: {what} was trained on base model {saved.get('name')!r} (weights digest "
            f"{str(saved.get('weights'))[:12]}), but {name} is {mine['name']!r} ({mine['weights'][:12]}): pass the "
            "model it was trained on (tnb.load_policy() of that model), or train it again on this one.")


# -- the loss --------------------------------------------------------------------------------------------------
@keyword_only("beta_r")
def reference_free_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, *, beta_r: float) -> torch.Tensor:
    """GenARM's loss per pair: −log σ(β_r (log π_r(y⁺|x) − log π_r(y⁻|x))) (no reference model)."""
    return -torch.nn.functional.logsigmoid(beta_r * (chosen_logp - rejected_logp))


def _sequence_logps(bb: Any, adapter: str, rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Differentiable log π_r(y|x) per row through `adapter` (`scoring.token_logprobs`, the one log π path)."""
    return token_logprobs(bb, pair_batch(rows, bb.pad_id), [adapter] * len(rows)).sum(-1)  # [B]


def _objective(bb: Any, adapter: str, chosen: list[Any], rejected: list[Any], beta_r: float) -> training.LossFn:
    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        with bb.training():
            lp = _sequence_logps(bb, adapter, [chosen[i] for i in idx] + [rejected[i] for i in idx])
        lc, lr = lp.chunk(2)
        margin = (beta_r * (lc - lr)).detach()
        return reference_free_loss(lc, lr, beta_r=beta_r).mean(), {"accuracy": float((margin > 0).float().mean()),
                                                             "margin": float(margin.mean())}
    return loss


# -- the data --------------------------------------------------------------------------------------------------
def preference_rows(data: Any) -> dict[str, list[str]]:
    """The prompt / chosen / rejected columns of a preference dataset (datasets.Dataset, DataFrame or dict of lists),
    checked: every column present, every row non-empty text."""
    if isinstance(data, pd.DataFrame):
        data = {c: data[c].tolist() for c in data.columns}
    names = list(getattr(data, "column_names", None) or (data.keys() if isinstance(data, dict) else []))
    if not names:
        raise InvalidArgumentError(f"preferences must be a datasets.Dataset (or a dict of columns) with prompt/chosen/"
                                   f"rejected columns (TRL's format), got {type(data).__name__}.")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InvalidArgumentError(f"preferences lacks column(s) {missing} (has {names}): pass TRL's prompt/chosen/"
                                   "rejected columns, e.g. tnb.contrastive_pairs(pi0, z_pos, z_neg, inputs).")
    table = {c: check.texts(list(data[c]), f"preferences[{c!r}]", allow_empty=True) for c in COLUMNS}
    if len(table["prompt"]) < 2:
        raise InvalidArgumentError(f"preferences has {len(table['prompt'])} row(s): pass at least two pairs (one is "
                                   "held out for the accuracy).")
    for c in ("chosen", "rejected"):
        empty = [i for i, y in enumerate(table[c]) if not y.strip()]
        if empty:
            raise InvalidArgumentError(f"preferences[{c!r}] is empty in row(s) {empty[:5]}: every pair needs a non-empty "
                                       f"{c} response; drop those rows (ds.filter(lambda r: r[{c!r}].strip())).")
    return table


def _sampled_rows(policy: Policy, reward: Any, inputs: Sequence[str], cfg: ARMConfig) -> dict[str, list[str]]:
    """Preference pairs from a reward: `samples` responses per input from the policy, the best vs the worst (ties
    dropped)."""
    r, xs = as_reward(reward), check.texts(inputs, "inputs")
    ys = policy.generate(xs, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                         seed=cfg.seed)
    scores = r([x for x in xs for _ in range(cfg.samples)], [y for group in ys for y in group])
    scores = scores.reshape(len(xs), cfg.samples)
    keep = [i for i in range(len(xs)) if scores[i].max() > scores[i].min()]
    return {"prompt": [xs[i] for i in keep], "chosen": [ys[i][int(scores[i].argmax())] for i in keep],
            "rejected": [ys[i][int(scores[i].argmin())] for i in keep]}


def _table(policy: Policy, preferences: Any, reward: Any, inputs: Any, cfg: ARMConfig) -> dict[str, list[str]]:
    if preferences is not None and (reward is not None or inputs is not None):
        raise InvalidArgumentError("pass either preferences=dataset, or reward= and inputs= (best vs worst samples), "
                                   "not both.")
    if preferences is not None:
        return preference_rows(preferences)
    if reward is None or inputs is None:
        raise InvalidArgumentError("the autoregressive reward model needs preferences=dataset (prompt/chosen/rejected), "
                                   "or reward= and inputs= to sample best vs worst pairs from the policy.")
    return preference_rows(_sampled_rows(policy, reward, inputs, cfg))


# -- training --------------------------------------------------------------------------------------------------
@bakeable("train_autoregressive_reward", configs=("ARMConfig",))
def train_autoregressive_reward(policy: Policy, preferences: Any = None, *, reward: Any = None,
                                inputs: Sequence[str] | None = None, config: ARMConfig | None = None,
                                callback: Callable[[dict[str, Any]], None] | None = None,
                                **overrides: Any) -> AutoregressiveReward:
    """Train π_r (a new LoRA adapter on the policy's base) with GenARM's reference-free loss; the reward is
    β_r log π_r. Also `tnb.train_reward_model(pi0, preferences=ds, method="autoregressive")`.

    Args:
        policy: π0 (its adapter, if any, is π_r's starting point; its prompt stays in π_r's context).
        preferences: TRL-format pairs: prompt / chosen / rejected (a datasets.Dataset, DataFrame or dict of lists).
        reward, inputs: instead of `preferences`: pairs of the best and worst of `samples` responses per input.
        config: an ARMConfig; keyword `overrides` replace its fields (beta_r, steps, learning_rate, holdout, ...).
        callback: called with each history row.

    Returns:
        An `AutoregressiveReward`: a Reward with `token_scores`, `.policy` = π_r, `guide(pi0, beta)`; metrics
        preference_accuracy_heldout_{before,after} (sequence score of y⁺ above y⁻; before = π0's own log-probs),
        n_train, n_heldout, steps, seconds; the Trainer's history; held-out pairs with their scores as `samples`.
    """
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a Policy (tnb.load_policy()), got {type(policy).__name__}: the "
                                   "autoregressive reward model is a LoRA adapter on that model.")
    cfg = training.with_callback(training.build_config(ARMConfig, overrides, base=config), callback)
    t0 = time.perf_counter()
    table = _table(policy, preferences, reward, inputs, cfg)
    train_idx, held_idx = split_indices(len(table["prompt"]), cfg.holdout, cfg.seed)
    chosen = encode_rows(policy, [table["prompt"][i] for i in train_idx], [table["chosen"][i] for i in train_idx],
                         end_of_turn=cfg.end_of_turn, truncate=True)
    rejected = encode_rows(policy, [table["prompt"][i] for i in train_idx], [table["rejected"][i] for i in train_idx],
                           end_of_turn=cfg.end_of_turn, truncate=True)
    bb = policy.backbone
    lora = dataclasses.replace(bb.model.peft_config[policy.adapter], inference_mode=False) if policy.adapter else \
        _lora(cfg)
    name = training.new_adapter(bb, "arm", lora, seed=cfg.seed, copy_from=policy.adapter)
    job = training.Trainable(name="autoregressive_reward", loss=_objective(bb, name, chosen, rejected, cfg.beta_r),
                             n_items=len(chosen), backbone=bb, adapter=name)
    run = training.train(job, cfg, batch_size=min(cfg.batch_size, len(chosen)), desc=f"ARM (β_r={cfg.beta_r:g})")
    arm = AutoregressiveReward(policy=dataclasses.replace(policy, adapter=name), beta_r=cfg.beta_r,
                               end_of_turn=cfg.end_of_turn, history=run.history)
    held = {k: [v[i] for i in held_idx] for k, v in table.items()}
    arm.metrics, arm.samples = _metrics(policy, arm, held, len(train_idx), run, t0)
    arm.info = {"method": "autoregressive", **cfg.settings(), "adapter": "arm", "base": base_identity(bb)}
    return arm


def _lora(cfg: ARMConfig) -> Any:
    from .backbone import default_lora_config

    return default_lora_config(r=cfg.lora_r, targets=cfg.lora_targets)


def _metrics(policy: Policy, arm: AutoregressiveReward, held: dict[str, list[str]], n_train: int,
             run: training.Run, t0: float) -> tuple[dict[str, Any], pd.DataFrame]:
    """Held-out preference accuracy of the sequence score before (π0's own log-probs: π_r at step 0) and after."""
    metrics: dict[str, Any] = {"n_train": n_train, "n_heldout": len(held["prompt"]), **run.metrics()}
    if not held["prompt"]:
        return metrics | {"seconds": time.perf_counter() - t0}, pd.DataFrame()
    xs = held["prompt"] + held["prompt"]
    ys = held["chosen"] + held["rejected"]
    before = arm.beta_r * policy.logprobs(xs, ys, end_of_turn=arm.end_of_turn).sum
    after = arm(xs, ys)
    n = len(held["prompt"])
    acc = {w: float(np.mean((s[:n] > s[n:]) + 0.5 * (s[:n] == s[n:]))) for w, s in (("before", before), ("after", after))}
    samples = pd.DataFrame({**held, "score_chosen_before": before[:n], "score_rejected_before": before[n:],
                            "score_chosen_after": after[:n], "score_rejected_after": after[n:]})
    return metrics | {"preference_accuracy_heldout_before": acc["before"],
                      "preference_accuracy_heldout_after": acc["after"],
                      "seconds": time.perf_counter() - t0}, samples


# -- a ready-made task: a sentiment ARM from contrastive pairs (RLCD), measured on held-out neutral inputs --------
CHEERFUL = "You are a cheerful, upbeat assistant. You love everything and always sound happy and positive."
GLOOMY = "You are a gloomy, pessimistic assistant. Everything is sad, bleak and disappointing to you."
TRAIN_INPUTS = (
    "Describe a typical Monday morning.", "Tell me about the weather today.", "What do you think of public transport?",
    "Describe your neighbourhood.", "Write a sentence about an old house.", "Tell me about a rainy afternoon.",
    "What is a train station like?", "Describe a long queue at a shop.", "What is it like to wait for a bus?",
    "Describe a kitchen.", "Tell me about a city at night.", "What happens at a dentist appointment?",
    "Describe a school classroom.", "Tell me about doing laundry.", "What is a supermarket like on Saturday?",
    "Describe a walk in the park.", "Tell me about a library.", "What is it like to move house?",
    "Describe a hospital waiting room.", "Tell me about a traffic jam.", "What do you think of winter?",
    "Describe an empty beach in November.", "Tell me about a football match.", "What is a small village like?",
)
HELDOUT_INPUTS = (  # never trained on; the same eight as benchmarks/guided.py (ARGS's numbers)
    "Describe a typical Tuesday.", "Tell me about the history of bricks.", "Explain how a refrigerator works.",
    "Describe the weather in autumn.", "How do trains run on time?", "Write two sentences about a parking lot.",
    "Summarise what an office printer does.", "What happens at a post office?",
)
