"""The engine on other model families (issue 18): tiny random Llama, Qwen2, Gemma and Gemma 2 models with the
default model's tokenizer. Stop tokens come from the model and its chat template, DoLa's early exit uses the
family's own final norm and LM head, and text that looks like a special token is data, never a control token.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PhiConfig, PhiForCausalLM

import triangle_nb as tnb
from triangle_nb.backbone import Backbone, _find_final_norm
from triangle_nb.chat import end_of_turn_ids, prompt_ids, template_end_of_turn, text_ids
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.prompt import EMPTY
from triangle_nb.testing import Family, tiny_policy

XS = ["Hi", "Tell me about rain, please, in a few words.", "What is 2+2?"]
YS = ["Hello there!", "Rain is water falling from clouds.", "4"]
LOOK_ALIKE = "Fine.<|im_end|>"  # a response quoting the end-of-turn token's text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(Family))
def policy(request: pytest.FixtureRequest) -> tnb.Policy:
    """One tiny random model per family, shared by the module's tests (none of them adds adapters)."""
    return tiny_policy(family=request.param)


def eot(policy: tnb.Policy) -> int:
    return policy.tokenizer.convert_tokens_to_ids("<|im_end|>")


def full_sequence_logprob(policy: tnb.Policy, x: str, y: str) -> float:
    """Independent computation: the template's ids, y as plain text, the real end-of-turn id; one forward."""
    tok, bb = policy.tokenizer, policy.backbone
    msgs = policy.prompt.to_messages(x)
    p = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r = tok(y, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [eot(policy)]
    ids = torch.tensor([list(p) + r])
    with torch.no_grad(), bb.adapters_disabled():
        logits = bb.base_model(ids).logits.float()
    lp = torch.log_softmax(logits[0, len(p) - 1 : -1], -1)
    return float(lp.gather(-1, torch.tensor(r)[:, None]).sum())


# -- stop tokens: from the model's configs and its chat template ----------------------------------------
def test_stop_ids_come_from_the_model_and_its_template(policy: tnb.Policy) -> None:
    bb, tok = policy.backbone, policy.tokenizer
    assert template_end_of_turn(tok) == eot(policy)  # the token the template writes after an assistant turn
    assert end_of_turn_ids(tok, bb.stop_ids)[0] == eot(policy)
    expected = {bb.base_model.generation_config.eos_token_id, bb.base_model.config.eos_token_id, tok.eos_token_id}
    assert set(bb.stop_ids) == expected | {eot(policy)}


def test_stop_ids_read_a_generation_config_list() -> None:
    p = tiny_policy(family=Family.QWEN2)
    model = p.backbone.base_model
    model.generation_config.eos_token_id = [eot(p), 7]  # e.g. Llama 3: <|end_of_text|> and <|eot_id|>
    assert Backbone(model, p.tokenizer, name="two-eos").stop_ids == (eot(p), 7)


OTHER_END = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
             "{% if m['role'] == 'assistant' %}<|endoftext|>{% else %}<|im_end|>{% endif %}\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_end_of_turn_is_read_from_the_chat_template() -> None:
    p = tiny_policy(family=Family.GEMMA)  # a fresh tokenizer: changing its template touches no other test
    tok, end = p.tokenizer, p.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tok.chat_template = OTHER_END  # assistant turns end with <|endoftext|>, not the eos <|im_end|>
    bb = Backbone(p.backbone.base_model, tok, name="other-end")
    assert template_end_of_turn(tok) == end and bb.stop_ids == tuple(sorted({end, eot(p)}))
    assert end_of_turn_ids(tok, bb.stop_ids)[0] == end
    assert tnb.Policy(bb).logprobs(["Hi"], ["Fine."]).token_ids[0][-1] == end
    tok.chat_template = None  # a base model: the turn (the text) ends with eos
    assert template_end_of_turn(tok) is None and end_of_turn_ids(tok, (eot(p),))[0] == tok.eos_token_id


@pytest.fixture()
def stop_from_step_2(policy: tnb.Policy) -> Iterator[None]:
    """Make the model put (nearly) all mass on the end-of-turn token from its third forward on."""
    calls = []

    def push(module: torch.nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        calls.append(1)
        if len(calls) < 3:
            return None
        out = out.clone()
        out[..., eot(policy)] += 1e4
        return out

    handle = policy.backbone.base_model.get_output_embeddings().register_forward_hook(push)
    yield
    handle.remove()


def test_generate_stops_at_the_end_of_turn(policy: tnb.Policy, stop_from_step_2: None) -> None:
    ids = policy.generate_ids(["Hi"], max_new_tokens=8)[0]
    assert len(ids) == 3 and ids[-1] == eot(policy) and eot(policy) not in ids[:-1]
    assert policy.decode_response(ids) == policy.tokenizer.decode(ids[:-1], skip_special_tokens=True).strip()


# -- identities -----------------------------------------------------------------------------------------
def test_logprobs_equal_full_sequence(policy: tnb.Policy) -> None:
    z = tnb.Prompt(system="You are terse.", examples=[("Q1", "A1")])
    for pol in (policy, policy.with_prompt(z)):
        lp = pol.logprobs(XS, YS)
        expected = [full_sequence_logprob(pol, x, y) for x, y in zip(XS, YS, strict=True)]
        np.testing.assert_allclose(lp.sum, expected, rtol=1e-5, atol=1e-4)
        assert [t[-1] for t in lp.token_ids] == [eot(policy)] * len(XS)


def test_eq7_with_expert_equal_to_anti_is_the_base(policy: tnb.Policy) -> None:
    pol = tnb.steer(base=policy, expert=policy, anti=policy)
    np.testing.assert_allclose(pol.logprobs(XS, YS).sum, policy.logprobs(XS, YS).sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(pol.next_token_logprobs(XS), policy.next_token_logprobs(XS), rtol=1e-4, atol=1e-4)
    assert pol.generate_ids(XS, max_new_tokens=6) == policy.generate_ids(XS, max_new_tokens=6)


# -- DoLa: the family's own final norm and LM head --------------------------------------------------------
def family_head(policy: tnb.Policy, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head as each family's modeling code writes it: lm_head, then Gemma 2's logit soft-cap."""
    model = policy.backbone.base_model
    logits = model.lm_head(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def test_early_exit_uses_the_family_final_norm(policy: tnb.Policy) -> None:
    bb, model = policy.backbone, policy.backbone.base_model
    assert bb.final_norm() is model.model.norm
    ids = torch.tensor([prompt_ids(policy.tokenizer, EMPTY, "Hi")])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        torch.testing.assert_close(bb.output_head(out.hidden_states[-1]), out.logits)  # the last layer is normed
        expected = torch.log_softmax(family_head(policy, model.model.norm(out.hidden_states[1][:, -1])), -1)
    torch.testing.assert_close(policy.at_layer(1).next_token_logprobs(["Hi"]), expected, rtol=1e-4, atol=1e-4)


def test_dola_runs_and_calls_the_final_norm_for_its_premature_layers(policy: tnb.Policy) -> None:
    pol = tnb.presets.dola(policy, candidate_layers=[0, 1])
    rows = []
    handle = policy.backbone.final_norm().register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    try:
        out = pol.generate(["Hi"], max_new_tokens=3)
    finally:
        handle.remove()
    assert len(out) == 1 and isinstance(out[0], str)
    # per decoding forward: the model's own call on all 3 rows, then one early-exit call per premature row
    assert rows.count(3) >= 1 and rows.count(1) == 2 * rows.count(3) and len(rows) == 3 * rows.count(3)
    lp = pol.next_token_logprobs(XS[:2])
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2))


def test_dola_without_a_final_norm_is_a_clear_error() -> None:
    p = tiny_policy(family=Family.QWEN2)
    del p.backbone.base_model.model.norm
    with pytest.raises(InvalidArgumentError, match="candidate_layers.*final norm"):
        tnb.presets.dola(p)


@pytest.mark.parametrize(("config", "model", "path"), [
    (PhiConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
     PhiForCausalLM, "model.final_layernorm"),
    (GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=4), GPT2LMHeadModel, "transformer.ln_f"),
])
def test_final_norm_of_other_families(config: object, model: type, path: str) -> None:
    m = model(config)
    assert _find_final_norm(m) is m.get_submodule(path)


# -- responses are data -------------------------------------------------------------------------------------
def test_special_token_text_is_scored_as_plain_text(policy: tnb.Policy) -> None:
    tok = policy.tokenizer
    lp = policy.logprobs(["Hi", "Hi"], [LOOK_ALIKE, "Fine."])
    as_special = tok(LOOK_ALIKE, add_special_tokens=False)["input_ids"] + [eot(policy)]  # the bug: im_end as a token
    assert eot(policy) in as_special[:-1]
    assert lp.sum[0] != pytest.approx(lp.sum[1])
    assert len(lp.per_token[0]) > len(as_special)
    assert not set(lp.token_ids[0][:-1]) & set(tok.all_special_ids)
    assert lp.token_ids[0][-1] == eot(policy)  # the turn still closes with the real end-of-turn id
    assert lp.sum[0] == pytest.approx(full_sequence_logprob(policy, "Hi", LOOK_ALIKE), rel=1e-5, abs=1e-4)


def test_special_token_text_in_x_and_z_stays_text(policy: tnb.Policy) -> None:
    tok = policy.tokenizer
    specials = lambda ids: [i for i in ids if i in tok.all_special_ids]
    template_only = prompt_ids(tok, tnb.Prompt(system="Z ab", examples=[("ab", "ab")]), "ab")
    for x in ("a<|im_end|>b", "a<|im_start|>assistant\nb", "a<|endoftext|>b"):
        ids = prompt_ids(tok, tnb.Prompt(system=f"Z {x}", examples=[(x, x)]), x)
        assert specials(ids) == specials(template_only)  # only the turn markers the template writes
        assert tok.decode(ids).count(x) == 4  # in z, the example's x and y, and x: each verbatim
    z = tnb.Prompt(system="Be kind.", examples=[("Q1", "A1")])
    assert prompt_ids(tok, z, "Hi") == list(tok.apply_chat_template(  # no look-alikes: the template's own ids
        z.to_messages("Hi"), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def test_generated_text_round_trips(policy: tnb.Policy) -> None:
    ids = text_ids(policy.tokenizer, LOOK_ALIKE) + [eot(policy)]
    assert policy.decode_response(ids) == LOOK_ALIKE
    assert policy.logprobs(["Hi"], [policy.decode_response(ids)]).token_ids[0] == ids
