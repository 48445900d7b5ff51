"""Lifelong in-context learning (survey §4.2): a conversation whose old turns move from the context into the weights.

"Periodic transformation [of the interaction history into parameters] acts as a vital link" (§4.2). A
`Conversation` keeps at most `window` tokens of prompt in context (the newest turns that fit); every `every` turns,
the turns that have left the window since the last time are internalised into the conversation's ONE adapter by
arrow 3 — context distillation, Eq. 9, with those turns as z:

    min_π  E_{x ~ D(turns), y ~ π_k(·|x,z)}  Σ_t KL[ π_k(·|x, z, y_<t) ‖ π(·|x, y_<t) ],   z = the leaving turns

where π_k is the conversation's model so far (base + its adapter), π starts as π_k (the adapter accumulates), and
the transfer set D is built from the turns themselves: probe-like questions about what the user said
(`recall_questions`), plus the questions of earlier rounds answered by π_k without z (a replay term, so what was
internalised before is kept). The base weights never change.

Why "internalise" and a `Conversation`: the survey's word for arrow 3 is internalisation (a prompt becomes
parameters); the conversation is the noun that owns the window, the turns and the adapter, and `say` is its verb.

>>> chat = tnb.Conversation(pi0, window=192, every=3)            # doctest: +SKIP
>>> chat.say("Hi! My name is Marisol and I live in Pellingford.")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from . import _io, training
from . import _validate as check
from ._bakery import bakeable
from ._distill import (Pair, TeacherCache, cache_teacher, measure, response_logps, sample_pairs, targets, token_kl,
                       view_batch)
from ._keys import base_identity
from .autoregressive_reward import check_same_base
from .backbone import default_lora_config
from .chat import prompt_ids
from .errors import InvalidArgumentError, ModelLoadError
from .policy import Policy
from .prompt import Prompt
from .results import UpdateResult, renamed_metric

__all__ = ["SCRIPTS", "Conversation", "InternalisationResult", "InternaliseConfig", "Script", "internalise", "recall",
           "recall_questions"]

Turn = tuple[str, str]  # (user, assistant)


class TeacherView(enum.StrEnum):
    NOTES = "notes"  # what the user said, in the second person, as a list in the system turn
    CHAT = "chat"  # the turns as earlier user / assistant turns


NOTES_HEADER = "What you know about the user you are talking to (they told you earlier):"
_PRONOUNS = ((r"\bI am\b", "you are"), (r"\bI'm\b", "you're"), (r"\bI was\b", "you were"), (r"\bI've\b", "you've"),
             (r"\bI\b", "you"), (r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bme\b", "you"), (r"\bmine\b", "yours"))


def second_person(text: str) -> str:
    """The user's words as the assistant would say them back ("My cat is Biscotti" → "Your cat is Biscotti")."""
    for pattern, repl in _PRONOUNS:
        text = re.sub(pattern, repl, text)
    return text[:1].upper() + text[1:]


def turns_prompt(base: Prompt, turns: Sequence[Turn], view: TeacherView | str) -> Prompt:
    """z for the teacher: the leaving turns as a note of what the user said (system turn), or as chat turns."""
    if check.choice(view, TeacherView, "view") is TeacherView.CHAT:
        return dataclasses.replace(base, examples=base.examples + tuple(turns))
    note = "\n".join([NOTES_HEADER, *(f"- {second_person(user)}" for user, _ in turns)])
    return dataclasses.replace(base, context="\n\n".join(c for c in (base.context, note) if c))


