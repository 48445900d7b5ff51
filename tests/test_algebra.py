"""Policy algebra (w·π, a + b, a − b, union, intersection), reward-guided decoding and saved compositions."""

import math

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb import presets
from triangle_nb.algebra import RewardGuidedRule, SumRule
from triangle_nb.decoding import weighted_sum
from triangle_nb.errors import InvalidArgumentError, ModelLoadError, RewardError, VocabularyMismatchError
from triangle_nb.rewards import FunctionReward, Length
from triangle_nb.testing import perturbed_adapter, tiny_policy

pytestmark = pytest.mark.usefixtures("one_thread")

XS = ["Hi", "Tell me about rain, please."]
YS = ["Hello there!", "Rain is water."]
GEN = dict(max_new_tokens=6)


@pytest.fixture()
def trio(tiny):
    return tiny, tiny.with_prompt("You are cheerful."), tiny.with_prompt("You are gloomy.")


def test_weighted_difference_is_exactly_the_general_steer(trio):
    _, pos, neg = trio
    algebra, steer = 1.5 * pos - 0.5 * neg, tnb.steer(parts=[(pos, 1.5), (neg, -0.5)])
    assert algebra.parts == steer.parts and algebra.combine is steer.combine
    assert algebra.generate_ids(XS, **GEN) == steer.generate_ids(XS, **GEN)
    np.testing.assert_array_equal(algebra.logprobs(XS, YS).sum, steer.logprobs(XS, YS).sum)


def test_sum_and_difference_are_exactly_steer_at_beta_one(trio):
    p, pos, neg = trio
    algebra, steer = p + pos - neg, tnb.steer(base=p, expert=pos, anti=neg, beta=1.0)
    assert algebra.parts == steer.parts
    sampled = dict(GEN, temperature=1.0, seed=3)
    assert algebra.generate_ids(XS, **sampled) == steer.generate_ids(XS, **sampled)


def test_scaling_division_negation_and_sum_builtin(trio):
    p, pos, neg = trio
    assert (pos / 2).parts == ((pos, 0.5),)
    assert (-neg).parts == ((neg, -1.0),)
    assert sum([pos, neg]).parts == ((pos, 1.0), (neg, 1.0))
    assert (2 * (pos - neg)).parts == ((pos, 2.0), (neg, -2.0))


def test_union_and_intersection_are_the_normalised_max_and_min(trio):
    _, pos, neg = trio
    lp, ln = pos.next_token_logprobs(XS), neg.next_token_logprobs(XS)
    torch.testing.assert_close(tnb.union(pos, neg).next_token_logprobs(XS), torch.log_softmax(torch.maximum(lp, ln), -1))
    torch.testing.assert_close(tnb.intersection(pos, neg).next_token_logprobs(XS),
                               torch.log_softmax(torch.minimum(lp, ln), -1))


def test_a_composition_with_its_own_rule_enters_a_sum_as_its_normalised_logprobs(trio):
    p, pos, neg = trio
    u = tnb.union(pos, neg)
    mixed = 0.5 * u + p
    assert isinstance(mixed.combine, SumRule)
    expected = 0.5 * u.next_token_logprobs(XS) + p.next_token_logprobs(XS)
    torch.testing.assert_close(mixed.next_token_logprobs(XS), torch.log_softmax(expected, -1))
    # a masked composition keeps its mask inside a sum, also when subtracted (no +inf)
    masked = presets.cd(pos, neg, alpha=0.5)
    diff = p - 0.5 * masked
    lp = diff.next_token_logprobs(XS)
    ruled_out = ~torch.isfinite(masked.next_token_logprobs(XS))
    assert bool(ruled_out.any()) and bool(torch.isneginf(lp[ruled_out]).all())
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(XS)))


def test_algebra_over_lora_components_runs_in_one_engine(tiny):
    star = perturbed_adapter(tiny)
    pol = 2 * star - tiny
    torch.testing.assert_close(pol.next_token_logprobs(XS),
                               torch.log_softmax(2 * star.next_token_logprobs(XS) - tiny.next_token_logprobs(XS), -1))
    assert len(pol.generate(XS, **GEN)) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "2", None, True])
def test_algebra_rejects_a_non_finite_or_non_number_scalar(trio, bad):
    _, pos, _ = trio
    with pytest.raises(InvalidArgumentError, match="finite number"):
        bad * pos  # noqa: B018
    with pytest.raises(InvalidArgumentError, match="finite number"):
        pos * bad  # noqa: B018


def test_algebra_rejects_non_policies_zero_sums_and_lone_unions(trio):
    _, pos, neg = trio
    with pytest.raises(InvalidArgumentError, match="must be a policy"):
        pos + 3  # noqa: B018
    with pytest.raises(InvalidArgumentError, match="must be a policy"):
        pos - "neg"  # noqa: B018
    with pytest.raises(InvalidArgumentError, match="policy \\* policy is not defined"):
        pos * neg  # noqa: B018
    with pytest.raises(InvalidArgumentError, match="every weight 0"):
        0 * pos + 0 * neg  # noqa: B018
    with pytest.raises(InvalidArgumentError, match="every weight"):
        (0 * pos).generate(XS, **GEN)
    with pytest.raises(InvalidArgumentError, match="at least two"):
        tnb.union(pos)
    with pytest.raises(InvalidArgumentError, match="at least two"):
        tnb.intersection()


