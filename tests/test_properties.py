"""Property tests (issue #9): any Unicode text goes through generate, logprobs, Prompt rendering and the
token heatmap without a crash, with consistent shapes and log π(y|x) finite and ≤ 0.

Texts mix emoji, right-to-left scripts, control characters, special-token look-alikes, very long
words and empty strings. The tiny random model keeps each example fast (examples are capped).
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import triangle_nb as tnb
from triangle_nb.chat import prompt_ids
from triangle_nb.testing import tiny_policy

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

EMOJI = ["🙂", "👩🏽‍🚀", "🏳️‍🌈", "🇫🇷", "\u2764\ufe0f"]
RTL = ["مرحبا بالعالم", "שלום עולם", "\u202eevil\u202c", "\u200f\u200e"]
CONTROL = ["\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\x7f", "\u2028", "\ufeff", "\u200b"]
SPECIAL = ["<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>", "{{ messages }}", "{% raw %}"]

# any valid Unicode text (lone surrogates are not text: they are a catalogued bad input)
unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
pieces = st.sampled_from(EMOJI + RTL + CONTROL + SPECIAL)
long_word = st.builds(lambda s, k: (s * k)[:120], st.text(st.characters(exclude_categories=("Cs",)),
                                                          min_size=1, max_size=3), st.integers(20, 120))
texts = st.one_of(st.just(""), unicode_text, long_word,
                  st.lists(st.one_of(pieces, unicode_text), max_size=6).map("".join))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> tnb.Policy:
    return tiny_policy()


@SETTINGS
@given(x=texts, y=texts)
def test_logprobs_and_heatmap(tiny: tnb.Policy, x: str, y: str) -> None:
    lp = tiny.logprobs([x, "Hi"], [y, y], truncate=True)  # a long word may not fit the 512-token window
    assert lp.sum.shape == (2,) and np.all(np.isfinite(lp.sum)) and np.all(lp.sum <= 0)
    for per, ids, toks in zip(lp.per_token, lp.token_ids, lp.tokens, strict=True):
        assert len(per) == len(ids) == len(toks) >= 1  # y's tokens + the end-of-turn token
    assert lp.token_ids[0] == lp.token_ids[1]  # y tokenises the same whatever x is
    alone = tiny.logprobs([x], [y], truncate=True).sum[0]
    assert alone == pytest.approx(lp.sum[0], abs=1e-3)  # batching (padding) does not leak
    heatmap(tiny, lp.token_ids[0], lp.per_token[0], label=x)


def heatmap(tiny: tnb.Policy, ids: list[int], values: np.ndarray, label: str) -> None:
    """The token heatmap (panels) shows one coloured span per scored token, whatever the text."""
    try:
        from triangle_nb.panels import TokenHeatmap, readable_tokens
    except ImportError:  # the widget extras are not installed
        return
    view = TokenHeatmap(readable_tokens(tiny.tokenizer, ids), values, label=label)
    assert len(view.tokens) == len(view.values) == len(values)
    assert view.to_html().count("<span") == len(values)


@SETTINGS
@given(x=texts)
def test_generate_returns_text(tiny: tnb.Policy, x: str) -> None:
    out = tiny.generate([x, ""], max_new_tokens=3, temperature=1.0, seed=0, truncate=True)
    assert len(out) == 2 and all(isinstance(y, str) for y in out)
    assert len(tiny.generate_ids([x], max_new_tokens=3, truncate=True)[0]) <= 3


@SETTINGS
@given(system=texts, context=texts, ex_x=texts, ex_y=texts, x=texts)
def test_prompt_renders_and_round_trips(tiny: tnb.Policy, system: str, context: str, ex_x: str, ex_y: str,
                                       x: str) -> None:
    z = tnb.Prompt(system=system, examples=[(ex_x, ex_y)], context=context)
    ids = prompt_ids(tiny.tokenizer, z, x)
    assert ids and all(isinstance(i, int) and 0 <= i < tiny.backbone.vocab_size for i in ids)
    assert len(ids) >= len(prompt_ids(tiny.tokenizer, tnb.Prompt(), ""))
    assert tnb.Prompt.from_dict(z.to_dict()) == z and hash(tnb.Prompt.from_dict(z.to_dict())) == hash(z)
    msgs, system = z.to_messages(x), z.system_text()
    assert len(msgs) == bool(system) + 2 + 1 and msgs[-1] == {"role": "user", "content": x}  # system?, example, x
    assert msgs[-3:-1] == [{"role": "user", "content": ex_x}, {"role": "assistant", "content": ex_y}]
    assert str(z) == (msgs[0]["content"] if system else "(empty prompt)")  # str(z) shows the system turn z adds
