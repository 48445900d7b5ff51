"""Arrow 4 — parameter update ⇒ in-context prompt (survey §5): find z with π0(y|x,z) ≈ π*(y|x).

Goal (Eq. 11): π0(y|x,z) = π*(y|x) for all x, y. Two ways to look for z:

- `method="search"`: discrete candidates, scored by Eq. 12, E Σ_t KL[π0(·|x,z,y_<t) ‖ π*(·|x,y_<t)], or
  Eq. 13, −E_{y~π*} log π0(y|x,z); keep the best, iterate (APE-style) — the one prompt optimiser of arrows 4 and 6
  (`triangle_nb.prompt_search`) with score(z) = −loss. The candidates, all proposed by the method itself from π*'s
  own answers (user candidates are optional):
  * demonstrations — a few of π*'s (x, y) samples as few-shot turns (in-context learning of what changed);
  * a style instruction — the words π*'s answers use far more often than π0's on the same inputs
    (instruction induction from the contrast of the two models' outputs);
  * instructions π0 writes after reading π*'s answers ("write the instruction that would produce these
    answers"), their edits, and combinations (the best instruction with the best demonstrations).
  A 135M proposer writes vague instructions; on the embedded model the contrast-word instruction (and its edits)
  carries the effect, while demonstrations of temperature-1 samples can score worse than no prompt (notebook 04).
- `method="soft"`: a continuous prompt (a `SoftPrompt`, n input-embedding vectors) trained by
  gradient on the same objective; its nearest-token readout shows what it "says".

Both are scored on π*'s samples for inputs held out from the search.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from .. import _io, training
from .. import _validate as check
from .._bakery import bakeable
from .._distill import (Pair, TeacherCache, cache_teacher, chunks, gap_closed, measure, response_logps, sample_pairs,
                        targets, token_kl, view_batch)
from ..chat import prompt_ids
from ..errors import InvalidArgumentError
from ..policy import Policy
from ..prompt import EMPTY, Prompt
from ..prompt_search import Candidate, PromptSearch, SearchOptions, proposed
from ..proposals import contrast_words, demonstrations, describe, style_instruction
from ..results import PromptResult
from ..soft_prompt import SoftPrompt, nearest_tokens
from ..splits import split_inputs, split_name

__all__ = ["PromptSearchResult", "RecoverConfig", "RecoverMethod", "RecoveryResult", "Score", "demonstration_prompts",
           "propose_prompts", "style_prompt",
           "update_to_prompt"]


class RecoverMethod(enum.StrEnum):
    """How to look for z."""

    SEARCH = "search"  # discrete candidates, proposed / edited / scored
    SOFT = "soft"  # a continuous prompt trained by gradient


class Score(enum.StrEnum):
    """What a candidate z is scored (and a soft prompt trained) by; lower is better for both."""

    KL = "kl"  # Eq. 12: per-token KL[π0(·|x,z) ‖ π*(·|x)]
    LIKELIHOOD = "likelihood"  # Eq. 13: per-token −log π0(y|x,z) on y ~ π*


@dataclass(frozen=True, kw_only=True)
class RecoverConfig(SearchOptions, training.TrainConfig):
    """Settings of update ⇒ prompt (the defaults are the ones measured to work on SmolLM2-135M). The search is the
    one prompt optimiser (`triangle_nb.prompt_search`) with its shared options (rounds, proposals, edits, beam,
    demonstrations, shots, style_words, proposal_tokens: one meaning and one default for arrows 4 and 6). The soft
    prompt trains through `triangle_nb.training` with its shared fields (steps, learning_rate, batch_size, seed,
    output_dir, resume_from_checkpoint, callbacks, training_args; lora_r is unused: no adapter trains).

    Args:
        method: "search" (default) or "soft".
        score: "kl" (Eq. 12, default) or "likelihood" (Eq. 13).
        samples: π* samples per input used for scoring / training.
        max_new_tokens / temperature: how π*'s samples are drawn.
        top_k: π*'s cached distributions keep the top-k tokens (+ a rest bucket); None keeps all.
        holdout: share of the inputs held out for the final metrics.
        rounds / proposals / edits / beam / demonstrations / shots / style_words / proposal_tokens: the search's
            (`prompt_search.SearchOptions`): round 0 holds `shots` of π*'s samples as few-shot turns and the words
            π*'s answers use far more than π0's; every round π0 writes instructions from those samples (APE).
        n_tokens / steps / learning_rate / batch_size / init_text: soft — prompt length, Adam steps,
            step size, pairs per step, and the text whose embeddings initialise the vectors.
        eval_batch_size: pairs per forward when scoring.
    """

    method: RecoverMethod = RecoverMethod.SEARCH
    score: Score = Score.KL
    samples: int = 1
    max_new_tokens: int = 40
    temperature: float = 1.0
    top_k: int | None = 128
    holdout: float = 0.25
    n_tokens: int = 8
    steps: int = 40
    learning_rate: float = 1e-2
    batch_size: int = 8
    init_text: str = "You are a helpful assistant."
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "method", check.choice(self.method, RecoverMethod, "method"))
        object.__setattr__(self, "score", check.choice(self.score, Score, "score"))
        for name in ("samples", "max_new_tokens", "n_tokens", "eval_batch_size"):
            check.positive_int(getattr(self, name), name)
        check.temperature(self.temperature)
        if self.top_k is not None:
            check.positive_int(self.top_k, "top_k")
        if not 0.0 <= self.holdout < 1.0:
            raise InvalidArgumentError(f"holdout must be in [0, 1), got {self.holdout!r}.")
        if not self.init_text.strip():
            raise InvalidArgumentError("init_text is empty: give a short text whose embeddings start the soft prompt.")


@dataclass
class RecoveryResult(PromptResult):
    """Update ⇒ prompt's result: `.prompt` (a Prompt, or a SoftPrompt for method="soft").

    Attributes:
        candidates: every candidate scored (search) — text, source, round, score — best first.
    Load a soft prompt's result with `RecoveryResult.load(dir, base=pi0)`.
    """

    kind: ClassVar[str] = "update_to_prompt"
    legacy_kinds: ClassVar[tuple[str, ...]] = ("prompt",)
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)

    def _save_vertex(self, folder: Path) -> None:
        super()._save_vertex(folder)
        self.candidates.to_parquet(folder / "candidates.parquet")

    def _load_vertex(self, folder: Path, base: Any = None, **_: Any) -> None:
        path = folder / "prompt.json"
        if path.is_file() and _io.read_json(path).get("kind") == "soft_prompt":
            self.prompt = SoftPrompt.load(path, base)
        else:
            super()._load_vertex(folder)
        if (folder / "candidates.parquet").is_file():  # a plain PromptResult saved under the legacy kind has none
            self.candidates = pd.read_parquet(folder / "candidates.parquet")


# -- the arrow ----------------------------------------------------------------------------------
@bakeable("update_to_prompt", configs=("RecoverConfig",), base_arg="pi0")
def update_to_prompt(pi_star: Policy, pi0: Policy, inputs: Sequence[str], *, method: RecoverMethod | str | None = None,
                     candidates: Sequence[str | Prompt] = (), true_prompt: Prompt | str | None = None,
                     config: RecoverConfig | None = None, eval_inputs: Sequence[str] | None = None,
                     callback: Callable[[dict[str, Any]], None] | None = None, **overrides: Any) -> RecoveryResult:
    """Find a prompt z with π0(y|x,z) ≈ π*(y|x) (Eq. 11), by search or as a soft prompt.

    Args:
        pi_star: the updated policy π* (e.g. `res.policy` of prompt_to_update), on pi0's backbone.
        pi0: the policy to prompt.
        inputs: inputs x; π* answers them, a share is held out for the metrics.
        method: "search" (default) or "soft".
        candidates: prompts to try first (search); strings become system prompts.
        true_prompt: the prompt that produced π*, when known (round trip): reported as a reference.
        config: all other settings (RecoverConfig); keyword `overrides` replace single fields.
        eval_inputs: held-out inputs instead of splitting `inputs`.
        callback: called with each history row (a scored candidate, or a soft step).
        overrides: RecoverConfig fields, including the training keywords of method="soft" (output_dir,
            resume_from_checkpoint, callbacks, training_args).

    Returns:
        RecoveryResult: `.prompt`, metrics (held-out Eq. 12 KL with no prompt / the found prompt /
        the true prompt, the share of the no-prompt KL closed), history and the scored candidates.

    >>> res = tnb.update_to_prompt(distilled.policy, pi0, questions, method="search")  # doctest: +SKIP
    """
    cfg = _config(config, method=method, **overrides)
    _check_policies(pi_star, pi0)
    train_xs, held_xs = split_inputs(inputs, eval_inputs, cfg.holdout, cfg.seed)
    given = [_as_prompt(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    truth = _as_prompt(true_prompt, "true_prompt") if true_prompt is not None else None
    t0 = time.perf_counter()
    train = sample_pairs(pi_star, pi0, train_xs, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, seed=cfg.seed)
    cache = cache_teacher(pi_star, train, top_k=cfg.top_k, batch_size=cfg.eval_batch_size)
    scorer = _Scorer(pi0, train, cache, cfg)
    if cfg.method is RecoverMethod.SEARCH:
        found, history, table = _search(scorer, given, cfg, callback)
    else:
        found, history, table = _soft(scorer, cfg, callback)
    # held-out samples after the search: seeded apart from it (the same pairs), never paid for by a stopped run
    held = sample_pairs(pi_star, pi0, held_xs, samples=1, max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature, seed=cfg.seed + 10_000)
    split = split_name(held)  # holdout=0: the caller asked for metrics on the training pairs (labelled train)
    metrics = _metrics(pi_star, pi0, held or train, found, truth, cfg, split) | {
        "n_train_pairs": len(train), "n_eval_pairs": len(held), "seconds": time.perf_counter() - t0}
    info = _info(cfg, truth) | {"split": split, "found_prompt": describe(found)}
    return RecoveryResult(metrics=metrics, history=history, info=info, prompt=found, candidates=table,
                          samples=_samples(pi_star, pi0, held or train, found, cfg))


def _config(config: RecoverConfig | None, **fields: Any) -> RecoverConfig:
    return training.build_config(RecoverConfig, {k: v for k, v in fields.items() if v is not None}, base=config)


def _check_policies(pi_star: Policy, pi0: Policy) -> None:
    for name, p in (("pi_star", pi_star), ("pi0", pi0)):
        if not isinstance(p, Policy):
            raise InvalidArgumentError(f"{name} must be a Policy (not a Composition), got {type(p).__name__}.")
    if pi_star.backbone is not pi0.backbone:
        raise InvalidArgumentError("pi_star and pi0 must share one backbone: build pi_star from pi0 "
                                   "(pi0.with_adapter(...) or a prompt_to_update result's policy).")


def _as_prompt(z: Prompt | str, name: str) -> Prompt:
    if isinstance(z, str):
        if not z.strip():
            raise InvalidArgumentError(f"{name} is an empty string: give the text of a prompt (or leave it out).")
        return Prompt(system=z.strip())
    if not isinstance(z, Prompt):
        raise InvalidArgumentError(f"{name} must be a Prompt or a str, got {type(z).__name__}.")
    return z


def _info(cfg: RecoverConfig, truth: Prompt | None) -> dict[str, Any]:
    """The settings, flat (results.py's one schema), and the true prompt when the caller gave it."""
    return {"method": str(cfg.method), **cfg.settings(), "true_prompt": truth.to_dict() if truth else None}


# -- scoring: Eq. 12 / Eq. 13 against π*'s cached distributions ---------------------------------
def with_prompt(pairs: Sequence[Pair], pi0: Policy, z: Prompt) -> list[Pair]:
    """The same π* samples, seen by π0 under prompt z."""
    tok = pi0.tokenizer
    return [dataclasses.replace(p, student_ids=prompt_ids(tok, z, p.x)) for p in pairs]


class _Scorer:
    """Scores prompts z on the transfer set: mean per-token Eq. 12 KL or Eq. 13 NLL (lower is better)."""

    def __init__(self, pi0: Policy, pairs: list[Pair], cache: TeacherCache, cfg: RecoverConfig) -> None:
        self.pi0, self.pairs, self.cache, self.cfg = pi0, pairs, cache, cfg
        self.seen: dict[Prompt, float] = {}

    def loss(self, logp: torch.Tensor, batch: Any, idx: Sequence[int]) -> torch.Tensor:
        """[N] per-token loss of π0(·|x,z) log-probs `logp` on pairs `idx` (differentiable)."""
        if self.cfg.score is Score.LIKELIHOOD:  # Eq. 13
            return -logp.gather(-1, targets(batch).to(logp.device)[:, None]).squeeze(-1)
        t_logp, t_idx = self.cache.batch(idx)
        return token_kl(t_logp.to(logp.device), None if t_idx is None else t_idx.to(logp.device), logp,
                        reverse=True)  # Eq. 12: KL[π0(·|x,z) ‖ π*]

    @torch.inference_mode()
    def __call__(self, z: Prompt) -> float:
        if z not in self.seen:
            pairs, bb, total, n = with_prompt(self.pairs, self.pi0, z), self.pi0.backbone, 0.0, 0
            for start, chunk in zip(range(0, len(pairs), self.cfg.eval_batch_size),
                                    chunks(pairs, self.cfg.eval_batch_size), strict=True):
                batch = view_batch(chunk, bb, teacher=False)
                per_token = self.loss(response_logps(self.pi0, batch), batch,
                                      range(start, start + len(chunk)))
                total, n = total + float(per_token.sum()), n + len(per_token)
            self.seen[z] = total / max(n, 1)
        return self.seen[z]


# -- search: the one prompt optimiser, score = −Eq. 12 KL (or −Eq. 13 NLL) --------------------------------
PROPOSE = ("Below are questions and the answers an assistant gave.\n\n{shots}\n\n"
           "Write the instruction (the system prompt) that made the assistant answer like this. "
           "Start with 'You are' or 'Always'. Reply with the instruction only.")


def _search(scorer: _Scorer, given: list[Prompt], cfg: RecoverConfig,
            callback: Callable[[dict[str, Any]], None] | None) -> tuple[Prompt, pd.DataFrame, pd.DataFrame]:
    """`prompt_search.PromptSearch` with score(z) = −(the Eq. 12 / 13 loss of z). π*'s samples exist before anything
    is scored, so round 0 already holds the candidates made from them (demonstrations, the style instruction); every
    later round adds instructions π0 writes from them (APE). Returns the best prompt, the history (one row per
    candidate) and the candidates table (the loss, lowest first)."""
    pi0, pairs = scorer.pi0, scorer.pairs
    first = [(EMPTY, "no prompt")] + [(z, "given") for z in given]
    first += [(z, "demonstrations") for z in demonstration_prompts(pi0, pairs, cfg.demonstrations, shots=cfg.shots,
                                                                   seed=cfg.seed)]
    first += [(z, "style words") for z in style_prompt(pi0, pairs, cfg.style_words, cfg)]

    def ape(beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        return [(z, "proposed") for z in propose_prompts(pi0, pairs, cfg.proposals, seed=cfg.seed + rnd,
                                                         max_new_tokens=cfg.proposal_tokens)]

    search = PromptSearch(lambda z: -scorer(z), [ape], cfg, writer=pi0, seed=cfg.seed, callback=callback)
    found = search.run(first)
    table = pd.DataFrame([{"prompt": describe(c.prompt), "source": c.source, "round": c.round, "score": -c.score}
                          for c in found])
    return search.best().prompt, search.history(), table.sort_values("score", ignore_index=True)


def propose_prompts(pi0: Policy, pairs: Sequence[Pair], n: int, *, seed: int = 0, shots: int = 4,
                    temperature: float = 0.9, max_new_tokens: int = 40) -> list[Prompt]:
    """Ask π0 to write the instruction behind π*'s answers (APE-style), n times on random shots."""
    if n == 0 or not pairs:
        return []
    rng = np.random.default_rng(seed)
    asks = [PROPOSE.format(shots="\n\n".join(_shot(pi0, pairs[j]) for j in rng.permutation(len(pairs))[:shots]))
            for _ in range(n)]
    return proposed(pi0.generate(asks, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed))


def _shot(pi0: Policy, pair: Pair) -> str:
    return f"Question: {pair.x}\nAnswer: {pi0.decode_response(pair.y_ids)[:300]}"


def demonstration_prompts(pi0: Policy, pairs: Sequence[Pair], n: int, *, shots: int = 2, seed: int = 0) -> list[Prompt]:
    """n prompts, each `shots` of π*'s own (x, y) samples (distinct inputs) as few-shot turns."""
    return demonstrations([(p.x, pi0.decode_response(p.y_ids)) for p in pairs], n, shots=shots, seed=seed)


def style_prompt(pi0: Policy, pairs: Sequence[Pair], n_words: int, cfg: RecoverConfig) -> list[Prompt]:
    """Instruction induction by contrast: the `n_words` words π*'s answers use most often relative to π0's
    answers to the same inputs, as one style instruction."""
    if n_words == 0 or not pairs:
        return []
    xs = list(dict.fromkeys(p.x for p in pairs))
    base = pi0.generate(xs, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + 7)
    return style_instruction(contrast_words([pi0.decode_response(p.y_ids) for p in pairs], base, n_words))


# -- soft prompt --------------------------------------------------------------------------------
@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """No weight of the model takes gradients (only the soft prompt does)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def _soft(scorer: _Scorer, cfg: RecoverConfig,
          callback: Callable[[dict[str, Any]], None] | None) -> tuple[SoftPrompt, pd.DataFrame, pd.DataFrame]:
    """Train n soft-prompt vectors on Eq. 12 (or 13) through the Trainer engine; Ctrl-C or a stopping callback
    keeps the last completed step."""
    pi0, bb = scorer.pi0, scorer.pi0.backbone
    init = SoftPrompt.from_text(pi0, cfg.init_text, n_tokens=cfg.n_tokens)
    vectors = torch.nn.Parameter(init.vectors.clone())
    soft = SoftPrompt.create(pi0, vectors, readout="")
    pairs = with_prompt(scorer.pairs, pi0, soft)

    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = view_batch([pairs[i] for i in idx], bb, teacher=False)
        value = scorer.loss(response_logps(pi0, batch), batch, idx).mean()
        return value, {"norm": float(vectors.detach().norm(dim=-1).mean())}

    job = training.Trainable(name=f"soft_prompt_{cfg.score}", loss=loss, n_items=len(pairs), backbone=bb,
                             extra={"soft_prompt": vectors}, max_grad_norm=0.0)
    cfg = training.with_callback(cfg, callback)
    # the whole run inside one training block: under activation checkpointing the backward's recompute must see
    # the same weights as the forward (the base with adapters off when π0 has none)
    with _frozen(bb.model), bb.training(through_base=pi0.adapter is None):
        run = training.train(job, cfg, desc="soft prompt")
    vectors.requires_grad_(False)
    found = dataclasses.replace(soft, readout=nearest_tokens(pi0, vectors))
    table = pd.DataFrame([{"prompt": f"init: {cfg.init_text}", "source": "init", "round": 0, "score": scorer(init)},
                          {"prompt": str(found), "source": "soft", "round": 1, "score": scorer(found)}])
    bb.unregister_soft_tokens(init.virtual_ids)  # the start point was only scored: free its virtual tokens
    return found, run.history, table.sort_values("score", ignore_index=True)


# -- metrics ------------------------------------------------------------------------------------
def _samples(pi_star: Policy, pi0: Policy, held: list[Pair], found: Prompt, cfg: RecoverConfig, k: int = 4) -> pd.DataFrame:
    """k held-out samples y ~ π*(·|x) with their Eq. 12 KL under no prompt (before) and the found prompt (after)."""
    rows = held[:k]
    kl = {when: [measure(pi_star, pi0, with_prompt([p], pi0, z), reverse=True).kl
                 for p in rows] for when, z in (("before", EMPTY), ("after", found))}
    return pd.DataFrame({"x": [p.x for p in rows], "y (π*, sampled)": [pi0.decode_response(p.y_ids) for p in rows],
                         "kl_before": kl["before"], "kl_after": kl["after"]})


def _metrics(pi_star: Policy, pi0: Policy, held: list[Pair], found: Prompt, truth: Prompt | None,
             cfg: RecoverConfig, split: str) -> dict[str, Any]:
    """Eq. 12 KL[π0(·|x,z) ‖ π*] (and π*'s samples' NLL) on `held`: before (no prompt), after (the found prompt),
    and with the true / read-out prompt when there is one; keyed {objective}_{split}_{when}."""
    zs = {"before": EMPTY, "after": found} | ({"true_prompt": truth} if truth is not None else {})
    if isinstance(found, SoftPrompt) and found.readout.strip():
        zs["readout"] = Prompt(system=found.readout.strip())
    out: dict[str, Any] = {}
    for when, z in zs.items():
        gap = measure(pi_star, pi0, with_prompt(held, pi0, z),
                      batch_size=cfg.eval_batch_size, reverse=True)
        out |= {f"kl_{split}_{when}": gap.kl, f"nll_{split}_{when}": gap.nll_student}
    kl = {when: out[f"kl_{split}_{when}"] for when in zs}
    out[f"kl_{split}_closed"] = gap_closed(kl["before"], kl["after"])
    if truth is not None:  # the share of what the true prompt closes that the found one closes
        closable = kl["before"] - kl["true_prompt"]
        out[f"kl_{split}_closed_vs_true"] = float((kl["before"] - kl["after"]) / closable) if closable > 1e-9 else None
    return out


PromptSearchResult = RecoveryResult  # the old name (before one name per result class)
