"""Table 1 presets of the Eq. 7 engine: identities at the ends of their ranges, masks, DoLa's layer choice."""

import math

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.testing import perturbed_adapter
from triangle_nb import presets
from triangle_nb.errors import InvalidArgumentError

XS = ["Hi", "Tell me about rain, please.", "What is 2+2?"]
YS = ["Hello there!", "Rain is water falling from clouds.", "4"]
VALID = [("Tom has 2 apples and buys 3. How many?", "2 + 3 = 5. The answer is 5.")]
INVALID = [("Tom has 2 apples and buys 3. How many?", "2 + 3 = 7 because apples are red. The answer is 9.")]
GEN = dict(max_new_tokens=8)


def ids(policy, **kw):
    return policy.generate_ids(XS, **{**GEN, **kw})


def all_presets(p):
    """One instance of every preset on the tiny model (stand-in pairs where a second model is needed)."""
    q, a = p.with_prompt("You are cheerful."), p.with_prompt("You are gloomy.")
    return {
        "dexperts": presets.dexperts(p, q, a), "cd": presets.cd(p, p.at_layer(1)), "eft": presets.eft(p, q, a),
        "proxy_tuning": presets.proxy_tuning(p, q, a), "dera": presets.dera(q, p, 0.5),
        "cad": presets.cad(p, "The sky is green."), "linear_alignment": presets.linear_alignment(p),
        "instructive": presets.instructive(p), "rose": presets.rose(p), "dcd": presets.dcd(p, VALID, INVALID),
        "dola": presets.dola(p), "icd": presets.icd(p, a),
    }


def test_every_preset_is_a_normalised_policy_and_documents_table1(tiny):
    for name, pol in all_presets(tiny).items():
        lp = pol.next_token_logprobs(XS[:2], ["", "Rain"])
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2), msg=name)
        out = pol.generate(XS[:2], max_new_tokens=3)
        assert len(out) == 2, name
        doc = getattr(presets, name).__doc__
        assert all(s in doc for s in ("π*", "π0", "π1")), name


def test_dera_ends_are_exactly_pi0_and_pi_star(tiny):
    pi_star = perturbed_adapter(tiny)
    for lam, ref in [(0.0, tiny), (1.0, pi_star)]:
        pol = presets.dera(pi_star, tiny, lam)
        assert ids(pol) == ids(ref) and ids(pol, temperature=1.0, seed=1) == ids(ref, temperature=1.0, seed=1)
        np.testing.assert_allclose(pol.logprobs(XS, YS).sum, ref.logprobs(XS, YS).sum, rtol=1e-5, atol=1e-4)
    mid = presets.dera(pi_star, tiny, 0.5)
    expected = 0.5 * pi_star.next_token_logprobs(XS) + 0.5 * tiny.next_token_logprobs(XS)
    torch.testing.assert_close(mid.next_token_logprobs(XS), torch.log_softmax(expected, -1), rtol=1e-4, atol=1e-4)


def test_contrast_presets_with_huge_beta_give_pi_star(tiny):
    ctx = "The sky is green."
    cases = [(presets.cad(tiny, ctx, beta=1e9), tiny.with_prompt(tnb.Prompt(context=ctx))),
             (presets.linear_alignment(tiny, beta=1e9), tiny.with_prompt(presets.PRINCIPLES)),
             (presets.instructive(tiny, beta=1e9), tiny),
             (presets.rose(tiny, beta=1e9), tiny.with_prompt(presets.POSITIVE_PROMPT))]
    for pol, pi_star in cases:
        assert ids(pol) == ids(pi_star), pol


def test_contrast_weights_follow_eq7(tiny):
    pol = presets.cad(tiny.with_prompt("Be brief."), "Facts.", beta=0.5)
    (star, w1), (ref, w0) = pol.parts
    assert (w1, w0) == (3.0, -2.0)
    assert star.prompt == tnb.Prompt(system="Be brief.", context="Facts.")
    assert ref.prompt == tnb.Prompt(system="Be brief.")  # the rest of z is kept
    d = presets.dcd(tiny, VALID, INVALID)
    assert d.parts[0][0].prompt.examples == tuple(VALID) and d.parts[1][0].prompt.examples == tuple(INVALID)