@dataclass(frozen=True, kw_only=True)
class InternaliseConfig(training.TrainConfig):
    """Settings of one internalisation round (context distillation of turns, Eq. 9); the shared training fields are
    `TrainConfig`'s. The defaults put the adapter on the MLP (facts live there: notebook 03) at rank 2 (1 MB).

    Args:
        view: how the leaving turns are z for the teacher: "notes" (what the user said, in the second person, as a
            list in the system turn: "Your cat is called Biscotti"; the default: a small model reads a note better
            than a rambling transcript) or "chat" (the turns as they were in context: user / assistant turns).
        samples: teacher answers y ~ π_k(·|x, z) per transfer question.
        max_new_tokens: length of each teacher answer.
        temperature: sampling temperature of the teacher answers.
        top_k: keep the teacher's top-k tokens (+ one bucket for the rest) in the cache; None keeps all V.
        replay: at most this many questions of earlier rounds, answered by π_k without z, join the transfer set.
        eval_batch_size: pairs per forward when caching the teacher and measuring.
    """

    view: TeacherView = TeacherView.NOTES
    steps: int = 24
    learning_rate: float = 3e-3
    lora_r: int = 2
    lora_targets: tuple[str, ...] = ("up_proj", "down_proj")
    samples: int = 2
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int | None = 64
    replay: int = 16
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "view", check.choice(self.view, TeacherView, "view"))
        for name in ("samples", "max_new_tokens", "eval_batch_size"):
            check.positive_int(getattr(self, name), name)
        check.positive_int(self.replay, "replay", minimum=0)
        check.temperature(self.temperature)
        if self.top_k is not None:
            check.positive_int(self.top_k, "top_k")


@dataclass
class InternalisationResult(UpdateResult):
    """One internalisation round: `.policy` = the base + the accumulated adapter (no turns in its context);
    metrics kl_train_{before,after} (Eq. 9 on the round's own questions: nothing is held out, the turns are the
    data), questions, pairs, prompt_tokens_saved; `samples`: questions with the teacher's and the student's answers."""

    kind: ClassVar[str] = "internalisation"


# -- the transfer set: probe-like questions built from the turns ----------------------------------------------
_CLAUSES = re.compile(r"(?<=[.!?;])\s+|,\s*(?:and\s+)?|\s+and\s+(?=(?:my|I)\b)")
_PATTERNS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"^my (.+?) (?:is|are|was|were) (?:called |named )(.+)$", re.I),
     ("What is my {0} called?", "What name did I give for my {0}?")),
    (re.compile(r"^my (.+?) (?:is|are|was|were) (.+)$", re.I), ("What is my {0}?", "Tell me my {0}.")),
    (re.compile(r"^i (live|work|grew up|was born|study|stay)\b ?(?:in|at|as|near|on)?(?: the (?:town|city|village) of)? (.+)$",
                re.I), ("Where do I {0}?", "What did I say about where I {0}?")),
    (re.compile(r"^i (love|like|enjoy|hate|prefer|play|drive|own|have|collect|speak)\b (.+)$", re.I),
     ("What do I {0}?", "Which one do I {0}?")),
)
GENERIC = ("What do you remember about me?", "What have I told you about myself so far?",
           "Remind me what I said earlier.")


def recall_questions(turns: Sequence[Turn]) -> list[str]:
    """Probe-like questions about what the user said in `turns` (the transfer set of an internalisation round):
    for every first-person clause a question of its shape ("My cat is called Biscotti" → "What is my cat?" /
    "Tell me my cat."), a cloze ("Finish what I told you: 'My cat is called …'"), and three generic ones."""
    out: list[str] = []
    for user, _ in turns:
        for clause in (c.strip(" .!?\"'") for c in _CLAUSES.split(user)):
            if len(clause.split()) >= 3:
                out += _clause_questions(clause)
    return list(dict.fromkeys(out + list(GENERIC)))


def _clause_questions(clause: str) -> list[str]:
    """Questions of the clause's shape and a cloze that stops right before what the clause states."""
    body = re.sub(r"^(?:and|also|oh|well|hi|hello)\b[ ,]*", "", clause, flags=re.I)
    for pattern, templates in _PATTERNS:
        m = pattern.match(body)
        if m:
            head = body[: m.start(2)].strip()
            return [t.format(m.group(1).strip().lower()) for t in templates] + [
                f"Finish what I told you earlier: \"{head} ...\""]
    words = body.split()
    return [f"Finish what I told you earlier: \"{' '.join(words[:-1])} ...\""]


