"""The training engine (`triangle_nb.training`): every training arrow on transformers' Trainer — exact resume from a
checkpoint, only the new adapter trains, checkpoints hold only the trained tensors, one set of keywords, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import triangle_nb as tnb
from triangle_nb import training
from triangle_nb.errors import ArtifactKindError, InvalidArgumentError, ModelLoadError
from triangle_nb.arrows.prompt_to_update import PIRATE
from triangle_nb.testing import perturbed_adapter, tiny_policy

XS = ["Tell me about rain.", "Describe a cat.", "What is tea?", "Name a colour.", "Say hi.", "Count to three."]
R2U = dict(steps=6, samples=2, batch_size=2, max_new_tokens=4, eval_samples=1, learning_rate=0.05, eval_train=0)
SAVE = {"save_steps": 3}


def lora_state(policy: tnb.Policy, adapter: str) -> dict[str, torch.Tensor]:
    tag = f".{adapter}."
    return {k.replace(tag, "."): v.detach().clone() for k, v in policy.backbone.model.named_parameters() if tag in k}


def base_state(policy: tnb.Policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.backbone.base_model.named_parameters() if "lora_" not in k}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -- exact resume: stopped at step 3 by a callback, resumed from its checkpoint, equal to the full run ---------------

def _reward_to_update(method: str) -> Callable[..., dict[str, torch.Tensor]]:
    def run(pi0: tnb.Policy, **kw: Any) -> dict[str, torch.Tensor]:
        res = tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method=method, **R2U, **kw)
        return lora_state(pi0, res.policy.adapter)
    return run


def _distil(objective: str) -> Callable[..., dict[str, torch.Tensor]]:
    def run(pi0: tnb.Policy, **kw: Any) -> dict[str, torch.Tensor]:
        res = tnb.prompt_to_update(pi0, PIRATE, XS, method=objective, steps=6, max_new_tokens=5,
                                   samples=1, batch_size=2, learning_rate=0.05, **kw)
        return lora_state(pi0, res.policy.adapter)
    return run


def _conditioned(pi0: tnb.Policy, **kw: Any) -> dict[str, torch.Tensor]:
    res = tnb.reward_to_prompt(pi0, tnb.rewards.Length(), XS, method="conditioned", eval_inputs=XS[:1], steps=6,
                               samples=2, bins=2, max_new_tokens=4, batch_size=2, eval_samples=1, learning_rate=0.05,
                               **kw)
    tags = {f"tag:{t}": p.vectors.detach().clone() for t, p in res.prompting.soft.items()}
    return lora_state(pi0, res.policy.adapter) | tags


def _soft_prompt(pi0: tnb.Policy, **kw: Any) -> dict[str, torch.Tensor]:
    pi_star = perturbed_adapter(pi0, "teacher")
    res = tnb.update_to_prompt(pi_star, pi0, XS, method="soft", steps=6, n_tokens=3, batch_size=2,
                               max_new_tokens=5, **kw)
    return {"soft": res.prompt.vectors.detach().clone()}


RUNS = {"dpo": _reward_to_update("dpo"), "kto": _reward_to_update("kto"),
        "rejection_sft": _reward_to_update("rejection_sft"), "grpo": _reward_to_update("grpo"),
        "rloo": _reward_to_update("rloo"), "distil_kl": _distil("kl"), "distil_imitation": _distil("imitation"),
        "conditioned": _conditioned, "soft_prompt": _soft_prompt}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_stopped_at_step_3_and_resumed_ends_as_the_uninterrupted_run(name, tmp_path):
    run = RUNS[name]
    full = run(tiny_policy())
    stopped = run(tiny_policy(), output_dir=str(tmp_path), callbacks=[training.stop_at(3)], training_args=SAVE)
    assert (tmp_path / "checkpoint-3" / training.CHECKPOINT_META).is_file()
    resumed = run(tiny_policy(), output_dir=str(tmp_path), resume_from_checkpoint=True, training_args=SAVE)
    assert max_diff(full, resumed) < 1e-4
    assert max_diff(full, stopped) > 1e-4  # steps 4-6 did change it: the resumed run trained them


def test_only_the_new_adapter_trains_and_the_checkpoint_holds_only_it(tmp_path):
    pi0 = tiny_policy(seed=3)
    other = perturbed_adapter(pi0, "other")  # another policy's adapter on the same backbone
    before_base, before_other = base_state(pi0), lora_state(pi0, "other")
    res = tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method="dpo", output_dir=str(tmp_path), **R2U)
    assert max_diff(base_state(pi0), before_base) == 0.0 and max_diff(lora_state(pi0, "other"), before_other) == 0.0
    assert other.adapter == "other" and res.policy.adapter not in ("other", None)
    ckpt = Path(res.info["checkpoint"])
    tensors = load_file(str(ckpt / training.TRAINED_TENSORS))
    trained = lora_state(pi0, res.policy.adapter)
    assert {k.replace(".{adapter}.", ".") for k in tensors} == set(trained)  # the new adapter, nothing else
    assert all(torch.equal(tensors[k.replace(".lora_A.", ".lora_A.{adapter}.").replace(".lora_B.", ".lora_B.{adapter}.")],
                           v) for k, v in trained.items())
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file() and (ckpt / "rng_state.pth").is_file()
    assert (ckpt / "adapter" / "adapter_model.safetensors").is_file()  # also a plain PEFT adapter
    assert not any(p.name.endswith((".bin", ".pt")) and "model" in p.name for p in ckpt.iterdir())
    assert json.loads((ckpt / training.CHECKPOINT_META).read_text())["method"] == "dpo"
    assert res.metrics["world_size"] == 1 and res.metrics["steps"] == 6 and res.metrics["interrupted"] is False


# -- the shared keywords --------------------------------------------------------------------------------------------

class _Seen(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "learning_rate" in logs:
            self.steps.append(state.global_step)
            self.lrs.append(logs["learning_rate"])


def test_training_args_schedule_accumulation_and_callbacks_reach_the_trainer(tiny):
    seen = _Seen()
    res = tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", callbacks=[seen],
                               training_args={"lr_scheduler_type": "linear", "warmup_steps": 2,
                                              "gradient_accumulation_steps": 2}, **R2U)
    assert seen.steps == [1, 2, 3, 4, 5, 6]
    lr = R2U["learning_rate"]
    assert seen.lrs[:3] == pytest.approx([0.0, lr / 2, lr])  # the rate each step used: warm-up, then linear decay
    assert seen.lrs[2] > seen.lrs[3] > seen.lrs[4] > seen.lrs[5] > 0
    assert list(res.history["step"]) == seen.steps and "grad_norm" in res.history and "accuracy" in res.history


def test_every_training_arrow_takes_the_shared_keywords_and_reports_world_size(tmp_path):
    pi0 = tiny_policy(seed=2)
    kw = dict(callbacks=[training.stop_at(1)], training_args={"save_steps": 1})
    r1 = tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method="kto", output_dir=str(tmp_path / "a"), **R2U, **kw)
    r3 = tnb.prompt_to_update(pi0, PIRATE, XS, steps=4, max_new_tokens=4, samples=1,
                              output_dir=str(tmp_path / "b"), **kw)
    r6 = tnb.reward_to_prompt(pi0, tnb.rewards.Length(), XS, method="conditioned", steps=4, samples=2, bins=2,
                              max_new_tokens=4, eval_samples=1, output_dir=str(tmp_path / "c"), **kw)
    bt = tnb.train_reward_model({"prompt": XS, "chosen": [x + " yes indeed, gladly" for x in XS], "rejected": XS},
                                steps=4, output_dir=str(tmp_path / "d"), **kw)
    hal = tnb.presets.hallucination_adapter(pi0, steps=4, batch_size=2, output_dir=str(tmp_path / "e"), **kw)
    for m in (r1.metrics, r3.metrics, r6.metrics, bt.metrics):
        assert m["world_size"] == 1 and m["steps"] == 1 and m["interrupted"] is True
    for sub in "abcde":
        assert (tmp_path / sub / "checkpoint-1" / training.TRAINED_TENSORS).is_file()
    assert hal.adapter in pi0.backbone.adapters


def test_old_spellings_warn_and_still_work(tiny):
    with pytest.warns(DeprecationWarning, match="lr= is deprecated: use learning_rate="):
        res = tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", steps=1, samples=2, batch_size=2,
                                   max_new_tokens=4, eval_samples=1, lr=0.02)
    assert res.info["learning_rate"] == 0.02
    with pytest.warns(DeprecationWarning, match="rank= is deprecated: use lora_r="):
        tnb.presets.hallucination_adapter(tiny, steps=1, batch_size=2, rank=4)
    with pytest.raises(InvalidArgumentError, match="both lr= and learning_rate="):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, lr=0.1, learning_rate=0.1)


def test_the_stop_event_ends_a_run_cleanly_with_the_last_step(tiny):
    import threading

    event = threading.Event()

    class SetAfter2(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                event.set()

    res = tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo",
                               callbacks=[SetAfter2(), training.stop_when(event)], **R2U)
    assert res.metrics["interrupted"] is True and res.metrics["steps"] == 2 and len(res.history) == 2


# -- external preference data ---------------------------------------------------------------------------------------

PREFS = {"prompt": [f"Question {i}: tell me something." for i in range(10)],
         "chosen": [f"A long and friendly answer number {i}, with details." for i in range(10)],
         "rejected": [f"No {i}." for i in range(10)]}


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_preferences_dataset_trains_dpo_and_kto_and_raises_heldout_accuracy(tiny, method):
    ds = datasets.Dataset.from_dict(PREFS)
    res = tnb.reward_to_update(tiny, preferences=ds, method=method, steps=6, batch_size=4, holdout=0.2,
                               max_new_tokens=4, learning_rate=0.05)
    m = res.metrics
    assert m["n_pairs"] == 8 and m["n_heldout"] == 2 and m["preference_accuracy_heldout_before"] == 0.5
    assert m["preference_accuracy_heldout_after"] == 1.0 and m["implicit_margin_heldout_after"] > 0
    assert math.isfinite(m["kl_heldout_after"]) and len(res.samples) == 2


def test_kto_reads_its_own_unpaired_format(tiny):
    ds = datasets.Dataset.from_dict({"prompt": PREFS["prompt"] * 2, "completion": PREFS["chosen"] + PREFS["rejected"],
                                     "label": [True] * 10 + [False] * 10})
    res = tnb.reward_to_update(tiny, preferences=ds, method="kto", steps=2, batch_size=4, max_new_tokens=4)
    assert res.metrics["n_pairs"] == 15 and res.metrics["steps"] == 2


# -- bad input: a typed error naming the parameter and the fix -------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(training_args={"warmup_ratoi": 0.1}), InvalidArgumentError, r"unknown key\(s\) \['warmup_ratoi'\]"),
    (dict(training_args={"max_steps": 5}), InvalidArgumentError, "steps= instead of max_steps"),
    (dict(training_args={"learning_rate": 1e-4}), InvalidArgumentError, "learning_rate= instead of learning_rate"),
    (dict(training_args=[("bf16", True)]), InvalidArgumentError, "dict of TrainingArguments"),
    (dict(callbacks=[print]), InvalidArgumentError, r"callbacks\[0\]"),
    (dict(resume_from_checkpoint=True), InvalidArgumentError, "needs output_dir"),
    (dict(resume_from_checkpoint=3), InvalidArgumentError, "resume_from_checkpoint must be True"),
    (dict(batch_size=3, training_args={"gradient_accumulation_steps": 2}), InvalidArgumentError, "multiple of 2"),
])
def test_bad_training_keywords(tiny, kwargs, error, match):
    opts = dict(steps=1, samples=2, batch_size=2, max_new_tokens=4, eval_samples=1) | kwargs
    with pytest.raises(error, match=match):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", **opts)


def test_bad_output_dirs_and_checkpoints(tiny, tmp_path):
    opts = dict(steps=1, samples=2, batch_size=2, max_new_tokens=4, eval_samples=1)
    with pytest.raises(ModelLoadError, match="holds no checkpoint"):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, output_dir=str(tmp_path / "empty"),
                             resume_from_checkpoint=True, **opts)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InvalidArgumentError, match="output_dir=.* is not writable"):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, output_dir=str(blocker / "run"), **opts)
    with pytest.raises(ModelLoadError, match="not a triangle_nb checkpoint"):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, resume_from_checkpoint=str(tmp_path), **opts)
    tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", output_dir=str(tmp_path / "run"), **opts)
    with pytest.raises(ArtifactKindError, match="from a 'dpo' run, not 'kto'"):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="kto", output_dir=str(tmp_path / "run"),
                             resume_from_checkpoint=True, **opts)
    other = tiny_policy(seed=1, hidden=32)
    with pytest.raises(ArtifactKindError, match="trained on a base with"):
        tnb.reward_to_update(other, tnb.rewards.Length(), XS, method="dpo", output_dir=str(tmp_path / "run"),
                             resume_from_checkpoint=True, **opts)


@pytest.mark.parametrize("data, match", [
    ({"prompt": [], "chosen": [], "rejected": []}, "preferences is empty"),
    ({"prompt": ["a", "b"], "chosen": ["x", "y"]}, r"lacks column\(s\) \['rejected'\]"),
    ({"prompt": ["a", "b"], "chosen": ["x", 3], "rejected": ["u", "v"]}, "column 'chosen' row 1 is a int"),
    ("prompt,chosen,rejected", "datasets.Dataset"),
])
def test_bad_preference_data(tiny, data, match):
    with pytest.raises(InvalidArgumentError, match=match):
        tnb.reward_to_update(tiny, preferences=data, method="dpo", steps=1)


def test_preferences_exclude_reward_and_online_methods(tiny):
    with pytest.raises(InvalidArgumentError, match="preferences= replaces reward and inputs"):
        tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, preferences=PREFS)
    with pytest.raises(InvalidArgumentError, match="method='dpo' or 'kto', not 'grpo'"):
        tnb.reward_to_update(tiny, preferences=PREFS, method="grpo")
    with pytest.raises(InvalidArgumentError, match="needs a reward and inputs"):
        tnb.reward_to_update(tiny, method="dpo")


def test_config_settings_are_json_and_leave_out_the_plumbing():
    cfg = training.TrainConfig(callbacks=[training.stop_at(1)], training_args={"bf16": False}, output_dir="runs/x")
    s = cfg.settings()
    assert json.loads(json.dumps(s)) == s and "callbacks" not in s and s["training_args"] == {"bf16": False}
    assert dataclasses.replace(cfg, steps=3).callbacks == cfg.callbacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.build_config(training.TrainConfig, {"learning_rate": 0.1})
