"""Arrow 6 (reward ⇒ prompt): search, reward-conditioned SFT and the meta-reward, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.reward_to_prompt import ConditionedResult, MetaReward, PromptingFunction, SearchResult

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
        tnb.reward_to_prompt(tiny, n_words, XS, proposals=0)
    with pytest.raises(InvalidArgumentError, match="held-out"):
        tnb.reward_to_prompt(tiny, n_words, ["only one"])
    with pytest.raises(InvalidArgumentError, match="template"):
        PromptingFunction(template="<reward>")


def test_search_keeps_the_best_and_saves(tiny, tmp_path):
    res = tnb.reward_to_prompt(tiny, n_words, XS, candidates=["Answer at length.", "Be brief."], rounds=1,
                               proposals=1, mutations=1, samples=1, max_new_tokens=4, propose_tokens=8)
    assert isinstance(res, SearchResult)
    h = res.history
    assert {"round", "source", "prompt", "score", "best_so_far"} <= set(h.columns)
    assert list(h["source"][:3]) == ["none", "user", "user"] and h["round"].max() == 1
    assert res.metrics["train_best"] == h["score"].max() and np.all(np.diff(h["best_so_far"]) >= 0)
    assert str(res.prompt) == (h.loc[h["score"].idxmax(), "prompt"] or "(empty prompt)")
    for key in ("heldout_best", "heldout_no_prompt", "heldout_gain"):
        assert np.isfinite(res.metrics[key])
    again = SearchResult.load(res.save(tmp_path / "search"))
    assert again.prompt == res.prompt and again.metrics == res.metrics
    assert again.history.equals(res.history)


def test_search_without_user_candidates_proposes_from_scratch(tiny):
    """Round 1 with nothing but the empty prompt scored: the model proposes, nothing to paraphrase yet."""
    res = tnb.reward_to_prompt(tiny, n_words, XS, rounds=1, proposals=2, mutations=1, samples=1,
                               max_new_tokens=4, propose_tokens=8)
    h = res.history
    assert h["source"].iloc[0] == "none" and set(h["source"][1:]) <= {"model", "paraphrase"}
    assert res.metrics["train_best"] == h["score"].max()


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
    assert z.levels == (0.0, 1.0) and str(z(1.0)) == "<reward: 1.00>" and res.prompt == z(1.0)
    lv = z.level_of(np.array([-1e9, 1e9]))
    assert lv[0] == 0.0 and lv[1] == 1.0
    assert "spearman" in res.metrics
    again = ConditionedResult.load(res.save(tmp_path / "cond"), base=tiny)
    assert again.prompting == z and again.prompt == res.prompt
    np.testing.assert_allclose(again.policy.logprobs(XS, ["a b"] * 3).sum, res.policy.logprobs(XS, ["a b"] * 3).sum,
                               atol=1e-5)


def test_a_reward_returning_nan_stops_with_a_clear_error(tiny):
    from triangle_nb.errors import RewardError

    with pytest.raises(RewardError, match="NaN"):
        tnb.reward_to_prompt(tiny, lambda x, y: float("nan"), XS, candidates=["Be brief."], proposals=0,
                             rounds=0, samples=1, max_new_tokens=2)
