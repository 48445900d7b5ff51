"""The loading gate for adapter folders: nothing read from a folder reaches PEFT or the model unchecked.

A shared folder is data, not code or configuration of the base. `read_adapter` accepts a LoRA adapter as
triangle_nb saves it and nothing else:
  - adapter_config.json from an allow-list: r, lora_alpha, lora_dropout, use_rslora and target_modules (literal
    module names, each checked against the model's linear layers; a string would be a regex PEFT evaluates, so it
    is refused); every other PEFT field must hold its default (no modules_to_save, layers_to_transform,
    layer_replication, rank/alpha patterns, DoRA, custom init code, ...); unknown fields are refused;
  - weights from adapter_model.safetensors only (a pickle is never read): exactly one lora_A and one lora_B per
    targeted layer, of the shapes the config implies, float dtypes, finite and of a sane size.
`Backbone.load_adapter` then adds an adapter built from the checked config and copies the checked tensors in, so
PEFT never reads the folder, no key can reach a base tensor, and a refusal leaves nothing registered.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import SafetensorError, safe_open

from ._io import read_json
from .errors import AdapterMismatchError, ModelLoadError

WEIGHTS = "adapter_model.safetensors"
MAX_RANK = 4096
MAX_ABS_WEIGHT = 1e4  # trained LoRA factors are O(1); 1e4 already turns a forward's logits into noise or inf
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KEY = re.compile(r"base_model\.model\.((?:[A-Za-z0-9_]+\.)*[A-Za-z0-9_]+)\.(lora_A|lora_B)\.weight")
_FREE = {"r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "task_type", "peft_type",
         "peft_version", "base_model_name_or_path", "revision", "inference_mode", "init_lora_weights"}


@dataclass(frozen=True)
class CheckedAdapter:
    """What passed the gate: a LoRA config to build and the tensors of each layer (module path -> A, B)."""

    config: LoraConfig
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(path: Path, model: torch.nn.Module) -> CheckedAdapter:
    """Check the adapter folder `path` against the base `model` (its transformers model, LoRA layers allowed)."""
    raw = read_json(path / "adapter_config.json")
    if not isinstance(raw, dict):
        raise ModelLoadError(_where(path, f"adapter_config.json holds a {type(raw).__name__}, not an object"))
    config = _config(path, raw)
    layers = _targeted_layers(model, config.target_modules, path)
    return CheckedAdapter(config, _tensors(path, layers, config.r))


def _where(path: Path, what: str) -> str:
    return (f"adapter {str(path)!r}: {what}. triangle_nb loads LoRA adapters as its results save them (r, lora_alpha, "
            "lora_dropout, target_modules as literal layer names, safetensors weights); save it again from a result.")


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    """Every field PEFT's LoraConfig writes, with its default, as JSON gives it back."""
    return json.loads(json.dumps(LoraConfig().to_dict(), default=str))


def _config(path: Path, raw: dict[str, Any]) -> LoraConfig:
    defaults = _defaults()
    for key, value in raw.items():
        if key not in defaults and key not in _FREE:
            raise AdapterMismatchError(_where(path, f"adapter_config.json field {key!r} is not one triangle_nb reads"))
        if key not in _FREE and value != defaults[key] and not (value in (None, {}, []) and not defaults[key]):
            raise AdapterMismatchError(_where(path, f"adapter_config.json field {key}={_short(value)} is not "
                                                    f"allowed (only {_short(defaults[key])})"))
    _equal(path, raw, "peft_type", ("LORA",))
    _equal(path, raw, "task_type", ("CAUSAL_LM", None))
    for key in ("use_rslora", "inference_mode", "init_lora_weights"):
        if not isinstance(raw.get(key, False), bool):
            raise AdapterMismatchError(_where(path, f"adapter_config.json field {key}={_short(raw[key])} must be "
                                                    "true or false"))
    for key in ("peft_version", "base_model_name_or_path", "revision"):
        if not isinstance(raw.get(key), str | None):
            raise AdapterMismatchError(_where(path, f"adapter_config.json field {key} must be a string"))
    return LoraConfig(r=_rank(path, raw.get("r")), lora_alpha=_number(path, raw, "lora_alpha", 0, math.inf),
                      lora_dropout=_number(path, raw, "lora_dropout", -1e-300, 1), task_type="CAUSAL_LM",
                      use_rslora=raw.get("use_rslora", False), target_modules=_target_names(path, raw))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _equal(path: Path, raw: dict[str, Any], key: str, allowed: tuple[object, ...]) -> None:
    if raw.get(key, allowed[0]) not in allowed:
        raise AdapterMismatchError(_where(path, f"adapter_config.json field {key}={_short(raw[key])} is not "
                                                f"supported (only {', '.join(map(repr, allowed))})"))


def _rank(path: Path, r: object) -> int:
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_RANK:
        raise AdapterMismatchError(_where(path, f"adapter_config.json field r={_short(r)} must be an integer in "
                                                f"[1, {MAX_RANK}]"))
    return r