# -- one round: arrow 3 with the turns as z -------------------------------------------------------------------
@bakeable("internalise", configs=("InternaliseConfig",))
def internalise(policy: Policy, turns: Sequence[Turn], *, inputs: Sequence[str] | None = None,
                keep_inputs: Sequence[str] = (), config: InternaliseConfig | None = None,
                callback: Callable[[dict[str, Any]], None] | None = None, **overrides: Any) -> InternalisationResult:
    """Distil conversation turns into the policy's adapter (Eq. 9 with z = the turns): a NEW adapter that starts as a
    copy of the policy's (or fresh), so rounds accumulate; the base weights stay bit-identical.

    Args:
        policy: π_k: the model so far (base + the adapter holding earlier rounds, or the plain base).
        turns: (user, assistant) turns to internalise; they are z (`turns_prompt`: a note of what the user said, or
            the chat turns themselves, `view=`).
        inputs: the transfer questions (default: `recall_questions(turns)`).
        keep_inputs: questions of earlier rounds, answered by π_k without z (replay: what it knows stays).
        config: an InternaliseConfig; keyword `overrides` replace its fields.
        callback: called with each history row.
    """
    cfg = training.with_callback(training.build_config(InternaliseConfig, overrides, base=config), callback)
    if not isinstance(policy, Policy):
        raise InvalidArgumentError(f"policy must be a Policy (tnb.load_policy()), got {type(policy).__name__}.")
    turns_ = _turns(turns)
    t0 = time.perf_counter()
    z = turns_prompt(policy.prompt, turns_, cfg.view)
    xs = check.texts(list(inputs) if inputs is not None else recall_questions(turns_), "inputs")
    new = sample_pairs(policy.with_prompt(z), policy, xs, samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, seed=cfg.seed)
    keep = check.texts(list(keep_inputs), "keep_inputs", allow_empty=True)[-cfg.replay:] if cfg.replay else []
    old = sample_pairs(policy, policy, keep, samples=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       seed=cfg.seed + 1)
    name, run = _distil(policy, new + old, cfg)
    trained = dataclasses.replace(policy, adapter=name)
    # "before" after training: π_k is unchanged by it, and a stopped run (or a provenance rerun) never pays for it
    before = measure(policy, policy, new, batch_size=cfg.eval_batch_size)
    after = measure(policy, trained, new, batch_size=cfg.eval_batch_size)
    metrics = {"n_turns": len(turns_), "n_questions": len(xs), "n_pairs": len(new), "n_replay_pairs": len(old),
               "kl_train_before": before.kl, "kl_train_after": after.kl,
               "prompt_tokens_saved": _tokens_saved(policy, z, xs), **run.metrics(),
               "seconds": time.perf_counter() - t0}
    return InternalisationResult(metrics=metrics, history=run.history, policy=trained,
                                 info={"method": "internalise", **cfg.settings(), "adapter": "conversation",
                                       "base": base_identity(policy.backbone)},
                                 samples=_samples(policy, z, trained, xs[:4], cfg))


def _turns(turns: Any) -> list[Turn]:
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence) or not turns:
        raise InvalidArgumentError("turns must be a non-empty list of (user, assistant) string pairs.")
    out = []
    for i, t in enumerate(turns):
        pair = tuple(t) if isinstance(t, (list, tuple)) else ()
        if len(pair) != 2 or not all(isinstance(s, str) for s in pair):
            raise InvalidArgumentError(f"turns[{i}] must be a (user, assistant) pair of strings, got {t!r}.")
        out.append((pair[0], pair[1]))
    return out


