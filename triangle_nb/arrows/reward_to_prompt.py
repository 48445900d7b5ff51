"""Arrow 6 — reward model ⇒ in-context prompt (survey §7).

- `method="search"` (Eq. 16): max_z E_{x~D, y~π0(·|x,z)} r(x, y), gradient-free. Candidates come from the
  user, from the model itself (an OPRO-style meta-prompt that shows the best prompts so far with their
  scores) and from paraphrases of the best; each is scored by the reward on sampled outputs; the best
  are kept over rounds. The trajectory is the history; the best prompt is compared with no prompt on
  held-out inputs.
- `method="conditioned"` (Eq. 17, reward-conditioned SFT, Quark-style): sample, score, bin the rewards
  (each input's samples ranked among themselves, or Quark's pooled quantiles), tag each answer with its
  level z(s) ("<reward: 0.50>", a learned soft prompt that starts at that text, or the text itself) and
  LoRA-fine-tune max E log π(y | x, z(s(x,y))). Several rewards give one tag each (RiC-style control).
  The result is the prompting function z(s) plus the adapter; on held-out inputs the achieved reward
  should rise with the requested s (Spearman). `guidance=γ` uses z(s) through Eq. 7 against the mirrored tag,
  (1+γ)·log π(·|x,z(s)) − γ·log π(·|x,z(1−s)) (classifier-free guidance on the tag), which amplifies a weak
  learned control: on an H100 (768 samples, 120 steps) Spearman 0.20 at γ=0 and 0.55 at γ=2 (notebook 06).
- `MetaReward` (Eq. 18): r̂(x, y, s) = −|s − r(x, y)|, a reward usable with arrow 1.

>>> res = reward_to_prompt(pi0, tnb.rewards.Sentiment(), inputs, method="search")  # doctest: +SKIP
>>> res.prompt, res.metrics["reward_heldout_after"], res.metrics["reward_heldout_before"]  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from .. import _io, training
from .. import _validate as check
from .._bakery import bakeable
from ..errors import InvalidArgumentError, ModelLoadError
from ..policy import BasePolicy, Composition, Policy
from ..prompt import EMPTY, Prompt
from ..prompt_search import Candidate, PromptSearch, Proposer, SearchOptions, proposed
from ..proposals import contrast_words, demonstrations, style_instruction
from ..results import PromptResult
from ..rewards import Reward, as_reward
from ..scoring import encode_rows
from ..soft_prompt import SoftPrompt
from ..splits import split_inputs, split_name


class PromptMethod(enum.StrEnum):
    SEARCH = "search"
    CONDITIONED = "conditioned"


@bakeable("reward_to_prompt", configs=("SearchConfig", "ConditionedConfig"))
def reward_to_prompt(policy: Policy, reward: Reward | Callable[..., Any] | Mapping[str, Any], inputs: Sequence[str], *,
                     method: str = "search", eval_inputs: Sequence[str] | None = None,
                     config: SearchConfig | ConditionedConfig | None = None,
                     callback: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> PromptResult:
    """Find a prompt (search, Eq. 16) or a prompting function + adapter (conditioned, Eq. 17) for `reward`.

    Args:
        policy: π0, a plain `Policy`.
        reward: the reward r(x, y) (a `Reward` or a function); for "conditioned", also a {name: reward}
            mapping: z(s) then carries one tag per reward and the adapter learns to follow them jointly (RiC).
        inputs: training inputs x (scored while searching / sampled for fine-tuning).
        method: "search" or "conditioned".
        eval_inputs: held-out inputs for the final report; default: a seeded `holdout` share of `inputs`.
        config: all settings at once (a `SearchConfig` or a `ConditionedConfig`); keywords override its fields.
        callback: called with each history row (a scored candidate, or a training step).
        **options: fields of `SearchConfig` or `ConditionedConfig` (holdout, samples, rounds, proposals, ...).

    Returns:
        A `SearchResult` or a `ConditionedResult` (both `PromptResult`s).
    """
    m = check.choice(method, PromptMethod, "method")
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a plain Policy (e.g. tnb.load_policy()), got {type(policy).__name__}.")
    cfg = training.build_config(ConditionedConfig if m is PromptMethod.CONDITIONED else SearchConfig, options,
                                base=config)
    train, test = split_inputs(inputs, eval_inputs, cfg.holdout, cfg.seed)
    if m is PromptMethod.CONDITIONED:
        return _conditioned(policy, _rewards(reward), train, test, training.with_callback(cfg, callback))
    if isinstance(reward, Mapping):
        raise InvalidArgumentError("a {name: reward} mapping is for method='conditioned' (multi-reward control); "
                                   "for search, combine the rewards into one (e.g. a weighted sum in a function).")
    return _search(policy, as_reward(reward), train, test, cfg, callback)


def _sample(policy: BasePolicy, xs: list[str], *, samples: int, max_new_tokens: int, temperature: float,
            seed: int) -> tuple[list[str], list[str]]:
    """`samples` outputs y ~ π(·|x) per input, x-major: (xs repeated, ys)."""
    out = policy.generate(xs, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    ys = out if samples == 1 else [y for group in out for y in group]
    return [x for x in xs for _ in range(samples)], ys


# ------------------------------------------------------------------------------------------------
# search (Eq. 16)
# ------------------------------------------------------------------------------------------------
PROPOSER = Prompt(system="You write short system prompts that tell an AI assistant how to answer.")
PROPOSE = ("Here are system prompts for an assistant, with their scores (higher is better):\n{table}\n\n"
           "{goal}Write one new, different system prompt that would get a higher score. "
           "Reply with the system prompt only, in one sentence.")
CONTRAST = ("Answers an assistant gave that scored HIGH:\n{high}\n\nAnswers that scored LOW:\n{low}\n\n"
            "Write one system prompt that makes the assistant always answer like the high-scoring answers. "
            "Reply with the system prompt only, in one sentence.")


@dataclass(frozen=True, kw_only=True)
class SearchConfig(SearchOptions):
    """Options of prompt search (APE / OPRO style): the one prompt optimiser (`triangle_nb.prompt_search`) with its
    shared options (rounds, proposals, edits, beam, demonstrations, shots, style_words, proposal_tokens: one meaning
    and one default for arrows 4 and 6), scoring z by the mean reward of its samples (Eq. 16).

    Attributes:
        candidates: user-given prompts (str or Prompt) scored in round 0 next to "no prompt".
        goal: optional words for the proposer about what the reward likes (the reward stays a black box).
        rounds / proposals / edits / beam / demonstrations / shots / style_words / proposal_tokens: the search's
            (`prompt_search.SearchOptions`); its proposers write prompts from the scored beam (OPRO), take `shots`
            of the highest-reward samples so far as few-shot turns, list the words those samples use far more than
            the low-reward ones (`style_words` > 0 also adds one OPRO proposal reading high- vs low-reward samples).
        samples: outputs per input when scoring a candidate.
        max_new_tokens / temperature: sampling of the outputs being scored.
        seed: the same seed for every candidate (common random numbers: less noise between candidates); it also
            seeds the train / held-out split.
        holdout: share of `inputs` held out for the final report when no `eval_inputs` are given.
    """

    candidates: tuple[Prompt | str, ...] = ()
    goal: str = ""
    samples: int = 2
    max_new_tokens: int = 32
    temperature: float = 0.7
    seed: int = 0
    holdout: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "candidates", tuple(_as_prompt(c) for c in self.candidates))
        for name in ("samples", "max_new_tokens"):
            check.positive_int(getattr(self, name), name)
        check.temperature(self.temperature)
        if not self.candidates and self.proposals == self.demonstrations == self.style_words == 0:
            raise InvalidArgumentError("give candidates=[...] or proposals / demonstrations / style_words >= 1: "
                                       "there is nothing to search over.")


def _as_prompt(z: Prompt | str) -> Prompt:
    if isinstance(z, Prompt):
        return z
    if isinstance(z, str) and z.strip():
        return Prompt(system=z.strip())
    raise InvalidArgumentError(f"a candidate prompt must be a non-empty str or a Prompt, got {z!r}.")


@dataclass
class SearchResult(PromptResult):
    """The best prompt found (`.prompt`); `history` holds every candidate: round, source, prompt, score."""

    kind: ClassVar[str] = "reward_to_prompt.search"
    legacy_kinds: ClassVar[tuple[str, ...]] = ("prompt_search",)

    def plot(self) -> Any:
        """Best score so far per round (the optimisation trajectory)."""
        from ..plots import trajectory

        per_round = self.history.groupby("round").agg(best=("best_so_far", "max"), mean=("score", "mean"))
        return trajectory(per_round.index.tolist(), per_round["best"].tolist(), mean=per_round["mean"].tolist(),
                          title=f"Prompt search ({self.info.get('reward', 'reward')})")


class _RewardScore:
    """score(z) = the mean reward of π0(·|x,z)'s samples on the training inputs (Eq. 16); every scored sample
    (x, y, r) is kept for the proposers that read samples."""

    def __init__(self, policy: Policy, reward: Reward, train: list[str], cfg: SearchConfig) -> None:
        self.policy, self.reward, self.train, self.cfg = policy, reward, train, cfg
        self.pool: list[tuple[str, str, float]] = []

    def __call__(self, z: Prompt) -> float:
        cfg = self.cfg
        xs, ys = _sample(self.policy.with_prompt(z), self.train, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, seed=cfg.seed)  # one seed: common random numbers
        r = np.asarray(self.reward(xs, ys), dtype=float)
        self.pool += list(zip(xs, ys, r.tolist(), strict=True))
        return float(r.mean())


def _proposers(score: _RewardScore, cfg: SearchConfig) -> list[Proposer]:
    """Candidates from the samples scored so far, then the model's OPRO proposals from the scored beam."""
    writer = score.policy.with_prompt(PROPOSER)

    def from_samples(beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        """The best samples as demonstrations, the words that set the high-reward quarter apart from the low-reward
        quarter as a style instruction, and an OPRO proposal that reads both quarters (OPRO's meta-prompt shows
        scored solutions; here they are answers)."""
        ranked = sorted(score.pool, key=lambda t: -t[2])
        k = max(cfg.shots, len(ranked) // 4)
        high, low = ranked[:k], ranked[-k:]
        out = [(z, "demonstrations") for z in demonstrations([(x, y) for x, y, _ in high], cfg.demonstrations,
                                                              shots=cfg.shots, seed=cfg.seed + rnd)]
        words = contrast_words([y for _, y, _ in high], [y for _, y, _ in low], cfg.style_words)
        out += [(z, "style words") for z in style_instruction(words)]
        if cfg.style_words:
            ask = CONTRAST.format(high="\n".join(f"- {y[:200]}" for _, y, _ in high[:3]),
                                  low="\n".join(f"- {y[:200]}" for _, y, _ in low[:3]))
            text = writer.generate([ask], max_new_tokens=cfg.proposal_tokens, temperature=0.9, seed=cfg.seed + rnd)
            out += [(z, "contrast") for z in proposed(text)]
        return out

    def opro(beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        """`proposals` new prompts written after reading the beam with its scores (OPRO)."""
        if not cfg.proposals:
            return []
        table = "\n".join(f"- \"{c.prompt}\" (score {c.score:.2f})" for c in beam[::-1]) or "- (none yet)"
        goal = f"The score rewards: {cfg.goal}\n" if cfg.goal else ""
        texts = writer.generate([PROPOSE.format(table=table, goal=goal)] * cfg.proposals,
                                max_new_tokens=cfg.proposal_tokens, temperature=0.9, seed=cfg.seed + 1000 * (rnd + 1))
        return [(z, "model") for z in proposed(texts)]

    return [from_samples, opro]


def _search(policy: Policy, reward: Reward, train: list[str], test: list[str], cfg: SearchConfig,
            callback: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    start = time.perf_counter()
    score = _RewardScore(policy, reward, train, cfg)
    search = PromptSearch(score, _proposers(score, cfg), cfg, writer=policy.with_prompt(PROPOSER), seed=cfg.seed,
                          callback=callback)
    found = search.run([(EMPTY, "none")] + [(z, "user") for z in cfg.candidates])
    best = search.best()
    metrics = {"reward_train_before": found[0].score, "reward_train_after": best.score}
    samples = _heldout_samples(policy, reward, best.prompt, test, cfg) if test else pd.DataFrame()
    if test:  # held-out: the no-prompt and the best prompt's samples, scored once (their means are the metrics)
        before, after = samples["reward_before"].mean(), samples["reward_after"].mean()
        metrics |= {"reward_heldout_before": float(before), "reward_heldout_after": float(after),
                    "reward_heldout_gain": float(after - before)}
    metrics |= {"n_candidates": len(found), "n_train": len(train), "n_heldout": len(test),
                "seconds": time.perf_counter() - start}
    info = {"method": "search", "reward": getattr(reward, "name", "reward"), "split": split_name(test),
            **{k: v for k, v in asdict(cfg).items() if k != "candidates"},
            "user_candidates": [str(z) for z in cfg.candidates]}
    return SearchResult(metrics=metrics, history=search.history(), info=info, prompt=best.prompt, samples=samples)


def _heldout_samples(policy: Policy, reward: Reward, best: Prompt, test: list[str], cfg: SearchConfig) -> pd.DataFrame:
    """`samples` outputs per held-out input with no prompt (before) and the best prompt (after), with rewards."""
    kw = dict(samples=cfg.samples, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + 1)
    xs, after = _sample(policy.with_prompt(best), test, **kw)
    before = after if best.is_empty else _sample(policy, test, **kw)[1]
    r_after = reward(xs, after)
    r_before = r_after if best.is_empty else reward(xs, before)
    return pd.DataFrame({"x": xs, "before": before, "reward_before": r_before, "after": after, "reward_after": r_after})


# ------------------------------------------------------------------------------------------------
# reward-conditioned fine-tuning (Eq. 17), one reward or several (RiC-style multi-reward control)
# ------------------------------------------------------------------------------------------------
class BinBy(enum.StrEnum):
    INPUT = "input"
    ALL = "all"


class Tags(enum.StrEnum):
    SOFT = "soft"  # each level's tag is a learned soft prompt, initialised from its text (Quark's reward tokens)
    TEXT = "text"  # the tag is plain text; only the adapter learns to read it


@dataclass(frozen=True, kw_only=True)
class PromptingFunction:
    """z(s): the prompt that asks for reward level s, one `{name}`/`{s}` tag per reward in the system turn.

    Attributes:
        template: one reward's tag, with an `{s}` field and, for several rewards, a `{name}` field.
        names: the rewards' names, in tag order ("reward" for a single unnamed reward).
        levels: the trained levels s (evenly spaced in [0, 1], shared by all rewards); `__call__` accepts any s.
        edges: per reward, the reward quantiles that separate the bins (to read a reward back as a level).
        soft: learned tags, {tag text: SoftPrompt} (empty for text tags). With soft tags, z(s) takes the
            nearest trained level of each reward and returns a `SoftPrompt` (its readout names the levels).
    """

    template: str = "<{name}: {s}>"
    names: tuple[str, ...] = ("reward",)
    levels: tuple[float, ...] = ()
    edges: tuple[tuple[float, ...], ...] = ()
    soft: Mapping[str, SoftPrompt] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if "{s}" not in self.template:
            raise InvalidArgumentError(f"template must contain '{{s}}', got {self.template!r} (e.g. '<{{name}}: {{s}}>').")
        if len(self.names) > 1 and "{name}" not in self.template:
            raise InvalidArgumentError(f"template {self.template!r} has no '{{name}}' field, so the tags of the "
                                       f"{len(self.names)} rewards would look alike: use e.g. '<{{name}}: {{s}}>'.")

    def __call__(self, s: float | Sequence[float] | Mapping[str, float]) -> Prompt:
        """z(s) (Eq. 17): one number for one reward; a sequence or {name: s} mapping for several."""
        values = self.levels_of(s)
        if self.soft:
            values = [min(self.levels, key=lambda level: abs(level - v)) for v in values]
        tags = [self.tag(n, v) for n, v in zip(self.names, values)]
        if not self.soft:
            return Prompt(system=" ".join(tags))
        parts = [self.soft[t] for t in tags]
        return SoftPrompt(virtual_ids=tuple(i for p in parts for i in p.virtual_ids), readout=" ".join(tags),
                          vectors=torch.cat([p.vectors for p in parts]))

    def tag(self, name: str, s: float) -> str:
        return self.template.format(name=name, s=f"{float(s):.2f}")

    def levels_of(self, s: float | Sequence[float] | Mapping[str, float]) -> list[float]:
        """The requested level of each reward, in `names` order."""
        if isinstance(s, Mapping):
            missing = [n for n in self.names if n not in s]
            if missing or len(s) != len(self.names):
                raise InvalidArgumentError(f"s must give one level per reward {list(self.names)}, got keys {list(s)}.")
            return [float(s[n]) for n in self.names]
        values = [s] if isinstance(s, (int, float, np.number)) else list(s)
        if len(values) != len(self.names):
            raise InvalidArgumentError(f"s must give one level per reward {list(self.names)} (a list or a "
                                       f"{{name: s}} mapping), got {s!r}.")
        return [float(v) for v in values]

    def level_of(self, rewards: np.ndarray) -> np.ndarray:
        """The level s of each reward value (its quantile bin): [n] for one reward, [n, K] for several."""
        r = np.asarray(rewards, dtype=float)
        cols = r.reshape(len(r), -1)
        out = np.stack([np.asarray(self.levels)[np.searchsorted(np.asarray(e), c, side="right")]
                        for e, c in zip(self.edges, cols.T, strict=True)], axis=1)
        return out.reshape(r.shape)


@dataclass(frozen=True, kw_only=True)
class ConditionedConfig(training.TrainConfig):
    """Options of reward-conditioned SFT (the shared training fields — steps, batch_size, learning_rate, lora_r,
    seed, output_dir, resume_from_checkpoint, callbacks, training_args — are `triangle_nb.training.TrainConfig`'s).

    Attributes:
        bins: quantile bins per reward (Quark); the levels are 0, 1/(bins−1), ..., 1.
        tags: "soft" (default) learns each level's tag as a soft prompt, initialised from its text, jointly with
            the adapter (Quark adds learned reward tokens); "text" keeps the tags as text.
        tag_learning_rate: learning rate of the soft tags.
        bin_by: "input" ranks each input's samples among themselves, so every input contributes every level
            and the tag is the only thing that tells its answers apart (default); "all" bins the pooled rewards
            (Quark's global quantiles).
        template: one reward's tag in z(s) (`{s}`, and `{name}` for several rewards).
        samples: outputs sampled per training input.
        max_new_tokens / temperature: sampling, for training data and for the held-out check.
        steps / batch_size / learning_rate / lora_r: the LoRA fine-tune.
        eval_samples: outputs per held-out input and level (the same seed at every level).
        guidance: γ ≥ 0, contrast with the mirrored tag when z(s) is used (held-out check and `policy_for`):
            log π(·|x, z(s)) + γ·[log π(·|x, z(s)) − log π(·|x, z(1 − s))], an Eq. 7 composition of two prompts
            (classifier-free guidance on the tag; one batched forward). 0 = z(s) alone.
        baseline: also measure π0 (no adapter) prompted with z(s), to show what training adds.
        rounds: Quark's loop. Round 1 samples π0; every later round samples the tuned policy at every level on the
            training inputs (`samples` // bins answers per input and level), adds them to the pool, re-bins the
            whole pool and trains the same adapter and tags `steps` more. Answers asked for a high level come
            out higher, land in the high bins and sharpen the tags round after round. With `output_dir`, round
            k > 1 checkpoints under `output_dir/round-k` (resuming applies to round 1).
        holdout: share of `inputs` held out for the control check when no `eval_inputs` are given.
    """

    bins: int = 3
    tags: str = "soft"
    tag_learning_rate: float = 1e-2
    bin_by: str = "input"
    template: str = "<{name}: {s}>"
    samples: int = 6
    max_new_tokens: int = 24
    temperature: float = 1.0
    steps: int = 40
    batch_size: int = 8
    lora_r: int = 8
    eval_samples: int = 2
    guidance: float = 0.0
    baseline: bool = False
    rounds: int = 1
    holdout: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        check.positive_int(self.bins, "bins", minimum=2)
        check.positive_int(self.rounds, "rounds")
        check.choice(self.bin_by, BinBy, "bin_by")
        check.choice(self.tags, Tags, "tags")
        check.finite_positive(self.tag_learning_rate, "tag_learning_rate")
        for name in ("samples", "max_new_tokens", "eval_samples"):
            check.positive_int(getattr(self, name), name)
        check.non_negative(self.guidance, "guidance")
        check.temperature(self.temperature)
        if self.bin_by == BinBy.INPUT and self.samples < 2:
            raise InvalidArgumentError("bin_by='input' ranks each input's samples: use samples >= 2 (or bin_by='all').")
        PromptingFunction(template=self.template)


@dataclass
class ConditionedResult(PromptResult):
    """A prompting function z(s) (`.prompting`) and the adapter trained to follow it (`.policy`).

    `.prompt` is z at the highest level of every reward. Save writes prompt.json (for reading), prompting.json
    (the tags, soft vectors included) and adapter/;
    load with `ConditionedResult.load(dir, base=pi0)`.
    """

    kind: ClassVar[str] = "reward_to_prompt.conditioned"
    legacy_kinds: ClassVar[tuple[str, ...]] = ("prompt_conditioned",)
    policy: Any = None
    prompting: PromptingFunction = field(default_factory=PromptingFunction)

    def achieved(self, prefix: str = "", name: str | None = None) -> list[float]:
        """Held-out mean reward per level of reward `name` (default: the first; prefix "base_" for π0 + z(s))."""
        name = name or self.prompting.names[0]
        return [self.metrics.get(f"{prefix}{name}_heldout_at_{s:.2f}", math.nan) for s in self.prompting.levels]

    def plot(self, name: str | None = None) -> Any:
        """Achieved held-out reward against the requested level s (of reward `name` for several)."""
        from ..plots import control_curve

        name = name or self.prompting.names[0]
        rho = self.metrics.get(_spearman_key(self.prompting, name), math.nan)
        base = self.achieved("base_", name) if "base_spearman_heldout_after" in self.metrics else None
        return control_curve(list(self.prompting.levels), self.achieved("", name), baseline=base,
                             title=f"z(s) control of {name}, Spearman {rho:.2f}", yaxis_title=f"achieved {name}")

    def policy_for(self, s: float | Sequence[float] | Mapping[str, float], guidance: float | None = None) -> BasePolicy:
        """π(·|x, z(s)) with the trained adapter; with guidance γ > 0 (default: the one trained with), the Eq. 7
        contrast with the mirrored tag z(1 − s)."""
        gamma = self.info.get("guidance", 0.0) if guidance is None else check.non_negative(guidance, "guidance")
        return guided(self.policy, self.prompting, self.prompting.levels_of(s), gamma)

    def control(self, reward: Reward | Callable[..., Any] | Mapping[str, Reward | Callable[..., Any]],
                inputs: Sequence[str], *, guidance: float = 0.0, samples: int = 2, max_new_tokens: int = 24,
                temperature: float = 1.0, seed: int = 0) -> dict[str, float]:
        """Measure the control again on `inputs` (e.g. at another guidance γ, no retraining): the mean achieved
        reward per level and Spearman(requested s, achieved reward)."""
        cfg = ConditionedConfig(guidance=guidance, eval_samples=samples, max_new_tokens=max_new_tokens,
                                temperature=temperature, seed=seed)
        return _control(self.policy, _rewards(reward), self.prompting, check.texts(inputs, "inputs"), cfg, "")[0]

    def _save_vertex(self, folder: Path) -> None:
        super()._save_vertex(folder)
        z = self.prompting
        _io.write_json(folder / "prompting.json", {
            "kind": "prompting", "template": z.template, "names": list(z.names), "levels": list(z.levels),
            "edges": [list(e) for e in z.edges],
            "soft": {tag: p.vectors.detach().float().cpu().tolist() for tag, p in z.soft.items()}})
        if self.policy is not None and self.policy.adapter is not None:
            self.policy.backbone.save_adapter(self.policy.adapter, folder / "adapter")

    def _load_vertex(self, folder: Path, base: Any = None, **kw: Any) -> None:
        data = _io.read_json(folder / "prompting.json")
        if (data.get("soft") or (folder / "adapter").is_dir()) and base is None:
            raise ModelLoadError("this result holds an adapter and tags: load it with ConditionedResult.load(dir, base=pi0).")
        soft = {tag: SoftPrompt.create(base, torch.tensor(v, dtype=torch.float32), readout=tag)
                for tag, v in data.get("soft", {}).items()}
        self.prompting = PromptingFunction(template=data["template"], names=tuple(data["names"]),
                                           levels=tuple(data["levels"]), soft=soft,
                                           edges=tuple(tuple(e) for e in data["edges"]))
        self.prompt = self.prompting([max(self.prompting.levels)] * len(self.prompting.names))  # z at the top levels
        if (folder / "adapter").is_dir():
            self.policy = base.with_adapter(folder / "adapter")


def _rewards(reward: Reward | Callable[..., Any] | Mapping[str, Reward | Callable[..., Any]]) -> dict[str, Reward]:
    """One reward ("reward") or a {name: reward} mapping (multi-reward control), each as a `Reward`."""
    if not isinstance(reward, Mapping):
        return {"reward": as_reward(reward)}
    if not reward:
        raise InvalidArgumentError("reward is an empty mapping: give {name: reward} for at least one reward.")
    for name in reward:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][\w-]*", name):
            raise InvalidArgumentError(f"reward names become tags in z(s): {name!r} must be a word such as 'sentiment'.")
    return {name: as_reward(r) for name, r in reward.items()}


def _score_all(rewards: Mapping[str, Reward], xs: list[str], ys: list[str]) -> np.ndarray:
    """[n, K]: every reward on every (x, y)."""
    return np.stack([r(xs, ys) for r in rewards.values()], axis=1)


def _conditioned(policy: Policy, rewards: dict[str, Reward], train: list[str], test: list[str],
                 cfg: ConditionedConfig) -> ConditionedResult:
    start = time.perf_counter()
    PromptingFunction(template=cfg.template, names=tuple(rewards))  # a bad template fails before any sampling
    xs, ys = _sample(policy, train, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, seed=cfg.seed)
    r = _score_all(rewards, xs, ys)
    reward_before = float(r[:, 0].mean())
    zfun = _bin(r, list(rewards), cfg)
    if cfg.tags == Tags.SOFT:
        zfun = _soft_tags(policy, zfun)
    name, runs = _conditioned_adapter(policy, cfg), []
    for k in range(cfg.rounds):
        if k:  # Quark: sample the tuned policy at every level, pool, re-bin
            more_xs, more_ys = _sample_levels(policy.with_adapter(name), zfun, train, cfg, seed=cfg.seed + 101 * k)
            xs, ys, r = xs + more_xs, ys + more_ys, np.concatenate([r, _score_all(rewards, more_xs, more_ys)])
            zfun = replace(zfun, edges=_bin(r, list(rewards), cfg).edges)
        levels = _rank_levels(r, xs, zfun) if cfg.bin_by == BinBy.INPUT else zfun.level_of(r)
        runs.append(_fit(policy, name, zfun, [zfun(s) for s in levels], xs, ys, _round_config(cfg, k)))
        if runs[-1].interrupted:
            break
    run = runs[-1]
    tuned = policy.with_adapter(name)
    control, samples = _control(tuned, rewards, zfun, test, cfg, "")
    metrics = {"reward_train_before": reward_before, "train_seconds": time.perf_counter() - start,
               **run.metrics(), "steps": sum(x.steps for x in runs), "rounds": len(runs), "n_pool": len(ys),
               "n_train": len(train), "n_heldout": len(test), **control}
    if cfg.baseline:
        metrics.update(_control(policy, rewards, zfun, test, cfg, "base_")[0])
    metrics["seconds"] = time.perf_counter() - start
    info = {"method": "conditioned", "reward": {k: getattr(v, "name", k) for k, v in rewards.items()},
            "adapter": name, **cfg.settings()}
    history = pd.concat([x.history.assign(round=i + 1) for i, x in enumerate(runs)], ignore_index=True)
    return ConditionedResult(metrics=metrics, history=history, info=info,
                             prompt=zfun([1.0] * len(rewards)), policy=tuned, prompting=zfun, samples=samples)


def _bin(r: np.ndarray, names: list[str], cfg: ConditionedConfig) -> PromptingFunction:
    """Quark: per reward, quantile bins of the sampled rewards; levels evenly spaced in [0, 1]."""
    qs = np.linspace(0, 1, cfg.bins + 1)[1:-1]
    edges = tuple(tuple(np.quantile(col, qs).tolist()) for col in r.T)
    levels = np.linspace(0, 1, cfg.bins)
    return PromptingFunction(template=cfg.template, names=tuple(names), levels=tuple(levels.round(4).tolist()),
                             edges=edges)


def _rank_levels(r: np.ndarray, xs: list[str], zfun: PromptingFunction) -> np.ndarray:
    """bin_by="input": each input's answers ranked among themselves (ties share a rank), per reward."""
    from scipy.stats import rankdata

    out = np.empty_like(r)
    for x in dict.fromkeys(xs):
        rows = [i for i, x_ in enumerate(xs) if x_ == x]
        q = (rankdata(r[rows], axis=0) - 0.5) / len(rows)  # in (0, 1)
        out[rows] = np.asarray(zfun.levels)[np.minimum((q * len(zfun.levels)).astype(int), len(zfun.levels) - 1)]
    return out


def _sample_levels(tuned: Policy, zfun: PromptingFunction, xs: list[str], cfg: ConditionedConfig,
                   seed: int) -> tuple[list[str], list[str]]:
    """`samples` // bins answers per input at every combination of levels, from the tuned policy with z(s)."""
    n = max(1, cfg.samples // cfg.bins)
    out_x, out_y = [], []
    for s in itertools.product(zfun.levels, repeat=len(zfun.names)):
        rep, ys = _sample(tuned.with_prompt(zfun(list(s))), xs, samples=n, max_new_tokens=cfg.max_new_tokens,
                          temperature=cfg.temperature, seed=seed)
        out_x, out_y = out_x + rep, out_y + ys
    return out_x, out_y


def _round_config(cfg: ConditionedConfig, k: int) -> ConditionedConfig:
    """Round k + 1's training settings: its own checkpoint folder after round 1, no resuming there."""
    if k == 0 or cfg.output_dir is None:
        return cfg if k == 0 else replace(cfg, resume_from_checkpoint=None, seed=cfg.seed + k)
    return replace(cfg, output_dir=str(Path(cfg.output_dir) / f"round-{k + 1}"), resume_from_checkpoint=None,
                   seed=cfg.seed + k)


def _soft_tags(policy: Policy, zfun: PromptingFunction) -> PromptingFunction:
    """One learnable soft prompt per (reward, level), starting exactly at its text tag's embeddings."""
    soft = {}
    for name in zfun.names:
        for s in zfun.levels:
            tag = zfun.tag(name, s)
            init = SoftPrompt.from_text(policy, tag)
            soft[tag] = SoftPrompt.create(policy, torch.nn.Parameter(init.vectors.clone()), readout=tag)
            policy.backbone.unregister_soft_tokens(init.virtual_ids)  # only its vectors were needed
    return replace(zfun, soft=soft)


def _conditioned_adapter(policy: Policy, cfg: ConditionedConfig) -> str:
    from ..backbone import default_lora_config

    return training.new_adapter(policy.backbone, "reward_conditioned", default_lora_config(r=cfg.lora_r, targets=cfg.lora_targets),
                                 seed=cfg.seed)


def _fit(policy: Policy, name: str, zfun: PromptingFunction, zs: list[Prompt], xs: list[str], ys: list[str],
         cfg: ConditionedConfig) -> training.Run:
    """Eq. 17: max E log π(y | x, z(s)) over LoRA adapter `name` and the soft tags (their own learning rate),
    through the Trainer engine; the base weights never change."""
    bb = policy.backbone
    rows_ = [encode_rows(policy.with_prompt(z), [x], [y], truncate=True)[0] for z, x, y in zip(zs, xs, ys, strict=True)]
    tags = {f"tag{i}": p.vectors for i, p in enumerate(zfun.soft.values())}
    job = training.Trainable(name=f"conditioned_{cfg.tags}", loss=training.sft_loss(bb, name, rows_),
                             n_items=len(rows_), backbone=bb, adapter=name, extra=tags, extra_lr=cfg.tag_learning_rate,
                             max_grad_norm=0.0)
    return training.train(job, cfg, batch_size=min(cfg.batch_size, len(rows_)), desc="reward-conditioned SFT")


def _spearman_key(zfun: PromptingFunction, name: str) -> str:
    return "spearman_heldout_after" if len(zfun.names) == 1 else f"spearman_{name}_heldout_after"


def _control(policy: Policy, rewards: Mapping[str, Reward], zfun: PromptingFunction, test: list[str],
             cfg: ConditionedConfig, prefix: str) -> tuple[dict[str, float], pd.DataFrame]:
    """Held-out: ask for every combination of levels; per reward, the mean achieved at each of its levels and
    Spearman(requested s, achieved reward) over all samples (same seed at every level: common random numbers).
    Also returns those samples: x, y, the requested level and the achieved reward, per reward."""
    asked, got, rows = [], [], []
    for s in itertools.product(zfun.levels, repeat=len(zfun.names)):
        xs, ys = _sample(guided(policy, zfun, list(s), cfg.guidance), test, samples=cfg.eval_samples,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + 7)
        got.append(_score_all(rewards, xs, ys))
        asked.append(np.tile(s, (len(xs), 1)))
        rows += [{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)]
    a, g = np.concatenate(asked), np.concatenate(got)
    out: dict[str, float] = {}
    for k, name in enumerate(zfun.names):
        for s in zfun.levels:
            out[f"{prefix}{name}_heldout_at_{s:.2f}"] = float(g[a[:, k] == s, k].mean())
        out[f"{prefix}{_spearman_key(zfun, name)}"] = _spearman(a[:, k], g[:, k])
    if len(zfun.names) > 1:
        out[f"{prefix}spearman_heldout_after"] = float(np.mean([out[f"{prefix}{_spearman_key(zfun, n)}"]
                                                                for n in zfun.names]))
    samples = pd.DataFrame(rows).assign(**{f"s_{n}": a[:, k] for k, n in enumerate(zfun.names)},
                                        **{n: g[:, k] for k, n in enumerate(zfun.names)})
    return out, samples


def guided(policy: Policy, zfun: PromptingFunction, s: list[float], guidance: float) -> BasePolicy:
    """π(·|x, z(s)), or with γ > 0 the Eq. 7 product (1 + γ)·log π(·|x, z(s)) − γ·log π(·|x, z(1 − s))."""
    mirror = [1.0 - v for v in s]
    if guidance == 0 or zfun(mirror) == zfun(s):  # the middle level is its own mirror: nothing to contrast
        return policy.with_prompt(zfun(s))
    return Composition(parts=((policy.with_prompt(zfun(s)), 1.0 + guidance), (policy.with_prompt(zfun(mirror)), -guidance)),
                       label=f"z({s}) guided γ={guidance:g}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else math.nan


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
