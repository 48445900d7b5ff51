"""Arrow 6 — reward model ⇒ in-context prompt (survey §7).

- `method="search"` (Eq. 16): max_z E_{x~D, y~π0(·|x,z)} r(x, y), gradient-free. Candidates come from the
  user, from the model itself (an OPRO-style meta-prompt that shows the best prompts so far with their
  scores) and from paraphrases of the best; each is scored by the reward on sampled outputs; the best
  are kept over rounds. The trajectory is the history; the best prompt is compared with no prompt on
  held-out inputs.
- `method="conditioned"` (Eq. 17, reward-conditioned SFT, Quark-style): sample, score, bin the rewards into
  quantile bins, render each bin as a prompt z(s) ("<reward: 0.50>") and LoRA-fine-tune
  max E log π(y | x, z(s(x,y))). The result is the prompting function z(s) plus the adapter; on held-out
  inputs the achieved reward should rise with the requested s (Spearman).
- `MetaReward` (Eq. 18): r̂(x, y, s) = −|s − r(x, y)|, a reward usable with arrow 1.

>>> res = reward_to_prompt(pi0, tnb.rewards.Sentiment(), inputs, method="search")  # doctest: +SKIP
>>> res.prompt, res.metrics["heldout_best"], res.metrics["heldout_no_prompt"]  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from . import _io
from . import _validate as check
from .chat import pair_batch
from .errors import InvalidArgumentError, ModelLoadError
from .policy import Policy
from .prompt import EMPTY, Prompt
from .results import PromptResult
from .rewards import Reward, as_reward
from .scoring import encode_rows, target_logprobs


class Method(enum.StrEnum):
    SEARCH = "search"
    CONDITIONED = "conditioned"


def reward_to_prompt(policy: Policy, reward: Reward | Callable[..., Any], inputs: Sequence[str], *,
                     method: str = "search", eval_inputs: Sequence[str] | None = None,
                     **options: Any) -> PromptResult:
    """Find a prompt (search, Eq. 16) or a prompting function + adapter (conditioned, Eq. 17) for `reward`.

    Args:
        policy: π0, a plain `Policy`.
        reward: the reward r(x, y) (a `Reward` or a function).
        inputs: training inputs x (scored while searching / sampled for fine-tuning).
        method: "search" or "conditioned".
        eval_inputs: held-out inputs for the final report; default: the last third of `inputs` (not used for training).
        **options: fields of `SearchConfig` or `ConditionedConfig`.

    Returns:
        A `SearchResult` or a `ConditionedResult` (both `PromptResult`s).
    """
    m = check.choice(method, Method, "method")
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a plain Policy (e.g. tnb.load_policy()), got {type(policy).__name__}.")
    train, test = _split(check.texts(inputs, "inputs"), eval_inputs)
    r = as_reward(reward)
    if m is Method.SEARCH:
        return _search(policy, r, train, test, SearchConfig(**options))
    return _conditioned(policy, r, train, test, ConditionedConfig(**options))


def _split(inputs: list[str], eval_inputs: Sequence[str] | None) -> tuple[list[str], list[str]]:
    if eval_inputs is not None:
        return inputs, check.texts(eval_inputs, "eval_inputs")
    if len(inputs) < 2:
        raise InvalidArgumentError("inputs needs >= 2 texts (a held-out third is kept), or pass eval_inputs=[...].")
    k = max(1, len(inputs) // 3)
    return inputs[:-k], inputs[-k:]


def _mean_reward(policy: Policy, reward: Reward, xs: list[str], *, samples: int, max_new_tokens: int,
                 temperature: float, seed: int) -> tuple[float, list[str], list[str]]:
    """E_{y~π(·|x)} r(x, y) estimated on `samples` outputs per input (returns the mean, xs, ys)."""
    out = policy.generate(xs, n=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    ys = out if samples == 1 else [y for group in out for y in group]
    rep = [x for x in xs for _ in range(samples)]
    return float(np.mean(reward(rep, ys))), rep, ys


# ------------------------------------------------------------------------------------------------
# search (Eq. 16)
# ------------------------------------------------------------------------------------------------
PROPOSER = Prompt(system="You write short system prompts that tell an AI assistant how to answer.")
PROPOSE = ("Here are system prompts for an assistant, with their scores (higher is better):\n{table}\n\n"
           "{goal}Write one new, different system prompt that would get a higher score. "
           "Reply with the system prompt only, in one sentence.")
PARAPHRASE = ("Rewrite this instruction in other words, keeping its meaning:\n\"{z}\"\n"
              "Reply with the new instruction only.")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """Options of prompt search (APE / OPRO style).

    Attributes:
        candidates: user-given prompts (str or Prompt) scored in round 0 next to "no prompt".
        goal: optional words for the proposer about what the reward likes (the reward stays a black box).
        rounds: proposal rounds after round 0.
        proposals: new prompts the model writes per round (from the scored list).
        mutations: paraphrases of the current best per round.
        keep: prompts shown to the proposer (the best so far).
        samples: outputs per input when scoring a candidate.
        max_new_tokens / temperature: sampling of the outputs being scored.
        propose_tokens: length limit of a proposed prompt, in tokens.
        seed: the same seed for every candidate (common random numbers: less noise between candidates).
    """

    candidates: tuple[Prompt | str, ...] = ()
    goal: str = ""
    rounds: int = 2
    proposals: int = 2
    mutations: int = 1
    keep: int = 4
    samples: int = 2
    max_new_tokens: int = 32
    temperature: float = 0.7
    propose_tokens: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(_as_prompt(c) for c in self.candidates))
        for name in ("samples", "max_new_tokens", "keep", "propose_tokens"):
            check.positive_int(getattr(self, name), name)
        for name in ("rounds", "proposals", "mutations"):
            check.positive_int(getattr(self, name), name, minimum=0)
        check.temperature(self.temperature)
        if not self.candidates and self.proposals == 0:
            raise InvalidArgumentError("give candidates=[...] or proposals >= 1: there is nothing to search over.")


def _as_prompt(z: Prompt | str) -> Prompt:
    if isinstance(z, Prompt):
        return z
    if isinstance(z, str) and z.strip():
        return Prompt(system=z.strip())
    raise InvalidArgumentError(f"a candidate prompt must be a non-empty str or a Prompt, got {z!r}.")


@dataclass
class SearchResult(PromptResult):
    """The best prompt found (`.prompt`); `history` holds every candidate: round, source, prompt, score."""

    kind: ClassVar[str] = "prompt_search"

    def plot(self) -> Any:
        """Best score so far per round (the optimisation trajectory)."""
        from .plots import trajectory

        per_round = self.history.groupby("round").agg(best=("best_so_far", "max"), mean=("score", "mean"))
        return trajectory(per_round.index.tolist(), per_round["best"].tolist(), mean=per_round["mean"].tolist(),
                          title=f"Prompt search ({self.info.get('reward', 'reward')})")


class _Search:
    """The state of one search: scored candidates, in order."""

    def __init__(self, policy: Policy, reward: Reward, train: list[str], cfg: SearchConfig) -> None:
        self.policy, self.reward, self.train, self.cfg = policy, reward, train, cfg
        self.rows: list[dict[str, Any]] = []
        self.scores: dict[Prompt, float] = {}

    def evaluate(self, z: Prompt, round_: int, source: str) -> None:
        if z in self.scores:
            return
        cfg = self.cfg
        mean, _, _ = _mean_reward(self.policy.with_prompt(z), self.reward, self.train, samples=cfg.samples,
                                  max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
        self.scores[z] = mean
        best = max(self.scores.values())
        self.rows.append({"step": len(self.rows), "round": round_, "source": source, "prompt": str(z) if not z.is_empty
                          else "", "score": mean, "best_so_far": best})

    def ranked(self) -> list[tuple[Prompt, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])

    def propose(self, round_: int) -> list[Prompt]:
        """New candidates written by the model: OPRO proposals and paraphrases of the best."""
        cfg = self.cfg
        top = [(z, s) for z, s in self.ranked() if not z.is_empty][: cfg.keep]
        table = "\n".join(f"- \"{z}\" (score {s:.2f})" for z, s in sorted(top, key=lambda kv: kv[1])) or "- (none yet)"
        goal = f"The score rewards: {cfg.goal}\n" if cfg.goal else ""
        asks = [PROPOSE.format(table=table, goal=goal)] * cfg.proposals
        if top:  # paraphrase the best prompt so far (none before the first non-empty one is scored)
            asks += [PARAPHRASE.format(z=top[0][0])] * cfg.mutations
        if not asks:
            return []
        texts = self.policy.with_prompt(PROPOSER).generate(asks, max_new_tokens=cfg.propose_tokens, temperature=0.9,
                                                           seed=cfg.seed + 1000 * (round_ + 1))
        return [Prompt(system=t) for t in map(_clean, texts) if t]


def _clean(text: str) -> str:
    """The first line of a proposal, without quotes or a 'System prompt:' label."""
    line = next((s for s in text.splitlines() if s.strip()), "").strip()
    line = re.sub(r"^(new |system )?(prompt|instruction)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip(" \"'`*")[:300]


def _search(policy: Policy, reward: Reward, train: list[str], test: list[str], cfg: SearchConfig) -> SearchResult:
    start = time.perf_counter()
    state = _Search(policy, reward, train, cfg)
    state.evaluate(EMPTY, 0, "none")
    for z in cfg.candidates:
        state.evaluate(z, 0, "user")
    for round_ in range(1, cfg.rounds + 1):
        for i, z in enumerate(state.propose(round_)):
            state.evaluate(z, round_, "model" if i < cfg.proposals else "paraphrase")
    best, best_train = state.ranked()[0]
    kw = dict(samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + 1)
    held_best = _mean_reward(policy.with_prompt(best), reward, test, **kw)[0]
    held_none = held_best if best.is_empty else _mean_reward(policy, reward, test, **kw)[0]
    metrics = {"train_best": best_train, "train_no_prompt": state.scores[EMPTY], "heldout_best": held_best,
               "heldout_no_prompt": held_none, "heldout_gain": held_best - held_none,
               "candidates": len(state.scores), "seconds": time.perf_counter() - start}
    info = {"method": "search", "reward": getattr(reward, "name", "reward"), "n_train": len(train),
            "n_heldout": len(test), **{k: v for k, v in asdict(cfg).items() if k != "candidates"},
            "user_candidates": [str(z) for z in cfg.candidates]}
    return SearchResult(metrics=metrics, history=pd.DataFrame(state.rows), info=info, prompt=best)


# ------------------------------------------------------------------------------------------------
# reward-conditioned fine-tuning (Eq. 17)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PromptingFunction:
    """z(s): the prompt that asks for reward level s (rendered with `template` in the system turn).

    Attributes:
        template: text with a `{s}` field, e.g. "<reward: {s}>".
        levels: the trained levels s (bin values in [0, 1]); `__call__` accepts any s.
        edges: the reward quantiles that separate the bins (for reading s back as a reward).
    """

    template: str = "<reward: {s}>"
    levels: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if "{s}" not in self.template:
            raise InvalidArgumentError(f"template must contain '{{s}}', got {self.template!r} (e.g. '<reward: {{s}}>').")

    def __call__(self, s: float) -> Prompt:
        return Prompt(system=self.template.format(s=f"{float(s):.2f}"))

    def level_of(self, rewards: np.ndarray) -> np.ndarray:
        """The level s of each reward value (its quantile bin)."""
        return np.asarray(self.levels)[np.searchsorted(np.asarray(self.edges), rewards, side="right")]


@dataclass(frozen=True, kw_only=True)
class ConditionedConfig:
    """Options of reward-conditioned SFT.

    Attributes:
        bins: quantile bins of the sampled rewards (Quark); the levels are 0, 1/(bins−1), ..., 1.
        template: how z(s) is written (a `{s}` field).
        samples: outputs sampled per training input.
        max_new_tokens / temperature: sampling, for training data and for the held-out check.
        steps / batch_size / lr / lora_r: the LoRA fine-tune.
        eval_samples: outputs per held-out input and level.
        baseline: also measure π0 (no adapter) prompted with z(s), to show what training adds.
        seed: sampling and training seed.
    """

    bins: int = 3
    template: str = "<reward: {s}>"
    samples: int = 4
    max_new_tokens: int = 24
    temperature: float = 1.0
    steps: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    lora_r: int = 8
    eval_samples: int = 2
    baseline: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check.positive_int(self.bins, "bins", minimum=2)
        for name in ("samples", "max_new_tokens", "steps", "batch_size", "lora_r", "eval_samples"):
            check.positive_int(getattr(self, name), name)
        check.finite_positive(self.lr, "lr")
        check.temperature(self.temperature)
        PromptingFunction(template=self.template)


@dataclass
class ConditionedResult(PromptResult):
    """A prompting function z(s) (`.prompting`) and the adapter trained to follow it (`.policy`).

    `.prompt` is z(1.0), the highest level. Save writes prompt.json, prompting.json and adapter/;
    load with `ConditionedResult.load(dir, base=pi0)`.
    """

    kind: ClassVar[str] = "prompt_conditioned"
    policy: Any = None
    prompting: PromptingFunction = field(default_factory=PromptingFunction)

    def achieved(self, prefix: str = "") -> list[float]:
        """Held-out mean reward per level (prefix "base_" for the untuned π0, when measured)."""
        return [self.metrics.get(f"{prefix}heldout_reward_at_{s:.2f}", math.nan) for s in self.prompting.levels]

    def plot(self) -> Any:
        """Achieved held-out reward against the requested level s."""
        from .plots import control_curve

        base = self.achieved("base_") if "base_spearman" in self.metrics else None
        return control_curve(list(self.prompting.levels), self.achieved(), baseline=base,
                             title=f"z(s) control, Spearman {self.metrics.get('spearman', math.nan):.2f}")

    def policy_for(self, s: float) -> Policy:
        """π(·|x, z(s)) with the trained adapter."""
        return self.policy.with_prompt(self.prompting(s))

    def _save_vertex(self, folder: Path) -> None:
        super()._save_vertex(folder)
        _io.write_json(folder / "prompting.json", {"kind": "prompting", **asdict(self.prompting)})
        if self.policy is not None and self.policy.adapter is not None:
            self.policy.backbone.save_adapter(self.policy.adapter, folder / "adapter")

    def _load_vertex(self, folder: Path, base: Any = None, **kw: Any) -> None:
        super()._load_vertex(folder, **kw)
        data = _io.read_json(folder / "prompting.json")
        self.prompting = PromptingFunction(template=data["template"], levels=tuple(data["levels"]),
                                           edges=tuple(data["edges"]))
        if (folder / "adapter").is_dir():
            if base is None:
                raise ModelLoadError("this result holds an adapter: load it with ConditionedResult.load(dir, base=pi0).")
            self.policy = base.with_adapter(folder / "adapter")


def _conditioned(policy: Policy, reward: Reward, train: list[str], test: list[str],
                 cfg: ConditionedConfig) -> ConditionedResult:
    start = time.perf_counter()
    _, xs, ys = _mean_reward(policy, reward, train, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, seed=cfg.seed)
    r = reward(xs, ys)
    zfun = _bin(r, cfg)
    levels = zfun.level_of(r)
    name, rows = _fit(policy, [zfun(s) for s in levels], xs, ys, cfg)
    tuned = policy.with_adapter(name)
    metrics = {"train_reward_mean": float(r.mean()), "train_seconds": time.perf_counter() - start,
               **_control(tuned, reward, zfun, test, cfg, "")}
    if cfg.baseline:
        metrics.update(_control(policy, reward, zfun, test, cfg, "base_"))
    metrics["seconds"] = time.perf_counter() - start
    info = {"method": "conditioned", "reward": getattr(reward, "name", "reward"), "adapter": name,
            "n_train": len(train), "n_heldout": len(test), **asdict(cfg)}
    return ConditionedResult(metrics=metrics, history=pd.DataFrame(rows), info=info, prompt=zfun(1.0),
                             policy=tuned, prompting=zfun)


def _bin(r: np.ndarray, cfg: ConditionedConfig) -> PromptingFunction:
    """Quark: quantile bins of the sampled rewards, levels evenly spaced in [0, 1]."""
    edges = np.unique(np.quantile(r, np.linspace(0, 1, cfg.bins + 1)[1:-1]))
    levels = np.linspace(0, 1, len(edges) + 1)
    return PromptingFunction(template=cfg.template, levels=tuple(levels.round(4).tolist()), edges=tuple(edges.tolist()))


def _fit(policy: Policy, zs: list[Prompt], xs: list[str], ys: list[str],
         cfg: ConditionedConfig) -> tuple[str, list[dict[str, float]]]:
    """Eq. 17: max E log π(y | x, z(s)) with a new LoRA adapter; only its weights change."""
    from .backbone import default_lora_config

    bb = policy.backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation notice inside PEFT
        name = bb.add_adapter(bb.unique_adapter_name("reward_conditioned"), default_lora_config(r=cfg.lora_r))
    rows_ = [encode_rows(policy.with_prompt(z), [x], [y], truncate=True)[0] for z, x, y in zip(zs, xs, ys, strict=True)]
    model = bb.model
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    gen, history = torch.Generator().manual_seed(cfg.seed), []
    model.train()
    try:
        for step in range(cfg.steps):
            idx = torch.randint(len(rows_), (min(cfg.batch_size, len(rows_)),), generator=gen).tolist()
            batch = pair_batch([rows_[i] for i in idx], bb.pad_id).to(bb.device)
            pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits
            lp = target_logprobs(logits.float(), batch)
            loss = -lp.sum() / batch.response_mask.sum()  # Eq. 17: − log π(y | x, z(s)) per token
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step, "loss": loss.item()})
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    return name, history


def _control(policy: Policy, reward: Reward, zfun: PromptingFunction, test: list[str], cfg: ConditionedConfig,
             prefix: str) -> dict[str, float]:
    """Held-out: the reward achieved when asking for each level s, and Spearman(s, reward)."""
    from scipy.stats import spearmanr

    asked, got, out = [], [], {}
    for s in zfun.levels:
        _, xs, ys = _mean_reward(policy.with_prompt(zfun(s)), reward, test, samples=cfg.eval_samples,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + 7)
        r = reward(xs, ys)
        out[f"{prefix}heldout_reward_at_{s:.2f}"] = float(r.mean())
        asked += [s] * len(r)
        got += r.tolist()
    rho = spearmanr(asked, got).statistic if np.ptp(got) > 0 else math.nan
    out[f"{prefix}spearman"] = float(rho)
    return out


# ------------------------------------------------------------------------------------------------
# the meta-reward (Eq. 18)
# ------------------------------------------------------------------------------------------------
class MetaReward(Reward):
    """Eq. 18: r̂(x, y, s) = −|s − r(x, y)|, with the target s given per input x.

    Args:
        reward: the reward r being controlled.
        target: s — one number for every x, a mapping {x: s}, or a function x -> s.

    >>> MetaReward(tnb.rewards.Length(), 3.0)(["q"], ["one two three four"])  # doctest: +SKIP
    array([-1.])
    """

    name = "meta"

    def __init__(self, reward: Reward | Callable[..., Any], target: float | Mapping[str, float] | Callable[[str], float]):
        self.reward = as_reward(reward)
        if not (isinstance(target, (int, float, Mapping)) or callable(target)) or isinstance(target, bool):
            raise InvalidArgumentError("target must be a number, a mapping {x: s} or a function x -> s.")
        self.target = target

    def targets(self, xs: list[str]) -> np.ndarray:
        t = self.target
        if isinstance(t, (int, float)):
            return np.full(len(xs), float(t))
        if isinstance(t, Mapping):
            missing = [x for x in xs if x not in t]
            if missing:
                raise InvalidArgumentError(f"no target s for input {missing[0]!r}: add it to the target mapping.")
            return np.array([float(t[x]) for x in xs])
        return np.array([float(t(x)) for x in xs])

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        return -np.abs(self.targets(xs) - self.reward(xs, ys))  # Eq. 18

    def __repr__(self) -> str:
        return f"MetaReward({self.reward!r}, target={self.target!r})"