def _distil(policy: Policy, pairs: list[Pair], cfg: InternaliseConfig) -> tuple[str, training.Run]:
    """Eq. 9 on the cached teacher (π_k with z; π_k alone for the replay pairs) into a copy of π_k's adapter."""
    bb = policy.backbone
    cache = cache_teacher(policy, pairs, top_k=cfg.top_k, batch_size=cfg.eval_batch_size)
    lora = dataclasses.replace(bb.model.peft_config[policy.adapter], inference_mode=False) if policy.adapter else \
        default_lora_config(r=cfg.lora_r, targets=cfg.lora_targets)
    # alpha as a float, as it reads back from a saved adapter: the next round's bake key (the adapter's digest) is
    # then the same whether this round ran live or was served from its bake
    lora = dataclasses.replace(lora, lora_alpha=float(lora.lora_alpha))
    name = training.new_adapter(bb, "conversation", lora, seed=cfg.seed, copy_from=policy.adapter)
    student = dataclasses.replace(policy, adapter=name)
    job = training.Trainable(name="internalise", loss=_kl_loss(student, pairs, cache), n_items=len(pairs),
                             backbone=bb, adapter=name)
    return name, training.train(job, cfg, batch_size=min(cfg.batch_size, len(pairs)), desc="internalise (Eq. 9)")


def _kl_loss(pi: Policy, pairs: list[Pair], cache: TeacherCache) -> training.LossFn:
    bb = pi.backbone

    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = view_batch([pairs[i] for i in idx], bb, teacher=False)
        with bb.training():
            student = response_logps(pi, batch)  # [N, V] without the turns, differentiable
        t_logp, t_idx = cache.batch(idx)  # Eq. 9: KL[π_k(·|x,z,y<t) ‖ π(·|x,y<t)] per token
        kl = token_kl(t_logp.to(student.device), None if t_idx is None else t_idx.to(student.device), student).mean()
        nll = -student.gather(-1, targets(batch).to(student.device)[:, None]).mean()
        return kl, {"nll": nll.item()}
    return loss


def _tokens_saved(policy: Policy, z: Prompt, xs: list[str]) -> float:
    tok = policy.tokenizer
    return float(np.mean([len(prompt_ids(tok, z, x)) - len(prompt_ids(tok, policy.prompt, x)) for x in xs]))


def _samples(teacher: Policy, z: Prompt, trained: Policy, xs: list[str], cfg: InternaliseConfig) -> pd.DataFrame:
    kw = {"max_new_tokens": cfg.max_new_tokens, "temperature": 0.0}
    return pd.DataFrame({"question": xs, "with the turns in context": teacher.with_prompt(z).generate(xs, **kw),
                         "before (turns gone)": teacher.generate(xs, **kw), "after": trained.generate(xs, **kw)})