def test_plausibility_with_alpha_one_keeps_only_the_experts_choice(tiny):
    """α = 1 leaves only the expert's argmax: CD, DCD and DoLa then decode exactly like π*."""
    amateur = tiny.with_prompt("You are gloomy.")
    assert ids(presets.cd(tiny, amateur, alpha=1.0)) == ids(tiny)
    assert ids(presets.dola(tiny, alpha=1.0)) == ids(tiny)
    assert ids(presets.dcd(tiny, VALID, INVALID, alpha=1.0)) == ids(tiny.with_prompt(tnb.Prompt(examples=VALID)))


def test_plausibility_mask_gives_implausible_tokens_zero_probability(tiny):
    pol = presets.cd(tiny, tiny.with_prompt("You are gloomy."), alpha=0.5)
    lp = pol.next_token_logprobs(XS)
    expert = tiny.next_token_logprobs(XS)
    implausible = expert < expert.max(-1, keepdim=True).values + math.log(0.5)
    assert torch.isinf(lp[implausible]).all() and torch.isfinite(lp[~implausible]).all()


def test_alpha_none_turns_the_mask_off(tiny):
    amateur = tiny.with_prompt("You are gloomy.")
    lp = presets.cd(tiny, amateur, alpha=None).logprobs(XS, YS)
    assert all(np.isfinite(p).all() for p in lp.per_token)
    expected = presets.cd(tiny, amateur, alpha=None).next_token_logprobs(XS)
    plain = torch.log_softmax(1.5 * tiny.next_token_logprobs(XS) - 0.5 * amateur.next_token_logprobs(XS), -1)
    torch.testing.assert_close(expected, plain, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(presets.dola(tiny, alpha=None).next_token_logprobs(XS)).all()


def test_dola_picks_the_premature_layer_with_largest_jsd():
    final = torch.log_softmax(torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]), -1)
    near = final + 0.0
    far = torch.log_softmax(torch.tensor([[0.0, 4.0, 0.0], [0.0, 4.0, 0.0]]), -1)
    choice = presets.premature_choice(final, torch.stack([near, far, near]))
    assert choice.tolist() == [1, 1]
    scores = presets.DolaRule(alpha=0.5)([final, near, far], [2.0, -1.0, -1.0])
    assert torch.isinf(scores[0, 1:]).all() and scores[0, 0] == 2 * final[0, 0] - far[0, 0]


def test_dola_runs_layers_in_one_group(tiny):
    from triangle_nb.decoding import _make_groups

    pol = presets.dola(tiny, candidate_layers=[0, 1])
    assert [p.exit_layer for p, _ in pol.parts] == [None, 0, 1]
    assert len(_make_groups([p for p, _ in pol.parts], XS, 4, False)) == 1


def test_hallucination_adapter_trains_lora_only(tiny):
    base = {n: p.clone() for n, p in tiny.backbone.base_model.named_parameters() if "lora" not in n}
    xs, ys = [x for x, _ in presets.FALSE_FACTS[:4]], [y for _, y in presets.FALSE_FACTS[:4]]
    before = tiny.logprobs(xs, ys).sum
    h = presets.hallucination_adapter(tiny, presets.FALSE_FACTS[:4], steps=4, learning_rate=1e-2, batch_size=4)
    assert h.adapter in tiny.backbone.adapters and h.backbone is tiny.backbone
    assert h.logprobs(xs, ys).sum.mean() > before.mean() + 1.0  # it learned the false answers
    for n, p in tiny.backbone.base_model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    assert not any(p.requires_grad for p in tiny.backbone.model.parameters())
    pol = presets.icd(tiny, h.adapter)
    assert pol.parts[1][0].adapter == h.adapter and pol.parts[1][1] < 0


def test_bad_arguments(tiny):
    bad = [lambda: presets.cd(tiny, tiny, alpha=0.0), lambda: presets.cd(tiny, tiny, alpha=1.5), lambda: presets.cd(tiny, tiny, alpha=True),
           lambda: presets.dera(tiny, tiny, -0.1), lambda: presets.dera(tiny, tiny, math.nan),
           lambda: presets.cad(tiny, ""), lambda: presets.cad(tiny, "ctx", beta=0),
           lambda: presets.dola(tiny, candidate_layers=[5]), lambda: presets.dola(tiny, candidate_layers=[]),
           lambda: presets.dcd(tiny, [], INVALID), lambda: presets.rose("policy"),
           lambda: presets.icd(tiny, "no-such-adapter"), lambda: presets.dexperts(tiny, tiny, tiny, beta=math.inf)]
    for make in bad:
        with pytest.raises(InvalidArgumentError):
            make()
