"""The survey's open problems on the tiny model: GenARM's autoregressive reward model (§3.2) decoded in the Eq. 7
engine, and lifelong internalisation of a conversation (§4.2). Real-model numbers: benchmarks/open_problems.py."""

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb.autoregressive_reward import ARMConfig, AutoregressiveReward
from triangle_nb.errors import AdapterMismatchError, InvalidArgumentError
from triangle_nb.lifelong import Conversation, recall, recall_questions
from triangle_nb.testing import tiny_policy

PAIRS = {"prompt": ["Tell me about rain.", "Describe a cat.", "What is a dog?", "Describe the sea."],
         "chosen": ["Rain is lovely and fresh!", "Cats are wonderful friends.", "A loyal, happy friend.", "Calm, bright, beautiful."],
         "rejected": ["Rain is awful.", "Cats are mean.", "A smelly animal.", "Cold and grim."]}
SMALL = {"steps": 2, "batch_size": 2, "holdout": 0.0, "beta_r": 0.5}


@pytest.fixture()
def arm(tiny, one_thread) -> AutoregressiveReward:
    return tnb.train_reward_model(tiny, preferences=PAIRS, method="autoregressive", **SMALL)


def test_reference_free_loss_equals_a_direct_computation(tiny, one_thread):
    """Step 1's logged loss is −log σ(β_r (log π_r(y⁺|x) − log π_r(y⁻|x))) over all pairs, π_r = π0 at step 0 (LoRA B = 0),
    with log π from the scoring path (policy.logprobs)."""
    beta_r = 0.3
    arm = tnb.train_reward_model(tiny, preferences=PAIRS, method="autoregressive", steps=1, batch_size=4, holdout=0.0,
                                 beta_r=beta_r)
    lc = tiny.logprobs(PAIRS["prompt"], PAIRS["chosen"]).sum
    lr = tiny.logprobs(PAIRS["prompt"], PAIRS["rejected"]).sum
    direct = float(np.mean(np.logaddexp(0.0, -beta_r * (lc - lr))))  # −log σ(m) = log(1 + e^{−m})
    assert arm.history["loss"].iloc[0] == pytest.approx(direct, rel=1e-4)
    assert arm.metrics["n_train"] == 4 and arm.metrics["steps"] == 1


def test_token_scores_sum_to_the_sequence_score(arm):
    x, y = "Tell me about rain.", "Rain is lovely, fresh and calm."
    ts = arm.token_scores(x, y)
    assert len(ts.tokens) == len(ts.scores) > 3
    assert ts.total == pytest.approx(float(arm([x], [y])[0]), rel=1e-9)
    lp = arm.policy.logprobs([x], [y])  # r = β_r Σ_t log π_r(y_t|x, y_<t)
    np.testing.assert_allclose(ts.scores, arm.beta_r * lp.per_token[0])


def test_the_reward_model_decodes_as_one_eq7_term(tiny, arm):
    pol = tiny + (1 / 0.5) * arm.policy  # DESIGN.md: pi0 + (1 / beta) * arm.policy
    guided = arm.guide(tiny, beta=0.5)
    xs, ys = ["Describe a cat."], ["Cats are wonderful."]
    np.testing.assert_allclose(pol.logprobs(xs, ys).sum, guided.logprobs(xs, ys).sum)
    assert len(pol.generate(xs, max_new_tokens=4)[0]) >= 0
    assert arm.policy.adapter in tiny.backbone.adapters and arm.policy.backbone is tiny.backbone


def test_a_saved_reward_model_loads_on_its_base_only(tiny, arm, tmp_path):
    again = tnb.load(arm.save(tmp_path / "arm"), base=tiny)
    assert isinstance(again, AutoregressiveReward) and again.beta_r == arm.beta_r
    np.testing.assert_allclose(again(PAIRS["prompt"], PAIRS["chosen"]), arm(PAIRS["prompt"], PAIRS["chosen"]))
    other = tiny_policy(seed=1)  # same vocabulary, other weights
    with pytest.raises(AdapterMismatchError, match="base"):
        tnb.load(tmp_path / "arm", base=other)
    with pytest.raises(AdapterMismatchError, match="base"):
        arm.guide(other, beta=0.5)


