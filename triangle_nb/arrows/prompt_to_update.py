"""Arrow 3 — in-context prompt ⇒ parameter update (survey §4): context distillation.

Goal (Eq. 8): π*(y|x) = π0(y|x,z) for all x, y — put z into the weights so calls no longer pay
for it in the context. A transfer set of inputs x (the user's, plus pseudo-inputs the model writes
in their style) and teacher responses y ~ π0(·|x,z) is distilled into a fresh LoRA adapter:

- KL form (Eq. 9):        min_π E_{x,y} Σ_t KL[ π0(·|x,z,y_<t) ‖ π(·|x,y_<t) ]  (full teacher distributions)
- imitation form (Eq. 10): max_π E_{x, y~π0(·|x,z)} log π(y|x)                  (SFT on the samples)

The teacher sees z, the student does not, on the same token-exact y. The loss (Eq. 9 / 10) is this module's;
the training loop is `transformers.Trainer` through `triangle_nb.training` (TRL's SFT / distillation trainers
cannot express the two views of one example, nor a cached top-k teacher on a shared backbone).
"""

from __future__ import annotations

import dataclasses
import enum
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig

from .. import _validate as check
from .. import training
from .._bakery import bakeable
from .._distill import (Pair, TeacherCache, cache_teacher, gap_closed, measure, response_logps, sample_pairs, targets,
                        token_kl, view_batch)
from ..backbone import default_lora_config
from ..chat import prompt_ids
from ..data import FACT, FACT_PROBES, FACT_QUESTIONS, FACTS, PIRATE, QUESTIONS, REVIEWS, SENTIMENT_SHOTS
from ..errors import InvalidArgumentError
from ..options import caller_level, old_name
from ..policy import Policy
from ..prompt import EMPTY, Prompt
from ..results import UpdateResult
from ..splits import HELDOUT, split_inputs, split_name

__all__ = [
    "TASKS",
    "DistillConfig",
    "DistillationResult",
    "DistillationTask",
    "Objective",
    "distillation_task",
    "probe_accuracy",
    "prompt_to_update",
    "pseudo_inputs",
]


class Objective(enum.StrEnum):
    """Which form of context distillation to optimise."""

    KL = "kl"  # Eq. 9
    IMITATION = "imitation"  # Eq. 10


