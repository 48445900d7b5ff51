"""Engine identities: token-exact scoring, prompts, adapters, generation."""

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.chat import prompt_ids, response_ids

XS = ["Hi", "Tell me about rain, please, in a few words.", "What is 2+2?"]
YS = ["Hello there!", "Rain is water falling from clouds.", "4"]


def full_sequence_logprob(policy, x, y):
    """Independent computation: one unpadded forward of the whole chat, no batching."""
    tok, bb = policy.tokenizer, policy.backbone
    msgs = policy.prompt.to_messages(x)
    p = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r = tok(y, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.tensor([list(p) + r])
    with torch.no_grad(), bb.adapters_disabled():
        logits = bb.base_model(ids).logits.float()
    lp = torch.log_softmax(logits[0, len(p) - 1 : -1], -1)
    return float(lp.gather(-1, torch.tensor(r)[:, None]).sum())


def test_batched_logprobs_equal_full_sequence(tiny):
    lp = tiny.logprobs(XS, YS)
    expected = [full_sequence_logprob(tiny, x, y) for x, y in zip(XS, YS)]
    np.testing.assert_allclose(lp.sum, expected, rtol=1e-5, atol=1e-4)
    assert [len(p) for p in lp.per_token] == [len(t) for t in lp.token_ids]
    assert lp.tokens[0][-1] == "<|im_end|>"


def test_with_prompt_equals_prompt_written_by_hand(tiny):
    z = tnb.Prompt(system="You are terse.", examples=[("Q1", "A1")], context="Facts: sky is blue.")
    got = tiny.with_prompt(z).logprobs(XS, YS).sum
    expected = [full_sequence_logprob(tiny.with_prompt(z), x, y) for x, y in zip(XS, YS)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    ids = prompt_ids(tiny.tokenizer, z, "Hi")
    text = tiny.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are terse.\n\nFacts: sky is blue.<|im_end|>")
    assert "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_boundary_is_token_exact(tiny):
    ends = (tiny.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    assert response_ids(tiny.tokenizer, " leading space", ends, True)[-1] == ends[0]
    lp = tiny.logprobs(["x"], [" leading space"])
    assert lp.tokens[0][0] == " leading"  # the text a reader sees, not the byte-level piece "Ġleading"
    assert "".join(lp.tokens[0]) == " leading space<|im_end|>"


def test_zero_adapter_equals_base(tiny):
    from triangle_nb.backbone import default_lora_config

    name = tiny.backbone.add_adapter("zero", default_lora_config())  # LoRA B starts at zero
    pa = tiny.with_adapter("zero")
    np.testing.assert_allclose(pa.logprobs(XS, YS).sum, tiny.logprobs(XS, YS).sum, atol=1e-5)
    assert pa.generate(XS, max_new_tokens=6) == tiny.generate(XS, max_new_tokens=6)
    assert name in tiny.backbone.adapters


def test_adapter_changes_only_its_rows_in_mixed_batch(tiny):
    bb = tiny.backbone
    bb.add_adapter("a")
    with torch.no_grad():
        for n, p in bb.model.named_parameters():
            if "lora_B" in n and ".a." in n + ".":
                p.add_(0.05)
    pa = tiny.with_adapter("a")
    assert not np.allclose(pa.logprobs(XS, YS).sum, tiny.logprobs(XS, YS).sum)
    mixed = tnb.Composition(((pa, 1.0), (tiny, 0.0)))  # one batched forward with both rows
    np.testing.assert_allclose(mixed.logprobs(XS, YS).sum, pa.logprobs(XS, YS).sum, atol=1e-4)


def test_generate_batched_equals_one_by_one(tiny):
    batched = tiny.generate(XS, max_new_tokens=8)
    single = [tiny.generate([x], max_new_tokens=8)[0] for x in XS]
    assert batched == single


def test_sampling_is_reproducible_with_seed(tiny):
    a = tiny.generate(XS, max_new_tokens=8, temperature=1.0, seed=3, samples=2)
    with pytest.warns(DeprecationWarning, match="use samples="):  # the old name still works
        b = tiny.generate(XS, max_new_tokens=8, temperature=1.0, seed=3, n=2)
    assert a == b and len(a) == 3 and all(len(r) == 2 for r in a)


def test_next_token_logprobs_match_scoring(tiny):
    nxt = tiny.next_token_logprobs(["Hi"], ["Hello"])
    assert nxt.shape == (1, tiny.backbone.vocab_size)
    assert torch.allclose(nxt.exp().sum(-1), torch.ones(1), atol=1e-4)
    lp = tiny.logprobs(["Hi"], ["Hello there"], end_of_turn=False)
    there = lp.token_ids[0][-1]
    first = tiny.tokenizer("Hello", add_special_tokens=False)["input_ids"]
    if len(first) == len(lp.token_ids[0]) - 1:
        assert float(nxt[0, there]) == pytest.approx(float(lp.per_token[0][-1]), abs=1e-4)


def test_empty_inputs_give_empty_results(tiny):
    assert tiny.generate([], max_new_tokens=4) == []
    assert len(tiny.logprobs([], [])) == 0


@pytest.mark.slow
def test_default_model_generates_and_scores(pi0):
    out = pi0.generate(["Tell me about rain."], max_new_tokens=12)
    assert isinstance(out[0], str) and len(out[0]) > 10
    lp = pi0.logprobs(["Hi"], ["Hello! How can I help you today?"])
    assert lp.sum[0] < 0 and np.isfinite(lp.sum[0])
    expected = full_sequence_logprob(pi0, "Hi", "Hello! How can I help you today?")
    assert lp.sum[0] == pytest.approx(expected, abs=1e-3)


def test_logits_window_scores_exactly_like_the_full_forward(tiny):
    """A forward with logits_to_keep=batch.window (LM head on the response positions only) gives the same
    per-token log-probs as the full forward."""
    from triangle_nb.chat import pair_batch
    from triangle_nb.scoring import encode_rows, target_logprobs

    bb = tiny.backbone
    batch = pair_batch(encode_rows(tiny, XS, YS), bb.pad_id)
    assert 0 < batch.window < batch.input_ids.shape[1]  # the prompts are longer than the window's head start
    with torch.no_grad():
        full, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None] * 3)
        kept, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None] * 3, logits_to_keep=batch.window)
    assert kept.shape[1] == batch.window
    torch.testing.assert_close(target_logprobs(kept, batch), target_logprobs(full, batch), rtol=0, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients_and_restores_eval_mode(tiny, monkeypatch):
    from triangle_nb.chat import pair_batch
    from triangle_nb.scoring import encode_rows, target_logprobs

    bb = tiny.backbone
    from triangle_nb.testing import perturbed_adapter

    pert = perturbed_adapter(tiny, "ac")
    batch = pair_batch(encode_rows(pert, XS, YS), bb.pad_id)
    params = [p for n, p in bb.model.named_parameters() if ".ac." in n]

    def grads() -> list[torch.Tensor]:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with bb.training():
            logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=["ac"] * 3)
        target_logprobs(logits, batch).sum().backward()
        return [p.grad.clone() for p in params]

    plain = grads()
    bb.activation_checkpointing = True
    assert bb.base_model.is_gradient_checkpointing
    checkpointed = grads()
    with pytest.raises(tnb.errors.InvalidArgumentError, match="through_base=True"), bb.training():
        bb.forward(batch.input_ids, batch.attention_mask, adapters=[None] * 3)  # its recompute would use the adapter
    bb.activation_checkpointing = False
    assert not bb.base_model.is_gradient_checkpointing and not bb.model.training
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(tnb.errors.InvalidArgumentError, match="one adapter for all rows"), bb.training():
        bb.forward(batch.input_ids, batch.attention_mask, adapters=["ac", None, "ac"])
    assert not bb.model.training  # eval mode again after an error inside training()


