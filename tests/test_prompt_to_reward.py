"""Arrow 5 (prompt ⇒ reward): identities on a tiny model, and the effect on the real default model."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import triangle_nb as tnb
from triangle_nb.errors import InvalidArgumentError, JudgeParseError, RewardError
from triangle_nb.arrows.prompt_to_reward import (
    BradleyTerryReward,
    ContrastiveReward,
    JudgeReward,
    agreement,
    pair_accuracy,
    parse_score,
    score_range,
    train_reward_model,
)

XS = ["How was your day?", "Tell me about the sea."]
YS = ["It was lovely, thanks!", "The sea is grey and cold."]
CHEERFUL, GLOOMY = "You are a cheerful assistant.", "You are a gloomy assistant."
RUBRIC = "You are a judge. Rate how positive and cheerful the answer is on a scale from 1 to 5, where 1 means very negative and 5 means very positive."

# Held-out pairs (never used to pick prompts or templates): a neutral question, a positive and a negative answer.
HELDOUT = [
    ("How was the hotel?", "Lovely! The room was spacious and the staff were delightful.", "Awful. The room was filthy and the staff were rude."),
    ("What do you think of the new phone?", "I adore it, the screen is gorgeous and it runs smoothly.", "I regret buying it, the screen is dim and it keeps crashing."),
    ("How was your holiday?", "Wonderful, we relaxed every day and came back refreshed.", "Miserable, we were sick every day and came back exhausted."),
    ("How is the weather in your town?", "Bright and sunny, perfect for a walk in the park.", "Dark and stormy, nobody dares to leave the house."),
    ("What was dinner like?", "A delightful meal, everything tasted wonderful.", "A horrible meal, everything tasted burnt."),
    ("How did the meeting go?", "Really well, everyone agreed and we made great progress.", "Badly, everyone argued and we got nowhere."),
    ("How is your sister?", "She's doing great and is happier than ever.", "She's struggling and is sadder than ever."),
    ("What is the park like?", "Green and peaceful, with children laughing everywhere.", "Neglected and bleak, with litter everywhere."),
    ("How was the football match?", "Thrilling, our team won and the fans celebrated.", "Painful, our team lost and the fans were furious."),
    ("What do you think of the city?", "A vibrant, welcoming place full of wonderful surprises.", "A grim, hostile place full of unpleasant surprises."),
    ("How did the cake turn out?", "Perfect, light and sweet, everyone loved it.", "Ruined, burnt and bitter, everyone hated it."),
    ("How was the train journey?", "Relaxing, with gorgeous views the whole way.", "Exhausting, with endless delays the whole way."),
]
HX, HPOS, HNEG = ([p[i] for p in HELDOUT] for i in range(3))


# -- tiny-model identities ----------------------------------------------------------------------
def test_contrastive_same_prompt_is_exactly_zero_and_warns(tiny):
    with pytest.warns(UserWarning, match="identically 0"):
        r = tnb.prompt_to_reward(tiny, CHEERFUL, CHEERFUL)
    assert np.array_equal(r(XS, YS), np.zeros(2))


def test_contrastive_token_scores_sum_to_sequence_score(tiny):
    r = tnb.prompt_to_reward(tiny, CHEERFUL, GLOOMY)
    seq = r(XS, YS)
    for i in range(2):
        ts = r.token_scores(XS[i], YS[i])
        assert len(ts.tokens) == len(ts.scores) > 0
        assert math.isclose(ts.total, seq[i], rel_tol=1e-9, abs_tol=1e-9)


def test_contrastive_matches_two_separate_logprob_calls(tiny):
    r = tnb.prompt_to_reward(tiny, CHEERFUL, GLOOMY, batch_size=2)  # one pair per forward
    ref = tiny.with_prompt(CHEERFUL).logprobs(XS, YS).sum - tiny.with_prompt(GLOOMY).logprobs(XS, YS).sum
    np.testing.assert_allclose(r(XS, YS), ref, atol=1e-4)


def test_contrastive_without_negative_prompt_uses_no_prompt(tiny):
    r = tnb.prompt_to_reward(tiny, CHEERFUL)
    ref = tiny.with_prompt(CHEERFUL).logprobs(XS, YS).sum - tiny.logprobs(XS, YS).sum
    np.testing.assert_allclose(r(XS, YS), ref, atol=1e-4)


def test_bad_method_and_bad_rubric(tiny):
    with pytest.raises(InvalidArgumentError, match="method"):
        tnb.prompt_to_reward(tiny, CHEERFUL, method="vibes")
    with pytest.raises(InvalidArgumentError, match="score range"):
        tnb.prompt_to_reward(tiny, "Be a fair judge.", method="judge")
    with pytest.raises(InvalidArgumentError, match="one rubric"):
        tnb.prompt_to_reward(tiny, RUBRIC, GLOOMY, method="judge")
    with pytest.raises(InvalidArgumentError, match="single-digit"):
        tnb.prompt_to_reward(tiny, "Score from 5 to 15.", method="judge")


def test_score_range_and_parse_never_eval():
    assert score_range(tnb.Prompt(system="on a scale from 1 to 5")) == (1, 5)
    assert score_range(tnb.Prompt(system="score 0-9")) == (0, 9)
    assert parse_score("The score is 4.", 1, 5) == 4
    assert parse_score("I give it 3/5", 1, 5) == 3
    assert parse_score("Out of 1 to 5, score: 2", 1, 5) == 2
    assert math.isnan(parse_score("__import__('os').system('echo hi')", 1, 5))
    assert math.isnan(parse_score("It is 7 out of 10", 1, 5))


def test_judge_expected_score_is_in_range_and_deterministic(tiny):
    r = tnb.prompt_to_reward(tiny, RUBRIC, method="judge")
    a, b = r(XS, YS), r(XS, YS)
    assert np.array_equal(a, b) and np.all((a >= 1) & (a <= 5))
    table = r.details(XS, YS)
    assert table["ok"].all() and np.all((table["mass"] > 0) & (table["mass"] <= 1 + 1e-9))


def test_judge_parse_failure_is_per_item(tiny):
    r = tnb.prompt_to_reward(tiny, RUBRIC, method="judge", readout="verbalised", max_new_tokens=3)
    table = r.details(XS, YS)  # a random model answers with noise: no number in [1, 5]
    assert list(table.columns[:3]) == ["score", "ok", "raw"]
    bad = ~table["ok"]
    assert table["score"][bad].isna().all()
    if bad.any():
        with pytest.warns(UserWarning, match="no parsable score"):
            out = r(XS, YS)
        assert np.all(out[bad.to_numpy()] == 3.0)
        strict = tnb.prompt_to_reward(tiny, RUBRIC, method="judge", readout="verbalised", max_new_tokens=3,
                                      strict=True)
        with pytest.raises(JudgeParseError):
            strict(XS, YS)


def test_judge_chain_of_thought_runs(tiny):
    r = tnb.prompt_to_reward(tiny, RUBRIC, method="judge", chain_of_thought=True, max_new_tokens=6)
    assert "Explain" in r.options.template
    out = r(XS, YS)
    assert out.shape == (2,) and np.all((out >= 1) & (out <= 5))


def test_contrastive_pairs_dataset(tiny):
    ds = tnb.contrastive_pairs(tiny, CHEERFUL, GLOOMY, XS, max_new_tokens=4)
    assert ds.column_names == ["prompt", "chosen", "rejected"] and ds["prompt"] == XS


def test_bradley_terry_learns_a_separable_preference(tmp_path):
    rng = np.random.default_rng(0)
    good = ["Wonderful, I loved it!", "Great news, thank you so much!", "What a lovely, sunny day.",
            "I am delighted with the result.", "Fantastic work, well done!", "This makes me very happy."]
    bad = ["Awful, I hated it.", "Terrible news, how sad.", "What a miserable, rainy day.",
           "I am disappointed with the result.", "Dreadful work, very poor.", "This makes me very angry."]
    xs = [f"Question {i}" for i in range(12)]
    pairs = {"prompt": xs, "chosen": [good[i % 6] for i in rng.permutation(12)],
             "rejected": [bad[i % 6] for i in rng.permutation(12)]}
    r = train_reward_model(pairs, holdout=0.25, steps=100)
    assert isinstance(r, BradleyTerryReward)
    assert r.metrics["accuracy_train_after"] == 1.0 and r.metrics["accuracy_heldout_after"] >= 0.66
    assert r(["Q"], ["I love this"])[0] > r(["Q"], ["I hate this"])[0]
    n = r.metrics["n_heldout"]
    assert n == 3 and f"(n = 3: too few to quote" in repr(r)  # a student never quotes 1.00 on 3 pairs unlabelled
    again = BradleyTerryReward.load(r.save(tmp_path / "bt"))
    np.testing.assert_array_equal(again(xs, good * 2), r(xs, good * 2))


def test_agreement_report():
    xs, ya, yb = ["a", "b", "c"], ["good great", "fine", "x y z"], ["bad", "awful terrible", "x"]
    rep = agreement(tnb.rewards.Length(), tnb.rewards.Length(), xs, ya, yb)
    assert rep.pair_accuracy == 1.0 and rep.spearman == pytest.approx(1.0) and rep.n_pairs == 3
    neg = agreement(lambda x, y: -len(y.split()), tnb.rewards.Length(), xs, ya, yb)
    assert neg.pair_accuracy == 0.0
    assert pair_accuracy(tnb.rewards.Length(), xs, ya, yb) == pytest.approx(2 / 3)
    with pytest.raises(RewardError):
        agreement(lambda x, y: float("nan"), tnb.rewards.Length(), xs, ya, yb)


# -- the real default model ---------------------------------------------------------------------
@pytest.mark.slow
def test_contrastive_ranks_cheerful_above_gloomy_on_heldout_pairs(pi0):
    r = tnb.prompt_to_reward(pi0, CHEERFUL, GLOOMY)
    assert isinstance(r, ContrastiveReward)
    acc = pair_accuracy(r, HX, HPOS, HNEG)
    assert acc >= 0.83, acc


@pytest.mark.slow
def test_probability_weighted_judge_beats_chance_on_heldout_pairs(pi0):
    r = tnb.prompt_to_reward(pi0, RUBRIC, method="judge")
    assert isinstance(r, JudgeReward)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected read-out never falls back
        acc = pair_accuracy(r, HX, HPOS, HNEG)
    assert acc >= 0.6, acc
