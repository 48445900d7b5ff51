"""Arrow 5 — in-context prompt ⇒ reward model (survey §6).

Three ways a prompt becomes a reward, all on the same local model π0:

- direct prompting, a judge (Eq. 14): r(x, y) = π0(s | x, y, z) for a grading rubric z, read out as
  the verbalised score or as the probability-weighted score Σ_s s·p(s) over the score tokens;
- contrastive scoring (Eq. 15): R(x, y) = log π0(y|x,z+) − log π0(y|x,z−), per sequence or per token;
- contrastive prompting (RLCD): y+ ~ π0(·|x,z+), y− ~ π0(·|x,z−) give preference pairs, from which a
  Bradley–Terry reward model can be trained (here: a small head on the MiniLM sentence encoder).

>>> r = prompt_to_reward(pi0, "You are a cheerful assistant.", "You are a gloomy assistant.")  # doctest: +SKIP
>>> r(["How was your day?"], ["Wonderful!"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import _io
from .. import _validate as check
from ..chat import text_ids
from ..errors import InvalidArgumentError, JudgeParseError, ModelLoadError
from ..log_ratio import LogRatioReward, TokenScores  # noqa: F401  (TokenScores: re-exported, one class for both)
from ..policy import Policy
from ..prompt import EMPTY, Prompt
from ..rewards import Reward, as_reward, minilm_encoder
from ..options import build_config, renamed
from ..splits import split_indices


class RewardMethod(enum.StrEnum):
    CONTRASTIVE = "contrastive"
    JUDGE = "judge"


class Readout(enum.StrEnum):
    EXPECTED = "expected"  # Σ_s s·p(s) over the score tokens (deterministic)
    VERBALISED = "verbalised"  # generate, then parse the number


# ------------------------------------------------------------------------------------------------
# the arrow
# ------------------------------------------------------------------------------------------------
def prompt_to_reward(policy: Policy, z_pos: Prompt | str, z_neg: Prompt | str | None = None, *,
                     method: str = "contrastive", config: ContrastiveConfig | JudgeConfig | None = None,
                     **options: Any) -> Reward:
    """Turn a prompt into a reward model on the same policy.

    Args:
        policy: π0, a plain `Policy` (its adapter, if any, is used).
        z_pos: contrastive: the positive prompt z+; judge: the grading rubric z (must name a score range).
        z_neg: contrastive: the negative prompt z− (None = no prompt). Not used by the judge.
        method: "contrastive" (Eq. 15) or "judge" (Eq. 14).
        config: all settings at once (a `ContrastiveConfig` or a `JudgeConfig`); keywords override its fields.
        **options: fields of `ContrastiveConfig` or `JudgeConfig`.

    Returns:
        A `ContrastiveReward` or a `JudgeReward` (both `rewards.Reward`). This arrow returns the Reward itself,
        not a result object: building it trains and measures nothing (the reward is the prompted model), so there
        are no metrics or history to carry; `reward.save(path)` / `tnb.load(path)` keep it. Arrow 2 is the same.
    """
    m = check.choice(method, RewardMethod, "method")
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a plain Policy (e.g. tnb.load_policy()), got {type(policy).__name__}.")
    cfg = build_config(ContrastiveConfig if m is RewardMethod.CONTRASTIVE else JudgeConfig, options, base=config)
    if m is RewardMethod.CONTRASTIVE:
        return ContrastiveReward(policy, z_pos, z_neg, cfg)
    if z_neg is not None:
        raise InvalidArgumentError("method='judge' takes one rubric z (z_pos); pass z_neg=None.")
    return JudgeReward(policy, z_pos, cfg)


def _as_prompt(z: Prompt | str | None, name: str) -> Prompt:
    if z is None:
        return EMPTY
    if isinstance(z, str):
        return Prompt(system=z)
    if isinstance(z, Prompt):
        return z
    raise InvalidArgumentError(f"{name} must be a Prompt or a str, got {type(z).__name__}.")


# ------------------------------------------------------------------------------------------------
# contrastive scoring (Eq. 15)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ContrastiveConfig:
    """Options of contrastive scoring.

    Attributes:
        batch_size: rows per forward (each pair takes two rows: z+ and z−).
        end_of_turn: also score the end-of-turn token that closes y.
        normalize: divide the sequence score by the number of response tokens (a per-token mean).
    """

    batch_size: int = 16
    end_of_turn: bool = True
    normalize: bool = False

    def __post_init__(self) -> None:
        check.positive_int(self.batch_size, "batch_size", minimum=2)


class ContrastiveReward(LogRatioReward):
    """Eq. 15: R(x, y) = log π0(y|x,z+) − log π0(y|x,z−): Eq. 4's log-ratio reward with π* = π0 under z+, π0 under
    z− and β = 1 (`LogRatioReward`); both prompts run in one batched forward."""

    name = "contrastive"

    def __init__(self, policy: Policy, z_pos: Prompt | str, z_neg: Prompt | str | None,
                 config: ContrastiveConfig | None = None) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy (tnb.load_policy()), got {type(policy).__name__}.")
        self.policy, self.options = policy, config or ContrastiveConfig()
        self.z_pos, self.z_neg = _as_prompt(z_pos, "z_pos"), _as_prompt(z_neg, "z_neg")
        if self.z_pos == self.z_neg:
            warnings.warn("z_pos == z_neg: the contrastive reward is identically 0. Use two different prompts.",
                          UserWarning, stacklevel=3)
        super().__init__(policy.with_prompt(self.z_pos), policy.with_prompt(self.z_neg), beta=1.0,
                         end_of_turn=self.options.end_of_turn, batch_size=self.options.batch_size // 2)

    def bake_identity(self) -> dict[str, Any]:
        return {"reward": "ContrastiveReward", "policy": self.policy, "z_pos": self.z_pos, "z_neg": self.z_neg,
                "config": self.options}

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        pos, neg = self._logprobs(xs, ys)
        sums = pos.sum - neg.sum  # Eq. 15
        if self.options.normalize:
            sums = sums / np.array([max(1, len(p)) for p in pos.per_token])
        return sums

    def __repr__(self) -> str:
        return f"ContrastiveReward(z+={str(self.z_pos)[:40]!r}, z-={str(self.z_neg)[:40]!r})"


# ------------------------------------------------------------------------------------------------
# direct prompting: a judge (Eq. 14)
# ------------------------------------------------------------------------------------------------
_RANGE = re.compile(r"(-?\d+)\s*(?:-|–|—|to|through|and)\s*(-?\d+)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SCORE_AFTER = re.compile(r"score\D{0,12}?(-?\d+(?:\.\d+)?)", re.IGNORECASE)
TEMPLATE = "Question: {x}\nAnswer: {y}\n\nScore the answer from {low} to {high}."
COT_TEMPLATE = ("Question: {x}\nAnswer: {y}\n\nExplain in one sentence how well the answer fits the rubric, "
                "then write 'The score is N' with N from {low} to {high}.")


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """Options of the judge.

    Attributes:
        readout: "expected" (Σ s·p(s) over the score tokens, deterministic; default) or "verbalised".
        chain_of_thought: let the judge explain first, then read the score after its explanation.
        prefix: the start of the judge's answer, right before the score token.
        template: the user turn; fields {x}, {y}, {low}, {high}.
        strict: raise `JudgeParseError` when a verbalised score cannot be parsed (default: warn and use
            the middle of the range for that item; `JudgeReward.details` shows NaN and ok=False).
        max_new_tokens: tokens the judge may generate (verbalised score or explanation).
        batch_size: rows per forward.
    """

    readout: str = "expected"
    chain_of_thought: bool = False
    prefix: str = "The score is "
    template: str = ""
    strict: bool = False
    max_new_tokens: int = 12
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "readout", check.choice(self.readout, Readout, "readout"))
        if not self.template:
            object.__setattr__(self, "template", COT_TEMPLATE if self.chain_of_thought else TEMPLATE)
        missing = [f for f in ("{x}", "{y}") if f not in self.template]
        if missing:
            raise InvalidArgumentError(f"template must contain {missing}: it is the judge's user turn.")
        check.positive_int(self.max_new_tokens, "max_new_tokens")
        check.positive_int(self.batch_size, "batch_size")


def score_range(rubric: Prompt) -> tuple[int, int]:
    """The integer score range a rubric names ("from 1 to 5", "1-10"), or a clear error."""
    for low, high in _RANGE.findall(rubric.system_text()):
        lo, hi = int(low), int(high)
        if lo < hi and hi - lo <= 20:
            return lo, hi
    raise InvalidArgumentError(
        "the rubric z names no score range: say e.g. 'Rate the answer on a scale from 1 to 5' "
        f"(got {rubric.system_text()[:80]!r})."
    )


def parse_score(text: str, low: int, high: int) -> float:
    """The verbalised score in `text` (a number in [low, high]; after 'score' if said), else NaN. Never evals."""
    for pattern in (_SCORE_AFTER, _NUMBER):
        for m in pattern.finditer(text):
            value = float(m.group(1) if m.groups() else m.group(0))
            if low <= value <= high:
                return value
    return math.nan


class JudgeReward(Reward):
    """Eq. 14: r(x, y) = π0(s | x, y, z) with a grading rubric z, read out as Σ s·p(s) or a parsed number."""

    name = "judge"

    def __init__(self, policy: Policy, rubric: Prompt | str, config: JudgeConfig | None = None) -> None:
        self.policy, self.options = policy, config or JudgeConfig()
        self.rubric = _as_prompt(rubric, "rubric")
        self.low, self.high = score_range(self.rubric)
        self.values = np.arange(self.low, self.high + 1, dtype=np.float64)
        self.score_ids = _score_token_ids(policy.tokenizer, self.options.prefix, self.values)

    @property
    def judge(self) -> Policy:
        return self.policy.with_prompt(self.rubric)

    def judge_inputs(self, xs: list[str], ys: list[str]) -> list[str]:
        t = self.options.template
        return [t.format(x=x, y=y, low=self.low, high=self.high) for x, y in zip(xs, ys, strict=True)]

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        table = self.details(xs, ys)
        bad = np.flatnonzero(~table["ok"].to_numpy())
        if len(bad) and self.options.strict:
            raise JudgeParseError(f"the judge's answer for items {bad[:5].tolist()} holds no score in "
                                  f"[{self.low}, {self.high}]: e.g. {table['raw'].iloc[bad[0]]!r}.")
        if len(bad):
            warnings.warn(f"judge: no parsable score for items {bad[:5].tolist()} ({len(bad)} in all); they get "
                          f"the middle of the range. Pass strict=True to raise instead.", UserWarning, stacklevel=3)
        return table["score"].fillna((self.low + self.high) / 2).to_numpy(dtype=np.float64)

    def details(self, xs: Sequence[str], ys: Sequence[str]) -> pd.DataFrame:
        """One row per item: score (NaN when unparsable), ok, raw judge text, and p(s) mass on the score tokens."""
        xs_, ys_ = check.pairs(xs, ys)
        jx = self.judge_inputs(xs_, ys_)
        cfg = self.options
        raw = [""] * len(jx)
        if cfg.chain_of_thought or cfg.readout is Readout.VERBALISED:
            raw = self.judge.generate(jx, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        if cfg.readout is Readout.VERBALISED:
            scores = np.array([parse_score(t, self.low, self.high) for t in raw])
            return pd.DataFrame({"score": scores, "ok": np.isfinite(scores), "raw": raw, "mass": np.nan})
        prefixes = [_before_score(t) + cfg.prefix for t in raw] if cfg.chain_of_thought else [cfg.prefix] * len(jx)
        expected, mass = self.expected_scores(jx, prefixes)
        return pd.DataFrame({"score": expected, "ok": True, "raw": raw, "mass": mass})

    def expected_scores(self, judge_xs: list[str], prefixes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Σ_s s·p(s) with p renormalised over the score tokens, and the mass p put on them before that."""
        out, mass = [], []
        for start in range(0, len(judge_xs), self.options.batch_size):
            sl = slice(start, start + self.options.batch_size)
            lp = self.judge.next_token_logprobs(judge_xs[sl], prefixes[sl])[:, self.score_ids]  # [B, S]
            p = lp.double().exp()
            mass.append(p.sum(-1).numpy())
            out.append((torch.softmax(lp.double(), -1).numpy() * self.values).sum(-1))  # Eq. 14, expectation
        return np.concatenate(out), np.concatenate(mass)

    def __repr__(self) -> str:
        return f"JudgeReward({str(self.rubric)[:50]!r}, {self.low}-{self.high}, readout={self.options.readout.value})"


