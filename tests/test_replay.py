"""Recorded sampling (triangle_nb/_replay.py), used by the provenance test: exact keys, the first call checked live,
nothing served outside `using(...)` or to another thread."""

from __future__ import annotations

import threading

import pytest

from triangle_nb import _replay

XS = ["Tell me about rain.", "Describe your morning.", "What is a Monday?"]
KW = {"max_new_tokens": 5, "temperature": 1.0, "n": 2, "batch_size": 2}  # 6 rows: 3 seeded chunks of 2


def _record(policy, seed=3):
    store = _replay.SampleStore(record=True)
    with _replay.using(store):
        ids = policy.generate_ids(XS, seed=seed, **KW)
    return store, ids


def test_a_replayed_run_samples_its_first_call_live_and_serves_the_rest(tiny, one_thread):
    store, ids = _record(tiny)
    assert len(store.samples) == 3 and store.live == 3
    again = _replay.SampleStore(store.samples)
    with _replay.using(again):
        assert tiny.generate_ids(XS, seed=3, **KW) == ids
    assert (again.live, again.served) == (1, 2)
    assert tiny.generate_ids(XS, seed=3, **KW) == ids  # outside `using`: live, the same tokens


def test_a_changed_sampler_fails_on_the_first_call(tiny, one_thread):
    store, _ = _record(tiny)
    first = next(iter(store.samples))  # keys are in call order
    store.samples[first] = [[1, 2, 3]] * 2
    with _replay.using(_replay.SampleStore(store.samples)), pytest.raises(_replay.ReplayMismatch, match="changed"):
        tiny.generate_ids(XS, seed=3, **KW)


def test_only_an_exact_key_is_served(tiny, one_thread):
    store, _ = _record(tiny)
    for policy, seed in [(tiny, 4), (tiny.with_prompt("Be brief."), 3)]:  # another seed; another prompt
        other = _replay.SampleStore(store.samples)
        with _replay.using(other):
            policy.generate_ids(XS, seed=seed, **KW)
        assert (other.live, other.served) == (3, 0)
    tiny.backbone.add_adapter("other")  # other weights: a LoRA adapter (zero at init, yet its own digest)
    other = _replay.SampleStore(store.samples)
    with _replay.using(other):
        tiny.with_adapter("other").generate_ids(XS, seed=3, **KW)
    assert (other.live, other.served) == (3, 0)


def test_unseeded_sampling_and_other_threads_stay_live(tiny, one_thread):
    store = _replay.SampleStore(record=True)
    with _replay.using(store):
        tiny.generate_ids(XS, **KW)  # no seed: not reproducible, never recorded
        worker = threading.Thread(target=lambda: tiny.generate_ids(XS, seed=3, **KW))
        worker.start()
        worker.join()
    assert store.samples == {}