def test_soft_prompt_gradients_through_the_base_are_the_same_with_checkpointing(tiny):
    """A soft prompt trained on π0 while another adapter is loaded (arrow 4): inside training(through_base=True)
    the adapters stay off for the backward's recompute too, so checkpointing changes no gradient."""
    from triangle_nb.chat import pair_batch
    from triangle_nb.scoring import encode_rows, target_logprobs
    from triangle_nb.soft_prompt import SoftPrompt
    from triangle_nb.testing import perturbed_adapter

    bb = tiny.backbone
    pert = perturbed_adapter(tiny, "tb")  # loaded and active: it must not leak into the base's recompute
    vectors = torch.nn.Parameter(SoftPrompt.from_text(tiny, "Be kind.").vectors.clone())
    batch = pair_batch(encode_rows(tiny.with_prompt(SoftPrompt.create(tiny, vectors, readout="")), XS, YS), bb.pad_id)

    def grad() -> torch.Tensor:
        vectors.grad = None
        with bb.training(through_base=True):
            logits, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None] * 3)
            target_logprobs(logits, batch).sum().backward()
        return vectors.grad.clone()

    plain = grad()
    bb.activation_checkpointing = True
    try:
        checkpointed = grad()
        with pytest.raises(tnb.errors.InvalidArgumentError, match="adapters are off"), bb.training(through_base=True):
            bb.forward(batch.input_ids, batch.attention_mask, adapters=["tb"] * 3)
    finally:
        bb.activation_checkpointing = False
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)
    assert plain.abs().sum() > 0 and not bb.model.training
    with torch.no_grad():  # the adapter is on again after the block
        on, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[pert.adapter] * 3)
        off, _ = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None] * 3)
    assert (on - off).abs().max() > 1e-3


def test_binder_environment_turns_activation_checkpointing_on(monkeypatch, tmp_path, tiny):
    """load_policy reads what binder/start exports whatever the model: a tiny model folder, not the real one."""
    tiny.model.save_pretrained(tmp_path, safe_serialization=True)
    tiny.tokenizer.save_pretrained(tmp_path)
    monkeypatch.delenv("TRIANGLE_NB_ACTIVATION_CHECKPOINTING", raising=False)
    assert not tnb.load_policy(tmp_path).backbone.base_model.is_gradient_checkpointing  # off unless asked
    monkeypatch.setenv("TRIANGLE_NB_ACTIVATION_CHECKPOINTING", "1")  # what binder/start exports
    bb = tnb.load_policy(tmp_path).backbone
    assert bb.activation_checkpointing and bb.base_model.is_gradient_checkpointing
    assert not tnb.load_policy(tmp_path, activation_checkpointing=False).backbone.base_model.is_gradient_checkpointing


def test_wrapping_the_model_for_adapters_shows_no_deprecation_warning():
    """PEFT reads a property transformers 5 deprecated; notebooks would print the warning with a local path."""
    import warnings

    from triangle_nb.testing import tiny_policy

    bb = tiny_policy().backbone
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        bb.add_adapter("first")  # the first adapter wraps the model in a PeftModel