def _number(path: Path, raw: dict[str, Any], key: str, low: float, high: float) -> float:
    """raw[key] a real number with low < value < high (lora_alpha > 0, 0 <= lora_dropout < 1)."""
    value = raw.get(key, _defaults()[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not (low < value < high) \
            or not math.isfinite(value):
        raise AdapterMismatchError(_where(path, f"adapter_config.json field {key}={_short(value)} is out of range"))
    return float(value)


def _target_names(path: Path, raw: dict[str, Any]) -> list[str]:
    names = raw.get("target_modules")
    if isinstance(names, str):
        raise AdapterMismatchError(_where(path, f"adapter_config.json field target_modules={_short(names)} is a "
                                                "pattern (PEFT would evaluate it as a regex); list the layer names"))
    if not isinstance(names, list) or not names or len(names) > 256 \
            or not all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", n) for n in names):
        raise AdapterMismatchError(_where(path, "adapter_config.json field target_modules must be a non-empty list "
                                                "of layer names such as 'q_proj'"))
    return sorted(set(names))


def _linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's linear layers by module path (a LoRA-wrapped layer counts as the layer it wraps)."""
    out = {}
    for name, module in model.named_modules():
        if ".lora_" in f".{name}" or name.endswith("base_layer") or ".base_layer." in name:
            continue
        inner = getattr(module, "base_layer", module)
        if isinstance(inner, torch.nn.Linear):
            out[name] = inner
    return out


def _targeted_layers(model: torch.nn.Module, targets: set[str] | list[str], path: Path) -> dict[str, torch.nn.Linear]:
    """Module path -> linear layer for every layer one of `targets` names (PEFT's rule for a list: the full path,
    or its ending after a dot); every target must name at least one layer."""
    linear = _linear_layers(model)
    chosen = {}
    for target in sorted(targets):
        hits = {n: m for n, m in linear.items() if n == target or n.endswith(f".{target}")}
        if not hits:
            raise AdapterMismatchError(_where(path, f"target_modules names {target!r}, which is no linear layer of "
                                                    "this base model (load it on the base model it was trained for)"))
        chosen.update(hits)
    return chosen


def _tensors(path: Path, layers: dict[str, torch.nn.Linear], r: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    file = path / WEIGHTS
    if not file.is_file():
        found = sorted(p.name for p in path.iterdir() if p.is_file())
        raise ModelLoadError(_where(path, f"there is no {WEIGHTS} (found {found[:6]}; pickled .bin weights are never "
                                          "read, they can run code)"))
    try:
        with safe_open(str(file), framework="pt") as st:
            keys = list(st.keys())
            found = _match_keys(path, keys, layers)
            tensors = {k: st.get_tensor(k) for k in keys}
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"adapter file {str(file)!r} is unreadable ({exc}): it is corrupted or cut short; "
                             "save the adapter again (result.save(dir)).") from exc
    out = {}
    for module, layer in layers.items():
        a, b = (tensors[found[module, part]] for part in ("lora_A", "lora_B"))
        _check_tensor(path, f"{module}.lora_A", a, (r, layer.in_features))
        _check_tensor(path, f"{module}.lora_B", b, (layer.out_features, r))
        out[module] = (a, b)
    return out


def _match_keys(path: Path, keys: list[str], layers: dict[str, torch.nn.Linear]) -> dict[tuple[str, str], str]:
    """(module, lora_A|lora_B) -> the file's key; every key must be one of these and none may be missing."""
    found: dict[tuple[str, str], str] = {}
    for key in keys:
        m = _KEY.fullmatch(key)
        if m is None or m.group(1) not in layers:
            raise AdapterMismatchError(_where(path, f"weights key {_short(key)} is not a lora_A/lora_B weight of a "
                                                    "layer target_modules names"))
        found[m.group(1), m.group(2)] = key
    missing = [f"{mod}.{part}" for mod in layers for part in ("lora_A", "lora_B") if (mod, part) not in found]
    if missing:
        raise AdapterMismatchError(_where(path, f"{len(missing)} weights are missing from {WEIGHTS} (e.g. "
                                                f"{missing[0]}.weight)"))
    return found


def _check_tensor(path: Path, what: str, t: torch.Tensor, shape: tuple[int, int]) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise AdapterMismatchError(_where(path, f"weight {what} has dtype {t.dtype}, not a float type"))
    if tuple(t.shape) != shape:
        raise AdapterMismatchError(_where(path, f"weight {what} has shape {list(t.shape)}, but this base and r need "
                                                f"{list(shape)} (load it on the base model it was trained for)"))
    if not bool(torch.isfinite(t).all()):
        raise AdapterMismatchError(_where(path, f"weight {what} holds NaN or infinite values"))
    if t.numel() and float(t.abs().max()) > MAX_ABS_WEIGHT:
        raise AdapterMismatchError(_where(path, f"weight {what} holds values up to {float(t.abs().max()):.3g} "
                                                f"(> {MAX_ABS_WEIGHT:g}): not a trained adapter"))