def _score_token_ids(tokenizer: Any, prefix: str, values: np.ndarray) -> list[int]:
    """The single token that follows `prefix` for each score; a clear error for multi-token scores."""
    head = text_ids(tokenizer, prefix)  # as the prefix is encoded in the assistant turn: plain text
    ids = []
    for v in values.astype(int):
        full = text_ids(tokenizer, f"{prefix}{v}")
        if full[: len(head)] != head or len(full) != len(head) + 1:
            raise InvalidArgumentError(
                f"score {v} after prefix {prefix!r} is not one token for this tokenizer: use a range of "
                "single-digit scores (e.g. 1 to 5 or 0 to 9), or another prefix."
            )
        ids.append(full[-1])
    return ids


def _before_score(text: str) -> str:
    """A chain-of-thought answer up to (not including) where it starts to state the score."""
    cut = re.search(r"(the )?score", text, re.IGNORECASE)
    body = text[: cut.start()] if cut else text
    return body.rstrip() + ("\n" if body.strip() else "")


# ------------------------------------------------------------------------------------------------
# contrastive prompting (RLCD): preference pairs
# ------------------------------------------------------------------------------------------------
def contrastive_pairs(policy: Policy, z_pos: Prompt | str, z_neg: Prompt | str, inputs: Sequence[str], *,
                      max_new_tokens: int = 48, temperature: float = 0.7, seed: int = 0,
                      batch_size: int = 16) -> Any:
    """RLCD: y+ ~ π0(·|x,z+) is `chosen`, y− ~ π0(·|x,z−) is `rejected`.

    Returns:
        A `datasets.Dataset` with columns prompt / chosen / rejected (TRL's DPO and reward trainers read it).
    """
    from datasets import Dataset

    xs = check.texts(inputs, "inputs")
    zp, zn = _as_prompt(z_pos, "z_pos"), _as_prompt(z_neg, "z_neg")
    if zp == zn:
        warnings.warn("z_pos == z_neg: chosen and rejected come from the same distribution.", UserWarning, stacklevel=2)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size)
    chosen = policy.with_prompt(zp).generate(xs, **kw)
    rejected = policy.with_prompt(zn).generate(xs, **kw)
    return Dataset.from_dict({"prompt": xs, "chosen": chosen, "rejected": rejected})


