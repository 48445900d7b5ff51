"""The loading gate (issue 29, class 2): a shared adapter or composition folder never changes π0, runs code, escapes
its folder or replaces an adapter in use. Every case is refused with a typed error — or loads correctly — and after
each one the base's and an unrelated adapter's log-probs are bit-identical and no adapter was left registered.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

import triangle_nb as tnb
from triangle_nb import _adapter_gate, errors
from triangle_nb.errors import AdapterMismatchError, InvalidArgumentError, ModelLoadError
from triangle_nb.testing import perturbed_adapter, tiny_policy

pytestmark = pytest.mark.usefixtures("one_thread")
XS, YS = ["Hi there.", "What is rain?"], ["Hello!", "Water falling."]
WEIGHTS = "adapter_model.safetensors"


class Replace:
    """An edit's result that replaces the whole file content (an edit returning None edits in place)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _apply(edit: Callable[..., Any], data: Any, *args: Any) -> Any:
    out = edit(data, *args)
    return out.value if isinstance(out, Replace) else data


class Lab:
    """A tiny base with one perturbed adapter ("pert"), its saved folder, and reference log-probs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = tiny_policy(seed=3)
        self.pert = perturbed_adapter(self.base, "pert")
        self.good = root / "good"
        self.base.backbone.save_adapter("pert", self.good)
        self.base_lp = self.base.logprobs(XS, YS).sum
        self.pert_lp = self.pert.logprobs(XS, YS).sum
        self.n = 0

    def variant(self, config: Callable[[dict], Any] | None = None,
                tensors: Callable[[dict], Any] | None = None) -> Path:
        """A copy of the good adapter with its config and/or tensors edited in place by the callables."""
        self.n += 1
        path = self.root / f"v{self.n}"
        shutil.copytree(self.good, path)
        if config is not None:
            cfg = json.loads((path / "adapter_config.json").read_text())
            (path / "adapter_config.json").write_text(json.dumps(_apply(config, cfg)))
        if tensors is not None:
            save_file(_apply(tensors, load_file(path / WEIGHTS)), path / WEIGHTS)
        return path

    def untouched(self, adapters: list[str]) -> None:
        assert self.base.backbone.adapters == adapters, "a refused load left an adapter registered"
        assert np.array_equal(self.base.logprobs(XS, YS).sum, self.base_lp), "the base changed"
        assert np.array_equal(self.pert.logprobs(XS, YS).sum, self.pert_lp), "an unrelated adapter changed"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("gate"))


def _set(**kv: Any) -> Callable[[dict], None]:
    return lambda cfg: cfg.update(kv)


def _weird(value: Any) -> Any:
    """A value other than PEFT's default for a config field (what an attacker would put there)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 3
    if isinstance(value, str):
        return "evil.module"
    if isinstance(value, dict):
        return {"model.layers.0.self_attn.q_proj": 64}
    if isinstance(value, list):
        return ["lm_head"]
    return ["lm_head"]


_FIELDS = sorted(k for k in _adapter_gate._defaults() if k not in _adapter_gate._FREE)