@dataclass(frozen=True, kw_only=True)
class DistillConfig(training.TrainConfig):
    """Settings of context distillation (the defaults are the ones measured to work on SmolLM2-135M); the shared
    training fields (steps, batch_size = transfer pairs per step, learning_rate, lora_r, seed, output_dir,
    resume_from_checkpoint, callbacks, training_args) are `triangle_nb.training.TrainConfig`'s.

    Args:
        method: "kl" (Eq. 9, default) or "imitation" (Eq. 10) — the objective (`objective` before one name per
            concept: `DistillConfig(objective=...)` still works with a DeprecationWarning, and a bake's key still
            writes the field under that name, `bake_identity`).
        samples: teacher responses y ~ π0(·|x,z) per training input.
        max_new_tokens: length of each teacher response.
        temperature: sampling temperature of the teacher responses (1.0 = the teacher's own distribution).
        top_k: keep the teacher's top-k tokens (+ one bucket for the rest) in the cache; None keeps all V.
        n_pseudo_inputs: extra inputs the model writes in the style of the given ones (Choi et al.).
        holdout: share of the inputs held out for the metrics (never trained on).
        eval_batch_size: pairs per forward when caching the teacher and measuring.
    """

    method: Objective = Objective.KL
    steps: int = 30
    samples: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = 128
    n_pseudo_inputs: int = 0
    holdout: float = 0.25
    eval_batch_size: int = 8
    objective: dataclasses.InitVar[Objective | str | None] = None  # the old name of `method`

    def __post_init__(self, objective: Objective | str | None = None) -> None:
        super().__post_init__()
        method = old_name(self.method, objective, old="objective", new="method", default=Objective.KL)
        object.__setattr__(self, "method", check.choice(method, Objective, "method"))
        for name in ("samples", "max_new_tokens", "eval_batch_size"):
            check.positive_int(getattr(self, name), name)
        check.positive_int(self.n_pseudo_inputs, "n_pseudo_inputs", minimum=0)
        check.temperature(self.temperature)
        if self.top_k is not None:
            check.positive_int(self.top_k, "top_k")
        if not 0.0 <= self.holdout < 1.0:
            raise InvalidArgumentError(f"holdout must be in [0, 1), got {self.holdout!r} (0.25 holds out a quarter).")

    def lora(self) -> LoraConfig:
        return default_lora_config(r=self.lora_r, targets=self.lora_targets)

    def bake_identity(self) -> dict[str, Any]:
        """The fields as a bake's key writes them: `method` under its name before the rename (`objective`), so the
        shipped runs keep their keys (the same description, one field renamed)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"dataclass": type(self).__name__, **{("objective" if k == "method" else k): v for k, v in fields.items()}}


@dataclass
class DistillationResult(UpdateResult):
    """Context distillation's result: `.policy` = base + the distilled adapter (no z in its context).

    `samples`: a few held-out rows — x, the teacher's y (with z, sampled), the student's greedy y before and after,
    and each row's per-token KL[teacher ‖ student] before and after (Eq. 9 on that teacher sample).
    """

    kind: ClassVar[str] = "prompt_to_update"
    legacy_kinds: ClassVar[tuple[str, ...]] = ("update",)

    @property
    def examples(self) -> pd.DataFrame:
        """The old name of `samples` (one result schema: every result's shown samples are `samples`)."""
        warnings.warn("DistillationResult.examples is deprecated: use .samples (the same name in every result).",
                      DeprecationWarning, stacklevel=2)
        return self.samples


# -- the arrow ----------------------------------------------------------------------------------
def _one_forward(args: dict[str, Any]) -> bool:
    return args.get("method") == "hypernetwork"  # one forward of a shipped network: nothing to bake


def prompt_to_update(policy: Policy, prompt: Prompt | str | Sequence[Prompt | str],
                     inputs: Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                     method: Objective | str | None = None, steps: int | None = None,
                     config: DistillConfig | None = None,
                     eval_inputs: Sequence[str] | Sequence[Sequence[str]] | None = None,
                     probes: Sequence[tuple[str, str]] | None = None,
                     callback: Callable[[dict[str, float]], None] | None = None, **overrides: Any,
                     ) -> DistillationResult:
    """Distil prompt z into a new LoRA adapter so that π*(y|x) ≈ π0(y|x,z) without z (Eq. 8).

    Args:
        policy: the teacher's weights (π0, possibly with an adapter); the student is its base + a new adapter.
        prompt: z — a Prompt or system text; or several prompts to internalise at once (then `inputs`
            is one list of inputs per prompt).
        inputs: the transfer-set inputs x (a share is held out for the metrics unless `eval_inputs` is given).
        method: "kl" (Eq. 9, the default), "imitation" (Eq. 10), or "hypernetwork": no training — one forward of
            the shipped prompt ⇒ LoRA network (`triangle_nb.hypernetwork`, survey §4.2) makes the adapter; `inputs`
            are then optional (given, the held-out KL before / after is measured as for distillation); `network=`
            (keyword) passes another `HyperNetwork`. (`objective=`, its old name, still works with a warning.)
        steps: optimiser steps (default 30).
        config: all other settings (DistillConfig); keyword `overrides` replace single fields.
        eval_inputs: held-out inputs (per prompt when several prompts) instead of splitting `inputs`.
        probes: (question, answer keyword) pairs; probe accuracy is reported before / with z / after. With several
            prompts, one list of pairs per prompt (each probe is then asked with its own prompt for "with z").
        callback: called with each history row (for live plots); a shortcut for callbacks=[training.on_row(fn)].
            Training keywords (output_dir, resume_from_checkpoint, callbacks, training_args) go in `overrides`.

    Returns:
        DistillationResult with `.policy` (the student), metrics (held-out KL and NLL gap before/after,
        share of the gap closed, prompt tokens saved per call, seconds) and a per-step history.
        A KeyboardInterrupt (or a stopping TrainerCallback) during training returns the last completed step's
        adapter with metrics["interrupted"] = True.

    >>> res = tnb.prompt_to_update(pi0, tnb.Prompt(system="Talk like a pirate."), questions)  # doctest: +SKIP
    """
    objective = overrides.pop("objective", None)
    if objective is not None:
        warnings.warn("objective= is deprecated: use method= (the same name in every arrow).", DeprecationWarning,
                      stacklevel=caller_level())
    if method == "hypernetwork":
        overrides["method"] = method
    elif method is not None:
        objective = _method_objective(method, objective)
    return _distil_call(policy, prompt, inputs, objective=objective, steps=steps, config=config,
                        eval_inputs=eval_inputs, probes=probes, callback=callback, **overrides)


@bakeable("prompt_to_update", configs=("DistillConfig",), live_if=_one_forward)
def _distil_call(policy: Policy, prompt: Prompt | str | Sequence[Prompt | str],
                 inputs: Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                 objective: Objective | str | None = None,
                 steps: int | None = None, config: DistillConfig | None = None,
                 eval_inputs: Sequence[str] | Sequence[Sequence[str]] | None = None,
                 probes: Sequence[tuple[str, str]] | None = None,
                 callback: Callable[[dict[str, float]], None] | None = None, **overrides: Any,
                 ) -> DistillationResult:
    """`prompt_to_update` with the method as `objective`: the call a bake records, whose arguments (and so the
    shipped runs' keys) are those of the arrow before `method=` replaced `objective=`."""
    method, network = overrides.pop("method", None), overrides.pop("network", None)
    if method == "hypernetwork":
        _one_forward_only({"objective": objective, "steps": steps, "probes": probes, "callback": callback} | overrides)
        return _hypernetwork(policy, prompt, inputs, eval_inputs, network, _config(config, **overrides))
    if network is not None:
        raise InvalidArgumentError("network= is for method='hypernetwork' only; distillation trains its own adapter.")
    if inputs is None:
        raise InvalidArgumentError("inputs is missing: context distillation needs the transfer-set inputs x (e.g. "
                                   "tnb.prompt_to_update(pi0, z, questions)); only method='hypernetwork' needs none.")
    cfg = training.with_callback(_config(config, method=objective, steps=steps, **overrides), callback)
    prompts, train_xs, eval_xs = _tasks(prompt, inputs, eval_inputs, cfg)
    t0 = time.perf_counter()
    student = Policy(policy.backbone)
    train = _transfer_set(policy, student, prompts, train_xs, cfg, samples=cfg.samples)
    generate_seconds = time.perf_counter() - t0
    name = training.new_adapter(policy.backbone, "distilled", cfg.lora(), seed=cfg.seed)
    run = _train(policy, name, train, cfg)
    trained = student.with_adapter(name)
    # the held-out pairs and "before" are made after training: seeded apart from it (the same numbers), and a run
    # stopped (or a provenance rerun cut) at step k never pays for them
    t1 = time.perf_counter()
    held = _transfer_set(policy, student, prompts, eval_xs, cfg, samples=1, seed_shift=10_000)
    split = split_name(held)  # holdout=0: the caller asked for metrics on the training pairs (labelled train)
    metrics: dict[str, Any] = {"n_train_pairs": len(train), "n_eval_pairs": len(held),
                               "generate_seconds": generate_seconds + time.perf_counter() - t1}
    held = held or train
    metrics |= _gap_metrics(policy, None, held, cfg, split, "before")
    metrics |= _gap_metrics(policy, name, held, cfg, split, "after")
    metrics |= _summary(metrics, prompts, eval_xs if split == HELDOUT else train_xs, policy, run, t0, split)
    if probes:
        metrics |= _probe_metrics(policy, trained, prompts, probes)
    return DistillationResult(metrics=metrics, history=run.history, info=_info(cfg, prompts, split), policy=trained,
                              samples=_samples(policy, trained, held, cfg))


def _method_objective(method: Any, objective: Any) -> Objective:
    """method= names the objective ("kl" | "imitation"), as every arrow's method=; both given must agree."""
    if method not in ("kl", "imitation", Objective.KL, Objective.IMITATION):
        raise InvalidArgumentError(f"method={method!r} is not known: use 'kl' (Eq. 9), 'imitation' (Eq. 10) or "
                                   "'hypernetwork' (one forward of the shipped prompt ⇒ LoRA network).")
    if objective is not None and str(objective) != str(method):
        raise InvalidArgumentError(f"method={method!r} and objective={objective!r} disagree: pass only method=.")
    return Objective(str(method))


MEASURING = ("max_new_tokens", "temperature", "seed", "holdout", "eval_batch_size")  # what the held-out KL uses


def _one_forward_only(given: dict[str, Any]) -> None:
    """method='hypernetwork' trains nothing: training settings would be ignored, so they are refused."""
    ignored = sorted(k for k, v in given.items() if v is not None and k not in MEASURING)
    if ignored:
        raise InvalidArgumentError(f"method='hypernetwork' trains nothing, so {ignored} would be ignored: drop them "
                                   f"(only {list(MEASURING)} apply: they set how the held-out KL is measured).")


def _hypernetwork(policy: Policy, prompt: Prompt | str | Sequence[Prompt | str], inputs: Sequence[str] | None,
                  eval_inputs: Sequence[str] | None, network: Any, cfg: DistillConfig) -> DistillationResult:
    """Arrow 3 in one forward: z -> H(z) = a LoRA adapter (no training); with inputs, the held-out KL gap of Eq. 9
    before / after on the same teacher samples distillation is measured on."""
    from ..hypernetwork import HyperNetwork, default_network, install
    from ..rewards import minilm_encoder

    if isinstance(prompt, (list, tuple)):
        raise InvalidArgumentError("method='hypernetwork' makes one adapter from one prompt: pass a single Prompt or "
                                   "text (call it once per prompt).")
    if network is not None and not isinstance(network, HyperNetwork):
        raise InvalidArgumentError(f"network must be a HyperNetwork (HyperNetwork.load(folder)), got "
                                   f"{type(network).__name__}.")
    if policy.adapter is not None:  # H's adapter goes on the base; the teacher of its KL must be the base with z
        raise InvalidArgumentError("method='hypernetwork' makes an adapter for the base model: pass π0 without an "
                                   "adapter (policy.without_adapter()).")
    z = _as_prompt(prompt, 0)
    t0 = time.perf_counter()
    net = network if network is not None else default_network(policy)
    minilm_encoder()  # loaded once per process: counted with the network, not in the adapter's time
    t1 = time.perf_counter()
    trained = install(net, policy, z)
    metrics: dict[str, Any] = {"load_seconds": t1 - t0, "adapter_seconds": time.perf_counter() - t1}
    if inputs is not None or eval_inputs is not None:
        metrics |= _hyper_gap(policy, trained, z, inputs, eval_inputs, cfg)
    info = {"method": "hypernetwork", **{k: getattr(cfg, k) for k in MEASURING}, "prompts": [z.to_dict()],
            "network": {k: v for k, v in net.meta().items() if k != "base"} | {"base": net.base.get("name"),
                                                                               "provenance": net.provenance}}
    return DistillationResult(metrics=metrics | {"seconds": time.perf_counter() - t0}, info=info, policy=trained)


def _hyper_gap(policy: Policy, trained: Policy, z: Prompt, inputs: Any, eval_inputs: Any,
               cfg: DistillConfig) -> dict[str, Any]:
    """Eq. 9's KL gap on the held-out teacher samples (the same pairs `prompt_to_update` distils against)."""
    _, train_xs, eval_xs = _tasks(z, inputs if inputs is not None else eval_inputs, eval_inputs, cfg)
    held = _transfer_set(policy, Policy(policy.backbone), [z], eval_xs, cfg, samples=1, seed_shift=10_000)
    split = split_name(held)
    held = held or _transfer_set(policy, Policy(policy.backbone), [z], train_xs, cfg, samples=1, seed_shift=10_000)
    out = _gap_metrics(policy, None, held, cfg, split, "before") | _gap_metrics(policy, trained.adapter, held, cfg,
                                                                                   split, "after")
    return out | {f"kl_{split}_closed": gap_closed(out[f"kl_{split}_before"], out[f"kl_{split}_after"]),
                  "prompt_tokens_saved": prompt_tokens_saved(policy, [z], eval_xs if split == HELDOUT else train_xs)}


def _config(config: DistillConfig | None, **fields: Any) -> DistillConfig:
    """The config with the keyword settings replacing its fields (None keeps the config's value)."""
    return training.build_config(DistillConfig, {k: v for k, v in fields.items() if v is not None}, base=config)


def _as_prompt(z: Prompt | str, i: int) -> Prompt:
    if isinstance(z, str) and not z.strip():
        raise InvalidArgumentError(f"prompt[{i}] is an empty string: nothing to distil. Pass the text of z "
                                   "(or tnb.Prompt() to run the identity check on purpose).")
    if isinstance(z, str):
        z = Prompt(system=z)
    if not isinstance(z, Prompt):
        raise InvalidArgumentError(f"prompt[{i}] must be a Prompt or a str, got {type(z).__name__}.")
    return z


def _tasks(prompt: Any, inputs: Any, eval_inputs: Any, cfg: DistillConfig,
           ) -> tuple[list[Prompt], list[list[str]], list[list[str]]]:
    """Normalise one or several prompts with their inputs; split off the held-out inputs."""
    several = isinstance(prompt, (list, tuple))
    prompts = [_as_prompt(z, i) for i, z in enumerate(prompt if several else [prompt])]
    if not prompts:
        raise InvalidArgumentError("prompt is an empty list: pass at least one Prompt to distil.")
    per_prompt = list(inputs) if several else [inputs]
    if len(per_prompt) != len(prompts):
        raise InvalidArgumentError(f"got {len(prompts)} prompts but {len(per_prompt)} input lists: "
                                   "pass one list of inputs per prompt.")
    train = [check.texts(xs, "inputs") for xs in per_prompt]
    if eval_inputs is not None:
        held = [check.texts(xs, "eval_inputs") for xs in (list(eval_inputs) if several else [eval_inputs])]
        return prompts, train, held
    split = [split_inputs(xs, None, cfg.holdout, cfg.seed + k) for k, xs in enumerate(train)]
    return prompts, [a for a, _ in split], [b for _, b in split]


def _transfer_set(policy: Policy, student: Policy, prompts: list[Prompt], xs: list[list[str]],
                  cfg: DistillConfig, *, samples: int, seed_shift: int = 0) -> list[Pair]:
    """Teacher samples y ~ π0(·|x,z) for each prompt's inputs (+ pseudo-inputs for training)."""
    pairs: list[Pair] = []
    for k, (z, group) in enumerate(zip(prompts, xs, strict=True)):
        extra = pseudo_inputs(student, group, cfg.n_pseudo_inputs, seed=cfg.seed + k) if seed_shift == 0 else []
        pairs += sample_pairs(policy.with_prompt(z), student, group + extra, samples=samples,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              seed=cfg.seed + seed_shift + 1000 * k)
    return pairs


def _gap_metrics(policy: Policy, adapter: str | None, held: list[Pair], cfg: DistillConfig, split: str,
                 when: str) -> dict[str, float]:
    """Eq. 9's KL and the NLL gap on `held`, keyed {objective}_{split}_{when}."""
    student = dataclasses.replace(Policy(policy.backbone), adapter=adapter)  # the base, no z, all layers: as returned
    gap = measure(policy, student, held, batch_size=cfg.eval_batch_size)
    out = {f"kl_{split}_{when}": gap.kl, f"nll_gap_{split}_{when}": gap.nll_gap,
           f"nll_student_{split}_{when}": gap.nll_student}
    return out | ({f"nll_teacher_{split}_before": gap.nll_teacher, "n_eval_tokens": gap.tokens} if when == "before"
                  else {})


def _summary(m: dict[str, Any], prompts: list[Prompt], xs: list[list[str]], policy: Policy, run: training.Run,
             t0: float, split: str) -> dict[str, Any]:
    out = {**run.metrics(), "seconds": time.perf_counter() - t0,
           "prompt_tokens_saved": prompt_tokens_saved(policy, prompts, xs)}
    return out | {f"kl_{split}_closed": gap_closed(m[f"kl_{split}_before"], m[f"kl_{split}_after"]),
                  f"nll_gap_{split}_closed": gap_closed(m[f"nll_gap_{split}_before"], m[f"nll_gap_{split}_after"])}


def prompt_tokens_saved(policy: Policy, prompts: list[Prompt], xs: list[list[str]]) -> float:
    """Mean prompt tokens per call the student no longer needs: |ids(x, z)| − |ids(x)|."""
    tok = policy.tokenizer
    diffs = [len(prompt_ids(tok, z, x)) - len(prompt_ids(tok, EMPTY, x))
             for z, group in zip(prompts, xs, strict=True) for x in group]
    return float(np.mean(diffs)) if diffs else 0.0


def _info(cfg: DistillConfig, prompts: list[Prompt], split: str) -> dict[str, Any]:
    """The settings, flat (results.py's one schema): the method (the objective), the config's other fields, the split
    the metrics are on and the prompts."""
    return {"method": str(cfg.method), **{k: v for k, v in cfg.settings().items() if k != "method"},
            "split": split, "prompts": [z.to_dict() for z in prompts]}


# -- training -----------------------------------------------------------------------------------
def _train(policy: Policy, name: str, train: list[Pair], cfg: DistillConfig) -> training.Run:
    """Eq. 9 (on the cached teacher distributions) or Eq. 10 through the Trainer engine."""
    bb = policy.backbone
    cache = cache_teacher(policy, train, top_k=cfg.top_k, batch_size=cfg.eval_batch_size) \
        if cfg.method is Objective.KL else None
    student = dataclasses.replace(Policy(policy.backbone), adapter=name)  # the policy the arrow returns
    job = training.Trainable(name=f"distil_{cfg.method}", loss=_loss(student, train, cache), n_items=len(train),
                             backbone=bb, adapter=name)
    return training.train(job, cfg, desc=f"distil ({cfg.method})")


def _loss(pi: Policy, train: list[Pair], cache: TeacherCache | None) -> training.LossFn:
    bb = pi.backbone

    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = view_batch([train[i] for i in idx], bb, teacher=False)
        with bb.training():
            student = response_logps(pi, batch)  # [N, V], differentiable
        nll = -student.gather(-1, targets(batch).to(student.device)[:, None]).mean()
        if cache is None:
            return nll, {"nll": nll.item()}  # Eq. 10: maximise log π(y|x) on the teacher's samples
        t_logp, t_idx = cache.batch(idx)  # Eq. 9: KL[π0(·|x,z,y<t) ‖ π(·|x,y<t)] per token
        kl = token_kl(t_logp.to(student.device), None if t_idx is None else t_idx.to(student.device), student).mean()
        return kl, {"nll": nll.item()}
    return loss


# -- transfer-set helpers -----------------------------------------------------------------------
PSEUDO_INPUT_PROMPT = ("Here are some example messages that users sent to an assistant:\n{examples}\n\n"
                       "Write one new message in the same style, on a different topic. Reply with the message only.")


def pseudo_inputs(policy: Policy, inputs: Sequence[str], n_pseudo_inputs: int, *, seed: int = 0,
                  temperature: float = 1.0, max_new_tokens: int = 40) -> list[str]:
    """Ask the model for `n_pseudo_inputs` more inputs in the style of `inputs` (pseudo-inputs for the transfer set).

    Returns up to that many new, distinct, non-empty inputs (the first line of each sample).
    """
    xs = check.texts(inputs, "inputs")
    if n_pseudo_inputs == 0:
        return []
    rng = np.random.default_rng(seed)
    asks = [PSEUDO_INPUT_PROMPT.format(examples="\n".join(f"- {xs[j]}" for j in rng.permutation(len(xs))[:5]))
            for _ in range(n_pseudo_inputs)]
    outs = policy.generate(asks, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return _clean_inputs(outs, set(xs))[:n_pseudo_inputs]


def _clean_inputs(outs: Sequence[str], seen: set[str]) -> list[str]:
    clean: list[str] = []
    for text in outs:
        line = next((s for s in text.splitlines() if s.strip()), "").strip().lstrip("-*0123456789. ").strip('"\' ')
        if len(line) > 3 and line not in seen:
            seen.add(line)
            clean.append(line)
    return clean


def probe_accuracy(policy: Policy, probes: Sequence[tuple[str, str]], *, max_new_tokens: int = 24) -> float:
    """Share of probe questions whose greedy answer contains the expected keyword (case-insensitive)."""
    if not probes:
        raise InvalidArgumentError("probes is empty: pass (question, answer keyword) pairs.")
    qs, keys = zip(*probes, strict=True)
    answers = policy.generate(list(qs), max_new_tokens=max_new_tokens, temperature=0.0)
    return float(np.mean([k.lower() in a.lower() for a, k in zip(answers, keys, strict=True)]))


def _probe_metrics(teacher: Policy, trained: Policy, prompts: list[Prompt],
                   probes: Sequence[Any]) -> dict[str, float]:
    """Closed-book probe accuracy before and after, and with the facts in context: each probe with its own prompt
    and, for several prompts, with all of them joined into one context."""
    groups = _probe_groups(probes, len(prompts))
    flat = [p for g in groups for p in g]
    with_own = [probe_accuracy(teacher.with_prompt(z), g) * len(g) for z, g in zip(prompts, groups, strict=True) if g]
    out = {"probe_accuracy_heldout_before": probe_accuracy(trained.without_adapter(), flat),
           "probe_accuracy_heldout_with_prompt": sum(with_own) / len(flat),
           "probe_accuracy_heldout_after": probe_accuracy(trained, flat), "n_probes": len(flat)}
    if len(prompts) > 1:
        joined = Prompt(context="\n".join(z.system_text() for z in prompts))
        out["probe_accuracy_heldout_with_all_prompts"] = probe_accuracy(teacher.with_prompt(joined), flat)
    return out


def _probe_groups(probes: Sequence[Any], n_prompts: int) -> list[list[tuple[str, str]]]:
    """Probes per prompt: one list of (question, keyword) pairs per prompt, or one flat list for the first prompt."""
    per_prompt = n_prompts > 1 and len(probes) == n_prompts and all(
        isinstance(g, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in g) for g in probes)
    groups = [list(map(tuple, g)) for g in probes] if per_prompt else [list(map(tuple, probes))] + [[]] * (n_prompts - 1)
    for i, (q, k) in enumerate(p for g in groups for p in g):
        if not (isinstance(q, str) and isinstance(k, str) and q.strip() and k.strip()):
            raise InvalidArgumentError(f"probes[{i}] must be a (question, answer keyword) pair of non-empty strings, "
                                       f"got {(q, k)!r}.")
    return groups


def _samples(teacher: Policy, trained: Policy, held: list[Pair], cfg: DistillConfig, k: int = 3) -> pd.DataFrame:
    """k held-out inputs: the teacher's sample, the student's greedy answers, and that sample's KL before / after."""
    first = list({p.x: p for p in held}.values())[:k]  # the first teacher sample of each input
    if not first:
        return pd.DataFrame()
    xs = [p.x for p in first]
    gen = {"before": trained.without_adapter(), "after": trained}
    cols = {w: pol.generate(xs, max_new_tokens=cfg.max_new_tokens, temperature=0.0) for w, pol in gen.items()}
    kl = {w: [measure(teacher, pol, [p]).kl for p in first] for w, pol in gen.items()}
    return pd.DataFrame({"x": xs, "teacher (with z, sampled)": [trained.decode_response(p.y_ids) for p in first],
                         "student before (greedy)": cols["before"], "student after (greedy)": cols["after"],
                         "kl_before": kl["before"], "kl_after": kl["after"]})


# -- Table 2: what z can be ---------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DistillationTask:
    """A ready-made application of context distillation (survey Table 2).

    Attributes:
        name: short id.
        prompt: z to internalise (several for "multi").
        inputs: transfer-set inputs (per prompt for "multi").
        probes: (question, keyword) probes for knowledge injection.
    """

    name: str
    prompt: Prompt | tuple[Prompt, ...]
    inputs: tuple[str, ...] | tuple[tuple[str, ...], ...]
    probes: tuple[tuple[str, str], ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()  # the task's own defaults (e.g. the LoRA targets), kwargs override

    def run(self, policy: Policy, **kwargs: Any) -> DistillationResult:
        """prompt_to_update on this task (kwargs as for prompt_to_update)."""
        return prompt_to_update(policy, self.prompt, self.inputs, probes=self.probes or None,
                                **(dict(self.settings) | kwargs))


TASKS: dict[str, DistillationTask] = {
    "persona": DistillationTask(name="persona", prompt=PIRATE, inputs=QUESTIONS),
    "few_shot": DistillationTask(name="few_shot", prompt=SENTIMENT_SHOTS, inputs=REVIEWS),
    "fact": DistillationTask(name="fact", prompt=FACT, inputs=FACT_QUESTIONS, probes=FACT_PROBES),
    "facts": DistillationTask(name="facts", prompt=tuple(Prompt(context=f"Fact: {f}") for f, _, _ in FACTS),
                              inputs=tuple(qs for _, qs, _ in FACTS), probes=tuple(ps for _, _, ps in FACTS),
                              settings=(("lora_targets", ("up_proj", "down_proj")),)),  # facts live in the MLP
    "multi": DistillationTask(name="multi", prompt=(PIRATE, SENTIMENT_SHOTS), inputs=(QUESTIONS[:12], REVIEWS[:12])),
}


def distillation_task(name: str) -> DistillationTask:
    """A Table 2 application by name: "persona", "few_shot", "fact" (one fact), "facts" (knowledge injection of
    eight facts, one prompt each, with per-fact probes) or "multi"."""
    if name not in TASKS:
        raise InvalidArgumentError(f"task={name!r} is not known; choose one of {sorted(TASKS)}.")
    return TASKS[name]
