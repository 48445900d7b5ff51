"""Arrow 4 (update ⇒ prompt) and the SoftPrompt vertex: identities on the tiny model. The real effect (a soft prompt
trained on the default model, minutes on CPU) is the `soft_prompt_closes_heldout_kl` fidelity check:
python -m benchmarks.fidelity."""

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.errors import AdapterMismatchError, InvalidArgumentError
from triangle_nb.soft_prompt import SoftPrompt
from triangle_nb.testing import tiny_policy
from triangle_nb.arrows.update_to_prompt import RecoveryResult, update_to_prompt

XS = ["Hi there", "Tell me about rain.", "What is 2+2?", "Name a colour.", "How are you?", "Say yes."]
YS = ["Hello", "Rain falls.", "4", "Blue", "Fine", "Yes"]
Z = tnb.Prompt(system="You are a pirate. Say arr.")
FAST = dict(max_new_tokens=6, rounds=1, proposals=1, edits=1, proposal_tokens=4, steps=2, n_tokens=3)


@pytest.fixture(scope="module")
def shared():
    """One tiny model for the tests that only validate (arguments are checked before any model call)."""
    return tiny_policy()


# -- the SoftPrompt vertex ----------------------------------------------------------------------
def test_soft_prompt_from_text_equals_the_text_prompt(tiny):
    """Virtual tokens holding exactly the text's embeddings reproduce the text prompt token for token."""
    soft = SoftPrompt.from_text(tiny, Z.system)
    np.testing.assert_allclose(tiny.with_prompt(soft).logprobs(XS, YS).sum, tiny.with_prompt(Z).logprobs(XS, YS).sum,
                               atol=1e-5)
    gen = dict(max_new_tokens=5, temperature=1.0, seed=3)
    assert tiny.with_prompt(soft).generate_ids(XS[:3], **gen) == tiny.with_prompt(Z).generate_ids(XS[:3], **gen)
    assert soft.readout == Z.system and not soft.is_empty and "soft" in str(soft)


def test_soft_prompt_generates_with_kv_cache_consistent_with_scoring(tiny):
    """Greedy generation under a (random) soft prompt picks the argmax that scoring sees at every step."""
    soft = SoftPrompt.create(tiny, torch.randn(4, tiny.backbone.base_model.config.hidden_size))
    ids = tiny.with_prompt(soft).generate_ids(["Hi"], max_new_tokens=5)[0]
    text = tiny.tokenizer.decode(ids)
    lp = tiny.with_prompt(soft).logprobs(["Hi"], [text], end_of_turn=False)
    nxt = tiny.with_prompt(soft).next_token_logprobs(["Hi"], [""])[0]
    assert int(nxt.argmax()) == ids[0] and np.isfinite(lp.sum).all()


def test_soft_prompt_save_load_exact(tiny, tmp_path):
    soft = SoftPrompt.create(tiny, torch.randn(3, tiny.backbone.base_model.config.hidden_size), system="Be brief.")
    soft.save(tmp_path / "s.json")
    back = SoftPrompt.load(tmp_path / "s.json", tiny)
    assert torch.equal(back.vectors, soft.vectors) and back.readout == soft.readout and back.system == soft.system
    np.testing.assert_allclose(tiny.with_prompt(back).logprobs(XS, YS).sum, tiny.with_prompt(soft).logprobs(XS, YS).sum)
    with pytest.raises(InvalidArgumentError, match="SoftPrompt.load"):
        SoftPrompt.load(tmp_path / "s.json")


def test_soft_prompt_from_another_backbone_is_a_clear_error(tiny):
    other = tiny_policy(seed=1)
    soft = SoftPrompt.create(other, torch.randn(30, 64))
    with pytest.raises(AdapterMismatchError, match="never registered"):
        tiny.with_prompt(soft).logprobs(["Hi"], ["Yo"])


# -- the arrow ----------------------------------------------------------------------------------
def test_search_recovers_the_true_prompt_when_it_is_a_candidate(tiny):
    """π* = π0 with z: z scores KL 0 on Eq. 12, so the search returns it and closes all the KL."""
    res = update_to_prompt(tiny.with_prompt(Z), tiny, XS, candidates=["Be brief.", Z], true_prompt=Z, **FAST)
    m = res.metrics
    assert res.prompt == Z and m["kl_heldout_after"] == pytest.approx(0.0, abs=1e-6) and m["kl_heldout_true_prompt"] == m["kl_heldout_after"]
    assert m["kl_heldout_closed"] == pytest.approx(1.0) and m["kl_heldout_before"] > 0
    assert res.candidates["score"].is_monotonic_increasing and len(res.history) == len(res.candidates)
    assert {"round", "source", "prompt", "score", "best_so_far"} <= set(res.history.columns)


def test_likelihood_score_and_save_load(tiny, tmp_path):
    res = update_to_prompt(tiny.with_prompt(Z), tiny, XS, candidates=[Z], score="likelihood", **FAST)
    res.save(tmp_path / "r")
    back = RecoveryResult.load(tmp_path / "r")
    assert back.prompt == res.prompt and back.metrics == res.metrics and back.candidates.equals(res.candidates)


def test_soft_training_lowers_loss_and_leaves_weights(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.backbone.model.state_dict().items()}
    res = update_to_prompt(tiny.with_prompt(Z), tiny, XS, method="soft", true_prompt=Z, max_new_tokens=6,
                           steps=6, n_tokens=4, learning_rate=0.01, holdout=0.0)
    after = tiny.backbone.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert isinstance(res.prompt, SoftPrompt) and res.prompt.n_tokens == 4 and res.prompt.readout
    scores = dict(zip(res.candidates["source"], res.candidates["score"], strict=True))
    assert scores["soft"] < scores["init"]  # Eq. 12 on the whole transfer set, before vs after training
    # the soft prompt is in the input: it changes what π0 says next (its vectors are not the text's embeddings)
    with_z = tiny.with_prompt(res.prompt).logprobs(["Hi"], ["Yes."]).sum
    assert np.isfinite(with_z).all() and not np.array_equal(with_z, tiny.logprobs(["Hi"], ["Yes."]).sum)
    res.save(tmp_path / "soft")
    back = RecoveryResult.load(tmp_path / "soft", base=tiny)
    assert torch.equal(back.prompt.vectors, res.prompt.vectors)


def test_soft_interrupt_keeps_last_step(tiny):
    def stop(row):
        if row["step"] == 2:
            raise KeyboardInterrupt

    res = update_to_prompt(tiny.with_prompt(Z), tiny, XS, method="soft", callback=stop, **FAST | {"steps": 5})
    assert len(res.history) == 2 and isinstance(res.prompt, SoftPrompt)


@pytest.mark.parametrize("kwargs, word", [
    (dict(inputs=[]), "inputs"), (dict(candidates=[""]), "empty"), (dict(method="beam"), "method"),
    (dict(score="bleu"), "score"), (dict(rounds=-1), "rounds"), (dict(init_text=" "), "init_text"),
    (dict(true_prompt=""), "true_prompt"),
])
def test_bad_input(shared, kwargs, word):
    args = dict(inputs=XS) | kwargs
    with pytest.raises(InvalidArgumentError, match=word):
        update_to_prompt(shared.with_prompt(Z), shared, args.pop("inputs"), **args)


def test_policies_must_share_a_backbone(tiny):
    with pytest.raises(InvalidArgumentError, match="backbone"):
        update_to_prompt(tiny_policy(seed=1), tiny, XS)