# (id, config edit, error type, message fragment)
CONFIG_CASES: list[tuple[str, Callable[[dict], Any], type, str]] = [
    *[(f"field_{k}", _set(**{k: _weird(_adapter_gate._defaults()[k])}), AdapterMismatchError, k) for k in _FIELDS],
    ("modules_to_save_lm_head", _set(modules_to_save=["lm_head"]), AdapterMismatchError, "modules_to_save"),
    ("modules_to_save_embed", _set(modules_to_save=["embed_tokens"]), AdapterMismatchError, "modules_to_save"),
    ("layers_to_transform", _set(layers_to_transform=[0]), AdapterMismatchError, "layers_to_transform"),
    ("layers_pattern", _set(layers_pattern="layers"), AdapterMismatchError, "layers_pattern"),
    ("layer_replication", _set(layer_replication=[[0, 2], [0, 2]]), AdapterMismatchError, "layer_replication"),
    ("rank_pattern", _set(rank_pattern={"q_proj": 2}), AdapterMismatchError, "rank_pattern"),
    ("alpha_pattern", _set(alpha_pattern={"q_proj": 1e30}), AdapterMismatchError, "alpha_pattern"),
    ("use_dora", _set(use_dora=True), AdapterMismatchError, "use_dora"),
    ("trainable_token_indices", _set(trainable_token_indices=[0, 1]), AdapterMismatchError, "trainable_token"),
    ("target_parameters", _set(target_parameters=["model.embed_tokens.weight"]), AdapterMismatchError,
     "target_parameters"),
    ("exclude_modules_regex", _set(exclude_modules="(a+)+$"), AdapterMismatchError, "exclude_modules"),
    ("auto_mapping", _set(auto_mapping={"base_model_class": "os.system", "parent_library": "os"}),
     AdapterMismatchError, "auto_mapping"),
    ("megatron_core", _set(megatron_core="os"), AdapterMismatchError, "megatron_core"),
    ("fan_in_fan_out", _set(fan_in_fan_out=True), AdapterMismatchError, "fan_in_fan_out"),
    ("bias_all", _set(bias="all"), AdapterMismatchError, "bias"),
    ("lora_bias", _set(lora_bias=True), AdapterMismatchError, "lora_bias"),
    ("unknown_field", _set(evil=1), AdapterMismatchError, "evil"),
    ("unknown_field_code", _set(__class__="os.system"), AdapterMismatchError, "__class__"),
    ("peft_type_prefix", _set(peft_type="PREFIX_TUNING"), AdapterMismatchError, "peft_type"),
    ("peft_type_loha", _set(peft_type="LOHA"), AdapterMismatchError, "peft_type"),
    ("peft_type_none", _set(peft_type=None), AdapterMismatchError, "peft_type"),
    ("task_type_seq_cls", _set(task_type="SEQ_CLS"), AdapterMismatchError, "task_type"),
    ("r_zero", _set(r=0), AdapterMismatchError, "r="),
    ("r_negative", _set(r=-4), AdapterMismatchError, "r="),
    ("r_bool", _set(r=True), AdapterMismatchError, "r="),
    ("r_float", _set(r=16.0), AdapterMismatchError, "r="),
    ("r_string", _set(r="16"), AdapterMismatchError, "r="),
    ("r_huge", _set(r=10**9), AdapterMismatchError, "r="),
    ("r_other", lambda c: c.update(r=c["r"] * 2), AdapterMismatchError, "shape"),
    ("alpha_zero", _set(lora_alpha=0), AdapterMismatchError, "lora_alpha"),
    ("alpha_negative", _set(lora_alpha=-32), AdapterMismatchError, "lora_alpha"),
    ("alpha_string", _set(lora_alpha="32"), AdapterMismatchError, "lora_alpha"),
    ("alpha_bool", _set(lora_alpha=True), AdapterMismatchError, "lora_alpha"),
    ("alpha_none", _set(lora_alpha=None), AdapterMismatchError, "lora_alpha"),
    ("alpha_huge", _set(lora_alpha=1e400), AdapterMismatchError, "lora_alpha"),
    ("dropout_one", _set(lora_dropout=1.0), AdapterMismatchError, "lora_dropout"),
    ("dropout_negative", _set(lora_dropout=-0.1), AdapterMismatchError, "lora_dropout"),
    ("dropout_string", _set(lora_dropout="0"), AdapterMismatchError, "lora_dropout"),
    ("rslora_string", _set(use_rslora="yes"), AdapterMismatchError, "use_rslora"),
    ("init_pissa", _set(init_lora_weights="pissa"), AdapterMismatchError, "init_lora_weights"),
    ("init_eva", _set(init_lora_weights="eva"), AdapterMismatchError, "init_lora_weights"),
    ("init_loftq", _set(init_lora_weights="loftq"), AdapterMismatchError, "init_lora_weights"),
    ("init_gaussian", _set(init_lora_weights="gaussian"), AdapterMismatchError, "init_lora_weights"),
    ("inference_mode_string", _set(inference_mode="no"), AdapterMismatchError, "inference_mode"),
    ("peft_version_int", _set(peft_version=3), AdapterMismatchError, "peft_version"),
    ("base_name_list", _set(base_model_name_or_path=["x"]), AdapterMismatchError, "base_model_name_or_path"),
    ("targets_regex_string", _set(target_modules=".*"), AdapterMismatchError, "target_modules"),
    ("targets_redos", _set(target_modules="(a+)+$"), AdapterMismatchError, "target_modules"),
    ("targets_all_linear", _set(target_modules="all-linear"), AdapterMismatchError, "target_modules"),
    ("targets_empty", _set(target_modules=[]), AdapterMismatchError, "target_modules"),
    ("targets_unknown", _set(target_modules=["q_proj", "nope"]), AdapterMismatchError, "nope"),
    ("targets_int", _set(target_modules=[1]), AdapterMismatchError, "target_modules"),
    ("targets_none_item", _set(target_modules=[None]), AdapterMismatchError, "target_modules"),
    ("targets_pattern_item", _set(target_modules=["q_proj.*"]), AdapterMismatchError, "target_modules"),
    ("targets_dotdot", _set(target_modules=["../q_proj"]), AdapterMismatchError, "target_modules"),
    ("targets_embedding", _set(target_modules=["embed_tokens"]), AdapterMismatchError, "embed_tokens"),
    ("targets_none", _set(target_modules=None), AdapterMismatchError, "target_modules"),
    ("targets_subset", _set(target_modules=["q_proj"]), AdapterMismatchError, "weights key"),
    ("config_list", lambda cfg: Replace([cfg]), ModelLoadError, "not an object"),
    ("config_string", lambda cfg: Replace("LORA"), ModelLoadError, "not an object"),
    ("config_null", lambda cfg: Replace(None), ModelLoadError, "not an object"),
    ("config_number", lambda cfg: Replace(3), ModelLoadError, "not an object"),
]