# -- the conversation ---------------------------------------------------------------------------------------------
class Conversation:
    """A chat with at most `window` prompt tokens in context whose older turns are internalised into one adapter.

    Args:
        policy: π0 (its system prompt, if any, stays in every prompt).
        window: W, the most prompt tokens a reply may see (template, system turn, kept turns and the new message).
        every: k: every k turns, the turns that left the window since the last round are internalised.
        reply_tokens: the most tokens of each reply (greedy).
        config: an InternaliseConfig for the rounds; keyword `overrides` replace its fields.

    Attributes:
        turns: every (user, assistant) turn so far; `start`: the first turn still in the window; `internalised`:
        turns[:internalised] are in the adapter; `policy`: base + the adapter; `rounds`: each round's metrics;
        `prompt_tokens`: the prompt length of every reply (each ≤ window).
    """

    def __init__(self, policy: Policy, *, window: int = 256, every: int = 4, reply_tokens: int = 32,
                 config: InternaliseConfig | None = None, **overrides: Any) -> None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(f"policy must be a Policy (tnb.load_policy()), got {type(policy).__name__}.")
        self.base = policy.without_adapter() if policy.adapter else policy
        self.policy = policy
        self.window = check.positive_int(window, "window")
        self.every = check.positive_int(every, "every")
        self.reply_tokens = check.positive_int(reply_tokens, "reply_tokens")
        self.config = training.build_config(InternaliseConfig, overrides, base=config)  # validated now
        self.given = (config, dict(overrides))  # passed on as given: a bake's key and its provenance rerun see them
        floor = len(prompt_ids(policy.tokenizer, policy.prompt, "")) + 8
        if self.window < floor:
            raise InvalidArgumentError(f"window={self.window} is smaller than one turn: the chat template and system "
                                       f"turn alone take {floor - 8} tokens; pass window >= {4 * floor} (a few turns).")
        self.turns: list[Turn] = []
        self.owned = False  # whether policy.adapter is the conversation's own (a caller's adapter is never removed)
        self.start = self.internalised = self.since = 0
        self.questions: list[str] = []
        self.rounds: list[dict[str, Any]] = []
        self.prompt_tokens: list[int] = []

    # -- the window ------------------------------------------------------------------------------------------------
    def context(self, texts: Sequence[str]) -> Prompt:
        """The prompt for the next message(s): the newest turns whose prompt (with the longest of `texts`) fits W."""
        xs = check.texts(list(texts), "texts")
        start = self._window_start(max(xs, key=lambda x: len(prompt_ids(self.policy.tokenizer, self.policy.prompt, x))))
        return self._prompt(self.turns[start:])

    def _prompt(self, turns: Sequence[Turn]) -> Prompt:
        return dataclasses.replace(self.base.prompt, examples=self.base.prompt.examples + tuple(turns))

    def _length(self, turns: Sequence[Turn], text: str) -> int:
        return len(prompt_ids(self.policy.tokenizer, self._prompt(turns), text))

    def _window_start(self, text: str) -> int:
        """The first turn that still fits with `text` (never earlier than before: a turn that left stays out)."""
        if self._length([], text) > self.window:
            raise InvalidArgumentError(f"window={self.window} is smaller than one turn: this message alone takes "
                                       f"{self._length([], text)} prompt tokens; pass a larger window (e.g. "
                                       f"window={4 * self._length([], text)}) or a shorter message.")
        start = self.start
        while start < len(self.turns) and self._length(self.turns[start:], text) > self.window:
            start += 1
        return start

    # -- the verb ----------------------------------------------------------------------------------------------------
    def say(self, text: str) -> str:
        """Answer `text` with at most `window` prompt tokens; first internalise the turns that left the window if
        `every` turns have passed since the last round. Returns the reply (greedy)."""
        (text,) = check.texts([text], "text")
        self.start = self._window_start(text)
        if self.since >= self.every and self.start > self.internalised:
            self.consolidate()
        prompt = self._prompt(self.turns[self.start:])
        self.prompt_tokens.append(len(prompt_ids(self.policy.tokenizer, prompt, text)))
        (reply,) = self.policy.with_prompt(prompt).generate([text], max_new_tokens=self.reply_tokens)
        self.turns.append((text, reply))
        self.since += 1
        return reply

    def consolidate(self) -> InternalisationResult | None:
        """Internalise now the turns that have left the window and are not yet in the adapter (one round)."""
        leaving = self.turns[self.internalised:self.start]
        if not leaving:
            return None
        config, overrides = self.given
        res = internalise(self.policy, leaving, keep_inputs=self.questions, config=config, **overrides)
        old = self.policy.adapter
        self.policy = dataclasses.replace(res.policy, prompt=self.base.prompt)
        if self.owned and old is not None and old != self.policy.adapter:
            self.policy.backbone.remove_adapter(old)  # ONE adapter: the new one started as a copy of it
        self.owned = True
        self.questions += recall_questions(leaving)
        self.internalised, self.since = self.start, 0
        self.rounds.append({"turns": [self.internalised - len(leaving), self.internalised], **res.metrics,
                            "provenance": res.info.get("provenance", "live")})
        return res

    # -- save / load ------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the conversation (turns, window state, rounds, settings, the adapter) to `folder` atomically;
        `tnb.load(folder, base=pi0)` resumes it."""
        folder = Path(folder)
        state = {"kind": "conversation", "window": self.window, "every": self.every,
                 "reply_tokens": self.reply_tokens,
                 "config": None if self.given[0] is None else self.given[0].settings(), "options": self.given[1],
                 "turns": [list(t) for t in self.turns], "start": self.start, "internalised": self.internalised,
                 "since": self.since, "questions": self.questions, "rounds": self.rounds,
                 "prompt_tokens": self.prompt_tokens, "prompt": self.base.prompt.to_dict(),
                 "base": base_identity(self.base.backbone)}
        with _io.atomic_dir(folder) as tmp:
            if self.policy.adapter is not None:
                self.policy.backbone.save_adapter(self.policy.adapter, tmp / "adapter")
            _io.write_json(tmp / "conversation.json", state)
        return folder

    @classmethod
    def load(cls, folder: str | Path, base: Policy | None = None) -> Conversation:
        """A saved conversation on `base` (the model it was held with; another base is an AdapterMismatchError)."""
        folder = Path(folder)
        _io.recover(folder)
        state = _io.read_json(folder / "conversation.json")
        if not isinstance(state, dict) or state.get("kind") != "conversation":
            raise ModelLoadError(f"{str(folder)!r} holds no saved conversation (conversation.json).")
        check_same_base(state.get("base"), base, "base", f"the conversation in {str(folder)!r}")
        return _io.parsed(folder, lambda: cls._from_state(folder, state, base))

    @classmethod
    def _from_state(cls, folder: Path, state: dict[str, Any], base: Policy) -> Conversation:
        saved = state["config"]
        config = None if saved is None else InternaliseConfig(**{
            k: tuple(v) if k == "lora_targets" else v for k, v in saved.items() if k != "output_dir"})
        conv = cls(base.without_adapter().with_prompt(Prompt.from_dict(state["prompt"])), window=state["window"],
                   every=state["every"], reply_tokens=state["reply_tokens"], config=config, **state["options"])
        if (folder / "adapter").is_dir():
            conv.policy = conv.base.with_adapter(folder / "adapter",
                                                 name=base.backbone.unique_adapter_name("conversation"))
            conv.owned = True
        conv.turns = [(u, a) for u, a in state["turns"]]
        for key in ("start", "internalised", "since", "questions", "rounds", "prompt_tokens"):
            setattr(conv, key, state[key])
        conv.rounds = [{renamed_metric(k): v for k, v in r.items()} if "n_turns" not in r else r for r in conv.rounds]
        return conv  # rounds saved before the one result schema: their metric names now (the turns count was "turns")

    def __repr__(self) -> str:
        return (f"Conversation({len(self.turns)} turns, window={self.window}, every={self.every}: "
                f"{self.internalised} internalised in {len(self.rounds)} rounds, {len(self.turns) - self.start} in "
                f"context)")


# -- the measurement ----------------------------------------------------------------------------------------------
def recall(conversation: Conversation, probes: Sequence[tuple[str, str]], *, max_new_tokens: int = 24,
           notes: bool = True) -> dict[str, Any]:
    """Probe accuracy (answer contains the keyword) of questions about earlier turns, asked next in the conversation:
    (a) truncation only — the window's turns in context, the base weights; (b) internalised — the same window with
    the conversation's adapter; (c) the full history in context as chat turns (the ceiling, unbounded prompt); and
    (c') with `notes`, what the user said as a note in the system turn (the internalisation teacher's view of every
    turn). Nothing is added to the conversation."""
    qs = [q for q, _ in probes]
    keys = [k for _, k in probes]
    window = conversation.context(qs)
    full = conversation._prompt(conversation.turns)
    asks = {"truncation": conversation.base.with_prompt(window), "internalised": conversation.policy.with_prompt(window),
            "full_history": conversation.base.with_prompt(full)}
    if check.flag(notes, "notes"):
        note = turns_prompt(conversation.base.prompt, conversation.turns, TeacherView.NOTES)
        asks["full_history_notes"] = conversation.base.with_prompt(note)
    # every probe follows the same window (or history): its KV cache is made once and shared by the probes
    answers = {k: p.generate(qs, max_new_tokens=max_new_tokens, shared_prefix=True) for k, p in asks.items()}
    hits = {k: [key.lower() in a.lower() for a, key in zip(ans, keys, strict=True)] for k, ans in answers.items()}
    tok = conversation.policy.tokenizer
    return {**{f"recall_{k}": float(np.mean(h)) for k, h in hits.items()}, "probes": len(qs),
            "prompt_tokens_window": max(len(prompt_ids(tok, window, q)) for q in qs),
            "prompt_tokens_full": max(len(prompt_ids(tok, full, q)) for q in qs),
            "answers": pd.DataFrame({"question": qs, "keyword": keys, **{f"{k} answer": a for k, a in answers.items()}})}


# -- scripted conversations: fictional facts early, other topics, then probes ------------------------------------
@dataclass(frozen=True, kw_only=True)
class Script:
    """A scripted conversation: `facts` (user turns stating fictional facts), `chat` (turns about other things, long
    enough for the facts to leave the window), and `probes` ((question, keyword) pairs asked afterwards, phrased
    unlike anything `recall_questions` builds). "dev" is for choosing settings; "test" is held out from all tuning."""

    facts: tuple[str, ...]
    chat: tuple[str, ...]
    probes: tuple[tuple[str, str], ...]

    @property
    def turns(self) -> tuple[str, ...]:
        return self.facts + self.chat

    def run(self, conversation: Conversation) -> Conversation:
        """Say every turn of the script (facts first) in `conversation`; returns it."""
        for text in self.turns:
            conversation.say(text)
        return conversation


_CHAT = ("Can you explain how rainbows form?", "What is a good way to learn to cook?",
         "Tell me a fun fact about octopuses.", "How do bicycles stay upright?", "Why do we have seasons?")
SCRIPTS: dict[str, Script] = {
    "dev": Script(
        facts=("Hello! My name is Tobiah and I live in Carrowmere.", "My dog is called Pistachio, and I work as a glassblower.",
               "My favourite food is saffron rice. My brother is called Fennick.",
               "My bike is orange, and I collect old maps."),
        chat=("How do volcanoes erupt?", "What is a good exercise for beginners?", "Tell me something about owls.",
              "How does a compass work?", "Why is the sea salty?"),
        probes=(("Do you remember what I am called?", "Tobiah"), ("Which town do I live in?", "Carrowmere"),
                ("What's the name of my dog?", "Pistachio"), ("What is my job?", "glass"),
                ("Which dish do I love the most?", "saffron"), ("What is my brother's name?", "Fennick"),
                ("What colour is my bike?", "orange"), ("What do I collect?", "map"))),
    "test": Script(
        facts=("Hi! My name is Marisol and I live in Pellingford.", "My cat is called Biscotti, and I work as a beekeeper.",
               "My favourite food is plum dumplings. My sister is called Odalie.",
               "My car is teal, and I collect antique compasses."),
        chat=_CHAT,
        probes=(("Do you remember what I am called?", "Marisol"), ("Which town do I live in?", "Pellingford"),
                ("What's the name of my cat?", "Biscotti"), ("What is my job?", "bee"),
                ("Which dish do I love the most?", "dumpling"), ("What is my sister's name?", "Odalie"),
                ("What colour is my car?", "teal"), ("What do I collect?", "compass"))),
}
