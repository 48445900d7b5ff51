"""The one prompt optimiser of arrows 4 and 6 (issue 25, point 3): one loop, one meaning per option."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import triangle_nb as tnb
from triangle_nb.arrows.reward_to_prompt import SearchConfig
from triangle_nb.arrows.update_to_prompt import RecoverConfig
from triangle_nb.control import controlled
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.prompt import EMPTY, Prompt
from triangle_nb.prompt_search import Candidate, PromptSearch, SearchOptions, crossover, proposed
from triangle_nb.testing import tiny_policy


def test_both_arrows_share_every_search_option_with_one_default() -> None:
    shared = [f.name for f in dataclasses.fields(SearchOptions)]
    for cfg in (RecoverConfig(), SearchConfig()):
        assert {n: getattr(cfg, n) for n in shared} == {n: getattr(SearchOptions(), n) for n in shared}
    with pytest.raises(InvalidArgumentError, match="beam"):
        SearchConfig(beam=0)
    with pytest.raises(InvalidArgumentError, match="edits"):
        RecoverConfig(edits=-1)


def test_proposals_are_cleaned_first_lines() -> None:
    got = proposed(['Instruction: "You are a pirate."\nextra', "", "ok", "You are a pirate.", "System prompt: Be brief."])
    assert got == [Prompt(system="You are a pirate."), Prompt(system="Be brief.")]


def test_the_loop_keeps_the_beam_rewrites_each_member_and_scores_each_prompt_once() -> None:
    """Rounds of propose → edit → score → keep: every proposer sees the beam (best first), each beam prompt is
    rewritten `edits` times, the beam is crossed, and a prompt proposed twice is scored once."""
    writer = tiny_policy(seed=4)
    opts = SearchOptions(rounds=2, beam=2, edits=2, proposal_tokens=6)
    scores = {"a": 1.0, "bb": 2.0, "ccc": 3.0}
    calls: list[str] = []
    seen_beams: list[list[str]] = []

    def score(z: Prompt) -> float:
        calls.append(z.system)
        return scores.get(z.system, 0.5 if z.system else 0.0)

    def propose(beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        seen_beams.append([c.prompt.system for c in beam])
        return [(Prompt(system="ccc"), "fake"), (Prompt(system="a"), "fake")]  # "a" again in round 2

    rows: list[dict] = []
    search = PromptSearch(score, [propose], opts, writer=writer, callback=rows.append)
    found = search.run([(EMPTY, "none"), (Prompt(system="a"), "user"), (Prompt(system="bb"), "user")])
    assert seen_beams[0] == ["bb", "a"] and seen_beams[1][0] == "ccc"  # the beam: best non-empty first
    assert len(calls) == len(set(calls)) == len(found) == len(rows)  # each prompt scored once, one row each
    edited = [c for c in found if c.source == "edited" and c.round == 1]
    assert len(edited) <= 2 * opts.edits and {c.source for c in found} >= {"none", "user", "fake", "crossed"}
    assert Prompt(system="bb a") in [c.prompt for c in found]  # the two best instructions joined (crossover)
    assert search.best().prompt == Prompt(system="ccc") and rows[-1]["best_so_far"] == 3.0
    assert [r["step"] for r in rows] == list(range(len(rows)))


def test_a_stop_between_rounds_keeps_what_was_scored() -> None:
    writer = tiny_policy(seed=4)
    rounds: list[int] = []

    def propose(beam: list[Candidate], rnd: int) -> list[tuple[Prompt, str]]:
        rounds.append(rnd)
        stop.set()  # Stop pressed during round 1: round 2 never starts
        return [(Prompt(system=f"round {rnd}"), "fake")]

    stop = threading.Event()
    with controlled(stop):
        found = PromptSearch(lambda z: len(z.system), [propose], SearchOptions(rounds=3, edits=0), writer=writer).run(
            [(EMPTY, "none")])
    assert rounds == [1] and [c.prompt.system for c in found][:2] == ["", "round 1"]


def test_crossover_joins_the_best_instructions_and_adds_the_best_shots() -> None:
    a = Candidate(Prompt(system="Be kind."), "x", 1, 2.0)
    b = Candidate(Prompt(system="Be brief.", examples=(("Hi", "Hello!"),)), "x", 1, 1.0)
    assert crossover([a, b]) == [Prompt(system="Be kind. Be brief."),
                                 Prompt(system="Be kind.", examples=(("Hi", "Hello!"),))]


def test_both_arrows_run_the_one_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[str] = []
    real = PromptSearch.run

    def run(self: PromptSearch, first: list) -> list[Candidate]:
        runs.append(type(self.options).__name__)
        return real(self, first)

    monkeypatch.setattr(PromptSearch, "run", run)
    pi0 = tiny_policy(seed=5)
    res4 = tnb.update_to_prompt(pi0.with_prompt("Be brief."), pi0, ["Hi", "Tell me about rain.", "Name a colour.",
                                                                     "What is tea?"], rounds=1, proposals=1,
                                samples=1, max_new_tokens=4, proposal_tokens=4)
    res6 = tnb.reward_to_prompt(pi0, lambda x, y: float(len(y)), ["Hi", "Tell me about rain.", "Name a colour.",
                                                                   "What is tea?"], rounds=1, proposals=1, samples=1,
                                max_new_tokens=4, proposal_tokens=4)
    assert runs == ["RecoverConfig", "SearchConfig"]
    for res in (res4, res6):
        assert {"step", "round", "source", "prompt", "score", "best_so_far"} <= set(res.history.columns)
    assert res4.candidates["score"].iloc[0] == -res4.history["score"].max()  # arrow 4: score = −(Eq. 12 KL)
