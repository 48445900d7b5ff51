"""Arrow 6 (reward ⇒ prompt): search, reward-conditioned SFT and the meta-reward, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.arrows.reward_to_prompt import ConditionedResult, MetaReward, PromptingFunction, SearchResult
from triangle_nb.proposals import describe
from triangle_nb.splits import split_inputs
from triangle_nb.soft_prompt import SoftPrompt

XS = ["How was your day?", "Tell me about the sea.", "What is rain?"]


def n_words(x: str, y: str) -> float:
    return float(len(y.split()))


def test_meta_reward_is_minus_distance_to_target():
    length = tnb.rewards.Length()
    ys = ["one two three four", "one"]
    np.testing.assert_array_equal(MetaReward(length, 3.0)(["a", "b"], ys), [-1.0, -2.0])
    np.testing.assert_array_equal(MetaReward(length, {"a": 4, "b": 1})(["a", "b"], ys), [0.0, 0.0])
    np.testing.assert_array_equal(MetaReward(length, lambda x: len(x))(["a", "bb"], ys), [-3.0, -1.0])
    with pytest.raises(Exception, match="no target"):
        MetaReward(length, {"a": 1.0})(["zzz"], ["y"])
    with pytest.raises(InvalidArgumentError):
        MetaReward(length, "high")


def test_bad_arguments(tiny):
    with pytest.raises(InvalidArgumentError, match="method"):
        tnb.reward_to_prompt(tiny, n_words, XS, method="telepathy")
    with pytest.raises(InvalidArgumentError, match="nothing to search"):
        tnb.reward_to_prompt(tiny, n_words, XS, proposals=0, demonstrations=0, style_words=0)
    with pytest.raises(InvalidArgumentError, match="held-out"):
        tnb.reward_to_prompt(tiny, n_words, ["only one"])
    with pytest.raises(InvalidArgumentError, match="template"):
        PromptingFunction(template="<reward>")


def test_search_keeps_the_best_and_saves(tiny, tmp_path):
    res = tnb.reward_to_prompt(tiny, n_words, XS, candidates=["Answer at length.", "Be brief."], rounds=1,
                               proposals=1, edits=1, samples=1, max_new_tokens=4, proposal_tokens=8)
    assert isinstance(res, SearchResult)
    h = res.history
    assert {"round", "source", "prompt", "score", "best_so_far"} <= set(h.columns)
    assert list(h["source"][:3]) == ["none", "user", "user"] and h["round"].max() == 1
    assert res.metrics["reward_train_after"] == h["score"].max() and np.all(np.diff(h["best_so_far"]) >= 0)
    assert describe(res.prompt) == (h.loc[h["score"].idxmax(), "prompt"] or "(empty prompt)")
    for key in ("reward_heldout_after", "reward_heldout_before", "reward_heldout_gain"):
        assert np.isfinite(res.metrics[key])
    again = SearchResult.load(res.save(tmp_path / "search"))
    assert again.prompt == res.prompt and again.metrics == res.metrics
    assert again.history.equals(res.history)


def test_search_without_user_candidates_proposes_from_scratch(tiny):
    """Round 1 with nothing but the empty prompt scored: the highest-reward samples become demonstrations, the
    high-vs-low contrast an instruction, and the model proposes (OPRO)."""
    res = tnb.reward_to_prompt(tiny, n_words, XS, rounds=1, proposals=2, edits=1, samples=2,
                               max_new_tokens=6, proposal_tokens=8, demonstrations=2, shots=2)
    h = res.history
    assert h["source"].iloc[0] == "none" and set(h["source"][1:]) <= {"model", "paraphrase", "demonstrations",
                                                                        "style words", "contrast"}
    assert "demonstrations" in set(h["source"])
    assert res.metrics["reward_train_after"] == h["score"].max()
    # the demonstrations are the no-prompt samples with the highest reward (the top quarter, at least `shots`)
    train, _ = split_inputs(XS, None, 0.25, 0)  # the search's own split and sampling call
    ys = tiny.generate(train, samples=2, max_new_tokens=6, temperature=0.7, seed=0)
    pool = sorted(((n_words(x, y), x, y) for x, g in zip(train, ys, strict=True) for y in g), reverse=True)
    top = {(x, y.strip()) for r, x, y in pool if r >= pool[1][0]}
    first = h[h["source"] == "demonstrations"]["prompt"].iloc[0]
    assert any(f"{x} → {y[:60]}" in first for x, y in top)


def test_conditioned_trains_only_the_adapter_and_round_trips(tiny, tmp_path):
    base = {k: v.detach().clone() for k, v in tiny.backbone.base_model.named_parameters()}
    res = tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", samples=2, max_new_tokens=6,
                               steps=3, batch_size=2, eval_samples=1, bins=2)
    assert isinstance(res, ConditionedResult)
    model = res.policy.backbone.model
    after = {n.replace(".base_layer", ""): p for n, p in res.policy.backbone.base_model.named_parameters()
             if "lora_" not in n}
    assert after.keys() == base.keys()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base weights are bit-identical
    name = res.policy.adapter
    lora_b = [p for n, p in model.named_parameters() if f"lora_B.{name}." in n]
    assert any(bool(p.abs().sum() > 0) for p in lora_b)  # trained (LoRA B starts at zero)
    assert len(res.history) == 3 and np.isfinite(res.history["loss"]).all()
    z = res.prompting
    assert z.levels == (0.0, 1.0) and str(z(1.0)) == "[soft ×9: '<reward: 1.00>']" and res.prompt == z(1.0)
    assert z.names == ("reward",) and len(z.edges) == 1 and z(0.8) == z(1.0)  # soft tags: the nearest level
    start = SoftPrompt.from_text(tiny, "<reward: 1.00>").vectors
    assert not torch.allclose(z(1.0).vectors, start)  # the tag was learned (it starts at the text's embeddings)
    lv = z.level_of(np.array([-1e9, 1e9]))
    assert lv[0] == 0.0 and lv[1] == 1.0
    assert "spearman_heldout_after" in res.metrics
    again = ConditionedResult.load(res.save(tmp_path / "cond"), base=tiny)
    assert again.prompting == z and str(again.prompt) == str(res.prompt)
    for s in z.levels:
        torch.testing.assert_close(again.prompting(s).vectors, z(s).vectors)
        np.testing.assert_allclose(again.policy_for(s).logprobs(XS, ["a b"] * 3).sum,
                                   res.policy_for(s).logprobs(XS, ["a b"] * 3).sum, atol=1e-5)


def test_conditioned_quark_rounds_pool_and_continue_the_same_adapter(tiny):
    """rounds=2: round 2 samples the tuned policy at both levels, pools and re-bins, and trains on (same adapter)."""
    adapters = set(tiny.backbone.model.peft_config) if hasattr(tiny.backbone.model, "peft_config") else set()
    res = tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", samples=4, max_new_tokens=6, steps=2,
                               batch_size=2, eval_samples=1, bins=2, rounds=2, tags="text")
    m, n_train = res.metrics, res.metrics["n_train"]
    assert m["rounds"] == 2 and m["steps"] == 4 and res.history["round"].tolist() == [1, 1, 2, 2]
    assert m["n_pool"] == n_train * 4 + n_train * 2 * (4 // 2)  # π0's samples + the tuned policy's at each level
    assert set(res.policy.backbone.model.peft_config) - adapters == {res.policy.adapter}  # both rounds: one adapter
    with pytest.raises(InvalidArgumentError, match="rounds"):
        tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", rounds=0)


def test_a_reward_returning_nan_stops_with_a_clear_error(tiny):
    from triangle_nb.errors import RewardError

    with pytest.raises(RewardError, match="NaN"):
        tnb.reward_to_prompt(tiny, lambda x, y: float("nan"), XS, candidates=["Be brief."], proposals=0,
                             rounds=0, samples=1, max_new_tokens=2)


def test_conditioned_input_bins_give_every_input_every_level():
    from triangle_nb.arrows.reward_to_prompt import ConditionedConfig, _bin, _rank_levels

    cfg = ConditionedConfig(bins=3, samples=3)
    r = np.array([[0.0], [5.0], [1.0], [9.0], [7.0], [8.0]])  # two inputs, three samples each (x-major)
    zfun = _bin(r, ["reward"], cfg)
    xs = ["a", "a", "a", "b", "b", "b"]
    assert _rank_levels(r, xs, zfun)[:, 0].tolist() == [0.0, 1.0, 0.5, 1.0, 0.0, 0.5]
    tied = _rank_levels(np.array([[2.0], [2.0], [2.0]]), ["a"] * 3, zfun)
    assert tied[:, 0].tolist() == [0.5, 0.5, 0.5]  # ties share a level: no arbitrary order
    # a pool where inputs have different numbers of answers (Quark's later rounds add samples): ranks per input
    mixed = _rank_levels(np.array([[1.0], [3.0], [2.0], [5.0], [4.0], [0.0]]), ["a", "b", "a", "b", "a", "a"], zfun)
    assert mixed[:, 0].tolist() == [0.5, 0.0, 0.5, 1.0, 1.0, 0.0]
    # pooled quantile bins (Quark's global ones): the first input never gets the top level
    assert zfun.level_of(r[:, 0]).tolist() == [0.0, 0.5, 0.0, 1.0, 0.5, 1.0]


def test_multi_reward_control_renders_one_tag_per_reward_and_round_trips(tiny, tmp_path):
    rewards = {"words": n_words, "chars": lambda x, y: float(len(y))}
    res = tnb.reward_to_prompt(tiny, rewards, XS, method="conditioned", samples=2, max_new_tokens=6, steps=2,
                               batch_size=2, eval_samples=1, bins=2, tags="text")
    z = res.prompting
    assert z.names == ("words", "chars") and len(z.edges) == 2
    assert str(z({"words": 0, "chars": 1})) == "<words: 0.00> <chars: 1.00>" == str(z([0, 1]))
    assert res.prompt == z([1, 1])
    assert {"spearman_words_heldout_after", "spearman_chars_heldout_after", "spearman_heldout_after", "chars_heldout_at_1.00"} <= res.metrics.keys()
    assert len(res.achieved(name="chars")) == 2
    again = ConditionedResult.load(res.save(tmp_path / "multi"), base=tiny)
    assert again.prompting == z
    with pytest.raises(InvalidArgumentError, match="one level per reward"):
        z(0.5)
    with pytest.raises(InvalidArgumentError, match="method='conditioned'"):
        tnb.reward_to_prompt(tiny, rewards, XS, method="search")
    with pytest.raises(InvalidArgumentError, match="must be a word"):
        tnb.reward_to_prompt(tiny, {"two words": n_words}, XS, method="conditioned")


def test_guidance_is_the_eq7_contrast_with_the_mirrored_tag(tiny):
    """policy_for(s, guidance=γ) = (1+γ)·log π(·|x,z(s)) − γ·log π(·|x,z(1−s)), renormalised, token by token."""
    res = tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", samples=2, max_new_tokens=4, steps=2,
                               batch_size=2, eval_samples=1, bins=3, guidance=2.0)
    assert res.info["guidance"] == 2.0
    hi, lo, mid = (res.policy_for(s, guidance=0) for s in (1.0, 0.0, 0.5))
    guided = res.policy_for(1.0)  # the guidance it was trained with
    a, b = hi.next_token_logprobs(XS), lo.next_token_logprobs(XS)
    expected = torch.log_softmax(3.0 * a - 2.0 * b, dim=-1)
    torch.testing.assert_close(guided.next_token_logprobs(XS), expected, rtol=1e-4, atol=1e-4)
    plain = res.policy_for(0.5)  # the middle level is its own mirror: nothing to contrast
    assert isinstance(plain, tnb.Policy) and plain.prompt == mid.prompt
    m = res.control(n_words, XS[:2], guidance=1.0, samples=1, max_new_tokens=3)
    assert set(m) >= {"spearman_heldout_after", "reward_heldout_at_0.00", "reward_heldout_at_1.00"}
    with pytest.raises(InvalidArgumentError, match="guidance"):
        res.policy_for(1.0, guidance=-1)
    with pytest.raises(InvalidArgumentError, match="guidance"):
        tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", guidance=float("nan"))
