"""Self-proposed prompt candidates (triangle_nb.proposals): contrast words, demonstrations, descriptions."""

from __future__ import annotations

import triangle_nb as tnb
from triangle_nb.proposals import contrast_words, demonstrations, describe, style_instruction


def test_contrast_words_are_the_over_represented_ones():
    pirate = ["Arr matey, the sea is calm.", "Arr, my ship sails at dawn.", "The sea, matey, is my home. Arr!"]
    plain = ["The weather is calm today.", "My car starts at dawn.", "Home is where the sea is."]
    words = contrast_words(pirate, plain, 3)
    assert words[:2] == ["arr", "matey"]  # in all three / two of the target texts, in none of the reference
    assert "the" not in words and "calm" not in words  # as frequent in both: log-ratio <= 0
    assert contrast_words(plain, plain, 5) == []  # nothing stands out against itself


def test_style_instruction_and_empty():
    assert style_instruction([]) == []
    (z,) = style_instruction(["arr", "matey"])
    assert z == tnb.Prompt(system="Always answer in a style that uses words like 'arr', 'matey'.")


def test_demonstrations_draw_distinct_inputs_and_are_seeded():
    ex = [("a", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("d", " ")]
    zs = demonstrations(ex, 4, shots=2, seed=0)
    assert zs == demonstrations(ex, 4, shots=2, seed=0) and len(set(zs)) == len(zs) >= 2
    for z in zs:
        xs = [x for x, _ in z.examples]
        assert len(xs) == 2 and len(set(xs)) == 2 and "d" not in xs  # an empty answer is no demonstration
        assert set(z.examples) <= {("a", "2"), ("b", "3"), ("c", "4")}  # one answer per input: the last one
    assert demonstrations([], 3) == []


def test_describe_shows_system_and_examples():
    z = tnb.Prompt(system="Be kind.", examples=(("Hi", "Hello there, friend."),))
    assert describe(z) == "Be kind. [1 examples] Hi → Hello there, friend."
    assert describe(tnb.Prompt()) == "(empty prompt)"
