"""No lost work (issue #9): saves are atomic and load back bit for bit; Ctrl-C in training keeps the last
good adapter and its history and never touches the base weights.

A crash mid-save is simulated by making one write step raise: the target must then be absent (first
save) or still hold the previous version, and no temporary files may be left next to it.
"""

from __future__ import annotations


import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import triangle_nb as tnb
from triangle_nb import _io, loading, rewards
from triangle_nb.backbone import Backbone
from triangle_nb.arrows import reward_to_update as r2u
from triangle_nb.errors import AdapterMismatchError, ArtifactKindError, ModelLoadError
from triangle_nb.results import PromptResult, UpdateResult
from triangle_nb.soft_prompt import SoftPrompt
from triangle_nb.testing import tiny_policy


class Crash(Exception):
    """The simulated crash (a full disk, a killed kernel) in the middle of a save."""


def crash(*args: Any, **kwargs: Any) -> None:
    raise Crash("simulated crash mid-save")


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a save left behind (names start with '.')."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def base_state(policy: tnb.Policy) -> dict[str, torch.Tensor]:
    """A copy of the base model's own weights (LoRA weights excluded)."""
    state = policy.backbone.base_model.state_dict()
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in state.items() if "lora_" not in k}


def adapter_state(policy: tnb.Policy) -> dict[str, torch.Tensor]:
    """The weights of `policy.adapter`, keyed without the adapter's name."""
    tag = f".{policy.adapter}."
    return {k.replace(tag, "."): v.detach().clone() for k, v in policy.backbone.model.named_parameters() if tag in k}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> tnb.Policy:
    return tiny_policy()


@pytest.fixture(scope="module")
def trained(tiny: tnb.Policy) -> tnb.Policy:
    """The tiny policy with a LoRA adapter whose weights are random (non-zero), as after training."""
    name = tiny.backbone.add_adapter("trained")
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in tiny.backbone.model.named_parameters():
            if ".trained." in n:
                p.copy_(torch.randn_like(p) * 0.05)
    return tiny.with_adapter(name)


HISTORY = pd.DataFrame({"step": [1, 2, 3], "loss": [0.1 + 0.2, 1e-300, math.pi], "accuracy": [0.5, np.nan, 1.0],
                        "note": ["a", "é🙂", ""]})
METRICS = {"reward_before": 0.1 + 0.2, "reward_after": -1e-310, "steps": 3, "interrupted": False, "big": 2.0**60 + 1}


# -- JSON artifacts: Prompt, reward config -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["prompt", "reward"])
def test_json_save_is_atomic_and_exact(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = tnb.Prompt(system="Be kind. 🙂", examples=[("Hi", "Hello!")], context="facts\n\t") if kind == "prompt" \
        else rewards.Length(unit="chars", scale=0.1 + 0.2)
    second = tnb.Prompt(system="Be brief.") if kind == "prompt" else rewards.ROUGE("ref", variant="rouge2")
    load = tnb.Prompt.load if kind == "prompt" else rewards.load_reward
    path = first.save(tmp_path / f"{kind}.json")
    text = path.read_bytes()
    with monkeypatch.context() as mp:
        mp.setattr(_io.os, "replace", crash)  # the rename that would publish the new version
        with pytest.raises(Crash):
            second.save(path)
    assert path.read_bytes() == text and leftovers(tmp_path) == []  # the previous version is intact
    again = load(path)
    assert repr(again) == repr(first) and (kind != "prompt" or again == first)
    second.save(path)
    assert repr(load(path)) == repr(second) and leftovers(tmp_path) == []
    assert json.loads(path.read_text()) == json.loads(json.dumps(json.loads(path.read_text())))  # plain JSON


def test_json_first_save_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_io.os, "fsync", crash)  # dies while flushing the temporary file
    with pytest.raises(Crash):
        tnb.Prompt(system="x").save(tmp_path / "z.json")
    assert list(tmp_path.iterdir()) == []


# -- results: metrics, history, adapter, prompt ------------------------------------------------------

def test_update_result_round_trip_is_bit_exact(trained: tnb.Policy, tmp_path: Path) -> None:
    res = UpdateResult(metrics=dict(METRICS), history=HISTORY.copy(), info={"method": "dpo", "beta": 0.1},
                       policy=trained)
    res.save(tmp_path / "run")
    back = UpdateResult.load(tmp_path / "run", base=trained.without_adapter())
    assert back.metrics == METRICS and back.info == res.info
    assert back.history.equals(HISTORY) and list(back.history.dtypes) == list(HISTORY.dtypes)
    assert back.policy.adapter != trained.adapter  # loaded as a second adapter on the same base
    assert_same_tensors(adapter_state(back.policy), adapter_state(trained))
    xs, ys = ["Hi"], ["Hello there."]
    assert np.array_equal(back.policy.logprobs(xs, ys).sum, trained.logprobs(xs, ys).sum)
    trained.backbone.remove_adapter(back.policy.adapter)