# ------------------------------------------------------------------------------------------------
# a Bradley–Terry reward model on the MiniLM encoder
# ------------------------------------------------------------------------------------------------
FEW_PAIRS = 8  # an accuracy on fewer held-out pairs moves in steps of ≥ 1/8: it is printed with its n and a caveat


class BradleyTerryReward(Reward):
    """r(x, y) = head(features(x, y)) on frozen MiniLM embeddings, trained with the Bradley–Terry loss.

    Attributes:
        metrics: train / held-out pair accuracy and the cost of training.
        history: the loss and train accuracy per step.
    """

    name = "bradley_terry"

    def __init__(self, head: torch.nn.Module) -> None:
        self.head = head.eval()
        self.metrics: dict[str, Any] = {}
        self.history = pd.DataFrame()

    def __repr__(self) -> str:
        """Its accuracies with the number of pairs each is measured on (below FEW_PAIRS: "too few to quote")."""
        m = self.metrics
        if not m:
            return "BradleyTerryReward (untrained)"
        n = m["n_heldout"]
        caveat = f"n = {n}: too few to quote, hold out more pairs" if n < FEW_PAIRS else f"n = {n}"
        return (f"Bradley–Terry reward model: pair accuracy {m['accuracy_train_after']:.2f} on its {m['n_train']} "
                f"training pairs, {m['accuracy_heldout_after']:.2f} on its held-out pairs ({caveat})")

    def features(self, xs: list[str], ys: list[str]) -> torch.Tensor:
        return _features(xs, ys)

    def score(self, xs: list[str], ys: list[str]) -> np.ndarray:
        with torch.no_grad():
            return self.head(self.features(xs, ys)).squeeze(-1).double().numpy()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head (safetensors) and the metrics into folder `path`."""
        from safetensors.torch import save_file

        folder = Path(path)
        with _io.atomic_dir(folder) as tmp:
            save_file(self.head.state_dict(), str(tmp / "head.safetensors"))
            _io.write_json(tmp / "reward.json", {"kind": "reward", "class": "BradleyTerryReward",
                                                 "metrics": self.metrics})
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BradleyTerryReward:
        from safetensors.torch import load_file

        folder = Path(path)
        if not (folder / "head.safetensors").is_file():
            raise ModelLoadError(f"{str(folder)!r} holds no saved Bradley–Terry head (head.safetensors).")
        state = load_file(str(folder / "head.safetensors"))
        head = _head(state["0.weight"].shape[1], state["0.weight"].shape[0])
        head.load_state_dict(state)
        out = cls(head)
        out.metrics = _io.read_json(folder / "reward.json").get("metrics", {})
        return out


def _features(xs: list[str], ys: list[str]) -> torch.Tensor:
    """[e(y), e(x)·e(y)] from normalised MiniLM embeddings: [N, 768]."""
    enc = minilm_encoder()
    ey = torch.as_tensor(enc.encode(ys, convert_to_numpy=True, normalize_embeddings=True))
    ex = torch.as_tensor(enc.encode(xs, convert_to_numpy=True, normalize_embeddings=True))
    return torch.cat([ey, ex * ey], dim=-1).float()


def _head(dim: int, hidden: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))


class RewardModelMethod(enum.StrEnum):
    BRADLEY_TERRY = "bradley_terry"  # a small head on frozen MiniLM features: −log σ(r(x,y+) − r(x,y−))
    AUTOREGRESSIVE = "autoregressive"  # GenARM: a LoRA π_r on the policy's base, r = β_r Σ_t log π_r(y_t|x,y_<t)


def train_reward_model(pairs: Any = None, *, preferences: Any = None, method: str = "bradley_terry",
                       **options: Any) -> Reward:
    """Train a reward model on preference pairs (TRL's prompt / chosen / rejected).

    - method="bradley_terry" (default): `train_reward_model(pairs)` — a head on frozen MiniLM features (below);
    - method="autoregressive": `train_reward_model(pi0, preferences=ds, method="autoregressive")` — GenARM's
      autoregressive reward model (survey §3.2): a LoRA π_r on pi0's base with the reference-free loss
      −log σ(β_r (log π_r(y⁺|x) − log π_r(y⁻|x))); a token-level reward that decodes in the Eq. 7 engine as
      `pi0 + (1 / beta) * arm.policy` (`triangle_nb.autoregressive_reward.train_autoregressive_reward`).

    Args:
        pairs: the preference pairs (Bradley–Terry), or the policy π0 (autoregressive).
        preferences: the preference pairs as a keyword (either method).
        method: "bradley_terry" or "autoregressive".
        **options: the method's settings (Bradley–Terry: holdout, steps, learning_rate, hidden, weight_decay, seed;
            autoregressive: the fields of `ARMConfig`); both take the shared training keywords.
    """
    m = check.choice(method, RewardModelMethod, "method")
    if m is RewardModelMethod.AUTOREGRESSIVE:
        from ..autoregressive_reward import train_autoregressive_reward

        if not isinstance(pairs, Policy):
            raise InvalidArgumentError("method='autoregressive' trains a LoRA reward model on a policy's base: pass the "
                                       "policy first, train_reward_model(pi0, preferences=ds, method='autoregressive'), "
                                       f"got {type(pairs).__name__}.")
        return train_autoregressive_reward(pairs, preferences, **options)
    if isinstance(pairs, Policy):
        raise InvalidArgumentError("method='bradley_terry' trains a head on MiniLM features, not on a policy: pass the "
                                   "pairs, train_reward_model(ds), or method='autoregressive' for a reward on pi0.")
    if (pairs is None) == (preferences is None):
        raise InvalidArgumentError("pass the preference pairs once: train_reward_model(ds) or "
                                   "train_reward_model(preferences=ds).")
    return _train_bradley_terry(pairs if pairs is not None else preferences, **options)


def _train_bradley_terry(pairs: Any, *, holdout: float = 0.25, steps: int = 200, learning_rate: float = 3e-3,
                         hidden: int = 32, weight_decay: float = 1e-2, seed: int = 0,
                         **options: Any) -> BradleyTerryReward:
    """Train a Bradley–Terry reward model, −log σ(r(x,y+) − r(x,y−)), on frozen MiniLM features.

    The head trains through the Trainer engine (`triangle_nb.training`) on the whole training split per step.

    Args:
        pairs: a Dataset or mapping with columns prompt / chosen / rejected (e.g. from `contrastive_pairs`).
        holdout: share of pairs held out (split by pair, seeded: `triangle_nb.splits`) for the held-out accuracy.
        **options: the training keywords every training arrow shares (output_dir, resume_from_checkpoint,
            callbacks, training_args); `lr` and `test_fraction` still work, deprecated.

    Returns:
        A `BradleyTerryReward` with `.metrics` (accuracy_train_after, accuracy_heldout_after, n_train, n_heldout,
        world_size, seconds) and `.history` (the Trainer's log).
    """
    from .. import training

    options = renamed(options)
    holdout = options.pop("holdout", holdout)
    cfg = training.build_config(training.TrainConfig, options, steps=steps, learning_rate=learning_rate, seed=seed)
    cols = {c: check.texts(list(pairs[c]), c) for c in ("prompt", "chosen", "rejected")}
    if len(cols["prompt"]) < 2:
        raise InvalidArgumentError("pairs needs >= 2 rows (one is held out for the accuracy).")
    start = time.perf_counter()
    train, test = split_indices(len(cols["prompt"]), holdout, seed)
    fc, fr = _features(cols["prompt"], cols["chosen"]), _features(cols["prompt"], cols["rejected"])
    with training.seeded(seed):
        head = _head(fc.shape[1], hidden)
    ftc, ftr = fc[train], fr[train]

    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        margin = (head(ftc[idx]) - head(ftr[idx])).squeeze(-1)
        return -torch.nn.functional.logsigmoid(margin).mean(), {  # Bradley–Terry
            "train_accuracy": (margin > 0).float().mean().item()}

    job = training.Trainable(name="bradley_terry", loss=loss, n_items=len(train), modules=[head],
                             extra=dict(head.named_parameters()), max_grad_norm=0.0,
                             fingerprint={"features": int(fc.shape[1]), "hidden": hidden})
    cfg = dataclasses.replace(cfg, batch_size=len(train), training_args={"weight_decay": weight_decay,
                                                                          **dict(cfg.training_args or {})})
    run = training.train(job, cfg, desc="Bradley–Terry reward model")
    reward = BradleyTerryReward(head)
    reward.history = run.history
    reward.metrics = {"accuracy_train_after": _bt_accuracy(head, ftc, ftr),
                      "accuracy_heldout_after": _bt_accuracy(head, fc[test], fr[test]) if test else math.nan,
                      "n_train": len(train), "n_heldout": len(test), **run.metrics(),
                      "seconds": time.perf_counter() - start}
    return reward


def _bt_accuracy(head: torch.nn.Module, fc: torch.Tensor, fr: torch.Tensor) -> float:
    with torch.no_grad():
        d = (head(fc) - head(fr)).squeeze(-1)
    return float(((d > 0).float() + 0.5 * (d == 0).float()).mean())


# ------------------------------------------------------------------------------------------------
# agreement with a reference reward
# ------------------------------------------------------------------------------------------------
@dataclass
class Agreement:
    """How well a reward agrees with a reference on pairs (x, y_a, y_b).

    Attributes:
        pair_accuracy: share of pairs ordered as the reference orders them (reward ties count 1/2;
            pairs the reference ties are skipped).
        spearman: rank correlation of the two rewards over all 2n scored responses.
        n_pairs: pairs compared.
    """

    pair_accuracy: float
    spearman: float
    n_pairs: int

    def as_dict(self) -> dict[str, float]:
        return {"pair_accuracy": self.pair_accuracy, "spearman": self.spearman, "n_pairs": self.n_pairs}


def pair_accuracy(reward: Any, xs: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> float:
    """Share of pairs where reward(x, chosen) > reward(x, rejected) (ties count 1/2), one batched call."""
    r = as_reward(reward)
    xs_ = check.texts(xs, "xs")
    s = r(xs_ + xs_, check.texts(chosen, "chosen") + check.texts(rejected, "rejected"))
    d = s[: len(xs_)] - s[len(xs_) :]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def agreement(reward: Any, reference: Any, xs: Sequence[str], ys_a: Sequence[str], ys_b: Sequence[str]) -> Agreement:
    """Agreement report of `reward` against `reference` (any two rewards) on pairs (x, y_a, y_b).

    >>> agreement(tnb.rewards.Length(), tnb.rewards.Sentiment(), xs, ya, yb).pair_accuracy  # doctest: +SKIP
    """
    from scipy.stats import spearmanr

    xs_ = check.texts(xs, "xs")
    ys = check.texts(ys_a, "ys_a") + check.texts(ys_b, "ys_b")
    if len(ys) != 2 * len(xs_):
        raise InvalidArgumentError("xs, ys_a and ys_b must have the same length.")
    r, ref = as_reward(reward)(xs_ + xs_, ys), as_reward(reference)(xs_ + xs_, ys)
    n = len(xs_)
    d, dref = r[:n] - r[n:], ref[:n] - ref[n:]
    keep = dref != 0
    hits = (np.sign(d[keep]) == np.sign(dref[keep])) + 0.5 * (d[keep] == 0)
    rho = float(spearmanr(r, ref).statistic) if np.ptp(r) > 0 and np.ptp(ref) > 0 else math.nan
    return Agreement(float(hits.mean()) if keep.any() else math.nan, rho, int(keep.sum()))
