"""Arrow 2 (update ⇒ reward, Eq. 4) and the Eq. 7 steering engine: identities on the tiny model,
one real-model effect (prompt-contrast steering moves sentiment)."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import triangle_nb as tnb
from triangle_nb.testing import perturbed_adapter
from triangle_nb.backbone import Backbone
from triangle_nb.errors import InvalidArgumentError, VocabularyMismatchError
from triangle_nb.policy import Policy
from triangle_nb.arrows.update_to_reward import LogRatioReward, joint_logprobs, rerank

XS = ["Hi", "Tell me about rain, please.", "What is 2+2?"]
YS = ["Hello there!", "Rain is water falling from clouds.", "4"]
BAD_BETAS = [0, 0.0, -1.0, math.nan, math.inf, -math.inf, "big", None]


def other_vocab_policy(tiny):
    cfg = LlamaConfig(vocab_size=tiny.backbone.vocab_size + 64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Policy(Backbone(LlamaForCausalLM(cfg).eval(), tiny.tokenizer, name="other-vocab"))


# -- Eq. 4: the log-ratio reward -----------------------------------------------------------------
def test_log_ratio_of_a_policy_with_itself_is_exactly_zero(tiny):
    z = tiny.with_prompt("You are cheerful.")
    for p in (tiny, z):
        r = tnb.update_to_reward(p, p, beta=3.0)
        assert np.array_equal(r(XS, YS), np.zeros(len(XS)))
        assert np.array_equal(r.token_scores(XS[1], YS[1]).scores, np.zeros(len(r.token_scores(XS[1], YS[1]).tokens)))


def test_log_ratio_is_beta_times_logprob_difference_prompted_and_adapter(tiny):
    pa = perturbed_adapter(tiny)
    for pi_star, pi0 in [(tiny.with_prompt("You are cheerful."), tiny), (pa, tiny), (pa, pa.with_prompt("Be terse."))]:
        r = tnb.update_to_reward(pi_star, pi0, beta=0.5)
        expected = 0.5 * (pi_star.logprobs(XS, YS).sum - pi0.logprobs(XS, YS).sum)
        np.testing.assert_allclose(r(XS, YS), expected, rtol=1e-5, atol=1e-4)
        assert np.abs(expected).max() > 1e-3  # the pair really differs


def test_token_scores_decompose_the_reward(tiny):
    r = tnb.update_to_reward(tiny.with_prompt("You are cheerful."), tiny, beta=2.0)
    tokens, scores = r.token_scores(XS[1], YS[1])
    assert tokens[-1] == "<|im_end|>" and len(tokens) == len(scores)
    np.testing.assert_allclose(scores.sum(), r([XS[1]], [YS[1]])[0], rtol=1e-6, atol=1e-6)
    batch = r.token_scores_batch(XS, YS)
    assert [len(b.tokens) for b in batch] == [len(t) for t in tiny.logprobs(XS, YS).tokens]


def test_two_checkpoints_with_one_vocabulary(tiny):
    from triangle_nb.testing import tiny_policy

    other = tiny_policy(seed=1)  # another set of weights, same tokenizer
    r = tnb.update_to_reward(other, tiny)
    np.testing.assert_allclose(r(XS, YS), other.logprobs(XS, YS).sum - tiny.logprobs(XS, YS).sum, rtol=1e-5, atol=1e-4)


def test_joint_scoring_matches_separate_scoring(tiny):
    pols = [tiny, perturbed_adapter(tiny), tiny.with_prompt("Z"), tiny.at_layer(1)]
    joint = joint_logprobs(pols, XS, YS, batch_size=2)
    for p, lp in zip(pols, joint):
        sep = p.logprobs(XS, YS)
        assert lp.token_ids == sep.token_ids
        for a, b in zip(lp.per_token, sep.per_token):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_vocabulary_mismatch_is_a_clear_error(tiny):
    other = other_vocab_policy(tiny)
    with pytest.raises(VocabularyMismatchError, match="vocabulary"):
        tnb.update_to_reward(other, tiny)
    with pytest.raises(VocabularyMismatchError):
        tnb.steer(base=tiny, expert=other, anti=tiny)


def test_bad_beta_is_rejected(tiny):
    for beta in BAD_BETAS:
        with pytest.raises(InvalidArgumentError, match="beta"):
            tnb.update_to_reward(tiny, tiny, beta=beta)
        with pytest.raises(InvalidArgumentError, match="beta"):
            tnb.steer(base=tiny, expert=tiny, anti=tiny, beta=beta)


def test_bad_inputs(tiny):
    r = tnb.update_to_reward(tiny, tiny)
    with pytest.raises(InvalidArgumentError):
        r(["a", "b"], ["only one"])
    assert r([], []).shape == (0,)
    with pytest.raises(InvalidArgumentError, match="Policy"):
        LogRatioReward("not a policy", tiny)
    with pytest.raises(InvalidArgumentError, match="either"):
        tnb.steer(base=tiny, parts=[(tiny, 1.0)])
    with pytest.raises(InvalidArgumentError):
        tnb.steer(base=tiny, expert=tiny)
    for parts in ([], [(tiny, math.nan)], [(tiny,)], [("p", 1.0)], [(tiny, "w")]):
        with pytest.raises(InvalidArgumentError):
            tnb.steer(parts=parts)


# -- Eq. 7: steering identities --------------------------------------------------------------------
def test_steer_with_expert_equal_to_anti_generates_the_base(tiny):
    q = tiny.with_prompt("You are a cheerful assistant.")
    pol = tnb.steer(base=tiny, expert=q, anti=q, beta=0.5)
    assert [w for _, w in pol.parts] == [1.0, 2.0, -2.0]
    kw = dict(max_new_tokens=10)
    assert pol.generate_ids(XS, **kw) == tiny.generate_ids(XS, **kw)
    assert pol.generate_ids(XS, temperature=1.0, seed=3, **kw) == tiny.generate_ids(XS, temperature=1.0, seed=3, **kw)
    np.testing.assert_allclose(pol.logprobs(XS, YS).sum, tiny.logprobs(XS, YS).sum, rtol=1e-5, atol=1e-4)


def test_steer_with_huge_beta_equals_the_base(tiny):
    pol = tnb.steer(base=tiny, expert=perturbed_adapter(tiny), anti=tiny.with_prompt("You are gloomy."), beta=1e9)
    assert pol.generate_ids(XS, max_new_tokens=10) == tiny.generate_ids(XS, max_new_tokens=10)
    np.testing.assert_allclose(pol.logprobs(XS, YS).sum, tiny.logprobs(XS, YS).sum, rtol=1e-6, atol=1e-5)


def test_steered_next_token_distribution_is_eq7_and_normalised(tiny):
    q, a = perturbed_adapter(tiny), tiny.with_prompt("You are gloomy.")
    pol = tnb.steer(base=tiny, expert=q, anti=a, beta=0.25)
    got = pol.next_token_logprobs(XS, ["It", "", "The answer"])
    parts = [p.next_token_logprobs(XS, ["It", "", "The answer"]) for p in (tiny, q, a)]
    expected = torch.log_softmax(parts[0] + 4 * parts[1] - 4 * parts[2], dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(len(XS)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, parts[0], atol=1e-3)  # it really steers


def test_steer_general_form_and_trace(tiny):
    q = tiny.with_prompt("You are cheerful.")
    pol = tnb.steer(parts=[(tiny, 1.0), (q, 0.5)], label="mix")
    ids = pol.generate_ids([XS[0]], max_new_tokens=6)[0]
    trace = tnb.steer_trace(pol, XS[0], max_new_tokens=6)
    assert trace.token_ids == ids and trace.labels == ["pi_0", "pi_1"] and trace.weights == [1.0, 0.5]
    assert trace.component_logprobs.shape == (len(ids), 2, tiny.backbone.vocab_size)
    torch.testing.assert_close(trace.combined_logprobs.exp().sum(-1), torch.ones(len(ids)))
    chosen = trace.chosen()
    assert chosen.shape == (3, len(ids)) and np.all(chosen[-1] <= 0)
    assert (trace.combined_logprobs.argmax(-1).tolist() == ids)  # greedy picks the argmax of π2
    frame = trace.frame()
    assert list(frame.columns) == ["step", "token", "pi_0", "pi_1", "combined"] and len(frame) == len(ids)
    top = trace.top(3, step=0)
    assert len(top) == 3 and len(top[0][1]) == 3 and top[0][0] == trace.tokens[0]


def test_rerank_with_the_log_ratio_reward(tiny):
    r = tnb.update_to_reward(tiny.with_prompt("You are cheerful."), tiny)
    best, scores = rerank(tiny, r, XS[:2], samples=3, max_new_tokens=4, seed=0)
    assert len(best) == 2 and scores.shape == (2,)
    np.testing.assert_allclose(r(XS[:2], best), scores, rtol=1e-5, atol=1e-5)


# -- the real model ----------------------------------------------------------------------------------
NEUTRAL = ["Describe a typical Monday morning.", "Tell me about the weather today.",
           "What do you think of public transport?", "Describe your neighbourhood.",
           "Write a sentence about an old house.", "Tell me about a rainy afternoon.",
           "What is a train station like?", "Describe a long queue at a shop."]
CHEERFUL = "You are a cheerful, upbeat assistant. You love everything and always sound happy and positive."
GLOOMY = "You are a gloomy, pessimistic assistant. Everything is sad, bleak and disappointing to you."


@pytest.mark.slow
def test_prompt_contrast_steering_moves_sentiment(pi0):
    """Eq. 7 with expert = cheerful z, anti = gloomy z, β = 1, greedy, 32 tokens; inputs never tuned on."""
    up, down = pi0.with_prompt(CHEERFUL), pi0.with_prompt(GLOOMY)
    sentiment = tnb.rewards.Sentiment()
    mean = {name: float(sentiment(NEUTRAL, pol.generate(NEUTRAL, max_new_tokens=32)).mean()) for name, pol in [
        ("base", pi0), ("up", tnb.steer(base=pi0, expert=up, anti=down, beta=1.0)),
        ("down", tnb.steer(base=pi0, expert=down, anti=up, beta=1.0))]}
    assert mean["up"] - mean["base"] >= 0.2, mean
    assert mean["down"] - mean["base"] <= -0.15, mean