def test_algebra_rejects_components_of_different_vocabularies(tiny):
    other = tiny_policy(1)
    other.backbone.tokenizer = type("Tok", (), {"get_vocab": lambda self: {"a": 0}})()
    with pytest.raises(VocabularyMismatchError, match="one vocabulary"):
        tiny + other  # noqa: B018


def test_reward_guided_rescores_the_top_k_with_one_batched_reward_call(tiny):
    calls = []

    def longest(xs, ys):
        calls.append(len(ys))
        return [float(len(y)) for y in ys]

    rg = tnb.reward_guided(tiny, longest, beta=0.5, top_k=4)
    lp = tiny.next_token_logprobs(XS)
    guided = rg.next_token_logprobs(XS)
    assert calls == [len(XS) * 4]  # one call for all rows × candidates
    for i in range(len(XS)):
        top = lp[i].topk(4)
        lengths = torch.tensor([len(tiny.tokenizer.decode([v], skip_special_tokens=True).strip()) for v in top.indices.tolist()],
                               dtype=lp.dtype)
        expected = torch.log_softmax(top.values + lengths / 0.5, -1)
        torch.testing.assert_close(guided[i, top.indices], expected)
        assert int(torch.isfinite(guided[i]).sum()) == 4
    out = rg.generate(XS, max_new_tokens=4)
    assert rg.combine.calls == len(calls) and len(out) == 2
    assert all(n <= len(XS) * 4 for n in calls[1:])


def test_reward_guided_at_huge_beta_is_the_policy_restricted_to_its_top_k(tiny):
    rg = tnb.reward_guided(tiny, Length(), beta=1e12, top_k=1)
    assert rg.generate_ids(XS, **GEN) == tiny.generate_ids(XS, **GEN)  # greedy is the policy's argmax


def test_reward_guided_is_a_policy_in_the_algebra(trio):
    p, pos, _ = trio
    rg = tnb.reward_guided(p, Length(), beta=1.0, top_k=3)
    mixed = rg + pos
    lp = mixed.next_token_logprobs(XS)
    assert int(torch.isfinite(lp[0]).sum()) == 3  # the guided term rules out all but its top-k
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(XS)))


def test_reward_guided_bad_rewards_and_arguments_name_the_item(tiny):
    nan = FunctionReward(lambda xs, ys: [math.nan if i == 2 else 0.0 for i in range(len(ys))], batched=True, name="nan")
    with pytest.raises(RewardError, match="returned nan for item 2 \\(x='Hi'"):
        tnb.reward_guided(tiny, nan, top_k=4).generate(XS, **GEN)
    wrong = FunctionReward(lambda xs, ys: [0.0], batched=True, name="short")
    with pytest.raises(RewardError, match="one number per"):
        tnb.reward_guided(tiny, wrong, top_k=4).generate(XS, **GEN)
    with pytest.raises(InvalidArgumentError, match="top_k"):
        tnb.reward_guided(tiny, Length(), top_k=0)
    with pytest.raises(InvalidArgumentError, match="beta"):
        tnb.reward_guided(tiny, Length(), beta=0.0)
    with pytest.raises(InvalidArgumentError, match="response so far"):
        RewardGuidedRule(inner=weighted_sum, reward=Length(), beta=1.0, top_k=2)([torch.zeros(1, 5)], [1.0])


@pytest.mark.parametrize("build", ["difference", "union", "lora", "guided", "dola"])
def test_a_saved_composition_loads_back_and_reproduces_its_outputs(tiny, tmp_path, build):
    pos, neg = tiny.with_prompt("You are cheerful."), tiny.with_prompt("You are gloomy.")
    pol = {
        "difference": lambda: 1.5 * pos - 0.5 * neg,
        "union": lambda: 0.7 * tnb.union(pos, neg) + tiny,
        "lora": lambda: (lambda star: tiny + 2 * star - star.with_prompt("You are gloomy."))(perturbed_adapter(tiny)),
        "guided": lambda: tnb.reward_guided(pos - neg, Length(), beta=2.0, top_k=3),
        "dola": lambda: presets.dola(tiny),
    }[build]()
    sampled = dict(GEN, temperature=1.0, seed=4)
    want_greedy, want_sampled = pol.generate_ids(XS, **GEN), pol.generate_ids(XS, **sampled)
    back = tnb.load(pol.save(tmp_path / "pol"), base=tiny)
    assert [w for _, w in back.parts] == [w for _, w in pol.parts]
    assert [(p.prompt, p.exit_layer) for p, _ in back.parts] == [(p.prompt, p.exit_layer) for p, _ in pol.parts]
    assert back.generate_ids(XS, **GEN) == want_greedy and back.generate_ids(XS, **sampled) == want_sampled
    np.testing.assert_allclose(back.logprobs(XS, YS).sum, pol.logprobs(XS, YS).sum, rtol=1e-6, atol=1e-5)


def test_loading_a_composition_whose_adapter_folder_is_missing_names_it(tiny, tmp_path):
    import shutil

    star = perturbed_adapter(tiny)
    folder = (tiny + star).save(tmp_path / "pol")
    shutil.rmtree(folder / "adapters" / "0")
    with pytest.raises(ModelLoadError, match="adapter folder 'adapters/0' is missing"):
        tnb.load(folder, base=tiny)
    with pytest.raises(InvalidArgumentError, match="base must be the Policy"):
        tnb.load(folder)