@pytest.mark.parametrize(("data", "match"), [
    ({"prompt": PAIRS["prompt"], "chosen": PAIRS["chosen"]}, r"lacks column\(s\) \['rejected'\]"),
    ({**PAIRS, "rejected": ["Rain is awful.", "", "A smelly animal.", "Cold."]}, r"preferences\['rejected'\] is empty in row"),
    ({k: v[:1] for k, v in PAIRS.items()}, "at least two pairs"),
    (["not", "a", "dataset"], "prompt/chosen/rejected"),
])
def test_bad_preferences_are_typed_errors(tiny, data, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tnb.train_reward_model(tiny, preferences=data, method="autoregressive", steps=1)


def test_bad_betas_and_methods_are_typed_errors(tiny, arm):
    with pytest.raises(InvalidArgumentError, match="beta_r"):
        ARMConfig(beta_r=0.0)
    with pytest.raises(InvalidArgumentError, match="beta"):
        arm.guide(tiny, beta=-1.0)
    with pytest.raises(InvalidArgumentError, match="pass the policy first"):
        tnb.train_reward_model(PAIRS, method="autoregressive")
    with pytest.raises(InvalidArgumentError, match="method"):
        tnb.train_reward_model(tiny, preferences=PAIRS, method="genarm")


def test_pairs_from_a_reward_best_vs_worst(tiny, one_thread):
    arm = tnb.train_reward_model(tiny, reward=tnb.rewards.Length(unit="chars"), inputs=PAIRS["prompt"],
                                 method="autoregressive", steps=1, batch_size=2, samples=3, max_new_tokens=6)
    table = arm.samples
    assert arm.metrics["n_train"] + arm.metrics["n_heldout"] <= 4 and arm.metrics["n_heldout"] == len(table) >= 1
    assert (table["chosen"].str.len() > table["rejected"].str.len()).all()  # best (longest) vs worst


# -- lifelong internalisation -------------------------------------------------------------------------------------
SCRIPT = ["Hi! My name is Marisol and I live in Pellingford.", "My cat is called Biscotti.",
          "What is a good book?", "Tell me about rain.", "How do trains work?", "Describe a forest."]
FAST = {"steps": 1, "samples": 1, "max_new_tokens": 4, "batch_size": 2, "replay": 4}


def _base_weights(policy):
    """The base model's own weights by their plain names (PEFT wraps a targeted layer's weight as base_layer)."""
    return {n.replace(".base_layer", ""): p.detach().clone()
            for n, p in policy.backbone.base_model.named_parameters() if "lora_" not in n}


def test_conversation_internalises_left_turns_keeps_base_and_window(tiny, one_thread):
    before = _base_weights(tiny)
    chat = Conversation(tiny, window=90, every=2, reply_tokens=4, **FAST)
    for text in SCRIPT:
        chat.say(text)
    assert max(chat.prompt_tokens) <= 90 and len(chat.prompt_tokens) == len(SCRIPT)
    assert chat.rounds and chat.internalised >= 2 and chat.start >= chat.internalised
    assert chat.policy.adapter is not None
    assert [a for a in tiny.backbone.adapters if a.startswith("conversation")] == [chat.policy.adapter]  # ONE adapter
    after = _base_weights(tiny)
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    out = recall(chat, [("What is my name?", "Marisol"), ("What is my cat called?", "Biscotti")], max_new_tokens=4)
    assert out["probes"] == 2 and out["prompt_tokens_window"] <= 90 < out["prompt_tokens_full"]
    assert set(out["answers"].columns) >= {"truncation answer", "internalised answer", "full_history answer"}


def test_a_saved_conversation_resumes_exactly_on_its_base_only(tiny, one_thread, tmp_path):
    chat = Conversation(tiny, window=90, every=2, reply_tokens=4, **FAST)
    for text in SCRIPT[:4]:
        chat.say(text)
    again = tnb.load(chat.save(tmp_path / "chat"), base=tiny)
    assert isinstance(again, Conversation) and again.turns == chat.turns and again.rounds == chat.rounds
    assert (again.start, again.internalised, again.since) == (chat.start, chat.internalised, chat.since)
    xs, ys = ["What is my name?"], ["Marisol."]
    np.testing.assert_allclose(again.policy.logprobs(xs, ys).sum, chat.policy.logprobs(xs, ys).sum)
    with pytest.raises(AdapterMismatchError, match="base"):
        tnb.load(tmp_path / "chat", base=tiny_policy(seed=1))


def test_a_window_smaller_than_one_turn_is_a_typed_error(tiny):
    with pytest.raises(InvalidArgumentError, match="window=10 is smaller than one turn"):
        Conversation(tiny, window=10)
    chat = Conversation(tiny, window=160, reply_tokens=2)
    with pytest.raises(InvalidArgumentError, match="window=160 is smaller than one turn"):
        chat.say("rain " * 200)


def test_recall_questions_are_built_from_the_turns():
    qs = recall_questions([("My cat is called Biscotti, and I live in Pellingford.", "Nice!")])
    assert "What is my cat called?" in qs and "Where do I live?" in qs
    assert 'Finish what I told you earlier: "My cat is called ..."' in qs
    assert not any("Biscotti" in q or "Pellingford" in q for q in qs)  # the facts are what the answers must hold


def test_the_teacher_reads_the_turns_as_a_note_or_as_chat_turns():
    from triangle_nb.lifelong import NOTES_HEADER, second_person, turns_prompt
    from triangle_nb.prompt import Prompt

    turns = [("My cat is called Biscotti and I'm a beekeeper.", "Lovely!")]
    assert second_person(turns[0][0]) == "Your cat is called Biscotti and you're a beekeeper."
    note = turns_prompt(Prompt(system="Be kind."), turns, "notes")
    assert note.system == "Be kind." and note.context.startswith(NOTES_HEADER) and "- Your cat" in note.context
    assert turns_prompt(Prompt(system="Be kind."), turns, "chat").examples == tuple(turns)
    with pytest.raises(InvalidArgumentError, match="view"):
        turns_prompt(Prompt(), turns, "summary")


def test_a_round_served_from_its_bake_keys_the_next_round_as_a_live_one(tiny, one_thread, tmp_path):
    """The next round's bake key holds the adapter's digest: a saved-and-loaded adapter must digest the same (alpha
    reads back as a float), or a notebook re-executed from its bakes would run every later round live."""
    from triangle_nb.bake import adapter_digest

    res = tnb.internalise(tiny, [("My cat is called Biscotti.", "Nice.")], **FAST)
    again = tnb.load(res.save(tmp_path / "round"), base=tiny)
    assert adapter_digest(tiny.backbone, again.policy.adapter) == adapter_digest(tiny.backbone, res.policy.adapter)
