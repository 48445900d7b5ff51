"""One prompt optimiser for arrows 4 and 6: rounds of propose → edit → score → keep, for any score(z).

Arrow 4 (update ⇒ prompt, Eq. 11–13) scores a prompt by −KL[π0(·|x,z) ‖ π*] on π*'s samples; arrow 6 (reward ⇒
prompt, Eq. 16) by the mean reward of π0(·|x,z)'s samples. Everything else is one loop with one meaning and one
default per option (`SearchOptions`), in the spirit of DSPy's optimisers: the search takes a `score(z)` (higher is
better) and proposers, and knows nothing about KL or rewards.

- round 0 scores the initial candidates (no prompt, the user's, and what the arrow builds before scoring anything);
- every round r = 1 … `rounds` asks each proposer for new candidates, given the beam (the `beam` best prompts so
  far, best first); then rewrites each beam prompt `edits` times (`rewrite`) and crosses the beam (two instructions
  joined, the best instruction with the best few-shot turns); then scores what is new (each prompt once);
- a Stop between rounds keeps what was scored (`control.checkpoint`).

The history has one row per scored candidate (step, round, source, prompt, score, best_so_far); `callback` gets each.

Written here, not taken from DSPy: DSPy optimises programs of LM calls through its own LM clients and a metric per
example, while these searches score a prompt over a set with a local Hugging Face policy (KV-cached batched
generation, token-exact scoring) — and TRL has no prompt search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import _validate as check
from .control import Stopped, checkpoint
from .prompt import Prompt
from .proposals import describe

if TYPE_CHECKING:
    from .policy import Policy

Proposer = Callable[[list["Candidate"], int], list[tuple[Prompt, str]]]  # (beam, round) -> (prompt, source) pairs

REWRITE = ("Here is an instruction for an assistant:\n\"{z}\"\n\nRewrite it in other words, clearer and more specific, "
           "keeping its meaning. Reply with the new instruction only.")


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """The search options both prompt searches share: one meaning and one default each (the defaults measured on
    SmolLM2-135M for both arrows; see the closing note of issue 25).

    Attributes:
        rounds: search rounds after round 0.
        proposals: prompts the model writes per round (arrow 4: from π*'s samples, APE; arrow 6: from the scored
            beam, OPRO).
        edits: rewrites of each beam prompt per round.
        beam: the best prompts kept after each round: rewritten, crossed and shown to the proposers.
        demonstrations / shots: candidates made of `shots` target samples as few-shot turns, `demonstrations`
            different draws (0: none) — made from the target samples there are: π*'s, drawn before the search
            (arrow 4: in round 0), or the highest-reward samples scored so far (arrow 6: every round).
        style_words: the candidate "answer in a style that uses words like …" with this many words the target
            samples use far more than the reference ones (0: none), made when the demonstrations are.
        proposal_tokens: the longest proposed or rewritten prompt, in tokens.
    """

    rounds: int = 2
    proposals: int = 3
    edits: int = 1
    beam: int = 2
    demonstrations: int = 2
    shots: int = 2
    style_words: int = 6
    proposal_tokens: int = 40

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()  # a config that also is a TrainConfig checks those too
        for name in ("beam", "proposal_tokens", "shots"):
            check.positive_int(getattr(self, name), name)
        for name in ("rounds", "proposals", "edits", "demonstrations", "style_words"):
            check.positive_int(getattr(self, name), name, minimum=0)


@dataclass(frozen=True)
class Candidate:
    """A scored prompt: where it came from (`source`), in which round, its score (higher is better)."""

    prompt: Prompt
    source: str
    round: int
    score: float


class PromptSearch:
    """The optimiser: `run(first)` returns every candidate scored, in order (module docstring)."""

    def __init__(self, score: Callable[[Prompt], float], proposers: Sequence[Proposer], options: SearchOptions, *,
                 writer: Policy, seed: int = 0, callback: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.score, self.proposers, self.options = score, list(proposers), options
        self.writer, self.seed, self.callback = writer, seed, callback  # writer: the policy that rewrites prompts
        self.candidates: list[Candidate] = []
        self.rows: list[dict[str, Any]] = []

    def run(self, first: Sequence[tuple[Prompt, str]]) -> list[Candidate]:
        self._add(first, 0)
        for rnd in range(1, self.options.rounds + 1):
            try:
                checkpoint("prompt search round", rnd - 1, self.options.rounds)  # Stop: keep what was scored
                beam = self.beam()
                new = [c for propose in self.proposers for c in propose(beam, rnd)]
                self._add(new + self._edits(beam, rnd), rnd)
            except Stopped:
                break
        return self.candidates

    def beam(self) -> list[Candidate]:
        """The `beam` best non-empty prompts so far, best first."""
        return [c for c in self.ranked() if not c.prompt.is_empty][: self.options.beam]

    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates, key=lambda c: -c.score)

    def best(self) -> Candidate:
        return self.ranked()[0]

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def _add(self, items: Sequence[tuple[Prompt, str]], rnd: int) -> None:
        seen = {c.prompt for c in self.candidates}
        for z, source in items:
            if z in seen:
                continue
            seen.add(z)
            self.candidates.append(Candidate(z, source, rnd, float(self.score(z))))
            best = max(c.score for c in self.candidates)
            self.rows.append({"step": len(self.rows), "round": rnd, "source": source,
                              "prompt": describe(z) if not z.is_empty else "", "score": self.candidates[-1].score,
                              "best_so_far": best})
            if self.callback is not None:
                self.callback(self.rows[-1])

    def _edits(self, beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        """`edits` rewrites of each beam instruction, and the beam crossed (`crossover`)."""
        texts = [c.prompt.system for c in beam if c.prompt.system]
        asks = [REWRITE.format(z=t) for t in texts for _ in range(self.options.edits)]
        rewritten = self.writer.generate(asks, max_new_tokens=self.options.proposal_tokens, temperature=0.9,
                                         seed=self.seed + 100 * rnd) if asks else []
        return [(z, "edited") for z in proposed(rewritten)] + [(z, "crossed") for z in crossover(beam)]


def crossover(beam: Sequence[Candidate]) -> list[Prompt]:
    """The beam's best parts combined: the two best instructions joined, the best instruction with the best shots."""
    systems = [c.prompt.system for c in beam if c.prompt.system]
    shots = next((c.prompt.examples for c in beam if c.prompt.examples), ())
    out = [Prompt(system=" ".join(systems[:2]))] if len(systems) > 1 else []
    if systems and shots:
        out.append(Prompt(system=systems[0], examples=shots))
    return [z for z in out if z not in {c.prompt for c in beam}]


_LABEL = re.compile(r"^(new |system )?(prompt|instruction)\s*:\s*", re.IGNORECASE)


def proposed(texts: Sequence[str]) -> list[Prompt]:
    """A model's proposals as system prompts: the first non-empty line of each, without a "System prompt:" label or
    quotes, at most 300 characters; distinct, and longer than 3 characters."""
    out: list[Prompt] = []
    for text in texts:
        line = _LABEL.sub("", next((s for s in text.splitlines() if s.strip()), "").strip()).strip(" \"'`*")[:300]
        if len(line) > 3 and Prompt(system=line) not in out:
            out.append(Prompt(system=line))
    return out