def _first(t: dict) -> str:
    return sorted(t)[0]


def _with(key: str, value: torch.Tensor) -> Callable[[dict], None]:
    return lambda t: t.__setitem__(key, value)


LAYER = "base_model.model.model.layers.0.self_attn.q_proj"
# (id, tensors edit, error type, message fragment)
TENSOR_CASES: list[tuple[str, Callable[[dict], Any], type, str]] = [
    ("extra_embedding", _with("base_model.model.model.embed_tokens.weight", torch.zeros(3, 3)), AdapterMismatchError,
     "embed_tokens"),
    ("extra_base_weight", _with(f"{LAYER}.weight", torch.zeros(64, 64)), AdapterMismatchError, "q_proj.weight"),
    ("extra_base_layer", _with(f"{LAYER}.base_layer.weight", torch.zeros(64, 64)), AdapterMismatchError,
     "base_layer"),
    ("extra_lm_head", _with("base_model.model.lm_head.weight", torch.zeros(3, 3)), AdapterMismatchError, "lm_head"),
    ("extra_named_adapter", _with(f"{LAYER}.lora_A.pert.weight", torch.zeros(16, 64)), AdapterMismatchError,
     "lora_A.pert"),
    ("extra_other_layer", _with("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight",
                                torch.zeros(16, 64)), AdapterMismatchError, "layers.9"),
    ("extra_bias", _with(f"{LAYER}.lora_B.bias", torch.zeros(64)), AdapterMismatchError, "lora_B.bias"),
    ("extra_magnitude", _with(f"{LAYER}.lora_magnitude_vector.weight", torch.zeros(64)), AdapterMismatchError,
     "magnitude"),
    ("missing_one", lambda t: t.pop(_first(t)), AdapterMismatchError, "missing"),
    ("missing_all_b", lambda t: Replace({k: v for k, v in t.items() if "lora_B" not in k}), AdapterMismatchError,
     "missing"),
    ("int_weights", lambda t: t.__setitem__(_first(t), t[_first(t)].to(torch.int32)), AdapterMismatchError, "dtype"),
    ("int64_weights", lambda t: Replace({k: v.to(torch.int64) for k, v in t.items()}), AdapterMismatchError,
     "dtype"),
    ("bool_weights", lambda t: t.__setitem__(_first(t), t[_first(t)] > 0), AdapterMismatchError, "dtype"),
    ("uint8_weights", lambda t: t.__setitem__(_first(t), t[_first(t)].to(torch.uint8)), AdapterMismatchError,
     "dtype"),
    ("nan_weight", lambda t: t[_first(t)].view(-1)[0].fill_(math.nan), AdapterMismatchError, "nan"),
    ("inf_weight", lambda t: t[_first(t)].view(-1)[3].fill_(math.inf), AdapterMismatchError, "infinite"),
    ("neg_inf_weight", lambda t: t[sorted(t)[1]].view(-1)[3].fill_(-math.inf), AdapterMismatchError, "infinite"),
    ("huge_weight", lambda t: t[_first(t)].view(-1)[0].fill_(1e30), AdapterMismatchError, "values up to"),
    ("transposed", lambda t: t.__setitem__(_first(t), t[_first(t)].T.contiguous()), AdapterMismatchError, "shape"),
    ("wrong_rank", lambda t: t.__setitem__(_first(t), t[_first(t)][:4].contiguous()), AdapterMismatchError, "shape"),
    ("flat", lambda t: t.__setitem__(_first(t), t[_first(t)].reshape(-1).contiguous()), AdapterMismatchError,
     "shape"),
    ("empty_file", lambda t: Replace({}), AdapterMismatchError, "missing"),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_outside_the_allow_list_is_refused(case: tuple, lab: Lab) -> None:
    _, edit, error, fragment = case
    _refused(lab, error, fragment, config=edit)


@pytest.mark.parametrize("case", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_weights_outside_lora_a_b_are_refused(case: tuple, lab: Lab) -> None:
    _, edit, error, fragment = case
    _refused(lab, error, fragment, tensors=edit)


def _refused(lab: Lab, error: type, fragment: str, **edit: Any) -> None:
    """Loading the edited adapter raises `error` naming `fragment`, and leaves the backbone as it was."""
    before = list(lab.base.backbone.adapters)
    with pytest.raises(errors.TriangleError) as info:
        lab.base.with_adapter(lab.variant(**edit))
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    lab.untouched(before)


def _files_case(name: str, lab: Lab) -> Path:
    path = lab.variant()
    if name == "pickle_only":
        (path / WEIGHTS).unlink()
        torch.save({}, path / "adapter_model.bin")
    elif name == "weights_missing":
        (path / WEIGHTS).unlink()
    elif name == "weights_dir":
        (path / WEIGHTS).unlink()
        (path / WEIGHTS).mkdir()
    elif name == "weights_truncated":
        data = (path / WEIGHTS).read_bytes()
        (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif name == "weights_garbage":
        (path / WEIGHTS).write_bytes(b"\xff" * 64)
    elif name == "config_not_json":
        (path / "adapter_config.json").write_text("{'r': 16")
    elif name == "config_deep":
        (path / "adapter_config.json").write_text("[" * 200_000 + "]" * 200_000)
    elif name == "config_binary":
        (path / "adapter_config.json").write_bytes(b"\xff\xfe\x00")
    elif name == "config_missing":
        (path / "adapter_config.json").unlink()
    elif name == "fingerprint_other":
        (path / "triangle_nb_base.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32,
                                                                "num_hidden_layers": 2, "vocab_size": 5}))
    elif name == "fingerprint_list":
        (path / "triangle_nb_base.json").write_text("[1, 2]")
    return path


FILE_CASES = [("pickle_only", ModelLoadError, "pickle"), ("weights_missing", ModelLoadError, WEIGHTS),
              ("weights_dir", ModelLoadError, WEIGHTS), ("weights_truncated", ModelLoadError, "save"),
              ("weights_garbage", ModelLoadError, "unreadable"), ("config_not_json", ModelLoadError, "not valid JSON"),
              ("config_deep", ModelLoadError, "not valid JSON"), ("config_binary", ModelLoadError, "not valid JSON"),
              ("config_missing", ModelLoadError, "adapter_config.json"),
              ("fingerprint_other", AdapterMismatchError, "trained for"),
              ("fingerprint_list", ModelLoadError, "not an object")]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_damaged_or_foreign_files_are_refused(case: tuple, lab: Lab) -> None:
    name, error, fragment = case
    before = list(lab.base.backbone.adapters)
    with pytest.raises(errors.TriangleError) as info:
        lab.base.with_adapter(_files_case(name, lab))
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    lab.untouched(before)


NAME_CASES = [("pert", "already loaded"), ("", "non-empty"), ("a.b", "without dots"), ("__base__", "__base__")]


@pytest.mark.parametrize("case", NAME_CASES, ids=[f"name_{c[0] or 'empty'}" for c in NAME_CASES])
def test_adapter_name_collisions_are_refused(case: tuple, lab: Lab) -> None:
    name, fragment = case
    before = list(lab.base.backbone.adapters)
    with pytest.raises(InvalidArgumentError, match=fragment):
        lab.base.backbone.load_adapter(lab.good, name)
    with pytest.raises(InvalidArgumentError, match=fragment):
        lab.base.backbone.add_adapter(name)
    lab.untouched(before)


# -- what loads, loads exactly ----------------------------------------------------------------------

GOOD_CASES: list[tuple[str, Callable[[dict], Any] | None, Callable[[dict], Any] | None, float]] = [
    ("as_saved", None, None, 0.0),
    ("targets_reordered", lambda c: c.update(target_modules=sorted(c["target_modules"], reverse=True)), None, 0.0),
    ("targets_duplicated", lambda c: c.update(target_modules=c["target_modules"] * 2), None, 0.0),
    ("fields_missing", lambda c: Replace({k: c[k] for k in ("r", "lora_alpha", "target_modules", "peft_type")}),
     None, 0.0),
    ("float16", None, lambda t: Replace({k: v.half() for k, v in t.items()}), 1e-2),
    ("bfloat16", None, lambda t: Replace({k: v.bfloat16() for k, v in t.items()}), 5e-2),
    ("float64", None, lambda t: Replace({k: v.double() for k, v in t.items()}), 1e-5),
    ("dropout", lambda c: c.update(lora_dropout=0.1), None, 0.0),
    ("inference_mode_false", lambda c: c.update(inference_mode=False), None, 0.0),
]


@pytest.mark.parametrize("case", GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_adapters_as_we_save_them_load_exactly(case: tuple, lab: Lab) -> None:
    _, config, tensors, tol = case
    before = list(lab.base.backbone.adapters)
    loaded = lab.base.with_adapter(lab.variant(config=config, tensors=tensors))
    try:
        got = loaded.logprobs(XS, YS).sum
        assert np.allclose(got, lab.pert_lp, atol=tol, rtol=0) if tol else np.array_equal(got, lab.pert_lp)
        assert not any(p.requires_grad for n, p in lab.base.backbone.model.named_parameters()
                       if f".{loaded.adapter}." in n)
    finally:
        lab.base.backbone.remove_adapter(loaded.adapter)
    lab.untouched(before)


def test_loading_keeps_the_seeded_random_stream(lab: Lab) -> None:
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    loaded = lab.base.with_adapter(lab.good)
    assert torch.equal(torch.rand(3), want)
    lab.base.backbone.remove_adapter(loaded.adapter)


def test_other_base_shape_is_refused_before_peft_sees_it(lab: Lab, tmp_path: Path) -> None:
    other = tiny_policy(seed=4, hidden=32)
    other.backbone.add_adapter("small")
    other.backbone.save_adapter("small", tmp_path / "small")
    (tmp_path / "small" / "triangle_nb_base.json").unlink()  # a plain PEFT folder: only the shapes tell
    before = list(lab.base.backbone.adapters)
    with pytest.raises(AdapterMismatchError, match="shape"):
        lab.base.with_adapter(tmp_path / "small")
    lab.untouched(before)


# -- saved compositions: every path stays inside the folder -----------------------------------------

@pytest.fixture(scope="module")
def saved_composition(lab: Lab) -> Path:
    comp = 1.5 * lab.pert - 0.5 * lab.base.with_prompt("Be brief.")
    return comp.save(lab.root / "comp")


def _edit_composition(lab: Lab, src: Path, name: str, edit: Callable[[dict, Path], Any]) -> Path:
    dst = lab.root / f"comp_{name}"
    shutil.copytree(src, dst, symlinks=True)
    meta = json.loads((dst / "composition.json").read_text())
    (dst / "composition.json").write_text(json.dumps(_apply(edit, meta, dst)))
    return dst


def _part(i: int, **kv: Any) -> Callable[[dict, Path], None]:
    return lambda m, d: m["parts"][i].update(kv)


def _symlink_adapter(m: dict, d: Path) -> None:
    outside = d.parent / "outside_adapter"
    if not outside.exists():
        shutil.copytree(d / m["parts"][0]["adapter"], outside)
    shutil.rmtree(d / m["parts"][0]["adapter"])
    os.symlink(outside, d / m["parts"][0]["adapter"])


def _symlink_adapters_dir(m: dict, d: Path) -> None:
    outside = d.parent / "outside_adapters"
    if not outside.exists():
        shutil.copytree(d / "adapters", outside)
    shutil.rmtree(d / "adapters")
    os.symlink(outside, d / "adapters")


def _symlink_weights(m: dict, d: Path) -> None:
    f = d / m["parts"][0]["adapter"] / WEIGHTS
    outside = d.parent / f"outside_{d.name}.safetensors"
    shutil.copy(f, outside)
    f.unlink()
    os.symlink(outside, f)


def _symlink_prompt(m: dict, d: Path) -> None:
    outside = d.parent / "outside_prompt.json"
    shutil.copy(d / m["parts"][1]["prompt"], outside)
    (d / m["parts"][1]["prompt"]).unlink()
    os.symlink(outside, d / m["parts"][1]["prompt"])


def _second_adapter_broken(m: dict, d: Path) -> None:
    """Part 1 gets its own adapter folder, a broken one: part 0's adapter must not stay registered."""
    shutil.copytree(d / m["parts"][0]["adapter"], d / "adapters" / "9")
    cfg = json.loads((d / "adapters" / "9" / "adapter_config.json").read_text())
    cfg["modules_to_save"] = ["lm_head"]
    (d / "adapters" / "9" / "adapter_config.json").write_text(json.dumps(cfg))
    m["parts"][1]["adapter"] = "adapters/9"


def _deep_rule(m: dict, d: Path) -> None:
    rule: dict = {"rule": "sum"}
    for _ in range(60):
        rule = {"rule": "UnionRule", "terms": [{"term": [0, 1], "weight": 1.0, "of": rule}]}
    m["rule"] = rule


COMPOSITION_CASES: list[tuple[str, Callable[[dict, Path], Any], type, str]] = [
    ("adapter_dotdot", _part(0, adapter="../good"), ModelLoadError, "adapter"),
    ("adapter_dotdot_inner", _part(0, adapter="adapters/../../good"), ModelLoadError, "adapter"),
    ("adapter_absolute", lambda m, d: m["parts"][0].update(adapter=str(d.parent / "good")), ModelLoadError,
     "adapter"),
    ("adapter_home", _part(0, adapter="~/adapter"), ModelLoadError, "adapter"),
    ("adapter_backslash", _part(0, adapter="..\\good"), ModelLoadError, "adapter"),
    ("adapter_int", _part(0, adapter=3), ModelLoadError, "adapter"),
    ("adapter_empty", _part(0, adapter=""), ModelLoadError, "adapter"),
    ("adapter_symlink_out", _symlink_adapter, ModelLoadError, "symbolic link"),
    ("adapters_dir_symlink_out", _symlink_adapters_dir, ModelLoadError, "symbolic link"),
    ("weights_symlink_out", _symlink_weights, ModelLoadError, "symbolic link"),
    ("prompt_dotdot", _part(1, prompt="../comp/prompt_1.json"), ModelLoadError, "prompt"),
    ("prompt_absolute", _part(1, prompt="/etc/passwd"), ModelLoadError, "prompt"),
    ("prompt_symlink_out", _symlink_prompt, ModelLoadError, "symbolic link"),
    ("prompt_missing", _part(1, prompt="nope.json"), ModelLoadError, "missing"),
    ("reward_path_out", lambda m, d: m.update(rule={"rule": "RewardGuidedRule", "inner": {"rule": "sum"},
                                                    "reward": {"reward": "../length.json"}, "beta": 0.1,
                                                    "top_k": 2}), ModelLoadError, "reward"),
    ("second_adapter_refused", _second_adapter_broken, errors.AdapterMismatchError, "modules_to_save"),
    ("parts_not_list", lambda m, d: m.update(parts={"a": 1}), ModelLoadError, "malformed"),
    ("parts_empty", lambda m, d: m.update(parts=[]), ModelLoadError, "malformed"),
    ("part_not_object", lambda m, d: m.update(parts=[1, 2]), ModelLoadError, "malformed"),
    ("part_extra_field", _part(0, code="os.system('x')"), ModelLoadError, "malformed"),
    ("part_missing_field", lambda m, d: m["parts"][0].pop("weight"), ModelLoadError, "malformed"),
    ("weight_string", _part(0, weight="1.5"), ModelLoadError, "weight"),
    ("weight_bool", _part(0, weight=True), ModelLoadError, "weight"),
    ("weight_nan", _part(0, weight=math.nan), ModelLoadError, "weight"),
    ("weight_inf", _part(0, weight=math.inf), ModelLoadError, "weight"),
    ("weight_huge", _part(0, weight=1e300), errors.TriangleError, "weight"),
    ("exit_layer_string", _part(0, exit_layer="1"), ModelLoadError, "exit_layer"),
    ("exit_layer_out_of_range", _part(0, exit_layer=99), InvalidArgumentError, "layer"),
    ("label_int", lambda m, d: m.update(label=3), ModelLoadError, "malformed"),
    ("rule_unknown", lambda m, d: m.update(rule={"rule": "Exec"}), errors.ArtifactKindError, "Exec"),
    ("rule_not_object", lambda m, d: m.update(rule=[1]), ModelLoadError, "malformed"),
    ("rule_missing", lambda m, d: m.pop("rule"), ModelLoadError, "malformed"),
    ("rule_unknown_field", lambda m, d: m.update(rule={"rule": "UnionRule", "terms": [], "x": 1}), ModelLoadError,
     "unknown fields"),
    ("rule_deep", _deep_rule, ModelLoadError, "deep"),
    ("term_bad_range", lambda m, d: m.update(rule={"rule": "UnionRule", "terms": [
        {"term": [1, 0], "weight": 1.0, "of": {"rule": "sum"}}]}), ModelLoadError, "term"),
    ("term_not_pair", lambda m, d: m.update(rule={"rule": "UnionRule", "terms": [
        {"term": [0], "weight": 1.0, "of": {"rule": "sum"}}]}), ModelLoadError, "malformed"),
    ("kind_other", lambda m, d: m.update(kind="result"), errors.ArtifactKindError, "composition"),
    ("json_list", lambda m, d: Replace([m]), ModelLoadError, "not an object"),
    ("json_string", lambda m, d: Replace("composition"), ModelLoadError, "not an object"),
]


@pytest.mark.parametrize("case", COMPOSITION_CASES, ids=[c[0] for c in COMPOSITION_CASES])
def test_saved_compositions_stay_inside_their_folder(case: tuple, lab: Lab, saved_composition: Path) -> None:
    name, edit, error, fragment = case
    before = list(lab.base.backbone.adapters)
    folder = _edit_composition(lab, saved_composition, name, edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(errors.TriangleError) as info:
            tnb.load(folder, base=lab.base)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    lab.untouched(before)


def test_saved_composition_loads_exactly_and_only_adds_its_adapter(lab: Lab, saved_composition: Path) -> None:
    before = list(lab.base.backbone.adapters)
    comp = 1.5 * lab.pert - 0.5 * lab.base.with_prompt("Be brief.")
    back = tnb.load(saved_composition, base=lab.base)
    assert np.array_equal(back.logprobs(XS, YS).sum, comp.logprobs(XS, YS).sum)
    assert len(lab.base.backbone.adapters) == len(before) + 1
    lab.base.backbone.remove_adapter(next(a for a in lab.base.backbone.adapters if a not in before))
    lab.untouched(before)


def test_saved_result_adapter_symlink_is_refused(lab: Lab) -> None:
    from triangle_nb.results import UpdateResult

    folder = UpdateResult(metrics={"a": 1.0}, policy=lab.pert).save(lab.root / "res_link")
    outside = lab.root / "res_outside"
    shutil.copytree(folder / "adapter", outside)
    shutil.rmtree(folder / "adapter")
    os.symlink(outside, folder / "adapter")
    before = list(lab.base.backbone.adapters)
    with pytest.raises(ModelLoadError, match="symbolic link"):
        tnb.load(folder, base=lab.base)
    lab.untouched(before)


def test_gate_rejects_patterns_without_evaluating_them(lab: Lab) -> None:
    """A catastrophic-backtracking pattern is refused at once (it is never handed to `re`)."""
    import time

    evil = "(" * 30 + "a*" + ")*" * 30 + "$"
    start = time.monotonic()
    with pytest.raises(AdapterMismatchError):
        lab.base.with_adapter(lab.variant(config=_set(target_modules=evil)))
    with pytest.raises(AdapterMismatchError):
        lab.base.with_adapter(lab.variant(config=_set(target_modules=[evil])))
    assert time.monotonic() - start < 5


def test_defaults_cover_every_lora_field() -> None:
    """A PEFT upgrade that adds a LoraConfig field makes it default-only automatically (not silently allowed)."""
    assert set(LoraConfig().to_dict()) <= set(_adapter_gate._defaults()) | _adapter_gate._FREE
