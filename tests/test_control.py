"""Stop and progress through the library (triangle_nb/control.py), on the tiny model: a stop asked at a step ends
a decode, a training run and a prompt search at the next step, keeping what was done; every loop reports
(phase, n, total) as it goes; nothing outside `controlled` is touched."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import triangle_nb as tnb
from triangle_nb.control import Stopped, checkpoint, controlled, progress, stopped

XS = ["How was your day?", "Tell me about the sea.", "What is rain?", "Describe a cat.", "What is snow?"]


def _stop_at(phase: str, n: int, seen: list[tuple[str, int, int]], stop: threading.Event):
    """A report that records every step and asks to stop once `phase` reaches step n (as a panel's Stop would)."""

    def report(p: str, k: int, total: int, seconds: float) -> None:
        seen.append((p, k, total))
        assert seconds >= 0
        if p == phase and k == n:
            stop.set()

    return report


def test_outside_controlled_nothing_is_checked():
    assert progress("x", 1, 2) is False and stopped() is False
    checkpoint("x", 1, 2)  # no control: never raises


def test_a_stop_is_taken_once_and_remembered():
    stop = threading.Event()
    with controlled(stop):
        stop.set()
        with pytest.raises(Stopped, match="during loop"):
            checkpoint("loop", 3, 10)
        assert not stop.is_set() and stopped()  # taken: cleared, and outer loops can see it was
        checkpoint("loop", 4, 10)  # one press, one stop
    assert not stopped()


def test_stop_ends_a_decode_at_the_next_token(tiny):
    seen, stop = [], threading.Event()
    with controlled(stop, _stop_at("generating token", 3, seen, stop)), pytest.raises(Stopped):
        tiny.generate(["Tell me about rain."], max_new_tokens=20)
    assert seen[-1] == ("generating token", 3, 20)  # stopped at the step it was asked: no further forward
    assert [k for _, k, _ in seen] == [0, 1, 2, 3]


def test_stop_ends_training_after_the_step_and_keeps_it(tiny):
    seen, stop = [], threading.Event()
    with controlled(stop, _stop_at("training step", 2, seen, stop)):
        res = tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", steps=8, samples=2, batch_size=2,
                                   max_new_tokens=4, eval_samples=1)
        assert stopped()
    assert res.metrics["interrupted"] is True and res.metrics["steps"] == 2 and len(res.history) == 2
    steps = [k for p, k, _ in seen if p == "training step"]
    assert steps == [0, 1, 2] and all(t == 8 for p, _, t in seen if p == "training step")
    assert np.isfinite(res.metrics["reward_heldout_after"])  # the kept adapter was still evaluated
    phases = {p for p, _, _ in seen}  # sampling and evaluation reported their tokens too, named by their stage
    assert {"sampling the training pairs · generating token", "evaluating · generating token"} <= phases, phases


def test_stop_ends_a_prompt_search_after_its_round_and_keeps_the_best(tiny):
    seen, stop = [], threading.Event()
    with controlled(stop, _stop_at("prompt search round", 1, seen, stop)):
        res = tnb.reward_to_prompt(tiny, tnb.rewards.Length(), XS, candidates=["Be brief."], rounds=3, proposals=1,
                                   edits=1, samples=1, max_new_tokens=4, proposal_tokens=6)
    h = res.history
    assert h["round"].max() == 1  # round 1 done, rounds 2 and 3 never started
    assert [k for p, k, _ in seen if p == "prompt search round"] == [0, 1]
    assert res.metrics["reward_train_after"] == h["score"].max()  # the best of what was scored
    assert np.isfinite(res.metrics["reward_heldout_after"])  # and it was evaluated on the held-out inputs


def test_two_threads_never_see_each_others_stop(tiny):
    stop, errors = threading.Event(), []

    def other() -> None:
        try:
            with controlled(threading.Event()):
                tiny.generate(["Tell me about rain."], max_new_tokens=6)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    stop.set()
    with controlled(stop):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with pytest.raises(Stopped):
            tiny.generate(["Tell me about rain."], max_new_tokens=6)
    assert errors == []
