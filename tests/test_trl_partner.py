"""TRL as a partner (triangle_nb.trl_bridge): our rewards drive TRL's own GRPOTrainer, our pairs its DPOTrainer."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from triangle_nb import rewards
from triangle_nb.arrows.prompt_to_reward import ContrastiveReward, contrastive_pairs
from triangle_nb.errors import InvalidArgumentError, RewardError
from triangle_nb.policy import Policy
from triangle_nb.testing import tiny_policy
from triangle_nb.trl_bridge import conversational_preferences, trl_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

XS = ["Tell me about rain.", "How was your day?"]
YS = ["It falls from clouds.", "Lovely, thanks!"]
Z_POS, Z_NEG = "You are a cheerful assistant.", "You are a gloomy assistant."


def chat(xs: list[str], ys: list[str]) -> tuple[list[list[dict]], list[list[dict]]]:
    """TRL's conversational format, with a system turn and an earlier exchange the reward must not read as x."""
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": x}] for x in xs]
    return prompts, [[{"role": "assistant", "content": y}] for y in ys]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> int:
    return sum(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())


# -- as_trl: the same numbers as calling the reward --------------------------------------------------------------
def test_as_trl_equals_the_reward_on_standard_and_conversational_inputs(tiny: Policy) -> None:
    r = ContrastiveReward(tiny, Z_POS, Z_NEG)
    f = r.as_trl()
    direct = r(XS, YS)
    assert np.ptp(direct) > 0  # two different numbers, so a swapped or constant x/y would show
    standard = f(prompts=XS, completions=YS, completion_ids=[[1], [2]], trainer_state=None, answer=["a", "b"])
    conversational = f(*chat(XS, YS))
    assert isinstance(standard, list) and all(type(v) is float for v in standard)
    np.testing.assert_allclose(standard, direct, rtol=0, atol=1e-9)
    np.testing.assert_allclose(conversational, direct, rtol=0, atol=1e-9)
    assert f.__name__ == "contrastive" and r.as_trl(name="cheer").__name__ == "cheer"


@pytest.mark.parametrize("kind", ["sentiment", "length", "log_ratio", "judge"])
def test_every_kind_of_reward_gives_trl_its_own_numbers(tiny: Policy, kind: str) -> None:
    from triangle_nb.arrows.prompt_to_reward import JudgeReward
    from triangle_nb.arrows.update_to_reward import update_to_reward
    from triangle_nb.testing import perturbed_adapter

    build = {"sentiment": rewards.Sentiment, "length": lambda: rewards.Length(unit="chars"),
             "log_ratio": lambda: update_to_reward(perturbed_adapter(tiny), tiny),
             "judge": lambda: JudgeReward(tiny, "Rate the answer from 1 to 5.")}
    r = build[kind]()
    f = r.as_trl()
    np.testing.assert_allclose(f(*chat(XS, YS)), r(XS, YS), rtol=0, atol=1e-9)
    assert f.__name__ == r.name


def test_as_trl_reads_multimodal_parts_and_tool_call_turns() -> None:
    f = rewards.Length().as_trl()
    prompts = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]]
    completions = [[{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]},
                    {"role": "tool", "content": "ignored words here"},
                    {"role": "assistant", "content": [{"type": "text", "text": "two words"}]}]]
    assert trl_pairs(prompts, completions) == (["Describe it."], ["two words"])
    assert f(prompts, completions) == [2.0]
    assert f(prompts=[], completions=[]) == []


def test_as_trl_pickles_and_keeps_its_name() -> None:
    g = pickle.loads(pickle.dumps(rewards.Length(unit="chars").as_trl(name="chars")))
    assert g.__name__ == "chars" and g(["x"], ["abc"]) == [3.0]


