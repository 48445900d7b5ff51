"""Arrow 3 (context distillation): identities on the tiny model. The real effect on the default model (8 steps of
training, minutes on CPU) is the `persona_distillation_closes_heldout_gap` fidelity check: python -m benchmarks.fidelity."""

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb._distill import coarsen, token_kl
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.arrows.prompt_to_update import (DistillationResult, _clean_inputs, distillation_task, prompt_to_update,
                                          prompt_tokens_saved)

XS = ["Hi there", "Tell me about rain.", "What is 2+2?", "Name a colour.", "How are you?", "Say yes."]
Z = tnb.Prompt(system="You are a pirate. Say arr.")
FAST = dict(steps=2, max_new_tokens=6, samples=1, batch_size=4)


def base_state(policy):
    """The base weights by their plain names (LoRA wrapping renames q_proj.weight to q_proj.base_layer.weight)."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in policy.backbone.base_model.state_dict().items()
            if "lora_" not in k}


@pytest.fixture(scope="module")
def shared():
    """One tiny model for the tests that only validate or read (they may add adapters)."""
    from triangle_nb.testing import tiny_policy

    return tiny_policy()


def test_empty_prompt_is_identity(tiny):
    res = prompt_to_update(tiny, tnb.Prompt(), XS, **FAST)
    assert res.metrics["kl_heldout_before"] == pytest.approx(0.0, abs=1e-6) and res.metrics["nll_gap_heldout_closed"] is None
    assert res.metrics["nll_gap_heldout_before"] == pytest.approx(0.0, abs=1e-5)
    assert res.metrics["prompt_tokens_saved"] == 0


def test_training_changes_adapter_not_base(tiny):
    before = base_state(tiny)
    res = prompt_to_update(tiny, Z, XS, **FAST)
    after = base_state(tiny)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    name = res.policy.adapter
    lora_b = [p for n, p in tiny.backbone.model.named_parameters() if f"lora_B.{name}." in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # B starts at 0: training moved it
    assert not any(p.requires_grad for p in tiny.backbone.model.parameters())
    assert len(res.history) == 2 and {"loss", "nll", "grad_norm", "step"} <= set(res.history.columns)
    assert res.metrics["n_train_pairs"] + res.metrics["n_eval_pairs"] == len(XS)
    assert res.policy.prompt.is_empty  # the prompt lives in the weights now: the student answers without it
    student, base = (p.logprobs(["Hi"], ["Yes."]).sum for p in (res.policy, tiny))
    assert np.isfinite(student).all() and not np.array_equal(student, base)  # and its adapter changes π0's answer


def test_kl_objective_lowers_train_kl(tiny):
    res = prompt_to_update(tiny, Z, XS, steps=6, max_new_tokens=6, samples=1, batch_size=8,
                           holdout=0.0, top_k=None)  # no held-out split: the metrics use the training inputs
    assert res.info["split"] == "train" and res.metrics["n_eval_pairs"] == 0
    assert res.metrics["kl_train_after"] < res.metrics["kl_train_before"]


def test_interrupt_returns_last_good_adapter(tiny):
    before = base_state(tiny)
    seen = []

    def stop_at_two(row):
        seen.append(row["step"])
        if row["step"] == 2:
            raise KeyboardInterrupt

    res = prompt_to_update(tiny, Z, XS, steps=5, max_new_tokens=6, samples=1, callback=stop_at_two)
    assert res.metrics["interrupted"] and res.metrics["steps"] == 2 and seen == [1, 2]
    assert all(torch.equal(v, base_state(tiny)[k]) for k, v in before.items())
    assert np.isfinite(res.policy.logprobs(["Hi"], ["Arr"]).sum).all()


def test_save_load_roundtrip(tiny, tmp_path):
    res = prompt_to_update(tiny, Z, XS, **FAST)
    res.save(tmp_path / "r")
    back = DistillationResult.load(tmp_path / "r", base=tiny)
    assert back.metrics == res.metrics and back.info == res.info
    assert back.samples.equals(res.samples) and back.history.equals(res.history)
    np.testing.assert_allclose(back.policy.logprobs(XS[:2], ["Arr", "Yes"]).sum,
                               res.policy.logprobs(XS[:2], ["Arr", "Yes"]).sum, atol=1e-6)


def test_several_prompts_at_once(shared):
    z2 = tnb.Prompt(examples=[("Review: bad", "Sentiment: negative")])
    res = prompt_to_update(shared, [Z, z2], [XS[:3], ["Review: good", "Review: awful", "Review: fine"]],
                           holdout=0.34, **FAST)
    assert res.metrics["n_train_pairs"] == 4 and res.metrics["n_eval_pairs"] == 2
    assert len(res.info["prompts"]) == 2


def test_imitation_and_pseudo_inputs_and_small_batches(shared):
    res = prompt_to_update(shared, "Be brief.", XS, method="imitation", n_pseudo_inputs=2, eval_batch_size=1, **FAST)
    assert res.info["method"] == "imitation"
    assert res.metrics["n_train_pairs"] >= 4  # the 4 training inputs + any usable pseudo-inputs


def test_clean_pseudo_inputs():
    assert _clean_inputs(["- How do clouds form?\nmore", "", '"Hi"', "How do clouds form?", "ok"], {"Hi there"}) \
        == ["How do clouds form?"]


def test_prompt_tokens_saved(shared):
    long = tnb.Prompt(system="word " * 50)
    assert prompt_tokens_saved(shared, [long], [["Hi"]]) > 30


def test_coarsened_kl_is_a_lower_bound_and_exact_for_full():
    torch.manual_seed(0)
    p, q = torch.log_softmax(torch.randn(5, 50), -1), torch.log_softmax(torch.randn(5, 50), -1)
    full = token_kl(p, None, q)
    lp, idx = coarsen(p, 8)
    coarse = token_kl(lp, idx, q)
    assert (full >= 0).all() and (coarse >= -1e-6).all() and (coarse <= full + 1e-5).all()
    lp49, idx49 = coarsen(p, 49)  # 49 tokens + a rest bucket holding the last one: exact
    torch.testing.assert_close(token_kl(lp49, idx49, q), full, atol=1e-5, rtol=1e-5)
    assert torch.allclose(token_kl(p, None, p), torch.zeros(5), atol=1e-6)


@pytest.mark.parametrize("kwargs, word", [
    (dict(steps=0), "steps"), (dict(inputs=[]), "inputs"), (dict(prompt=""), "empty"),
    (dict(method="rl"), "method"), (dict(top_k=0), "top_k"), (dict(holdout=1.0), "holdout"),
    (dict(inputs="one string"), "inputs"), (dict(learning_rate=-1.0), "learning_rate"), (dict(bogus=1), "bogus"),
])
def test_bad_input(shared, kwargs, word):
    args = dict(prompt=Z, inputs=XS) | kwargs
    with pytest.raises(InvalidArgumentError, match=word):
        prompt_to_update(shared, args.pop("prompt"), args.pop("inputs"), **args)


def test_tasks_are_well_formed():
    assert distillation_task("fact").probes and distillation_task("persona").inputs
    with pytest.raises(InvalidArgumentError, match="persona"):
        distillation_task("nope")
    facts = distillation_task("facts")
    assert len(facts.prompt) == len(facts.inputs) == len(facts.probes) == 8
    for questions, probes in zip(facts.inputs, facts.probes, strict=True):
        assert len(probes) == 2 and not {q for q, _ in probes} & set(questions)  # probes are never trained on


def test_probes_per_prompt_are_asked_with_their_own_prompt(shared, monkeypatch):
    """Several prompts: "with z" asks each prompt's probes under that prompt, and "with all" under the joined facts;
    the reported accuracy is the probe-weighted mean."""
    import triangle_nb.arrows.prompt_to_update as p2u

    za, zb = tnb.Prompt(context="Fact: A."), tnb.Prompt(context="Fact: B.")
    asked = []

    def fake(policy, probes, **_):
        asked.append((policy.prompt, list(probes)))
        return {za: 1.0, zb: 0.0}.get(policy.prompt, 0.25)

    monkeypatch.setattr(p2u, "probe_accuracy", fake)
    probes = [[("qa1", "a"), ("qa2", "a")], [("qb", "b")]]
    m = p2u._probe_metrics(shared, shared, [za, zb], probes)
    assert (za, probes[0]) in asked and (zb, probes[1]) in asked
    assert (tnb.Prompt(context="Fact: A.\nFact: B."), probes[0] + probes[1]) in asked
    assert m["probe_accuracy_heldout_with_prompt"] == pytest.approx(2 / 3) and m["n_probes"] == 3
    assert m["probe_accuracy_heldout_with_all_prompts"] == 0.25
    with pytest.raises(InvalidArgumentError, match=r"probes\[0\]"):
        p2u._probe_metrics(shared, shared, [za], [("q1", "")])