@pytest.mark.parametrize("step", ["history", "vertex"])
def test_result_save_crash_keeps_previous_version(step: str, trained: tnb.Policy, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old = UpdateResult(metrics={"v": 1}, history=HISTORY.iloc[:1].copy(), policy=trained)
    new = UpdateResult(metrics={"v": 2}, history=HISTORY.copy(), policy=trained)
    with monkeypatch.context() as mp:  # first save dies: nothing appears
        mp.setattr(Backbone, "save_adapter", crash)
        with pytest.raises(Crash):
            old.save(tmp_path / "run")
    assert leftovers(tmp_path) == [] and not (tmp_path / "run").exists()
    old.save(tmp_path / "run")
    with monkeypatch.context() as mp:  # second save dies half way: the first version stays
        if step == "history":
            mp.setattr(pd.DataFrame, "to_parquet", crash)
        else:
            mp.setattr(Backbone, "save_adapter", crash)
        with pytest.raises(Crash):
            new.save(tmp_path / "run")
    assert leftovers(tmp_path) == []
    back = UpdateResult.load(tmp_path / "run", base=trained.without_adapter())
    assert back.metrics == {"v": 1} and back.history.equals(old.history)
    assert_same_tensors(adapter_state(back.policy), adapter_state(trained))
    trained.backbone.remove_adapter(back.policy.adapter)


def test_prompt_result_round_trip(tmp_path: Path) -> None:
    z = tnb.Prompt(system="Sois bref. مرحبا", examples=[("a", "b"), ("c", "")], context="")
    res = PromptResult(metrics=dict(METRICS), history=HISTORY.copy(), info={"method": "search"}, prompt=z)
    back = PromptResult.load(res.save(tmp_path / "p"))
    assert back.prompt == z and back.metrics == METRICS and back.history.equals(HISTORY)
    assert type(back) is PromptResult and back.info == {"method": "search"}
    assert json.loads((tmp_path / "p" / "result.json").read_text())["kind"] == "prompt"
    with pytest.raises(ArtifactKindError, match="'prompt' result"):
        UpdateResult.load(tmp_path / "p")  # the wrong class names the kind instead of loading half a result


def test_soft_prompt_round_trip_is_bit_exact(tiny: tnb.Policy, tmp_path: Path) -> None:
    torch.manual_seed(0)
    z = SoftPrompt.create(tiny, torch.randn(3, tiny.backbone.base_model.config.hidden_size))
    back = SoftPrompt.load(z.save(tmp_path / "soft.json"), tiny)
    assert torch.equal(back.vectors, z.vectors) and back.readout == z.readout
    lp = [p.logprobs(["Hi"], ["Yes."]).sum for p in (tiny.with_prompt(z), tiny.with_prompt(back))]
    assert np.array_equal(*lp)


# -- the converted-model cache (loading.converted_gguf) ----------------------------------------------

class _FakeGGUF:
    """Stands in for transformers' GGUF loading: returns the tiny model (the real conversion takes ~20 s)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def from_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        assert "gguf_file" in kwargs
        return self.obj


def test_model_cache_is_atomic_and_exact(tiny: tnb.Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_policy(seed=5).model
    monkeypatch.setenv("TRIANGLE_NB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", _FakeGGUF(model))
    monkeypatch.setattr(loading, "AutoTokenizer", _FakeGGUF(tiny.tokenizer))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF fake")
    models = tmp_path / "cache" / "models"
    with monkeypatch.context() as mp:  # the conversion is killed while writing the weights
        mp.setattr(type(tiny.tokenizer), "save_pretrained", crash)
        with pytest.raises(Crash):
            loading.converted_gguf(gguf)
    assert list(models.iterdir()) == []  # no half cache that a later load would trust
    folder = loading.converted_gguf(gguf)
    assert leftovers(models) == [] and (folder / "config.json").is_file()
    from safetensors.torch import load_file

    saved = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    own = model.state_dict()
    assert all(torch.equal(saved[k], own[k]) for k in saved) and set(saved) <= set(own)
    assert loading.converted_gguf(gguf) == folder  # the second call reuses the cache


# -- a failed adapter load leaves the base as it was ---------------------------------------------------

def test_failed_adapter_loads_keep_the_base(tmp_path: Path) -> None:
    victim = tiny_policy(seed=4)
    victim.backbone.add_adapter("mine")
    before, lp = base_state(victim), victim.logprobs(["Hi"], ["Hello."]).sum
    other = tiny_policy(seed=2, hidden=32)
    other.backbone.add_adapter("other")
    other.backbone.save_adapter("other", tmp_path / "other")
    (tmp_path / "other" / "triangle_nb_base.json").unlink()  # a plain PEFT folder: the shapes tell
    with pytest.raises(AdapterMismatchError):
        victim.with_adapter(tmp_path / "other")
    victim.backbone.save_adapter("mine", tmp_path / "mine")
    (tmp_path / "mine" / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError):
        victim.with_adapter(tmp_path / "mine")
    assert victim.backbone.adapters == ["mine"]
    assert_same_tensors(base_state(victim), before)
    assert np.array_equal(victim.logprobs(["Hi"], ["Hello."]).sum, lp)


# -- interrupting training ---------------------------------------------------------------------------

XS = ["Tell me about rain.", "Describe a cat.", "What is tea?", "Name a colour."]


def test_ctrl_c_in_reward_to_update_keeps_last_good_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    pi0 = tiny_policy(seed=6)
    before = base_state(pi0)
    real, seen = r2u._train_logps, {}

    def train_logps(pi: Any, rows: Any, temperature: float = 1.0) -> Any:
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 2:  # Ctrl-C at the start of step 2: step 1's adapter is the last good one
            seen["good"] = adapter_state(pi)
            raise KeyboardInterrupt
        return real(pi, rows, temperature)

    monkeypatch.setattr(r2u, "_train_logps", train_logps)
    res = tnb.reward_to_update(pi0, rewards.Length(), XS, method="dpo", steps=4, samples=2, batch_size=2,
                               max_new_tokens=4, eval_samples=1, learning_rate=0.05)
    assert res.metrics["interrupted"] is True and len(res.history) == 1 and res.history["step"].tolist() == [1]
    assert_same_tensors(adapter_state(res.policy), seen["good"])
    assert any(not torch.all(v == 0) for k, v in seen["good"].items() if "lora_B" in k)  # step 1 did train
    assert_same_tensors(base_state(pi0), before)
    assert np.isfinite(res.policy.logprobs(["Hi"], ["Yes."]).sum).all()
    monkeypatch.setattr(r2u, "_train_logps", real)  # a retry continues from the interrupted adapter
    again = tnb.reward_to_update(res.policy, rewards.Length(), XS, method="dpo", steps=1, samples=2, batch_size=2,
                                 max_new_tokens=4, eval_samples=1, learning_rate=0.05)
    assert again.metrics["interrupted"] is False and len(again.history) == 1
    assert_same_tensors(base_state(pi0), before)


def test_ctrl_c_in_prompt_to_update_keeps_last_good_adapter() -> None:
    pi0 = tiny_policy(seed=7)
    before, seen = base_state(pi0), {}

    def stop_at_step_2(row: dict[str, float]) -> None:
        if row["step"] == 2:  # the Stop button: step 2 finished, then Ctrl-C
            seen["good"] = {k: v.detach().clone() for k, v in pi0.backbone.model.named_parameters() if "lora_" in k}
            raise KeyboardInterrupt

    res = tnb.prompt_to_update(pi0, "Answer like a pirate.", XS, steps=5, samples=1, max_new_tokens=4,
                               batch_size=2, eval_batch_size=4, callback=stop_at_step_2)
    assert res.metrics["interrupted"] is True and res.history["step"].tolist() == [1, 2]
    tag = f".{res.policy.adapter}."
    assert_same_tensors(adapter_state(res.policy), {k.replace(tag, "."): v for k, v in seen["good"].items() if tag in k})
    assert_same_tensors(base_state(pi0), before)


def test_ctrl_c_in_soft_prompt_training_keeps_last_good_vectors() -> None:
    pi0 = tiny_policy(seed=8)
    before, seen = base_state(pi0), {}

    def stop_at_step_2(row: dict[str, Any]) -> None:
        if row["step"] == 2:
            seen["good"] = list(pi0.backbone._soft.values())[-1].detach().clone()  # the vectors being trained
            raise KeyboardInterrupt

    res = tnb.update_to_prompt(pi0.with_prompt("Answer like a pirate."), pi0, XS, method="soft", steps=5,
                               n_tokens=2, max_new_tokens=4, batch_size=2, eval_batch_size=4, top_k=16,
                               callback=stop_at_step_2)
    assert res.history["step"].tolist() == [1, 2]
    assert torch.equal(res.prompt.vectors.detach(), seen["good"])
    assert_same_tensors(base_state(pi0), before)