@pytest.mark.parametrize(("prompts", "completions", "message"), [
    ("Hi", ["a"], "prompts must be a list"),
    (["Hi", "Yo"], ["a"], "same length"),
    ([[{"role": "system", "content": "s"}]], ["a"], "without a user message"),
    (["Hi"], [[{"role": "user", "content": "a"}]], "no assistant message"),
    ([[]], ["a"], "non-empty list"),
    ([["Hi"]], ["a"], r"prompts\[0\]\[0\] must be a message"),
    ([[{"role": "user", "content": 3}]], ["a"], "must be a str or a list"),
])
def test_as_trl_rejects_malformed_inputs_with_a_typed_error(prompts: object, completions: object,
                                                             message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        rewards.Length().as_trl()(prompts=prompts, completions=completions)


def test_as_trl_passes_a_broken_reward_on_as_reward_error() -> None:
    f = rewards.FunctionReward(lambda x, y: math.nan, name="broken").as_trl()
    with pytest.raises(RewardError, match="'broken'"):
        f(["Hi"], ["a"])
    with pytest.raises(InvalidArgumentError, match="name"):
        rewards.Length().as_trl(name="")


# -- preference pairs in TRL's conversational format -------------------------------------------------------------
def test_conversational_preferences_keeps_columns_and_puts_z_in_the_system_turn() -> None:
    ds = conversational_preferences({"prompt": XS, "chosen": YS, "rejected": ["No.", "Bad."], "id": [1, 2]}, z=Z_POS)
    row = ds[1]
    assert row["prompt"] == [{"role": "system", "content": Z_POS}, {"role": "user", "content": XS[1]}]
    assert row["chosen"] == [{"role": "assistant", "content": YS[1]}]
    assert row["rejected"] == [{"role": "assistant", "content": "Bad."}] and row["id"] == 2
    assert conversational_preferences({"prompt": ["Hi"], "chosen": ["a"], "rejected": ["b"]})[0]["prompt"] == [
        {"role": "user", "content": "Hi"}]
    with pytest.raises(InvalidArgumentError, match="rejected"):
        conversational_preferences({"prompt": ["Hi"], "chosen": ["a"]})


# -- TRL's own trainers ------------------------------------------------------------------------------------------
def test_trl_grpo_trains_on_a_contrastive_reward(tiny: Policy, tmp_path: Path) -> None:
    from trl import GRPOConfig, GRPOTrainer
    from datasets import Dataset

    reward = ContrastiveReward(tiny, Z_POS, Z_NEG)
    student = tiny_policy(seed=1).backbone  # a second tiny model trains; the reward's model stays fixed
    before = weights(student.model)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2, learning_rate=1e-2,
                      per_device_train_batch_size=2, num_generations=2, max_completion_length=6, logging_steps=1,
                      save_strategy="no", seed=0)
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": x}] for x in XS]})
    trainer = GRPOTrainer(model=student.model, reward_funcs=[reward.as_trl()], args=args, train_dataset=data,
                          processing_class=student.tokenizer)
    trainer.train()
    logged = [row["rewards/contrastive/mean"] for row in trainer.state.log_history if "rewards/contrastive/mean" in row]
    assert len(logged) == 2 and all(math.isfinite(v) for v in logged)
    assert changed(before, student.model) > 0


def test_contrastive_pairs_become_trl_conversational_pairs(tiny: Policy) -> None:
    from trl.data_utils import is_conversational

    pairs = contrastive_pairs(tiny, Z_POS, Z_NEG, XS, max_new_tokens=4, seed=0)
    assert pairs.column_names == ["prompt", "chosen", "rejected"] and not is_conversational(pairs[0])
    ds = conversational_preferences(pairs)
    assert is_conversational(ds[0]) and [row["prompt"][-1]["content"] for row in ds] == XS
    assert [row["chosen"][0]["content"] for row in ds] == list(pairs["chosen"])


def test_trl_dpo_trains_on_conversational_pairs(tiny: Policy, tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer

    # hand-made pairs: on the random tiny model (near-uniform next-token distributions) contrastive_pairs samples the
    # same tokens under z+ and z−, so chosen == rejected and DPO's gradient would be exactly zero
    pairs = {"prompt": XS, "chosen": YS, "rejected": ["No.", "Go away, I am busy."]}
    model, tok = tiny_policy(seed=0).backbone.model, tiny.backbone.tokenizer  # `tiny`'s weights: it is the reference
    before = weights(model)
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=2, learning_rate=1e-3,
                     per_device_train_batch_size=2, logging_steps=1, save_strategy="no", seed=0)
    trainer = DPOTrainer(model=model, ref_model=tiny.backbone.model, args=args,
                         train_dataset=conversational_preferences(pairs, z=Z_POS), processing_class=tok)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert changed(before, model) > 0
