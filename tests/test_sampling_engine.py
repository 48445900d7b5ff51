"""Sampling on the device with transformers' logits processors, and streaming."""

import threading

import pytest
import torch
from transformers import TextIteratorStreamer

from triangle_nb.chat import prompt_ids
from triangle_nb.decoding import Sampling
from triangle_nb.errors import InvalidArgumentError

pytestmark = pytest.mark.usefixtures("one_thread")

X = "Tell me about rain."


def _hf_generate(policy, seed, **options):
    """transformers' own `model.generate` sampling on one unpadded input: the reference."""
    bb = policy.backbone
    ids = torch.tensor([prompt_ids(bb.tokenizer, policy.prompt, X)])
    torch.manual_seed(seed)  # our draws use a generator seeded the same way: the same stream
    out = bb.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=12,
                            pad_token_id=bb.pad_id, eos_token_id=list(bb.stop_ids), top_k=options.pop("top_k", 0),
                            **options)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("options", [dict(temperature=0.7, top_k=20, top_p=0.9), dict(temperature=1.3, min_p=0.1),
                                     dict(temperature=1.0, typical_p=0.8), dict(temperature=0.5, top_k=3)])
def test_seeded_sampling_equals_transformers_generate(tiny, options):
    ours = tiny.generate_ids([X], max_new_tokens=12, seed=5, **options)[0]
    assert ours == _hf_generate(tiny, 5, **dict(options))[: len(ours)]


def test_sampling_is_reproducible_and_seeds_differ(tiny):
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=50, seed=11)
    assert tiny.generate_ids([X, "Hi"], **kw) == tiny.generate_ids([X, "Hi"], **kw)
    assert tiny.generate_ids([X, "Hi"], **kw) != tiny.generate_ids([X, "Hi"], **dict(kw, seed=12))


def test_repetition_penalty_is_transformers_processor_on_the_combined_logprobs(tiny):
    plain = tiny.generate_ids([X], max_new_tokens=12)[0]
    penalised = tiny.generate_ids([X], max_new_tokens=12, repetition_penalty=5.0)[0]
    assert len(set(plain)) < len(plain)  # the tiny random model repeats itself greedily
    assert len(set(penalised)) == len(penalised) and penalised[0] == plain[0]  # nothing to penalise at step 0


def test_processors_are_transformers_own_in_generate_order():
    names = [type(p).__name__ for p in Sampling(temperature=0.8, top_k=5, top_p=0.9, min_p=0.1, typical_p=0.9,
                                                repetition_penalty=1.2).processors()]
    assert names == ["RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
                     "TopPLogitsWarper", "MinPLogitsWarper", "TypicalLogitsWarper"]
    assert [type(p).__name__ for p in Sampling(top_k=5, top_p=0.5).processors()] == []  # greedy: argmax only


@pytest.mark.parametrize(("field", "value", "match"), [
    ("top_k", 0, "top_k must be an integer >= 1"), ("top_k", 2.5, "top_k"), ("min_p", 1.5, r"min_p must be in \[0, 1\]"),
    ("min_p", -0.1, "min_p"), ("typical_p", 0.0, r"typical_p must be in \(0, 1\]"),
    ("repetition_penalty", 0.0, "repetition_penalty must be a finite number > 0"),
    ("repetition_penalty", -1.0, "repetition_penalty"), ("top_p", 0.0, "top_p"), ("temperature", -1.0, "temperature")])
def test_bad_sampling_options_name_the_parameter(tiny, field, value, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tiny.generate([X], max_new_tokens=2, **{field: value})


def test_stream_yields_the_generated_text_piece_by_piece(tiny):
    for kw in (dict(temperature=1.0, seed=2), dict(temperature=0.7, top_k=20, seed=3)):  # greedy: only newlines
        pieces = list(tiny.stream(X, max_new_tokens=10, **kw))
        assert len(pieces) > 1 and "".join(pieces) == tiny.generate([X], max_new_tokens=10, **kw)[0]


def test_a_transformers_streamer_receives_the_tokens_as_generate_gives_them(tiny):
    pos = tiny.with_prompt("You are cheerful.")
    pol = 1.5 * pos - 0.5 * tiny
    streamer = TextIteratorStreamer(tiny.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(text=pol.generate([X], max_new_tokens=10, streamer=streamer)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed.strip() == result["text"][0]
